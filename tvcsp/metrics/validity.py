"""Structural and compositional validity as CDVAE defines them (docs/metrics.md#validity).

Structural validity: every pair of distinct sites is at least ``min_distance`` (0.5 Å) apart under the minimum
image convention (a site's distance to its own periodic images is not considered) and the cell volume is at
least ``min_volume`` (0.1 Å³).

Compositional validity: SMACT's charge-neutrality + Pauling-electronegativity screen on the gcd-reduced
composition, with single-element and all-metal compositions valid by rule. It uses smact 4's
``smact_validity(..., oxidation_states_set="smact14")``, which reproduces the smact 2.2.1 screen CDVAE ran
except for three data changes (docs/metrics.md#smact-version): Ir's lowest oxidation state (−2 then, −3 now); Zr's
Pauling electronegativity (0.33 by a typo then, 1.33 now); and elements without an electronegativity (He, Ne, Ar, Pm,
Rn, Lr), which 2.2.1 passed (a raised ``TypeError`` counted as a pass) and smact 4 fails. Measured effect: none
on perov_5 and carbon_24, 9 of 3,000 mp_20 val compositions (88.37% vs 88.53%).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

__all__ = ["MIN_DISTANCE", "MIN_VOLUME", "SMACT_ENUMERATION_LIMIT", "composition_validity", "reduced_composition",
           "smact_screen", "structure_validity"]

MIN_DISTANCE = 0.5  # Å
MIN_VOLUME = 0.1  # Å³


def reduced_composition(atom_types: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Elements (atomic numbers, ascending) and their counts divided by the counts' gcd (4:4:4 → 1:1:1)."""
    counter = Counter(int(z) for z in atom_types)
    if not counter:
        raise ValueError("empty composition")
    elements = tuple(sorted(counter))
    divisor = math.gcd(*counter.values())
    return elements, tuple(counter[z] // divisor for z in elements)


SMACT_ENUMERATION_LIMIT = 20_000  # oxidation-state combinations SMACT itself enumerates; beyond: the exact screen


@lru_cache(maxsize=65536)
def composition_validity(elements: tuple[int, ...], counts: tuple[int, ...]) -> bool:
    """SMACT validity (smact14 oxidation states) of a composition given as atomic numbers and counts.

    Unknown elements or any failure inside SMACT count as invalid. SMACT tries every combination of oxidation
    states, a number that grows exponentially with the number of elements (a 21-element cell, as a decoder fed
    latents far from its training data can produce, has ~10¹² and never finishes); beyond
    :data:`SMACT_ENUMERATION_LIMIT` combinations the same screen is decided exactly in polynomial time by
    :func:`smact_screen` (tests/test_metrics.py checks that the two agree).
    """
    from pymatgen.core import Composition, Element
    from smact.screening import smact_validity

    try:
        symbols = [Element.from_Z(z).symbol for z in elements]
        if math.prod(len(_smact_element(e)[0]) for e in symbols) > SMACT_ENUMERATION_LIMIT:
            return smact_screen(symbols, counts)
        composition = Composition(dict(zip(symbols, counts, strict=True)))
        return bool(smact_validity(composition, oxidation_states_set="smact14"))
    except Exception:  # noqa: BLE001 - SMACT has no data for the element or rejects the input: invalid
        return False


@lru_cache(maxsize=256)
def _smact_element(symbol: str) -> tuple[tuple[int, ...], float | None]:
    """SMACT's smact14 oxidation states and Pauling electronegativity of an element."""
    from smact import Element

    element = Element(symbol)
    return tuple(element.oxidation_states_smact14 or ()), element.pauling_eneg


def smact_screen(symbols: Sequence[str], counts: Sequence[int]) -> bool:
    """SMACT 4's ``smact_validity(..., oxidation_states_set="smact14")`` decided without enumerating.

    SMACT accepts a composition when it has one element or only metals, or when some choice of one oxidation
    state per element is charge neutral (Σ countᵢ·stateᵢ = 0) and passes the Pauling test: every cation (state
    > 0) less electronegative than every anion (state < 0); an element without an electronegativity fails that
    test. A choice passes the Pauling test iff some cut c (−∞ or an element's electronegativity) puts every
    cation at or below c and every anion above it. So, per cut, elements at or below it keep their states ≥ 0
    and the others their states ≤ 0, and a set of reachable charge sums, built element by element, says
    whether 0 is reachable: at most (elements + 1) cuts × elements × states × sums.

    Args:
        symbols: element symbols; counts: their counts in the same order (any common divisor is irrelevant).
    """
    from smact import metals

    if len(set(symbols)) == 1 or all(s in metals for s in symbols):
        return True
    data = [_smact_element(s) for s in symbols]
    if any(not states or eneg is None for states, eneg in data):
        return False
    for cut in [-math.inf, *sorted({eneg for _, eneg in data})]:
        sums = {0}
        for (states, eneg), count in zip(data, counts, strict=True):
            allowed = [s for s in states if (s >= 0 if eneg <= cut else s <= 0)]
            sums = {total + count * s for total in sums for s in allowed}
        if 0 in sums:
            return True
    return False


def structure_validity(structure, min_distance: float = MIN_DISTANCE, min_volume: float = MIN_VOLUME) -> bool:
    """True iff the minimum distance between distinct sites is ≥ ``min_distance`` (Å) and the volume is
    ≥ ``min_volume`` (Å³). A one-atom cell passes the distance test whatever its size."""
    if not structure.volume >= min_volume:
        return False
    distances = np.array(structure.distance_matrix, dtype=float)
    np.fill_diagonal(distances, np.inf)
    return bool(distances.size == 0 or distances.min() >= min_distance)
