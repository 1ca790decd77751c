"""Command line.

* ``tvcsp prepare DATASET`` parses every split into the cache and computes the statistics;
* ``tvcsp train DATASET --profile cpu --max-steps N --out DIR`` trains a model (resumable; docs/model.md#training);
* ``tvcsp models`` lists the shipped models with their headline numbers;
* ``tvcsp reconstruct CHECKPOINT --split test --out DIR`` encodes and decodes a split (docs/sampling.md#reconstruction);
* ``tvcsp generate CHECKPOINT --n 10000 --out DIR`` decodes latents drawn from the model's learned prior, or from
  N(0, I) with ``--prior normal`` (docs/sampling.md#generation);
* ``tvcsp predict CHECKPOINT SrTiO3 KNbO3 --n-samples 20 --out DIR`` predicts ranked crystal structures for
  compositions (docs/sampling.md#structure-prediction);
* ``tvcsp evaluate DIR`` computes CDVAE's metrics of a reconstruction or generation run (docs/metrics.md) and writes
  them, labelled, to ``DIR/metrics.json``; it reads the run's crystals as arrays (``tasks.to_crystal_arrays``), so
  the library's rules judge every crystal, unusable lattices included (``--novelty`` adds uniqueness and novelty
  against the train split).

Both sampling commands are resumable: rerun the same command to finish an interrupted run. Their sampler is a
preset (``--sampler cdvae``, the default, or ``fast``) with any single setting changed by its option
(docs/sampling.md#settings).

A user error (a missing file or folder, an unknown dataset, an unreadable or foreign checkpoint, a run folder
holding other settings or no finished run, bad data, a sampler setting it refuses: a
:class:`~tvcsp.errors.UserInputError`, an ``OSError`` or the command line's own check) prints one line
``tvcsp: error: ...`` on stderr and exits with status 2; ``TVCSP_DEBUG=1`` shows the traceback instead. Any other
exception is a fault, not a user error, and propagates with its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from .data import SPLITS, DatasetInfo, get_dataset, load_split, load_stats
from .errors import UserInputError
from .predict import POOL, PREDICT_PRIORS, RANKINGS, PredictSettings
from .sampling import PRECISIONS, SAMPLER_PRESETS, UPDATES, SamplerSettings
from .stoichiometry import COMPOSITION_RULES

USAGE_ERROR = 2  # exit status of every user error (as argparse's)
PREDICT_DEFAULTS = PredictSettings()
PRIOR_WORDS = {"conditional": "the model's conditional prior q(z | composition)",
               "learned": "the model's learned prior q(z)", "normal": "N(0, I)"}
SAMPLER_OPTIONS = ("n_step_each", "step_lr", "min_sigma", "num_levels", "update", "keep_composition",
                   "composition_prior", "composition_rule", "precision")  # SamplerSettings fields with an option


class CLIError(Exception):
    """A user error found by the command line itself; its message is printed as one line."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``tvcsp: error: <what> (see '<command> --help')``."""

    def error(self, message: str):
        self.exit(USAGE_ERROR, f"tvcsp: error: {message} (see '{self.prog} --help')\n")


def _one_line(message: str, limit: int = 600) -> str:
    text = " ".join(str(message).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _dataset(name: str | None, source: str = "", hint: str = "") -> DatasetInfo:
    """Registry entry, or a :class:`CLIError` naming the known datasets (``source``: where the name came from)."""
    if not name:
        raise CLIError(f"{source} names no dataset{hint}")
    try:
        return get_dataset(name)
    except KeyError as err:
        raise CLIError(f"{source}: {err.args[0]}" if source else err.args[0]) from None


def _checkpoint(path: str) -> dict:
    """The checkpoint's stored dict (for its dataset label); missing and unusable files are user errors."""
    from .checkpoint import read_checkpoint

    if not Path(path).is_file():
        raise CLIError(f"{path}: no such checkpoint file" + (" (it is a folder)" if Path(path).is_dir() else ""))
    return read_checkpoint(path)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _prepare(args: argparse.Namespace) -> None:
    info = _dataset(args.dataset)
    for split in SPLITS:
        crystals = load_split(info, split, data_dir=args.data_dir, download=args.download, workers=args.workers,
                              on_error=args.on_error)
        skipped = len(crystals.meta.get("skipped", []))
        print(f"{info.label} {split}: {len(crystals)} crystals" + (f", {skipped} rows skipped" if skipped else ""))
    stats = load_stats(info, data_dir=args.data_dir, coordination_sample=args.coordination_sample,
                       workers=args.workers)
    print(json.dumps({"dataset": info.label, **stats.to_dict()}, indent=1))


def _device(name: str | None) -> str:
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CLIError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"device {name!r}: CUDA is not available on this machine (use --device cpu)")
    return name


def _sampler(args: argparse.Namespace) -> SamplerSettings:
    """The ``--sampler`` preset with every sampler option given on the command line."""
    changes = {name: getattr(args, name) for name in SAMPLER_OPTIONS if getattr(args, name) is not None}
    return dataclasses.replace(SamplerSettings.preset(args.sampler), **changes)


def _run_options(args: argparse.Namespace) -> dict:
    return dict(sampler=_sampler(args), batch_size=args.batch_size, num_evals=args.num_evals, compile=args.compile,
                seed=args.seed, device=_device(args.device), checkpoint=str(args.checkpoint),
                progress=not args.no_progress)


def _report(samples: dict, out: str) -> None:
    n, valid = samples["num_atoms"].shape[1], int(samples["valid_lattice"][0].sum())
    print(f"{n} crystals ({valid} with a usable lattice) in {out}")


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(text: str) -> float:
    """``"90s"``, ``"10m"``, ``"2.5h"``, ``"1d"`` or Lightning's ``"DD:HH:MM:SS"`` → seconds."""
    try:
        if ":" in text:
            parts = [float(p) for p in text.split(":")]
            if len(parts) != 4:
                raise ValueError
            return sum(v * w for v, w in zip(parts, (86400, 3600, 60, 1), strict=True))
        return float(text[:-1]) * DURATION_UNITS[text[-1]] if text[-1] in DURATION_UNITS else float(text)
    except (ValueError, IndexError):
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 90s, 10m, 2h or 00:02:00:00)") from None


def _lightning_time(seconds: float) -> str:
    """Seconds → Lightning's ``"DD:HH:MM:SS"`` (whole seconds)."""
    s = round(seconds)
    return f"{s // 86400:02d}:{s % 86400 // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _setting(text: str) -> tuple[str, object]:
    """``key=value`` → (key, value); the value is a Python literal when it parses as one (``3``, ``1e-3``,
    ``True``, ``None``), else the string."""
    import ast

    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    try:
        return key.strip(), ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError):
        return key.strip(), raw.strip()


def _hardware(device: str | None) -> dict:
    """``--device`` → Lightning's accelerator and devices (default: one CUDA device when there is one)."""
    import torch

    name = _device(device)
    if name == "cpu":
        return {"accelerator": "cpu", "devices": 1}
    index = torch.device(name).index
    return {"accelerator": "gpu", "devices": [index] if index is not None else 1}


def _train_overrides(args: argparse.Namespace) -> dict:
    """The ``train`` keyword arguments the options set (``--set`` last, so it can change any of them)."""
    from .train import TrainConfig

    overrides = {"seed": args.seed, **_hardware(args.device)}
    if args.max_steps is not None:
        overrides["max_steps"] = args.max_steps
    if args.max_time is not None:
        overrides["max_time"] = _lightning_time(args.max_time)
    if args.stop_after is not None:
        overrides["session_limit_s"] = args.stop_after
    overrides |= dict(args.set or [])
    if args.profile == "cpu" and "max_steps" not in overrides and "max_time" not in overrides and \
            overrides.get("max_epochs", TrainConfig.max_epochs) == TrainConfig.max_epochs:
        raise CLIError("--profile cpu decays its learning rate over the run's budget: give --max-steps or --max-time")
    return overrides


def _train(args: argparse.Namespace) -> None:
    import torch

    from .train import train

    info = _dataset(args.dataset)
    overrides = _train_overrides(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    out = Path(args.out or f"runs/{info.label}_{args.profile}_seed{args.seed}")
    try:
        result = train(info, args.profile, out, resume=args.resume, rbf=args.rbf, data_dir=args.data_dir,
                       progress=not args.no_progress, **overrides)
    except TypeError as err:  # an unknown --set name reaches a dataclass constructor
        raise CLIError(f"--set: {err}") from None
    print(f"model: {result.model_path}")
    if result.metrics.get("steps", 0) < overrides.get("max_steps", 0):
        print(f"to continue: the same command with --resume (state in {out / 'checkpoints' / 'last.ckpt'})")


def _models(args: argparse.Namespace) -> None:
    from .pretrained import available_pretrained, pretrained_path
    from .prior import prior_path

    names = available_pretrained()
    if not names:
        print("no shipped models found")
    for name in names:
        path = pretrained_path(name)
        line = f"{name}: {path} ({path.stat().st_size / 2**20:.1f} MB"
        line += ", learned prior" if prior_path(path).is_file() else ""
        line += ", conditional prior" if prior_path(path, conditional=True).is_file() else ""
        line += ")"
        evaluation = path.with_name(f"{name}_evaluation.json")
        if evaluation.is_file():
            rec = json.loads(evaluation.read_text())["metrics"]["reconstruction"]["all"]
            line += f"; reconstruction {rec['match_rate']:.2%} (RMSE {rec['rmse']:.4f}) on {rec['n']} test crystals"
        card = path.with_suffix(".md")
        print(line + (f"; card {card}" if card.is_file() else ""))


def _reconstruct(args: argparse.Namespace) -> None:
    from .checkpoint import load_model
    from .tasks import reconstruct

    options = _run_options(args)  # checks the sampler and the device before anything is loaded
    stored = _checkpoint(args.checkpoint).get("dataset")
    label = args.dataset or stored
    info = _dataset(label, "" if args.dataset else f"{args.checkpoint}: the checkpoint", "; pass --dataset")
    crystals = load_split(info, args.split, data_dir=args.data_dir, download=args.download)
    if args.limit is not None:
        crystals = crystals.select(slice(0, args.limit))
    samples = reconstruct(load_model(args.checkpoint), crystals, args.out, sample_z=not args.use_mu,
                          force_num_atoms=args.force_num_atoms, force_atom_types=args.force_atom_types,
                          best_of=args.best_of, accept_distance=args.accept_distance, dataset=label,
                          split=args.split, **options)
    _report(samples, args.out)


def _generate(args: argparse.Namespace) -> None:
    from .checkpoint import load_model
    from .tasks import generate

    options = _run_options(args)  # checks the sampler and the device before anything is loaded
    label = _checkpoint(args.checkpoint).get("dataset")
    samples = generate(load_model(args.checkpoint), args.n, args.out, dataset=label, prior=args.prior,
                       reject_distance=args.reject_distance, max_draws=args.max_draws, **options)
    _report(samples, args.out)
    settings = samples["meta"]["settings"]
    if "draws" in samples:
        print(f"round-trip rejection at {args.reject_distance}: {float(samples['draws'].float().mean()):.2f} latents "
              f"per crystal; {int((samples['roundtrip_distance'] >= args.reject_distance).sum())} crystals kept "
              f"after {args.max_draws} draws without reading back")
    if settings["prior"] == "learned":
        print(f"latents from the model's learned prior ({settings['prior_network_calls']} network calls each; "
              "--prior normal for CDVAE's N(0, I))")
    else:
        print("latents from N(0, I) (CDVAE's prior)")


def _predict(args: argparse.Namespace) -> None:
    from .checkpoint import load_model
    from .predict import write_predictions

    settings = PredictSettings(pool=args.pool, latent_steps=args.latent_steps, prior=args.prior,
                               ranking=args.ranking, sampler=_sampler(args))
    device = _device(args.device)
    _checkpoint(args.checkpoint)
    model = load_model(args.checkpoint, map_location=device).eval()
    record = write_predictions(model, args.formulas, args.out, args.n_samples, settings, seed=args.seed,
                               labels={"checkpoint": str(args.checkpoint)}, progress=not args.no_progress)
    for formula, entries in record["formulas"].items():
        best = entries[0]
        print(f"{formula}: best {best['file']} (score {best['score']:.3f}, {best['space_group']})")
    print(f"{len(record['formulas'])} formulas in {Path(args.out) / 'predictions.json'}; latents from "
          f"{PRIOR_WORDS[record['settings']['prior_used']]} (pool {record['settings']['pool_used']} per candidate)")


def _fit_prior(args: argparse.Namespace) -> None:
    import torch

    from .checkpoint import load_model, model_fingerprint
    from .latent import encode_posterior
    from .prior import FlowPriorConfig, crystal_composition_features, fit_prior, prior_path

    label = _checkpoint(args.checkpoint).get("dataset")
    info = _dataset(label, f"{args.checkpoint}: the checkpoint")
    crystals = load_split(info, args.split, data_dir=args.data_dir)
    model = load_model(args.checkpoint, map_location=_device(args.device)).eval()
    num_types = model.fc_composition[-1].out_features
    config = FlowPriorConfig(steps=args.steps, seed=args.seed, condition_dim=num_types + 1 if args.conditional else 0)
    conditions = crystal_composition_features(crystals.atom_types, crystals.num_atoms, num_types,
                                              model.config.max_atoms) if args.conditional else None
    with torch.no_grad():
        mu, logvar = encode_posterior(model, crystals)
    prior = fit_prior(mu, logvar, config, model_fingerprint=model_fingerprint(model), progress=not args.no_progress,
                      conditions=conditions)
    prior.fit_summary.update({"dataset": info.label, "split": args.split})
    path = prior.save(args.out or prior_path(args.checkpoint, args.conditional))
    summary = prior.fit_summary
    kind = "conditional prior q(z | composition)" if args.conditional else "learned prior"
    print(f"{kind} on {len(crystals)} {info.label} {args.split} latents: final loss "
          f"{summary['final_loss']:.4f} after {config.steps} steps ({summary['seconds']} s) → {path}")


def _run_folder(folder: str) -> dict:
    """``samples.pt`` of a finished run folder, with one-line errors for every way the folder can be unusable."""
    import torch

    from .tasks import BATCH_DIR, SAMPLES_FILE, load_samples

    path = Path(folder)
    if not path.is_dir():
        raise CLIError(f"{folder}: no such run folder" + (" (it is a file)" if path.exists() else ""))
    if not (path / SAMPLES_FILE).is_file():
        if any((path / BATCH_DIR).glob("batch_*.pt")):
            raise CLIError(f"{folder}: the run is unfinished (no {SAMPLES_FILE}); rerun the same 'tvcsp reconstruct' "
                           "or 'tvcsp generate' command to finish it")
        raise CLIError(f"{folder}: not a finished run folder (no {SAMPLES_FILE}); write one with 'tvcsp reconstruct' "
                       "or 'tvcsp generate'")
    try:
        samples = load_samples(folder)
    except Exception as err:  # torch.load of a damaged file: RuntimeError, EOFError, UnpicklingError, ...
        raise CLIError(f"{path / SAMPLES_FILE}: unreadable ({type(err).__name__}: {_one_line(err, 200)})") from err
    settings = samples.get("meta", {}).get("settings", {}) if isinstance(samples, dict) else {}
    if settings.get("task") not in ("reconstruction", "generation") or not isinstance(samples.get("num_atoms"),
                                                                                        torch.Tensor):
        raise CLIError(f"{path / SAMPLES_FILE}: not written by 'tvcsp reconstruct' or 'tvcsp generate'")
    return samples


def _evaluate(args: argparse.Namespace) -> None:
    from .checkpoint import provenance
    from .metrics import evaluate_generation, evaluate_reconstruction, write_metrics_json
    from .metrics.property_model import energy_predictor
    from .tasks import to_crystal_arrays

    samples = _run_folder(args.folder)
    settings = samples["meta"]["settings"]
    info = _dataset(settings.get("dataset"), f"{args.folder}: the run")
    predicted = to_crystal_arrays(samples)
    if settings["task"] == "reconstruction":
        metrics = evaluate_reconstruction(predicted, to_crystal_arrays(samples, ground_truth=True),
                                          workers=args.workers)
        summary = f"match rate {metrics['match_rate']:.4f} (ceiling {metrics['ceiling']:.4f}), RMSE {metrics['rmse']}"
    else:
        reference = load_split(info, args.reference_split, data_dir=args.data_dir)
        if args.reference_limit is not None:
            reference = reference.select(slice(0, args.reference_limit))
        train = load_split(info, "train", data_dir=args.data_dir).to_crystal_arrays() if args.novelty else None
        predict, skipped = (None, "energy EMD skipped: --no-energy") if args.no_energy else energy_predictor(info.name)
        if skipped and not args.no_energy:
            print(f"tvcsp: warning: {skipped}", file=sys.stderr)
        metrics = evaluate_generation(predicted, reference.to_crystal_arrays(), info.name, predict=predict,
                                      workers=args.workers, energy_skipped=skipped, train_structures=train)
        v, c = metrics["validity"], metrics["coverage"]
        summary = (f"struct valid {v['struct_valid']:.4f}, comp valid {v['comp_valid']:.4f}, "
                   f"COV-R {c['cov_recall']:.4f}, COV-P {c['cov_precision']:.4f}")
        if args.novelty:
            summary += (f", uniqueness {metrics['uniqueness']['fraction']}, "
                        f"novelty {metrics['novelty']['fraction']}")
    labels = {**settings, "dataset": info.label, "checkpoint": samples["meta"].get("checkpoint"),
              "reference_split": args.reference_split, "reference_limit": args.reference_limit,
              **({"novelty_reference": "train"} if args.novelty else {}), **provenance()}
    path = write_metrics_json(f"{args.folder}/metrics.json", metrics, labels)
    print(f"{info.label} {settings['task']}: {summary} → {path}")


def _add_sampler_options(parser: argparse.ArgumentParser, batch_size: int) -> None:
    parser.add_argument("checkpoint", help="model file written by training (model.pt)")
    parser.add_argument("--out", required=True, help="run folder (created; rerun to resume)")
    parser.add_argument("--batch-size", type=_positive, default=batch_size, help=f"crystals per batch ({batch_size})")
    parser.add_argument("--num-evals", type=_positive, default=1, help="Langevin runs per latent (1)")
    _add_sampler_settings(parser, "cdvae")


def _add_sampler_settings(parser: argparse.ArgumentParser, preset: str) -> None:
    """``--sampler`` (default ``preset``), its per-setting options and the run options every sampling command has."""
    parser.add_argument("--sampler", choices=list(SAMPLER_PRESETS), default=preset,
                        help="preset: cdvae (Langevin, 100 steps × 50 levels = 5,000 decoder calls) or fast "
                             f"(ancestral, 2 × 50 = 100 calls, compositions kept); default {preset}; the options "
                             "below change it")
    parser.add_argument("--n-step-each", type=_positive, help="steps per noise level (cdvae 100, fast 2)")
    parser.add_argument("--step-lr", type=float, help="Langevin step size at the last level (1e-4)")
    parser.add_argument("--min-sigma", type=float, help="skip noise levels below this σ in Å (0)")
    parser.add_argument("--num-levels", type=_positive, help="visit this many noise levels, evenly spaced (all 50)")
    parser.add_argument("--update", choices=UPDATES,
                        help="langevin (cdvae), ancestral (fast: jump to the clean estimate, re-noise to the next "
                             "level) or ddim (deterministic; one step per level)")
    parser.add_argument("--keep-composition", action=argparse.BooleanOptionalAction,
                        help="types keep the composition head's element counts (fast; cdvae: the decoder's argmax)")
    parser.add_argument("--composition-prior", action=argparse.BooleanOptionalAction,
                        help="add the composition head's log-probabilities to the decoder's type logits (off)")
    parser.add_argument("--composition-rule", choices=COMPOSITION_RULES,
                        help="element counts from the composition head: sample (CDVAE: round p·N, draw the rest), "
                             "nearest (the counts nearest p) or balanced (the nearest charge-balanced counts)")
    parser.add_argument("--precision", choices=PRECISIONS, help="decoder precision (32)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the decoder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", help="cpu, cuda, cuda:1 … (default: cuda when available)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def main(argv: list[str] | None = None) -> None:
    """Run the command line; user errors exit with status 2 after one ``tvcsp: error: ...`` line on stderr."""
    parser = _Parser(prog="tvcsp", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    prepare = commands.add_parser("prepare", help="parse all splits into the processed cache; compute statistics")
    prepare.add_argument("dataset", help="perov_5, carbon_24, mp_20, carbon_24_reduced or mp_20_reduced")
    prepare.add_argument("--data-dir", help="folder holding <dataset>/<split>.csv[.gz] (searched first)")
    prepare.add_argument("--download", action="store_true", help="fetch missing official CSVs (verified)")
    prepare.add_argument("--workers", type=_positive, help="parallel processes (default: all cores)")
    prepare.add_argument("--on-error", choices=["raise", "skip"], default="raise", help="what to do with bad rows")
    prepare.add_argument("--coordination-sample", type=_positive, help="CrystalNN on a seeded sample of N structures")
    prepare.set_defaults(run=_prepare)

    tr = commands.add_parser("train", help="train a model (resumable; the exported model is printed at the end)")
    tr.add_argument("dataset", help="perov_5, carbon_24, mp_20, carbon_24_reduced or mp_20_reduced")
    tr.add_argument("--profile", choices=["quick", "cpu", "paper"], default="quick",
                    help="quick (minutes, a teaching run), cpu (the CPU recipe; needs a budget) or paper (Table 4)")
    tr.add_argument("--out", help="run folder (default runs/<dataset>_<profile>_seed<seed>)")
    tr.add_argument("--max-steps", type=_positive, help="the budget in optimiser steps")
    tr.add_argument("--max-time", type=_duration, help="the budget in wall-clock time (10m, 2h, 00:02:00:00)")
    tr.add_argument("--stop-after", type=_duration,
                    help="stop this process after this long, leaving the budget alone (continue with --resume)")
    tr.add_argument("--resume", action="store_true", help="continue the run in --out from its last.ckpt")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--rbf", choices=["gaussian", "bessel", "hybrid", "auto"], help="radial basis (the profile's)")
    tr.add_argument("--device", help="cpu, cuda, cuda:1 … (default: cuda when available)")
    tr.add_argument("--threads", type=_positive, help="CPU threads (torch.set_num_threads)")
    tr.add_argument("--set", type=_setting, action="append", metavar="KEY=VALUE",
                    help="any setting tvcsp.train.make_configs takes (TrainConfig fields, loss_kld=…, decoder_…)")
    tr.add_argument("--data-dir", help="folder holding <dataset>/<split>.csv[.gz] (searched first)")
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")
    tr.set_defaults(run=_train)

    models = commands.add_parser("models", help="list the shipped models with their headline numbers")
    models.set_defaults(run=_models)

    recon = commands.add_parser("reconstruct", help="encode a split and decode it with Langevin dynamics")
    _add_sampler_options(recon, 256)
    recon.add_argument("--split", choices=SPLITS, default="test")
    recon.add_argument("--dataset", help="dataset name (default: the checkpoint's)")
    recon.add_argument("--data-dir", help="folder holding <dataset>/<split>.csv[.gz] (searched first)")
    recon.add_argument("--download", action="store_true", help="fetch missing official CSVs (verified)")
    recon.add_argument("--limit", type=_positive, help="only the first N crystals of the split")
    recon.add_argument("--use-mu", action="store_true", help="decode μ instead of CDVAE's sampled z")
    recon.add_argument("--force-num-atoms", action="store_true", help="decode with the true atom counts")
    recon.add_argument("--force-atom-types", action="store_true", help="decode with the true atom types")
    recon.add_argument("--best-of", type=_positive, default=1, metavar="K",
                       help="decode K latents drawn from q(z | x) per crystal and keep the one that re-encodes "
                            "nearest μ(x) (1: CDVAE's single draw)")
    recon.add_argument("--accept-distance", type=float, default=None, metavar="TAU",
                       help="with --best-of: stop drawing at the first candidate that re-encodes closer than TAU to "
                            "μ(x) (the model card gives TAU)")
    recon.set_defaults(run=_reconstruct)

    gen = commands.add_parser("generate", help="decode latents from the model's learned prior (or N(0, I))")
    _add_sampler_options(gen, 500)
    gen.add_argument("--n", type=_positive, default=10_000, help="crystals to generate (10000)")
    gen.add_argument("--reject-distance", type=float, default=None, metavar="TAU",
                     help="redraw the latent of a crystal that reads back farther than TAU from it "
                          "(docs/sampling.md#round-trip-rejection; off by default)")
    gen.add_argument("--max-draws", type=_positive, default=10, help="latents per crystal at most (10)")
    gen.add_argument("--prior", choices=["learned", "normal"],
                     help="where latents come from (default: the model's learned prior when it has one, "
                          "else N(0, I); 'normal' is CDVAE's and the paper's)")
    gen.set_defaults(run=_generate)

    pred = commands.add_parser("predict", help="crystal structures for given compositions, ranked (CIFs + JSON)")
    pred.add_argument("checkpoint", help="model file (model.pt); its learned prior is used when it lies beside it")
    pred.add_argument("formulas", nargs="+", metavar="FORMULA",
                      help="compositions as written: SrTiO3 (5 atoms), Sr2Ti2O6 (10 atoms)")
    pred.add_argument("--out", required=True, help="folder for <formula>/rank_NN.cif and predictions.json "
                                                   "(rerun to add formulas; finished ones are kept)")
    pred.add_argument("--n-samples", type=_positive, default=20, help="candidates per formula (20)")
    pred.add_argument("--pool", type=_positive, default=PREDICT_DEFAULTS.pool,
                      help=f"prior latents drawn per candidate, the likeliest kept (default: 1 from the conditional "
                           f"prior, else {POOL})")
    pred.add_argument("--latent-steps", type=int, default=PREDICT_DEFAULTS.latent_steps,
                      help=f"gradient steps on the latents towards the composition ({PREDICT_DEFAULTS.latent_steps})")
    pred.add_argument("--ranking", choices=RANKINGS, default=PREDICT_DEFAULTS.ranking,
                      help=f"how candidates are ranked ({PREDICT_DEFAULTS.ranking}; docs/sampling.md)")
    pred.add_argument("--prior", choices=PREDICT_PRIORS,
                      help="where latents come from (default: the model's composition-conditioned prior when it has "
                           "one, else its learned prior, else N(0, I))")
    _add_sampler_settings(pred, "fast")
    pred.set_defaults(run=_predict)

    fit = commands.add_parser("fit-prior", help="learn a latent prior for a model (written beside it)")
    fit.add_argument("checkpoint", help="model file (model.pt); the prior goes to <stem>.prior.pt beside it")
    fit.add_argument("--split", choices=SPLITS, default="train", help="crystals whose latents it learns (train)")
    fit.add_argument("--steps", type=_positive, default=60_000, help="optimiser steps (60000)")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--conditional", action="store_true",
                     help="learn q(z | composition) for structure prediction (<stem>.conditional_prior.pt)")
    fit.add_argument("--out", help="prior file (default: <stem>.prior.pt or <stem>.conditional_prior.pt beside the "
                                   "model)")
    fit.add_argument("--data-dir", help="folder holding <dataset>/<split>.csv[.gz] (searched first)")
    fit.add_argument("--device", help="device that encodes the split (default: cuda when available)")
    fit.add_argument("--no-progress", action="store_true", help="no progress bar")
    fit.set_defaults(run=_fit_prior)

    ev = commands.add_parser("evaluate", help="CDVAE's metrics of a reconstruction or generation run folder")
    ev.add_argument("folder", metavar="DIR", help="folder written by 'tvcsp reconstruct' or 'tvcsp generate'")
    ev.add_argument("--reference-split", choices=SPLITS, default="test", help="generation: reference set (test)")
    ev.add_argument("--reference-limit", type=_positive, help="generation: only the first N reference crystals")
    ev.add_argument("--no-energy", action="store_true", help="generation: skip the energy EMD (property model)")
    ev.add_argument("--novelty", action="store_true",
                    help="generation: also uniqueness and novelty against the train split (StructureMatcher)")
    ev.add_argument("--data-dir", help="folder holding <dataset>/<split>.csv[.gz] (searched first)")
    ev.add_argument("--workers", type=_positive, help="parallel processes (default: all cores)")
    ev.set_defaults(run=_evaluate)
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except (CLIError, UserInputError, OSError) as err:  # OSError: missing data files, unwritable output folders
        if os.environ.get("TVCSP_DEBUG"):
            raise
        parser.exit(USAGE_ERROR, f"tvcsp: error: {_one_line(str(err) or type(err).__name__)}\n")


if __name__ == "__main__":
    main()
