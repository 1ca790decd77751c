"""Edge inputs of the encoder: periodic radius graph, spherical harmonics, radial basis
(docs/model.md#encoder-graph)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from e3nn import o3
from torch import nn

from ..geometry import radius_graph_pbc

__all__ = ["EdgeFeaturizer", "EdgeFeatures"]


@dataclass
class EdgeFeatures:
    """Per-edge inputs shared by every layer, for ``E`` directed edges ``source → target``.

    Attributes:
        edge_index: ``(2, E)`` long; row 0 = source (neighbour image), row 1 = target (centre atom).
        sh: ``(E, irreps_sh.dim)`` real spherical harmonics of the unit edge vector, component
            normalisation (‖Y_l‖² = 2l + 1, Y_0 = 1).
        rbf: ``(E, K)`` radial basis of the edge length.
    """

    edge_index: torch.Tensor
    sh: torch.Tensor
    rbf: torch.Tensor

    @property
    def source(self) -> torch.Tensor:
        return self.edge_index[0]

    @property
    def target(self) -> torch.Tensor:
        return self.edge_index[1]


class EdgeFeaturizer(nn.Module):
    """Builds the encoder graph of a batch of crystals and its edge features.

    Args:
        cutoff: graph radius in Å.
        max_neighbors: nearest neighbours kept per atom (``None``: all within the cutoff).
        rbf: radial basis module (from :func:`tvcsp.rbf.build_rbf`), distances ``(E,)`` Å → ``(E, K)``.
        irreps_sh: irreps of the spherical harmonics (their parities fix the symmetry group).
    """

    def __init__(self, cutoff: float, max_neighbors: int | None, rbf: nn.Module, irreps_sh: o3.Irreps):
        super().__init__()
        self.cutoff, self.max_neighbors = float(cutoff), max_neighbors
        self.rbf = rbf
        self.irreps_sh = o3.Irreps(irreps_sh)

    def forward(
        self, frac_coords: torch.Tensor, lattice: torch.Tensor, num_atoms: torch.Tensor
    ) -> EdgeFeatures:
        """``frac_coords`` ``(N, 3)`` fractional, ``lattice`` ``(B, 3, 3)`` Å (rows = vectors), ``num_atoms``
        ``(B,)`` → :class:`EdgeFeatures`; differentiable w.r.t. coordinates and lattice."""
        graph = radius_graph_pbc(frac_coords, lattice, num_atoms, self.cutoff, self.max_neighbors)
        sh = o3.spherical_harmonics(self.irreps_sh, graph.vectors, normalize=True, normalization="component")
        return EdgeFeatures(edge_index=graph.edge_index, sh=sh, rbf=self.rbf(graph.distances))

    def extra_repr(self) -> str:
        return f"cutoff={self.cutoff} Å, max_neighbors={self.max_neighbors}, irreps_sh={self.irreps_sh}"
