"""Plotting helpers for the notebooks: the core computes, the notebooks narrate, this module draws.

Matplotlib only and headless-safe: figures are built with :class:`matplotlib.figure.Figure` (no pyplot state,
no GUI backend), every function returns its Figure and, given ``path``, also writes a PNG (150 dpi, parent
folders created). In a notebook, end a cell with the returned figure to display it.

Units: distances and lattice lengths in Å, angles in degrees.
"""

from __future__ import annotations

import functools
import os
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .data.crystals import CrystalTensors

__all__ = [
    "DEFAULT_VIEW",
    "element_color",
    "plot_dataset_histograms",
    "plot_hybrid_scaling",
    "plot_latent_spread",
    "plot_prior_samples",
    "plot_probe_curve",
    "plot_quality_cost",
    "plot_rbf",
    "plot_rbf_comparison",
    "plot_structure",
    "plot_structures",
    "show_live",
    "under_papermill",
    "save_figure",
]

DEFAULT_VIEW = (20.0, -60.0)
"""Viewing direction (elevation, azimuth) in degrees shared by every structure drawing."""


def save_figure(fig: Figure, path: str | os.PathLike | None) -> Figure:
    """Write ``fig`` as PNG to ``path`` (parents created; 150 dpi, tight box) unless ``path`` is None."""
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=150, bbox_inches="tight")
    return fig


# ----------------------------------------------------------------------------------------------- structures


@functools.cache
def _color_scheme(scheme: str) -> dict:
    import pymatgen.core
    from monty.serialization import loadfn

    return loadfn(Path(pymatgen.core.__file__).parent / "ElementColorSchemes.yaml")[scheme]


def element_color(symbol: str, scheme: str = "Jmol") -> tuple[float, float, float]:
    """RGB in [0, 1] of an element in pymatgen's ``'VESTA'`` or ``'Jmol'`` colour scheme (grey if unknown)."""
    rgb = _color_scheme(scheme).get(symbol, (128, 128, 128))
    return tuple(c / 255 for c in rgb)


def _covalent_radius(symbol: str) -> float:
    """Covalent radius in Å (pymatgen's table), falling back to the atomic radius, then 1.5 Å."""
    from pymatgen.analysis.molecule_structure_comparator import CovalentRadius
    from pymatgen.core import Element

    if symbol in CovalentRadius.radius:
        return float(CovalentRadius.radius[symbol])
    radius = Element(symbol).atomic_radius
    return float(radius) if radius is not None else 1.5


def _as_structure(item, index: int = 0):
    """A pymatgen ``Structure`` from a Structure or a :class:`CrystalTensors` (crystal ``index``)."""
    return item.to_structure(index) if isinstance(item, CrystalTensors) else item


def plot_structure(
    structure,
    ax=None,
    view: tuple[float, float] = DEFAULT_VIEW,
    supercell: tuple[int, int, int] = (1, 1, 1),
    index: int = 0,
    title: str | None = None,
    atom_scale: float = 0.35,
    boundary_images: bool = True,
    face_tol: float = 0.02,
    legend: bool = True,
    path: str | os.PathLike | None = None,
) -> Figure:
    """Static 3-D drawing of a unit cell (or supercell): cell edges, atoms coloured per element.

    The view is fixed by ``view`` = (elevation, azimuth) in degrees, in the crystal's own Cartesian frame, so
    two structures (ground truth and reconstruction) drawn with the same ``view`` are seen from the same side.

    Args:
        structure: pymatgen ``Structure`` or :class:`~tvcsp.data.CrystalTensors` (crystal ``index``).
        ax: a 3-D ``Axes`` to draw into; a new single-panel figure when None.
        supercell: repetitions along a, b, c.
        atom_scale: sphere radius as a fraction of the covalent radius (1 = spheres touch at bond length).
        boundary_images: also draw the periodic copies of atoms lying on the cell faces (as VESTA does),
            i.e. within ``face_tol`` (fractional) of a face.
        legend: element legend (symbol, colour) next to the panel.
        path: optional PNG path.
    """
    structure = _as_structure(structure, index)
    if ax is None:
        fig = Figure(figsize=(4.5, 4.5))
        ax = fig.add_subplot(projection="3d")
    fig = ax.get_figure()
    reps = np.array(supercell, dtype=int)
    matrix = structure.lattice.matrix  # rows = lattice vectors, Å

    # atoms (fractional coordinates in the supercell, wrapped to [0, 1) of the original cell first)
    frac = np.mod(structure.frac_coords, 1.0)
    frac[np.isclose(frac, 1.0)] = 0.0
    symbols = [site.specie.symbol for site in structure]
    shifts = np.array(np.meshgrid(*[np.arange(r) for r in reps], indexing="ij")).reshape(3, -1).T
    pos = (frac[None] + shifts[:, None]).reshape(-1, 3)
    sym = np.array(symbols * len(shifts))
    if boundary_images:
        for axis in range(3):
            step = reps[axis] * np.eye(3)[axis]
            low, high = pos[:, axis] < face_tol, pos[:, axis] > reps[axis] - face_tol
            pos = np.concatenate([pos, pos[low] + step, pos[high] - step])
            sym = np.concatenate([sym, sym[low], sym[high]])
    cart = pos @ matrix

    # cell edges of the (super)cell
    cell = reps[:, None] * matrix
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=float) @ cell
    for i in range(8):
        for j in range(i + 1, 8):
            if bin(i ^ j).count("1") == 1:  # corners differing in one index share an edge
                ax.plot(*corners[[i, j]].T, color="0.3", lw=0.8)
    for vec, name in zip(matrix, "abc", strict=True):
        tip = vec * 1.08
        ax.text(*tip, name, color="0.2", fontsize=9, ha="center", va="center")

    lo, hi = np.minimum(corners.min(0), cart.min(0)), np.maximum(corners.max(0), cart.max(0))
    extent = float(np.max(hi - lo))
    # marker size in points²: the drawing's largest extent spans about 70 % of the panel's smaller side
    box = ax.get_position()
    panel_pt = 72 * min(box.width * fig.get_figwidth(), box.height * fig.get_figheight())
    pt_per_a = 0.7 * panel_pt / max(extent, 1e-6)
    sym = sym.tolist()
    elements = sorted(set(sym), key=lambda s: (-sym.count(s), s))
    order = np.argsort(cart @ _view_direction(view))  # draw back to front
    sizes = np.array([(2 * atom_scale * _covalent_radius(s) * pt_per_a) ** 2 for s in sym])
    colors = np.array([element_color(s) for s in sym])
    ax.scatter(*cart[order].T, s=sizes[order], c=colors[order], edgecolors="0.15", linewidths=0.4,
               depthshade=False, alpha=1.0)

    ax.set_box_aspect(np.maximum(hi - lo, 1e-3))
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.set_zlim(lo[2], hi[2])
    ax.view_init(elev=view[0], azim=view[1])
    ax.set_axis_off()
    if title is None:
        a, b, c = structure.lattice.abc
        al, be, ga = structure.lattice.angles
        title = (f"{structure.composition.reduced_formula} ({len(structure)} atoms)\n"
                 f"a, b, c = {a:.2f}, {b:.2f}, {c:.2f} Å\nα, β, γ = {al:.1f}°, {be:.1f}°, {ga:.1f}°")
    ax.set_title(title, fontsize=9)
    if legend:
        handles = [
            Line2D([], [], marker="o", ls="", markersize=7, markerfacecolor=element_color(s),
                   markeredgecolor="0.15", label=s)
            for s in elements
        ]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.0, 0.0), ncols=min(len(handles), 6),
                  fontsize=8, frameon=False, handletextpad=0.2, columnspacing=0.8)
    return save_figure(fig, path)


def _view_direction(view: tuple[float, float]) -> np.ndarray:
    """Unit vector from the scene towards the viewer for matplotlib's (elev, azim) in degrees."""
    elev, azim = np.deg2rad(view)
    return np.array([np.cos(elev) * np.cos(azim), np.cos(elev) * np.sin(azim), np.sin(elev)])


def plot_structures(
    structures,
    titles: list[str] | None = None,
    view: tuple[float, float] = DEFAULT_VIEW,
    ncols: int = 3,
    panel_size: float = 3.6,
    supercell: tuple[int, int, int] = (1, 1, 1),
    suptitle: str | None = None,
    path: str | os.PathLike | None = None,
) -> Figure:
    """Several structures side by side, all drawn with the same ``view`` (see :func:`plot_structure`).

    ``structures`` is a list of pymatgen Structures, or a :class:`~tvcsp.data.CrystalTensors` (all crystals).
    """
    if isinstance(structures, CrystalTensors):
        structures = [structures.to_structure(i) for i in range(len(structures))]
    n = len(structures)
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    fig = Figure(figsize=(panel_size * ncols, (panel_size + 0.4) * nrows))
    axes = [fig.add_subplot(nrows, ncols, i + 1, projection="3d") for i in range(n)]
    for i, (ax, s) in enumerate(zip(axes, structures, strict=True)):
        plot_structure(s, ax=ax, view=view, supercell=supercell, title=None if titles is None else titles[i])
    if suptitle:
        fig.suptitle(suptitle)
    return save_figure(fig, path)


# ------------------------------------------------------------------------------------------------- datasets


def _element_fractions(crystals: CrystalTensors) -> Counter:
    """Element symbol → fraction of crystals that contain it."""
    from pymatgen.core import Element

    batch = torch.repeat_interleave(torch.arange(len(crystals)), crystals.num_atoms)
    pairs = torch.unique(batch * 128 + crystals.atom_types)
    counts = Counter((pairs % 128).tolist())
    return Counter({Element.from_Z(z).symbol: n / len(crystals) for z, n in counts.items()})


def plot_dataset_histograms(
    crystals: CrystalTensors,
    distances: torch.Tensor | np.ndarray | None,
    label: str,
    cutoff: float | None = None,
    top_elements: int = 30,
    path: str | os.PathLike | None = None,
) -> Figure:
    """Overview of one split: atoms per cell, lattice lengths (Å), angles (°), element frequencies (top
    ``top_elements`` by the fraction of crystals containing them) and radius-graph edge lengths (Å).

    Args:
        distances: edge lengths in Å (e.g. from :func:`tvcsp.data.edge_distances`); the panel is left out when None.
        label: dataset label for the title (say "reduced split" where it applies).
        cutoff: graph cutoff in Å, drawn as a vertical line on the distance panel.
    """
    fig = Figure(figsize=(14, 7.5), layout="constrained")
    grid = fig.add_gridspec(2, 3)
    ax_n, ax_len, ax_ang = (fig.add_subplot(grid[0, i]) for i in range(3))
    ax_el = fig.add_subplot(grid[1, :2] if distances is not None else grid[1, :])

    n = crystals.num_atoms.numpy()
    ax_n.hist(n, bins=np.arange(n.min() - 0.5, n.max() + 1.5), color="tab:blue", edgecolor="white")
    ax_n.set(xlabel="atoms per cell", ylabel="crystals",
             title=f"atoms per cell (mean {n.mean():.2f}, max {n.max()})")

    for values, ax, names, unit in (
        (crystals.lengths.numpy(), ax_len, "abc", "Å"),
        (crystals.angles.numpy(), ax_ang, "αβγ", "°"),
    ):
        # lengths: a few very long cells (layered polytypes) would squeeze the rest; show up to the 99.9 %
        lo, top = values.min(), (np.quantile(values, 0.999) if unit == "Å" else values.max())
        bins = np.histogram_bin_edges(values, bins=60, range=(lo, top) if top > lo else None)
        for k, name in enumerate(names):  # distinct widths and dashes: a, b, c coincide for cubic cells
            ax.hist(values[:, k], bins=bins, histtype="step", lw=3.0 - k, ls=("-", "--", ":")[k], label=name)
        ax.set(xlabel=f"{'lattice lengths' if unit == 'Å' else 'lattice angles'} ({unit})", ylabel="crystals")
        ax.legend(fontsize=9)
        beyond = int((values > bins[-1]).sum())
        title = "lattice lengths" if unit == "Å" else "lattice angles"
        if beyond:
            title += f" ({beyond} values > {bins[-1]:.3g} {unit} not shown, max {values.max():.3g} {unit})"
        ax.set_title(title, fontsize=12 if not beyond else 9)

    fractions = _element_fractions(crystals).most_common(top_elements)
    symbols, values = zip(*fractions, strict=True) if fractions else ((), ())
    ax_el.bar(range(len(symbols)), [100 * v for v in values], color="tab:green")
    ax_el.set_xticks(range(len(symbols)), symbols, fontsize=8)
    ax_el.set_xlim(-0.6, max(len(symbols), 10) - 0.4)  # keep bars narrow when there are few elements
    n_el = len(_element_fractions(crystals))
    shown = f"top {len(symbols)} of {n_el}" if n_el > len(symbols) else f"all {n_el}"
    ax_el.set(ylabel="crystals containing it (%)", title=f"elements ({shown})")

    if distances is not None:
        ax_d = fig.add_subplot(grid[1, 2])
        d = torch.as_tensor(distances).double().numpy()
        ax_d.hist(d, bins=120, color="tab:purple")
        if cutoff is not None:
            ax_d.axvline(cutoff, color="k", ls="--", lw=1, label=f"cutoff {cutoff:g} Å")
            ax_d.legend(fontsize=9)
        ax_d.set(xlabel="edge length (Å)", ylabel="edges", title=f"radius-graph edges ({len(d):,})")
    fig.suptitle(f"{label}: {len(crystals):,} crystals")
    return save_figure(fig, path)


# ---------------------------------------------------------------------------------------------- radial bases


def _hybrid_parts(module) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    if hasattr(module, "bessel") and hasattr(module, "gaussian"):
        return module.bessel, module.gaussian
    return None


def plot_rbf(
    bases: dict[str, torch.nn.Module],
    cutoff: float,
    num_points: int = 600,
    path: str | os.PathLike | None = None,
) -> Figure:
    """Every basis function φ_k(d) against distance d ∈ [0, 1.05·cutoff] Å, one panel per basis.

    A hybrid basis (a module with ``bessel`` and ``gaussian`` parts) is drawn with its Bessel part (times its
    current weight w) in blue and its Gaussian part in orange.
    """
    d = torch.linspace(0.0, 1.05 * cutoff, num_points, dtype=torch.float64)
    fig = Figure(figsize=(4.6 * len(bases), 3.8), layout="constrained")
    axes = fig.subplots(1, len(bases), squeeze=False)[0]
    for ax, (name, basis) in zip(axes, bases.items(), strict=True):
        with torch.no_grad():
            phi = basis(d).float().numpy()
        parts = _hybrid_parts(basis)
        if parts is None:
            colors = [None] * phi.shape[1]
            ax.set_prop_cycle(color=[_cmap(i / max(phi.shape[1] - 1, 1)) for i in range(phi.shape[1])])
        else:
            nb = parts[0].out_dim
            colors = ["tab:blue"] * nb + ["tab:orange"] * (phi.shape[1] - nb)
            handles = [Line2D([], [], color="tab:blue", label=f"w·Bessel (w = {float(basis.weight):.3g})"),
                       Line2D([], [], color="tab:orange", label="Gaussian")]
            ax.legend(handles=handles, fontsize=8)
        for k in range(phi.shape[1]):
            ax.plot(d.numpy(), phi[:, k], lw=0.9, color=colors[k])
        ax.axvline(cutoff, color="k", ls="--", lw=0.8)
        ax.set(xlabel="distance d (Å)", ylabel="φ_k(d)", title=f"{name} ({phi.shape[1]} functions)")
    return save_figure(fig, path)


def _cmap(x: float):
    from matplotlib import colormaps

    return colormaps["viridis"](x)


def plot_hybrid_scaling(
    hybrid: torch.nn.Module,
    distances: torch.Tensor,
    cutoff: float | None = None,
    num_points: int = 600,
    path: str | os.PathLike | None = None,
) -> Figure:
    """How the hybrid's weight w balances its parts over a distance distribution.

    Top: root-mean-square over the basis functions, rms_k φ_k(d), of the Gaussian part, of the raw Bessel
    part (w = 1) and of the scaled Bessel part (current w), against d (Å); the legend gives each part's RMS
    over all edges in ``distances`` (what :meth:`~tvcsp.rbf.HybridRBF.fit_weight` equalises).
    Bottom: histogram of ``distances`` (Å).
    """
    bessel, gaussian = hybrid.bessel, hybrid.gaussian
    w = float(hybrid.weight)
    cutoff = float(cutoff if cutoff is not None else bessel.cutoff)
    dist = torch.as_tensor(distances).double().flatten()
    grid = torch.linspace(0.0, cutoff, num_points, dtype=torch.float64)
    with torch.no_grad():
        rms_b_grid = bessel(grid).pow(2).mean(-1).sqrt().numpy()
        rms_g_grid = gaussian(grid).pow(2).mean(-1).sqrt().numpy()
        rms_b = float(bessel(dist).pow(2).mean().sqrt())
        rms_g = float(gaussian(dist).pow(2).mean().sqrt())

    fig = Figure(figsize=(7.5, 6.5), layout="constrained")
    ax_top, ax_hist = fig.subplots(2, 1, sharex=True, height_ratios=(2, 1))
    ax_top.plot(grid, rms_b_grid, color="tab:blue", ls="--", label=f"Bessel, before (w = 1): RMS {rms_b:.3g}")
    ax_top.plot(grid, w * rms_b_grid, color="tab:blue",
                label=f"Bessel, after (w = {w:.3g}): RMS {w * rms_b:.3g}")
    ax_top.plot(grid, rms_g_grid, color="tab:orange", label=f"Gaussian: RMS {rms_g:.3g}")
    ax_top.set(ylabel="RMS over basis functions", yscale="log",
               title="hybrid RBF weight scaling (RMS over the edges shown in the legend)")
    ax_top.set_ylim(bottom=max(1e-3, 0.3 * min(rms_g_grid[rms_g_grid > 0].min(), (w * rms_b_grid)[1:].min())))
    ax_top.legend(fontsize=9)
    ax_hist.hist(dist.numpy(), bins=120, range=(0, cutoff), color="tab:purple")
    ax_hist.set(xlabel="edge length d (Å)", ylabel="edges", title=f"{dist.numel():,} edge lengths")
    for ax in (ax_top, ax_hist):
        ax.axvline(cutoff, color="k", ls="--", lw=0.8)
    return save_figure(fig, path)


def plot_rbf_comparison(comparison: dict, path: str | os.PathLike | None = None) -> Figure:
    """Training and validation loss against step for each basis of :func:`tvcsp.rbf_selection.compare_rbfs`.

    ``comparison["curves"][kind]`` holds ``{"train": {step: loss}, "val": {step: loss}}``; the winner (lowest
    final validation loss) is marked in the legend.
    """
    fig = Figure(figsize=(11, 3.8), layout="constrained")
    axes = fig.subplots(1, 2)
    for kind, curves in comparison["curves"].items():
        star = " ★" if kind == comparison.get("winner") else ""
        for ax, part, style in ((axes[0], "train", "-"), (axes[1], "val", "o-")):
            steps = sorted(curves[part], key=float)
            ax.plot([float(k) for k in steps], [curves[part][k] for k in steps], style, ms=3, label=kind + star)
    axes[0].set(xlabel="step", ylabel="training loss", yscale="log", title=f"{comparison['dataset']}: training")
    axes[1].set(xlabel="step", ylabel="validation loss (10·coord + type)", yscale="log", title="validation")
    for ax in axes:
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_probe_curve(history, cpu_hours_per_step: float | None, title: str,
                     path: str | os.PathLike | None = None) -> Figure:
    """Probe match rate (training and validation crystals) and composition accuracy against CPU-hours.

    ``history``: rows with ``step`` and ``probe_{train,val}_{match_rate,composition_accuracy}`` (the
    :class:`tvcsp.diagnostics.ProbeCallback` columns of :func:`tvcsp.train.read_metrics`, a DataFrame or a
    list of dicts); ``cpu_hours_per_step`` converts steps to CPU-hours (cores × wall-clock hours per step); rows
    with a ``cpu_hours`` column (a run trained in parts at different speeds) use it instead (pass ``None``).
    """
    rows = [dict(r) for r in (history.to_dict("records") if hasattr(history, "to_dict") else history)]
    rows = [r for r in rows if r.get("probe_val_match_rate") is not None and np.isfinite(r["probe_val_match_rate"])]
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    axes = fig.subplots(1, 2)
    hours = [float(r["cpu_hours"]) if r.get("cpu_hours") is not None else float(r["step"]) * cpu_hours_per_step
             for r in rows]
    for ax, metric, label in ((axes[0], "match_rate", "match rate"), (axes[1], "composition_accuracy",
                                                                       "composition right")):
        for part, style in (("train", "o-"), ("val", "s--")):
            ax.plot(hours, [100 * float(r[f"probe_{part}_{metric}"]) for r in rows], style, ms=4,
                    label=f"{part} probe")
        ax.set(xlabel="CPU-hours of training", ylabel=f"{label} (%)", ylim=(0, 100), title=f"{title}: {label}")
        ax.legend(fontsize=8)
    return save_figure(fig, path)


QUALITY_COST_PANELS = (("match_rate", "reconstruction match rate (%)", 100), ("rmse", "reconstruction RMSE", 1),
                       ("valid", "generated valid (%)", 100), ("cov_recall", "generated COV-R (%)", 100),
                       ("cov_precision", "generated COV-P (%)", 100), ("emd_energy", "energy EMD (eV/atom)", 1))


def plot_quality_cost(summary, title: str, path: str | os.PathLike | None = None,
                      metrics: tuple[str, ...] | None = None) -> Figure:
    """Sampler quality against decoder calls per crystal (log axis), mean ± seed-to-seed standard deviation.

    ``summary``: :func:`tvcsp.sampler_cost.summarise` entries (or a ``quality_cost_<split>.json``'s
    ``"summary"``); one panel per metric present (:data:`QUALITY_COST_PANELS`), one line per update rule, and the
    5,000-call point's mean ± sd drawn across the panel as the reference band. ``metrics`` keeps only those panels
    (e.g. ``("match_rate", "rmse")``).
    """
    panels = [p for p in QUALITY_COST_PANELS if any(p[0] in s for s in summary) and (not metrics or p[0] in metrics)]
    fig = Figure(figsize=(4.2 * len(panels), 3.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (key, label, scale) in zip(axes, panels, strict=True):
        for update in dict.fromkeys(s["update"] for s in summary):
            points = sorted((s["decoder_calls"], s[key]) for s in summary
                            if s["update"] == update and s.get(key) and s[key]["mean"] is not None)
            if points:
                calls, stats = zip(*points, strict=True)
                ax.errorbar(calls, [scale * v["mean"] for v in stats], yerr=[scale * (v["sd"] or 0) for v in stats],
                            fmt="o-", ms=4, capsize=3, label=update)
        cdvae = [s[key] for s in summary if s["decoder_calls"] == 5000 and s["update"] == "langevin" and s.get(key)]
        if cdvae and cdvae[0]["mean"] is not None:
            mean, sd = scale * cdvae[0]["mean"], scale * (cdvae[0]["sd"] or 0)
            ax.axhspan(mean - sd, mean + sd, color="0.85", zorder=0)
            ax.axhline(mean, color="0.4", ls=":", lw=1, label="5,000 calls (CDVAE)")
        ax.set(xscale="log", xlabel="decoder calls per crystal", ylabel=label)
        calls = sorted({s["decoder_calls"] for s in summary})
        ax.set_xticks(calls, [f"{c // 1000}k" if c >= 1000 and c % 1000 == 0 else f"{c}" for c in calls], minor=False)
        ax.set_xticks([], minor=True)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return save_figure(fig, path)


# ------------------------------------------------------------------------------------------------ latent space


def plot_prior_samples(background: np.ndarray, samples: dict[str, np.ndarray], title: str = "",
                       background_label: str = "encoded crystals (μ)",
                       path: str | os.PathLike | None = None) -> Figure:
    """Prior samples over the map of encoded crystals: one panel per prior, all with the same axes.

    Args:
        background: ``(B, 2)`` map coordinates of the encoded crystals (grey in every panel), e.g.
            ``fit_pca(mu).transform(mu)`` (:func:`tvcsp.latent.fit_pca`).
        samples: prior name → ``(M, 2)`` coordinates of its samples on the same map (coloured).
        title: figure title; background_label: legend entry of the grey points.
    """
    fig = Figure(figsize=(4.4 * max(len(samples), 1), 4.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, max(len(samples), 1), sharex=True, sharey=True))
    every = np.concatenate([np.asarray(background).reshape(-1, 2),
                            *[np.asarray(xy).reshape(-1, 2) for xy in samples.values()]])
    low, high = np.quantile(every, 0.001, axis=0), np.quantile(every, 0.999, axis=0)  # a few outliers off-map
    pad = 0.05 * (high - low + 1e-9)
    for k, (ax, (name, xy)) in enumerate(zip(axes, samples.items(), strict=False)):
        ax.scatter(*np.asarray(background).T, s=4, color="0.75", label=f"{background_label} ({len(background)})")
        ax.scatter(*np.asarray(xy).T, s=4, color=f"C{k}", alpha=0.6, label=f"{name} samples ({len(xy)})")
        ax.set(title=name, xlim=(low[0] - pad[0], high[0] + pad[0]), ylim=(low[1] - pad[1], high[1] + pad[1]))
        ax.legend(fontsize=7, markerscale=2, loc="upper right")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def plot_latent_spread(usage: dict, title: str = "", path: str | os.PathLike | None = None) -> Figure:
    """Per latent dimension, the spread of μ across crystals against the mean posterior σ (log axes), from
    :func:`tvcsp.diagnostics.posterior_usage`; the diagonal is std(μ) = σ and the dotted line the active-unit
    threshold (Var μ = ``usage["active_threshold"]``). Dimensions far left of the diagonal carry little about the
    crystal; N(0, I) asks std(μ)² + σ² = 1 (dashed curve)."""
    mu_std, sigma = np.asarray(usage["mu_std_per_dim"]), np.asarray(usage["sigma_per_dim"])
    fig = Figure(figsize=(4.6, 4.2), layout="constrained")
    ax = fig.subplots()
    ax.scatter(np.maximum(mu_std, 1e-4), np.maximum(sigma, 1e-4), s=14, color="C0",
               label=f"{len(mu_std)} dimensions ({usage['active_units']} active)")
    top = max(float(mu_std.max(initial=1.0)), float(sigma.max(initial=1.0)), 1.0) * 1.5
    floor = usage.get("active_threshold", 0.01) ** 0.5
    bottom = max(min(float(mu_std.min(initial=floor)), float(sigma.min(initial=floor)), floor) / 2, 1e-4)
    line = np.geomspace(bottom, top, 200)
    ax.plot(line, line, color="0.5", lw=0.8, label="std(μ) = σ")
    unit = line[line < 1]
    ax.plot(unit, np.sqrt(1 - unit**2), color="0.3", ls="--", lw=0.8, label="std(μ)² + σ² = 1 (N(0, I))")
    ax.axvline(floor, color="0.3", ls=":", lw=0.8, label="active-unit threshold")
    ax.set(xscale="log", yscale="log", xlim=(bottom, top), ylim=(bottom, top), xlabel="std of μ across crystals",
           ylabel="mean posterior σ",
           title=title or "spread of μ against σ per dimension")
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def under_papermill() -> bool:
    """True when this process's parent is the papermill command-line tool (a headless notebook run)."""
    try:
        import psutil

        return any("papermill" in part for part in psutil.Process().parent().cmdline())
    except Exception:  # psutil missing, no parent, no permission: treat as interactive
        return False


def show_live(structure) -> str:
    """Show ``structure`` in crystal-toolkit's live 3-D viewer inside Jupyter when that can work.

    Returns what happened: ``"live"``, ``"headless"`` (papermill: the kernel dies with the run, so a live view
    would be a dead iframe) or ``"unavailable"`` (crystal-toolkit not installed: ``pip install tvcsp[viz3d]``).
    Static figures (:func:`plot_structure`) are the fallback in both other cases.
    """
    if under_papermill():
        return "headless"
    try:
        import crystal_toolkit  # noqa: F401  (registers the Jupyter renderer of pymatgen structures)
        from IPython.display import display
    except ImportError:
        return "unavailable"
    display(structure)
    return "live"
