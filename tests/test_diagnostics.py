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
