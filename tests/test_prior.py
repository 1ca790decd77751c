"""The learned latent prior (tvcsp.prior) and generation from it."""

import dataclasses

import pytest
import torch
from conftest import tiny_vae

from tvcsp.checkpoint import load_model, model_fingerprint, save_model
from tvcsp.prior import (
    FlowPriorConfig,
    LatentPrior,
    aggregate_posterior,
    crystal_composition_features,
    fit_prior,
    load_prior,
    prior_path,
    resolve_prior,
)
from tvcsp.sampling import SamplerSettings
from tvcsp.tasks import generate

SMALL = FlowPriorConfig(hidden=64, num_blocks=2, steps=1500, batch_size=256, lr=3e-3, sample_steps=10)
FAST = dict(sampler=SamplerSettings(n_step_each=1, min_sigma=8.0), progress=False)


def two_clusters(n: int = 400, dim: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Posteriors of n crystals: μ at +3 (first half) or −3 (second half) on dimension 0, 1 elsewhere off
    by 0.1·noise; σ = 0.05 everywhere (log σ² = 2 log 0.05)."""
    gen = torch.Generator().manual_seed(0)
    mu = 1.0 + 0.1 * torch.randn(n, dim, generator=gen)
    mu[:, 0] = torch.where(torch.arange(n) < n // 2, 3.0, -3.0)
    return mu, torch.full((n, dim), 2 * torch.log(torch.tensor(0.05)).item())


@pytest.fixture(scope="module")
def fitted():
    mu, logvar = two_clusters()
    return fit_prior(mu, logvar, SMALL, model_fingerprint="abc", progress=False)


def test_aggregate_posterior_draws_around_the_encodings():
    mu, logvar = two_clusters()
    batch = next(aggregate_posterior(mu, logvar, torch.Generator().manual_seed(1), batch_size=2000))
    assert batch.shape == (2000, 6)
    assert set(batch[:, 0].round().unique().tolist()) == {-3.0, 3.0}
    assert 0.04 < float((batch[:, 1:] - 1.0).std()) < 0.15  # 0.1 spread of μ and 0.05 of σ: ≈ 0.11


def test_prior_learns_both_modes_and_nothing_between(fitted):
    z = fitted.sample(2000, generator=torch.Generator().manual_seed(0))
    first = z[:, 0]
    near = ((first - 3).abs() < 0.5) | ((first + 3).abs() < 0.5)
    assert float(near.float().mean()) > 0.9  # N(0, I) would put ~0 % there
    assert 0.35 < float((first > 0).float().mean()) < 0.65
    assert float((z[:, 1:].mean() - 1.0).abs()) < 0.1
    # a zero velocity scores E‖x − ε‖² / D = 2 on standardised latents
    assert fitted.fit_summary["crystals"] == 400 and fitted.fit_summary["final_loss"] < 1.6
    assert fitted.network_calls == 2 * SMALL.sample_steps - 1


def test_sampling_is_seeded_and_the_prior_round_trips(fitted, tmp_path):
    a = fitted.sample(50, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, fitted.sample(50, generator=torch.Generator().manual_seed(3)))
    assert not torch.equal(a, fitted.sample(50, generator=torch.Generator().manual_seed(4)))
    path = fitted.save(tmp_path / "p.prior.pt")
    loaded = load_prior(path, model_fingerprint="abc")
    assert torch.equal(loaded.sample(50, generator=torch.Generator().manual_seed(3)), a)
    assert loaded.config == SMALL and loaded.fit_summary == fitted.fit_summary
    with pytest.raises(ValueError, match="fitted on model abc"):
        load_prior(path, model_fingerprint="other")
    torch.save({"format": "something else"}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not a"):
        load_prior(tmp_path / "bad.pt")


def test_config_validates_and_round_trips():
    assert FlowPriorConfig.from_dict(SMALL.to_dict()) == SMALL
    with pytest.raises(ValueError, match="steps"):
        FlowPriorConfig(steps=0)
    with pytest.raises(ValueError, match="unknown"):
        FlowPriorConfig.from_dict({"width": 3})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, _one_thread):
    root = tmp_path_factory.mktemp("toy")
    return tiny_vae(root, root / "cache")


def test_model_without_prior_generates_from_the_normal_and_says_so(tiny, tmp_path):
    model, _ = tiny
    assert model.latent_prior is None and resolve_prior(model) is None
    samples = generate(model, 3, tmp_path / "gen", batch_size=3, seed=1, **FAST)
    assert samples["meta"]["settings"]["prior"] == "normal"
    expected = torch.randn(3, model.config.latent_dim, generator=torch.Generator().manual_seed(0))
    assert samples["z"].shape == expected.shape
    with pytest.raises(ValueError, match="no learned prior"):
        generate(model, 3, tmp_path / "gen2", prior="learned", **FAST)
    with pytest.raises(ValueError, match="prior must be one of"):
        generate(model, 3, tmp_path / "gen3", prior="uniform", **FAST)


def test_a_saved_prior_travels_with_its_model_and_generation_uses_it(tiny, tmp_path):
    model, _ = tiny
    dim = model.config.latent_dim
    mu = torch.full((64, dim), 5.0)  # every latent of the "training set" far from N(0, I)'s bulk
    prior = fit_prior(mu, torch.full((64, dim), -6.0), dataclasses.replace(SMALL, steps=300),
                      model_fingerprint=model_fingerprint(model), progress=False)
    path = save_model(tmp_path / "m.pt", model, "toy")
    prior.save(prior_path(path))
    loaded = load_model(path)
    assert isinstance(loaded.latent_prior, LatentPrior)
    assert model_fingerprint(loaded) == model_fingerprint(model)  # the prior is not part of the VAE's weights

    learned = generate(loaded, 4, tmp_path / "learned", batch_size=4, seed=2, **FAST)
    assert learned["meta"]["settings"]["prior"] == "learned"
    assert learned["meta"]["settings"]["prior_network_calls"] == prior.network_calls
    assert float(learned["z"].mean()) > 3.0
    normal = generate(loaded, 4, tmp_path / "normal", batch_size=4, seed=2, prior="normal", **FAST)
    assert normal["meta"]["settings"]["prior"] == "normal" and float(normal["z"].abs().mean()) < 2.0

    other = save_model(tmp_path / "other.pt", tiny_like(model), "toy")
    prior.save(prior_path(other))
    with pytest.warns(UserWarning, match="learned prior not used"):
        assert load_model(other).latent_prior is None


def tiny_like(model):
    """Same architecture, other weights."""
    clone = type(model)(model.config, model.stats, model.scalers)
    with torch.no_grad():
        for p in clone.parameters():
            p.add_(0.01)
    return clone.eval()


def test_a_generation_run_from_before_the_prior_label_resumes_as_normal(tiny, tmp_path):
    import json

    model, _ = tiny
    out = tmp_path / "old"
    generate(model, 2, out, batch_size=1, seed=0, **FAST)
    meta = json.loads((out / "meta.json").read_text())
    del meta["settings"]["prior"]  # as written before the label existed
    (out / "meta.json").write_text(json.dumps(meta))
    (out / "batches" / "batch_00001.pt").unlink()
    assert generate(model, 2, out, batch_size=1, seed=0, **FAST)["num_atoms"].shape == (1, 2)
    with pytest.raises(ValueError, match="prior"):  # but not as a learned one
        generate(model, 2, out, batch_size=1, seed=0, prior=fit_prior(
            torch.zeros(8, model.config.latent_dim), torch.zeros(8, model.config.latent_dim),
            dataclasses.replace(SMALL, steps=2), progress=False), **FAST)


def test_smoothing_widens_samples_by_the_kernel_and_is_labelled(fitted, tiny, tmp_path):
    """Smoothing s adds N(0, s²) in standardised units: the variance of a standardised coordinate grows by s²,
    the flow's part of each sample is unchanged, and generation runs record s (and only when s > 0)."""
    gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    plain, smooth = fitted.sample(4000, generator=gen()), fitted.smoothed(0.5).sample(4000, generator=gen())
    x, y = (plain - fitted.loc) / fitted.scale, (smooth - fitted.loc) / fitted.scale
    assert float(((y - x).std() - 0.5).abs()) < 0.02  # same ε, then the kernel's noise
    assert float(((y - x).mean()).abs()) < 0.02
    assert fitted.smoothed(0.5).config.smoothing == 0.5 and fitted.config.smoothing == 0.0
    assert fitted.smoothed(0.5).velocity is fitted.velocity
    with pytest.raises(ValueError, match="smoothing must be ≥ 0"):
        dataclasses.replace(SMALL, smoothing=-0.1)
    model, _ = tiny
    prior = LatentPrior(model.config.latent_dim, SMALL)
    run = generate(model, 2, tmp_path / "s", batch_size=2, prior=prior.smoothed(0.2), **FAST)
    assert run["meta"]["settings"]["prior_smoothing"] == 0.2
    run = generate(model, 2, tmp_path / "p", batch_size=2, prior=prior, **FAST)
    assert "prior_smoothing" not in run["meta"]["settings"]


def test_composition_features_of_crystals_by_hand():
    # SrTiO... cell of 4 atoms (O, O, Ti, Sr) and an H2 cell, in the atom order a CrystalTensors holds
    features = crystal_composition_features(torch.tensor([8, 8, 22, 38, 1, 1]), torch.tensor([4, 2]), 100, 20)
    assert features.shape == (2, 101)
    expected = torch.zeros(2, 101)
    expected[0, [7, 21, 37, 100]] = torch.tensor([0.5, 0.25, 0.25, 4 / 20])
    expected[1, [0, 100]] = torch.tensor([1.0, 2 / 20])
    assert torch.equal(features, expected)


@pytest.fixture(scope="module")
def conditional():
    """Two clusters of latents told apart by their condition: (1, 0) for μ₀ = +3, (0, 1) for μ₀ = −3."""
    mu, logvar = two_clusters()
    first = (torch.arange(len(mu)) < len(mu) // 2).float()
    conditions = torch.stack([first, 1 - first], dim=1)
    config = dataclasses.replace(SMALL, condition_dim=2, condition_hidden=16)
    return fit_prior(mu, logvar, config, model_fingerprint="abc", progress=False, conditions=conditions)


def test_conditional_prior_draws_the_cluster_of_its_condition(conditional, fitted, tmp_path):
    assert conditional.conditional and not fitted.conditional
    for condition, sign in (([1.0, 0.0], 1.0), ([0.0, 1.0], -1.0)):
        z = conditional.sample(500, generator=torch.Generator().manual_seed(0),
                               condition=torch.tensor([condition]).expand(500, 2))
        assert float(((z[:, 0] - 3 * sign).abs() < 0.5).float().mean()) > 0.9  # unconditioned: half of them
    with pytest.raises(ValueError, match="needs a condition of shape"):
        conditional.sample(5)
    with pytest.raises(ValueError, match="unconditional"):
        fitted.sample(5, condition=torch.zeros(5, 2))
    with pytest.raises(ValueError, match="exactly when"):
        fit_prior(*two_clusters(), SMALL, progress=False, conditions=torch.zeros(400, 2))
    loaded = load_prior(conditional.save(tmp_path / "c.pt"))
    condition = torch.tensor([[1.0, 0.0]]).expand(20, 2)
    assert loaded.config.condition_dim == 2
    assert torch.equal(loaded.sample(20, torch.Generator().manual_seed(1), condition=condition),
                       conditional.sample(20, torch.Generator().manual_seed(1), condition=condition))


def test_a_conditional_prior_beside_the_model_is_for_prediction_not_generation(tiny, tmp_path):
    model, _ = tiny
    dim, types = model.config.latent_dim, model.fc_composition[-1].out_features
    config = dataclasses.replace(SMALL, steps=50, condition_dim=types + 1, condition_hidden=8)
    prior = fit_prior(torch.zeros(8, dim), torch.zeros(8, dim), config, model_fingerprint=model_fingerprint(model),
                      progress=False, conditions=torch.rand(8, types + 1))
    path = save_model(tmp_path / "m.pt", model, "toy")
    prior.save(prior_path(path, conditional=True))
    assert prior_path(path, conditional=True).name == "m.conditional_prior.pt"
    loaded = load_model(path)
    assert loaded.latent_prior is None and isinstance(loaded.conditional_prior, LatentPrior)
    assert resolve_prior(loaded) is None  # generation keeps N(0, I) here
    with pytest.raises(ValueError, match="not for generation"):
        resolve_prior(loaded, prior)
