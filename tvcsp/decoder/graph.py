"""The decoder's graph: CDVAE's on-the-fly periodic radius graph, symmetrised as GemNet needs it
(docs/model.md#gemnet-t-decoder).

GemNet passes messages along directed edges and mixes every edge ``c → a`` with its reverse ``a → c``
(``id_swap``). The radius graph keeps the ``K`` nearest neighbours of each *target*, so it is not symmetric;
as in CDVAE, only the edges with ``source < target`` (or, between images of the same atom, the
lexicographically negative offset) are kept and their reversed copies (negated offset) are appended.

The edges are then sorted by target, and every edge gets a ``slot`` among the edges entering its target:
``(E, …)`` per-edge tensors can be laid out as ``(N, D, …)`` per-target tables (``D`` = largest in-degree),
which turns GemNet's triplet sums (over pairs of edges sharing a target) into batched matrix products.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..geometry import radius_graph_pbc

__all__ = ["DecoderGraph", "build_decoder_graph", "symmetrise_edges"]


@dataclass
class DecoderGraph:
    """Symmetric periodic graph with edges sorted by target; ``E`` edges, ``N`` atoms.

    Attributes:
        edge_index: ``(2, E)`` long, row 0 = source (neighbour) atom, row 1 = target (centre) atom.
        offsets: ``(E, 3)`` long image offset ``t`` of the source.
        distances: ``(E,)`` Å, |x_source + t·M − x_target|.
        directions: ``(E, 3)`` unit vectors from the source image to the target atom (GemNet's ``V_st``).
        id_swap: ``(E,)`` index of each edge's reverse (swapped atoms, negated offset).
        slot: ``(E,)`` position of the edge among the edges entering its target, 0 … in-degree − 1.
        degree: ``(N,)`` in-degree of every atom.
        width: ``D``, the largest in-degree (at least 1).
    """

    edge_index: torch.Tensor
    offsets: torch.Tensor
    distances: torch.Tensor
    directions: torch.Tensor
    id_swap: torch.Tensor
    slot: torch.Tensor
    degree: torch.Tensor
    width: int

    @property
    def target(self) -> torch.Tensor:
        return self.edge_index[1]

    @property
    def num_nodes(self) -> int:
        return self.degree.numel()

    def _flat_slot(self) -> torch.Tensor:
        return self.target * self.width + self.slot

    def to_table(self, x: torch.Tensor) -> torch.Tensor:
        """Per-edge ``(E, *F)`` → per-target table ``(N, D, *F)``, zero where a target has fewer edges."""
        table = x.new_zeros(self.num_nodes * self.width, *x.shape[1:])
        return table.index_copy(0, self._flat_slot(), x).view(self.num_nodes, self.width, *x.shape[1:])

    def from_table(self, table: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_table`: ``(N, D, *F)`` → ``(E, *F)``."""
        return table.reshape(self.num_nodes * self.width, *table.shape[2:])[self._flat_slot()]

    def table_mask(self) -> torch.Tensor:
        """``(N, D)`` bool, True where the table holds an edge."""
        return torch.arange(self.width, device=self.degree.device) < self.degree.unsqueeze(-1)


def _negative_offset(offsets: torch.Tensor) -> torch.Tensor:
    """``(E, 3)`` → ``(E,)`` bool: the first non-zero component of the offset is negative."""
    x, y, z = offsets.unbind(-1)
    return (x < 0) | ((x == 0) & (y < 0)) | ((x == 0) & (y == 0) & (z < 0))


def symmetrise_edges(
    edge_index: torch.Tensor, offsets: torch.Tensor, vectors: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """CDVAE's symmetrisation: keep one direction of every edge and append the reversed copies.

    Args:
        edge_index: ``(2, E₀)`` [source, target]; offsets: ``(E₀, 3)`` long; vectors: ``(E₀, 3)`` Å,
            x_source + t·M − x_target.

    Returns:
        ``edge_index`` ``(2, E)``, ``offsets`` ``(E, 3)``, ``vectors`` ``(E, 3)`` and ``id_swap`` ``(E,)``,
        with ``E = 2 × kept``: the kept edges first, then their reverses in the same order.
    """
    source, target = edge_index
    keep = (source < target) | ((source == target) & _negative_offset(offsets))
    kept = torch.nonzero(keep).squeeze(1)  # one host sync instead of one per boolean-mask index
    kept_index, kept_offsets, kept_vectors = edge_index[:, kept], offsets[kept], vectors[kept]
    n_kept = kept_offsets.shape[0]
    half = torch.arange(n_kept, device=edge_index.device)
    return (
        torch.cat([kept_index, kept_index.flip(0)], dim=1),
        torch.cat([kept_offsets, -kept_offsets]),
        torch.cat([kept_vectors, -kept_vectors]),
        torch.cat([half + n_kept, half]),
    )


def build_decoder_graph(
    frac: torch.Tensor,
    lattice: torch.Tensor,
    num_atoms: torch.Tensor,
    cutoff: float,
    max_neighbors: int,
    max_images: tuple[int, int, int] | None,
) -> DecoderGraph:
    """Radius graph (docs/model.md#periodic-geometry) → symmetrised, target-sorted :class:`DecoderGraph`.

    Args:
        frac: ``(N, 3)`` fractional coordinates (need not be wrapped).
        lattice: ``(B, 3, 3)`` Å, rows are lattice vectors.
        num_atoms: ``(B,)`` long.
        cutoff: Å; max_neighbors: nearest neighbours kept per target before symmetrisation.
        max_images: images searched per direction (``(1, 1, 1)`` = CDVAE's 27), ``None`` = as the cutoff needs.

    Host syncs: those of :func:`~tvcsp.geometry.radius_graph_pbc`, the edge selection (one ``nonzero``) and
    ``D`` (``degree.max()``).
    """
    radius = radius_graph_pbc(frac, lattice, num_atoms, cutoff, max_neighbors, max_images=max_images)
    edge_index, offsets, vectors, id_swap = symmetrise_edges(radius.edge_index, radius.offsets, radius.vectors)
    order = torch.argsort(edge_index[1], stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    edge_index, offsets, vectors, id_swap = edge_index[:, order], offsets[order], vectors[order], rank[id_swap[order]]

    target = edge_index[1]
    degree = torch.zeros(frac.shape[0], dtype=torch.long, device=target.device).index_add_(
        0, target, torch.ones_like(target))  # = bincount, without bincount's host sync on CUDA
    first = torch.cumsum(degree, 0) - degree
    slot = torch.arange(target.numel(), device=target.device) - first[target]
    width = max(int(degree.max()), 1) if target.numel() else 1
    distances = vectors.norm(dim=-1)
    return DecoderGraph(
        edge_index=edge_index,
        offsets=offsets,
        distances=distances,
        directions=-vectors / distances.unsqueeze(-1),
        id_swap=id_swap,
        slot=slot,
        degree=degree,
        width=width,
    )
