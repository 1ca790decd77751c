"""The GPU training script runs in its tiny CPU mode: a session stopped by its limit, then continued elsewhere."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO

from tvcsp.checkpoint import load_model

pytestmark = pytest.mark.skipif(not (REPO.parent / "shared" / "data" / "perov_5").is_dir(),
                                reason="needs ../shared/data/perov_5")


def _run(out, *extra):
    cmd = [sys.executable, str(REPO / "benchmarks" / "gpu_train.py"), "--tiny", "--out", str(out), *extra]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads((out / "gpu_train.json").read_text())


def test_tiny_session_stops_at_its_limit_and_the_next_one_finishes_the_run(tmp_path):
    first = _run(tmp_path / "a", "--minutes", "1e-6")
    assert first["global_step"] == first["steps_this_session"] == 1
    assert first["labels"]["device"] and first["labels"]["commit"] and first["labels"]["tiny"]
    second = _run(tmp_path / "b", "--resume", first["resumable"])
    assert second["global_step"] == 6 and second["steps_this_session"] == 5
    assert second["steps_per_s"] > 0 and second["crystals_per_s"] == pytest.approx(4 * second["steps_per_s"])
    model = load_model(second["model"])
    assert torch.load(second["resumable"], weights_only=True)["global_step"] == 6
    assert model.config.predict_property and model.config.decoder.type_head_latent
