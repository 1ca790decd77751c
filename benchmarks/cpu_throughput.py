"""Throughput of the fast sampler with a trained model: sampling alone, no metrics, no files.

Generates ``--n-generate`` crystals from z ~ N(0, I) (batches of ``--gen-batch``) and reconstructs the whole
perov_5 test split (``--limit 0``; batches of ``--recon-batch``: encode, sample z = μ + σ·ε, decode), both with
:data:`tvcsp.sampling.FAST_SAMPLER` unless ``--update``/``--n-step-each`` say otherwise, and prints a table of
seconds and crystals per second against the targets (1,000 generated in ≤ 5 minutes, the test split in ≤ 15
minutes, on 2 CPU cores). Writes ``<out>/cpu_throughput.json`` labelled with model, sampler, threads, device
and commit.

Run: ``python benchmarks/cpu_throughput.py models/perov_5.pt --threads 2``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from tvcsp.checkpoint import load_model, provenance
from tvcsp.data import CrystalBatches, batch_ranges, get_dataset, load_split
from tvcsp.sampling import FAST_SAMPLER, SamplerSettings, decode, make_generator
from tvcsp.vae import reparameterise

TARGETS_S = {"generation": 300.0, "reconstruction": 900.0}  # issue 11, item 3, for 1,000 and 3,785 crystals


def time_generation(model, n: int, batch_size: int, sampler: SamplerSettings, seed: int) -> float:
    """Seconds to decode ``n`` latents z ~ N(0, I)."""
    generator = make_generator(seed)
    start = time.perf_counter()
    for index in batch_ranges(n, batch_size):
        z = torch.randn(len(index), model.config.latent_dim, generator=generator)
        decode(model, z, sampler, generator=generator, progress=False)
    return time.perf_counter() - start


def time_reconstruction(model, crystals, batch_size: int, sampler: SamplerSettings, seed: int) -> float:
    """Seconds to encode and decode every crystal (batching included)."""
    generator = make_generator(seed)
    start = time.perf_counter()
    for batch in CrystalBatches(crystals, batch_size):
        mu, logvar, _ = model.encode(batch, sample=False)
        z = reparameterise(mu, logvar, generator)
        decode(model, z, sampler, generator=generator, progress=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--n-generate", type=int, default=1000)
    parser.add_argument("--limit", type=int, default=0, help="test crystals reconstructed (0: the whole split)")
    parser.add_argument("--gen-batch", type=int, default=500)
    parser.add_argument("--recon-batch", type=int, default=256)
    parser.add_argument("--update", default=FAST_SAMPLER.update, choices=["langevin", "ancestral", "ddim"])
    parser.add_argument("--n-step-each", type=int, default=FAST_SAMPLER.n_step_each)
    parser.add_argument("--num-levels", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/cpu_throughput"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    info = get_dataset("perov_5")
    model = load_model(args.model, dataset=info.name).eval()
    test = load_split(info, "test", progress=False)
    crystals = test.select(slice(0, args.limit)) if args.limit else test
    sampler = dataclasses.replace(FAST_SAMPLER, update=args.update, n_step_each=args.n_step_each,
                                  num_levels=args.num_levels)
    calls = sampler.decoder_calls(model.sigmas)
    with torch.no_grad():
        seconds = {"generation": time_generation(model, args.n_generate, args.gen_batch, sampler, args.seed),
                   "reconstruction": time_reconstruction(model, crystals, args.recon_batch, sampler, args.seed)}
    counts = {"generation": args.n_generate, "reconstruction": len(crystals)}
    rows = [{"task": task, "crystals": counts[task], "decoder_calls": calls, "seconds": seconds[task],
             "crystals_per_s": counts[task] / seconds[task],
             "target_s": TARGETS_S[task] * counts[task] / (1000 if task == "generation" else 3785)}
            for task in seconds]
    labels = {"dataset": info.label, "split": "test", "model": str(args.model), "sampler": sampler.to_dict(),
              "threads": args.threads, "seed": args.seed, **provenance()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cpu_throughput.json").write_text(json.dumps({"labels": labels, "rows": rows}, indent=1))
    print(f"{info.label}, {args.model}, {args.update} {calls} calls, {args.threads} threads, {labels['device']}, "
          f"commit {labels['commit']}\n")
    print("| task | crystals | decoder calls each | seconds | crystals/s | target (s) |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['task']} | {r['crystals']:,} | {r['decoder_calls']} | {r['seconds']:.0f} | "
              f"{r['crystals_per_s']:.2f} | ≤ {r['target_s']:.0f} |")


if __name__ == "__main__":
    main()
