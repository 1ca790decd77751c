"""Shipped models: ``tvcsp.load_pretrained`` finds them by name and loads them weights-only, offline."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from conftest import tiny_vae

import tvcsp
from tvcsp.checkpoint import save_model
from tvcsp.diagnostics import latent_usage
from tvcsp.pretrained import PretrainedNotFoundError, available_pretrained, default_checkpoint, pretrained_path
from tvcsp.train import make_configs
from tvcsp.vae import CrystalVAE


def test_load_pretrained_by_name(tmp_path, monkeypatch):
    model, _ = tiny_vae(tmp_path, tmp_path / "cache")
    folder = tmp_path / "models"
    folder.mkdir()
    save_model(folder / "toy_model.pt", model, "toy")
    monkeypatch.setenv("TVCSP_MODELS_DIR", str(folder))
    for prior in ("toy_model.prior.pt", "toy_model.conditional_prior.pt"):  # priors beside it are not models
        (folder / prior).write_bytes(b"")
    names = available_pretrained()
    assert "toy_model" in names and not [n for n in names if n.endswith("prior")]
    for prior in ("toy_model.prior.pt", "toy_model.conditional_prior.pt"):
        (folder / prior).unlink()
    assert pretrained_path("toy_model") == folder / "toy_model.pt"
    assert default_checkpoint("toy_model", tmp_path / "quick.pt") == folder / "toy_model.pt"
    assert default_checkpoint("toy_other", tmp_path / "quick.pt") == tmp_path / "quick.pt"
    loaded = tvcsp.load_pretrained("toy_model")
    assert isinstance(loaded, CrystalVAE) and not loaded.training
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_unknown_pretrained_name_lists_what_is_there(tmp_path, monkeypatch):
    monkeypatch.setenv("TVCSP_MODELS_DIR", str(tmp_path))
    with pytest.raises(PretrainedNotFoundError, match="no shipped model 'nope'.*available:"):
        tvcsp.load_pretrained("nope")


def test_overrides_reach_the_model_config_and_loss_weights():
    vae, train = make_configs("perov_5", "quick", init_logvar=-6.0, loss_kld=0.5, lr=3e-3,
                              encoder_readout="scaled_sum", decoder_hidden_dim=32, noise_type_sigma_end=1.0)
    assert vae.init_logvar == -6.0 and vae.loss.kld == 0.5 and train.lr == 3e-3
    assert vae.encoder.readout == "scaled_sum" and vae.decoder.hidden_dim == 32 and vae.noise.type_sigma_end == 1.0
    with pytest.raises(TypeError):
        make_configs("perov_5", "quick", no_such_setting=1)


def test_init_logvar_starts_the_posterior_nearly_deterministic(tmp_path):
    model, train = tiny_vae(tmp_path, tmp_path / "cache")
    torch.manual_seed(0)  # as tiny_vae: the same draws, then the head rescaled
    sharp = CrystalVAE(dataclasses.replace(model.config, init_logvar=-6.0), model.stats, model.scalers).eval()
    default, head = model.encoder.readout.fc_logvar, sharp.encoder.readout.fc_logvar
    assert torch.all(head.bias == -6.0) and not torch.all(default.bias == -6.0)
    torch.testing.assert_close(head.weight, 0.01 * default.weight)
    sigma = latent_usage(sharp, train)["posterior_sigma"]
    assert sigma == pytest.approx(math.exp(-3.0), rel=0.05)  # σ = exp(logvar / 2) for every crystal
    assert latent_usage(model, train)["posterior_sigma"] > 0.5


def test_the_shipped_perov_5_model_loads_offline_with_its_card(monkeypatch):
    monkeypatch.delenv("TVCSP_MODELS_DIR", raising=False)
    path = pretrained_path("perov_5")
    model = tvcsp.load_pretrained("perov_5")
    assert isinstance(model, CrystalVAE) and not model.training and model.config.init_logvar == -6.0
    card = path.with_suffix(".md").read_text()
    assert "perov_5" in card and "CPU-hours" in card and "Limitations" in card
