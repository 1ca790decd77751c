import dataclasses
import json

import pytest
import torch
from conftest import tiny_vae

from tvcsp.metrics.validity import composition_validity
from tvcsp.sampling import FAST_SAMPLER, SamplerSettings, decode, make_generator
from tvcsp.stoichiometry import BALANCE_SLACK, candidate_counts, integer_composition, whole_counts
from tvcsp.tasks import RunMismatchError, generate

LI, OX, TI, SR = 3, 8, 22, 38


def fractions(row: dict[int, float]) -> list[float]:
    """The head's fractions (index = Z − 1) from a {Z: p} dict."""
    p = [0.0] * 100
    for z, value in row.items():
        p[z - 1] = value
    return p


def test_candidates_are_sorted_by_l1_distance_to_the_fractions():
    found = candidate_counts(fractions({LI: 0.6, OX: 0.35, TI: 0.05}), 5)  # Ti expects 0.25 atoms: a candidate
    assert found[0][1:] == ((LI, OX), (3, 2)) and found[0][0] == pytest.approx(0.05 + 0.05)
    assert [d for d, _, _ in found] == sorted(d for d, _, _ in found)
    assert all(sum(c) == 5 for _, _, c in found)
    assert ((LI, OX, TI), (3, 1, 1)) in [(e, c) for _, e, c in found]
    # an element expected below 0.2 atoms is left out, its fraction counted in every distance
    found = candidate_counts(fractions({LI: 0.5, OX: 0.47, TI: 0.03}), 4)
    assert all(TI not in e for _, e, _ in found) and found[0][0] == pytest.approx(0.03 + 0.03)


def test_balanced_takes_the_nearest_charge_neutral_counts_within_the_slack():
    assert not composition_validity((LI, OX), (1, 2)) and composition_validity((LI, OX), (2, 1))
    near = fractions({LI: 0.47, OX: 0.53})  # LiO2 lies 0.273 away, Li2O 0.393: within the slack of 0.2
    assert whole_counts(near, 3, "nearest") == ((LI, OX), (1, 2))
    assert whole_counts(near, 3, "balanced") == ((LI, OX), (2, 1))
    far = fractions({LI: 0.40, OX: 0.60})  # 0.133 against 0.533: beyond the slack, so the nearest stays
    assert BALANCE_SLACK < 0.533 - 0.133
    assert whole_counts(far, 3, "balanced") == ((LI, OX), (1, 2))
    assert whole_counts(far, 3, "balanced", slack=0.5) == ((LI, OX), (2, 1))  # a wider slack reaches Li2O


def test_integer_composition_lists_each_crystal_in_ascending_z():
    p = torch.tensor([fractions({OX: 0.6, SR: 0.2, TI: 0.2}), fractions({LI: 1.0}), fractions({OX: 0.5, LI: 0.5})])
    types = integer_composition(p, torch.tensor([5, 0, 2]), "balanced")
    assert types.tolist() == [OX, OX, OX, TI, SR] + [] + [LI, OX]
    assert types.dtype == torch.long


def test_integer_composition_refuses_unusable_fractions_and_rules():
    p = torch.tensor([fractions({OX: 1.0}), [float("nan")] * 100])
    with pytest.raises(ValueError, match="not finite"):
        integer_composition(p, torch.tensor([1, 2]), "nearest")
    assert integer_composition(p, torch.tensor([1, 0]), "nearest").tolist() == [OX]  # a crystal without atoms
    with pytest.raises(ValueError, match="'nearest' or 'balanced'"):
        integer_composition(p[:1], torch.tensor([1]), "sample")


def test_an_unknown_rule_is_refused_by_the_settings():
    with pytest.raises(ValueError, match="composition_rule must be one of"):
        SamplerSettings(composition_rule="round")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, _one_thread):
    root = tmp_path_factory.mktemp("toy")
    return tiny_vae(root, root / "cache")


@pytest.mark.parametrize("rule", ["nearest", "balanced"])
def test_decode_keeps_the_rule_s_counts(tiny, rule):
    model, _ = tiny
    z = torch.randn(4, model.config.latent_dim, generator=make_generator(1))
    sampler = dataclasses.replace(FAST_SAMPLER, num_levels=2, composition_rule=rule)
    out = decode(model, z, sampler, generator=make_generator(0), progress=False)
    with torch.no_grad():
        fractions_ = torch.log_softmax(model.fc_composition(z).float(), -1).exp()
        expected = integer_composition(fractions_, out["num_atoms"], rule)
    ptr = torch.cat([torch.zeros(1, dtype=torch.long), out["num_atoms"].cumsum(0)]).tolist()
    for b in range(4):
        got = out["atom_types"][ptr[b]:ptr[b + 1]].sort().values
        assert torch.equal(got, expected[ptr[b]:ptr[b + 1]])


def test_a_run_records_the_rule_only_when_it_is_not_cdvae_s(tiny, tmp_path):
    model, _ = tiny
    sampler = dataclasses.replace(FAST_SAMPLER, num_levels=2)
    generate(model, 2, tmp_path / "a", sampler, progress=False)
    assert "composition_rule" not in json.loads((tmp_path / "a" / "meta.json").read_text())["settings"]
    balanced = dataclasses.replace(sampler, composition_rule="balanced")
    generate(model, 2, tmp_path / "b", balanced, progress=False)
    assert json.loads((tmp_path / "b" / "meta.json").read_text())["settings"]["composition_rule"] == "balanced"
    with pytest.raises(RunMismatchError, match="composition_rule: 'balanced' there, None now"):
        generate(model, 2, tmp_path / "b", sampler, progress=False)
