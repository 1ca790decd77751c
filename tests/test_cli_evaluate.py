"""``tvcsp evaluate DIR`` and the metrics library score the same arrays to the same numbers, including crystals
whose lattice the sampler could not use (NaN, zero or negative lengths): one evaluation path, CDVAE's rules."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import perovskite, rock_salt
from pymatgen.core import Lattice, Structure

from tvcsp.cli import main
from tvcsp.data import get_dataset, load_split
from tvcsp.metrics import (
    CrystalArrays,
    crystal_arrays,
    evaluate_generation,
    evaluate_reconstruction,
    split_crystal_arrays,
    to_jsonable,
)

CUBIC = np.full(3, 90.0)


def cubic_perovskite(a: float, species=("Ba", "Ti", "O", "O", "O")) -> Structure:
    return Structure(Lattice.cubic(a), list(species), perovskite().frac_coords)


def with_lengths(arrays: CrystalArrays, lengths) -> CrystalArrays:
    return arrays._replace(lengths=np.array(lengths, float))


def sampled_crystals() -> list[CrystalArrays]:
    """Six crystals as a sampler returns them, four with an unusable lattice; five are comp-valid by CDVAE's rule
    (the atom types alone decide), although only two can be built."""
    nacl2 = CrystalArrays(np.full(3, 4.0), np.array([90.0, math.nan, 90.0]), np.array([11, 17, 17]),
                          np.array([[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0, 0]]))
    return [
        crystal_arrays(perovskite()),
        crystal_arrays(cubic_perovskite(4.0)),
        with_lengths(crystal_arrays(rock_salt()), [5.64, math.nan, 5.64]),  # non_finite
        with_lengths(crystal_arrays(perovskite()), [3.9, 3.9, 0.0]),  # singular_lattice
        with_lengths(crystal_arrays(cubic_perovskite(4.1)), [4.1, -4.1, 4.1]),  # non_positive_lattice
        nacl2,  # fails SMACT and has a NaN angle
    ]


def _pack(crystals: list[CrystalArrays], prefix: str = "") -> dict[str, torch.Tensor]:
    """Batched float32 tensors of a run (``prefix`` "gt_": the ground truth of a reconstruction, no eval axis)."""
    lead = (lambda t: t) if prefix else (lambda t: t[None])
    return {
        f"{prefix}num_atoms": lead(torch.tensor([len(c.atom_types) for c in crystals])),
        f"{prefix}lengths": lead(torch.tensor(np.stack([c.lengths for c in crystals]), dtype=torch.float32)),
        f"{prefix}angles": lead(torch.tensor(np.stack([c.angles for c in crystals]), dtype=torch.float32)),
        f"{prefix}frac_coords": lead(torch.tensor(np.concatenate([c.frac_coords for c in crystals]),
                                                  dtype=torch.float32)),
        f"{prefix}atom_types": lead(torch.tensor(np.concatenate([c.atom_types for c in crystals]))),
    }


def write_run(folder: Path, task: str, crystals: list[CrystalArrays], truth: list[CrystalArrays] = ()) -> Path:
    """A finished run folder (``samples.pt`` laid out as :mod:`tvcsp.tasks` writes it) holding ``crystals``."""
    folder.mkdir(parents=True)
    samples = {**_pack(crystals), "valid_lattice": torch.tensor([[bool(np.isfinite(c.lengths).all()
                                                                         and (c.lengths > 0).all())
                                                                    for c in crystals]]),
               "z": torch.zeros(len(crystals), 2),
               "meta": {"settings": {"task": task, "dataset": "perov_5", "n": len(crystals), "seed": 0}}}
    if truth:
        samples |= _pack(list(truth), "gt_")
    torch.save(samples, folder / "samples.pt")
    return folder


def batched(crystals: list[CrystalArrays]) -> list[CrystalArrays]:
    """The arrays as the run stores them: float32, split back per crystal."""
    packed = {k: v[0] for k, v in _pack(crystals).items()}
    return split_crystal_arrays(packed["lengths"], packed["angles"], packed["num_atoms"], packed["atom_types"],
                                packed["frac_coords"])


def without_timings(metrics: dict) -> dict:
    return {k: v for k, v in to_jsonable(metrics).items() if k != "timings_s"}


def cli_metrics(run: Path, *options: str) -> dict:
    """``tvcsp evaluate`` of a run folder: the metrics it wrote, wall-clock timings aside."""
    main(["evaluate", str(run), "--workers", "1", *options])
    return without_timings(json.loads((run / "metrics.json").read_text())["metrics"])


@pytest.fixture
def data_dir(tmp_path) -> Path:
    """perov_5 test and train CSVs of a few cubic perovskites (train holds a copy of the first sampled crystal)."""
    folder = tmp_path / "data" / "perov_5"
    folder.mkdir(parents=True)
    splits = {"test": [cubic_perovskite(a) for a in (3.9, 4.05, 4.2)],
              "train": [perovskite(), cubic_perovskite(4.3, ("Sr", "Zr", "O", "O", "O"))]}
    for split, structures in splits.items():
        rows = [{"material_id": f"{split}{i}", "cif": s.to(fmt="cif"), "heat_ref": 0.1 * i}
                for i, s in enumerate(structures)]
        pd.DataFrame(rows).to_csv(folder / f"{split}.csv")
    return folder.parent


def test_generation_run_with_unusable_lattices_scores_as_the_library(tmp_path, data_dir):
    crystals = sampled_crystals()
    run = write_run(tmp_path / "gen", "generation", crystals)
    cli = cli_metrics(run, "--no-energy", "--novelty", "--data-dir", str(data_dir))

    split = {name: load_split(get_dataset("perov_5"), name, data_dir=data_dir, progress=False)
             for name in ("test", "train")}
    arrays = {name: split_crystal_arrays(c.lengths, c.angles, c.num_atoms, c.atom_types, c.frac_coords)
              for name, c in split.items()}
    library = evaluate_generation(batched(crystals), arrays["test"], "perov_5", workers=1, progress=False,
                                  energy_skipped="energy EMD skipped: --no-energy", train_structures=arrays["train"])
    assert cli == without_timings(library)
    validity = cli["validity"]
    assert validity["comp_valid"] == pytest.approx(5 / 6) and validity["n_constructed"] == 2
    assert validity["reasons"] == {"non_finite": 2, "singular_lattice": 1, "non_positive_lattice": 1}
    assert cli["uniqueness"]["n"] == 2 and cli["novelty"]["n_novel"] == 1  # SrTiO3 is in train


def test_reconstruction_run_with_unusable_lattices_scores_as_the_library(tmp_path):
    truth = [crystal_arrays(s) for s in (perovskite(), cubic_perovskite(4.0), rock_salt(), perovskite(),
                                         cubic_perovskite(4.1), perovskite())]
    predicted = sampled_crystals()
    run = write_run(tmp_path / "rec", "reconstruction", predicted, truth)
    library = evaluate_reconstruction(batched(predicted), batched(truth), workers=1, progress=False)
    cli = cli_metrics(run)
    assert cli == without_timings(library)
    assert cli["match_rate"] == pytest.approx(2 / 6) and cli["ceiling"] == 1.0
