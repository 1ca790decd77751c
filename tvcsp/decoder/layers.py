"""GemNet's dense building blocks (docs/model.md#gemnet-t-decoder): scaled SiLU, He-orthogonal init, residual layers,
fixed scale factors, the edge embedding, the atom update and the (force-only) output block.

All per-edge tensors are ``(E, F)`` and per-atom tensors ``(N, F)``; edges are ``source → target`` and
messages are summed onto the target.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = [
    "AtomUpdateBlock",
    "Dense",
    "EdgeEmbedding",
    "OutputBlock",
    "ResidualLayer",
    "ScaleFactor",
    "ScaledSiLU",
    "he_orthogonal_",
    "sum_to_targets",
]

INV_SQRT_2 = 1.0 / math.sqrt(2.0)


def he_orthogonal_(weight: torch.Tensor) -> torch.Tensor:
    """GemNet's "HeOrthogonal" init, in place: a random (semi-)orthogonal matrix, standardised to zero mean
    and unit variance over the fan-in and scaled by 1/√fan_in.

    ``weight`` is a ``(out, in)`` linear weight (fan-in = ``in``) or a ``(d0, d1, out)`` tensor (fan-in = d0·d1).
    """
    fan_in_dims = (1,) if weight.dim() == 2 else (0, 1)
    with torch.no_grad():
        nn.init.orthogonal_(weight)
        var, mean = torch.var_mean(weight, dim=fan_in_dims, unbiased=True, keepdim=True)
        fan_in = math.prod(weight.shape[d] for d in fan_in_dims)
        weight.copy_((weight - mean) / torch.sqrt(var + 1e-6) / math.sqrt(fan_in))
    return weight


def sum_to_targets(x: torch.Tensor, target: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """Per-edge ``(E, *F)`` → per-atom ``(N, *F)``: sum over the edges entering each atom."""
    return x.new_zeros(num_nodes, *x.shape[1:]).index_add(0, target, x)


class ScaledSiLU(nn.Module):
    """SiLU(x) / 0.6 (GemNet's "swish" keeps unit variance)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.silu(x).mul_(1.0 / 0.6)


class Dense(nn.Linear):
    """Bias-free linear layer with He-orthogonal weights, optionally followed by :class:`ScaledSiLU`."""

    def __init__(self, in_features: int, out_features: int, activation: bool = False):
        super().__init__(in_features, out_features, bias=False)
        self.activation = ScaledSiLU() if activation else nn.Identity()

    def reset_parameters(self) -> None:
        he_orthogonal_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(super().forward(x))


class ResidualLayer(nn.Module):
    """x ↦ (x + Dense(Dense(x))) / √2 with two activated dense layers of width ``units``."""

    def __init__(self, units: int):
        super().__init__()
        self.mlp = nn.Sequential(Dense(units, units, activation=True), Dense(units, units, activation=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.mlp(x)).mul_(INV_SQRT_2)


def residual_mlp(in_features: int, units: int, num_residual: int) -> nn.Sequential:
    """Activated Dense(in → units) followed by ``num_residual`` :class:`ResidualLayer` s."""
    residual = (ResidualLayer(units) for _ in range(num_residual))
    return nn.Sequential(Dense(in_features, units, activation=True), *residual)


class ScaleFactor(nn.Module):
    """Multiplies by a fixed scalar (a buffer, not trained), named as in CDVAE's ``gemnet-dT.json``."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name
        self.register_buffer("value", torch.tensor(1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.value

    def extra_repr(self) -> str:
        return f"name={self.name!r}, value={float(self.value):.6g}"


class EdgeEmbedding(nn.Module):
    """m_st = Dense([h_source ; h_target ; x_st]) with activation: ``(N, A)``, ``(E, F)`` → ``(E, out)``."""

    def __init__(self, atom_features: int, edge_features: int, out_features: int):
        super().__init__()
        self.dense = Dense(2 * atom_features + edge_features, out_features, activation=True)

    def forward(self, h: torch.Tensor, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        source, target = edge_index
        return self.dense(torch.cat([h[source], h[target], x], dim=-1))


class AtomUpdateBlock(nn.Module):
    """Atom update: sum over incoming edges of m ⊙ Dense(rbf), scaled, then an MLP to the atom size.

    Args:
        emb_size_atom, emb_size_edge, emb_size_rbf: feature sizes.
        num_residual: residual layers after the first dense layer.
        name: scale-factor prefix, e.g. ``'AtomUpdate_1'`` (factor ``'AtomUpdate_1_sum'``).
    """

    def __init__(self, emb_size_atom: int, emb_size_edge: int, emb_size_rbf: int, num_residual: int, name: str):
        super().__init__()
        self.dense_rbf = Dense(emb_size_rbf, emb_size_edge)
        self.scale_sum = ScaleFactor(f"{name}_sum")
        self.mlp = residual_mlp(emb_size_edge, emb_size_atom, num_residual)

    def forward(self, m: torch.Tensor, rbf: torch.Tensor, target: torch.Tensor, num_nodes: int) -> torch.Tensor:
        """m ``(E, edge)``, rbf ``(E, emb_size_rbf)``, target ``(E,)`` → ``(N, emb_size_atom)``."""
        x = sum_to_targets(m * self.dense_rbf(rbf), target, num_nodes)
        return self.mlp(self.scale_sum(x))


class OutputBlock(nn.Module):
    """GemNet's output block, direct-force part only: one scalar F_st per edge.

    F = Dense(scale_had(MLP(m) ⊙ Dense(rbf))) with a He-orthogonal final layer ("HeOrthogonal" output init).
    GemNet's energy part (an atom update + Dense to the energy, with scale factor ``<name>_sum``) is left
    out: CDVAE computes it but never uses it, so it changes no output and receives no gradient.

    Args:
        emb_size_edge, emb_size_rbf: feature sizes.
        num_residual: residual layers in the MLP.
        name: scale-factor prefix, e.g. ``'OutBlock_0'`` (factor ``'OutBlock_0_had'``).
    """

    def __init__(self, emb_size_edge: int, emb_size_rbf: int, num_residual: int, name: str):
        super().__init__()
        self.mlp = residual_mlp(emb_size_edge, emb_size_edge, num_residual)
        self.dense_rbf = Dense(emb_size_rbf, emb_size_edge)
        self.scale_had = ScaleFactor(f"{name}_had")
        self.out = Dense(emb_size_edge, 1)

    def forward(self, m: torch.Tensor, rbf: torch.Tensor) -> torch.Tensor:
        """m ``(E, edge)``, rbf ``(E, emb_size_rbf)`` → ``(E,)``."""
        return self.out(self.scale_had(self.mlp(m) * self.dense_rbf(rbf))).squeeze(-1)
