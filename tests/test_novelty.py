"""Uniqueness and novelty (tvcsp.metrics.novelty) on hand-made crystals with known answers.

The generated set below is built so that every way of getting the definitions wrong changes a count: swapping
uniqueness and novelty (4 unique vs 3 novel), comparing with *any* other generated crystal instead of an
*earlier* one (2 unique), comparing with every earlier crystal instead of the groups' representatives (the chain
below), counting invalid crystals (7 candidates), or a pre-filter that splits a crystal from
its supercell (more unique and more novel).
"""

import math

import numpy as np
import pytest
from conftest import perovskite, rock_salt, triclinic
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure
from pymatgen.core.operations import SymmOp

from tvcsp.metrics import (
    MATCHER_SETTINGS,
    CrystalArrays,
    crystal_arrays,
    evaluate_crystals,
    evaluate_generation,
    held_out_novelty_uniqueness,
    novelty_uniqueness,
)
from tvcsp.metrics.novelty import primitive_cell


def swapped_perovskite() -> Structure:
    """SrTiO3 with Sr and Ti exchanged (Ti at the corner, O at the face centres): the same formula, another
    structure (each O sits a/2 from Sr instead of from Ti; no origin shift maps the O sites onto each other)."""
    return Structure(Lattice.cubic(3.905), ["Ti", "Sr", "O", "O", "O"], perovskite().frac_coords)


def primitive_rock_salt() -> Structure:
    """The 2-atom primitive cell of :func:`conftest.rock_salt` (whose 8-atom cell is a 4× supercell of it)."""
    a = 5.64 / math.sqrt(2)
    return Structure(Lattice.from_parameters(a, a, a, 60, 60, 60), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def magnesia() -> Structure:
    return Structure(Lattice.from_parameters(2.98, 2.98, 2.98, 60, 60, 60), ["Mg", "O"], [[0, 0, 0], [0.5] * 3])


def brass() -> Structure:
    return Structure(Lattice.cubic(2.95), ["Cu", "Zn"], [[0, 0, 0], [0.5] * 3])


def moved(structure: Structure, shift=(0.13, 0.27, 0.41)) -> Structure:
    """A copy translated by ``shift`` (fractional) with its sites in reverse order."""
    s = Structure.from_sites(list(reversed(structure.sites)))
    s.translate_sites(range(len(s)), shift)
    return s


def rotated(structure: Structure) -> Structure:
    """A copy rotated by 33° about [1 1 0] (lattice and Cartesian coordinates; kept only where a Structure is
    used as given: every generated crystal is rebuilt from its lattice parameters)."""
    s = structure.copy()
    s.apply_operation(SymmOp.from_axis_angle_and_translation((1, 1, 0), 33))
    return s


def supercell(structure: Structure, scaling=(2, 1, 1)) -> Structure:
    s = structure.copy()
    s.make_supercell(scaling)
    return s


# Generated, in order: (structure, unique = no earlier valid match, novel = no reference match); None = invalid.
GENERATED = [
    (perovskite, True, False),  # the reference's supercell matches it
    (rock_salt, True, True),
    (lambda: moved(perovskite()), False, False),  # translated and reordered copy of 0
    (primitive_rock_salt, False, True),  # 1 is a 4x supercell of it
    (swapped_perovskite, True, True),  # same formula as 0, another structure
    (magnesia, True, False),  # another formula, in the reference
    (triclinic, None, None),  # NaCl2 fails SMACT: not a candidate, although the reference holds it
]


def reference() -> list:
    """Training crystals as given (Structures are not rebuilt, so the rotation stays)."""
    return [rotated(moved(supercell(perovskite()))), magnesia(), triclinic(), brass(), None]


@pytest.fixture(scope="module")
def generated():
    return evaluate_crystals([build() for build, _, _ in GENERATED], workers=1, progress=False)


def test_the_hand_made_set_is_valid_where_intended(generated):
    assert [c.valid for c in generated] == [unique is not None for _, unique, _ in GENERATED]
    assert generated[6].reason == "composition"


def test_novelty_and_uniqueness_of_the_hand_made_set(generated):
    out = novelty_uniqueness(generated, reference(), workers=1, progress=False)
    assert out["uniqueness"] == {"fraction": 4 / 6, "n_unique": 4, "n": 6}
    assert out["novelty"] == {"fraction": 3 / 6, "n_novel": 3, "n": 6, "n_new_formula": 2, "n_reference": 4}
    assert out["matcher"] == MATCHER_SETTINGS


def test_the_counts_equal_structure_matcher_on_every_pair(generated):
    """The pre-filter (formula, primitive-cell size) only skips pairs the matcher rejects."""
    matcher = StructureMatcher(**MATCHER_SETTINGS)
    valid = [c.structure for c in generated if c.valid]
    train = [s for s in reference() if s is not None]
    representatives, unique = [], []
    for s in valid:
        unique.append(not any(matcher.fit(r, s) for r in representatives))
        representatives += [s] if unique[-1] else []
    novel = [not any(matcher.fit(r, s) for r in train) for s in valid]
    assert unique == [u for _, u, _ in GENERATED if u is not None]
    assert novel == [n for _, u, n in GENERATED if u is not None]


def test_uniqueness_alone_and_empty_sets(generated):
    out = novelty_uniqueness(generated, workers=1, progress=False)
    assert out["uniqueness"]["n_unique"] == 4 and "novelty" not in out
    out = novelty_uniqueness(generated[6:], [perovskite()], workers=1, progress=False)
    assert out["uniqueness"] == {"fraction": None, "n_unique": 0, "n": 0} and out["novelty"]["fraction"] is None


def sheared(gamma: float) -> Structure:
    """A triclinic NaClKBr cell whose γ alone is set: 90°, 97° and 104° form a chain under the matcher's 10°
    angle tolerance (each neighbour matches, the ends do not)."""
    return Structure(Lattice.from_parameters(3.9, 5.2, 6.8, 90, 90, gamma), ["Na", "Cl", "K", "Br"],
                     [[0, 0, 0], [0.5, 0.5, 0.5], [0.1, 0.6, 0.3], [0.35, 0.15, 0.8]])


def test_uniqueness_compares_with_the_groups_representatives():
    """97° joins 90°'s group; 104° matches 97° but not the representative 90°, so it starts a group, as
    pymatgen's ``group_structures`` would; comparing with every earlier crystal would give 1 unique, not 2."""
    chain = [sheared(90), sheared(97), sheared(104)]
    matcher = StructureMatcher(**MATCHER_SETTINGS)
    assert [matcher.fit(chain[0], chain[1]), matcher.fit(chain[1], chain[2]), matcher.fit(chain[0], chain[2])] == [
        True, True, False]
    out = held_out_novelty_uniqueness(chain, [], workers=1, progress=False)
    assert out["uniqueness"] == {"fraction": 2 / 3, "n_unique": 2, "n": 3}
    assert len(matcher.group_structures(chain)) == 2


def test_held_out_crystals_count_when_constructed():
    """Real crystals: arrays or Structures, every constructed one a candidate (NaCl2 too), an unusable lattice
    not; rotated Structures are used as given and still match."""
    nan_lattice = CrystalArrays(np.array([3.0, math.nan, 3.0]), np.full(3, 90.0), np.array([11, 17]),
                                np.array([[0, 0, 0], [0.5, 0.5, 0.5]]))
    held_out = [crystal_arrays(perovskite()), rotated(rock_salt()), triclinic(), nan_lattice, None,
                crystal_arrays(moved(perovskite()))]
    train = [crystal_arrays(magnesia()), rotated(supercell(primitive_rock_salt(), (1, 1, 3))), rotated(perovskite())]
    out = held_out_novelty_uniqueness(held_out, train, workers=1, progress=False)
    assert out["uniqueness"] == {"fraction": 3 / 4, "n_unique": 3, "n": 4}  # the moved SrTiO3 repeats the first
    assert out["novelty"] == {"fraction": 1 / 4, "n_novel": 1, "n": 4, "n_new_formula": 1, "n_reference": 3}


def test_the_pre_filter_reduces_cells_as_structure_matcher_does():
    """pymatgen's private reduction, called here only to check that ours still equals it."""
    cases = ((supercell(perovskite(), (1, 2, 2)), 5), (rotated(rock_salt()), 2), (triclinic(), 3))
    for structure, n_primitive in cases:
        ours = primitive_cell(structure)
        theirs = StructureMatcher._get_reduced_structure(structure, primitive_cell=True, niggli=True)
        assert len(ours) == len(theirs) == n_primitive
        np.testing.assert_allclose(ours.lattice.matrix, theirs.lattice.matrix, atol=1e-9)


def test_evaluate_generation_adds_novelty_only_with_training_crystals(generated):
    plain = evaluate_generation(generated, generated[:2], "perov_5", n_samples=2, seeds=(0,), workers=1,
                                progress=False)
    assert not {"uniqueness", "novelty"} & set(plain) and "novelty" not in plain["timings_s"]
    out = evaluate_generation(generated, generated[:2], "perov_5", n_samples=2, seeds=(0,), workers=1,
                              progress=False, train_structures=reference())
    assert out["uniqueness"]["n_unique"] == 4 and out["novelty"]["n_novel"] == 3 and "novelty" in out["timings_s"]
    assert {k: v for k, v in out.items() if k not in ("uniqueness", "novelty", "matcher", "timings_s")} == {
        k: v for k, v in plain.items() if k != "timings_s"}
