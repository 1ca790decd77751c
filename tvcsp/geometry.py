"""Periodic geometry in plain, batched torch (CPU and CUDA).

Conventions (docs/data.md#conventions):

* lengths in Å, angles in degrees, lattice matrices ``(B, 3, 3)`` with the lattice vectors as **rows**;
* Cartesian = fractional · lattice (row vector times matrix);
* a batch of ``B`` crystals with ``N = Σ N_b`` atoms is described by per-atom tensors plus
  ``num_atoms`` ``(B,)``; ``batch`` ``(N,)`` holds each atom's crystal index;
* an edge ``j → i`` with integer image offset ``t`` has source ``j`` (the neighbour), target ``i`` (the
  centre atom) and vector ``v = x_j + t·M − x_i``: it starts at the centre atom and ends at the neighbour
  image (docs/data.md#conventions, used for every graph in tvcsp).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

__all__ = [
    "TIE_RTOL",
    "PeriodicGraph",
    "Triplets",
    "batch_index",
    "cart_to_frac",
    "frac_to_cart",
    "image_range",
    "lattice_matrix_to_params",
    "lattice_params_to_matrix",
    "lattice_volume",
    "minimum_image_diff",
    "radius_graph_pbc",
    "triplets",
]

TIE_RTOL = 1e-5
"""Relative tolerance on squared distances within which neighbours count as equally far (a capped graph keeps
the whole tied shell); far above float32 rounding (~1e-7), far below real differences between shells."""


def lattice_params_to_matrix(lengths: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Lattice parameters → matrix with the convention of docs/data.md#conventions (``c`` along ``z``).

    Args:
        lengths: ``(B, 3)`` a, b, c in Å.
        angles: ``(B, 3)`` α, β, γ in degrees.

    Returns:
        ``(B, 3, 3)`` matrix, rows are the lattice vectors a⃗, b⃗, c⃗ in Å.
    """
    alpha, beta, gamma = torch.deg2rad(angles).unbind(-1)
    cos_a, cos_b, cos_g = torch.cos(alpha), torch.cos(beta), torch.cos(gamma)
    sin_a, sin_b = torch.sin(alpha), torch.sin(beta)
    cos_gs = ((cos_a * cos_b - cos_g) / (sin_a * sin_b)).clamp(-1.0, 1.0)
    sin_gs = torch.sqrt(1.0 - cos_gs**2)
    a, b, c = lengths.unbind(-1)
    zero = torch.zeros_like(a)
    va = torch.stack([a * sin_b, zero, a * cos_b], dim=-1)
    vb = torch.stack([-b * sin_a * cos_gs, b * sin_a * sin_gs, b * cos_a], dim=-1)
    vc = torch.stack([zero, zero, c], dim=-1)
    return torch.stack([va, vb, vc], dim=-2)


def lattice_matrix_to_params(lattice: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`lattice_params_to_matrix`: ``(B, 3, 3)`` → lengths ``(B, 3)`` Å, angles ``(B, 3)`` °."""
    lengths = lattice.norm(dim=-1)
    a, b, c = lattice.unbind(-2)
    la, lb, lc = lengths.unbind(-1)

    def angle(u, v, nu, nv):
        return torch.rad2deg(torch.acos(((u * v).sum(-1) / (nu * nv)).clamp(-1.0, 1.0)))

    angles = torch.stack([angle(b, c, lb, lc), angle(a, c, la, lc), angle(a, b, la, lb)], dim=-1)
    return lengths, angles


def lattice_volume(lattice: torch.Tensor) -> torch.Tensor:
    """``(B, 3, 3)`` → ``(B,)`` cell volumes |a⃗ · (b⃗ × c⃗)| in Å³."""
    return torch.linalg.det(lattice).abs()


def batch_index(num_atoms: torch.Tensor, total: int | None = None) -> torch.Tensor:
    """``(B,)`` atom counts → ``(N,)`` crystal index of every atom; passing ``total`` = N avoids a host sync."""
    index = torch.arange(num_atoms.numel(), device=num_atoms.device)
    return torch.repeat_interleave(index, num_atoms, output_size=total)


def frac_to_cart(frac: torch.Tensor, lattice: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    """Fractional ``(N, 3)`` → Cartesian ``(N, 3)`` Å, with ``lattice`` ``(B, 3, 3)`` and ``batch`` ``(N,)``."""
    return torch.einsum("ni,nij->nj", frac, lattice[batch])


def cart_to_frac(cart: torch.Tensor, lattice: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    """Cartesian ``(N, 3)`` Å → fractional ``(N, 3)`` wrapped into [0, 1).

    Uses the pseudo-inverse so that a singular (predicted) lattice gives finite numbers (docs/data.md#conventions).
    """
    inv = torch.linalg.pinv(lattice)
    return torch.remainder(torch.einsum("ni,nij->nj", cart, inv[batch]), 1.0)


def _offset_grid(n: torch.Tensor | tuple[int, int, int], device) -> torch.Tensor:
    """All integer offsets ``t`` with ``|t_k| ≤ n_k``: ``(T, 3)`` long, the zero offset included."""
    ranges = [range(-int(k), int(k) + 1) for k in n]
    return torch.tensor(list(itertools.product(*ranges)), dtype=torch.long, device=device)


def minimum_image_diff(
    x1: torch.Tensor, x2: torch.Tensor, lattice: torch.Tensor, batch: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimum-image difference between paired Cartesian positions over the 27 images (docs/model.md#periodic-geometry).

    Args:
        x1, x2: ``(N, 3)`` Cartesian positions in Å, atom ``n`` of ``x1`` paired with atom ``n`` of ``x2``.
        lattice: ``(B, 3, 3)``; batch: ``(N,)``.

    Returns:
        ``d`` ``(N, 3)`` = x1 − (x2 + t*·M), the vector from the nearest image of x2 to x1, and ``|d|²`` ``(N,)``.
        Only offsets in {−1, 0, 1}³ are searched, as in CDVAE.
    """
    shifts = _offset_grid((1, 1, 1), x1.device).to(x1.dtype) @ lattice[batch]  # (N, 27, 3)
    diffs = (x1 - x2).unsqueeze(1) - shifts
    d2 = (diffs**2).sum(-1)
    best = d2.argmin(dim=1)
    rows = torch.arange(x1.shape[0], device=x1.device)
    return diffs[rows, best], d2[rows, best]


def image_range(lattice: torch.Tensor, cutoff: float) -> torch.Tensor:
    """Images needed per lattice direction so that no neighbour within ``cutoff`` Å is missed.

    For wrapped fractional coordinates, a neighbour within ``r`` needs ``|t_k| ≤ ⌊r / d_k⌋ + 1`` with ``d_k``
    the spacing of the lattice planes normal to direction ``k``. Returns ``(B, 3)`` long.
    """
    plane_spacing = 1.0 / torch.linalg.inv(lattice).norm(dim=-2)  # column norms of M⁻¹ = |b*_k|
    return torch.floor(cutoff / plane_spacing).long() + 1


@dataclass
class PeriodicGraph:
    """Directed periodic graph. ``E`` edges ``source → target`` sorted by target (then by distance when
    ``max_neighbors`` was given).

    Attributes:
        edge_index: ``(2, E)`` long, row 0 = source (neighbour) atom, row 1 = target (centre) atom.
        offsets: ``(E, 3)`` long integer image offset ``t`` of the source.
        vectors: ``(E, 3)`` Å, ``x_source + t·M − x_target``; differentiable w.r.t. coordinates and lattice.
        distances: ``(E,)`` Å.
        num_edges: ``(B,)`` edges per crystal.
    """

    edge_index: torch.Tensor
    offsets: torch.Tensor
    vectors: torch.Tensor
    distances: torch.Tensor
    num_edges: torch.Tensor


def radius_graph_pbc(
    frac: torch.Tensor,
    lattice: torch.Tensor,
    num_atoms: torch.Tensor,
    cutoff: float,
    max_neighbors: int | None = None,
    *,
    min_distance: float = 1e-4,
    max_images: torch.Tensor | tuple[int, int, int] | None = None,
    chunk_elements: int = 2**23,
    tie_rtol: float = TIE_RTOL,
) -> PeriodicGraph:
    """All neighbour images within ``cutoff`` of every atom, keeping the nearest ``max_neighbors``.

    Searches as many periodic images as the cutoff requires (a 10 Å cutoff in a 3 Å cell reaches ±4 cells),
    so nothing is truncated silently. Fractional coordinates need not be wrapped.

    Args:
        frac: ``(N, 3)`` fractional coordinates.
        lattice: ``(B, 3, 3)`` Å, rows are lattice vectors.
        num_atoms: ``(B,)`` atoms per crystal.
        cutoff: radius in Å (inclusive).
        max_neighbors: keep the nearest ``K`` per target atom and every further neighbour as far as the
            ``K``-th (the whole shell that ties at the ``K``-th distance, so the graph never depends on how atoms
            or images are ordered; a target can have more than ``K`` edges); ``None`` keeps all.
        min_distance: candidate pairs closer than this (Å) are dropped — removes each atom's own zero-offset
            copy (CDVAE drops d² ≤ 1e-4 Å², i.e. 0.01 Å).
        max_images: per-direction image range to search; default: the range the cutoff requires, the
            maximum over the batch (see :func:`image_range`). Passing it avoids a device→host sync.
        chunk_elements: bound on the candidate-pair tensor size per chunk of target atoms (memory knob).
        tie_rtol: squared distances within this relative tolerance of the ``K``-th one count as tied (absorbs
            rounding: a rotated crystal's distances differ in the last bits).

    Returns:
        :class:`PeriodicGraph`.
    """
    device = frac.device
    n_total = frac.shape[0]
    batch = batch_index(num_atoms, n_total)
    cell_shift = torch.floor(frac)
    wrapped = frac - cell_shift
    cart = frac_to_cart(wrapped, lattice, batch)

    if max_images is None:
        max_images = image_range(lattice.detach(), cutoff).amax(dim=0).tolist()
    grid = _offset_grid(max_images, device)  # (T, 3)
    shifts = grid.to(cart.dtype) @ lattice.detach()  # (B, T, 3)

    n_max = int(num_atoms.max()) if n_total else 0
    first = torch.cumsum(num_atoms, 0) - num_atoms
    local = torch.arange(n_total, device=device) - first[batch]
    dense = cart.new_zeros(num_atoms.numel(), max(n_max, 1), 3)
    dense_mask = torch.zeros(dense.shape[:2], dtype=torch.bool, device=device)
    dense[batch, local] = cart.detach()
    dense_mask[batch, local] = True

    n_cand = dense.shape[1] * grid.shape[0]
    chunk = max(1, chunk_elements // (3 * n_cand))
    k = n_cand if max_neighbors is None else min(max_neighbors, n_cand)
    targets, cands = [], []
    for start in range(0, n_total, chunk):
        tgt = torch.arange(start, min(start + chunk, n_total), device=device)
        b = batch[tgt]
        cand = dense[b].unsqueeze(2) + shifts[b].unsqueeze(1)  # (C, n_max, T, 3)
        d2 = ((cand - cart.detach()[tgt, None, None, :]) ** 2).sum(-1)
        ok = dense_mask[b].unsqueeze(2) & (d2 <= cutoff**2) & (d2 > min_distance**2)
        d2 = torch.where(ok, d2, torch.full_like(d2, math.inf)).flatten(1)
        if max_neighbors is not None:
            d2, pos = _nearest_shells(d2, k, tie_rtol)
        else:
            pos = torch.arange(n_cand, device=device).expand_as(d2)
        row, col = torch.nonzero(torch.isfinite(d2), as_tuple=True)
        targets.append(tgt[row])
        cands.append(pos[row, col])
    target = torch.cat(targets) if targets else torch.zeros(0, dtype=torch.long, device=device)
    cand = torch.cat(cands) if cands else torch.zeros(0, dtype=torch.long, device=device)

    source = first[batch[target]] + cand // grid.shape[0]
    offsets = grid[cand % grid.shape[0]] - cell_shift[source].long() + cell_shift[target].long()
    return _graph_from_edges(frac, lattice, batch, source, target, offsets, num_atoms.numel())


def _nearest_shells(d2: torch.Tensor, k: int, tie_rtol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``d2`` (C, M): the ``k`` smallest values and all values tied with the ``k``-th, ascending.

    Returns ``(d2, pos)`` of shape (C, W) with ``W ≥ k``; entries beyond a row's kept set are ``inf``.
    The sort is stable, so tied neighbours come in candidate order.
    """
    values, pos = torch.sort(d2, dim=1, stable=True)
    kth = values[:, k - 1 : k]
    keep = values <= kth * (1.0 + tie_rtol)
    width = max(k, int(keep.sum(1).max())) if keep.numel() else k
    values, pos, keep = values[:, :width], pos[:, :width], keep[:, :width]
    return torch.where(keep, values, torch.full_like(values, math.inf)), pos


def _graph_from_edges(frac, lattice, batch, source, target, offsets, num_crystals) -> PeriodicGraph:
    """Edge vectors from the *original* (differentiable) coordinates and lattice."""
    cart = frac_to_cart(frac, lattice, batch)
    edge_batch = batch[target]
    shift = torch.einsum("ei,eij->ej", offsets.to(cart.dtype), lattice[edge_batch])
    vectors = cart[source] + shift - cart[target]
    return PeriodicGraph(
        edge_index=torch.stack([source, target]),
        offsets=offsets,
        vectors=vectors,
        distances=vectors.norm(dim=-1),
        num_edges=torch.bincount(edge_batch, minlength=num_crystals),
    )


@dataclass
class Triplets:
    """Pairs of distinct edges ``b → a`` and ``c → a`` that share the target atom ``a`` (GemNet/DimeNet).

    Attributes:
        ba: ``(T,)`` index of edge b → a.
        ca: ``(T,)`` index of edge c → a.
    """

    ba: torch.Tensor
    ca: torch.Tensor


def triplets(edge_index: torch.Tensor, num_nodes: int) -> Triplets:
    """All ordered pairs of distinct edges with a common target; ``Σ_a deg(a)·(deg(a) − 1)`` of them.

    Periodic images make ``b = c`` possible with different offsets; such pairs are kept (the edges differ).
    """
    target = edge_index[1]
    n_edges = target.numel()
    order = torch.argsort(target, stable=True)
    degree = torch.bincount(target, minlength=num_nodes)
    seg_start = torch.cumsum(degree, 0) - degree
    per_edge = degree[target]
    ca = torch.repeat_interleave(torch.arange(n_edges, device=target.device), per_edge)
    run_start = torch.cumsum(per_edge, 0) - per_edge
    local = torch.arange(ca.numel(), device=target.device) - torch.repeat_interleave(run_start, per_edge)
    ba = order[seg_start[target[ca]] + local]
    keep = ba != ca
    return Triplets(ba=ba[keep], ca=ca[keep])
