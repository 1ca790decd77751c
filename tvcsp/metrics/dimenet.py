"""DimeNet++ in plain torch, laid out so that CDVAE's property-model weights load strictly
(docs/metrics.md#property-model).

Module and parameter names mirror torch-geometric's ``DimeNetPlusPlus`` (with a biased ``lin_up`` in the
output blocks, as in the version CDVAE trained with). Behaviour follows CDVAE's ``DimeNetPlusPlusWrap``:

* the radial envelope is **not** zeroed at or beyond the cutoff (docs/metrics.md#property-model);
* triplets ``k → j → i`` pair every edge ``k → j`` with every edge ``j → i`` except when ``k`` and ``i`` are the
  same atom index — also when they are different periodic images of it (CDVAE masks on node indices);
* the triplet angle is the angle between the edge vectors ``v_ji`` (i to the image of j) and ``v_kj``;
* messages are summed, the per-atom outputs of all output blocks are added and averaged per crystal.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import brentq
from scipy.special import spherical_jn
from torch import nn
from torch.nn.functional import silu
from torch_geometric.utils import scatter

__all__ = ["DimeNetPlusPlus", "dimenet_triplets", "spherical_bessel_zeros"]


def envelope(x: torch.Tensor, exponent: int) -> torch.Tensor:
    """DimeNet's smooth polynomial envelope u(x) = 1/x + a·x^(p−1) + b·x^p + c·x^(p+1), p = exponent + 1.

    ``x = d / cutoff`` (dimensionless, any shape). Not multiplied by ``x < 1`` (docs/metrics.md#property-model).
    """
    p = exponent + 1
    a, b, c = -(p + 1) * (p + 2) / 2, p * (p + 2), -p * (p + 1) / 2
    x_p0 = x.pow(p - 1)
    return 1.0 / x + a * x_p0 + b * x_p0 * x + c * x_p0 * x * x


def _jn(x: float, order: int) -> float:
    return spherical_jn(order, x)


def spherical_bessel_zeros(num_orders: int, num_zeros: int) -> np.ndarray:
    """``(num_orders, num_zeros)`` first positive zeros z_ln of the spherical Bessel functions j_l.

    The zeros of j_l interlace those of j_(l−1), so each is bracketed by two consecutive zeros of the lower order.
    """
    points = np.arange(1, num_zeros + num_orders) * np.pi  # zeros of j_0 = sin(x)/x
    zeros = [points[:num_zeros]]
    for order in range(1, num_orders):
        points = np.array([brentq(_jn, lo, hi, args=(order,)) for lo, hi in zip(points[:-1], points[1:], strict=True)])
        zeros.append(points[:num_zeros])
    return np.stack(zeros)


def _spherical_jn(max_order: int, y: torch.Tensor) -> list[torch.Tensor]:
    """[j_0(y), …, j_max_order(y)] by the upward recurrence j_(l+1) = (2l+1)/y·j_l − j_(l−1) (use float64)."""
    sin, cos = torch.sin(y), torch.cos(y)
    out = [sin / y, sin / y**2 - cos / y]
    for order in range(1, max_order):
        out.append((2 * order + 1) / y * out[-1] - out[-2])
    return out[: max_order + 1]


def _legendre(max_degree: int, x: torch.Tensor) -> list[torch.Tensor]:
    """[P_0(x), …, P_max_degree(x)] by Bonnet's recurrence."""
    out = [torch.ones_like(x), x]
    for n in range(1, max_degree):
        out.append(((2 * n + 1) * x * out[-1] - n * out[-2]) / (n + 1))
    return out[: max_degree + 1]


class Envelope(nn.Module):
    """Parameter-free holder of the envelope exponent (keeps torch-geometric's module tree)."""

    def __init__(self, exponent: int):
        super().__init__()
        self.exponent = exponent

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return envelope(x, self.exponent)


class BesselBasisLayer(nn.Module):
    """Radial basis u(d/c)·sin(f_n·d/c) with trainable frequencies ``freq`` ``(R,)`` (initially nπ)."""

    def __init__(self, num_radial: int, cutoff: float, envelope_exponent: int):
        super().__init__()
        self.cutoff = cutoff
        self.envelope = Envelope(envelope_exponent)
        self.freq = nn.Parameter(torch.arange(1, num_radial + 1, dtype=torch.float32) * math.pi)

    def forward(self, dist: torch.Tensor) -> torch.Tensor:
        """``(E,)`` distances in Å → ``(E, R)``."""
        x = dist.unsqueeze(-1) / self.cutoff
        return self.envelope(x) * torch.sin(self.freq * x)


class SphericalBasisLayer(nn.Module):
    """2-D basis of a triplet: u(d_kj/c) · N_ln j_l(z_ln d_kj/c) · Y_l⁰(angle), flattened to ``(T, L·R)``.

    N_ln = √2 / |j_(l+1)(z_ln)| normalises the radial part; Y_l⁰(θ) = √((2l+1)/4π) P_l(cos θ).
    The radial functions are evaluated in float64 (the upward recurrence, like the closed forms, cancels badly in
    float32 at small arguments) and returned in the input dtype.
    """

    def __init__(self, num_spherical: int, num_radial: int, cutoff: float, envelope_exponent: int):
        super().__init__()
        self.num_spherical, self.num_radial, self.cutoff = num_spherical, num_radial, cutoff
        self.envelope = Envelope(envelope_exponent)
        zeros = spherical_bessel_zeros(num_spherical, num_radial)
        norm = np.sqrt(2.0) / np.abs(np.stack([spherical_jn(order + 1, zeros[order]) for order in range(len(zeros))]))
        self.register_buffer("zeros", torch.from_numpy(zeros), persistent=False)
        self.register_buffer("norm", torch.from_numpy(norm), persistent=False)
        sph_norm = torch.sqrt((2 * torch.arange(num_spherical, dtype=torch.float64) + 1) / (4 * math.pi))
        self.register_buffer("sph_norm", sph_norm, persistent=False)

    def forward(self, dist: torch.Tensor, angle: torch.Tensor, idx_kj: torch.Tensor) -> torch.Tensor:
        """``dist`` ``(E,)`` Å, ``angle`` ``(T,)`` rad, ``idx_kj`` ``(T,)`` → ``(T, L·R)`` in ``dist.dtype``."""
        x = dist.double() / self.cutoff
        y = self.zeros.unsqueeze(0) * x[:, None, None]  # (E, L, R)
        radial = torch.stack([j[:, order] for order, j in enumerate(_spherical_jn(self.num_spherical - 1, y))], 1)
        radial = (self.envelope(x)[:, None, None] * self.norm * radial).to(dist.dtype)
        cbf = torch.stack(_legendre(self.num_spherical - 1, torch.cos(angle)), dim=1) * self.sph_norm.to(dist.dtype)
        return (radial[idx_kj] * cbf.unsqueeze(-1)).flatten(1)


class EmbeddingBlock(nn.Module):
    """Initial edge embedding act(W [h_i ‖ h_j ‖ act(W_rbf rbf)]) from atom embeddings (Z < 95)."""

    def __init__(self, num_radial: int, hidden: int):
        super().__init__()
        self.emb = nn.Embedding(95, hidden)
        self.lin_rbf = nn.Linear(num_radial, hidden)
        self.lin = nn.Linear(3 * hidden, hidden)

    def forward(self, z: torch.Tensor, rbf: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        h = self.emb(z)
        return silu(self.lin(torch.cat([h[i], h[j], silu(self.lin_rbf(rbf))], dim=-1)))


class ResidualLayer(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.lin1, self.lin2 = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + silu(self.lin2(silu(self.lin1(x))))


class InteractionPPBlock(nn.Module):
    """DimeNet++ interaction: directional message passing over triplets with down/up projections."""

    def __init__(self, hidden: int, int_emb: int, basis_emb: int, num_spherical: int, num_radial: int,
                 num_before_skip: int, num_after_skip: int):
        super().__init__()
        self.lin_rbf1 = nn.Linear(num_radial, basis_emb, bias=False)
        self.lin_rbf2 = nn.Linear(basis_emb, hidden, bias=False)
        self.lin_sbf1 = nn.Linear(num_spherical * num_radial, basis_emb, bias=False)
        self.lin_sbf2 = nn.Linear(basis_emb, int_emb, bias=False)
        self.lin_kj, self.lin_ji = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
        self.lin_down = nn.Linear(hidden, int_emb, bias=False)
        self.lin_up = nn.Linear(int_emb, hidden, bias=False)
        self.layers_before_skip = nn.ModuleList([ResidualLayer(hidden) for _ in range(num_before_skip)])
        self.lin = nn.Linear(hidden, hidden)
        self.layers_after_skip = nn.ModuleList([ResidualLayer(hidden) for _ in range(num_after_skip)])

    def forward(self, x, rbf, sbf, idx_kj, idx_ji) -> torch.Tensor:
        """``x`` ``(E, H)`` edge messages, ``rbf`` ``(E, R)``, ``sbf`` ``(T, L·R)`` → ``(E, H)``."""
        x_ji = silu(self.lin_ji(x))
        x_kj = silu(self.lin_down(silu(self.lin_kj(x)) * self.lin_rbf2(self.lin_rbf1(rbf))))
        x_kj = x_kj[idx_kj] * self.lin_sbf2(self.lin_sbf1(sbf))
        x_kj = silu(self.lin_up(scatter(x_kj, idx_ji, dim=0, dim_size=x.shape[0], reduce="sum")))
        h = x_ji + x_kj
        for layer in self.layers_before_skip:
            h = layer(h)
        h = silu(self.lin(h)) + x
        for layer in self.layers_after_skip:
            h = layer(h)
        return h


class OutputPPBlock(nn.Module):
    """Per-atom output: sum of rbf-gated incoming messages, up-projection, MLP, linear head."""

    def __init__(self, num_radial: int, hidden: int, out_emb: int, out_channels: int, num_layers: int):
        super().__init__()
        self.lin_rbf = nn.Linear(num_radial, hidden, bias=False)
        self.lin_up = nn.Linear(hidden, out_emb)
        self.lins = nn.ModuleList([nn.Linear(out_emb, out_emb) for _ in range(num_layers)])
        self.lin = nn.Linear(out_emb, out_channels, bias=False)

    def forward(self, x: torch.Tensor, rbf: torch.Tensor, i: torch.Tensor, num_nodes: int) -> torch.Tensor:
        """``(E, H)`` messages to targets ``i`` ``(E,)`` → ``(num_nodes, out_channels)``."""
        h = self.lin_up(scatter(self.lin_rbf(rbf) * x, i, dim=0, dim_size=num_nodes, reduce="sum"))
        for lin in self.lins:
            h = silu(lin(h))
        return self.lin(h)


def dimenet_triplets(edge_index: torch.Tensor, num_nodes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Triplets ``k → j → i``: every edge ``k → j`` ending at the source ``j`` of an edge ``j → i``, ``k ≠ i``.

    ``k ≠ i`` compares atom indices (CDVAE's mask), so periodic images of ``i`` are never a ``k`` either.

    Args:
        edge_index: ``(2, E)`` long, row 0 = source, row 1 = target.

    Returns:
        ``idx_kj``, ``idx_ji``: ``(T,)`` edge indices of each triplet.
    """
    source, target = edge_index
    by_target = torch.argsort(target, stable=True)
    in_degree = torch.bincount(target, minlength=num_nodes)
    first = torch.cumsum(in_degree, 0) - in_degree
    count = in_degree[source]  # candidate edges k → j for every edge j → i
    idx_ji = torch.repeat_interleave(torch.arange(source.numel(), device=source.device), count)
    local = torch.arange(idx_ji.numel(), device=source.device) - torch.repeat_interleave(
        torch.cumsum(count, 0) - count, count
    )
    idx_kj = by_target[first[source[idx_ji]] + local]
    keep = source[idx_kj] != target[idx_ji]
    return idx_kj[keep], idx_ji[keep]


class DimeNetPlusPlus(nn.Module):
    """DimeNet++ regressor on a given periodic graph, mean readout per crystal (CDVAE's property model).

    Args mirror CDVAE's ``DimeNetPlusPlusWrap`` (``hparams.yaml`` → ``model.encoder``); cutoff in Å.
    """

    def __init__(self, num_targets: int = 1, hidden_channels: int = 128, num_blocks: int = 4,
                 int_emb_size: int = 64, basis_emb_size: int = 8, out_emb_channels: int = 256,
                 num_spherical: int = 7, num_radial: int = 6, cutoff: float = 7.0, envelope_exponent: int = 5,
                 num_before_skip: int = 1, num_after_skip: int = 2, num_output_layers: int = 3):
        super().__init__()
        self.rbf = BesselBasisLayer(num_radial, cutoff, envelope_exponent)
        self.sbf = SphericalBasisLayer(num_spherical, num_radial, cutoff, envelope_exponent)
        self.emb = EmbeddingBlock(num_radial, hidden_channels)
        self.output_blocks = nn.ModuleList([
            OutputPPBlock(num_radial, hidden_channels, out_emb_channels, num_targets, num_output_layers)
            for _ in range(num_blocks + 1)
        ])
        self.interaction_blocks = nn.ModuleList([
            InteractionPPBlock(hidden_channels, int_emb_size, basis_emb_size, num_spherical, num_radial,
                               num_before_skip, num_after_skip)
            for _ in range(num_blocks)
        ])

    def forward(self, atom_types: torch.Tensor, edge_index: torch.Tensor, edge_vec: torch.Tensor,
                batch: torch.Tensor, num_crystals: int) -> torch.Tensor:
        """Standardised prediction per crystal.

        Args:
            atom_types: ``(N,)`` long atomic numbers.
            edge_index: ``(2, E)`` long, source ``j`` → target ``i``.
            edge_vec: ``(E, 3)`` Å, ``x_j + t·M − x_i``.
            batch: ``(N,)`` crystal index of each atom; num_crystals: ``B``.

        Returns:
            ``(B, num_targets)``; a crystal's output is the mean over its atoms.
        """
        j, i = edge_index
        num_nodes = atom_types.numel()
        idx_kj, idx_ji = dimenet_triplets(edge_index, num_nodes)
        v_ji, v_kj = edge_vec[idx_ji], edge_vec[idx_kj]
        angle = torch.atan2(torch.linalg.cross(v_ji, v_kj).norm(dim=-1), (v_ji * v_kj).sum(-1))
        dist = edge_vec.norm(dim=-1)
        rbf, sbf = self.rbf(dist), self.sbf(dist, angle, idx_kj)

        x = self.emb(atom_types, rbf, i, j)
        per_atom = self.output_blocks[0](x, rbf, i, num_nodes)
        for interaction, output in zip(self.interaction_blocks, self.output_blocks[1:], strict=True):
            x = interaction(x, rbf, sbf, idx_kj, idx_ji)
            per_atom = per_atom + output(x, rbf, i, num_nodes)
        return scatter(per_atom, batch, dim=0, dim_size=num_crystals, reduce="mean")
