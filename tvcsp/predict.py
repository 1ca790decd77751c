"""Crystal structure prediction from a composition (docs/sampling.md#structure-prediction).

Given a composition — ``"SrTiO3"``, a pymatgen ``Composition`` or ``"Sr2Ti2O6"`` for two formula units — the
model proposes ranked crystals with exactly those atoms:

1. **latent search** (:func:`search_latents`): draw ``pool`` latents per wanted candidate from the model's prior
   (its composition-conditioned prior q(z | composition) when it has one, else its learned prior q(z), else
   N(0, I); :data:`PREDICT_PRIORS`), keep the ``n`` that the heads find most likely to
   hold the composition, log p(N | z) + Σᵢ log p(Zᵢ | z) (:func:`composition_log_likelihood`, the heads' own
   training losses), then move them ``latent_steps`` gradient steps up that log-likelihood, held near their
   start by a quadratic tether;
2. **decoding** with the atom count and the atom types forced (:func:`tvcsp.sampling.decode`): the lattice
   comes from the lattice head, the decoder places the given atoms;
3. **ranking** (:data:`RANKINGS`): by the log-likelihood of the final latent (``"latent"``), or by the
   log-likelihood the heads give the decoded crystal after encoding it again (``"reencode"``: does the crystal
   the decoder built still read as this composition?).

:func:`predict_batch` does this for many compositions at once (the benchmark's path); :func:`predict_structures`
for one, returning pymatgen Structures. Units: Å and degrees; atom types are atomic numbers Z.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from .errors import UserInputError
from .prior import composition_features, resolve_prior, sample_latents
from .reencode import encode_decoded, select_crystals
from .sampling import FAST_SAMPLER, SamplerSettings, decode, make_generator

if TYPE_CHECKING:
    from pymatgen.core import Composition, Structure

    from .vae import CrystalVAE

__all__ = ["POOL", "PREDICT_PRIORS", "RANKINGS", "CompositionTarget", "Prediction", "PredictSettings",
           "composition_log_likelihood", "draw_latents", "parse_target", "pool_used", "predict_batch",
           "predict_structures", "prior_used", "rank_scores", "search_latents", "write_predictions"]

RANKINGS = ("latent", "reencode")
POOL = 16
"""Prior latents drawn per candidate from the learned prior or N(0, I) when :attr:`PredictSettings.pool` is None."""
PREDICT_PRIORS = ("conditional", "learned", "normal")
"""Where candidate latents come from: ``"conditional"`` (the model's prior of q(z | composition), drawn for the
target composition), ``"learned"`` (its prior of q(z)) or ``"normal"`` (N(0, I))."""


@dataclass(frozen=True)
class PredictSettings:
    """How candidates are found, decoded and ranked (docs/sampling.md#structure-prediction).

    Attributes:
        pool: prior latents drawn per candidate; the most likely of them (by the heads) are kept. ``None``: 1 for
            the conditional prior, which already draws for the composition (on validation crystals, keeping the
            likeliest of 8 or 64 of its draws raised the RMSE of a single guess by a quarter without matching
            more), :data:`POOL` otherwise; :func:`pool_used` says which.
        latent_steps: Adam steps up the heads' log-likelihood of the composition (0: keep the drawn latents).
        latent_lr: their step size, in latent units.
        tether: weight of ½‖z − z₀‖², which keeps each latent near the prior draw it started from.
        refine: rounds of re-encoding: the decoded crystal is encoded (posterior mean) and decoded again.
        prior: one of :data:`PREDICT_PRIORS`, or ``None``: the model's conditional prior when it has one, else its
            learned prior when it has one, else N(0, I).
        ranking: one of :data:`RANKINGS`.
        sampler: the :class:`~tvcsp.sampling.SamplerSettings` of the decoding (default the fast sampler).
    """

    pool: int | None = None
    latent_steps: int = 0
    latent_lr: float = 0.05
    tether: float = 1.0
    refine: int = 0
    prior: str | None = None
    ranking: str = "reencode"
    sampler: SamplerSettings = field(default_factory=lambda: FAST_SAMPLER)

    def __post_init__(self):
        if (self.pool is not None and self.pool < 1) or self.latent_steps < 0 or self.refine < 0:
            raise UserInputError(f"pool must be ≥ 1 and latent_steps ≥ 0, got {self.pool}, {self.latent_steps}")
        if self.latent_lr <= 0 or self.tether < 0:
            raise UserInputError(f"latent_lr must be > 0 and tether ≥ 0, got {self.latent_lr}, {self.tether}")
        if self.prior is not None and self.prior not in PREDICT_PRIORS:
            raise UserInputError(f"prior must be one of {PREDICT_PRIORS} or None, got {self.prior!r}")
        if self.ranking not in RANKINGS:
            raise UserInputError(f"ranking must be one of {RANKINGS}, got {self.ranking!r}")

    def to_dict(self) -> dict:
        return {**asdict(self), "sampler": self.sampler.to_dict()}

    @classmethod
    def from_dict(cls, data: dict) -> PredictSettings:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise UserInputError(f"unknown prediction settings {sorted(unknown)}; known: {sorted(known)}")
        values = dict(data)
        if isinstance(values.get("sampler"), dict):
            values["sampler"] = SamplerSettings.from_dict(values["sampler"])
        return cls(**values)


@dataclass(frozen=True)
class CompositionTarget:
    """A composition to predict: ``formula`` (its elements in the order given, with the counts as given:
    ``"SrTiO3"``, ``"Sr2Ti2O6"``) and ``atom_types``, the Z of every atom, sorted (length = the atom count)."""

    formula: str
    atom_types: tuple[int, ...]

    @property
    def num_atoms(self) -> int:
        return len(self.atom_types)


@dataclass(frozen=True)
class Prediction:
    """One ranked candidate: ``structure`` (pymatgen, ``None`` when its lattice is unusable), ``rank`` (0 =
    best), ``score`` (the ranking's, higher is better), the latent ``z`` ``(D,)`` and ``formula``."""

    formula: str
    rank: int
    score: float
    structure: Structure | None
    z: torch.Tensor


def parse_target(target: str | Composition, model: CrystalVAE) -> CompositionTarget:
    """Read a formula or Composition and check that ``model`` can make it; every refusal is one line
    (:class:`~tvcsp.errors.UserInputError`): a formula pymatgen cannot read, fractional counts, an element the
    model never saw in training, or more atoms than its atom-count head allows."""
    from pymatgen.core import Composition, Element

    try:
        composition = target if isinstance(target, Composition) else Composition(str(target))
    except (ValueError, KeyError, TypeError) as err:
        raise UserInputError(f"cannot read the formula {target!r}: {err}") from None
    strange = [str(el) for el in composition if not isinstance(el, Element)]
    if strange:
        raise UserInputError(f"cannot read the formula {target!r}: {', '.join(strange)} is not an element")
    if len(composition) == 0:
        raise UserInputError(f"the formula {target!r} holds no atoms")
    counts = {el.Z: amount for el, amount in composition.items()}
    if any(abs(a - round(a)) > 1e-8 or a < 1 for a in counts.values()):
        raise UserInputError(f"{composition.formula}: atom counts must be whole numbers (write Sr2Ti2O6, not "
                             "SrTiO3 with fractions)")
    unknown = sorted(set(counts) - set(model.stats.elements))
    if unknown:
        names = ", ".join(_symbol(z) for z in unknown)
        raise UserInputError(f"{composition.formula}: this model never saw {names} in training")
    types = tuple(sorted(z for z, a in counts.items() for _ in range(round(a))))
    if len(types) > model.config.max_atoms:
        raise UserInputError(f"{composition.formula}: {len(types)} atoms, this model makes at most "
                             f"{model.config.max_atoms}")
    name = "".join(f"{el.symbol}{round(a) if round(a) != 1 else ''}" for el, a in composition.items())
    return CompositionTarget(name, types)


def _symbol(z: int) -> str:
    from pymatgen.core import Element

    return Element.from_Z(z).symbol


def composition_log_likelihood(model: CrystalVAE, z: torch.Tensor, counts: torch.Tensor,
                               num_atoms: torch.Tensor) -> torch.Tensor:
    """log p(N | z) + Σ_e n_e log p(e | z) per latent, ``(B,)``, from the atom-count and composition heads.

    Args:
        z: ``(B, D)`` latents; counts: ``(B, T)`` atoms of each element (column ``Z − 1``); num_atoms: ``(B,)``.
    """
    natoms = torch.log_softmax(model.fc_num_atoms(z).float(), -1).gather(1, num_atoms.long().unsqueeze(1))
    composition = torch.log_softmax(model.fc_composition(z).float(), -1)
    return natoms.squeeze(1) + (counts * composition).sum(-1)


def _counts(targets: list[CompositionTarget], num_types: int, device) -> torch.Tensor:
    counts = torch.zeros(len(targets), num_types, device=device)
    for i, target in enumerate(targets):
        for z, n in Counter(target.atom_types).items():
            counts[i, z - 1] = n
    return counts


def prior_used(model: CrystalVAE, prior: str | None) -> str:
    """The name (one of :data:`PREDICT_PRIORS`) of the prior :func:`draw_latents` draws from for ``prior``."""
    if prior is None:
        if getattr(model, "conditional_prior", None) is not None:
            return "conditional"
        return "learned" if getattr(model, "latent_prior", None) is not None else "normal"
    return prior


def pool_used(model: CrystalVAE, settings: PredictSettings) -> int:
    """The pool :func:`search_latents` draws per candidate under ``settings`` (see :attr:`PredictSettings.pool`)."""
    if settings.pool is not None:
        return settings.pool
    return 1 if prior_used(model, settings.prior) == "conditional" else POOL


def draw_latents(model: CrystalVAE, counts: torch.Tensor, num_atoms: torch.Tensor, prior: str | None,
                 generator: torch.Generator) -> torch.Tensor:
    """One latent ``(B, D)`` per row of ``counts`` ``(B, T)`` / ``num_atoms`` ``(B,)``, from the prior named by
    ``prior`` (see :attr:`PredictSettings.prior`): the conditional prior draws for each row's composition, the
    others ignore it.

    Raises:
        UserInputError: ``"conditional"`` for a model without a conditional prior.
    """
    name = prior_used(model, prior)
    if name != "conditional":
        return sample_latents(model, len(counts), resolve_prior(model, name), generator, counts.device)
    conditional = getattr(model, "conditional_prior", None)
    if conditional is None:
        raise UserInputError("prior='conditional' but this model has no conditional prior (fit one with "
                             "'tvcsp fit-prior MODEL --conditional', or use prior='learned')")
    features = composition_features(counts, num_atoms, model.config.max_atoms)
    return conditional.to(counts.device).sample(len(counts), generator=generator, condition=features)


def search_latents(model: CrystalVAE, counts: torch.Tensor, num_atoms: torch.Tensor, n: int,
                   settings: PredictSettings, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` latents per composition, ``(C·n, D)`` (composition-major), and their log-likelihoods ``(C·n,)``.

    Per composition, ``n · pool`` latents come from the prior (:func:`draw_latents`; pool: :func:`pool_used`); the
    ``n`` most likely are kept and, with ``latent_steps``, refined by Adam on −log-likelihood + tether·½‖z − z₀‖².
    """
    c, pool = counts.shape[0], n * pool_used(model, settings)
    device = counts.device
    pool_counts, pool_atoms = counts.repeat_interleave(pool, 0), num_atoms.repeat_interleave(pool)
    drawn = draw_latents(model, pool_counts, pool_atoms, settings.prior, generator)
    with torch.no_grad():
        scores = composition_log_likelihood(model, drawn, pool_counts, pool_atoms)
    best = scores.view(c, pool).topk(n, dim=1).indices + torch.arange(c, device=device).unsqueeze(1) * pool
    start = drawn[best.flatten()]
    counts, num_atoms = counts.repeat_interleave(n, 0), num_atoms.repeat_interleave(n)
    z = start.clone()
    if settings.latent_steps:
        z.requires_grad_(True)
        optimizer = torch.optim.Adam([z], lr=settings.latent_lr)
        for _ in range(settings.latent_steps):
            optimizer.zero_grad()
            loss = (-composition_log_likelihood(model, z, counts, num_atoms)
                    + 0.5 * settings.tether * (z - start).pow(2).sum(-1)).sum()
            loss.backward()
            optimizer.step()
        z = z.detach()
    with torch.no_grad():
        return z, composition_log_likelihood(model, z, counts, num_atoms)


@torch.no_grad()
def rank_scores(model: CrystalVAE, decoded: dict, counts: torch.Tensor, latent_scores: torch.Tensor,
                ranking: str, batch_size: int = 256) -> torch.Tensor:
    """The ranking score of each decoded candidate ``(B,)`` (higher is better; −inf for an unusable lattice):
    ``"latent"`` — the latent's log-likelihood; ``"reencode"`` — the heads' log-likelihood of the composition at
    the posterior mean of the decoded crystal encoded again."""
    if ranking == "latent":
        scores = latent_scores.clone()
    else:
        scores = composition_log_likelihood(model, encode_decoded(model, decoded, batch_size), counts,
                                            decoded["num_atoms"])
    return torch.where(decoded["valid_lattice"], scores, torch.full_like(scores, -torch.inf))


def predict_batch(model: CrystalVAE, targets: list[CompositionTarget], n: int,
                  settings: PredictSettings = PredictSettings(), *, seed: int = 0, compile: bool = False,
                  progress: bool = False) -> dict[str, torch.Tensor]:
    """``n`` ranked candidates for each of ``targets`` in one decoding batch, on the model's device.

    Returns, composition-major (candidate ``j`` of target ``i`` at ``i·n + j``, in rank order):
    ``num_atoms`` ``(C·n,)``, ``lengths``/``angles`` ``(C·n, 3)``, ``frac_coords`` ``(N, 3)``,
    ``atom_types`` ``(N,)``, ``valid_lattice`` ``(C·n,)``, ``z`` ``(C·n, D)``, ``latent_score`` and ``score``
    ``(C·n,)`` and ``rank`` ``(C·n,)``. Deterministic given ``seed`` and the targets.
    """
    if n < 1:
        raise UserInputError(f"n must be ≥ 1, got {n}")
    device = next(model.parameters()).device
    generator = make_generator(seed, device)
    counts = _counts(targets, model.fc_composition[-1].out_features, device)
    num_atoms = torch.tensor([t.num_atoms for t in targets], device=device)
    z, latent_scores = search_latents(model, counts, num_atoms, n, settings, generator)
    forced_n = num_atoms.repeat_interleave(n)
    forced_types = torch.tensor([a for t in targets for _ in range(n) for a in t.atom_types], device=device)
    sampler = dataclasses.replace(settings.sampler, keep_composition=True)
    decoded = decode(model, z, sampler, num_atoms=forced_n, atom_types=forced_types, types_fixed=False,
                     generator=generator, compile=compile, progress=progress)
    for _ in range(settings.refine):
        z = encode_decoded(model, decoded)
        decoded = decode(model, z, sampler, num_atoms=forced_n, atom_types=forced_types, types_fixed=False,
                         generator=generator, compile=compile, progress=progress)
    if settings.refine:
        with torch.no_grad():
            latent_scores = composition_log_likelihood(model, z, counts.repeat_interleave(n, 0), forced_n)
    scores = rank_scores(model, decoded, counts.repeat_interleave(n, 0), latent_scores, settings.ranking)
    order = torch.sort(scores.view(-1, n), dim=1, descending=True, stable=True).indices
    order = (order + torch.arange(len(targets), device=device).unsqueeze(1) * n).flatten()
    return {**select_crystals(decoded, order), "z": z[order], "latent_score": latent_scores[order],
            "score": scores[order], "rank": torch.arange(n, device=device).repeat(len(targets))}


def predict_structures(model: CrystalVAE, target: str | Composition, n: int = 20,
                       settings: PredictSettings = PredictSettings(), *, seed: int = 0,
                       progress: bool = True) -> list[Prediction]:
    """``n`` candidate crystals for one composition, best first (see the module docstring).

    Example: ``tvcsp.predict.predict_structures(tvcsp.load_pretrained("perov_5"), "SrTiO3", n=20)``.
    The same (model, target, n, settings, seed) gives the same crystals on the same device.
    """
    from .tasks import to_structures

    parsed = parse_target(target, model)
    model.eval()
    out = predict_batch(model, [parsed], n, settings, seed=seed, progress=progress)
    samples = {k: out[k].cpu().unsqueeze(0) for k in ("num_atoms", "lengths", "angles", "frac_coords",
                                                     "atom_types", "valid_lattice")}
    structures = to_structures(samples)
    return [Prediction(parsed.formula, int(r), float(s), st, zz)
            for r, s, st, zz in zip(out["rank"].cpu(), out["score"].cpu(), structures, out["z"].cpu(), strict=True)]


PREDICTIONS_FILE = "predictions.json"


def _space_group(structure: Structure | None) -> str | None:
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    if structure is None:
        return None
    try:
        return SpacegroupAnalyzer(structure, symprec=0.1).get_space_group_symbol()
    except Exception:  # noqa: BLE001 - spglib fails on some degenerate cells; the label is then unknown
        return None


def write_predictions(model: CrystalVAE, targets: list[str | Composition], out_dir: str | os.PathLike, n: int = 20,
                      settings: PredictSettings = PredictSettings(), *, seed: int = 0, labels: dict | None = None,
                      progress: bool = True) -> dict:
    """Predict every target and write ``out_dir/<formula>/rank_NN.cif`` and ``out_dir/predictions.json``.

    The JSON holds the run's ``settings`` (n, seed, :class:`PredictSettings`, model fingerprint), ``labels``
    (e.g. the checkpoint path), provenance, and one entry per formula with its candidates (rank, score, space
    group at symprec 0.1, CIF file; ``null`` file for a candidate whose lattice is unusable). Rerunnable: formulas
    already in the JSON are kept, not redone; a folder written with other settings is refused. Each formula is
    decoded on its own with ``seed``, so its crystals do not depend on the other targets. All targets are checked
    (:func:`parse_target`) before any is decoded.
    """
    from pymatgen.io.cif import CifWriter

    from .checkpoint import model_fingerprint, provenance
    from .tasks import RunMismatchError, _write_text

    parsed = [parse_target(t, model) for t in targets]
    out = Path(out_dir)
    run = {"n": n, "seed": seed, **settings.to_dict(), "prior_used": prior_used(model, settings.prior),
           "pool_used": pool_used(model, settings), "model": model_fingerprint(model)}
    path = out / PREDICTIONS_FILE
    record = json.loads(path.read_text()) if path.is_file() else {"settings": run, **(labels or {}),
                                                                   "provenance": [], "formulas": {}}
    if record["settings"] != json.loads(json.dumps(run)):
        raise RunMismatchError(f"{out} holds predictions made with other settings; use another output folder")
    record["provenance"].append(provenance())
    todo = [t for t in dict.fromkeys(parsed) if t.formula not in record["formulas"]]
    out.mkdir(parents=True, exist_ok=True)
    for target in tqdm(todo, desc="predict", disable=not progress):
        candidates = predict_structures(model, target.formula, n, settings, seed=seed, progress=False)
        folder = out / target.formula
        folder.mkdir(exist_ok=True)
        entries = []
        for c in candidates:
            name = f"rank_{c.rank:02d}.cif"
            if c.structure is not None:
                CifWriter(c.structure).write_file(folder / name)
            entries.append({"rank": c.rank, "score": c.score, "space_group": _space_group(c.structure),
                            "file": f"{target.formula}/{name}" if c.structure is not None else None})
        record["formulas"][target.formula] = entries
        _write_text(path, json.dumps(record, indent=1))
    _write_text(path, json.dumps(record, indent=1))
    return record
