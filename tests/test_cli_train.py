"""``tvcsp train`` and ``tvcsp models``: options, one-line user errors, a stopped run continued with --resume."""

from __future__ import annotations

import pytest
import torch
from conftest import REPO
from test_cli_errors import run_cli

from tvcsp.checkpoint import load_model
from tvcsp.cli import _duration, _lightning_time, _setting, main

needs_perov = pytest.mark.skipif(not (REPO.parent / "shared" / "data" / "perov_5").is_dir(),
                                 reason="needs ../shared/data/perov_5")
TINY = ["--set", "train_subset=8", "--set", "val_subset=4", "--set", "coordination_sample=8", "--set", "batch_size=4",
        "--set", "val_batch_size=4", "--set", "probe_every_n_epochs=0", "--device", "cpu", "--no-progress"]


def test_durations_and_settings_parse():
    assert [_duration(t) for t in ("90s", "10m", "1.5h", "1d", "30", "00:01:00:05")] == [
        90, 600, 5400, 86400, 30, 3605]
    assert _lightning_time(3605.4) == "00:01:00:05" and _lightning_time(90061) == "01:01:01:01"
    assert _setting("lr=1e-3") == ("lr", 1e-3) and _setting("rbf = hybrid") == ("rbf", "hybrid")
    assert _setting("tensorboard=True") == ("tensorboard", True) and _setting("init_from=None") == ("init_from", None)


def test_train_user_errors_are_one_line(tmp_path, capsys):
    assert "not a duration: '10x'" in run_cli(["train", "perov_5", "--max-time", "10x"], capsys)
    assert "expected key=value" in run_cli(["train", "perov_5", "--set", "lr"], capsys)
    assert "unknown dataset" in run_cli(["train", "perov_6", "--out", tmp_path / "r"], capsys)
    assert "give --max-steps or --max-time" in run_cli(["train", "perov_5", "--profile", "cpu"], capsys)


@needs_perov
def test_train_stops_when_told_and_resume_finishes_the_budget(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "perov_5", "--profile", "cpu", "--max-steps", "3", "--out", str(out), *TINY]
    assert "unexpected keyword" in run_cli([*args, "--set", "no_such_setting=1"], capsys)
    main([*args, "--stop-after", "1e-6"])
    printed = capsys.readouterr().out
    assert f"model: {out / 'model.pt'}" in printed and "to continue" in printed
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 1
    assert "already holds checkpoints" in run_cli(args, capsys)  # a finished or stopped run is never overwritten
    main([*args, "--resume"])
    assert "to continue" not in capsys.readouterr().out
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3
    model = load_model(out / "model.pt")
    assert model.config.decoder.type_head_latent  # the cpu profile's model


def test_models_lists_the_shipped_ones(capsys):
    main(["models"])
    printed = capsys.readouterr().out
    if (REPO / "models" / "perov_5.pt").is_file():
        assert "perov_5: " in printed and "learned prior" in printed and "reconstruction " in printed
