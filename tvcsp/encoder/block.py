"""Gated feed-forward network and pre-norm transformer block (docs/model.md#transformer-block)."""

from __future__ import annotations

import torch
from e3nn import o3
from torch import nn

from .attention import DotProductAttention
from .edges import EdgeFeatures
from .layers import EquivariantLayerNorm, gate_for

__all__ = ["FeedForward", "TransformerBlock"]


class FeedForward(nn.Module):
    """Linear(in → gate input of ``irreps_mid``) → Gate → Linear(mid → out), both linears with 0e biases.

    Args:
        irreps_in, irreps_out: input and output irreps.
        irreps_mid: hidden irreps (before gating); l > 0 types the output lacks are dropped, since nothing
            would read them.
    """

    def __init__(self, irreps_in: o3.Irreps, irreps_mid: o3.Irreps, irreps_out: o3.Irreps):
        super().__init__()
        irreps_out = o3.Irreps(irreps_out)
        irreps_mid = o3.Irreps(
            [(mul, ir) for mul, ir in o3.Irreps(irreps_mid) if ir.l == 0 or ir in irreps_out]
        )
        self.gate = gate_for(irreps_mid)
        self.linear_in = o3.Linear(o3.Irreps(irreps_in), self.gate.irreps_in, biases=True)
        self.linear_out = o3.Linear(self.gate.irreps_out, irreps_out, biases=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, irreps_in.dim)`` → ``(N, irreps_out.dim)``."""
        return self.linear_out(self.gate(self.linear_in(x)))


class TransformerBlock(nn.Module):
    """``y = x + Attention(LN₁(x))``; ``out = shortcut(y) + FFN(LN₂(y))``.

    ``shortcut`` is the identity when ``irreps_out`` equals ``irreps_in`` and an equivariant linear
    projection otherwise (the last block maps to scalar features; its l > 0 parts are then dropped).

    Args:
        irreps_in, irreps_out: node irreps before and after the block.
        irreps_head, num_heads, alpha_dropout: attention heads (see :class:`DotProductAttention`).
        irreps_sh: spherical-harmonic irreps.
        rbf_dim: radial basis size K.
        radial_hidden: hidden width of the radial MLPs.
        irreps_mid: feed-forward hidden irreps.
        layer_norm: mode of both layer norms (see :class:`EquivariantLayerNorm`).
    """

    def __init__(
        self,
        irreps_in: o3.Irreps,
        irreps_out: o3.Irreps,
        irreps_head: o3.Irreps,
        num_heads: int,
        irreps_sh: o3.Irreps,
        rbf_dim: int,
        radial_hidden: int,
        irreps_mid: o3.Irreps,
        alpha_dropout: float,
        layer_norm: str = "joint",
    ):
        super().__init__()
        irreps_in, irreps_out = o3.Irreps(irreps_in), o3.Irreps(irreps_out)
        self.norm_attention = EquivariantLayerNorm(irreps_in, mode=layer_norm)
        self.attention = DotProductAttention(
            irreps_in, irreps_head, num_heads, irreps_sh, rbf_dim, radial_hidden, alpha_dropout
        )
        self.norm_ffn = EquivariantLayerNorm(irreps_in, mode=layer_norm)
        self.ffn = FeedForward(irreps_in, irreps_mid, irreps_out)
        self.shortcut = nn.Identity() if irreps_in == irreps_out else o3.Linear(irreps_in, irreps_out)

    def forward(self, x: torch.Tensor, edges: EdgeFeatures) -> torch.Tensor:
        """``(N, irreps_in.dim)`` → ``(N, irreps_out.dim)``."""
        y = x + self.attention(self.norm_attention(x), edges)
        return self.shortcut(y) + self.ffn(self.norm_ffn(y))
