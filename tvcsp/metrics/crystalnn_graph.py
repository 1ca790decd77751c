"""CDVAE's periodic CrystalNN bond graph (CDVAE cdvae/common/data_utils.py), built on a crystal exactly as given
(docs/metrics.md#property-model).

No Niggli reduction, no re-wrapping: the fractional coordinates and the lattice of the structure are used as
they are, and the image offsets pymatgen reports refer to those coordinates. Graph building is the slow part
of property prediction, so :func:`crystalnn_graphs` can spread it over a process pool.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from .parallel import parallel_map

__all__ = ["CDVAE_CRYSTALNN_SETTINGS", "CrystalGraph", "crystalnn_graph", "crystalnn_graphs"]

#: CDVAE's non-default CrystalNN settings; everything else (search_cutoff 7 Å, weighted_cn False,
#: cation_anion False) keeps pymatgen's defaults.
CDVAE_CRYSTALNN_SETTINGS = {"distance_cutoffs": None, "x_diff_weight": -1, "porous_adjustment": False}


@dataclass
class CrystalGraph:
    """One crystal with its directed CrystalNN edges.

    Attributes:
        atom_types: ``(N,)`` int64 atomic numbers.
        frac_coords: ``(N, 3)`` float64 fractional coordinates as given (not wrapped).
        lattice: ``(3, 3)`` float64 lattice matrix in Å, rows are the lattice vectors.
        edge_index: ``(2, E)`` int64, row 0 = source (neighbour) ``j``, row 1 = target (centre) ``i``.
        images: ``(E, 3)`` int64 image ``t`` of the source: edge vector ``x_j + t·M − x_i``.
    """

    atom_types: np.ndarray
    frac_coords: np.ndarray
    lattice: np.ndarray
    edge_index: np.ndarray
    images: np.ndarray


def _crystalnn():
    from pymatgen.analysis.local_env import CrystalNN

    return CrystalNN(**CDVAE_CRYSTALNN_SETTINGS)


def crystalnn_graph(structure) -> CrystalGraph:
    """CDVAE's CrystalNN graph of a pymatgen ``Structure``.

    pymatgen's ``StructureGraph`` keeps one entry per undirected bond ``(i, j, t)`` ("site j shifted by image
    ``t`` is bonded to site i"); each becomes the two directed edges ``j → i`` with ``+t`` and ``i → j`` with
    ``−t``, as in CDVAE's ``build_crystal_graph``.
    """
    from pymatgen.analysis.graphs import StructureGraph

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = StructureGraph.from_local_env_strategy(structure, _crystalnn()).graph
    bonds = [(i, j, image) for i, j, image in graph.edges(data="to_jimage")]
    source = [b[1] for b in bonds] + [b[0] for b in bonds]
    target = [b[0] for b in bonds] + [b[1] for b in bonds]
    images = np.array([b[2] for b in bonds], dtype=np.int64).reshape(-1, 3)
    return CrystalGraph(
        atom_types=np.array(structure.atomic_numbers, dtype=np.int64),
        frac_coords=np.array(structure.frac_coords, dtype=np.float64),
        lattice=np.array(structure.lattice.matrix, dtype=np.float64),
        edge_index=np.array([source, target], dtype=np.int64).reshape(2, -1),
        images=np.concatenate([images, -images]),
    )


def _graph_or_none(structure) -> CrystalGraph | None:
    try:
        return crystalnn_graph(structure)
    except Exception:  # noqa: BLE001 - CrystalNN fails on some degenerate generated cells; reported as None
        return None


def crystalnn_graphs(structures: list, workers: int | None = None, progress: bool = True) -> list[CrystalGraph | None]:
    """:func:`crystalnn_graph` of every structure, in order; ``None`` where pymatgen raised.

    Args:
        structures: pymatgen ``Structure`` objects.
        workers: processes (default: all CPUs; 1 runs in this process), see :func:`~tvcsp.metrics.parallel_map`.
        progress: show a tqdm bar.
    """
    return parallel_map(_graph_or_none, structures, workers=workers, desc="CrystalNN graphs", progress=progress)
