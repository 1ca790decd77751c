import dataclasses

import pandas as pd
import pytest
import torch
from conftest import toy_dataset
from torch_geometric.loader import DataLoader

import tvcsp
from tvcsp.checkpoint import CheckpointMismatchError, load_model, model_from_training_checkpoint, save_model
from tvcsp.data import CrystalDataset, fit_scalers, load_split, load_stats
from tvcsp.train import make_configs, read_metrics, train
from tvcsp.vae import CrystalVAE, shuffle_within_crystals


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


def test_resumed_run_probes_and_selects_as_the_uninterrupted_one(toy, tmp_path, monkeypatch):
    """The probe callback's state is in the checkpoint: the resumed run probes on the same schedule (epochs 0, 2
    and 5; without the state it probed again at its first validation, epoch 4) and selects the same checkpoint.
    The match rates are set per epoch (epoch 4's the highest), so a probe out of schedule changes the choice."""
    from tvcsp import diagnostics

    rates, now = {0: 0.1, 2: 0.3, 4: 0.9, 5: 0.2}, {}
    probe = diagnostics.ProbeCallback._probe

    def probe_at_epoch(self, trainer, module):
        now["epoch"] = trainer.current_epoch
        return probe(self, trainer, module)

    monkeypatch.setattr(diagnostics.ProbeCallback, "_probe", probe_at_epoch)
    monkeypatch.setattr(diagnostics, "probe_reconstruction", lambda model, crystals, **kw: {
        "match_rate": rates[now["epoch"]], "composition_accuracy": 1.0})
    info, root = toy
    settings = {**TINY, "max_epochs": 6, "probe_every_n_epochs": 3, "probe_size": 3,
                "select_by": "probe_val_match_rate",  # 2 steps an epoch
                "divergence_factor": None}  # the toy run's loss jumps on some CPUs; this test is about the probes
    full = train(info, "quick", tmp_path / "full", data_dir=root, progress=False, **settings)
    train(info, "quick", tmp_path / "part", data_dir=root, progress=False, **{**settings, "max_epochs": 4})
    resumed = train(info, "quick", tmp_path / "part", resume=True, data_dir=root, progress=False, **settings)

    def probes(run):
        state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["callbacks"]["ProbeCallback"]
        return pd.DataFrame(state["history"])

    assert probes(tmp_path / "full")[["epoch", "probe_val_match_rate"]].values.tolist() == [[0, 0.1], [2, 0.3],
                                                                                           [5, 0.2]]
    pd.testing.assert_frame_equal(probes(tmp_path / "part"), probes(tmp_path / "full"), rtol=1e-5)
    selected = [torch.load(r.best_checkpoint, weights_only=True)["global_step"] for r in (full, resumed)]
    assert selected == [6, 6]  # epoch 2's validation


def test_training_run_writes_labelled_outputs_and_refuses_mismatched_resume(toy, tmp_path):
    info, root = toy
    result = train(info, "quick", tmp_path / "run", data_dir=root, progress=False, **TINY)
    summary = result.metrics
    assert summary["dataset"] == "toy" and summary["split"] == "val" and summary["train"]["seed"] == 3
    assert {"commit", "device", "tvcsp_version"} <= set(summary)
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file() and result.model_path.is_file()
    assert load_model(result.model_path).config.max_atoms == 8
    exported, meta = model_from_training_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert meta["dataset"] == "toy" and meta["global_step"] == summary["steps"]
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(v, last["model." + k]) for k, v in exported.state_dict().items())
    with pytest.raises(CheckpointMismatchError, match="not a tvcsp training checkpoint"):
        model_from_training_checkpoint(result.model_path)
    with pytest.raises(FileExistsError, match="resume=True"):
        train(info, "quick", tmp_path / "run", data_dir=root, progress=False, **TINY)
    with pytest.raises(CheckpointMismatchError, match="model config differs"):
        train(info, "quick", tmp_path / "run", resume=True, rbf="bessel", data_dir=root, progress=False, **TINY)
    with pytest.raises(CheckpointMismatchError, match=r"training settings differ in batch_size \(3 → 2\), which"):
        train(info, "quick", tmp_path / "run", resume=True, data_dir=root, progress=False, **{**TINY, "batch_size": 2})
    with pytest.raises(CheckpointMismatchError, match=r"differ in seed \(3 → 4\), train_subset \(None → 4\), "):
        train(info, "quick", tmp_path / "run", resume=True, data_dir=root, progress=False,
              **{**TINY, "seed": 4, "train_subset": 4})
    with pytest.raises(CheckpointMismatchError, match=r"lr_patience \(5 → 6\)"):  # plateau: its patience counts
        train(info, "quick", tmp_path / "run", resume=True, data_dir=root, progress=False,
              **{**TINY, "lr_patience": 6})
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True)
    assert state["tvcsp"]["world_size"] == 1
    state["tvcsp"]["world_size"] = 2
    torch.save(state, last)
    with pytest.raises(CheckpointMismatchError, match="written by a run of 2 process"):
        train(info, "quick", tmp_path / "run", resume=True, data_dir=root, progress=False, **TINY)
    # a checkpoint saved before a config field existed resumes as that field's default; settings that leave the
    # trajectory alone (budget, checkpoint frequency, probes when they do not select) may change
    del state["tvcsp"]["config"]["decoder"]["type_head_latent"], state["tvcsp"]["config"]["noise"]["type_shuffle"]
    del state["tvcsp"]["train"]["kl_warmup_steps"], state["tvcsp"]["world_size"]
    torch.save(state, last)
    resumed = train(info, "quick", tmp_path / "run", resume=True, data_dir=root, progress=False,
                    **{**TINY, "max_epochs": 3, "checkpoint_every_n_steps": 7, "probe_size": 2})
    assert resumed.metrics["steps"] > summary["steps"]


def test_non_finite_loss_stops_with_a_message(toy, tmp_path, monkeypatch):
    info, root = toy
    monkeypatch.setattr(CrystalVAE, "forward", lambda self, batch, teacher_forcing=False, **kw: {
        "loss": torch.tensor(float("nan"), requires_grad=True), "val_loss": torch.tensor(1.0)})
    with pytest.raises(FloatingPointError, match="non-finite loss at epoch 0"):
        train(info, "quick", tmp_path / "nan", data_dir=root, progress=False, **TINY)


RUN_SCRIPT = """
import os, signal, sys
sys.path[:0] = [{package_root!r}, {tests!r}]  # the tvcsp under test, not another installed copy
from conftest import toy_dataset
from pathlib import Path
from tvcsp import train as t

original = t.LastCheckpoint.on_train_batch_end

def on_train_batch_end(self, trainer, *args):
    original(self, trainer, *args)
    if trainer.global_step == {kill_at} and trainer.is_global_zero:
        os.killpg(0, signal.SIGKILL)  # every process of the run, no clean-up of any kind: kill -9 of the job

t.LastCheckpoint.on_train_batch_end = on_train_batch_end
info = toy_dataset(Path({root!r}))
t.train(info, "quick", {run!r}, resume={resume}, data_dir={root!r}, progress=False, **{settings!r})
"""


def run_in_fresh_process(root, run, settings, kill_at=None, resume=False, timeout=600) -> int:
    """Train in a new one-thread Python process (a script file: with ``devices=2`` Lightning starts the second
    process by running it again), as a user's run would; returns its exit code. The run gets its own process
    group, which a kill takes down whole and a run still going after ``timeout`` seconds (a hang) too. Each run
    gets a fresh process: one that has already run other code can round differently (e.g. e3nn's TorchScript
    kernels already specialised), and Adam turns such rounding noise in near-zero gradients into whole steps."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    script = Path(run).with_name(f"{Path(run).name}-{'resume' if resume else 'start'}.py")
    script.write_text(RUN_SCRIPT.format(package_root=str(Path(tvcsp.__file__).parents[1]),
                                        tests=str(Path(__file__).parent), kill_at=kill_at, root=str(root),
                                        run=str(run), resume=resume, settings=settings))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, stderr = proc.communicate()
        pytest.fail(f"training still running after {timeout} s (a hang?): {stderr[-2000:]}")
    assert proc.returncode in (0, -9), stderr[-2000:]
    return proc.returncode


def assert_resumed_run_repeats(full, run, last_step):
    """The resumed ``run`` ends where ``full`` does, with its losses from the resume on and its final weights."""
    assert read_metrics(run)["step"].max() == read_metrics(full)["step"].max() == last_step
    a, b = step_losses(full), step_losses(run)
    pd.testing.assert_series_equal(a.loc[b.index], b, rtol=1e-5)
    assert b.index.max() == a.index.max()
    w_full = torch.load(full / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    w_resumed = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    for k in w_full:
        torch.testing.assert_close(w_resumed[k], w_full[k], rtol=1e-4, atol=1e-6)


def test_killed_run_resumes_from_its_last_periodic_checkpoint(toy, tmp_path):
    """kill -9 in the middle of an epoch: the resumed run loses at most N steps and then repeats the
    uninterrupted run step for step (same losses, same final weights)."""
    info, root = toy
    settings = {**TINY, "max_epochs": 3, "batch_size": 2, "checkpoint_every_n_steps": 2}  # 3 batches per epoch
    full, run = tmp_path / "full", tmp_path / "killed"
    assert run_in_fresh_process(root, full, settings) == 0
    assert run_in_fresh_process(root, run, settings, kill_at=5) == -9
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 4  # written every 2 steps: step 5 is lost, no more
    assert run_in_fresh_process(root, run, settings, resume=True) == 0
    assert step_losses(run).index.min() <= 5
    assert_resumed_run_repeats(full, run, last_step=8)  # 9 steps, numbered from 0


def test_seeded_sampler_shares_each_epoch_out_over_the_processes():
    from tvcsp.train import SeededSampler

    def epoch(rank=0, world_size=1, skip=0):
        sampler = SeededSampler(7, seed=3, rank=rank, world_size=world_size)
        sampler.set_epoch(2)
        sampler.skip = skip
        return list(sampler), len(sampler)

    order, n = epoch()  # one process: the seeded permutation, as before sharding existed
    assert order == torch.randperm(7, generator=torch.Generator().manual_seed(3 * 100_003 + 2)).tolist() and n == 7
    extended = order + order[:2]  # 9 = 3 processes × 3: the permutation's start repeated
    assert [epoch(rank, 3) for rank in range(3)] == [(extended[rank::3], 3) for rank in range(3)]
    sampler = SeededSampler(7, seed=3, rank=1, world_size=3)
    sampler.set_epoch(2)
    sampler.skip = 2
    assert list(sampler) == extended[1::3][2:] and list(sampler) == extended[1::3]  # skip: the next pass only


@pytest.mark.slow
def test_two_process_run_killed_mid_epoch_resumes_where_each_process_stopped(toy, tmp_path):
    """DDP over 2 CPU processes (gloo): every process takes part in the periodic checkpoints (none hangs), both
    are killed with -9 in the middle of an epoch, and on resume each skips the batches of that epoch it had
    already trained on, so the run repeats the uninterrupted one (losses and final weights). Three 2-process
    runs of 24 steps: 68 s on 2 cores shared with another job; a hang fails after ``timeout``."""
    info, root = toy
    # 6 crystals, 3 a process, batch 1: 3 steps an epoch; last.ckpt at step 8 is 2 batches into epoch 2
    settings = {**TINY, "devices": 2, "batch_size": 1, "max_epochs": 8, "checkpoint_every_n_steps": 4}
    full, run = tmp_path / "full", tmp_path / "killed"
    assert run_in_fresh_process(root, full, settings, timeout=240) == 0
    assert run_in_fresh_process(root, run, settings, kill_at=10, timeout=240) == -9
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 8 and state["epoch"] == 2 and state["tvcsp"]["world_size"] == 2
    assert run_in_fresh_process(root, run, settings, resume=True, timeout=240) == 0
    assert_resumed_run_repeats(full, run, last_step=23)


def test_validation_noise_is_fixed_so_the_selection_metric_moves_only_with_the_model(toy):
    info, root = toy
    model, train_set = tiny_model(info, root)
    from tvcsp.train import TVCSPModule

    module = TVCSPModule(model.eval(), make_configs(info, "quick", **TINY)[1], info.label)
    batch = next(iter(DataLoader(CrystalDataset(train_set, model.scalers), batch_size=6)))
    logged = []
    module.log = lambda name, value, **kw: logged.append((name, float(value.detach())))
    module.log_dict = lambda *a, **kw: None
    torch.manual_seed(0)
    module.validation_step(batch, 0)
    torch.manual_seed(1)  # whatever the global state, the same noise
    module.validation_step(batch, 0)
    assert logged[0] == logged[1] and logged[0][0] == "val_loss"
    with torch.no_grad():
        next(model.decoder.parameters()).mul_(1.5)
    module.validation_step(batch, 0)
    assert logged[2][1] != logged[0][1]


def test_weight_average_is_what_validation_and_export_use_and_can_be_switched_on_in_a_resumed_run(toy, tmp_path):
    info, root = toy
    train(info, "quick", tmp_path / "run", data_dir=root, progress=False, **TINY)  # no average
    result = train(info, "quick", tmp_path / "run", resume=True, data_dir=root, progress=False,
                   **{**TINY, "max_epochs": 4, "ema_decay": 0.5})
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    average = {k.removeprefix("ema."): v for k, v in state.items() if k.startswith("ema.")}
    trained = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    assert average.keys() == trained.keys()
    moved = [k for k, v in average.items() if v.is_floating_point() and not torch.equal(v, trained[k])]
    assert moved, "the average should lag the trained weights"
    exported, _ = model_from_training_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert all(torch.equal(v, average[k]) for k, v in exported.state_dict().items())
    assert result.metrics["train"]["ema_decay"] == 0.5
    with pytest.warns(UserWarning, match="without it"):  # resumed without the average: trained weights go on
        train(info, "quick", tmp_path / "run", resume=True, data_dir=root, progress=False, **{**TINY, "max_epochs": 5})


def test_warm_start_takes_another_runs_weights_with_another_noise_schedule(toy, tmp_path):
    info, root = toy
    train(info, "quick", tmp_path / "a", data_dir=root, progress=False, **TINY)
    source = tmp_path / "a" / "checkpoints" / "last.ckpt"
    start, _ = model_from_training_checkpoint(source)
    settings = {**TINY, "max_epochs": 1, "lr": 0.0, "min_lr": 0.0, "init_from": str(source),
                "noise_type_sigma_end": 0.5}
    result = train(info, "quick", tmp_path / "b", data_dir=root, progress=False, **settings)
    warm = load_model(result.model_path)
    assert warm.type_sigmas[-1].item() == pytest.approx(0.5) and start.type_sigmas[-1].item() == pytest.approx(0.01)
    assert all(torch.equal(v, start.state_dict()[k]) for k, v in warm.state_dict().items() if "sigmas" not in k)
    with pytest.raises(CheckpointMismatchError, match="architecture"):
        train(info, "quick", tmp_path / "c", data_dir=root, progress=False,
              **{**settings, "decoder_hidden_dim": 32})


def test_warm_start_from_an_exported_model_file(toy, tmp_path):
    """A shipped model file (no run folder left) starts a new run with its weights; other files are refused."""
    info, root = toy
    exported = train(info, "quick", tmp_path / "a", data_dir=root, progress=False, **TINY).model_path
    settings = {**TINY, "max_epochs": 1, "lr": 0.0, "min_lr": 0.0, "init_from": str(exported)}
    warm = load_model(train(info, "quick", tmp_path / "b", data_dir=root, progress=False, **settings).model_path)
    start = load_model(exported).state_dict()
    assert all(torch.equal(v, start[k]) for k, v in warm.state_dict().items())
    junk = tmp_path / "junk.pt"
    torch.save({"weights": torch.zeros(3)}, junk)
    with pytest.raises(CheckpointMismatchError, match="junk.pt"):
        train(info, "quick", tmp_path / "c", data_dir=root, progress=False, **{**settings, "init_from": str(junk)})


def test_type_shuffle_keeps_every_crystals_composition_and_scrambles_only_the_chosen():
    torch.manual_seed(0)
    batch = torch.repeat_interleave(torch.arange(40), 6)
    types = torch.randint(1, 90, batch.shape)
    same = shuffle_within_crystals(types, batch, 40, 0.0)
    assert torch.equal(same, types)
    mixed = shuffle_within_crystals(types, batch, 40, 0.5)
    for b in range(40):
        assert sorted(mixed[batch == b].tolist()) == sorted(types[batch == b].tolist())
    moved = sum(not torch.equal(mixed[batch == b], types[batch == b]) for b in range(40))
    assert 10 <= moved <= 30, moved
    assert sum(not torch.equal(shuffle_within_crystals(types, batch, 40, 1.0)[batch == b], types[batch == b])
               for b in range(40)) >= 38


def test_cosine_schedule_ends_the_budget_at_min_lr(toy, tmp_path):
    info, root = toy
    settings = {**TINY, "max_epochs": 50, "max_steps": 6, "lr": 1e-3, "min_lr": 1e-5, "lr_schedule": "cosine"}
    train(info, "quick", tmp_path / "run", data_dir=root, progress=False, **settings)
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 6
    assert state["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(1e-5)
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        make_configs(info, "quick", lr_schedule="linear")
    # the budget sets every step's lr: another one is another run, and a wall-clock budget cannot be repeated
    with pytest.raises(CheckpointMismatchError, match=r"training settings differ in max_steps \(6 → 8\)"):
        train(info, "quick", tmp_path / "run", resume=True, data_dir=root, progress=False,
              **{**settings, "max_steps": 8})
    with pytest.raises(CheckpointMismatchError, match="cosine' over max_time follows the wall clock"):
        train(info, "quick", tmp_path / "run", resume=True, data_dir=root, progress=False,
              **{**settings, "max_time": "00:00:10:00"})


def test_session_limit_stops_the_process_not_the_run(toy, tmp_path):
    """A cosine run (with a weight average) stopped by its session limit after every step, mid-epoch and at
    epochs' ends, and resumed each time, ends with the uninterrupted run's weights."""
    info, root = toy
    settings = {**TINY, "max_epochs": 50, "max_steps": 5, "lr": 1e-3, "min_lr": 1e-5, "lr_schedule": "cosine",
                "ema_decay": 0.9}
    full = train(info, "quick", tmp_path / "full", data_dir=root, progress=False, **settings)
    part = train(info, "quick", tmp_path / "part", data_dir=root, progress=False,
                 **{**settings, "session_limit_s": 1e-6})
    last = part.run_dir / "checkpoints" / "last.ckpt"
    assert torch.tensor([1e-39]).item() > 0.0  # a fit that stopped early leaves denormals as they were
    for step in range(1, 5):
        assert torch.load(last, weights_only=True)["global_step"] == step
        train(info, "quick", tmp_path / "part", resume=True, data_dir=root, progress=False,
              **{**settings, "session_limit_s": 1e-6})
    a, b = (torch.load(r / "checkpoints" / "last.ckpt", weights_only=True) for r in (full.run_dir, part.run_dir))
    assert b["global_step"] == 5
    assert all(torch.allclose(a["state_dict"][k], b["state_dict"][k], rtol=1e-5, atol=1e-7) for k in a["state_dict"])
    with pytest.raises(ValueError, match="session_limit_s must be positive"):
        make_configs(info, "quick", session_limit_s=0)


def test_paper_profile_takes_cdvae_training_settings_from_the_registry_entry():
    from tvcsp.data import custom_dataset, get_dataset

    def trained_with(dataset):
        train_config = make_configs(dataset, "paper")[1]
        return train_config.batch_size, train_config.teacher_forcing_max_epoch, train_config.max_epochs

    assert trained_with("perov_5") == (512, 1500, 3500)
    assert trained_with("carbon_24_reduced") == (256, 1000, 4000) and trained_with("mp_20") == (256, 500, 1500)
    user = custom_dataset("mine", {"train": "train.csv"})
    assert trained_with(user) == (512, 1500, 1000)  # TrainConfig's defaults, no guess from the name
    assert trained_with(custom_dataset("mine", {"train": "train.csv"}, cdvae=get_dataset("mp_20").cdvae))[:2] == (
        256, 500)


def test_divergence_stop_ends_a_collapsed_run_and_keeps_its_counts(tmp_path):
    from types import SimpleNamespace

    from tvcsp.train import DivergenceStop

    guard = DivergenceStop(1.5, 3, tmp_path / "best.ckpt")
    trainer = SimpleNamespace(callback_metrics={}, sanity_checking=False, should_stop=False, global_step=0)

    def validate(loss):
        trainer.callback_metrics["val_loss"] = torch.tensor(loss)
        trainer.global_step += 10
        guard.on_validation_end(trainer, None)

    for loss in (5.0, 4.0, 7.0, 7.0, 5.9, 6.5):  # 5.9 is within 1.5 × 4: the count starts again
        validate(loss)
    assert not trainer.should_stop and guard.state_dict() == {"best": 4.0, "bad": 1}
    resumed = DivergenceStop(1.5, 3, tmp_path / "best.ckpt")
    resumed.load_state_dict(guard.state_dict())
    guard = resumed
    validate(11.6)
    with pytest.warns(UserWarning, match=r"the run diverged and is stopped at step 80; .*best.ckpt holds"):
        validate(11.6)
    assert trainer.should_stop
    with pytest.raises(ValueError, match="divergence_factor must be > 1"):
        make_configs("perov_5", "cpu", divergence_factor=0.9)


def loss_and_gradients(model, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of one seeded training forward pass and every parameter's gradient after its backward pass."""
    torch.manual_seed(0)
    loss = model(batch, teacher_forcing=False)["loss"]
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.slow
@pytest.mark.parametrize("setting", ["compile_decoder", "compile_encoder"])
def test_compiled_modules_compute_the_same_loss_and_gradients(toy, setting):
    """compile_decoder and compile_encoder change how the step runs, not what it computes: the loss and every
    gradient of a step agree to float round-off (after many Adam steps the weights need not: Adam turns round-off in
    a near-zero gradient into a full step)."""
    import copy

    from tvcsp.train import TrainConfig, TVCSPModule

    info, root = toy
    model, train_set = tiny_model(info, root)
    batch = next(iter(DataLoader(CrystalDataset(train_set, model.scalers), batch_size=4)))
    results = []
    for compiled in (False, True):
        module = TVCSPModule(copy.deepcopy(model), TrainConfig(**{setting: compiled}), info.label)
        results.append(loss_and_gradients(module.model, batch))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.allclose(loss_a, loss_b, rtol=1e-5)
    assert grads_a.keys() == grads_b.keys()
    assert all(torch.allclose(grads_a[k], grads_b[k], rtol=1e-3, atol=1e-6) for k in grads_a)


def test_flush_denormal_holds_while_fitting_and_leaves_the_step_as_it_was(toy):
    """flush_denormal changes how the CPU treats floats below 1.2e-38, not what a step computes: the loss and every
    gradient of a step agree; the flag holds from on_fit_start to on_fit_end only."""
    import copy

    from tvcsp.train import TrainConfig, TVCSPModule

    info, root = toy
    model, train_set = tiny_model(info, root)
    batch = next(iter(DataLoader(CrystalDataset(train_set, model.scalers), batch_size=4)))
    denormal = 1e-39  # float32 keeps it as a denormal, a flushing CPU reads it as 0
    results = []
    for flush in (False, True):
        module = TVCSPModule(copy.deepcopy(model), TrainConfig(flush_denormal=flush), info.label)
        module.on_fit_start()
        try:
            assert (torch.tensor([denormal]).item() == 0.0) == flush
            results.append(loss_and_gradients(module.model, batch))
        finally:
            module.on_fit_end()
        assert torch.tensor([denormal]).item() > 0.0
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.allclose(loss_a, loss_b, rtol=1e-6)
    assert grads_a.keys() == grads_b.keys()
    assert all(torch.allclose(grads_a[k], grads_b[k], rtol=1e-5, atol=1e-30) for k in grads_a)
