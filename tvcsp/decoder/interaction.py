"""GemNet-T's triplet interaction and interaction block (docs/model.md#gemnet-t-decoder).

The triplet interaction updates every edge ``c → a`` with a bilinear function of the angle basis and of the
embeddings of all other edges ``b → a`` entering the same atom:

    x_ca[o] = Σ_{b→a ≠ c→a} Σ_{l, j, t} Y_l(φ_cab) · R_{ca}[l, j] · x_ba[t] · W[t, j, o],

with R_ca = the radial basis of |c → a| projected per degree l (:class:`CircularDownProjection`). GemNet's
"efficient" formulation evaluates it as Σ over triplets first, per degree, then the bilinear contraction; here
the triplet sum is a batched matrix product over per-target tables (see :mod:`tvcsp.decoder.graph`) instead
of OCP's padded per-edge gather — the same sums in another order, with no ``(triplets × features)`` tensor.
"""

from __future__ import annotations

import torch
from torch import nn

from .graph import DecoderGraph
from .layers import INV_SQRT_2, AtomUpdateBlock, Dense, EdgeEmbedding, ResidualLayer, ScaleFactor, he_orthogonal_

__all__ = ["CircularDownProjection", "InteractionBlock", "TripletInteraction"]


class CircularDownProjection(nn.Module):
    """Radial part of the circular basis, projected per degree: ``(E, num_radial)`` → ``(E, L, emb_size_cbf)``.

    Weight ``(L, num_radial, emb_size_cbf)``, He-orthogonal (GemNet's ``EfficientInteractionDownProjection``).
    """

    def __init__(self, num_spherical: int, num_radial: int, emb_size_cbf: int):
        super().__init__()
        self.weight = nn.Parameter(he_orthogonal_(torch.empty(num_spherical, num_radial, emb_size_cbf)))

    def forward(self, rbf: torch.Tensor) -> torch.Tensor:
        return torch.einsum("er,lrj->elj", rbf, self.weight)


class TripletInteraction(nn.Module):
    """Triplet message passing of one interaction block: ``(E, emb_size_edge)`` → ``(E, emb_size_edge)``.

    Args:
        emb_size_edge, emb_size_trip, emb_size_bilinear, emb_size_rbf, emb_size_cbf: feature sizes.
        name: scale-factor prefix, e.g. ``'TripInteraction_1'`` (factors ``…_had_rbf`` and ``…_sum_cbf``).
    """

    def __init__(
        self,
        emb_size_edge: int,
        emb_size_trip: int,
        emb_size_bilinear: int,
        emb_size_rbf: int,
        emb_size_cbf: int,
        name: str,
    ):
        super().__init__()
        self.dense_ba = Dense(emb_size_edge, emb_size_edge, activation=True)
        self.mlp_rbf = Dense(emb_size_rbf, emb_size_edge)
        self.scale_rbf = ScaleFactor(f"{name}_had_rbf")
        self.down_projection = Dense(emb_size_edge, emb_size_trip, activation=True)
        self.bilinear = nn.Parameter(he_orthogonal_(torch.empty(emb_size_trip, emb_size_cbf, emb_size_bilinear)))
        self.scale_cbf_sum = ScaleFactor(f"{name}_sum_cbf")
        self.up_projection_ca = Dense(emb_size_bilinear, emb_size_edge, activation=True)
        self.up_projection_ac = Dense(emb_size_bilinear, emb_size_edge, activation=True)

    def forward(
        self, m: torch.Tensor, rbf3: torch.Tensor, cbf3: torch.Tensor, angles: torch.Tensor, graph: DecoderGraph
    ) -> torch.Tensor:
        """
        Args:
            m: ``(E, emb_size_edge)`` edge embeddings.
            rbf3: ``(E, emb_size_rbf)`` projected radial basis.
            cbf3: ``(E, L, emb_size_cbf)`` from :class:`CircularDownProjection`.
            angles: ``(N, D, L, D)`` from :func:`~tvcsp.decoder.basis.angle_table`.
            graph: the symmetric graph (``id_swap`` and the per-target layout).
        """
        x_ba = self.scale_rbf(self.dense_ba(m) * self.mlp_rbf(rbf3))
        x_ba = self.down_projection(x_ba)  # (E, T)
        num_nodes, width, num_spherical = angles.shape[0], angles.shape[1], angles.shape[2]
        table = graph.to_table(x_ba)  # (N, D, T)
        summed = angles.reshape(num_nodes, width * num_spherical, width) @ table  # (N, D·L, T)
        summed = graph.from_table(summed.view(num_nodes, width, num_spherical, -1))  # (E, L, T)
        mixed = torch.bmm(summed.transpose(1, 2), cbf3)  # (E, T, J)
        x = self.scale_cbf_sum(mixed.flatten(1) @ self.bilinear.flatten(0, 1))  # (E, emb_size_bilinear)
        x_ca, x_ac = self.up_projection_ca(x), self.up_projection_ac(x)
        return (x_ca + x_ac[graph.id_swap]) * INV_SQRT_2


class InteractionBlock(nn.Module):
    """GemNet-T interaction block: triplet interaction, edge update, atom update, edge–atom concatenation.

    With m the edge and h the atom embeddings (every sum below is divided by √2):
    x = Dense(m) + Triplet(m); x = Residual^{before}(x); m = Residual^{after}(m + x);
    h = h + AtomUpdate(m); m = m + Residual^{concat}(EdgeEmbedding(h, m)).

    Args:
        emb_size_atom, emb_size_edge, emb_size_trip, emb_size_rbf, emb_size_cbf, emb_size_bil_trip: sizes.
        num_before_skip, num_after_skip, num_concat, num_atom: residual layer counts.
        index: 1-based block number (scale factors ``TripInteraction_<index>_…``, ``AtomUpdate_<index>_sum``).
    """

    def __init__(
        self,
        emb_size_atom: int,
        emb_size_edge: int,
        emb_size_trip: int,
        emb_size_rbf: int,
        emb_size_cbf: int,
        emb_size_bil_trip: int,
        num_before_skip: int,
        num_after_skip: int,
        num_concat: int,
        num_atom: int,
        index: int,
    ):
        super().__init__()
        self.dense_ca = Dense(emb_size_edge, emb_size_edge, activation=True)
        self.trip_interaction = TripletInteraction(
            emb_size_edge, emb_size_trip, emb_size_bil_trip, emb_size_rbf, emb_size_cbf, f"TripInteraction_{index}"
        )
        self.layers_before_skip = nn.Sequential(*(ResidualLayer(emb_size_edge) for _ in range(num_before_skip)))
        self.layers_after_skip = nn.Sequential(*(ResidualLayer(emb_size_edge) for _ in range(num_after_skip)))
        self.atom_update = AtomUpdateBlock(emb_size_atom, emb_size_edge, emb_size_rbf, num_atom, f"AtomUpdate_{index}")
        self.concat_layer = EdgeEmbedding(emb_size_atom, emb_size_edge, emb_size_edge)
        self.residual_m = nn.Sequential(*(ResidualLayer(emb_size_edge) for _ in range(num_concat)))

    def forward(
        self,
        h: torch.Tensor,
        m: torch.Tensor,
        rbf3: torch.Tensor,
        cbf3: torch.Tensor,
        angles: torch.Tensor,
        rbf_h: torch.Tensor,
        graph: DecoderGraph,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """h ``(N, emb_size_atom)``, m ``(E, emb_size_edge)`` → updated (h, m); other inputs as in
        :meth:`TripletInteraction.forward`, ``rbf_h`` ``(E, emb_size_rbf)`` for the atom update."""
        x = (self.dense_ca(m) + self.trip_interaction(m, rbf3, cbf3, angles, graph)) * INV_SQRT_2
        m = self.layers_after_skip((m + self.layers_before_skip(x)) * INV_SQRT_2)
        h = (h + self.atom_update(m, rbf_h, graph.target, graph.num_nodes)) * INV_SQRT_2
        m = (m + self.residual_m(self.concat_layer(h, m, graph.edge_index))) * INV_SQRT_2
        return h, m
