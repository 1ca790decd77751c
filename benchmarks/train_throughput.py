"""Training throughput of the full CrystalVAE: one optimiser step (forward, backward, Adam) per batch.

Uses the processed test split of each dataset (perov_5, mp_20_reduced) for realistic crystals, the ``quick``
or ``paper`` model sizes of :func:`tvcsp.train.make_configs`, and reports crystals per second and the peak
memory (CUDA: ``torch.cuda.max_memory_allocated``; CPU: the process's peak resident set size, an upper bound).

Run: ``python benchmarks/train_throughput.py [--device cuda] [--profile paper] [--batch-size 512] [--steps 5]``.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import statistics
import sys
import time

import torch
from torch_geometric.loader import DataLoader

from tvcsp.data import CrystalDataset, compute_stats, fit_scalers, load_split
from tvcsp.train import make_configs
from tvcsp.vae import CrystalVAE

DATASETS = {"perov_5": "perov_5", "mp_20-sized": "mp_20_reduced"}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def build(dataset: str, profile: str, device: torch.device, batch_size: int):
    crystals = load_split(dataset, "test", progress=False)
    vae_cfg, _ = make_configs(dataset, profile)
    stats = compute_stats(crystals.select(slice(0, 64)), vae_cfg.encoder.cutoff, vae_cfg.encoder.max_neighbors,
                          coordination_sample=16, progress=False)
    model = CrystalVAE(vae_cfg, stats, fit_scalers(crystals)).to(device)
    loader = DataLoader(CrystalDataset(crystals, model.scalers), batch_size=batch_size, shuffle=True)
    return model, loader


def time_steps(model, loader, device: torch.device, steps: int, bf16: bool) -> list[float]:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    times, batches = [], iter(loader)
    for i in range(steps + 1):  # the first step warms up
        batch = next(batches).to(device)
        start = time.perf_counter()
        with autocast:
            loss = model(batch, teacher_forcing=True)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:
            times.append(time.perf_counter() - start)
    return times


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--profile", default="quick", choices=["quick", "paper"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5, help="timed optimiser steps per case (after one warm-up)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--bf16", action="store_true", help="autocast the model to bfloat16")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device: {device_name(device)}; profile {args.profile}; batch {args.batch_size}; "
          f"{'bf16 autocast' if args.bf16 else 'fp32'}; torch {torch.__version__}")
    print("| case | parameters | s / step (median) | crystals / s | peak memory (MiB) |")
    print("|---|---|---|---|---|")
    for case, dataset in DATASETS.items():
        torch.manual_seed(0)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        model, loader = build(dataset, args.profile, device, args.batch_size)
        seconds = statistics.median(time_steps(model, loader, device, args.steps, args.bf16))
        params = sum(p.numel() for p in model.parameters())
        print(f"| {case} | {params:,} | {seconds:.3f} | {args.batch_size / seconds:.1f} | "
              f"{peak_memory_mib(device):.0f} |", flush=True)


if __name__ == "__main__":
    main()
