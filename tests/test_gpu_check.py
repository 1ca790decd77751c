"""The GPU check script runs in its tiny CPU mode and writes every section of its table."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO


def test_gpu_check_tiny_mode_writes_its_table(tmp_path):
    cmd = [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--tiny", "--out", str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["labels"]["tiny"] and report["labels"]["device"] and report["labels"]["commit"]
    assert {r["case"] for r in report["decoder_and_step"]} == {"perov_5-sized", "mp_20-sized"}
    assert all(r["ms_per_step"] > 0 and r["ms_per_decoder_call"] > 0 for r in report["decoder_and_step"])
    (gen,) = report["generation"]
    assert gen["crystals"] == 4 and gen["decoder_calls"] == 50 and gen["crystals_per_s"] > 0
    assert report["training_step"][0]["ms_per_step"] > 0
    table = (tmp_path / "gpu_check.md").read_text()
    assert "ms / decoder call" in table and "crystals/s" in table and "training step" in table
