"""Invariance checks for functions of one crystal (used by the tests and the notebooks).

A crystal is ``(atom_types (N,), frac_coords (N, 3), lattice (1, 3, 3) Å with rows = lattice vectors,
num_atoms (1,))``. The same crystal can be written in many ways; a function of the crystal (a latent, an
energy) must not depend on which:

* ``rotation`` / ``reflection``: Cartesian positions x → R x, i.e. ``lattice → lattice @ R.T``, with
  det R = +1 / −1;
* ``translation``: every fractional coordinate shifted by the same random vector;
* ``permutation``: atoms listed in another order;
* ``periodic_image``: each atom replaced by another periodic image (``frac + integers``);
* ``cell_change``: another primitive cell of the same lattice, ``lattice → U @ lattice`` and
  ``frac → frac @ U⁻¹`` with U an integer matrix of determinant ±1.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .geometry import radius_graph_pbc

__all__ = [
    "TRANSFORMS",
    "assert_crystal_invariant",
    "check_crystal_invariance",
    "graph_margin",
    "invariance_survey",
    "random_rotation",
    "structure_to_tensors",
    "unimodular_cell_change",
]

TRANSFORMS = ("rotation", "reflection", "translation", "permutation", "periodic_image", "cell_change")

CrystalFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def random_rotation(
    dtype: torch.dtype = torch.float64, reflect: bool = False, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Uniformly random ``(3, 3)`` orthogonal matrix with det +1, or det −1 (rotation times inversion) when
    ``reflect``."""
    q, r = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=generator))
    q = q * torch.sign(torch.diagonal(r))
    if torch.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return (-q if reflect else q).to(dtype)


def unimodular_cell_change(generator: torch.Generator | None = None, num_shears: int = 3) -> torch.Tensor:
    """Random ``(3, 3)`` long matrix with det ±1 and small entries: a product of ``num_shears`` unit shears
    (row i += ±row j), a row permutation and row sign flips. ``U @ lattice`` spans the same lattice."""
    u = torch.eye(3, dtype=torch.long)
    for _ in range(num_shears):
        i, j = torch.randperm(3, generator=generator)[:2].tolist()
        u[i] += (2 * int(torch.randint(2, (1,), generator=generator)) - 1) * u[j]
    signs = 2 * torch.randint(2, (3, 1), generator=generator) - 1
    return signs * u[torch.randperm(3, generator=generator)]


def _as_crystal(atom_types, frac_coords, lattice):
    lattice = lattice.reshape(1, 3, 3)
    return atom_types, frac_coords, lattice, torch.tensor([atom_types.shape[0]], device=atom_types.device)


def _transform(name: str, atom_types, frac, lattice, gen: torch.Generator):
    """One random instance of transform ``name`` applied to a crystal; returns (atom_types, frac, lattice)."""
    n, dtype, device = frac.shape[0], frac.dtype, frac.device
    if name in ("rotation", "reflection"):
        rot = random_rotation(dtype, reflect=name == "reflection", generator=gen).to(device)
        return atom_types, frac, lattice @ rot.T
    if name == "translation":
        return atom_types, frac + torch.rand(3, dtype=torch.float64, generator=gen).to(device, dtype), lattice
    if name == "permutation":
        perm = torch.randperm(n, generator=gen).to(device)
        return atom_types[perm], frac[perm], lattice
    if name == "periodic_image":
        return atom_types, frac + torch.randint(-2, 3, (n, 3), generator=gen).to(device, dtype), lattice
    if name == "cell_change":
        u = unimodular_cell_change(gen)
        u_inv = torch.linalg.inv(u.double()).round()
        return atom_types, frac @ u_inv.to(device, dtype), u.to(device, dtype) @ lattice
    raise ValueError(f"unknown transform {name!r}; expected one of {TRANSFORMS}")


@torch.no_grad()
def check_crystal_invariance(
    fn: CrystalFn,
    atom_types: torch.Tensor,
    frac_coords: torch.Tensor,
    lattice: torch.Tensor,
    *,
    n_trials: int = 3,
    reflections: bool = True,
    seed: int = 0,
) -> dict[str, float]:
    """Largest absolute change of ``fn``'s output under each transform of :data:`TRANSFORMS` (no autograd).

    Args:
        fn: ``fn(atom_types (N,), frac_coords (N, 3), lattice (1, 3, 3), num_atoms (1,)) → tensor``.
        atom_types: ``(N,)`` long.
        frac_coords: ``(N, 3)`` fractional coordinates.
        lattice: ``(3, 3)`` or ``(1, 3, 3)`` Å, rows = lattice vectors.
        n_trials: random instances per transform; the maximum deviation is reported.
        reflections: include the ``reflection`` transform (leave it out for SE(3)-only functions).
        seed: seeds the random transforms.

    Returns:
        ``{transform: max |fn(transformed) − fn(original)|}``, plus ``"scale"``: max |fn(original)|.
    """
    gen = torch.Generator().manual_seed(seed)
    crystal = _as_crystal(atom_types, frac_coords, lattice)
    reference = fn(*crystal)
    report = {}
    for name in TRANSFORMS:
        if name == "reflection" and not reflections:
            continue
        deviation = 0.0
        for _ in range(n_trials):
            moved = _as_crystal(*_transform(name, *crystal[:3], gen))
            deviation = max(deviation, float((fn(*moved) - reference).abs().max()))
        report[name] = deviation
    report["scale"] = float(reference.abs().max())
    return report


def assert_crystal_invariant(
    fn: CrystalFn,
    atom_types: torch.Tensor,
    frac_coords: torch.Tensor,
    lattice: torch.Tensor,
    *,
    atol: float,
    n_trials: int = 3,
    reflections: bool = True,
    seed: int = 0,
) -> dict[str, float]:
    """:func:`check_crystal_invariance`, raising ``AssertionError`` with the report when any deviation
    exceeds ``atol``; returns the report."""
    report = check_crystal_invariance(
        fn, atom_types, frac_coords, lattice, n_trials=n_trials, reflections=reflections, seed=seed
    )
    failed = {k: v for k, v in report.items() if k != "scale" and not v <= atol}
    if failed:
        raise AssertionError(f"not invariant within atol={atol:g}: {failed} (full report {report})")
    return report


def invariance_survey(
    fn: CrystalFn,
    crystals: dict,
    *,
    n_trials: int = 2,
    reflections: bool = True,
    seed: int = 0,
) -> dict:
    """:func:`check_crystal_invariance` over several crystals, with the worst case found.

    Args:
        fn: as in :func:`check_crystal_invariance`.
        crystals: name → ``(atom_types, frac_coords, lattice)`` tensors (a 4th entry, ``num_atoms``, is
            ignored), e.g. from :func:`structure_to_tensors`.
        n_trials, reflections, seed: as in :func:`check_crystal_invariance`.

    Returns:
        ``{"crystals": {name: report}, "worst": {"crystal", "transform", "relative"}}``, where ``relative`` is
        the largest deviation divided by that crystal's ``scale`` (max |fn|).
    """
    reports, worst = {}, {"crystal": None, "transform": None, "relative": 0.0}
    for name, crystal in crystals.items():
        report = check_crystal_invariance(
            fn, *crystal[:3], n_trials=n_trials, reflections=reflections, seed=seed
        )
        reports[name] = report
        scale = report["scale"] or 1.0
        for transform, deviation in report.items():
            if transform != "scale" and not deviation / scale <= worst["relative"]:
                worst = {"crystal": name, "transform": transform, "relative": deviation / scale}
    return {"crystals": reports, "worst": worst}


def graph_margin(
    frac_coords: torch.Tensor, lattice: torch.Tensor, cutoff: float, max_neighbors: int | None
) -> float:
    """How far (Å) a crystal is from a change of its capped radius graph.

    :func:`tvcsp.geometry.radius_graph_pbc` keeps the ``max_neighbors`` nearest neighbours of every atom and
    the whole shell that ties with the last of them, so symmetric crystals (whose shells are exactly tied)
    have a well-defined graph. It still changes when a neighbour crosses the cutoff or when the next shell
    moves to within rounding of the last kept one. Returns the smallest over atoms of: the gap between the
    last kept and the first dropped neighbour where the cap is reached, else the smallest |d − cutoff| over the
    neighbour distances d. A small margin means a small distortion of the crystal changes its graph.

    Args:
        frac_coords: ``(N, 3)`` fractional coordinates of one crystal.
        lattice: ``(3, 3)`` or ``(1, 3, 3)`` Å.
        cutoff: graph radius in Å.
        max_neighbors: the cap (``None``: no cap).
    """
    frac, lattice, num_atoms = frac_coords.double(), lattice.reshape(1, 3, 3).double(), torch.tensor([len(frac_coords)])
    everything = radius_graph_pbc(frac, lattice, num_atoms, cutoff + 1.0)
    kept = radius_graph_pbc(frac, lattice, num_atoms, cutoff, max_neighbors)
    margin = float("inf")
    for atom in range(frac.shape[0]):
        d = torch.sort(everything.distances[everything.edge_index[1] == atom]).values
        n_kept = int((kept.edge_index[1] == atom).sum())
        if int((d <= cutoff).sum()) > n_kept:
            margin = min(margin, float(d[n_kept] - d[n_kept - 1]))
        elif d.numel():
            margin = min(margin, float((d - cutoff).abs().min()))
    return margin


def structure_to_tensors(
    structure, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """pymatgen ``Structure`` → ``(atom_types (N,) long Z, frac_coords (N, 3), lattice (1, 3, 3) Å,
    num_atoms (1,))``, the argument order of the encoder and of ``fn`` above."""
    atom_types = torch.tensor([site.specie.Z for site in structure], dtype=torch.long)
    frac = torch.tensor(np.asarray(structure.frac_coords), dtype=dtype)
    lattice = torch.tensor(np.asarray(structure.lattice.matrix), dtype=dtype).reshape(1, 3, 3)
    return atom_types, frac, lattice, torch.tensor([len(structure)])
