"""Annealed Langevin decoding of latents into crystals (docs/sampling.md), built for GPU throughput.

* :class:`SamplerSettings` — the sampler's choices in one object; presets :data:`CDVAE_SAMPLER` and
  :data:`FAST_SAMPLER`.
* :func:`composition_sample` — initial atom types from the composition head (rounding + residual draws).
* :func:`langevin` — the annealed Langevin dynamics for any score function ``(z, frac, types, num_atoms,
  lattice) → (score, type_logits)``: the model's decoder, or an analytic score in tests.
* :func:`decode` — docs/sampling.md#annealed-langevin-dynamics steps 1–7 for a :class:`~tvcsp.vae.CrystalVAE`.

The step loop issues no device→host synchronisation of its own: every per-level constant is a device tensor
computed before the loop, noise comes from a device :class:`torch.Generator`, lattices and their inverses are
gathered per atom once, and the progress bar advances per noise level. The remaining syncs per step are
those of the score function (the decoder's graph construction). This module does not import pymatgen.

Units: lattice lengths and Cartesian coordinates in Å, angles in degrees, coordinates fractional where named
``frac``; atom types are atomic numbers Z (1-based).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from .errors import UserInputError
from .geometry import lattice_params_to_matrix
from .stoichiometry import COMPOSITION_RULES, check_composition_probs, integer_composition

if TYPE_CHECKING:
    from .vae import CrystalVAE

__all__ = ["CDVAE_SAMPLER", "FAST_SAMPLER", "PRECISIONS", "SAMPLER_PRESETS", "UPDATES",
           "CompositionKeeper", "SamplerSettings", "ScoreFn", "checked_lattice", "composition_sample", "decode",
           "langevin", "make_generator", "sigma_ladder"]

ScoreFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]
"""``(z (B, D), frac (N, 3), types (N,), num_atoms (B,), lattice (B, 3, 3)) → (score (N, 3), logits (N, T))``."""

PRECISIONS = ("32", "bf16")
UPDATES = ("langevin", "ancestral", "ddim")
SAFE_CELL = 10.0  # Å, edge of the cubic stand-in cell for crystals whose predicted lattice is unusable
MIN_RELATIVE_VOLUME = 1e-6  # V / (a·b·c) below this is treated as a singular lattice


@dataclass(frozen=True)
class SamplerSettings:
    """The sampler's choices (docs/sampling.md#settings): what decides the crystals a latent decodes to, apart
    from the random source. The defaults are CDVAE's (:data:`CDVAE_SAMPLER`).

    Not here, because they belong to a call: the seed or generator, forced atom counts and types, the device,
    ``compile`` (how the decoder runs, not what it computes: a run may be resumed with or without it) and the
    progress bar.

    Attributes:
        n_step_each: updates per visited noise level (1 with ``update='ddim'``).
        step_lr: Langevin step size at the last level, α = step_lr·(σ/σ_L)² (unused by the other updates).
        min_sigma: levels below this σ (Å) are skipped.
        num_levels: visit this many of the remaining levels, evenly spaced (:func:`sigma_ladder`); ``None``: all.
        update: ``'langevin'`` (CDVAE), ``'ancestral'`` or ``'ddim'`` (docs/sampling.md#the-update).
        keep_composition: every crystal keeps the composition it starts with; the decoder's logits only decide
            which atom is which element (:class:`CompositionKeeper`).
        composition_prior: each step's types are argmax(decoder logits + log p(element | z)) with p from the
            composition head, so an element the head rules out is never chosen (``False``: CDVAE's rule, the
            decoder's argmax alone).
        composition_rule: how the composition head's fractions become the starting element counts:
            ``'sample'`` (CDVAE: :func:`composition_sample`), ``'nearest'`` or ``'balanced'``
            (:mod:`tvcsp.stoichiometry`).
        precision: ``'32'`` or ``'bf16'`` (autocast of the decoder call only).
    """

    n_step_each: int = 100
    step_lr: float = 1e-4
    min_sigma: float = 0.0
    num_levels: int | None = None
    update: str = "langevin"
    keep_composition: bool = False
    composition_prior: bool = False
    composition_rule: str = "sample"
    precision: str = "32"

    def __post_init__(self):
        if self.update not in UPDATES:
            raise UserInputError(f"update must be one of {UPDATES}, got {self.update!r}")
        if self.composition_rule not in COMPOSITION_RULES:
            raise UserInputError(f"composition_rule must be one of {COMPOSITION_RULES}, got {self.composition_rule!r}")
        if self.precision not in PRECISIONS:
            raise UserInputError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not _is_count(self.n_step_each):
            raise UserInputError(f"n_step_each must be a positive integer, got {self.n_step_each!r}")
        if self.num_levels is not None and not _is_count(self.num_levels):
            raise UserInputError(f"num_levels must be a positive integer or None, got {self.num_levels!r}")
        for name in ("keep_composition", "composition_prior"):
            if not isinstance(getattr(self, name), bool):
                raise UserInputError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if not _is_number(self.step_lr) or self.step_lr <= 0:
            raise UserInputError(f"step_lr must be a positive number, got {self.step_lr!r}")
        if not _is_number(self.min_sigma) or self.min_sigma < 0:
            raise UserInputError(f"min_sigma must be a number ≥ 0 (Å), got {self.min_sigma!r}")
        if self.update == "ddim" and self.n_step_each != 1:
            raise UserInputError(f"update='ddim' takes one step per level (got n_step_each={self.n_step_each}): "
                             "choose the number of steps with num_levels")

    def to_dict(self) -> dict:
        """Plain JSON-serialisable dict of every setting."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SamplerSettings:
        """Inverse of :meth:`to_dict`; missing keys take the defaults, unknown keys are an error."""
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise UserInputError(f"unknown SamplerSettings keys: {sorted(unknown)}")
        return cls(**data)

    @staticmethod
    def preset(name: str) -> SamplerSettings:
        """A named preset of :data:`SAMPLER_PRESETS`: ``'cdvae'`` or ``'fast'``."""
        if name not in SAMPLER_PRESETS:
            raise UserInputError(f"unknown sampler preset {name!r}; known: {tuple(SAMPLER_PRESETS)}")
        return SAMPLER_PRESETS[name]

    def decoder_calls(self, sigmas: torch.Tensor) -> int:
        """Decoder evaluations per crystal with the noise levels ``sigmas`` ``(L,)`` Å: visited levels ×
        ``n_step_each`` (5,000 for CDVAE's sampler and 50 levels)."""
        return sigma_ladder(sigmas, self.num_levels, self.min_sigma).numel() * self.n_step_each


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


CDVAE_SAMPLER = SamplerSettings()
"""CDVAE's sampler: Langevin, 100 steps × 50 levels = 5,000 decoder calls per crystal, the decoder's argmax types."""
FAST_SAMPLER = SamplerSettings(n_step_each=2, update="ancestral", keep_composition=True)
"""tvcsp's fast sampler: ancestral, 2 steps × 50 levels = 100 decoder calls per crystal, compositions kept
(docs/sampling.md#quality-against-cost: as good as CDVAE's on the shipped perov_5 model)."""
SAMPLER_PRESETS = {"cdvae": CDVAE_SAMPLER, "fast": FAST_SAMPLER}


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A :class:`torch.Generator` on ``device`` seeded with ``seed`` (a fresh random seed when ``None``)."""
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def composition_sample(
    probs: torch.Tensor, num_atoms: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Initial atom types from per-crystal element probabilities (docs/sampling.md#initial-atom-types).

    Per crystal ``b``: ``n_k = round(p_bk · N_b)`` (half to even) copies of every element ``k``; if that is
    fewer than ``N_b`` atoms, the missing ones are drawn with replacement from the residual
    ``max(p_bk − n_k / N_b, 0)`` (from ``p_b`` itself where the residual is all zero, which only unnormalised
    rows reach); the list is randomly permuted and truncated to ``N_b``.

    Args:
        probs: ``(B, T)`` element probabilities, index = Z − 1: finite, ≥ 0 and not all zero in every crystal
            with atoms (rows of crystals with ``N_b = 0`` are not read).
        num_atoms: ``(B,)`` atoms per crystal (0 allowed).
        generator: random source on ``probs.device``.

    Returns:
        ``(Σ N_b,)`` long atomic numbers, crystal by crystal.

    Raises:
        ValueError: a crystal with atoms has no usable probabilities (NaN or infinite entries, negative ones, or
            all zero; e.g. the composition head of a non-finite latent). Its types cannot be drawn, and a guess
            would make it look like a crystal the model decoded.
    """
    device, (n_crystals, n_types) = probs.device, probs.shape
    num_atoms = num_atoms.long()
    check_composition_probs(probs, num_atoms)
    probs = torch.where((num_atoms > 0).unsqueeze(-1), probs, 0.0)
    counts = torch.round(probs * num_atoms.unsqueeze(-1).to(probs.dtype)).long()
    deficit = (num_atoms - counts.sum(-1)).clamp_min(0)
    crystal_grid = torch.arange(n_crystals, device=device).unsqueeze(-1)
    types = torch.repeat_interleave(torch.arange(1, n_types + 1, device=device).expand(n_crystals, -1).flatten(),
                                    counts.flatten())
    owner = torch.repeat_interleave(crystal_grid.expand(-1, n_types).flatten(), counts.flatten())
    max_deficit = int(deficit.max()) if n_crystals else 0
    if max_deficit:
        residual = (probs - counts.to(probs.dtype) / num_atoms.clamp_min(1).unsqueeze(-1)).clamp_min(0.0)
        residual = torch.where((residual.sum(-1) > 0).unsqueeze(-1), residual, probs)
        residual = torch.where((deficit > 0).unsqueeze(-1), residual, 1.0)  # rows without draws: any valid row
        draws = torch.multinomial(residual, max_deficit, replacement=True, generator=generator) + 1
        wanted = torch.arange(max_deficit, device=device) < deficit.unsqueeze(-1)
        types = torch.cat([types, draws[wanted]])
        owner = torch.cat([owner, crystal_grid.expand(-1, max_deficit)[wanted]])
    perm = torch.randperm(types.numel(), generator=generator, device=device)
    types, owner = types[perm], owner[perm]
    order = torch.argsort(owner, stable=True)  # group by crystal, random order within each crystal
    types, owner = types[order], owner[order]
    pool = torch.bincount(owner, minlength=n_crystals)
    rank = torch.arange(types.numel(), device=device) - (torch.cumsum(pool, 0) - pool)[owner]
    return types[rank < num_atoms[owner]]


def checked_lattice(lengths: torch.Tensor, angles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Lattice matrices for the dynamics and a flag for the usable ones.

    A lattice is unusable when a length or angle is not finite, a length is ≤ 0, or the cell is singular
    (V / (a·b·c) < 1e-6, checked in float64). Unusable ones are replaced by a cubic 10 Å cell so a batch keeps
    running; their crystals are left untouched by :func:`langevin` when its ``active`` mask is this flag.

    Args:
        lengths: ``(B, 3)`` Å; angles: ``(B, 3)`` degrees.

    Returns:
        lattice ``(B, 3, 3)`` (rows = vectors, Å, dtype of ``lengths``) and ``valid`` ``(B,)`` bool.
    """
    finite = torch.isfinite(lengths).all(-1) & torch.isfinite(angles).all(-1)
    lengths64 = torch.where(finite.unsqueeze(-1), lengths.double(), 1.0)
    angles64 = torch.where(finite.unsqueeze(-1), angles.double(), 90.0)
    lattice = lattice_params_to_matrix(lengths64, angles64)
    volume = torch.linalg.det(lattice).abs()
    valid = finite & (lengths64 > 0).all(-1) & torch.isfinite(lattice).flatten(1).all(-1)
    valid &= torch.nan_to_num(volume, nan=0.0) > MIN_RELATIVE_VOLUME * lengths64.prod(-1).abs()
    safe = SAFE_CELL * torch.eye(3, dtype=lattice.dtype, device=lattice.device)
    return torch.where(valid[:, None, None], lattice, safe).to(lengths.dtype), valid


def _autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def sigma_ladder(sigmas: torch.Tensor, num_levels: int | None = None, min_sigma: float = 0.0) -> torch.Tensor:
    """The levels a sampler visits: those ≥ ``min_sigma`` of ``sigmas`` (descending), thinned to ``num_levels``
    evenly spaced in index (first and last kept; ``None``: all). ``(L,)`` Å → ``(L',)`` Å."""
    levels = sigmas[sigmas >= min_sigma]  # a host sync, once, before the step loop
    if num_levels is None or num_levels >= levels.numel() or levels.numel() == 0:
        return levels
    if num_levels < 1:
        raise ValueError(f"num_levels must be positive, got {num_levels}")
    index = torch.linspace(0, levels.numel() - 1, num_levels, device=levels.device).round().long()
    return levels[index.unique()]


def _step_constants(levels: torch.Tensor, sampler: SamplerSettings,
                    last_sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per step t of the chain: its level σ_t, drift factor and noise std (docs/sampling.md#the-update).

    ``langevin``: α = step_lr·(σ/σ_last)², drift α/σ, noise √(2α) (CDVAE). ``ancestral``: drift σ_t (the
    decoder's estimate of the clean structure, x + σ_t·ŝ) and noise σ_{t+1} (the next step's level; 0 after the
    last step, so the chain ends on a denoised structure). ``ddim``: deterministic, drift σ_t − σ_{t+1} and no
    noise (x moves to the clean estimate re-noised along the predicted noise, x̂₀ + σ_{t+1}·(x − x̂₀)/σ_t;
    one step per level).
    """
    sigma = levels.to(torch.float32).repeat_interleave(sampler.n_step_each)
    if sampler.update == "langevin":
        alpha = sampler.step_lr * (sigma / last_sigma) ** 2
        return sigma, alpha / sigma, torch.sqrt(2.0 * alpha)
    following = torch.cat([sigma[1:], sigma.new_zeros(1)])
    if sampler.update == "ddim":
        return sigma, sigma - following, torch.zeros_like(sigma)
    return sigma, sigma, following


class CompositionKeeper:
    """Types under a fixed composition: each crystal keeps the multiset of elements it started with, and the
    decoder's logits only decide which atom gets which element (greedy: the most likely remaining
    (atom, element) pair first). Set up once per chain; :meth:`assign` has no host synchronisation.

    Args:
        init_types: ``(N,)`` Z, the multiset to keep; batch: ``(N,)`` crystal index; num_atoms: ``(B,)``.
    """

    def __init__(self, init_types: torch.Tensor, batch: torch.Tensor, num_atoms: torch.Tensor):
        self.batch, self.init_types, self.counts = batch, init_types.long(), None
        self.n_max = int(num_atoms.max()) if num_atoms.numel() else 0  # one host sync, before the chain
        offsets = torch.cumsum(num_atoms, 0) - num_atoms
        self.pos = torch.arange(batch.numel(), device=batch.device) - offsets[batch]
        self.padding = torch.ones(num_atoms.numel(), self.n_max, dtype=torch.bool, device=batch.device)
        self.padding[batch, self.pos] = False

    def assign(self, logits: torch.Tensor) -> torch.Tensor:
        """``(N, T)`` logits → ``(N,)`` Z with every crystal's element counts unchanged."""
        n_crystals, t = self.padding.shape[0], logits.shape[-1]
        if self.counts is None:
            self.counts = torch.zeros(n_crystals, t, dtype=torch.long, device=logits.device)
            self.counts.index_put_((self.batch, self.init_types - 1), torch.ones_like(self.batch), accumulate=True)
        dense = logits.new_full((n_crystals, self.n_max, t), -torch.inf)
        dense[self.batch, self.pos] = torch.log_softmax(logits.float(), dim=-1).to(dense.dtype)
        remaining, taken = self.counts.clone(), self.padding.clone()
        chosen = torch.zeros(n_crystals, self.n_max, dtype=torch.long, device=logits.device)
        rows = torch.arange(n_crystals, device=logits.device)
        for _ in range(self.n_max):
            score = dense.masked_fill(taken.unsqueeze(-1) | (remaining == 0).unsqueeze(1), -torch.inf)
            best, flat = score.view(n_crystals, -1).max(dim=-1)
            ok = best > -torch.inf
            atom, element = flat // t, flat % t
            chosen[rows, atom] = torch.where(ok, element, chosen[rows, atom])
            taken[rows, atom] |= ok
            remaining[rows, element] -= ok.long()
        return chosen[self.batch, self.pos] + 1


@torch.no_grad()
def langevin(
    score_fn: ScoreFn,
    z: torch.Tensor,
    num_atoms: torch.Tensor,
    lattice: torch.Tensor,
    sigmas: torch.Tensor,
    init_types: torch.Tensor,
    sampler: SamplerSettings = CDVAE_SAMPLER,
    *,
    init_frac: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    active: torch.Tensor | None = None,
    force_types: bool = False,
    type_bias: torch.Tensor | None = None,
    compile: bool = False,
    noise_conditioned: bool = False,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Annealed Langevin dynamics with a fixed lattice (docs/sampling.md#the-update).

    For every visited level σ (:func:`sigma_ladder` of ``sigmas``, ``sampler.min_sigma``, ``sampler.num_levels``;
    descending), ``sampler.n_step_each`` times: (ŝ, logits) = score_fn(z, f, types, N, L); x = f·L;
    x ← x + drift·ŝ + noise·η (η ~ N(0, I₃), Cartesian Å); f ← (x·L⁺) mod 1; types ← argmax(logits + bias) + 1
    unless ``force_types``. ``update='langevin'`` (CDVAE): drift α/σ, noise √(2α), α = step_lr·(σ/σ_L)²,
    σ_L = ``sigmas[-1]``. ``update='ancestral'``: drift σ (jump to the decoder's clean estimate), noise = the next
    step's σ, none after the last step. ``update='ddim'``: drift σ − σ', no noise (σ' the next level, 0 after
    the last).

    Args:
        score_fn: see :data:`ScoreFn`; ŝ is unit-scale (the score estimate is ŝ/σ).
        z: ``(B, D)`` latents, passed through to ``score_fn``.
        num_atoms: ``(B,)`` long; lattice: ``(B, 3, 3)`` Å, rows = vectors; sigmas: ``(L,)`` Å, descending.
        init_types: ``(N,)`` Z; init_frac: ``(N, 3)`` fractional, default uniform in [0, 1)³.
        sampler: the :class:`SamplerSettings`. With ``keep_composition`` each crystal keeps the element counts
            of ``init_types`` (:class:`CompositionKeeper`; ``type_bias`` is added to the logits first); with
            ``composition_prior`` the caller passes the prior as ``type_bias`` (:func:`decode` does).
        generator / seed: random source on ``z.device`` (``seed`` used when no generator is given).
        active: ``(B,)`` bool, crystals to evolve (others keep their initial coordinates and types).
        type_bias: ``(B, T)`` added to every atom's type logits before the argmax (``None``: CDVAE's rule, the
            decoder's logits alone).
        compile: wrap ``score_fn`` with :func:`torch.compile` (``dynamic=True``).
        noise_conditioned: also pass ``sigma=`` the current level, ``(B,)`` Å, to ``score_fn`` (a decoder with
            ``noise_embedding_dim > 0``).
        progress: a progress bar advanced once per level.

    Returns:
        final fractional coordinates ``(N, 3)`` in [0, 1) (dtype of ``lattice``) and types ``(N,)`` long.
    """
    if sampler.composition_prior and type_bias is None:
        raise ValueError("composition_prior needs the prior as type_bias (decode passes the composition head's)")
    device, n_total, n_step_each = z.device, init_types.shape[0], sampler.n_step_each
    generator = generator if generator is not None else make_generator(seed, device)
    frac = init_frac if init_frac is not None else torch.rand(
        n_total, 3, generator=generator, device=device, dtype=lattice.dtype)
    types = init_types.long()
    levels = sigma_ladder(sigmas.to(device), sampler.num_levels, sampler.min_sigma)
    if n_total == 0 or levels.numel() == 0:
        return frac, types
    step_sigma, drift, noise_std = _step_constants(levels, sampler, sigmas.to(device, torch.float32)[-1])
    batch = torch.repeat_interleave(torch.arange(num_atoms.numel(), device=device), num_atoms, output_size=n_total)
    lat_atom, inv_atom = lattice[batch], torch.linalg.pinv(lattice)[batch]  # (N, 3, 3)
    moving = None if active is None else active[batch]
    bias = None if type_bias is None else type_bias.to(device)[batch]
    keeper = CompositionKeeper(types, batch, num_atoms) if sampler.keep_composition and not force_types else None
    fn = torch.compile(score_fn, dynamic=True) if compile else score_fn
    autocast = _autocast(device, sampler.precision)
    with tqdm(total=levels.numel(), desc="Langevin levels", disable=not progress, leave=False) as bar:
        for level in range(levels.numel()):
            for t in range(level * n_step_each, (level + 1) * n_step_each):
                told = {"sigma": step_sigma[t].expand(num_atoms.numel())} if noise_conditioned else {}
                eta = torch.randn(frac.shape, generator=generator, device=device, dtype=frac.dtype)
                with autocast:
                    score, logits = fn(z, frac, types, num_atoms, lattice, **told)
                cart = torch.bmm(frac.unsqueeze(1), lat_atom).squeeze(1)
                cart = cart + drift[t] * score.to(frac.dtype) + noise_std[t] * eta
                new_frac = torch.remainder(torch.bmm(cart.unsqueeze(1), inv_atom).squeeze(1), 1.0)
                if bias is not None:
                    logits = logits.to(bias.dtype) + bias
                if force_types:
                    new_types = types
                elif keeper is not None:
                    new_types = keeper.assign(logits)
                else:
                    new_types = logits.argmax(dim=-1) + 1
                if moving is None:
                    frac, types = new_frac, new_types
                else:
                    frac = torch.where(moving.unsqueeze(-1), new_frac, frac)
                    types = torch.where(moving, new_types, types)
            bar.update(1)
    return frac, types


@torch.no_grad()
def decode(
    model: CrystalVAE,
    z: torch.Tensor,
    sampler: SamplerSettings = CDVAE_SAMPLER,
    *,
    num_atoms: torch.Tensor | None = None,
    atom_types: torch.Tensor | None = None,
    types_fixed: bool = True,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    compile: bool = False,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Latents → crystals with a :class:`~tvcsp.vae.CrystalVAE` (docs/sampling.md#annealed-langevin-dynamics steps 1–7).

    N = argmax of the atom-count head (0 possible: such crystals have no atoms and an invalid lattice),
    lattice from the lattice head scaled by N^{1/3}, initial types by the sampler's ``composition_rule``
    (CDVAE's :func:`composition_sample` by default), uniform initial coordinates, then :func:`langevin` with
    the model's decoder and noise levels. Crystals whose lattice is unusable (see :func:`checked_lattice`) keep
    their initial state and are flagged.

    Args:
        model: the VAE (put it in eval mode first); z: ``(B, latent)`` on the model's device.
        sampler: the :class:`SamplerSettings` (default CDVAE's). With ``keep_composition`` every crystal keeps
            the composition it starts with (the composition head's, made whole by ``composition_rule``); with
            ``composition_prior`` the composition head's log-probabilities are added to the decoder's logits.
        num_atoms: ``(B,)`` forced atom counts; atom_types: ``(Σ N_b,)`` forced types: each atom keeps its type
            (``types_fixed``), or they are the initial types and the sampler's type rule moves them (with
            ``keep_composition``, every crystal keeps exactly these element counts while the decoder's logits
            decide which atom is which element: structure prediction's rule).
        Other arguments as in :func:`langevin`.

    Returns:
        ``num_atoms`` ``(B,)`` long, ``lengths`` ``(B, 3)`` Å and ``angles`` ``(B, 3)`` ° (as predicted, float32),
        ``frac_coords`` ``(N, 3)`` float32, ``atom_types`` ``(N,)`` long, ``valid_lattice`` ``(B,)`` bool.
    """
    device = z.device
    generator = generator if generator is not None else make_generator(seed, device)
    num_atoms = model.predict_num_atoms(z) if num_atoms is None else num_atoms.to(device).long()
    lengths, angles = model.lattice_from_scaled(model.fc_lattice(z), num_atoms)
    lengths, angles = lengths.float(), angles.float()
    lattice, valid = checked_lattice(lengths, angles)
    composition = torch.log_softmax(model.fc_composition(z).float(), -1)
    if atom_types is None and sampler.composition_rule == "sample":
        init_types = composition_sample(composition.exp(), num_atoms, generator)
    elif atom_types is None:
        init_types = integer_composition(composition.exp(), num_atoms, sampler.composition_rule)
    else:
        init_types = atom_types.to(device).long()
    frac, types = langevin(
        model.decoder, z, num_atoms, lattice, model.sigmas, init_types, sampler, generator=generator, active=valid,
        force_types=atom_types is not None and types_fixed,
        type_bias=composition if sampler.composition_prior else None, compile=compile,
        noise_conditioned=model.decoder.config.noise_embedding_dim > 0, progress=progress,
    )
    return {"num_atoms": num_atoms, "lengths": lengths, "angles": angles, "frac_coords": frac.float(),
            "atom_types": types, "valid_lattice": valid}
