"""Generation metrics exactly as CDVAE's ``compute_metrics.py`` (docs/metrics.md#generation-metrics).

- Validity: fractions of **all** generated crystals that are comp-valid, struct-valid and valid.
- Coverage: generated crystals without fingerprints are dropped; with Euclidean distances between structure
  fingerprints (raw) and composition fingerprints (fixed scaler), COV-R = fraction of reference crystals whose
  nearest generated structure fingerprint is within δ_struct AND whose nearest generated composition
  fingerprint (possibly another crystal) is within δ_comp; COV-P = number of kept generated crystals with both
  nearest reference distances within the thresholds, divided by the number of generated crystals *before*
  dropping. AMSD/AMCD = means of those nearest distances. Reference crystals without fingerprints (CDVAE would
  crash) stay in the COV-R denominator as uncovered and are left out of the means.
- Property EMDs (scipy ``wasserstein_distance``) of density (g/cm³), number of elements and optionally a
  predicted energy, between valid generated crystals and all constructed reference crystals: CDVAE's recipe
  (1,000 random valid samples, here seeded and reported as mean ± sd over ``seeds``; CDVAE aborts with fewer
  valid crystals, here the sampled values are ``None``) and the deterministic value on all valid crystals.
  Without a predictor (e.g. CDVAE's property models unavailable offline) the energy EMD is ``None`` and
  ``settings["energy_skipped"]`` says why; every other metric is computed as usual.
- Diversity: mean pairwise distance of normalised composition / raw structure fingerprints of the same samples.
- With training crystals (``evaluate_generation(..., train_structures=...)``): uniqueness and novelty of the valid
  generated crystals under StructureMatcher (:mod:`.novelty`).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
from scipy.spatial.distance import cdist
from scipy.stats import wasserstein_distance

from ..data.registry import DatasetInfo, cdvae_settings
from .crystal import EvalCrystal, Precision, evaluate_crystals
from .fingerprints import normalise_comp_fps
from .novelty import novelty_uniqueness

__all__ = [
    "DEFAULT_SEEDS",
    "EnergyPredictor",
    "cov_thresholds",
    "coverage",
    "diversity",
    "evaluate_generation",
    "generation_metrics",
    "property_emds",
    "validity_fractions",
]

DEFAULT_SEEDS = (0, 1, 2, 3, 4)
_CHUNK = 1024  # rows of a distance matrix computed at a time

EnergyPredictor = Callable[[list], np.ndarray]


def cov_thresholds(dataset: str | DatasetInfo) -> tuple[float, float]:
    """(δ_struct, δ_comp) of a dataset with CDVAE's settings (:class:`~tvcsp.data.CDVAESettings`), e.g.
    ``"perov_5"`` or ``"mp_20_reduced"`` (the reduced variants share their dataset's); a one-line ``KeyError``
    for any other (:func:`evaluate_generation` then needs ``thresholds=``)."""
    return cdvae_settings(dataset, "coverage thresholds").cov_thresholds


def validity_fractions(crystals: Sequence[EvalCrystal]) -> dict:
    """Fractions of all crystals that are comp-valid, struct-valid, valid; counts of constructed and
    fingerprinted crystals; how many failed for each first reason."""
    n = len(crystals)
    frac = (lambda flags: float(np.mean(flags))) if n else (lambda flags: None)
    return {
        "n": n,
        "comp_valid": frac([c.comp_valid for c in crystals]),
        "struct_valid": frac([c.struct_valid for c in crystals]),
        "valid": frac([c.valid for c in crystals]),
        "n_constructed": sum(c.constructed for c in crystals),
        "n_fingerprinted": sum(c.has_fingerprints for c in crystals),
        "reasons": dict(Counter(c.reason for c in crystals if c.reason is not None)),
    }


def _nearest(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``a`` the smallest distance to ``b`` and per row of ``b`` the smallest to ``a``."""
    row_min = np.empty(len(a))
    col_min = np.full(len(b), np.inf)
    for start in range(0, len(a), _CHUNK):
        block = cdist(a[start : start + _CHUNK], b)
        row_min[start : start + _CHUNK] = block.min(axis=1)
        col_min = np.minimum(col_min, block.min(axis=0))
    return row_min, col_min


def coverage(gen: Sequence[EvalCrystal], ref: Sequence[EvalCrystal], thresholds: tuple[float, float]) -> dict:
    """COV-R, COV-P (fractions), AMSD/AMCD recall/precision (fingerprint distances) as in the module docstring."""
    d_struct, d_comp = thresholds
    kept = [c for c in gen if c.has_fingerprints]
    ref_kept = [c for c in ref if c.has_fingerprints]
    out = {"thresholds": [d_struct, d_comp], "n_generated": len(gen), "n_generated_dropped": len(gen) - len(kept),
           "n_reference": len(ref), "n_reference_dropped": len(ref) - len(ref_kept)}
    if not kept or not ref_kept:
        return out | {"cov_recall": 0.0, "cov_precision": 0.0, "amsd_recall": None, "amsd_precision": None,
                      "amcd_recall": None, "amcd_precision": None}
    prec_s, rec_s = _nearest(np.stack([c.struct_fp for c in kept]), np.stack([c.struct_fp for c in ref_kept]))
    prec_c, rec_c = _nearest(normalise_comp_fps(np.stack([c.comp_fp for c in kept])),
                             normalise_comp_fps(np.stack([c.comp_fp for c in ref_kept])))
    return out | {
        "cov_recall": float(np.sum((rec_s <= d_struct) & (rec_c <= d_comp)) / len(ref)),
        "cov_precision": float(np.sum((prec_s <= d_struct) & (prec_c <= d_comp)) / len(gen)),
        "amsd_recall": float(rec_s.mean()),
        "amsd_precision": float(prec_s.mean()),
        "amcd_recall": float(rec_c.mean()),
        "amcd_precision": float(prec_c.mean()),
    }


def _mean_pairwise_distance(x: np.ndarray) -> float | None:
    """Mean Euclidean distance over all unordered pairs of rows (scipy ``pdist(x).mean()``), in blocks."""
    n = len(x)
    if n < 2:
        return None
    total = sum(cdist(x[start : start + _CHUNK], x).sum() for start in range(0, n, _CHUNK))
    return float(total / (n * (n - 1)))


def _summary(all_valid, per_seed: list | None) -> dict:
    """The deterministic all-valid value beside the seeded CDVAE-recipe values (mean, sample sd, list)."""
    if not per_seed or any(v is None for v in per_seed):
        return {"all_valid": all_valid, "sampled_mean": None, "sampled_sd": None, "sampled": None}
    sd = float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else 0.0
    return {"all_valid": all_valid, "sampled_mean": float(np.mean(per_seed)), "sampled_sd": sd, "sampled": per_seed}


def _samples(n_valid: int, n_samples: int, seeds: Sequence[int]) -> list[np.ndarray] | None:
    """Per seed, ``n_samples`` indices drawn without replacement from ``n_valid``; ``None`` if too few."""
    if n_valid < n_samples:
        return None
    return [np.random.default_rng(seed).choice(n_valid, n_samples, replace=False) for seed in seeds]


def _wasserstein(gen_values: np.ndarray, ref_values: np.ndarray) -> float | None:
    """EMD over the finite values (a property model returns NaN where it cannot build a graph)."""
    gen_values, ref_values = gen_values[np.isfinite(gen_values)], ref_values[np.isfinite(ref_values)]
    return float(wasserstein_distance(gen_values, ref_values)) if len(gen_values) and len(ref_values) else None


def _emd(gen_values: np.ndarray, ref_values: np.ndarray, samples: list[np.ndarray] | None) -> dict:
    per_seed = None if samples is None else [_wasserstein(gen_values[i], ref_values) for i in samples]
    out = _summary(_wasserstein(gen_values, ref_values), per_seed)
    return out | {"n_non_finite": int(np.sum(~np.isfinite(gen_values)))}


def property_emds(
    valid_gen: Sequence[EvalCrystal],
    ref: Sequence[EvalCrystal],
    samples: list[np.ndarray] | None,
    predict: EnergyPredictor | None = None,
) -> dict:
    """EMDs of density (g/cm³), number of elements and, with ``predict``, of the predicted energy (the
    predictor's units), between valid generated crystals (``samples`` index them per seed) and the constructed
    reference crystals."""
    ref = [c for c in ref if c.constructed]
    out = {
        "density": _emd(np.array([c.density for c in valid_gen]), np.array([c.density for c in ref]), samples),
        "n_elements": _emd(np.array([c.n_elements for c in valid_gen], float),
                           np.array([c.n_elements for c in ref], float), samples),
        "energy": None,
    }
    if predict is not None:
        gen_e = np.asarray(predict([c.structure for c in valid_gen]), float) if valid_gen else np.zeros(0)
        ref_e = np.asarray(predict([c.structure for c in ref]), float)
        out["energy"] = _emd(gen_e, ref_e, samples)
    return out


def diversity(valid_gen: Sequence[EvalCrystal], samples: list[np.ndarray] | None) -> dict:
    """Mean pairwise distance of normalised composition and raw structure fingerprints (valid crystals)."""
    if not valid_gen:
        return {"comp": _summary(None, None), "struct": _summary(None, None)}
    comp = normalise_comp_fps(np.stack([c.comp_fp for c in valid_gen]))
    struct = np.stack([c.struct_fp for c in valid_gen])
    return {
        name: _summary(_mean_pairwise_distance(fps),
                       None if samples is None else [_mean_pairwise_distance(fps[i]) for i in samples])
        for name, fps in (("comp", comp), ("struct", struct))
    }


def generation_metrics(
    gen: Sequence[EvalCrystal],
    ref: Sequence[EvalCrystal],
    thresholds: tuple[float, float],
    *,
    predict: EnergyPredictor | None = None,
    n_samples: int = 1000,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    energy_skipped: str | None = None,
) -> dict:
    """All generation metrics of evaluated crystals as a plain dict (keys ``validity``, ``reference_validity``,
    ``coverage``, ``property_emd``, ``diversity``, ``settings``); ``predict`` maps a list of Structures to
    energies (e.g. ``PropertyModel.from_cdvae(name).predict``) or is ``None`` (energy EMD ``None``, and
    ``settings["energy_skipped"]`` = ``energy_skipped``, the caller's one-line reason, or a default)."""
    valid_gen = [c for c in gen if c.valid]
    samples = _samples(len(valid_gen), n_samples, seeds)
    skipped = None if predict is not None else energy_skipped or "energy EMD skipped: no energy predictor given"
    return {
        "validity": validity_fractions(gen),
        "reference_validity": validity_fractions(ref),
        "coverage": coverage(gen, ref, thresholds),
        "property_emd": property_emds(valid_gen, ref, samples, predict),
        "diversity": diversity(valid_gen, samples),
        "settings": {"n_samples": n_samples, "seeds": list(seeds), "n_valid": len(valid_gen),
                     "sampled": samples is not None, "energy_skipped": skipped},
    }


def evaluate_generation(
    gen: Sequence,
    reference: Sequence,
    dataset: str,
    *,
    predict: EnergyPredictor | None = None,
    n_samples: int = 1000,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    thresholds: tuple[float, float] | None = None,
    precision: Precision = "float32",
    workers: int | None = None,
    progress: bool = True,
    energy_skipped: str | None = None,
    train_structures: Sequence | None = None,
) -> dict:
    """Generation metrics of generated crystals against a reference set (CDVAE: the test split).

    Entries are Structures, :class:`~.crystal.CrystalArrays`, :class:`~.crystal.EvalCrystal` (reused as
    they are, e.g. an already evaluated reference set) or ``None`` (a failed sample; counted everywhere).
    ``thresholds`` overrides the dataset's (δ_struct, δ_comp); ``energy_skipped`` is stored as the reason when
    ``predict`` is ``None`` (see :func:`tvcsp.metrics.property_model.energy_predictor`). Returns
    :func:`generation_metrics`' dict plus ``dataset`` and ``timings_s`` (wall-clock seconds per stage).

    ``train_structures`` (Structures, :class:`~.crystal.CrystalArrays` or ``None`` entries: the training
    split) adds ``uniqueness`` and ``novelty`` with their counts and ``matcher``
    (:func:`~.novelty.novelty_uniqueness`) and the stage ``novelty`` to ``timings_s``.
    """
    thresholds = thresholds or cov_thresholds(dataset)
    t0 = time.perf_counter()
    gen_c = evaluate_crystals(gen, precision=precision, workers=workers, progress=progress, desc="generated")
    t1 = time.perf_counter()
    ref_c = evaluate_crystals(reference, precision=precision, workers=workers, progress=progress, desc="reference")
    t2 = time.perf_counter()
    out = generation_metrics(gen_c, ref_c, thresholds, predict=predict, n_samples=n_samples, seeds=seeds,
                             energy_skipped=energy_skipped)
    t3 = time.perf_counter()
    timings = {"generated": t1 - t0, "reference": t2 - t1, "metrics": t3 - t2}
    if train_structures is not None:
        out |= novelty_uniqueness(gen_c, train_structures, precision=precision, workers=workers, progress=progress)
        timings["novelty"] = time.perf_counter() - t3
    return {"dataset": dataset, **out, "timings_s": timings}
