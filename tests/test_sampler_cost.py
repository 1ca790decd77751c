import json

import pytest
from conftest import tiny_vae

from tvcsp import sampler_cost
from tvcsp.checkpoint import model_fingerprint
from tvcsp.prior import FlowPriorConfig, LatentPrior
from tvcsp.sampler_cost import CURVE_SETTINGS, parse_setting, quality_cost, setting_tag, summarise
from tvcsp.sampling import SamplerSettings

SETTINGS = ["langevin:2:1", "ddim:3:1"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, _one_thread):
    root = tmp_path_factory.mktemp("toy")
    return tiny_vae(root, root / "cache")


def test_parse_setting_and_the_curve_from_5000_to_50_calls(tiny):
    model, _ = tiny
    assert parse_setting("langevin:50:100") == SamplerSettings(num_levels=50)
    assert parse_setting("ancestral:50:2", "kept") == SamplerSettings(n_step_each=2, num_levels=50,
                                                                      update="ancestral", keep_composition=True)
    assert parse_setting("langevin:10:2", "prior").composition_prior
    assert setting_tag(parse_setting("ddim:20:1")) == "ddim_20x1"
    calls = [parse_setting(s).decoder_calls(model.sigmas) for s in CURVE_SETTINGS]
    assert calls == [5000, 2000, 1000, 500, 250, 100, 50]
    for bad in ("langevin:50", "euler:50:2", "langevin:fifty:2", "langevin:0:2", "ddim:20:2"):
        with pytest.raises(ValueError, match=f"setting '{bad}'"):
            parse_setting(bad)
    with pytest.raises(ValueError, match="types must be one of"):
        parse_setting("langevin:50:2", "greedy")


def test_summarise_gives_mean_and_spread_over_seeds():
    rows = [{"update": "langevin", "num_levels": 50, "n_step_each": 2, "types": "kept", "decoder_calls": 100,
             "seed": seed, "match_rate": m, "rmse": r, "seconds_per_crystal": 0.5}
            for seed, m, r in ((0, 0.5, 0.1), (1, 0.7, None), (2, 0.6, 0.3))]
    (entry,) = summarise(rows)
    assert entry["seeds"] == [0, 1, 2] and entry["decoder_calls"] == 100
    assert entry["match_rate"]["mean"] == pytest.approx(0.6) and entry["match_rate"]["sd"] == pytest.approx(0.1)
    assert (entry["match_rate"]["min"], entry["match_rate"]["max"]) == (0.5, 0.7)
    assert entry["rmse"]["mean"] == pytest.approx(0.2)  # a seed without matches has no RMSE
    assert summarise(rows[:1])[0]["match_rate"]["sd"] == 0.0


def test_quality_cost_rows_per_setting_and_seed_and_resume(tiny, tmp_path, monkeypatch):
    model, crystals = tiny
    crystals = crystals.select(slice(0, 4))
    reference = [crystals.to_structure(i) for i in range(len(crystals))]
    rows = quality_cost(model, crystals, SETTINGS, seeds=(0, 1), out=tmp_path, n_generate=3, reference=reference,
                        dataset="perov_5", progress=False)
    assert [(r["update"], r["seed"]) for r in rows] == [("langevin", 0), ("langevin", 1), ("ddim", 0), ("ddim", 1)]
    assert [r["decoder_calls"] for r in rows] == [2, 2, 3, 3]
    for row in rows:
        assert 0 <= row["match_rate"] <= 1 and 0 <= row["valid"] <= 1 and row["n_generated"] == 3
        assert row["seconds_per_crystal"] > 0 and row["generation_seconds_per_crystal"] > 0
        assert row["model"] == model_fingerprint(model) and row["prior"] == "normal"  # the toy has no prior
    first = json.loads(next(tmp_path.glob("*_kept_langevin_2x1_seed0/row.json")).read_text())
    assert first == rows[0]

    def fail(*args, **kwargs):
        raise AssertionError("a finished row was recomputed")

    monkeypatch.setattr("tvcsp.tasks.reconstruct", fail)
    assert quality_cost(model, crystals, SETTINGS, seeds=(0, 1), out=tmp_path, n_generate=3, reference=reference,
                        dataset="perov_5", progress=False) == rows
    assert [s["match_rate"]["mean"] for s in summarise(rows)] == pytest.approx(
        [(rows[0]["match_rate"] + rows[1]["match_rate"]) / 2, (rows[2]["match_rate"] + rows[3]["match_rate"]) / 2])


def test_quality_cost_refuses_bad_requests(tiny, tmp_path):
    model, crystals = tiny
    with pytest.raises(ValueError, match="types"):
        quality_cost(model, crystals, SETTINGS, out=tmp_path, types="greedy")
    with pytest.raises(ValueError, match="reference"):
        quality_cost(model, crystals, SETTINGS, out=tmp_path, n_generate=2)
    assert "kept" in sampler_cost.TYPE_RULES


def test_quality_cost_can_measure_generation_alone(tiny, tmp_path):
    model, crystals = tiny
    reference = [crystals.to_structure(i) for i in range(4)]
    (row,) = quality_cost(model, None, ["ddim:2:1"], out=tmp_path, n_generate=2, reference=reference,
                          dataset="perov_5", progress=False)
    assert "match_rate" not in row and row["n_generated"] == 2 and 0 <= row["cov_recall"] <= 1
    assert set(summarise([row])[0]) >= {"valid", "cov_recall", "generation_seconds_per_crystal"}
    with pytest.raises(ValueError, match="nothing to measure"):
        quality_cost(model, None, ["ddim:2:1"], out=tmp_path)


def test_quality_cost_labels_the_prior_and_refuses_rows_of_other_weights(tiny, tmp_path):
    model, crystals = tiny
    reference = [crystals.to_structure(i) for i in range(4)]
    prior = LatentPrior(model.config.latent_dim, FlowPriorConfig(hidden=16, num_blocks=1, sample_steps=2))
    common = dict(out=tmp_path, n_generate=2, reference=reference, dataset="perov_5", progress=False)
    (learned,) = quality_cost(model, None, ["ddim:2:1"], prior=prior, **common)
    assert learned["prior"] == "learned" and learned["prior_network_calls"] == prior.network_calls
    (normal,) = quality_cost(model, None, ["ddim:2:1"], prior="normal", **common)
    assert normal["prior"] == "normal" and "prior_network_calls" not in normal
    assert summarise([learned])[0]["prior"] == "learned"
    assert {p.name for p in tmp_path.iterdir()} == {"generation_learned_kept_ddim_2x1_seed0",
                                                    "generation_normal_kept_ddim_2x1_seed0"}
    row = tmp_path / "generation_normal_kept_ddim_2x1_seed0" / "row.json"
    row.write_text(json.dumps(normal | {"model": "0123456789abcdef"}))
    with pytest.raises(ValueError, match="0123456789abcdef.*use another out folder"):
        quality_cost(model, None, ["ddim:2:1"], prior="normal", **common)
