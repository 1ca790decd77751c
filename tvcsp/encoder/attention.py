"""Equivariant dot-product attention (DP-Equiformer; paper §3.2, docs/model.md#attention)."""

from __future__ import annotations

import math

import torch
from e3nn import o3
from torch import nn
from torch_geometric.utils import softmax

from .edges import EdgeFeatures
from .layers import DepthwiseTensorProduct

__all__ = ["DotProductAttention", "merge_heads", "repeat_irreps", "split_heads"]


def repeat_irreps(irreps_head: o3.Irreps, copies: int) -> o3.Irreps:
    """``copies`` heads side by side: every block ``m × ir`` of ``irreps_head`` becomes ``(copies·m) × ir``,
    the channels of each block grouped head-major."""
    return o3.Irreps([(copies * mul, ir) for mul, ir in o3.Irreps(irreps_head)])


def split_heads(x: torch.Tensor, irreps_head: o3.Irreps, copies: int) -> torch.Tensor:
    """``(..., repeat_irreps(irreps_head, copies).dim)`` → ``(..., copies, irreps_head.dim)``."""
    parts, start = [], 0
    for mul, ir in irreps_head:
        size = copies * mul * ir.dim
        parts.append(x[..., start : start + size].reshape(*x.shape[:-1], copies, mul * ir.dim))
        start += size
    return torch.cat(parts, dim=-1)


def merge_heads(x: torch.Tensor, irreps_head: o3.Irreps) -> torch.Tensor:
    """Inverse of :func:`split_heads`: ``(..., copies, irreps_head.dim)`` →
    ``(..., copies·irreps_head.dim)``."""
    parts = [x[..., part].reshape(*x.shape[:-2], -1) for part in irreps_head.slices()]
    return torch.cat(parts, dim=-1)


class DotProductAttention(nn.Module):
    """Multi-head equivariant dot-product attention over the incoming edges of every atom.

    For an edge ``s → d`` (source ``s``, target ``d``):

    1. query ``q_d = Linear(x_d)`` (H heads), scaled per component by 1/√(#irreps per head) · 1/√(2l + 1);
    2. message ``m_sd = Linear(x_s) + Linear(x_d)`` (bias on the source branch only);
    3. ``[k_sd, v_sd] = Linear(DTP(m_sd, Y(r̂_sd); RadialMLP(rbf)))``, 2H heads: keys then values;
    4. logits ``⟨q_d, k_sd⟩`` summed over every component of every irrep of a head (invariant);
    5. softmax over the incoming edges of ``d`` per head, then dropout on the weights (training only);
    6. ``o_d = Σ_s α_sd v_sd`` per head, heads concatenated, ``Linear`` back to the node irreps.

    Args:
        irreps_node: input and output irreps X.
        irreps_head: irreps of one head h.
        num_heads: H.
        irreps_sh: spherical-harmonic irreps.
        rbf_dim: radial basis size K.
        radial_hidden: hidden width of the radial MLP.
        alpha_dropout: dropout probability on the attention weights.
    """

    def __init__(
        self,
        irreps_node: o3.Irreps,
        irreps_head: o3.Irreps,
        num_heads: int,
        irreps_sh: o3.Irreps,
        rbf_dim: int,
        radial_hidden: int,
        alpha_dropout: float,
    ):
        super().__init__()
        irreps_node, self.irreps_head = o3.Irreps(irreps_node), o3.Irreps(irreps_head)
        self.num_heads = int(num_heads)
        irreps_heads = repeat_irreps(self.irreps_head, self.num_heads)
        irreps_kv = repeat_irreps(self.irreps_head, 2 * self.num_heads)
        self.query = o3.Linear(irreps_node, irreps_heads)
        self.message_source = o3.Linear(irreps_node, irreps_node, biases=True)
        self.message_target = o3.Linear(irreps_node, irreps_node)
        self.kv_tp = DepthwiseTensorProduct(irreps_node, irreps_sh, irreps_kv, rbf_dim, radial_hidden)
        self.kv_linear = o3.Linear(self.kv_tp.irreps_out, irreps_kv)
        self.alpha_dropout = nn.Dropout(alpha_dropout)
        self.out = o3.Linear(irreps_heads, irreps_node, biases=True)
        scale = [
            torch.full((mul * ir.dim,), 1.0 / math.sqrt(self.irreps_head.num_irreps * ir.dim))
            for mul, ir in self.irreps_head
        ]
        self.register_buffer("query_scale", torch.cat(scale))

    def forward(self, x: torch.Tensor, edges: EdgeFeatures) -> torch.Tensor:
        """``x`` ``(N, X.dim)`` node features → ``(N, X.dim)``."""
        source, target = edges.source, edges.target
        q = split_heads(self.query(x), self.irreps_head, self.num_heads) * self.query_scale  # (N, H, h)
        message = self.message_source(x)[source] + self.message_target(x)[target]  # (E, X)
        kv = self.kv_linear(self.kv_tp(message, edges.sh, edges.rbf))
        kv = split_heads(kv, self.irreps_head, 2 * self.num_heads)  # (E, 2H, h)
        k, v = kv[:, : self.num_heads], kv[:, self.num_heads :]
        logits = (q[target] * k).sum(dim=-1)  # (E, H)
        alpha = self.alpha_dropout(softmax(logits, target, num_nodes=x.shape[0], dim=0))
        weighted = alpha.unsqueeze(-1) * v  # (E, H, h)
        heads = weighted.new_zeros(x.shape[0], *weighted.shape[1:]).index_add_(0, target, weighted)
        return self.out(merge_heads(heads, self.irreps_head))

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, irreps_head={self.irreps_head}"
