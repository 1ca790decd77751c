"""Quality against cost of the sampler (docs/sampling.md#quality-against-cost).

A *setting* is ``update:levels:steps`` — ``langevin:50:100`` is CDVAE's protocol, 50 noise levels × 100 steps =
5,000 decoder calls per crystal; with a type rule of :data:`TYPE_RULES` it makes a
:class:`~tvcsp.sampling.SamplerSettings` (:func:`parse_setting`). :func:`quality_cost` reconstructs the same
crystals (and, if asked, generates crystals from a latent prior) under every setting and seed, each in its own
resumable run folder, and returns one row per (setting, seed), labelled with the model's fingerprint and, for
generation, the prior that drew the latents; :func:`summarise` gives every setting's mean and seed-to-seed spread.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .sampling import SamplerSettings

if TYPE_CHECKING:
    from .prior import LatentPrior

__all__ = ["CDVAE_SETTING", "CURVE_SETTINGS", "TYPE_RULES", "parse_setting", "quality_cost", "setting_tag",
           "summarise"]

CDVAE_SETTING = "langevin:50:100"
CURVE_SETTINGS = (CDVAE_SETTING, "langevin:50:40", "langevin:50:20", "langevin:50:10", "langevin:50:5",
                  "langevin:50:2", "langevin:50:1")
"""5,000, 2,000, 1,000, 500, 250, 100 and 50 decoder calls per crystal, all with CDVAE's update and levels."""

TYPE_RULES = {"cdvae": {}, "prior": {"composition_prior": True}, "kept": {"keep_composition": True}}
"""How atom types are chosen at each step, as :class:`~tvcsp.sampling.SamplerSettings` fields: CDVAE's argmax, the
argmax with the composition head's prior, or the composition head's rounded composition kept."""

RECONSTRUCTION_KEYS = ("match_rate", "rmse")
GENERATION_KEYS = ("valid", "struct_valid", "comp_valid", "cov_recall", "cov_precision", "emd_density",
                   "emd_energy", "emd_n_elements")


def parse_setting(text: str, types: str = "cdvae") -> SamplerSettings:
    """``update:levels:steps`` and a type rule of :data:`TYPE_RULES` → the sampler with that ``update``,
    ``num_levels`` and ``n_step_each`` (the other fields CDVAE's).

    Raises:
        ValueError: an unknown type rule; not three fields, not whole numbers, or settings the sampler refuses
            (an unknown update, a count below 1, DDIM with several steps per level).
    """
    if types not in TYPE_RULES:
        raise ValueError(f"types must be one of {tuple(TYPE_RULES)}, got {types!r}")
    try:
        update, levels, steps = text.split(":")
        levels, steps = int(levels), int(steps)
    except ValueError:
        raise ValueError(f"setting {text!r}: expected update:levels:steps, e.g. {CDVAE_SETTING}") from None
    try:
        return SamplerSettings(update=update, num_levels=levels, n_step_each=steps, **TYPE_RULES[types])
    except ValueError as err:
        raise ValueError(f"setting {text!r}: {err}") from None


def setting_tag(sampler: SamplerSettings) -> str:
    """A folder-safe name of a parsed setting, e.g. ``langevin_50x100``."""
    return f"{sampler.update}_{sampler.num_levels}x{sampler.n_step_each}"


def _generation_row(metrics: dict) -> dict:
    validity, coverage, emd = metrics["validity"], metrics["coverage"], metrics["property_emd"]
    row = {k: validity[k] for k in ("valid", "struct_valid", "comp_valid")}
    row.update(cov_recall=coverage["cov_recall"], cov_precision=coverage["cov_precision"])
    row.update({f"emd_{k}": (emd.get(k) or {}).get("all_valid") for k in ("density", "energy", "n_elements")})
    return row


def quality_cost(
    model, crystals, settings: Sequence[str], seeds: Sequence[int] = (0,), *, out: str | Path, types: str = "kept",
    batch_size: int = 500, workers: int | None = 1, n_generate: int = 0, reference: Sequence | None = None,
    dataset: str | None = None, predict: Callable | None = None, prior: str | LatentPrior | None = None,
    progress: bool = True,
) -> list[dict]:
    """Reconstruction (and generation) quality of every sampler setting and seed.

    Every (setting, seed) decodes the same ``crystals`` from latents sampled with that seed (CDVAE's protocol),
    in the run folder ``out/<split>_<types>_<tag>_seed<seed>`` (``<split>`` is ``generation_<prior>`` for
    generation alone, and gets ``_<prior>`` appended when both are measured); its row is saved there as
    ``row.json``, so an interrupted curve resumes where it stopped and a finished row is never recomputed; a row
    saved for other weights is refused rather than reused.

    Args:
        model: a :class:`~tvcsp.vae.CrystalVAE` in eval mode; crystals: a :class:`~tvcsp.data.CrystalTensors` to
            reconstruct (``None``: generation only).
        settings: ``update:levels:steps`` strings (:func:`parse_setting`); seeds: one curve per seed.
        types: a key of :data:`TYPE_RULES`; batch_size: crystals per decoder batch; workers: matcher processes.
        n_generate: also generate this many crystals per (setting, seed) and score them against ``reference``
            (Structures or evaluated crystals, e.g. test crystals) for ``dataset``; ``predict`` is the energy
            model (``None``: no energy EMD); ``prior``: where their latents come from, as for
            :func:`tvcsp.tasks.generate` (``None``: the model's learned prior when it has one, else N(0, I);
            ``"normal"``: N(0, I)).
        progress: a progress bar over the (setting, seed) pairs.

    Returns:
        rows with the setting, ``seed``, ``decoder_calls``, ``model`` (fingerprint of the weights); with crystals
        ``match_rate``, ``rmse`` and ``seconds_per_crystal`` (sampling only); with ``n_generate``
        :data:`GENERATION_KEYS`, ``generation_seconds_per_crystal`` and the prior's labels (``prior``: ``"normal"``
        or ``"learned"``, with the learned prior's network calls and fingerprint).

    Raises:
        ValueError: an unknown type rule, generation without a reference, nothing to measure, or a folder under
            ``out`` that holds a finished row of other weights or another prior.
    """
    from tqdm.auto import tqdm

    from .checkpoint import model_fingerprint
    from .metrics import evaluate_generation, evaluate_reconstruction
    from .prior import resolve_prior
    from .tasks import generate, prior_settings, reconstruct, to_crystal_arrays

    parsed = [parse_setting(s, types) for s in settings]
    if n_generate and reference is None:
        raise ValueError("n_generate needs a reference set to score the generated crystals against")
    if crystals is None and not n_generate:
        raise ValueError("nothing to measure: no crystals to reconstruct and n_generate = 0")
    split = "generation" if crystals is None else crystals.meta.get("split", "crystals")
    labels = {"model": model_fingerprint(model)}
    if n_generate:
        chosen = resolve_prior(model, prior)
        labels |= prior_settings(chosen)
        split += f"_{labels['prior']}"
    rows, out = [], Path(out)
    pairs = [(s, seed) for s in parsed for seed in seeds]
    for sampler, seed in tqdm(pairs, desc="settings × seeds", disable=not progress):
        folder = out / f"{split}_{types}_{setting_tag(sampler)}_seed{seed}"
        saved = folder / "row.json"
        if saved.is_file():
            rows.append(_saved_row(saved, labels))
            continue
        options = {"batch_size": batch_size, "seed": seed, "dataset": dataset, "progress": False}
        row = {"update": sampler.update, "num_levels": sampler.num_levels, "n_step_each": sampler.n_step_each,
               "types": types, "seed": seed, "decoder_calls": sampler.decoder_calls(model.sigmas), **labels}
        if crystals is not None:
            start = time.perf_counter()
            samples = reconstruct(model, crystals, folder / "reconstruction", sampler, **options)
            seconds = time.perf_counter() - start
            metrics = evaluate_reconstruction(to_crystal_arrays(samples), to_crystal_arrays(samples, ground_truth=True),
                                              workers=workers, progress=False)
            row.update(n=len(crystals), **{k: metrics[k] for k in RECONSTRUCTION_KEYS},
                       seconds_per_crystal=seconds / len(crystals))
        if n_generate:
            start = time.perf_counter()
            generated = generate(model, n_generate, folder / "generation", sampler,
                                 prior="normal" if chosen is None else chosen, **options)
            row["generation_seconds_per_crystal"] = (time.perf_counter() - start) / n_generate
            scores = evaluate_generation(to_crystal_arrays(generated), reference, dataset, predict=predict,
                                         workers=workers, progress=False)
            row.update(n_generated=n_generate, **_generation_row(scores))
        folder.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(row, indent=1))
        rows.append(row)
    return rows


def _saved_row(path: Path, labels: dict) -> dict:
    """A finished row, refused when it was measured on other weights or with another prior."""
    row = json.loads(path.read_text())
    other = {k: row.get(k) for k in labels if row.get(k) != labels[k]}
    if other:
        raise ValueError(f"{path} was measured with {other}, not {({k: labels[k] for k in other})}: "
                         "use another out folder")
    return row


def _spread(values: list[float]) -> dict:
    """Mean, sample standard deviation (0 for one seed), min and max of the non-missing values."""
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "sd": None, "min": None, "max": None}
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "sd": sd, "min": min(values), "max": max(values)}


def summarise(rows: Sequence[dict]) -> list[dict]:
    """One entry per setting (in the order first seen): the setting, ``decoder_calls``, ``seeds`` and, for every
    metric present, ``{"mean", "sd", "min", "max"}`` over seeds."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["update"], row["num_levels"], row["n_step_each"], row.get("types")), []).append(row)
    summary = []
    for (update, levels, steps, types), group in groups.items():
        entry = {"update": update, "num_levels": levels, "n_step_each": steps, "types": types,
                 "decoder_calls": group[0]["decoder_calls"], "seeds": [r["seed"] for r in group]}
        entry |= {k: group[0][k] for k in ("model", "prior") if k in group[0]}
        for key in (*RECONSTRUCTION_KEYS, "seconds_per_crystal", *GENERATION_KEYS, "generation_seconds_per_crystal"):
            if key in group[0]:
                entry[key] = _spread([r.get(key) for r in group])
        summary.append(entry)
    return summary
