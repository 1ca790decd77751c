"""Learning diagnostics (tvcsp.diagnostics) on a tiny untrained model and hand-checked latent statistics."""

import math

import pytest
import torch
from conftest import tiny_vae

from tvcsp.diagnostics import denoising_by_level, failure_kinds, latent_usage, probe_reconstruction
from tvcsp.sampling import SamplerSettings

TWO_STEPS = SamplerSettings(n_step_each=2)


@pytest.fixture(scope="module")
def vae(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    return tiny_vae(root, root / "cache")


def test_probe_reconstruction_scores_and_restores_the_training_mode(vae):
    model, crystals = vae
    model.train()
    out = probe_reconstruction(model, crystals, SamplerSettings(n_step_each=2, composition_prior=True), latent="mu")
    assert model.training
    assert out["composition_prior"] is True and out["n_step_each"] == 2 and out["latent"] == "mu"
    assert out["n"] == len(crystals) and 0 <= out["match_rate"] <= out["match_rate_no_validity"] <= 1
    assert 0 <= out["composition_accuracy"] <= 1 and 0 <= out["natom_accuracy"] <= 1
    assert sum(out["failures"].values()) <= out["n"] - round(out["match_rate_no_validity"] * out["n"])
    forced = probe_reconstruction(model.eval(), crystals, TWO_STEPS, force_atom_types=True)
    assert forced["composition_accuracy"] == 1.0 and forced["natom_accuracy"] == 1.0
    with pytest.raises(ValueError, match="latent"):
        probe_reconstruction(model, crystals, latent="median")


def test_composition_prior_never_picks_an_element_the_head_rules_out(vae):
    from tvcsp.sampling import decode

    model, crystals = vae
    model.eval()
    with torch.no_grad():
        head = model.fc_composition[-1]
        head.weight.zero_()
        head.bias.fill_(-1e4)
        head.bias[[7, 21]] = 0.0  # only O (Z = 8) and Ti (Z = 22) are possible
        prior = SamplerSettings(n_step_each=2, composition_prior=True)
        out = decode(model, torch.randn(4, model.config.latent_dim), prior, num_atoms=torch.tensor([5] * 4), seed=0,
                     progress=False)
        plain = decode(model, torch.randn(4, model.config.latent_dim), TWO_STEPS, num_atoms=torch.tensor([5] * 4),
                       seed=0, progress=False)
    assert set(out["atom_types"].tolist()) <= {8, 22}
    assert not set(plain["atom_types"].tolist()) <= {8, 22}  # the untrained decoder alone picks anything


def test_latent_usage_statistics(vae, monkeypatch):
    model, crystals = vae
    n, d = len(crystals), model.config.latent_dim
    mu = torch.zeros(n, d)
    mu[:, 0] = torch.arange(n, dtype=torch.float32)  # one dimension varies across crystals
    logvar = torch.full((n, d), math.log(0.25))  # σ = 0.5 everywhere
    monkeypatch.setattr(model, "encode", lambda batch, sample=False: (mu[: batch.num_atoms.numel()],
                                                                     logvar[: batch.num_atoms.numel()], None))
    out = latent_usage(model, crystals, batch_size=n)
    assert out["active_units"] == 1 and out["posterior_sigma"] == pytest.approx(0.5)
    assert out["mu_spread"] == pytest.approx(float(mu[:, 0].std()) / d)
    kl0 = float((-0.5 * (1 + logvar[:, 0] - mu[:, 0] ** 2 - logvar[:, 0].exp())).mean())
    assert out["kl_per_dim"][0] == pytest.approx(kl0) and out["kl"] == pytest.approx(sum(out["kl_per_dim"]))


def test_denoising_by_level_is_deterministic(vae):
    model, crystals = vae
    a = denoising_by_level(model, crystals, levels=(0, 49))
    b = denoising_by_level(model, crystals, levels=(0, 49))
    assert a == b and a["sigma"][0] == pytest.approx(10.0) and a["sigma"][1] == pytest.approx(0.01)
    assert all(0 <= x <= 1 for x in a["type_accuracy"]) and all(x > 0 for x in a["coord"])


def test_failure_kinds_name_why_each_reconstruction_fails():
    from pymatgen.core import Lattice, Structure

    def perovskite(a, b, x="O"):
        return Structure(Lattice.cubic(3.9), [a, b, x, x, x],
                         [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])

    chain = Structure(Lattice.cubic(3.9), ["Sr", "Ti", "O", "O", "O"], [[0.2 * i, 0, 0] for i in range(5)])

    truth = perovskite("Sr", "Ti")
    preds = [truth.copy(), None, Structure(Lattice.cubic(3.9), ["Sr", "Ti"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
             perovskite("Ba", "Ti"), perovskite("Ti", "Sr"), chain]
    rms = [0.0, None, None, None, None, None]
    counts = failure_kinds(preds, [truth] * len(preds), rms)
    assert counts == {"no structure": 1, "atom count": 1, "composition": 1, "positions": 1, "sites": 1}


def test_two_sample_distance_tells_same_from_shifted_and_disjoint():
    from tvcsp.diagnostics import two_sample_distance

    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(400, 4, generator=gen), torch.randn(400, 4, generator=gen)
    same = two_sample_distance(a, b)
    shifted = two_sample_distance(a, b + torch.tensor([1.0, 0, 0, 0]))
    disjoint = two_sample_distance(a, b + 20.0)
    assert abs(same["mmd2"]) < 0.01 and 0.4 < same["knn_accuracy"] < 0.6 and same["n"] == 400
    assert shifted["mmd2"] > 0.05 and 0.6 < shifted["knn_accuracy"] < 0.9
    assert disjoint["knn_accuracy"] == 1.0 and disjoint["mmd2"] > shifted["mmd2"]
    assert two_sample_distance(a, b[:100])["n"] == 100  # the larger set is subsampled


def test_posterior_usage_per_dimension():
    from tvcsp.diagnostics import posterior_usage

    mu = torch.zeros(4, 3)
    mu[:, 0] = torch.tensor([-1.0, 0.0, 1.0, 2.0])
    usage = posterior_usage(mu, torch.full((4, 3), math.log(0.04)))  # σ = 0.2
    assert usage["active_units"] == 1 and usage["latent_dim"] == 3 and usage["n"] == 4
    assert usage["mu_std_per_dim"][0] == pytest.approx(float(mu[:, 0].std())) and usage["mu_std_per_dim"][1] == 0
    assert usage["sigma_per_dim"] == pytest.approx([0.2] * 3)


def test_latent_prior_report_tells_the_matching_prior_from_a_wrong_one():
    from tvcsp.diagnostics import YARDSTICK, latent_prior_report, latent_prior_table

    gen = torch.Generator().manual_seed(0)
    n, d = 800, 4
    scale = torch.tensor([0.3, 0.3, 0.05, 0.05])  # two active units (Var μ > 0.01), two not
    mu = torch.randn(n, d, generator=gen) * scale  # a small aggregate posterior, far narrower than N(0, I)
    logvar = torch.full((n, d), 2 * math.log(0.05))
    spread = (scale**2 + 0.05**2).sqrt()
    priors = {"N(0, I)": torch.randn(n, d, generator=gen), "matching": torch.randn(n, d, generator=gen) * spread}
    report = latent_prior_report(mu, logvar, priors, seed=1)
    dist = report["distances"]
    assert list(dist) == [YARDSTICK, "N(0, I)", "matching"] and dist["matching"]["n"] == n // 2
    assert dist["N(0, I)"]["knn_accuracy"] > 0.9 and dist["N(0, I)"]["mmd2"] > 0.3
    for name in (YARDSTICK, "matching"):
        assert dist[name]["knn_accuracy"] < 0.62 and abs(dist[name]["mmd2"]) < 0.02
    assert dist["N(0, I)"]["mean_std"] == pytest.approx(1.0, abs=0.05)
    assert dist[YARDSTICK]["mean_std"] == pytest.approx(float(spread.mean()), rel=0.1)
    assert report == latent_prior_report(mu, logvar, priors, seed=1)  # seeded
    import json

    json.dumps(report)
    table = latent_prior_table(report)
    assert list(table.index) == list(dist) and list(table.columns) == [
        "n", "MMD²", "kNN accuracy", "MMD² (active units)", "kNN accuracy (active units)", "mean std"]
    assert dist["N(0, I)"]["knn_accuracy_active"] > 0.7 and dist["matching"]["knn_accuracy_active"] < 0.62
    assert table.attrs["usage"]["active units"] == "2 of 4" and table.attrs["usage"]["crystals"] == n
    with pytest.raises(ValueError, match="at least 4"):
        latent_prior_report(mu[:3], logvar[:3], priors)
