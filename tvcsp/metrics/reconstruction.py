"""Reconstruction metrics: match rate and RMSE under pymatgen's StructureMatcher
(docs/metrics.md#reconstruction-metrics).

CDVAE's rule: prediction i matches test crystal i only if the prediction is *valid* (composition, structure and
fingerprints, see :mod:`.crystal`) and ``StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3).get_rms_dist``
returns a result (an exception or ``None`` is no match). match_rate = matched / all test crystals; RMSE = mean of
the matched rms values, each the root-mean-square site displacement after removing the mean translation,
divided by ``(V / N)^(1/3)`` (dimensionless).

Also reported (docs/metrics.md#ceiling): the *ceiling*, what a perfect reconstruction scores under the validity rule
(the fraction of valid test crystals, since a crystal matches itself with rms 0), and the match rate and RMSE with
the validity requirement switched off.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import cache, partial

import numpy as np

from .crystal import EvalCrystal, Precision, evaluate_crystals
from .parallel import parallel_map

__all__ = ["MATCHER_SETTINGS", "any_of_n_metrics", "evaluate_reconstruction", "match_rms", "reconstruction_metrics"]

MATCHER_SETTINGS = {"stol": 0.5, "angle_tol": 10.0, "ltol": 0.3}


@cache
def _matcher(stol: float, angle_tol: float, ltol: float):
    from pymatgen.analysis.structure_matcher import StructureMatcher

    return StructureMatcher(stol=stol, angle_tol=angle_tol, ltol=ltol)


def _rms(pair, stol: float, angle_tol: float, ltol: float) -> float | None:
    pred, gt = pair
    if pred is None or gt is None:
        return None
    try:
        result = _matcher(stol, angle_tol, ltol).get_rms_dist(pred, gt)
    except Exception:  # noqa: BLE001 - CDVAE counts any matcher failure as "no match"
        return None
    return None if result is None else float(result[0])


def match_rms(
    preds: Sequence,
    gts: Sequence,
    *,
    stol: float = 0.5,
    angle_tol: float = 10.0,
    ltol: float = 0.3,
    workers: int | None = None,
    progress: bool = True,
) -> list[float | None]:
    """Normalised rms displacement of each (prediction, ground truth) Structure pair, ``None`` where the
    matcher finds no match, raises, or either structure is ``None``."""
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} predictions for {len(gts)} ground-truth crystals")
    fn = partial(_rms, stol=stol, angle_tol=angle_tol, ltol=ltol)
    return parallel_map(fn, list(zip(preds, gts, strict=True)), workers=workers, desc="matching", progress=progress)


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def reconstruction_metrics(
    pred: Sequence[EvalCrystal],
    gt: Sequence[EvalCrystal],
    *,
    workers: int | None = None,
    progress: bool = True,
    **matcher,
) -> dict:
    """Match rate / RMSE of evaluated predictions against evaluated ground truth (same order).

    Returns a plain dict: ``n``, ``match_rate``, ``rmse`` and ``n_matched`` (CDVAE's rule), ``ceiling``,
    ``match_rate_no_validity``, ``rmse_no_validity``, ``pred_valid`` (fraction of valid predictions),
    ``rms_dist`` (per crystal, validity ignored, ``None`` = no match) and the matcher settings.
    """
    settings = {**MATCHER_SETTINGS, **matcher}
    rms = match_rms([p.structure for p in pred], [g.structure for g in gt], workers=workers, progress=progress,
                    **settings)
    matched = [r for r, p in zip(rms, pred, strict=True) if r is not None and p.valid]
    any_match = [r for r in rms if r is not None]
    n = len(gt)
    return {
        "n": n,
        "match_rate": len(matched) / n if n else None,
        "rmse": _mean(matched),
        "n_matched": len(matched),
        "ceiling": float(np.mean([g.valid for g in gt])) if n else None,
        "match_rate_no_validity": len(any_match) / n if n else None,
        "rmse_no_validity": _mean(any_match),
        "pred_valid": float(np.mean([p.valid for p in pred])) if n else None,
        "rms_dist": rms,
        "matcher": settings,
    }


def evaluate_reconstruction(
    pred: Sequence,
    gt: Sequence,
    *,
    precision: Precision = "float32",
    workers: int | None = None,
    progress: bool = True,
    **matcher,
) -> dict:
    """Reconstruction metrics of predicted crystals (Structure, :class:`~.crystal.CrystalArrays`,
    :class:`~.crystal.EvalCrystal` or ``None`` = failed) against the ground truth, pairwise in order.

    Returns :func:`reconstruction_metrics`' dict plus ``timings_s`` (wall-clock seconds per stage).
    """
    t0 = time.perf_counter()
    pred_c = evaluate_crystals(pred, precision=precision, workers=workers, progress=progress, desc="predictions")
    t1 = time.perf_counter()
    gt_c = evaluate_crystals(gt, precision=precision, workers=workers, progress=progress, desc="ground truth")
    t2 = time.perf_counter()
    out = reconstruction_metrics(pred_c, gt_c, workers=workers, progress=progress, **matcher)
    out["timings_s"] = {"predictions": t1 - t0, "ground_truth": t2 - t1, "matching": time.perf_counter() - t2}
    return out


def any_of_n_metrics(rms: Sequence[Sequence[float | None]], valid: Sequence[Sequence[bool]]) -> dict:
    """DiffCSP's multi-sample rule: a test crystal counts as matched when any of its candidates is valid and
    matches it; its rms is the smallest among those (docs/metrics.md#structure-prediction).

    Args:
        rms: per test crystal, the :func:`match_rms` value of each of its candidates (``None`` = no match).
        valid: the same shape, whether each candidate is valid (:class:`~.crystal.EvalCrystal` ``.valid``).

    Returns:
        ``n``, ``n_matched``, ``match_rate`` and ``rmse`` (mean over matched crystals of their best rms).
    """
    if len(rms) != len(valid):
        raise ValueError(f"{len(rms)} rms lists for {len(valid)} validity lists")
    best = []
    for values, flags in zip(rms, valid, strict=True):
        matched = [r for r, ok in zip(values, flags, strict=True) if r is not None and ok]
        if matched:
            best.append(min(matched))
    n = len(rms)
    return {"n": n, "n_matched": len(best), "match_rate": len(best) / n if n else None, "rmse": _mean(best)}

