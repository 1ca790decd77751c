"""Radial bases for edge distances (paper §3.1 and App. A; docs/model.md#radial-bases).

Every basis maps distances ``d`` of shape ``(E,)`` in Å to features ``(E, K)``; ``out_dim`` gives ``K``.
The bases are self-describing modules: centres, widths and frequencies live in buffers (or parameters when
learnable) and show in ``repr``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = [
    "RBF_KINDS",
    "BesselRBF",
    "CosineEnvelope",
    "GaussianRBF",
    "HybridRBF",
    "PolynomialEnvelope",
    "build_rbf",
]

RBF_KINDS = ("gaussian", "bessel", "hybrid")


class CosineEnvelope(nn.Module):
    """½(cos(π d / c) + 1) for d < c, else 0: value and slope vanish at the cutoff ``c`` (Å)."""

    def __init__(self, cutoff: float):
        super().__init__()
        self.cutoff = float(cutoff)

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        env = 0.5 * (torch.cos(math.pi * d / self.cutoff) + 1.0)
        return torch.where(d < self.cutoff, env, torch.zeros_like(d))

    def extra_repr(self) -> str:
        return f"cutoff={self.cutoff} Å"


class PolynomialEnvelope(nn.Module):
    """GemNet's envelope of exponent ``p`` (docs/model.md#radial-bases) on u = d / c; value, slope and curvature vanish
    at c."""

    def __init__(self, cutoff: float, exponent: int = 5):
        super().__init__()
        self.cutoff = float(cutoff)
        self.exponent = int(exponent)

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        p = self.exponent
        u = d / self.cutoff
        env = 1 - (p + 1) * (p + 2) / 2 * u**p + p * (p + 2) * u ** (p + 1) - p * (p + 1) / 2 * u ** (p + 2)
        return torch.where(u < 1, env, torch.zeros_like(d))

    def extra_repr(self) -> str:
        return f"cutoff={self.cutoff} Å, exponent={self.exponent}"


def _envelope(kind: str | None, cutoff: float) -> nn.Module | None:
    if kind is None:
        return None
    if kind == "cosine":
        return CosineEnvelope(cutoff)
    if kind == "polynomial":
        return PolynomialEnvelope(cutoff)
    raise ValueError(f"unknown envelope {kind!r}; expected 'cosine', 'polynomial' or None")


class GaussianRBF(nn.Module):
    """φ_k(d) = exp(−(d − μ_k)² / (2 s²)), μ_k evenly spaced on [0, cutoff], s = spacing · ``width_factor``.

    Args:
        num_basis: K.
        cutoff: Å.
        learnable: make centres and width trainable (Equiformer-style learnable Gaussian).
        envelope: optional smooth cutoff (``'cosine'``/``'polynomial'``); Equiformer uses none.
    """

    def __init__(
        self,
        num_basis: int = 64,
        cutoff: float = 6.0,
        width_factor: float = 1.0,
        learnable: bool = False,
        envelope: str | None = None,
    ):
        super().__init__()
        self.num_basis, self.cutoff, self.learnable = int(num_basis), float(cutoff), learnable
        centers = torch.linspace(0.0, self.cutoff, self.num_basis)
        width = torch.tensor(width_factor * self.cutoff / max(self.num_basis - 1, 1))
        if learnable:
            self.centers, self.width = nn.Parameter(centers), nn.Parameter(width)
        else:
            self.register_buffer("centers", centers)
            self.register_buffer("width", width)
        self.envelope = _envelope(envelope, cutoff)

    @property
    def out_dim(self) -> int:
        return self.num_basis

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        centers, width = self.centers.to(d.dtype), self.width.to(d.dtype)
        phi = torch.exp(-((d.unsqueeze(-1) - centers) ** 2) / (2 * width**2))
        return phi if self.envelope is None else phi * self.envelope(d).unsqueeze(-1)

    def extra_repr(self) -> str:
        return (
            f"num_basis={self.num_basis}, cutoff={self.cutoff} Å, width={float(self.width):.4g} Å, "
            f"learnable={self.learnable}"
        )


class BesselRBF(nn.Module):
    """Order-0 spherical Bessel basis φ_n(d) = √(2/c) · sin(ω_n d / c) / d · env(d), n = 1..K.

    Frequencies ω_n start at nπ; they are learnable by default (docs/model.md#radial-bases). The envelope takes value
    and slope to zero at d = c.
    """

    def __init__(
        self,
        num_basis: int = 64,
        cutoff: float = 6.0,
        learnable: bool = True,
        envelope: str = "polynomial",
    ):
        super().__init__()
        self.num_basis, self.cutoff, self.learnable = int(num_basis), float(cutoff), learnable
        freqs = math.pi * torch.arange(1, self.num_basis + 1, dtype=torch.get_default_dtype())
        if learnable:
            self.frequencies = nn.Parameter(freqs)
        else:
            self.register_buffer("frequencies", freqs)
        self.envelope = _envelope(envelope, cutoff)

    @property
    def out_dim(self) -> int:
        return self.num_basis

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        d_safe = d.clamp_min(1e-6).unsqueeze(-1)
        freqs = self.frequencies.to(d.dtype)
        phi = math.sqrt(2.0 / self.cutoff) * torch.sin(freqs * d_safe / self.cutoff) / d_safe
        return phi * self.envelope(d).unsqueeze(-1)

    def extra_repr(self) -> str:
        return f"num_basis={self.num_basis}, cutoff={self.cutoff} Å, learnable={self.learnable}"


class HybridRBF(nn.Module):
    """Weighted concatenation h(d) = [w · φ^Bessel(d) ⊕ φ^Gauss(d)] (paper §3.1), dimension K_B + K_G.

    ``w`` ("weight scaling") equalises the root-mean-square value of the two parts over a distance
    distribution: call :meth:`fit_weight` with the training set's edge distances. It is a buffer (saved with
    the model) unless ``learnable_weight`` is set, in which case it is trained from the fitted start.
    """

    def __init__(self, bessel: BesselRBF, gaussian: GaussianRBF, learnable_weight: bool = False):
        super().__init__()
        self.bessel, self.gaussian = bessel, gaussian
        weight = torch.tensor(1.0)
        if learnable_weight:
            self.weight = nn.Parameter(weight)
        else:
            self.register_buffer("weight", weight)

    @property
    def out_dim(self) -> int:
        return self.bessel.out_dim + self.gaussian.out_dim

    @torch.no_grad()
    def fit_weight(self, distances: torch.Tensor) -> float:
        """Set w = rms(φ^Gauss) / rms(φ^Bessel) over ``distances`` (Å, any shape); returns w."""
        d = distances.flatten().to(self.weight.dtype)
        rms_b = self.bessel(d).pow(2).mean().sqrt()
        rms_g = self.gaussian(d).pow(2).mean().sqrt()
        self.weight.fill_(float(rms_g / rms_b))
        return float(self.weight)

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.weight.to(d.dtype) * self.bessel(d), self.gaussian(d)], dim=-1)

    def extra_repr(self) -> str:
        return f"weight={float(self.weight):.4g}"


def build_rbf(kind: str, num_basis: int, cutoff: float, **kwargs) -> nn.Module:
    """Basis by name: ``'gaussian'``, ``'bessel'`` or ``'hybrid'`` with ``num_basis`` outputs in total.

    The hybrid splits ``num_basis`` between its Bessel and Gaussian halves, so that models differing only in
    the basis have identical sizes. ``kwargs`` go to the basis constructor(s) that accept them.
    """
    if kind == "gaussian":
        return GaussianRBF(num_basis, cutoff, **kwargs)
    if kind == "bessel":
        return BesselRBF(num_basis, cutoff, **kwargs)
    if kind == "hybrid":
        learnable_weight = kwargs.pop("learnable_weight", False)
        n_bessel = num_basis // 2
        return HybridRBF(
            BesselRBF(n_bessel, cutoff), GaussianRBF(num_basis - n_bessel, cutoff), learnable_weight
        )
    raise ValueError(f"unknown radial basis {kind!r}; expected one of {RBF_KINDS}")
