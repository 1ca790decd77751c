import dataclasses

import pandas as pd
import pytest
import torch
from conftest import toy_dataset
from torch_geometric.loader import DataLoader

from tvcsp.checkpoint import CheckpointMismatchError, load_model, save_model
from tvcsp.data import CrystalDataset, fit_scalers, load_split, load_stats
from tvcsp.train import make_configs, read_metrics, train
from tvcsp.vae import CrystalVAE


@pytest.fixture
def toy(tmp_path):
    return toy_dataset(tmp_path), tmp_path


TINY = dict(max_epochs=2, batch_size=3, val_batch_size=3, train_subset=None, val_subset=None,
            coordination_sample=None, accelerator="cpu", devices=1, seed=3, teacher_forcing_max_epoch=0)


def tiny_model(info, root):
    vae, _ = make_configs(info, "quick")
    vae = dataclasses.replace(vae, decoder=dataclasses.replace(vae.decoder, scale_factors="none"))
    train_set = load_split(info, "train", data_dir=root, progress=False)
    stats = load_stats(info, cutoff=6.0, max_neighbors=12, data_dir=root, progress=False)
    return CrystalVAE(dataclasses.replace(vae, max_atoms=stats.max_atoms), stats, fit_scalers(train_set)), train_set


def test_loss_terms_are_finite_and_reach_every_parameter(toy):
    info, root = toy
    model, train_set = tiny_model(info, root)
    batch = next(iter(DataLoader(CrystalDataset(train_set, model.scalers), batch_size=5)))
    torch.manual_seed(0)
    out = model(batch, teacher_forcing=False)
    assert {"natom", "lattice", "composition", "coord", "type", "kld", "loss", "val_loss"} <= set(out)
    assert all(torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, no_grad


def test_model_overfits_a_handful_of_crystals(toy):
    info, root = toy
    model, train_set = tiny_model(info, root)
    batch = next(iter(DataLoader(CrystalDataset(train_set, model.scalers), batch_size=5)))
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)

    def loss_at(step):
        torch.manual_seed(step % 4)  # a fixed set of noise draws, so the fit can memorise them
        return model(batch, teacher_forcing=True)["loss"]

    with torch.no_grad():
        start = sum(float(loss_at(s)) for s in range(4)) / 4
    for step in range(120):
        optimizer.zero_grad()
        loss_at(step).backward()
        optimizer.step()
    with torch.no_grad():
        end = sum(float(loss_at(s)) for s in range(4)) / 4
    assert end < start / 5, (start, end)


def test_checkpoint_round_trip_and_mismatch(toy, tmp_path):
    info, root = toy
    model, train_set = tiny_model(info, root)
    path = save_model(tmp_path / "m.pt", model, info.label)
    loaded = load_model(path, dataset=info.label)
    batch = next(iter(DataLoader(CrystalDataset(train_set, model.scalers), batch_size=5)))
    model.eval(), loaded.eval()
    torch.manual_seed(1)
    a = model(batch)["loss"]
    torch.manual_seed(1)
    b = loaded(batch)["loss"]
    assert torch.equal(a, b)
    with pytest.raises(CheckpointMismatchError, match="trained on 'toy', not 'perov_5'"):
        load_model(path, dataset="perov_5")
    state = torch.load(path, weights_only=True)
    state["config"]["hidden_dim"] = 64
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointMismatchError, match="weights do not fit the model"):
        load_model(tmp_path / "bad.pt")
    torch.save({"weights": 1}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointMismatchError, match="not a tvcsp-model-1 checkpoint"):
        load_model(tmp_path / "foreign.pt")


def step_losses(run_dir):
    metrics = read_metrics(run_dir)
    return metrics.dropna(subset=["train_loss"]).set_index("step")["train_loss"]


def test_resume_repeats_the_uninterrupted_run(toy, tmp_path):
    info, root = toy
    full = train(info, "quick", tmp_path / "full", data_dir=root, progress=False, **{**TINY, "max_epochs": 3})
    train(info, "quick", tmp_path / "part", data_dir=root, progress=False, **{**TINY, "max_epochs": 2})
    resumed = train(info, "quick", tmp_path / "part", resume=True, data_dir=root, progress=False,
                    **{**TINY, "max_epochs": 3})
    a, b = step_losses(tmp_path / "full"), step_losses(tmp_path / "part")
    assert len(a) == len(b) and a.index.max() == b.index.max()
    pd.testing.assert_series_equal(a, b, rtol=1e-5)
    assert resumed.metrics["best_val_loss"] == pytest.approx(full.metrics["best_val_loss"], rel=1e-5)


def test_training_run_writes_labelled_outputs_and_refuses_mismatched_resume(toy, tmp_path):
    info, root = toy
    result = train(info, "quick", tmp_path / "run", data_dir=root, progress=False, **TINY)
    summary = result.metrics
    assert summary["dataset"] == "toy" and summary["split"] == "val" and summary["train"]["seed"] == 3
    assert {"commit", "device", "tvcsp_version"} <= set(summary)
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file() and result.model_path.is_file()
    assert load_model(result.model_path).config.max_atoms == 8
    with pytest.raises(FileExistsError, match="resume=True"):
        train(info, "quick", tmp_path / "run", data_dir=root, progress=False, **TINY)
    with pytest.raises(CheckpointMismatchError, match="model config differs"):
        train(info, "quick", tmp_path / "run", resume=True, rbf="bessel", data_dir=root, progress=False, **TINY)


def test_non_finite_loss_stops_with_a_message(toy, tmp_path, monkeypatch):
    info, root = toy
    monkeypatch.setattr(CrystalVAE, "forward", lambda self, batch, teacher_forcing=False: {
        "loss": torch.tensor(float("nan"), requires_grad=True), "val_loss": torch.tensor(1.0)})
    with pytest.raises(FloatingPointError, match="non-finite loss at epoch 0"):
        train(info, "quick", tmp_path / "nan", data_dir=root, progress=False, **TINY)
