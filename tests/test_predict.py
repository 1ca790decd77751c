"""Structure prediction from a composition (tvcsp.predict, ``tvcsp predict``) on an untrained tiny model."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from conftest import tiny_vae
from pymatgen.core import Composition

from tvcsp.cli import main
from tvcsp.metrics import any_of_n_metrics
from tvcsp.predict import (
    PredictSettings,
    composition_log_likelihood,
    parse_target,
    predict_batch,
    predict_structures,
    write_predictions,
)
from tvcsp.sampling import SamplerSettings

QUICK = PredictSettings(pool=2, sampler=SamplerSettings(n_step_each=1, num_levels=3, update="ancestral",
                                                        keep_composition=True))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, _one_thread):
    root = tmp_path_factory.mktemp("toy")
    model, _ = tiny_vae(root, root / "cache")
    return model


def test_targets_are_read_as_written_and_refused_in_one_line(tiny):
    target = parse_target("Na2Cl2", tiny)
    assert target.num_atoms == 4 and Counter(target.atom_types) == {11: 2, 17: 2}
    assert parse_target(Composition("BaTiO3"), tiny).atom_types == (8, 8, 8, 22, 56)
    for bad, message in [("U3O8", "never saw U"), ("Xx2", "cannot read"), ("BaTiO2.5", "whole numbers"),
                         ("Ba2Ti2O6", "at most")]:
        with pytest.raises(ValueError, match=message) as err:
            parse_target(bad, tiny)
        assert "\n" not in str(err.value)


def test_candidates_hold_exactly_the_composition_and_repeat_with_the_seed(tiny):
    first = predict_structures(tiny, "Na2Cl2", n=3, settings=QUICK, seed=5, progress=False)
    again = predict_structures(tiny, "Na2Cl2", n=3, settings=QUICK, seed=5, progress=False)
    other = predict_structures(tiny, "Na2Cl2", n=3, settings=QUICK, seed=6, progress=False)
    assert [p.rank for p in first] == [0, 1, 2]
    assert all(a.score >= b.score for a, b in zip(first, first[1:], strict=False))
    for p in first:
        if p.structure is not None:
            assert p.structure.composition == Composition("Na2Cl2")
    built = [(p, q) for p, q in zip(first, again, strict=True) if p.structure is not None]
    assert built and all(torch.equal(p.z, q.z) and p.structure == q.structure for p, q in built)
    assert not all(torch.equal(p.z, q.z) for p, q in zip(first, other, strict=True))


def test_batch_keeps_each_targets_atoms_and_ranks_best_first(tiny):
    targets = [parse_target(f, tiny) for f in ("BaTiO3", "NaCl", "Na2Cl2")]
    out = predict_batch(tiny, targets, 2, QUICK, seed=0)
    assert out["num_atoms"].tolist() == [5, 5, 2, 2, 4, 4]
    ptr = [0, *torch.cumsum(out["num_atoms"], 0).tolist()]
    for i, target in enumerate(targets):
        for j in range(2):
            k = 2 * i + j
            assert sorted(out["atom_types"][ptr[k]:ptr[k + 1]].tolist()) == list(target.atom_types)
    assert out["rank"].tolist() == [0, 1] * 3
    scores = out["score"].view(3, 2)
    assert (scores[:, 0] >= scores[:, 1]).all()


def test_latent_search_climbs_the_heads_log_likelihood(tiny):
    target = parse_target("BaTiO3", tiny)
    counts = torch.zeros(1, 100)
    for z, k in Counter(target.atom_types).items():
        counts[0, z - 1] = k
    from tvcsp.predict import search_latents

    def mean_ll(**kw):
        generator = torch.Generator().manual_seed(0)
        z, ll = search_latents(tiny, counts, torch.tensor([5]), 4, PredictSettings(**kw), generator)
        assert torch.allclose(ll, composition_log_likelihood(tiny, z, counts.expand(4, -1), torch.tensor([5] * 4)))
        return ll.mean()

    assert mean_ll(pool=1) < mean_ll(pool=8) < mean_ll(pool=8, latent_steps=30, latent_lr=0.1, tether=0.0)


def test_any_of_n_takes_the_best_valid_match():
    rms = [[None, 0.3, 0.1], [0.2, None], [None]]
    valid = [[True, True, False], [True, True], [True]]
    out = any_of_n_metrics(rms, valid)
    assert out["n_matched"] == 2 and out["match_rate"] == pytest.approx(2 / 3)
    assert out["rmse"] == pytest.approx((0.3 + 0.2) / 2)  # 0.1 belongs to an invalid candidate


def test_write_predictions_is_rerunnable_and_refuses_other_settings(tiny, tmp_path):
    out = tmp_path / "pred"
    record = write_predictions(tiny, ["BaTiO3"], out, 2, QUICK, seed=0, progress=False)
    first = (out / "BaTiO3" / "rank_00.cif").read_text() if record["formulas"]["BaTiO3"][0]["file"] else None
    record = write_predictions(tiny, ["BaTiO3", "NaCl"], out, 2, QUICK, seed=0, progress=False)
    assert set(record["formulas"]) == {"BaTiO3", "NaCl"} and len(record["provenance"]) == 2
    if first is not None:
        assert (out / "BaTiO3" / "rank_00.cif").read_text() == first
    saved = json.loads((out / "predictions.json").read_text())
    assert saved["settings"]["n"] == 2 and saved["settings"]["ranking"] == QUICK.ranking
    assert saved["settings"]["prior_used"] == "normal"  # the tiny model has no learned prior
    assert saved["settings"]["pool_used"] == QUICK.pool == 2
    with pytest.raises(ValueError, match="other settings"):
        write_predictions(tiny, ["BaTiO3"], out, 3, QUICK, seed=0, progress=False)


def test_cli_predict_writes_ranked_cifs_and_refuses_unknown_elements(tiny, tmp_path, capsys):
    from tvcsp.checkpoint import save_model

    path = save_model(tmp_path / "model.pt", tiny, "toy")
    args = [str(path), "BaTiO3", "--n-samples", "2", "--out", str(tmp_path / "out"), "--pool", "2",
            "--sampler", "fast", "--num-levels", "3", "--n-step-each", "1", "--no-progress"]
    main(["predict", *args])
    saved = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert [e["rank"] for e in saved["formulas"]["BaTiO3"]] == [0, 1]
    printed = capsys.readouterr().out
    assert "BaTiO3: best" in printed and "latents from N(0, I) (pool 2 per candidate)" in printed
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", str(path), "UO2", "--out", str(tmp_path / "bad")])
    assert exit_info.value.code == 2 and "never saw U" in capsys.readouterr().err


def test_a_conditional_prior_draws_for_each_target_composition(tiny):
    import dataclasses

    from tvcsp.predict import POOL, draw_latents, pool_used, prior_used
    from tvcsp.prior import FlowPriorConfig, composition_features, fit_prior

    assert prior_used(tiny, None) == "normal" and pool_used(tiny, PredictSettings()) == POOL == 16
    with pytest.raises(ValueError, match="pool must be"):
        PredictSettings(pool=0)
    counts = torch.zeros(2, tiny.fc_composition[-1].out_features)
    counts[0, [10, 16]] = 2.0  # Na2Cl2
    counts[1, 10] = 4.0  # Na4
    num_atoms = torch.tensor([4, 4])
    with pytest.raises(ValueError, match="no conditional prior"):
        draw_latents(tiny, counts, num_atoms, "conditional", torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="prior must be one of"):
        PredictSettings(prior="uniform")
    # a prior that learned: Na2Cl2 → latents near +2, Na4 → near −2
    features = composition_features(counts, num_atoms, tiny.config.max_atoms)
    dim = tiny.config.latent_dim
    mu = torch.cat([torch.full((100, dim), 2.0), torch.full((100, dim), -2.0)])
    config = FlowPriorConfig(hidden=64, num_blocks=2, steps=800, batch_size=128, lr=3e-3, sample_steps=8,
                             condition_dim=features.shape[1], condition_hidden=16)
    prior = fit_prior(mu, torch.full_like(mu, -6.0), config, progress=False,
                      conditions=features.repeat_interleave(100, 0))
    tiny.attach_prior(prior)
    try:
        assert tiny.conditional_prior is prior and tiny.latent_prior is None and prior_used(tiny, None) == "conditional"
        # the conditional prior draws for the composition: one draw per candidate unless a pool is asked for
        assert pool_used(tiny, PredictSettings()) == 1 and pool_used(tiny, PredictSettings(pool=8)) == 8
        assert pool_used(tiny, PredictSettings(prior="learned")) == POOL
        z = draw_latents(tiny, counts.repeat(50, 1), num_atoms.repeat(50), None, torch.Generator().manual_seed(1))
        assert float(z[0::2].mean()) > 1.0 > -1.0 > float(z[1::2].mean())
        normal = draw_latents(tiny, counts, num_atoms, "normal", torch.Generator().manual_seed(1))
        assert torch.equal(normal, torch.randn(2, dim, generator=torch.Generator().manual_seed(1)))
        out = predict_batch(tiny, [parse_target("Na2Cl2", tiny)], 2, dataclasses.replace(QUICK, prior="conditional"))
        assert Counter(out["atom_types"].tolist()) == {11: 4, 17: 4}
    finally:
        tiny.__dict__.pop("conditional_prior")
