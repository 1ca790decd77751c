"""Whole-number compositions from the composition head: which element counts a crystal of N atoms starts with
(docs/sampling.md#composition-rules).

The composition head gives per-crystal element fractions p (B, T). CDVAE rounds p·N and draws any missing atoms
(:func:`tvcsp.sampling.composition_sample`, the rule ``"sample"``). Two deterministic rules read the same
fractions differently:

* ``"nearest"`` — the element counts n (Σ n = N) whose fractions n / N lie nearest p in L1 distance.
* ``"balanced"`` — the nearest counts that pass SMACT's charge-neutrality and electronegativity screen
  (:func:`tvcsp.metrics.validity.composition_validity`), if one lies within :data:`BALANCE_SLACK` of the nearest
  counts' distance; otherwise the nearest counts.

Why: on the shipped mp_20_reduced model, rounding p·N gives the right counts for 35.3 % of the validation
crystals, the nearest counts for 36.5 %, the balanced ones for 39.0 % (perov_5: 99.10 → 99.47 → 99.55 %; atom
counts from the head, z drawn from q(z | x); ``benchmarks/composition_rules.py``, benchmarks/RESULTS.md).
Real crystals are mostly charge balanced (88 % of mp_20, 98.6 % of perov_5), so among near-equal readings of
the head the balanced one is the better guess. The search is hand-written because it needs the head's fractions
and SMACT's screen together; no library decodes a composition this way.

Candidates: every element k with p_k·N ≥ :data:`MIN_EXPECTED` (at most :data:`MAX_ELEMENTS`, the most likely
first) takes a count within :data:`WINDOW` of p_k·N (zero allowed), the counts summing to N; the fraction of
the elements left out adds to the distance. Units: counts are atoms per cell; atom types are atomic numbers Z.
"""

from __future__ import annotations

import itertools
import math

import torch

__all__ = ["BALANCE_SLACK", "COMPOSITION_RULES", "MAX_ELEMENTS", "MIN_EXPECTED", "WINDOW", "candidate_counts",
           "check_composition_probs", "integer_composition", "whole_counts"]

COMPOSITION_RULES = ("sample", "nearest", "balanced")  # "sample" is tvcsp.sampling.composition_sample
BALANCE_SLACK = 0.2
"""L1 distance (in fractions) a balanced composition may lie beyond the nearest one, chosen on validation
crystals: slacks 0 / 0.1 / 0.2 / 0.4 / 1.0 gave 36.5 / 38.2 / 39.0 / 38.7 / 38.3 % right compositions on
mp_20_reduced and 99.47 / 99.55 / 99.55 / 98.71 / 98.71 % on perov_5."""
MIN_EXPECTED = 0.2  # atoms: elements the head expects fewer of are left out of the candidates
MAX_ELEMENTS = 8
WINDOW = 1.5  # atoms each side of p_k·N


def check_composition_probs(probs: torch.Tensor, num_atoms: torch.Tensor) -> None:
    """Raise a ``ValueError`` naming the crystals with atoms whose element probabilities ``(B, T)`` are not
    finite, non-negative and non-zero (their types cannot be chosen; ``num_atoms`` ``(B,)``). One device sync."""
    bad = (num_atoms > 0) & ~(torch.isfinite(probs).all(-1) & (probs >= 0).all(-1) & (probs.sum(-1) > 0))
    if bad.any():  # one sync, outside the sampler's step loop
        rows = bad.nonzero().flatten().tolist()
        raise ValueError(f"composition probabilities of {len(rows)} of {len(probs)} crystals are not finite, "
                         f"non-negative and non-zero (rows {rows[:10]}{' …' if len(rows) > 10 else ''}): "
                         "their latents or the composition head are not finite")


def candidate_counts(fractions: list[float], n: int) -> list[tuple[float, tuple[int, ...], tuple[int, ...]]]:
    """Candidate compositions of one crystal, nearest first.

    Args:
        fractions: the head's element fractions ``(T,)`` (index = Z − 1), summing to 1; n: atoms (≥ 1).

    Returns:
        ``(distance, atomic numbers (ascending), counts)`` per candidate, elements with a zero count dropped; the L1
        distance Σ_k |n_k / N − p_k| over all T elements. Never empty: with no candidate in the window, all N
        atoms go to the most likely element.
    """
    expected = [p * n for p in fractions]
    ranked = sorted(range(len(fractions)), key=lambda k: -expected[k])[:MAX_ELEMENTS]
    elements = [k for k in ranked if expected[k] >= MIN_EXPECTED] or ranked[:1]
    ranges = [range(max(0, math.ceil(expected[k] - WINDOW)), math.floor(expected[k] + WINDOW) + 1) for k in elements]
    left_out = 1.0 - sum(fractions[k] for k in elements)
    found = []
    for counts in itertools.product(*ranges):
        if sum(counts) != n:
            continue
        distance = left_out + sum(abs(c / n - fractions[k]) for c, k in zip(counts, elements, strict=True))
        kept = sorted((k + 1, c) for k, c in zip(elements, counts, strict=True) if c > 0)
        found.append((distance, tuple(z for z, _ in kept), tuple(c for _, c in kept)))
    found.sort(key=lambda item: item[0])
    return found or [(2.0 * (1.0 - fractions[elements[0]]), (elements[0] + 1,), (n,))]


def whole_counts(fractions: list[float], n: int, rule: str, slack: float = BALANCE_SLACK
                 ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Atomic numbers and counts of one crystal of ``n`` atoms by ``rule`` ``"nearest"`` or ``"balanced"`` (a
    balanced candidate may lie ``slack`` farther than the nearest)."""
    candidates = candidate_counts(fractions, n)
    if rule == "balanced":
        from .metrics.validity import composition_validity  # SMACT and the metrics library: only when asked for

        limit = candidates[0][0] + slack
        for distance, elements, counts in candidates:
            if distance > limit:
                break
            if composition_validity(elements, counts):
                return elements, counts
    return candidates[0][1], candidates[0][2]


def integer_composition(probs: torch.Tensor, num_atoms: torch.Tensor, rule: str,
                        slack: float = BALANCE_SLACK) -> torch.Tensor:
    """Initial atom types of every crystal by a deterministic rule of :data:`COMPOSITION_RULES`.

    Args:
        probs: ``(B, T)`` element fractions from the composition head (index = Z − 1); num_atoms: ``(B,)``.
        rule: ``"nearest"`` or ``"balanced"`` (``"sample"`` is :func:`tvcsp.sampling.composition_sample`); slack:
            as in :func:`whole_counts`.

    Returns:
        ``(Σ N_b,)`` long atomic numbers on ``probs.device``, crystal by crystal, each crystal's in ascending Z
        (the sampler starts every atom at a uniform random position, so their order carries nothing).
    """
    if rule not in COMPOSITION_RULES[1:]:
        raise ValueError(f"integer_composition takes 'nearest' or 'balanced', got {rule!r}")
    check_composition_probs(probs, num_atoms)
    rows, sizes = probs.detach().double().cpu().tolist(), num_atoms.long().cpu().tolist()
    types = []
    for fractions, n in zip(rows, sizes, strict=True):
        if n > 0:
            elements, counts = whole_counts(fractions, n, rule, slack)
            types += [z for z, c in zip(elements, counts, strict=True) for _ in range(c)]
    return torch.tensor(types, dtype=torch.long, device=probs.device)
