"""Candidate speed-ups of the ``cpu`` profile's training step, timed in turn in one process and checked for
exactness.

Variants: ``fp32`` (the step as trained), ``bf16-decoder`` (the GemNet decoder under CPU bfloat16 autocast; the
e3nn encoder fails under autocast, its tensordot mixing dtypes), ``compile-decoder`` (``torch.compile`` of the
decoder; the e3nn encoder does not compile whole) and ``compile-all`` (the decoder and the encoder's radial networks
and tensor products, ``TransformerEncoder.compile_parts``); ``-flush`` forms run the step with denormal floats
flushed to zero (``torch.set_flush_denormal``, ``TrainConfig.flush_denormal``: exact except for values below
1.2e-38); ``-2t`` forms run it on two torch threads instead of ``--threads`` (thread settings: the long runs train
on one thread beside other jobs, so measure these on an otherwise idle 2-core machine). Each round times one
optimiser step (forward, backward, Adam) of every variant on the round's batch with the same seed (each variant
trains its own copy of the same initial model; the order of the variants turns by one each round), so the ratios
are paired and robust to a machine whose speed drifts; the loss of each variant's first step, from the same
weights, is compared with fp32's (a speed-up may change a step's numbers only by float round-off). ``--init-from``
times the steps of a trained model file, as a warm restart takes them (a trained model's step meets more denormal
floats than a freshly initialised one's).

Run: ``python benchmarks/train_step_variants.py --threads 1 --rounds 10`` (perov_5 training crystals, batch 64).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch_geometric.loader import DataLoader

from tvcsp.checkpoint import load_model, provenance
from tvcsp.data import CrystalDataset, compute_stats, fit_scalers, load_split
from tvcsp.train import make_configs
from tvcsp.vae import CrystalVAE

VARIANTS = ("fp32", "bf16-decoder", "compile-decoder", "fp32-2t", "compile-decoder-2t", "fp32-flush",
            "compile-decoder-flush", "fp32-flush-2t", "compile-decoder-flush-2t", "compile-all", "compile-all-flush",
            "compile-all-flush-2t")
TWO_THREADS, FLUSH = "-2t", "-flush"


def build(batch_size: int, batches: int, init_from: str | None = None) -> tuple[CrystalVAE, list]:
    """The cpu-profile model (perov_5, statistics of 256 training crystals; or the trained perov_5 model file
    ``init_from``, as a warm restart starts) and ``batches`` batches of training crystals (their graphs differ in
    size, as in training, so a compiled module meets new shapes)."""
    crystals = load_split("perov_5", "train", progress=False)
    if init_from:
        model = load_model(init_from).train()
    else:
        vae_cfg, _ = make_configs("perov_5", "cpu", predict_property=True)
        stats = compute_stats(crystals.select(slice(0, 256)), vae_cfg.encoder.cutoff, vae_cfg.encoder.max_neighbors,
                              coordination_sample=16, progress=False)
        model = CrystalVAE(vae_cfg, stats, fit_scalers(crystals))
    loader = iter(DataLoader(CrystalDataset(crystals, model.scalers), batch_size=batch_size, shuffle=True))
    return model, [next(loader) for _ in range(batches)]


class Autocast(torch.nn.Module):
    """``module`` run under CPU bfloat16 autocast."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module
        self.config = module.config

    def forward(self, *args, **kwargs):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.module(*args, **kwargs)


def variant(model: CrystalVAE, name: str) -> CrystalVAE:
    """A copy of the model set up for the variant."""
    model = copy.deepcopy(model)
    name = name.removesuffix(TWO_THREADS).removesuffix(FLUSH)
    if name in ("compile-decoder", "compile-all"):
        model.decoder = torch.compile(model.decoder)
    if name == "compile-all":
        model.encoder.compile_parts()
    elif name == "bf16-decoder":
        model.decoder = Autocast(model.decoder)
    return model


def step(model: CrystalVAE, optimizer, batch, threads: int, flush: bool = False) -> tuple[float, float]:
    """One seeded optimiser step on ``threads`` torch threads, denormals flushed to zero with ``flush``:
    (seconds, loss)."""
    torch.set_num_threads(threads)
    torch.set_flush_denormal(flush)
    torch.manual_seed(0)
    start = time.perf_counter()
    loss = model(batch, teacher_forcing=False)["loss"]
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    seconds = time.perf_counter() - start
    torch.set_flush_denormal(False)
    return seconds, float(loss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=8, help="timed rounds, each on a new batch")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first (compilation)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS[:3]))
    parser.add_argument("--init-from", help="time the steps of this trained perov_5 model file (a warm restart) "
                                            "instead of a freshly initialised one")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base, batches = build(args.batch_size, args.warmup + args.rounds, args.init_from)
    runs = {}
    for name in args.variants:
        model = variant(base, name)
        runs[name] = (model, torch.optim.Adam(model.parameters(), lr=1e-4))
    threads = {name: 2 if name.endswith(TWO_THREADS) else args.threads for name in args.variants}
    flush = {name: FLUSH in name for name in args.variants}
    first = {name: step(*runs[name], batches[0], threads[name], flush[name])[1] for name in args.variants}
    times = {name: [] for name in args.variants}
    for r, batch in enumerate(batches[1:], start=1):
        order = args.variants[r % len(args.variants):] + args.variants[:r % len(args.variants)]  # no fixed order
        for name in order:
            seconds, _ = step(*runs[name], batch, threads[name], flush[name])
            if r >= args.warmup:
                times[name].append(seconds)
    labels = provenance()
    weights = f", weights of {args.init_from}" if args.init_from else ""
    print(f"{labels['device']}, {args.threads} thread(s) (2 for the -2t variants), torch {torch.__version__}, "
          f"commit {labels['commit']}; "
          f"cpu profile{weights}, perov_5 batch {args.batch_size}, {len(times[args.variants[0]])} paired rounds after "
          f"{args.warmup} untimed")
    print("| variant | s / step (median) | fp32 / variant (median of paired ratios) | first-step loss rel. diff |")
    print("|---|---|---|---|")
    for name in args.variants:
        ratios = [a / b for a, b in zip(times[args.variants[0]], times[name], strict=True)]
        diff = abs(first[name] - first[args.variants[0]]) / abs(first[args.variants[0]])
        print(f"| {name} | {statistics.median(times[name]):.3f} | {statistics.median(ratios):.2f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
