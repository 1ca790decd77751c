"""Round trips through the encoder: encode decoded crystals again, and keep the candidate that reads back best
(docs/sampling.md#best-of-k-reconstruction).

A decoded crystal that the encoder maps back near the latent it came from is one the model considers
consistent with that latent. Two uses:

* :func:`decode_best_of` — reconstruction that draws ``k`` latents from the posterior q(z | x), decodes each,
  and keeps per crystal the candidate whose re-encoded posterior mean lies nearest the posterior mean μ(x) of
  the input crystal. No ground truth beyond the encoder's reading of the input enters the choice; the cost is
  ``k`` decodings and ``k`` encoder calls per crystal. The one-draw protocol of CDVAE is ``k = 1``.
* :func:`encode_decoded` and :func:`select_crystals` — the pieces, also used by structure prediction's
  ``"reencode"`` ranking (:mod:`tvcsp.predict`).

Shapes follow :func:`tvcsp.sampling.decode`: per-crystal tensors ``(B, …)``, per-atom tensors ``(N, …)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from .data import CrystalBatches, CrystalTensors
from .errors import UserInputError
from .sampling import SamplerSettings, decode
from .vae import reparameterise

if TYPE_CHECKING:
    from .vae import CrystalVAE

__all__ = ["INFORMATIVE_SIGMA", "PER_ATOM", "PER_CRYSTAL", "concat_crystals", "decode_best_of", "decode_consistent",
           "encode_decoded", "encode_decoded_posterior", "roundtrip_distance", "select_crystals"]

PER_CRYSTAL = ("num_atoms", "lengths", "angles", "valid_lattice")
INFORMATIVE_SIGMA = 0.5
"""Latent dimensions whose posterior σ is below this carry information about the crystal; the others sit at the
prior (σ ≈ 1, μ ≈ 0) and are left out of :func:`roundtrip_distance` (on the shipped perov_5 model 27 of 64 have
mean σ < 0.49 over training crystals and the rest > 0.9)."""
PER_ATOM = ("frac_coords", "atom_types")


@torch.no_grad()
def encode_decoded_posterior(model: CrystalVAE, decoded: dict, batch_size: int = 256
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior μ and log σ² ``(B, D)`` of decoded crystals (the output of :func:`tvcsp.sampling.decode`); NaN
    rows for crystals with an unusable lattice (or no atoms), which are not encoded."""
    usable = decoded["valid_lattice"].nonzero().flatten()
    kept = select_crystals(decoded, usable)
    n = len(usable)
    crystals = CrystalTensors(kept["atom_types"].cpu(), kept["frac_coords"].double().cpu(),
                              kept["num_atoms"].cpu(), kept["lengths"].double().cpu(),
                              kept["angles"].double().cpu(), torch.full((n,), float("nan")), [""] * n)
    device = decoded["num_atoms"].device
    parts = [model.encode(b.to(device), sample=False)[:2] for b in CrystalBatches(crystals, batch_size, model.scalers)]
    dtype = next(model.parameters()).dtype
    shape = (len(decoded["num_atoms"]), model.config.latent_dim)
    mu, logvar = (torch.full(shape, float("nan"), device=device, dtype=dtype) for _ in range(2))
    if parts:
        mu[usable] = torch.cat([m for m, _ in parts]).to(dtype)
        logvar[usable] = torch.cat([lv for _, lv in parts]).to(dtype)
    return mu, logvar


def encode_decoded(model: CrystalVAE, decoded: dict, batch_size: int = 256) -> torch.Tensor:
    """Posterior means ``(B, D)`` of decoded crystals; NaN rows for unusable lattices (see
    :func:`encode_decoded_posterior`)."""
    return encode_decoded_posterior(model, decoded, batch_size)[0]


def select_crystals(decoded: dict, order: torch.Tensor) -> dict:
    """The crystals ``order`` ``(M,)`` (indices into the batch, repeats allowed) of a decoded batch, in that order."""
    ptr = torch.cat([decoded["num_atoms"].new_zeros(1), decoded["num_atoms"].cumsum(0)])
    atoms = [torch.arange(int(ptr[i]), int(ptr[i + 1]), device=ptr.device) for i in order.tolist()]
    atoms = torch.cat(atoms) if atoms else ptr.new_zeros(0)
    return {**{k: decoded[k][order] for k in PER_CRYSTAL}, **{k: decoded[k][atoms] for k in PER_ATOM}}


def concat_crystals(parts: list[dict]) -> dict:
    """Decoded batches ``[(B₁ …), (B₂ …), …]`` → one batch of ``ΣBᵢ`` crystals, part after part."""
    return {k: torch.cat([p[k] for p in parts]) for k in PER_CRYSTAL + PER_ATOM}


def _forced_subset(forced: dict, index: torch.Tensor) -> dict:
    """The forced ``num_atoms`` (B,) / ``atom_types`` (Σ N_b,) of the crystals ``index``."""
    num_atoms, types = forced.get("num_atoms"), forced.get("atom_types")
    if types is not None and num_atoms is None:
        raise UserInputError("forced atom types need forced atom counts to be split between crystals")
    subset = dict(forced)
    if num_atoms is not None:
        subset["num_atoms"] = num_atoms[index]
    if types is not None:
        ptr = torch.cat([num_atoms.new_zeros(1), num_atoms.long().cumsum(0)]).tolist()
        subset["atom_types"] = torch.cat([types[ptr[i]:ptr[i + 1]] for i in index.tolist()] or [types[:0]])
    return subset


@torch.no_grad()
def decode_best_of(
    model: CrystalVAE, mu: torch.Tensor, logvar: torch.Tensor, sampler: SamplerSettings, k: int, *,
    accept: float | None = None, sample_z: bool = True, generator: torch.Generator | None = None,
    compile: bool = False, progress: bool = False, **forced,
) -> dict:
    """Decode up to ``k`` candidates per crystal and keep the one that re-encodes nearest μ(x).

    Candidate ``j`` decodes z_j = μ + σ·ε_j (``sample_z``; else μ itself, so only the sampler's noise differs).
    Candidates with an unusable lattice lose to any usable one; ties go to the earlier candidate, so ``k = 1``
    is exactly one :func:`~tvcsp.sampling.decode` of one sampled z. With ``accept`` τ, a crystal stops drawing
    at its first candidate with ‖μ(x̂_j) − μ(x)‖ < τ, and later rounds decode only the crystals still open:
    most crystals then cost one decoding (τ is chosen per model on validation crystals; the model card says it).

    Args:
        model: the VAE in eval mode; mu, logvar: ``(B, D)`` posterior of the input crystals.
        sampler: the :class:`~tvcsp.sampling.SamplerSettings` of every decoding; k: candidates per crystal (≥ 1).
        accept: distance (latent units) below which a candidate is kept at once; ``None``: always draw ``k``.
        forced: ``num_atoms`` / ``atom_types`` as in :func:`~tvcsp.sampling.decode`, the same for every candidate.

    Returns:
        the chosen crystals as :func:`~tvcsp.sampling.decode` returns them, plus ``z`` ``(B, D)`` the chosen
        latents, ``candidate`` ``(B,)`` the chosen index and ``distance`` ``(k, B)``: ‖μ(x̂_j) − μ(x)‖ of every
        candidate (+inf for an unusable lattice, NaN for a candidate not drawn).
    """
    if k < 1:
        raise UserInputError(f"best-of needs k ≥ 1 candidates, got {k}")
    batch, device = len(mu), mu.device
    distance = torch.full((k, batch), float("nan"), device=device)
    position = torch.full((k, batch), -1, dtype=torch.long, device=device)  # row of (j, i) in the concatenation
    latents, candidates, drawn, open_ = [], [], 0, torch.arange(batch, device=device)
    for j in range(k):
        z = reparameterise(mu[open_], logvar[open_], generator) if sample_z else mu[open_]
        decoded = decode(model, z, sampler, generator=generator, compile=compile, progress=progress,
                         **_forced_subset(forced, open_))
        gap = (encode_decoded(model, decoded) - mu[open_]).norm(dim=-1) if k > 1 else torch.zeros_like(z[:, 0])
        distance[j, open_] = torch.where(decoded["valid_lattice"], gap, torch.full_like(gap, torch.inf))
        position[j, open_] = drawn + torch.arange(len(open_), device=device)
        drawn += len(open_)
        latents.append(z)
        candidates.append(decoded)
        if accept is not None:
            open_ = open_[~(distance[j, open_] < accept)]
            if not len(open_):
                break
    # argmin returns the first of equal minima (all +inf included): ties go to the earlier candidate; a candidate
    # not drawn (NaN) comes after every drawn one of its crystal, so it never wins
    chosen = distance.nan_to_num(nan=torch.inf).argmin(0) if k > 1 else torch.zeros(batch, dtype=torch.long,
                                                                                     device=device)
    flat = position[chosen, torch.arange(batch, device=device)]
    selected = select_crystals(concat_crystals(candidates), flat)
    return {**selected, "z": torch.cat(latents)[flat], "candidate": chosen, "distance": distance}


@torch.no_grad()
def roundtrip_distance(model: CrystalVAE, decoded: dict, z: torch.Tensor) -> torch.Tensor:
    """‖μ(x̂) − z‖ over the dimensions where the decoded crystal's posterior σ < :data:`INFORMATIVE_SIGMA`: how far
    the crystal decoded from ``z`` ``(B, D)`` reads back from it, ``(B,)``; +inf for an unusable lattice. The
    uninformative dimensions are left out because a latent drawn from a prior holds noise there that no crystal
    can read back."""
    mu, logvar = encode_decoded_posterior(model, decoded)
    informative = (0.5 * logvar).exp() < INFORMATIVE_SIGMA
    gap = ((mu - z) * informative).norm(dim=-1)
    return torch.where(decoded["valid_lattice"], gap.nan_to_num(nan=torch.inf), torch.full_like(gap, torch.inf))


@torch.no_grad()
def decode_consistent(
    model: CrystalVAE, draw: Callable[[int], torch.Tensor], n: int, sampler: SamplerSettings, reject: float, *,
    max_draws: int = 10, generator: torch.Generator | None = None, compile: bool = False, progress: bool = False,
) -> dict:
    """Generation that redraws latents whose crystal does not read back: ``n`` latents from ``draw(m) → (m, D)``
    are decoded, and every crystal whose :func:`roundtrip_distance` is ≥ ``reject`` gets a fresh latent, up to
    ``max_draws`` latents per crystal (the last one is kept whatever its distance).

    This is rejection sampling: it keeps the prior's latents in proportion to how reliably the decoder turns them
    into a crystal, so it trades some of the prior's spread (and novelty) for validity and precision
    (docs/sampling.md#round-trip-rejection). ``reject`` is chosen per model on validation crystals.

    Returns:
        the crystals as :func:`~tvcsp.sampling.decode` returns them, plus ``z`` ``(n, D)`` the kept latents,
        ``distance`` ``(n,)`` their round-trip distances and ``draws`` ``(n,)`` how many latents each crystal used.
    """
    if max_draws < 1:
        raise UserInputError(f"max_draws must be ≥ 1, got {max_draws}")
    z = draw(n)
    decoded = decode(model, z, sampler, generator=generator, compile=compile, progress=progress)
    distance = roundtrip_distance(model, decoded, z)
    draws = torch.ones(n, dtype=torch.long, device=z.device)
    for _ in range(max_draws - 1):
        redo = (distance >= reject).nonzero().flatten()
        if not len(redo):
            break
        fresh_z = draw(len(redo))
        fresh = decode(model, fresh_z, sampler, generator=generator, compile=compile, progress=progress)
        order = torch.arange(n, device=z.device)
        order[redo] = n + torch.arange(len(redo), device=z.device)
        decoded = select_crystals(concat_crystals([decoded, fresh]), order)
        z[redo], distance[redo] = fresh_z, roundtrip_distance(model, fresh, fresh_z)
        draws[redo] += 1
    return {**decoded, "z": z, "distance": distance, "draws": draws}
