"""GemNet-dT's bases (docs/model.md#gemnet-t-decoder): Gaussian radial basis with polynomial envelope, and the angle
basis.

* Radial: 128 Gaussians on d / cutoff ∈ [0, 1] (centres linspace(0, 1, K), exp(−(u − μ)² / (2Δ²)), Δ = spacing)
  times the envelope of exponent 5 — this is :class:`tvcsp.rbf.GaussianRBF` on d in Å with the polynomial
  envelope (the same function, centres and width scaled by the cutoff).
* Circular: real spherical harmonics of order 0, Y_l^0(cos φ) = √((2l + 1) / 4π) · P_l(cos φ), l = 0 … L − 1,
  of the angle φ at atom ``a`` between the edges ``c → a`` and ``b → a`` of a triplet. GemNet multiplies them
  with a radial basis of |c → a| that is identical to the one above, so the decoder reuses that one.
"""

from __future__ import annotations

import math

import torch

from ..rbf import GaussianRBF
from .graph import DecoderGraph

__all__ = ["angle_table", "radial_basis", "zonal_harmonics"]


def radial_basis(num_radial: int, cutoff: float) -> GaussianRBF:
    """Distances ``(E,)`` Å → ``(E, num_radial)``: GemNet's Gaussian basis with polynomial envelope (p = 5)."""
    return GaussianRBF(num_radial, cutoff, envelope="polynomial")


def zonal_harmonics(cos: torch.Tensor, num_spherical: int, dim: int = -1) -> torch.Tensor:
    """Y_l^0(cos φ) for l = 0 … ``num_spherical`` − 1, stacked along a new axis ``dim``.

    Legendre polynomials by the recurrence l·P_l = (2l − 1)·x·P_{l−1} − (l − 1)·P_{l−2}.
    """
    legendre = [torch.ones_like(cos), cos]
    for degree in range(2, num_spherical):
        legendre.append(((2 * degree - 1) * cos * legendre[-1] - (degree - 1) * legendre[-2]) / degree)
    norms = [math.sqrt((2 * degree + 1) / (4 * math.pi)) for degree in range(num_spherical)]
    return torch.stack([n * p for n, p in zip(norms, legendre[:num_spherical], strict=True)], dim=dim)


def angle_table(graph: DecoderGraph, num_spherical: int) -> torch.Tensor:
    """Angle basis of every triplet, laid out per target atom: ``(N, D, L, D)``.

    Entry ``[a, i, l, j]`` is Y_l^0 of the angle between the ``i``-th and the ``j``-th edge entering atom
    ``a`` (output edge ``c → a`` in slot ``i``, input edge ``b → a`` in slot ``j``); zero when ``i = j`` or a
    slot is empty. Distinct edges with the same neighbour atom (other periodic images) form triplets too.
    """
    directions = graph.to_table(graph.directions)  # (N, D, 3)
    cos = (directions @ directions.transpose(1, 2)).clamp(-1.0, 1.0)  # (N, D, D)
    mask = graph.table_mask()
    pair = mask.unsqueeze(2) & mask.unsqueeze(1) & ~torch.eye(graph.width, dtype=torch.bool, device=mask.device)
    return zonal_harmonics(cos, num_spherical, dim=2) * pair.unsqueeze(2).to(cos.dtype)
