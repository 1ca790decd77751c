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

from typing import TYPE_CHECKING

import torch

from .data import CrystalBatches, CrystalTensors
from .errors import UserInputError
from .sampling import SamplerSettings, decode
from .vae import reparameterise

if TYPE_CHECKING:
    from .vae import CrystalVAE

__all__ = ["PER_ATOM", "PER_CRYSTAL", "concat_crystals", "decode_best_of", "encode_decoded", "select_crystals"]

PER_CRYSTAL = ("num_atoms", "lengths", "angles", "valid_lattice")
PER_ATOM = ("frac_coords", "atom_types")


@torch.no_grad()
def encode_decoded(model: CrystalVAE, decoded: dict, batch_size: int = 256) -> torch.Tensor:
    """Posterior means ``(B, D)`` of decoded crystals (the output of :func:`tvcsp.sampling.decode`); NaN rows for
    crystals with an unusable lattice (or no atoms), which are not encoded."""
    usable = decoded["valid_lattice"].nonzero().flatten()
    kept = select_crystals(decoded, usable)
    n = len(usable)
    crystals = CrystalTensors(kept["atom_types"].cpu(), kept["frac_coords"].double().cpu(),
                              kept["num_atoms"].cpu(), kept["lengths"].double().cpu(),
                              kept["angles"].double().cpu(), torch.full((n,), float("nan")), [""] * n)
    device = decoded["num_atoms"].device
    means = [model.encode(b.to(device), sample=False)[0] for b in CrystalBatches(crystals, batch_size, model.scalers)]
    dtype = next(model.parameters()).dtype
    out = torch.full((len(decoded["num_atoms"]), model.config.latent_dim), float("nan"), device=device, dtype=dtype)
    if means:
        out[usable] = torch.cat(means).to(dtype)
    return out


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
