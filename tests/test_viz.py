"""tvcsp.viz: every plotting helper returns a Figure and writes a PNG; the dataset notebook runs headless."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import perovskite
from matplotlib.figure import Figure
from pymatgen.core import Lattice, Structure

from tvcsp import viz
from tvcsp.data import CrystalTensors, edge_distances
from tvcsp.rbf import build_rbf

ROOT = Path(__file__).resolve().parents[1]


def _rocksalt() -> Structure:
    """Primitive NaCl: every atom has 6 neighbours at a / 2 = 2.82 Å."""
    return Structure(Lattice.from_parameters(3.988, 3.988, 3.988, 60, 60, 60), ["Na", "Cl"],
                     [[0, 0, 0], [0.5, 0.5, 0.5]])


def _graphite() -> Structure:
    return Structure(Lattice.hexagonal(2.46, 6.7), ["C"] * 4,
                     [[0, 0, 0.25], [0, 0, 0.75], [1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.75]])


def _tensors(structures: list[Structure]) -> CrystalTensors:
    return CrystalTensors(
        atom_types=torch.tensor([site.specie.Z for s in structures for site in s]),
        frac_coords=torch.tensor(np.concatenate([s.frac_coords for s in structures]), dtype=torch.float64),
        num_atoms=torch.tensor([len(s) for s in structures]),
        lengths=torch.tensor([s.lattice.abc for s in structures], dtype=torch.float64),
        angles=torch.tensor([s.lattice.angles for s in structures], dtype=torch.float64),
        y=torch.full((len(structures),), float("nan"), dtype=torch.float64),
        material_ids=[f"x{i}" for i in range(len(structures))],
    )


@pytest.fixture
def crystals() -> CrystalTensors:
    return _tensors([perovskite(), _rocksalt(), _graphite()])


def _check(fig, path: Path) -> None:
    assert isinstance(fig, Figure)
    assert path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_structure_from_structure_and_tensors(tmp_path, crystals):
    path = tmp_path / "deep" / "sto.png"  # parent folders are created
    _check(viz.plot_structure(perovskite(), path=path), path)
    path = tmp_path / "graphite.png"
    _check(viz.plot_structure(crystals, index=2, supercell=(2, 2, 1), view=(10, 30), path=path), path)


def test_plot_structures_grid(tmp_path, crystals):
    path = tmp_path / "grid.png"
    fig = viz.plot_structures(crystals, titles=["a", "b", "c"], ncols=2, suptitle="three", path=path)
    _check(fig, path)
    assert len(fig.axes) == 3


def test_plot_structure_without_path_writes_nothing(tmp_path):
    fig = viz.plot_structure(_rocksalt(), legend=False)
    assert isinstance(fig, Figure)
    assert not any(tmp_path.iterdir())


def test_edge_distances_rocksalt():
    d = edge_distances(_tensors([_rocksalt()]), cutoff=3.0, max_neighbors=None)
    assert d.numel() == 12  # 2 atoms × 6 neighbours
    assert torch.allclose(d, torch.full_like(d, 3.988 / 2**0.5), atol=1e-6)


def test_edge_distances_sample_and_cap(crystals):
    full = edge_distances(crystals, cutoff=6.0, max_neighbors=8)
    uncapped = edge_distances(crystals, cutoff=6.0, max_neighbors=None)
    # at least 8 edges per atom (more where the 8th neighbour's shell is tied), never more than the cutoff allows
    assert 8 * int(crystals.num_atoms.sum()) <= full.numel() < uncapped.numel()
    assert float(full.max()) <= 6.0
    part = edge_distances(crystals, cutoff=6.0, max_neighbors=8, max_crystals=1, seed=1)
    one = [edge_distances(crystals.select(torch.tensor([i])), 6.0, 8).numel() for i in range(len(crystals))]
    assert part.numel() in one  # one crystal's edges


def test_plot_dataset_histograms(tmp_path, crystals):
    distances = edge_distances(crystals, cutoff=6.0, max_neighbors=20)
    path = tmp_path / "hist.png"
    fig = viz.plot_dataset_histograms(crystals, distances, "toy (reduced split)", cutoff=6.0, path=path)
    _check(fig, path)
    path = tmp_path / "hist_nodist.png"
    _check(viz.plot_dataset_histograms(crystals, None, "toy", top_elements=2, path=path), path)


def test_plot_rbf_leaves_modules_untouched(tmp_path):
    bases = {kind: build_rbf(kind, 16, 6.0) for kind in ("gaussian", "bessel", "hybrid")}
    path = tmp_path / "rbf.png"
    _check(viz.plot_rbf(bases, cutoff=6.0, path=path), path)
    assert all(p.dtype == torch.float32 for b in bases.values() for p in [*b.parameters(), *b.buffers()])


def test_plot_hybrid_scaling(tmp_path, crystals):
    hybrid = build_rbf("hybrid", 16, 6.0)
    distances = edge_distances(crystals, cutoff=6.0, max_neighbors=20)
    w = hybrid.fit_weight(distances)
    path = tmp_path / "scaling.png"
    _check(viz.plot_hybrid_scaling(hybrid, distances, path=path), path)
    assert float(hybrid.weight) == pytest.approx(w)  # plotting does not refit


@pytest.mark.slow
def test_datasets_notebook_runs_on_perov_5(tmp_path, shared_data):
    """Executes notebooks/02_datasets.ipynb headless on perov_5 (skips without ../shared/data).

    The test's cache folder is fresh (conftest), so the split is parsed again (about a minute) and CrystalNN
    runs on a small sample only.
    """
    papermill = pytest.importorskip("papermill")
    out = tmp_path / "02_datasets_perov_5.ipynb"
    papermill.execute_notebook(
        str(ROOT / "notebooks" / "02_datasets.ipynb"),
        str(out),
        parameters={"dataset": "perov_5", "coordination_sample": 40, "distance_sample": 200, "n_examples": 2,
                    "figures_dir": str(tmp_path)},
        kernel_name="python3",
        cwd=str(ROOT / "notebooks"),
        progress_bar=False,
    )
    for name in ("perov_5_stats.json", "perov_5_histograms.png", "perov_5_examples.png"):
        assert (tmp_path / name).is_file(), name
    assert "| perov_5 | 11,356/3,787/3,785 | 5 |" in out.read_text()


def test_plot_probe_curve_skips_rows_without_a_probe(tmp_path):
    history = [{"step": 0, "probe_val_match_rate": float("nan")},
               {"step": 100, "probe_train_match_rate": 0.1, "probe_val_match_rate": 0.05,
                "probe_train_composition_accuracy": 0.2, "probe_val_composition_accuracy": 0.1},
               {"step": 200, "probe_train_match_rate": 0.4, "probe_val_match_rate": 0.3,
                "probe_train_composition_accuracy": 0.5, "probe_val_composition_accuracy": 0.4}]
    path = tmp_path / "curve.png"
    fig = viz.plot_probe_curve(history, cpu_hours_per_step=0.01, title="toy", path=path)
    _check(fig, path)
    line = fig.axes[0].lines[0]
    assert list(line.get_xdata()) == [1.0, 2.0] and list(line.get_ydata()) == [10.0, 40.0]


def test_plot_probe_curve_uses_a_cpu_hours_column_when_rows_carry_one(tmp_path):
    history = [{"step": s, "cpu_hours": h, "probe_train_match_rate": 0.1, "probe_val_match_rate": 0.2,
                "probe_train_composition_accuracy": 0.3, "probe_val_composition_accuracy": 0.4}
               for s, h in ((100, 0.5), (200, 0.7))]
    fig = viz.plot_probe_curve(history, None, title="toy", path=tmp_path / "curve.png")
    assert list(fig.axes[0].lines[0].get_xdata()) == [0.5, 0.7]


def test_plot_quality_cost_draws_each_update_and_the_5000_call_band(tmp_path):
    from tvcsp.sampler_cost import summarise

    rows = [{"update": u, "num_levels": 50, "n_step_each": k, "types": "kept", "decoder_calls": 50 * k, "seed": seed,
             "match_rate": m + 0.02 * seed, "rmse": 0.1, "seconds_per_crystal": 0.1}
            for u, k, m in (("langevin", 100, 0.8), ("langevin", 2, 0.7), ("ddim", 1, 0.5)) for seed in (0, 1)]
    path = tmp_path / "qc.png"
    fig = viz.plot_quality_cost(summarise(rows), title="toy", path=path)
    _check(fig, path)
    assert len(fig.axes) == 2  # match rate and RMSE; no generation panels without generation metrics
    ax = fig.axes[0]
    langevin = ax.containers[0]
    assert list(langevin.lines[0].get_xdata()) == [100, 5000]
    assert list(langevin.lines[0].get_ydata()) == pytest.approx([71.0, 81.0])
    assert any(line.get_linestyle() == ":" and line.get_ydata()[0] == pytest.approx(81.0) for line in ax.lines)


def test_plot_quality_cost_keeps_only_the_panels_asked_for(tmp_path):
    from tvcsp.sampler_cost import summarise

    rows = [{"update": "langevin", "num_levels": 50, "n_step_each": 2, "types": "kept", "decoder_calls": 100,
             "seed": 0, "match_rate": 0.8, "rmse": 0.1, "seconds_per_crystal": 0.1, "valid": 0.9, "cov_recall": 0.3,
             "cov_precision": 0.2, "emd_energy": 0.3}]
    assert len(viz.plot_quality_cost(summarise(rows), "toy").axes) == 6
    assert len(viz.plot_quality_cost(summarise(rows), "toy", metrics=("valid", "cov_recall")).axes) == 2


def test_plot_prior_samples_one_panel_per_prior_on_shared_axes(tmp_path):
    rng = np.random.default_rng(0)
    background = rng.normal(size=(200, 2)) * 0.3
    samples = {"N(0, I)": rng.normal(size=(150, 2)), "learned": rng.normal(size=(150, 2)) * 0.3}
    path = tmp_path / "priors.png"
    fig = viz.plot_prior_samples(background, samples, "priors", path=path)
    _check(fig, path)
    axes = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in axes] == ["N(0, I)", "learned"]
    assert axes[0].get_xlim() == axes[1].get_xlim() and axes[0].get_xlim()[1] > 2  # N(0, I) stays on the map


def test_plot_latent_spread(tmp_path):
    from tvcsp.diagnostics import posterior_usage

    mu = torch.randn(50, 6) * torch.tensor([1.0, 0.5, 0.2, 0.01, 0.0, 0.0])
    usage = posterior_usage(mu, torch.full((50, 6), -2.0))
    path = tmp_path / "spread.png"
    _check(viz.plot_latent_spread(usage, path=path), path)
