"""Training with PyTorch Lightning: one GPU, several GPUs (DDP) or several nodes without code changes.

``train(dataset, profile="quick")`` loads the splits, fits scalers and statistics on train, builds the model,
fits it with CDVAE's optimisation recipe (docs/model.md#training, the paper's lr), keeps the best and the last
checkpoint, exports the best model (:func:`tvcsp.checkpoint.save_model`) and writes a labelled ``summary.json``.
Every random draw in a training step is seeded from (seed, step), so a resumed run repeats exactly.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import pandas as pd
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, Timer, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DistributedSampler
from torch_geometric.loader import DataLoader

from .checkpoint import (
    CheckpointMismatchError,
    model_from_training_checkpoint,
    model_state,
    provenance,
    read_checkpoint,
    save_model,
)
from .data import CrystalDataset, DatasetInfo, edge_distances, fit_scalers, get_dataset, load_split, load_stats
from .data.files import home_dir
from .decoder import DecoderConfig
from .encoder import EncoderConfig
from .errors import UserInputError
from .rbf import HybridRBF
from .vae import CrystalVAE, VAEConfig

__all__ = ["PROFILES", "TVCSPModule", "TrainConfig", "TrainResult", "auto_rbf", "choice_path", "make_configs",
           "read_metrics", "train"]


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and run settings (docs/model.md#training with the paper's lr 1e-4)."""

    dataset: str = "perov_5"
    seed: int = 0
    max_epochs: int = 3500
    max_steps: int = -1
    max_time: str | None = None
    batch_size: int = 512
    val_batch_size: int = 256
    lr: float = 1e-4
    lr_schedule: str = "plateau"
    lr_factor: float = 0.6
    lr_patience: int = 30
    min_lr: float = 1e-4
    grad_clip_value: float = 0.5
    val_every_n_epochs: int = 5
    teacher_forcing_max_epoch: int = 1500
    precision: str = "32-true"
    train_subset: int | None = None
    val_subset: int | None = None
    coordination_sample: int | None = None
    accelerator: str = "auto"
    devices: int | str = "auto"
    num_nodes: int = 1
    num_workers: int = 0
    tensorboard: bool = False
    checkpoint_every_n_steps: int = 50
    select_by: str = "val_loss"
    probe_every_n_epochs: int = 0
    probe_size: int = 64
    probe_n_step_each: int = 10
    probe_latent: str = "sample"
    probe_composition_prior: bool = True
    probe_keep_composition: bool = False
    kl_warmup_steps: int = 0
    ema_decay: float = 0.0
    init_from: str | None = None
    session_limit_s: float | None = None
    divergence_factor: float | None = 1.5
    divergence_patience: int = 3
    compile_decoder: bool = False
    compile_encoder: bool = False
    flush_denormal: bool = True

    def __post_init__(self):
        if self.select_by not in SELECTION_METRICS:
            raise UserInputError(f"select_by must be one of {SELECTION_METRICS}, got {self.select_by!r}")
        if self.select_by != "val_loss" and self.probe_every_n_epochs < 1:
            raise UserInputError(f"select_by={self.select_by!r} needs probe_every_n_epochs ≥ 1")
        if self.lr_schedule not in LR_SCHEDULES:
            raise UserInputError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.checkpoint_every_n_steps < 1:
            raise UserInputError(f"checkpoint_every_n_steps must be positive, got {self.checkpoint_every_n_steps}")
        if self.divergence_factor is not None and self.divergence_factor <= 1:
            raise UserInputError(f"divergence_factor must be > 1 (or None), got {self.divergence_factor}")
        if self.session_limit_s is not None and self.session_limit_s <= 0:
            raise UserInputError(f"session_limit_s must be positive, got {self.session_limit_s}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """A stored config; fields added since it was saved take their defaults (which keep the behaviour of the
        code that saved it)."""
        return cls(**d)


LR_SCHEDULES = ("plateau", "cosine")
"""``plateau``: CDVAE's ReduceLROnPlateau on the validation loss (factor ``lr_factor`` after ``lr_patience``
validations without improvement, down to ``min_lr``). ``cosine``: from ``lr`` down to ``min_lr`` along half a
cosine over the run's budget (the largest spent fraction of ``max_steps``/``max_epochs`` and ``max_time``), so a
run stopped by its budget ends at ``min_lr``."""

SELECTION_METRICS = ("val_loss", "probe_val_match_rate")
"""What picks the exported model: the fixed-noise validation loss (lower is better) or the match rate of the
validation probe set (higher is better; needs the probe callback)."""


PROFILES = ("quick", "cpu", "paper")


def _cdvae_training(info: DatasetInfo) -> dict:
    """TrainConfig fields of CDVAE's per-dataset training (docs/model.md#training; ``info.cdvae``); none for a
    dataset without CDVAE settings, which then trains with TrainConfig's defaults (perov_5's values)."""
    if info.cdvae is None:
        return {}
    return {"batch_size": info.cdvae.batch_size, "teacher_forcing_max_epoch": info.cdvae.teacher_forcing_max_epoch}


def choice_path(dataset: str) -> Path:
    """Where the stored basis comparison of ``dataset`` lives (written by
    :func:`tvcsp.rbf_selection.compare_rbfs`)."""
    return Path(os.environ.get("TVCSP_RBF_DIR") or home_dir() / "runs" / "rbf_choice") / f"{dataset}.json"


def auto_rbf(info: DatasetInfo) -> str:
    """The basis ``rbf="auto"`` means: the stored winner of the dataset's comparison; without one the paper's
    pick (else 'gaussian'), with a warning that says so."""
    path = choice_path(info.name)
    if path.is_file():
        return json.loads(path.read_text())["winner"]
    fallback = info.paper.rbf if info.paper else "gaussian"
    warnings.warn(f"rbf='auto': no stored basis comparison for {info.name} ({path}); using "
                  f"{'the paper' if info.paper else 'the default'}'s {fallback!r} (tvcsp.rbf_selection.compare_rbfs "
                  "chooses on data)", stacklevel=3)
    return fallback


def make_configs(dataset: str | DatasetInfo, profile: str = "quick", rbf: str | None = None,
                 predict_property: bool = False, **overrides) -> tuple[VAEConfig, TrainConfig]:
    """Model and training configs for a profile; ``overrides`` replace any TrainConfig field.

    ``predict_property`` switches on the latent property head (``VAEConfig.predict_property``; its loss is logged
    as ``train_property``/``val_property``), which property optimisation in latent space needs.

    ``quick``: a CPU teaching run (small model, 512 training crystals, minutes on 2 cores).
    ``cpu``: the recipe for training on a CPU: quick-profile model sizes on the full training split, lr 5e-3
    decaying along half a cosine to 1e-4 over the run's budget (``lr_schedule="cosine"``: set ``max_steps`` or
    ``max_time`` to the budget), the posterior started nearly deterministic (``init_logvar=-6``) and the
    composition loss weighted 10 (CDVAE: 1), which make z carry each crystal within a few hundred steps, a
    decoder told the noise level (``DecoderConfig.noise_embedding_dim=32``; CDVAE's must infer it) whose type
    head also reads z (``DecoderConfig.type_head_latent``), atom types noised at the same level as the
    coordinates (``NoiseSchedule.tied``) but never less than ``type_sigma_end=2.0`` (CDVAE: 0.01), so the
    decoder learns to correct wrong types at every level.
    ``paper``: paper Table 4 (docs/model.md#paper-settings: encoder cutoff, neighbours, radial basis, latent 64,
    lr 1e-4, epochs) + CDVAE.
    """
    info = dataset if isinstance(dataset, DatasetInfo) else get_dataset(dataset)
    if profile not in PROFILES:
        raise UserInputError(f"unknown profile {profile!r}; expected one of {PROFILES}")
    paper = info.paper
    cutoff, neighbors = (paper.cutoff, paper.max_neighbors) if paper else (6.0, 20)
    if rbf is None:
        rbf = paper.rbf if paper else "gaussian"
    elif rbf == "auto":
        rbf = auto_rbf(info)
    if profile == "paper":
        encoder = EncoderConfig(rbf=rbf, cutoff=cutoff, max_neighbors=neighbors, latent_dim=64)
        vae = VAEConfig(encoder=encoder, decoder=DecoderConfig(), max_atoms=info.max_atoms or 20)
        train = TrainConfig(dataset=info.name, max_epochs=paper.epochs if paper else 1000, **_cdvae_training(info))
    else:
        encoder = EncoderConfig(
            irreps_node="32x0e+8x1o+4x2e", irreps_head="8x0e+2x1o+1x2e", num_blocks=2, num_heads=4,
            num_basis=16, radial_hidden=32, irreps_feature="64x0e", rbf=rbf, cutoff=cutoff,
            max_neighbors=min(neighbors, 12), latent_dim=64,
        )
        decoder = DecoderConfig(hidden_dim=64, emb_size_trip=32, emb_size_bil_trip=32, num_radial=32,
                                num_blocks=2, scale_factors="cdvae")
        vae = VAEConfig(encoder=encoder, decoder=decoder, hidden_dim=128, max_atoms=info.max_atoms or 20)
        if profile == "quick":
            train = TrainConfig(dataset=info.name, max_epochs=30, batch_size=64, val_batch_size=128, lr=1e-3,
                                min_lr=1e-4, lr_patience=5, val_every_n_epochs=1, teacher_forcing_max_epoch=10,
                                train_subset=512, val_subset=128, coordination_sample=256)
        else:  # the CPU recipe (benchmarks/RESULTS.md "Fit test"): a near-deterministic start, a 10× composition
            # weight, a decoder told the noise level whose type head reads z, atom types noised at the coordinates'
            # level with a floor, a cosine lr over the run's budget (lr_patience only serves lr_schedule="plateau")
            vae = dataclasses.replace(vae, init_logvar=-6.0, loss=dataclasses.replace(vae.loss, composition=10.0),
                                      decoder=dataclasses.replace(decoder, noise_embedding_dim=32,
                                                                  type_head_latent=True),
                                      noise=dataclasses.replace(vae.noise, tied=True, type_sigma_end=2.0))
            train = TrainConfig(dataset=info.name, max_epochs=1000, batch_size=64, val_batch_size=256, lr=5e-3,
                                lr_schedule="cosine", min_lr=1e-4, lr_patience=10, val_every_n_epochs=1,
                                teacher_forcing_max_epoch=0,
                                val_subset=512, probe_every_n_epochs=5, probe_keep_composition=True,
                                coordination_sample=2000)
    vae = dataclasses.replace(vae, predict_property=predict_property)
    return _override(vae, train, overrides)


def _override(vae: VAEConfig, train: TrainConfig, overrides: dict) -> tuple[VAEConfig, TrainConfig]:
    """Apply overrides by name: TrainConfig fields, VAEConfig fields (e.g. ``init_logvar``), loss weights
    as ``loss_<term>`` (e.g. ``loss_kld=0.001``), encoder fields as ``encoder_<field>`` (e.g.
    ``encoder_readout="scaled_sum"``), decoder fields as ``decoder_<field>`` and noise-schedule fields as
    ``noise_<field>``."""
    vae_fields = {f.name for f in dataclasses.fields(VAEConfig)} - {"encoder", "decoder", "noise", "loss"}
    model = {k: v for k, v in overrides.items() if k in vae_fields}
    prefixed = {prefix: {k.removeprefix(prefix): v for k, v in overrides.items() if k.startswith(prefix)}
                for prefix in ("loss_", "encoder_", "decoder_", "noise_")}
    rest = {k: v for k, v in overrides.items() if k not in model and not k.startswith(tuple(prefixed))}
    vae = dataclasses.replace(vae, **model, loss=dataclasses.replace(vae.loss, **prefixed["loss_"]),
                              encoder=dataclasses.replace(vae.encoder, **prefixed["encoder_"]),
                              decoder=dataclasses.replace(vae.decoder, **prefixed["decoder_"]),
                              noise=dataclasses.replace(vae.noise, **prefixed["noise_"]))
    return vae, dataclasses.replace(train, **rest)


class TVCSPModule(L.LightningModule):
    """Lightning wrapper of :class:`~tvcsp.vae.CrystalVAE` (training, validation, optimiser, checkpoint metadata).

    With ``train_config.ema_decay > 0`` it also keeps ``ema``, an exponential moving average of the model's
    weights (docs/model.md#weight-averaging), updated after every optimiser step with the decay
    ``min(ema_decay, (1 + step) / (10 + step))``; validation, probes and the exported model use the average.
    """

    def __init__(self, model: CrystalVAE, train_config: TrainConfig, dataset_label: str):
        super().__init__()
        self.model, self.train_config, self.dataset_label = model, train_config, dataset_label
        self.ema = copy.deepcopy(model).requires_grad_(False) if train_config.ema_decay > 0 else None
        if train_config.compile_decoder:  # in place: the state dict keeps its keys (benchmarks/RESULTS.md)
            model.decoder.compile()
        if train_config.compile_encoder:  # the parts Dynamo can trace, also in place
            model.encoder.compile_parts()
        self.epoch_batches, self.restored = 0, None  # restored: the checkpoint's "epoch_batches", until an epoch ends

    @property
    def inference_model(self) -> CrystalVAE:
        """The weights to evaluate: the moving average when there is one, else the trained model."""
        return self.model if self.ema is None else self.ema

    def optimizer_step(self, *args, **kwargs) -> None:
        """The optimiser's step, then the weight average's. The average moves here, inside the training step, and
        not in ``on_train_batch_end``: Lightning calls callbacks' hooks before the module's, so a
        :class:`LastCheckpoint` written at a step's end would hold the average of the step before."""
        super().optimizer_step(*args, **kwargs)
        self._update_average()

    def on_fit_start(self) -> None:
        """With ``flush_denormal``, flush denormal floats (below 1.2e-38 in float32) to zero while the run fits:
        on a CPU whose arithmetic slows down on them, a trained model's step is measurably faster
        (benchmarks/RESULTS.md); without it, they are kept. Restored (kept) by :meth:`on_fit_end`, and by
        :func:`train` when a fit ends early."""
        torch.set_flush_denormal(self.train_config.flush_denormal)

    def on_fit_end(self) -> None:
        torch.set_flush_denormal(False)

    def on_train_start(self) -> None:
        """Set the cosine schedule's lr for the current step. Lightning updates step-wise schedulers after the
        callbacks' ``on_train_batch_end``, so a :class:`LastCheckpoint` written at a step's end holds the lr from
        before that update; the schedule reads only the step count, so stepping it again is exact, and it does
        nothing to a run that resumes from where the update had happened."""
        if self.train_config.lr_schedule == "cosine" and self.global_step > 0:
            self.lr_schedulers().step()

    @torch.no_grad()
    def _update_average(self) -> None:
        if self.ema is None:
            return
        step = self.global_step
        weight = 1.0 - min(self.train_config.ema_decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(list(self.ema.parameters()), list(self.model.parameters()), weight)
        for average, buffer in zip(self.ema.buffers(), self.model.buffers(), strict=True):
            average.copy_(buffer)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """A run resumes with as many processes as wrote its checkpoint (:meth:`check_processes`). A checkpoint
        saved without a moving average (EMA switched on in a resumed run) starts it from its weights; one saved
        with an average that this run does not keep (``ema_decay=0``) drops it, with a warning, and continues from
        the trained weights."""
        self.check_processes(checkpoint)
        self.restored = tuple(checkpoint.get("tvcsp", {}).get("epoch_batches", ()))
        state = checkpoint["state_dict"]
        averaged = [k for k in state if k.startswith("ema.")]
        if self.ema is not None and not averaged:
            state.update({"ema." + k.removeprefix("model."): v for k, v in list(state.items())
                          if k.startswith("model.")})
        elif self.ema is None and averaged:
            warnings.warn("the checkpoint keeps a weight average but ema_decay=0: continuing without it (pass "
                          "the run's ema_decay to keep it)", stacklevel=2)
            for k in averaged:
                del state[k]

    def check_processes(self, checkpoint: dict) -> None:
        """Refuse a checkpoint written by another number of processes (``devices × num_nodes``; checkpoints that do
        not record it come from one): each process's share of every epoch, and so of the interrupted one, depends on
        it, and so does the batch of a step."""
        saved, now = checkpoint.get("tvcsp", {}).get("world_size", 1), self.trainer.world_size
        if saved != now:
            raise CheckpointMismatchError(
                f"{self.trainer.ckpt_path}: written by a run of {saved} process(es) (devices × num_nodes), resumed "
                f"with {now}; resume with {saved} or start a new run_dir")

    def _seed(self, *keys: int) -> None:
        """Seed every generator from the run seed and ``keys`` (exact resume; distinct per DDP rank)."""
        seed = self.train_config.seed
        for k in (*keys, self.global_rank):
            seed = (seed * 1_000_003 + k) % (2**63 - 1)
        torch.manual_seed(seed)

    def kl_scale(self) -> float:
        """KL warm-up: the KL weight ramps linearly from 0 to its configured value over ``kl_warmup_steps``."""
        steps = self.train_config.kl_warmup_steps
        return 1.0 if steps <= 0 else min(1.0, self.global_step / steps)

    def on_train_epoch_start(self) -> None:
        self.epoch_batches = self.batches_to_skip(self.trainer.num_training_batches)

    def on_train_epoch_end(self) -> None:
        self.restored = None

    def training_step(self, batch, batch_idx):
        self.epoch_batches += 1  # this epoch's batches, those before a restore included (checkpoints keep it)
        self._seed(0, self.global_step)
        out = self.model(batch, teacher_forcing=self.current_epoch <= self.train_config.teacher_forcing_max_epoch)
        if self.train_config.kl_warmup_steps > 0:
            out["loss"] = out["loss"] - (1.0 - self.kl_scale()) * self.model.config.loss.kld * out["kld"]
        if not torch.isfinite(out["loss"]):
            terms = {k: float(v) for k, v in out.items() if k != "loss"}
            raise FloatingPointError(
                f"non-finite loss at epoch {self.current_epoch}, step {self.global_step} ({terms}); training "
                "stopped and the last good checkpoint is kept"
            )
        n = batch.num_atoms.numel()
        self.log_dict({f"train_{k}": v for k, v in out.items() if k != "loss"}, batch_size=n)
        self.log("train_loss", out["loss"], prog_bar=True, batch_size=n)
        return out["loss"]

    def validation_step(self, batch, batch_idx):
        """Fixed noise: the same draws at every validation, and the noise levels spread evenly over the crystals
        (crystal i of the split at level i mod L), so the loss moves only when the model does."""
        self._seed(1, batch_idx)
        n_levels, first = self.model.sigmas.numel(), batch_idx * self.train_config.val_batch_size
        levels = torch.arange(first, first + batch.num_atoms.numel(), device=self.device) % n_levels
        out = self.inference_model(batch, teacher_forcing=False, levels=levels)
        n = batch.num_atoms.numel()
        logged = {("val_total_loss" if k == "loss" else f"val_{k}"): v for k, v in out.items() if k != "val_loss"}
        self.log_dict(logged, batch_size=n, sync_dist=True)
        self.log("val_loss", out["val_loss"], prog_bar=True, batch_size=n, sync_dist=True)

    def budget_spent(self) -> float:
        """Fraction of the run's budget spent, in [0, 1]: steps over the steps ``max_steps``/``max_epochs`` allow,
        or training time over ``max_time``, whichever is larger."""
        trainer = self.trainer
        spent = self.global_step / max(1, trainer.estimated_stepping_batches)
        timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
        remaining = timer.time_remaining() if timer is not None else None
        if remaining is not None:
            elapsed = timer.time_elapsed()
            spent = max(spent, elapsed / max(elapsed + remaining, 1e-9))
        return min(1.0, spent)

    def configure_optimizers(self):
        cfg = self.train_config
        optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        if cfg.lr_schedule == "cosine":
            floor = cfg.min_lr / cfg.lr if cfg.lr > 0 else 1.0

            def factor(_: int) -> float:
                return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * self.budget_spent()))

            cosine = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": cosine, "interval": "step"}}
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=cfg.lr_factor, patience=cfg.lr_patience, min_lr=cfg.min_lr
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": "val_loss", "interval": "epoch",
                             "frequency": cfg.val_every_n_epochs},
        }

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        m = self.model
        checkpoint["tvcsp"] = {
            "dataset": self.dataset_label,
            "config": m.config.to_dict(),
            "train": self.train_config.to_dict(),
            "stats": m.stats.to_dict(),
            "scalers": m.scalers.to_dict(),
            "world_size": self.trainer.world_size,
            "epoch_batches": [self.current_epoch, self.epoch_batches],
            **provenance(),
        }

    def batches_to_skip(self, batches_per_epoch: int) -> int:
        """How many batches of the current epoch this process trained on before the restored checkpoint was
        written (0 when it was written at an epoch's end, which Lightning resumes from the next epoch's start).
        Checkpoints that do not record it (written before this count was kept) assume every epoch had
        ``batches_per_epoch`` batches."""
        if self.restored is None:
            return 0
        epoch, done = self.restored or (self.current_epoch, self.global_step - self.current_epoch * batches_per_epoch)
        return done if epoch == self.current_epoch and 0 < done < batches_per_epoch else 0


class SeededSampler(torch.utils.data.Sampler):
    """A shuffle that depends only on (seed, epoch), shared out over the processes of a distributed run; Lightning
    calls ``set_epoch`` before every epoch (``Trainer(use_distributed_sampler=False)`` leaves it unwrapped).

    Every process draws the same permutation, extends it by its own start to a multiple of ``world_size`` (each
    process then has as many batches as the others, which DDP needs) and takes every ``world_size``-th index from
    its ``rank`` on; with one process it is the plain permutation. ``skip`` drops the first indices of this
    process's next pass only (a run resumed in the middle of an epoch continues with the crystals that epoch had
    not yet given it); ``resume``, when given, is asked for that number once, when the first pass starts — after
    Lightning has restored a checkpoint, which may come after it built the loader (it does so early to count a
    cosine schedule's steps).
    """

    def __init__(self, n: int, seed: int, rank: int = 0, world_size: int = 1,
                 resume: Callable[[], int] | None = None):
        self.n, self.seed, self.rank, self.world_size = n, seed, rank, world_size
        self.epoch, self.skip, self.resume = 0, 0, resume

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.n, generator=g)
        padded = order[torch.arange(len(self) * self.world_size) % self.n]
        if self.resume is not None:
            self.skip, self.resume = self.resume(), None
        skip, self.skip = self.skip, 0
        return iter(padded[self.rank :: self.world_size][skip:].tolist())

    def __len__(self) -> int:
        return math.ceil(self.n / self.world_size)


class CrystalLoaders(L.LightningDataModule):
    """The training and validation loaders, built when Lightning asks for them, in each process of the run and
    after a checkpoint is restored: each process takes its share of both splits (training: :class:`SeededSampler`;
    validation: in order, as Lightning's own distributed sampler would), and a run resumed in the middle of an
    epoch skips the batches that epoch had already given this process (Lightning itself would replay them)."""

    def __init__(self, train_set, val_set, scalers, config: TrainConfig):
        super().__init__()
        self.train_set, self.val_set, self.scalers, self.config = train_set, val_set, scalers, config

    def train_dataloader(self) -> DataLoader:
        trainer, cfg = self.trainer, self.config
        batches = math.ceil(len(self.train_set) / trainer.world_size / cfg.batch_size)

        def resume() -> int:  # this epoch's crystals before the restore
            return trainer.lightning_module.batches_to_skip(batches) * cfg.batch_size

        sampler = SeededSampler(len(self.train_set), cfg.seed, trainer.global_rank, trainer.world_size, resume)
        return DataLoader(CrystalDataset(self.train_set, self.scalers), batch_size=cfg.batch_size, sampler=sampler,
                          num_workers=cfg.num_workers)

    def val_dataloader(self) -> DataLoader:
        trainer, crystals = self.trainer, CrystalDataset(self.val_set, self.scalers)
        share = DistributedSampler(crystals, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False)
        return DataLoader(crystals, batch_size=self.config.val_batch_size, sampler=share,
                          num_workers=self.config.num_workers)


class LastCheckpoint(L.Callback):
    """``last.ckpt`` every ``every_n_steps`` optimiser steps, at the end of training and on Ctrl-C, whatever the
    monitored metric does; written atomically (temporary file + rename in its folder), so a kill -9 loses at most
    ``every_n_steps`` steps and never leaves a broken file. Every process of a distributed run takes part in each
    save (Lightning's ``save_checkpoint`` ends in a barrier); rank 0 writes the file.

    Lightning's ``ModelCheckpoint(every_n_train_steps=…, save_last=True)`` does not give these guarantees: at the
    end of training it writes ``last.ckpt`` only if it has written nothing before, and its atomic write goes
    through the system's temporary folder (a copy, not a rename, when that is another filesystem).

    With ``session_limit_s`` (``TrainConfig.session_limit_s``) it also ends this process once that much wall-clock
    time has passed since fitting started: it saves ``last.ckpt`` after the step that ran out of time and raises
    :class:`SessionOver`, so the saved state is that of a periodic save (no validation at the stop) and the run
    resumes later along the same path; the budget, which the cosine schedule reads, stays as it was (unlike
    ``max_time``). The processes of a distributed run agree each step whether any of them is out of time.
    """

    def __init__(self, path: Path, every_n_steps: int, session_limit_s: float | None = None):
        self.path, self.every, self.limit = Path(path), every_n_steps, session_limit_s
        self._saved_step = -1
        self._start = time.monotonic()

    def save(self, trainer) -> None:
        if trainer.global_step == self._saved_step:
            return
        tmp = self.path.with_suffix(".ckpt.tmp")
        if trainer.is_global_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(tmp, weights_only=False)  # full state: resumable; every rank, rank 0 writes
        if trainer.is_global_zero:
            os.replace(tmp, self.path)
        self._saved_step = trainer.global_step

    def on_fit_start(self, trainer, module) -> None:
        self._start = time.monotonic()

    def _out_of_time(self, trainer) -> bool:
        late = self.limit is not None and time.monotonic() - self._start >= self.limit
        return self.limit is not None and trainer.strategy.reduce_boolean_decision(late, all=False)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        over = self._out_of_time(trainer)
        if over or trainer.global_step % self.every == 0:
            self.save(trainer)
        if over:
            raise SessionOver(f"session limit of {self.limit:g} s reached at step {trainer.global_step}")

    def on_train_end(self, trainer, module) -> None:
        self.save(trainer)

    def on_exception(self, trainer, module, exception) -> None:
        if isinstance(exception, KeyboardInterrupt):
            self.save(trainer)


class ProbeProgressBar(TQDMProgressBar):
    """Lightning's progress bar, plus the latest probe match rates (``probe_*_match_rate``), which the probe
    callback keeps in ``trainer.callback_metrics`` rather than logging to the bar."""

    def get_metrics(self, trainer, module) -> dict:
        probes = {k.removeprefix("probe_").replace("_match_rate", " match"): f"{float(v):.3f}"
                  for k, v in trainer.callback_metrics.items() if k.startswith("probe_") and k.endswith("match_rate")}
        return super().get_metrics(trainer, module) | probes


class DivergenceStop(L.Callback):
    """Stop a run whose validation loss has stayed above ``factor`` × its best for ``patience`` validations in a
    row (``TrainConfig.divergence_factor``/``divergence_patience``; ``None`` switches it off), with a message naming
    the best checkpoint to warm-start from. A run that collapses (its loss jumps and never recovers, while staying
    finite) would otherwise spend its whole remaining budget; the counts are saved in checkpoints.
    """

    def __init__(self, factor: float, patience: int, best_path: Path):
        self.factor, self.patience, self.best_path = factor, patience, best_path
        self.best, self.bad = math.inf, 0

    def on_validation_end(self, trainer, module) -> None:
        loss = trainer.callback_metrics.get("val_loss")
        if trainer.sanity_checking or loss is None:
            return
        loss = float(loss)
        self.bad = self.bad + 1 if loss > self.factor * self.best else 0
        self.best = min(self.best, loss)
        if self.bad >= self.patience:
            trainer.should_stop = True
            warnings.warn(f"validation loss {loss:.4g} has been above {self.factor:g} × its best ({self.best:.4g}) "
                          f"for {self.bad} validations: the run diverged and is stopped at step "
                          f"{trainer.global_step}; {self.best_path} holds the best state (warm-start from it with "
                          "init_from, at a lower lr)", stacklevel=2)

    def state_dict(self) -> dict:
        return {"best": self.best, "bad": self.bad}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad = state["best"], state["bad"]


class SessionOver(Exception):
    """Raised by :class:`LastCheckpoint` when the session limit is reached; :func:`train` catches it."""


@dataclass
class TrainResult:
    """Where a run's files are and its final validation numbers (in the process of rank 0; the other processes of a
    distributed run get the paths and no metrics)."""

    run_dir: Path
    model_path: Path
    best_checkpoint: Path
    metrics: dict = field(default_factory=dict)


def _subset(crystals, n: int | None, seed: int):
    if n is None or n >= len(crystals):
        return crystals
    return crystals.select(torch.randperm(len(crystals), generator=torch.Generator().manual_seed(seed))[:n])


def _first(crystals, n: int):
    return crystals.select(torch.arange(min(n, len(crystals))))


def _stored_config(meta: dict) -> dict:
    """A checkpoint's model config with the fields added since it was saved at their defaults (which keep the
    behaviour of the code that saved it), so that it compares equal to the same config built today."""
    return VAEConfig.from_dict(meta["config"]).to_dict() if "config" in meta else {}


RESUME_FREE = (
    "max_epochs", "max_steps", "max_time", "accelerator", "devices", "num_nodes", "num_workers", "tensorboard",
    "checkpoint_every_n_steps", "ema_decay", "init_from", "session_limit_s", "divergence_factor",
    "divergence_patience", "compile_decoder", "compile_encoder", "flush_denormal",
)
"""TrainConfig fields a resumed run may change, field by field, as they leave its trajectory (the weights step by
step, the validation numbers, the selected model) alone:

* ``max_epochs``, ``max_steps``, ``max_time``: the budget, a longer or shorter run along the same path; except
  under ``lr_schedule="cosine"``, whose lr at every step follows the budget (:func:`resume_settings`);
* ``accelerator``, ``devices``, ``num_nodes``: the hardware; the number of processes they make, which does change
  the trajectory, is compared on its own (:meth:`TVCSPModule.check_processes`; ``devices="auto"`` counts the
  machine's devices);
* ``num_workers``, ``tensorboard``, ``checkpoint_every_n_steps``: loading, logging, saving;
* ``ema_decay``: a weight average may be switched on or off on purpose (:meth:`TVCSPModule.on_load_checkpoint`);
* ``init_from``: read only when a run starts;
* ``session_limit_s``: when this process stops (:class:`LastCheckpoint`), not where the run is going;
* ``divergence_factor``, ``divergence_patience``: when a diverged run is stopped (:class:`DivergenceStop`);
* ``compile_decoder``, ``compile_encoder``: how the decoder and the encoder's radial networks and tensor products
  run, not what they compute (float round-off apart);
* ``flush_denormal``: how the CPU treats floats below 1.2e-38 (as zero), not what a step computes above them;
* and, added by :func:`resume_settings`: ``lr_factor`` and ``lr_patience`` under the cosine schedule, which does
  not read them; the ``probe_*`` settings (:data:`PROBE_SETTINGS`) unless ``select_by`` is a probe metric (they
  shape the probe curve, not the weights).

Every other field must match: ``dataset``, ``seed``, ``batch_size`` (the batches and the mid-epoch skip),
``val_batch_size`` (the fixed validation noise is drawn per batch), ``lr``, ``lr_schedule``, ``min_lr``,
``grad_clip_value``, ``val_every_n_epochs`` (when the plateau schedule steps and a model may be selected),
``teacher_forcing_max_epoch``, ``precision``, ``train_subset``, ``val_subset``, ``coordination_sample`` (the
statistics the model is built with), ``select_by`` and ``kl_warmup_steps``."""

PROBE_SETTINGS = ("probe_every_n_epochs", "probe_size", "probe_n_step_each", "probe_latent",
                  "probe_composition_prior", "probe_keep_composition")


def resume_settings(cfg: TrainConfig) -> tuple[str, ...]:
    """The TrainConfig fields a run resumed with ``cfg`` must share with its checkpoint (see :data:`RESUME_FREE`)."""
    free = set(RESUME_FREE)
    if cfg.lr_schedule == "cosine":
        free = free - {"max_epochs", "max_steps", "max_time"} | {"lr_factor", "lr_patience"}
    if cfg.select_by == "val_loss":
        free |= set(PROBE_SETTINGS)
    return tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name not in free)


def check_resumable(checkpoint: Path, vae: VAEConfig, cfg: TrainConfig, dataset_label: str) -> None:
    """Refuse to resume from a checkpoint whose dataset, model config or trajectory settings
    (:func:`resume_settings`) differ from the requested run's, and a cosine schedule over ``max_time``.

    Raises:
        CheckpointMismatchError: a one-line message naming what differs.
    """
    if cfg.lr_schedule == "cosine" and cfg.max_time is not None:
        raise CheckpointMismatchError(
            f"{checkpoint}: lr_schedule='cosine' over max_time follows the wall clock, which a resumed run cannot "
            "repeat; give the budget as max_steps instead")
    meta = torch.load(checkpoint, map_location="cpu", weights_only=True).get("tvcsp", {})
    if meta.get("dataset") != dataset_label:
        raise CheckpointMismatchError(f"{checkpoint}: trained on {meta.get('dataset')!r}, not {dataset_label!r}")
    old, new = _stored_config(meta), vae.to_dict()
    if old != new:
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise CheckpointMismatchError(f"{checkpoint}: model config differs in {diff}; start a new run_dir instead")
    stored = TrainConfig.from_dict(meta.get("train", {}))
    diff = [f"{k} ({getattr(stored, k)!r} → {getattr(cfg, k)!r})" for k in resume_settings(cfg)
            if getattr(stored, k) != getattr(cfg, k)]
    if diff:
        raise CheckpointMismatchError(f"{checkpoint}: training settings differ in {', '.join(diff)}, which change the "
                                      "run's trajectory; resume with the checkpoint's values or start a new run_dir")


WARM_START_FREE = ("noise", "loss", "init_logvar")
"""VAEConfig fields a warm start may change: they shape training (noise levels, loss weights, the initial
posterior), not the network."""


def warm_start(model: CrystalVAE, checkpoint: Path, dataset_label: str) -> None:
    """Start ``model`` from the weights of another run's training checkpoint (its weight average if it kept one)
    or of an exported model file (:func:`~tvcsp.checkpoint.save_model`'s, e.g. a shipped ``models/*.pt``, whose
    run folder may be gone).

    The source must come from the same dataset and a model with the same architecture; the fields in
    :data:`WARM_START_FREE` may differ, and the noise levels are ``model``'s own. The optimiser starts afresh.

    Raises:
        CheckpointMismatchError: another dataset, another architecture, or neither a training checkpoint nor a
            model file.
    """
    try:
        source, meta = model_from_training_checkpoint(checkpoint)
        weights = source.state_dict()
    except CheckpointMismatchError:  # not a training checkpoint: a model file, or read_checkpoint's one-line error
        state = read_checkpoint(checkpoint)
        weights, meta = state["state_dict"], {"dataset": state["dataset"], "config": state["config"]}
    if meta.get("dataset") != dataset_label:
        raise CheckpointMismatchError(f"{checkpoint}: trained on {meta.get('dataset')!r}, not {dataset_label!r}")
    old, new = _stored_config(meta), model.config.to_dict()
    diff = sorted(k for k in set(old) | set(new) if k not in WARM_START_FREE and old.get(k) != new.get(k))
    if diff:
        raise CheckpointMismatchError(f"{checkpoint}: model config differs in {diff}; a warm start needs the same "
                                      "architecture")
    noise_levels = {"sigmas", "type_sigmas"}
    model.load_state_dict({k: v for k, v in weights.items() if k not in noise_levels}, strict=False)


def _next_log_version(run_dir: Path) -> str:
    """``logs`` for a new run, ``logs-1``, ``logs-2``, … for each resumed session (CSVLogger overwrites)."""
    n = len(list(run_dir.glob("logs*/metrics.csv")))
    return "logs" if n == 0 else f"logs-{n}"


def _loggers(run_dir: Path, tensorboard: bool) -> list:
    """CSV logs always (``run_dir/logs*/metrics.csv``); TensorBoard logs under ``run_dir/tensorboard`` on request."""
    version = _next_log_version(run_dir)
    loggers = [CSVLogger(run_dir, name="", version=version)]
    if tensorboard:
        try:
            from lightning.pytorch.loggers import TensorBoardLogger

            loggers.append(TensorBoardLogger(run_dir, name="tensorboard", version=version))
        except ModuleNotFoundError as err:
            raise ModuleNotFoundError("tensorboard=True needs: pip install tensorboard") from err
    return loggers


def read_metrics(run_dir: str | os.PathLike) -> pd.DataFrame:
    """All logged metrics of a run, resumed sessions included, one row per (step, epoch) logging event."""
    files = sorted(Path(run_dir).glob("logs*/metrics.csv"), key=lambda f: (len(f.parent.name), f.parent.name))
    if not files:
        raise FileNotFoundError(f"no logs*/metrics.csv under {run_dir}")
    return pd.concat([pd.read_csv(f) for f in files], ignore_index=True)


def train(
    dataset: str | DatasetInfo = "perov_5",
    profile: str = "quick",
    run_dir: str | os.PathLike = "runs/quick",
    resume: bool = False,
    rbf: str | None = None,
    data_dir: str | os.PathLike | None = None,
    progress: bool = True,
    callbacks: list[L.Callback] | None = None,
    **overrides,
) -> TrainResult:
    """Train a model; ``overrides`` replace TrainConfig fields (max_epochs, max_steps, batch_size, seed, …) or
    pass ``predict_property=True`` to :func:`make_configs` (the latent property head). ``callbacks``: Lightning
    callbacks run before the run's own (e.g. a timer); they must leave the trajectory alone.

    With ``resume=True`` the run continues from ``run_dir/checkpoints/last.ckpt`` (the same model config, trajectory
    settings and number of processes: :func:`check_resumable`).
    ``init_from=<training checkpoint or model file>`` starts a new run from another run's weights
    (:func:`warm_start`).
    """
    info = dataset if isinstance(dataset, DatasetInfo) else get_dataset(dataset)
    vae_cfg, cfg = make_configs(info, profile, rbf, **overrides)
    run_dir = Path(run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    if not resume and run_dir.joinpath("checkpoints").is_dir() and any(run_dir.joinpath("checkpoints").iterdir()):
        raise FileExistsError(f"{run_dir} already holds checkpoints: pass resume=True or choose another run_dir")

    L.seed_everything(cfg.seed, verbose=False)
    train_set = load_split(info, "train", data_dir=data_dir, progress=progress)
    val_set = load_split(info, "val", data_dir=data_dir, progress=progress)
    scalers = fit_scalers(train_set)
    stats = load_stats(info, cutoff=vae_cfg.encoder.cutoff, max_neighbors=vae_cfg.encoder.max_neighbors,
                       coordination_sample=cfg.coordination_sample, data_dir=data_dir, progress=progress)
    if info.max_atoms is None:
        vae_cfg = dataclasses.replace(vae_cfg, max_atoms=stats.max_atoms)
    if resume and last.is_file():
        check_resumable(last, vae_cfg, cfg, info.label)
    model = CrystalVAE(vae_cfg, stats, scalers)
    # weight scaling on the training distances (docs/model.md#radial-bases)
    if isinstance(model.encoder.rbf, HybridRBF):
        model.encoder.rbf.fit_weight(edge_distances(train_set, vae_cfg.encoder.cutoff, vae_cfg.encoder.max_neighbors))
    if cfg.init_from and not (resume and last.is_file()):
        warm_start(model, Path(cfg.init_from), info.label)
    train_set, val_set = _subset(train_set, cfg.train_subset, cfg.seed), _subset(val_set, cfg.val_subset, cfg.seed)
    data = CrystalLoaders(train_set, val_set, scalers, cfg)

    monitor, mode = cfg.select_by, "min" if cfg.select_by == "val_loss" else "max"
    checkpoints = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor=monitor, mode=mode,
                                  save_top_k=1, save_last=False)
    extra, callbacks = callbacks or [], [checkpoints, LastCheckpoint(last, cfg.checkpoint_every_n_steps,
                                                                     cfg.session_limit_s)]
    if cfg.divergence_factor is not None:
        callbacks.append(DivergenceStop(cfg.divergence_factor, cfg.divergence_patience,
                                        run_dir / "checkpoints" / "best.ckpt"))
    if progress:
        callbacks.append(ProbeProgressBar())
    if cfg.probe_every_n_epochs > 0:
        from .diagnostics import ProbeCallback
        from .sampling import SamplerSettings

        probes = {"train": _first(train_set, cfg.probe_size), "val": _first(val_set, cfg.probe_size)}
        sampler = SamplerSettings(n_step_each=cfg.probe_n_step_each, composition_prior=cfg.probe_composition_prior,
                                  keep_composition=cfg.probe_keep_composition)
        callbacks.insert(0, ProbeCallback(probes, cfg.probe_every_n_epochs, sampler=sampler, latent=cfg.probe_latent,
                                          seed=cfg.seed))
    trainer = L.Trainer(
        max_epochs=cfg.max_epochs, max_steps=cfg.max_steps, max_time=cfg.max_time, accelerator=cfg.accelerator,
        devices=cfg.devices, num_nodes=cfg.num_nodes, precision=cfg.precision, gradient_clip_val=cfg.grad_clip_value,
        gradient_clip_algorithm="value", check_val_every_n_epoch=cfg.val_every_n_epochs,
        callbacks=extra + callbacks, logger=_loggers(run_dir, cfg.tensorboard), default_root_dir=run_dir,
        enable_progress_bar=progress, enable_model_summary=progress, num_sanity_val_steps=2,
        log_every_n_steps=max(1, min(50, math.ceil(len(train_set) / cfg.batch_size))),
        use_distributed_sampler=False,  # CrystalLoaders shares the data out over the processes
    )
    module = TVCSPModule(model, cfg, info.label)
    # CrystalLoaders makes the seeded sampler skip what a mid-epoch checkpoint had already trained on
    warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch")
    try:
        trainer.fit(module, datamodule=data, ckpt_path=last if resume and last.is_file() else None,
                    weights_only=True)
    except SessionOver as stop:
        for logger in trainer.loggers:  # the metrics logged since the loggers' last write
            logger.save()
        warnings.warn(f"{stop}: last.ckpt is saved; resume=True continues the run", stacklevel=2)
    finally:  # a fit that ends early skips on_fit_end: denormals must not stay flushed in the caller's process
        torch.set_flush_denormal(False)
    if not trainer.is_global_zero:  # the other processes of a distributed run: rank 0 writes the outputs
        return TrainResult(run_dir, run_dir / "model.pt", Path(checkpoints.best_model_path or last))

    best = Path(checkpoints.best_model_path or last)
    if not best.is_file():  # a resumed run whose earlier best file is gone (only last.ckpt was kept)
        warnings.warn(f"{best} is missing: exporting the last checkpoint instead", stacklevel=2)
        best = last
    model.load_state_dict(model_state(torch.load(best, map_location="cpu", weights_only=True)["state_dict"]))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if math.isfinite(float(v))}
    summary = {"dataset": info.label, "reduced_split": info.reduced, "split": "val", "profile": profile,
               "best_val_loss": float(checkpoints.best_model_score or math.nan), "final_metrics": metrics,
               "epochs_run": trainer.current_epoch, "steps": trainer.global_step, "train": cfg.to_dict(),
               "model": vae_cfg.to_dict(), "stats": stats.to_dict(), **provenance()}
    model_path = save_model(run_dir / "model.pt", model, info.label, {"summary": summary})
    tmp = run_dir / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1))
    os.replace(tmp, run_dir / "summary.json")
    return TrainResult(run_dir, model_path, best, summary)
