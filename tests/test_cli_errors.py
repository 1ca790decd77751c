"""User errors on the command line: one ``tvcsp: error: ...`` line on stderr, exit status 2, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_vae

from tvcsp.checkpoint import CheckpointMismatchError, load_model, save_model
from tvcsp.cli import main
from tvcsp.errors import UserInputError


def run_cli(argv: list[str], capsys) -> str:
    """Run the CLI in-process; check exit status 2 and a single error line; return that line."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and "%|" not in line]  # tqdm bars aside
    assert exit_info.value.code == 2, err
    assert len(lines) == 1 and lines[0].startswith("tvcsp: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """A valid (untrained) tvcsp model file of the toy dataset."""
    root = tmp_path_factory.mktemp("toy")
    model, _ = tiny_vae(root, root / "cache")
    return save_model(root / "model.pt", model, "toy")


@pytest.fixture
def damaged(tmp_path) -> dict[str, Path]:
    """Checkpoints that are not usable: truncated, empty, text, a foreign pickle, a dict of another format."""
    good = tmp_path / "good.pt"
    torch.save({"format": "tvcsp-model-1", "weights": torch.zeros(100)}, good)
    files = {name: tmp_path / f"{name}.pt" for name in ("truncated", "empty", "text", "foreign", "other_format")}
    files["truncated"].write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    files["empty"].write_bytes(b"")
    files["text"].write_text("not a checkpoint\n")
    torch.save({"callbacks": Path("x")}, files["foreign"])  # a class weights-only loading refuses
    torch.save({"format": "lightning", "state_dict": {}}, files["other_format"])
    return files


@pytest.mark.parametrize("kind", ["truncated", "empty", "text", "foreign", "other_format"])
def test_load_model_names_the_file_of_a_damaged_or_foreign_checkpoint(damaged, kind):
    with pytest.raises(CheckpointMismatchError, match=str(damaged[kind]).replace(".", r"\.")) as info:
        load_model(damaged[kind])
    assert "\n" not in str(info.value)
    if kind == "truncated":
        assert "truncated or corrupt" in str(info.value) and "central directory" not in str(info.value)


def test_load_model_of_a_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.pt")


@pytest.mark.parametrize("command", ["generate", "reconstruct"])
@pytest.mark.parametrize("kind", ["truncated", "empty", "text", "foreign", "other_format"])
def test_cli_damaged_checkpoint(damaged, kind, command, tmp_path, capsys):
    line = run_cli([command, damaged[kind], "--out", tmp_path / "out", "--device", "cpu"], capsys)
    assert str(damaged[kind]) in line


@pytest.mark.parametrize("command", ["generate", "reconstruct"])
def test_cli_missing_checkpoint(command, tmp_path, capsys):
    line = run_cli([command, tmp_path / "nope.pt", "--out", tmp_path / "out", "--device", "cpu"], capsys)
    assert "nope.pt: no such checkpoint file" in line
    line = run_cli([command, tmp_path, "--out", tmp_path / "out", "--device", "cpu"], capsys)
    assert "it is a folder" in line


def test_cli_unknown_dataset(tmp_path, capsys, model_file):
    assert "unknown dataset 'nope'" in run_cli(["prepare", "nope"], capsys)
    line = run_cli(["reconstruct", model_file, "--dataset", "nope", "--out", tmp_path / "o", "--device", "cpu"],
                   capsys)
    assert "unknown dataset 'nope'" in line


def test_cli_missing_data_files(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TVCSP_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TVCSP_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    line = run_cli(["prepare", "perov_5", "--data-dir", tmp_path / "empty"], capsys)
    assert "train.csv" in line and "not found" in line


def test_cli_resumed_run_folder_with_other_settings(model_file, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "meta.json").write_text(json.dumps({"settings": {"task": "generation", "n": 99}, "provenance": []}))
    line = run_cli(["generate", model_file, "--n", 2, "--out", out, "--device", "cpu", "--no-progress"], capsys)
    assert "holds a run with other settings" in line and "n: 99 there, 2 now" in line


def test_cli_unknown_or_unavailable_device(model_file, tmp_path, capsys):
    assert "unknown device 'tpu9'" in run_cli(["generate", model_file, "--out", tmp_path, "--device", "tpu9"], capsys)
    if not torch.cuda.is_available():
        line = run_cli(["generate", model_file, "--out", tmp_path, "--device", "cuda"], capsys)
        assert "CUDA is not available" in line


def test_cli_evaluate_unusable_folders(tmp_path, capsys):
    assert "no such run folder" in run_cli(["evaluate", tmp_path / "missing"], capsys)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "not a finished run folder (no samples.pt)" in run_cli(["evaluate", empty], capsys)
    unfinished = tmp_path / "unfinished"
    (unfinished / "batches").mkdir(parents=True)
    torch.save({}, unfinished / "batches" / "batch_00000.pt")
    assert "the run is unfinished" in run_cli(["evaluate", unfinished], capsys)
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "samples.pt").write_bytes(b"PK\x03\x04 truncated")
    assert "samples.pt: unreadable" in run_cli(["evaluate", damaged], capsys)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    torch.save({"weights": torch.zeros(2)}, foreign / "samples.pt")
    assert "not written by 'tvcsp reconstruct' or 'tvcsp generate'" in run_cli(["evaluate", foreign], capsys)


def test_cli_evaluate_run_of_an_unknown_dataset(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"num_atoms": torch.ones(1, 1), "meta": {"settings": {"task": "generation", "dataset": "toy"}}},
               run / "samples.pt")
    assert "the run: unknown dataset 'toy'" in run_cli(["evaluate", run], capsys)
    torch.save({"num_atoms": torch.ones(1, 1), "meta": {"settings": {"task": "generation", "dataset": None}}},
               run / "samples.pt")
    assert "the run names no dataset" in run_cli(["evaluate", run], capsys)


def test_cli_usage_errors_are_one_line(tmp_path, capsys):
    assert "required" in run_cli(["generate", tmp_path / "m.pt"], capsys)  # --out missing
    assert "required: dataset" in run_cli(["train"], capsys)
    assert "must be at least 1" in run_cli(["generate", tmp_path / "m.pt", "--out", tmp_path, "--n", "0"], capsys)


def test_entry_point_in_a_fresh_interpreter(damaged):
    result = subprocess.run([sys.executable, "-m", "tvcsp.cli", "generate", str(damaged["truncated"]), "--out",
                             str(damaged["truncated"].parent / "out"), "--device", "cpu"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [result.stderr.strip()] and "truncated or corrupt" in result.stderr


def test_cli_sampler_preset_and_options(model_file, tmp_path, capsys):
    out = tmp_path / "fast"
    main(["generate", str(model_file), "--n", "2", "--out", str(out), "--sampler", "fast", "--num-levels", "2",
          "--no-keep-composition", "--device", "cpu", "--no-progress"])
    settings = json.loads((out / "meta.json").read_text())["settings"]
    assert (settings["update"], settings["n_step_each"], settings["num_levels"]) == ("ancestral", 2, 2)
    assert settings["keep_composition"] is False and "composition_prior" not in settings
    line = run_cli(["generate", model_file, "--out", tmp_path / "ddim", "--update", "ddim", "--device", "cpu"], capsys)
    assert "update='ddim' takes one step per level (got n_step_each=100)" in line
    assert "invalid choice" in run_cli(["generate", model_file, "--out", tmp_path, "--sampler", "slow"], capsys)


def test_cli_learned_prior_the_model_lacks(model_file, tmp_path, capsys):
    line = run_cli(["generate", model_file, "--n", 2, "--out", tmp_path / "g", "--prior", "learned", "--device", "cpu",
                    "--no-progress"], capsys)
    assert "this model has no learned prior" in line


def test_the_package_user_errors_are_value_errors():
    from tvcsp.data import CrystalParseError
    from tvcsp.tasks import RunMismatchError

    for kind in (CheckpointMismatchError, RunMismatchError, CrystalParseError):
        assert issubclass(kind, UserInputError) and issubclass(kind, ValueError)


@pytest.mark.parametrize("error", [ValueError("a bug deep inside"), RuntimeError("a bug deep inside")])
def test_other_exceptions_are_faults_and_keep_their_traceback(model_file, tmp_path, monkeypatch, error):
    import tvcsp.tasks

    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(tvcsp.tasks, "generate", broken)
    with pytest.raises(type(error), match="a bug deep inside"):
        main(["generate", str(model_file), "--n", "2", "--out", str(tmp_path / "g"), "--device", "cpu"])


def test_a_user_error_raised_anywhere_in_the_package_is_one_line(model_file, tmp_path, monkeypatch, capsys):
    import tvcsp.tasks

    def refuses(*args, **kwargs):
        raise UserInputError("the input is not usable\nsecond line")

    monkeypatch.setattr(tvcsp.tasks, "generate", refuses)
    line = run_cli(["generate", model_file, "--n", 2, "--out", tmp_path / "g", "--device", "cpu"], capsys)
    assert line == "tvcsp: error: the input is not usable second line"
