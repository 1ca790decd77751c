"""The per-crystal record every metric reads: construction, composition, validity and fingerprints
(docs/metrics.md#evaluated-crystals).

A crystal is given as arrays (lengths in Å, angles in degrees, atomic numbers Z, fractional coordinates) or as
a pymatgen ``Structure`` (turned into those arrays). As in CDVAE the structure is always rebuilt from lattice
parameters, in float32 by default because CDVAE evaluated float32 tensors (docs/metrics.md#precision: float64 changes
some structure fingerprints).

Construction rules (``EvalCrystal.reason`` names the first failed check):

- ``"missing"``: no crystal was given (``None``); ``"no_atoms"``: zero atoms; ``"unknown_element"``: Z outside
  1..118; ``"non_finite"``: NaN/inf in the lattice or coordinates (CDVAE had no such check: NaN slipped through
  its ``length < 0`` test); ``"non_positive_lattice"``: a negative length (CDVAE's test, zero passes it);
  ``"construction_failed"``: pymatgen raised; ``"singular_lattice"``: volume zero or not finite (CDVAE would
  fail when fingerprinting such a cell). These crystals are not constructed: no structure, no fingerprints,
  structurally invalid; composition validity is still judged from Z where there are atoms.
- Constructed but invalid: ``"small_volume"`` (< 0.1 Å³, still fingerprinted and counted in coverage as in
  CDVAE, docs/metrics.md#evaluated-crystals), ``"overlapping_atoms"`` (two sites < 0.5 Å apart), ``"composition"``
  (fails SMACT), ``"fingerprint_failed"`` (a site fingerprint raised; fingerprints ``None``, ``valid`` False,
  comp/struct validity unchanged), ``"degenerate_lattice"`` (volume per atom < 0.01 Å³: CrystalNN's 7 Å neighbour search
  would need > 10^5 neighbours per site and minutes per site, so fingerprinting is skipped and treated as
  failed; such a cell is struct-invalid anyway).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Literal, NamedTuple

import numpy as np

from .fingerprints import composition_fingerprint, load_featurizers, structure_fingerprint
from .parallel import parallel_map
from .validity import MIN_VOLUME, composition_validity, reduced_composition, structure_validity

__all__ = [
    "MIN_FINGERPRINT_VOLUME_PER_ATOM",
    "CrystalArrays",
    "EvalCrystal",
    "Precision",
    "construct_structure",
    "crystal_arrays",
    "evaluate_crystal",
    "evaluate_crystals",
    "split_crystal_arrays",
    "structures_from_arrays",
]

Precision = Literal["float32", "float64"]
MIN_FINGERPRINT_VOLUME_PER_ATOM = 0.01  # Å³


class CrystalArrays(NamedTuple):
    """One crystal: ``lengths (3,)`` Å, ``angles (3,)`` degrees, ``atom_types (N,)`` Z, ``frac_coords (N, 3)``."""

    lengths: np.ndarray
    angles: np.ndarray
    atom_types: np.ndarray
    frac_coords: np.ndarray


@dataclass
class EvalCrystal:
    """Everything the metrics need about one crystal (see the module docstring for ``reason``).

    Attributes:
        atom_types: ``(N,)`` atomic numbers as given.
        structure: the constructed structure (Å), or ``None`` when not constructed.
        reason: the first failed check, ``None`` for a valid crystal.
        elements, counts: atomic numbers (ascending) and gcd-reduced counts; empty without atoms.
        comp_valid, struct_valid: SMACT and structural validity.
        comp_fp: ``(132,)`` raw Magpie fingerprint; struct_fp: ``(61,)`` mean CrystalNN fingerprint; both ``None``
            when fingerprinting failed or was not possible.
    """

    atom_types: np.ndarray
    structure: object | None
    reason: str | None
    elements: tuple[int, ...]
    counts: tuple[int, ...]
    comp_valid: bool
    struct_valid: bool
    comp_fp: np.ndarray | None
    struct_fp: np.ndarray | None

    @property
    def constructed(self) -> bool:
        return self.structure is not None

    @property
    def has_fingerprints(self) -> bool:
        return self.comp_fp is not None and self.struct_fp is not None

    @property
    def valid(self) -> bool:
        """comp_valid AND struct_valid AND fingerprints computed (CDVAE's ``valid``)."""
        return self.comp_valid and self.struct_valid and self.has_fingerprints

    @property
    def density(self) -> float:
        """Mass density in g/cm³ (NaN when not constructed)."""
        return float(self.structure.density) if self.structure is not None else float("nan")

    @property
    def n_elements(self) -> int:
        """Number of distinct elements."""
        return len(self.elements)


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def crystal_arrays(structure) -> CrystalArrays:
    """The arrays of an ordered pymatgen ``Structure`` (its lattice parameters, Z and fractional coordinates)."""
    if not structure.is_ordered:
        raise ValueError("partially occupied structures cannot be evaluated")
    return CrystalArrays(
        np.array(structure.lattice.abc),
        np.array(structure.lattice.angles),
        np.array([site.specie.Z for site in structure], dtype=np.int64),
        np.array(structure.frac_coords).reshape(-1, 3),
    )


def split_crystal_arrays(lengths, angles, num_atoms, atom_types, frac_coords) -> list[CrystalArrays]:
    """Split batched model output (tensors or arrays: ``(B, 3)``, ``(B, 3)``, ``(B,)``, ``(N,)``, ``(N, 3)``)
    into one :class:`CrystalArrays` per crystal. Pass evaluation index 0 only (docs/metrics.md#evaluated-crystals)."""
    lengths, angles, frac_coords = _numpy(lengths), _numpy(angles), _numpy(frac_coords).reshape(-1, 3)
    num_atoms, atom_types = _numpy(num_atoms).astype(np.int64), _numpy(atom_types).astype(np.int64)
    if num_atoms.sum() != len(atom_types) or len(atom_types) != len(frac_coords):
        raise ValueError(f"num_atoms sums to {num_atoms.sum()}, but {len(atom_types)} types, {len(frac_coords)} coords")
    ptr = np.concatenate([[0], np.cumsum(num_atoms)])
    return [
        CrystalArrays(lengths[i], angles[i], atom_types[ptr[i] : ptr[i + 1]], frac_coords[ptr[i] : ptr[i + 1]])
        for i in range(len(num_atoms))
    ]


def _construct(arrays: CrystalArrays, precision: Precision):
    """``(structure or None, reason or None)`` following the construction rules of the module docstring."""
    from pymatgen.core import Lattice, Structure

    lengths, angles = np.asarray(arrays.lengths, precision), np.asarray(arrays.angles, precision)
    frac = np.asarray(arrays.frac_coords, precision).reshape(-1, 3)
    z = np.asarray(arrays.atom_types, np.int64)
    if z.size == 0:
        return None, "no_atoms"
    if z.min() < 1 or z.max() > 118:
        return None, "unknown_element"
    if not all(np.isfinite(a).all() for a in (lengths, angles, frac)):
        return None, "non_finite"
    if lengths.min() < 0:
        return None, "non_positive_lattice"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # impossible angles: NaN, caught below
            lattice = Lattice.from_parameters(*lengths.tolist(), *angles.tolist())
            structure = Structure(lattice, z.tolist(), frac, coords_are_cartesian=False)
    except Exception:  # noqa: BLE001 - any failure to build is "not constructed" (docs/metrics.md#evaluated-crystals)
        return None, "construction_failed"
    if not (np.isfinite(structure.volume) and structure.volume > 0):
        return None, "singular_lattice"
    return structure, None


def construct_structure(arrays: CrystalArrays, precision: Precision = "float32"):
    """The pymatgen ``Structure`` of one crystal, built from its lattice parameters in ``precision`` as every metric
    builds it; ``None`` where it cannot be constructed (the construction rules of the module docstring)."""
    return _construct(arrays, precision)[0]


def _fingerprints(structure, z: np.ndarray):
    """``(comp_fp, struct_fp)``, or ``(None, None)`` when any site fingerprint raises."""
    try:
        return composition_fingerprint(z), structure_fingerprint(structure)
    except Exception:  # noqa: BLE001 - CDVAE counts a crystal whose fingerprint raises as invalid
        return None, None


def _reason(structure, construct_reason, comp_valid, struct_valid, fingerprinted) -> str | None:
    if structure is None:
        return construct_reason
    checks = [
        (structure.volume < MIN_VOLUME, "small_volume"),
        (not struct_valid, "overlapping_atoms"),
        (not comp_valid, "composition"),
        (structure.volume / len(structure) < MIN_FINGERPRINT_VOLUME_PER_ATOM, "degenerate_lattice"),
        (not fingerprinted, "fingerprint_failed"),
    ]
    return next((name for failed, name in checks if failed), None)


def evaluate_crystal(arrays: CrystalArrays | None, precision: Precision = "float32") -> EvalCrystal:
    """Build, validate and fingerprint one crystal; never raises for degenerate input (it is marked invalid)."""
    if arrays is None:
        return EvalCrystal(np.zeros(0, np.int64), None, "missing", (), (), False, False, None, None)
    z = np.asarray(arrays.atom_types, np.int64)
    structure, construct_reason = _construct(arrays, precision)
    known = construct_reason not in ("no_atoms", "unknown_element")
    elements, counts = reduced_composition(z) if known else ((), ())
    comp_valid = known and composition_validity(elements, counts)
    struct_valid = structure is not None and structure_validity(structure)
    comp_fp = struct_fp = None
    if structure is not None and structure.volume / len(structure) >= MIN_FINGERPRINT_VOLUME_PER_ATOM:
        comp_fp, struct_fp = _fingerprints(structure, z)
    reason = _reason(structure, construct_reason, comp_valid, struct_valid, struct_fp is not None)
    return EvalCrystal(z, structure, reason, elements, counts, comp_valid, struct_valid, comp_fp, struct_fp)


def _as_arrays(item) -> CrystalArrays | None:
    if item is None or isinstance(item, CrystalArrays):
        return item
    return crystal_arrays(item)


def evaluate_crystals(
    items: Sequence,
    *,
    precision: Precision = "float32",
    workers: int | None = None,
    progress: bool = True,
    desc: str = "crystals",
) -> list[EvalCrystal]:
    """:func:`evaluate_crystal` over Structures, :class:`CrystalArrays` or ``None`` entries, in parallel;
    entries that already are :class:`EvalCrystal` are kept as they are."""
    todo = [i for i, item in enumerate(items) if not isinstance(item, EvalCrystal)]
    load_featurizers()
    done = parallel_map(partial(evaluate_crystal, precision=precision), [_as_arrays(items[i]) for i in todo],
                        workers=workers, desc=desc, progress=progress)
    out = list(items)
    for i, crystal in zip(todo, done, strict=True):
        out[i] = crystal
    return out


def structures_from_arrays(
    lengths, angles, num_atoms, atom_types, frac_coords, precision: Precision = "float32"
) -> list:
    """pymatgen Structures from batched model output (see :func:`split_crystal_arrays`), built from lattice
    parameters in ``precision``; ``None`` where a crystal cannot be constructed (module docstring)."""
    arrays = split_crystal_arrays(lengths, angles, num_atoms, atom_types, frac_coords)
    return [construct_structure(a, precision) for a in arrays]
