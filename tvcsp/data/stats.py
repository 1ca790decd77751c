"""Dataset statistics the encoder needs (paper App. B.1, docs/data.md#statistics)."""

from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass
from multiprocessing import get_context

import numpy as np
import torch
from tqdm.auto import tqdm

from ..geometry import radius_graph_pbc
from .crystals import CrystalTensors

__all__ = ["DatasetStats", "compute_stats", "edge_distances", "mean_coordination", "mean_graph_degree"]


@dataclass(frozen=True)
class DatasetStats:
    """Statistics of a (training) split; stored in the cache and in every checkpoint.

    Attributes:
        n_crystals: crystals in the split.
        max_atoms, mean_atoms: largest and mean number of atoms per cell (Σ n_i / N).
        mean_coordination: CrystalNN coordination number averaged per structure, then over structures
            (paper Eq. 6); the edge-degree embedding divides by its square root.
        coordination_sample: how many structures that mean was computed on (all, or a seeded sample).
        graph_cutoff, graph_max_neighbors: the encoder graph the next value refers to (Å, count).
        mean_graph_degree: mean in-degree of that radius graph (the ablation alternative to the CN).
        elements: sorted atomic numbers present.
    """

    n_crystals: int
    max_atoms: int
    mean_atoms: float
    mean_coordination: float
    coordination_sample: int
    graph_cutoff: float
    graph_max_neighbors: int
    mean_graph_degree: float
    elements: tuple[int, ...]

    def to_dict(self) -> dict:
        return {**asdict(self), "elements": list(self.elements)}

    @classmethod
    def from_dict(cls, d: dict) -> DatasetStats:
        return cls(**{**d, "elements": tuple(d["elements"])})


def _structure_cn(args) -> float:
    from pymatgen.analysis.local_env import CrystalNN
    from pymatgen.core import Lattice, Structure

    z, frac, lengths, angles = args
    structure = Structure(Lattice.from_parameters(*lengths, *angles), z.tolist(), frac)
    cnn = CrystalNN()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return float(np.mean([cnn.get_cn(structure, i) for i in range(len(structure))]))
        except Exception:  # noqa: BLE001 - CrystalNN fails on a few odd cells; they are left out and counted
            return float("nan")


def mean_coordination(
    crystals: CrystalTensors,
    sample: int | None = None,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
) -> tuple[float, int]:
    """Mean CrystalNN coordination number (per-structure mean, then mean over structures).

    Args:
        sample: use a seeded random subset of this many structures (``None``: all).

    Returns:
        (mean, number of structures it was computed on).
    """
    idx = np.arange(len(crystals))
    if sample is not None and sample < len(idx):
        idx = np.sort(np.random.default_rng(seed).choice(idx, sample, replace=False))
    ptr = crystals.ptr.tolist()
    jobs = [
        (
            crystals.atom_types[ptr[i] : ptr[i + 1]].numpy(),
            crystals.frac_coords[ptr[i] : ptr[i + 1]].numpy(),
            crystals.lengths[i].tolist(),
            crystals.angles[i].tolist(),
        )
        for i in idx
    ]
    workers = workers or os.cpu_count() or 1
    bar = dict(total=len(jobs), desc="CrystalNN coordination", unit="crystal", disable=not progress)
    if workers > 1 and len(jobs) >= 64:
        with get_context("fork").Pool(workers) as pool:
            cns = np.array(list(tqdm(pool.imap(_structure_cn, jobs, chunksize=16), **bar)))
    else:
        cns = np.array([_structure_cn(j) for j in tqdm(jobs, **bar)])
    ok = np.isfinite(cns)
    return float(cns[ok].mean()), int(ok.sum())


def _graphs(crystals: CrystalTensors, cutoff: float, max_neighbors: int | None, batch_size: int = 512):
    """Periodic radius graphs of the split, ``batch_size`` crystals at a time."""
    ptr, lattices = crystals.ptr, crystals.lattices
    for start in range(0, len(crystals), batch_size):
        stop = min(start + batch_size, len(crystals))
        a0, a1 = int(ptr[start]), int(ptr[stop])
        yield radius_graph_pbc(
            crystals.frac_coords[a0:a1], lattices[start:stop], crystals.num_atoms[start:stop], cutoff, max_neighbors
        )


def mean_graph_degree(crystals: CrystalTensors, cutoff: float, max_neighbors: int | None) -> float:
    """Mean in-degree of the encoder's periodic radius graph over all atoms of the split."""
    edges = sum(g.edge_index.shape[1] for g in _graphs(crystals, cutoff, max_neighbors))
    return edges / max(int(crystals.num_atoms.sum()), 1)


def edge_distances(
    crystals: CrystalTensors, cutoff: float, max_neighbors: int | None, max_crystals: int | None = 2000, seed: int = 0
) -> torch.Tensor:
    """``(E,)`` edge lengths (Å) of the radius graph over a seeded sample of at most ``max_crystals`` crystals."""
    if max_crystals is not None and max_crystals < len(crystals):
        pick = torch.randperm(len(crystals), generator=torch.Generator().manual_seed(seed))[:max_crystals]
        crystals = crystals.select(pick.sort().values)
    return torch.cat([g.distances for g in _graphs(crystals, cutoff, max_neighbors)])


def compute_stats(
    crystals: CrystalTensors,
    cutoff: float,
    max_neighbors: int,
    coordination_sample: int | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> DatasetStats:
    """All statistics of :class:`DatasetStats` for one split."""
    with torch.no_grad():
        degree = mean_graph_degree(crystals, cutoff, max_neighbors)
    cn, n_cn = mean_coordination(crystals, coordination_sample, workers=workers, progress=progress)
    return DatasetStats(
        n_crystals=len(crystals),
        max_atoms=int(crystals.num_atoms.max()),
        mean_atoms=float(crystals.num_atoms.double().mean()),
        mean_coordination=cn,
        coordination_sample=n_cn,
        graph_cutoff=float(cutoff),
        graph_max_neighbors=int(max_neighbors),
        mean_graph_degree=degree,
        elements=tuple(sorted(set(crystals.atom_types.tolist()))),
    )
