"""Throughput of the Langevin sampler (:func:`tvcsp.sampling.decode`) with the paper-size model, untrained.

Model: ``make_configs(dataset, "paper")`` — CDVAE's default GemNet-dT decoder (scale factors left at 1, which
changes values, not time) and the paper's encoder — with dummy statistics and lattice scalers (≈ 15 Å³ per
atom, angles ≈ 90°). The atom count is forced (5 atoms for perov_5-sized, 20 for mp_20-sized crystals); the
lattice, the initial types and coordinates come from the model as in a real run. Only ``--steps`` Langevin
steps of the first noise level are timed (after a one-step warm-up); a full CDVAE run has 50 × 100 = 5,000,
so the last column extrapolates ``5,000 × steps`` to CDVAE's 10,000 generated crystals in batches of
``--batch-size``. "decoder" is the bare eager decoder call on the same inputs (without ``--compile``, the
difference to "step" is the sampler's own cost). CDVAE's sampler needs ≈ 56 ms per step for 500 perov_5
crystals on an H100.

Run: ``python benchmarks/sampling_throughput.py [--device cuda] [--batch-size 500] [--steps 20]
[--precision bf16] [--compile] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import time

import torch

from tvcsp.data import DatasetStats, Scalers, StandardScaler
from tvcsp.sampling import SamplerSettings, checked_lattice, composition_sample, decode, make_generator
from tvcsp.train import make_configs
from tvcsp.vae import CrystalVAE

CASES = {"perov_5-sized": ("perov_5", 5), "mp_20-sized": ("mp_20", 20)}  # (config dataset, atoms per cell)
FULL_STEPS, N_GENERATED = 5_000, 10_000  # CDVAE: 50 levels × 100 steps; 20 batches × 500 crystals


def paper_model(dataset: str, atoms: int) -> CrystalVAE:
    """Untrained paper-profile model with dummy statistics and scalers."""
    vae, _ = make_configs(dataset, "paper")
    vae = dataclasses.replace(vae, decoder=dataclasses.replace(vae.decoder, scale_factors="none"))
    stats = DatasetStats(n_crystals=1, max_atoms=vae.max_atoms, mean_atoms=float(atoms), mean_coordination=6.0,
                         coordination_sample=1, graph_cutoff=vae.encoder.cutoff,
                         graph_max_neighbors=vae.encoder.max_neighbors, mean_graph_degree=20.0, elements=(8,))
    lattice = StandardScaler(torch.tensor([15.0 ** (1 / 3)] * 3 + [90.0] * 3, dtype=torch.float64),
                             torch.tensor([0.1] * 3 + [2.0] * 3, dtype=torch.float64))
    return CrystalVAE(vae, stats, Scalers(lattice, StandardScaler(torch.tensor(0.0), torch.tensor(1.0)))).eval()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def timed(fn, device: torch.device) -> float:
    """Seconds of one call, synchronised on CUDA."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def bench_case(model: CrystalVAE, atoms: int, batch: int, steps: int, device: torch.device, precision: str,
               compile: bool) -> tuple[float, float]:
    """(seconds per Langevin step, seconds per bare decoder call) for ``batch`` crystals of ``atoms`` atoms."""
    z = torch.randn(batch, model.config.latent_dim, generator=make_generator(0, device), device=device)
    num_atoms = torch.full((batch,), atoms, device=device)
    first_level = float(model.sigmas[0])
    kwargs = dict(num_atoms=num_atoms, compile=compile, progress=False)
    first_only = SamplerSettings(n_step_each=1, min_sigma=first_level, precision=precision)
    decode(model, z, first_only, seed=0, **kwargs)  # warm-up (and compilation)
    timed_steps = dataclasses.replace(first_only, n_step_each=steps)
    step = timed(lambda: decode(model, z, timed_steps, seed=1, **kwargs), device) / steps

    lengths, angles = model.lattice_from_scaled(model.fc_lattice(z), num_atoms)
    lattice, _ = checked_lattice(lengths.float(), angles.float())
    types = composition_sample(torch.softmax(model.fc_composition(z), -1), num_atoms, make_generator(0, device))
    frac = torch.rand(types.shape[0], 3, generator=make_generator(0, device), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    told = {"sigma": model.sigmas[:1].expand(batch)} if model.decoder.config.noise_embedding_dim else {}

    def decoder_calls():
        for _ in range(steps):
            with autocast:
                model.decoder(z, frac, types, num_atoms, lattice, **told)

    decoder_calls()
    times = [timed(decoder_calls, device) / steps for _ in range(2)]
    return step, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=None, help="crystals per batch (default: 64 CPU, 500 CUDA)")
    parser.add_argument("--steps", type=int, default=5, help="Langevin steps timed per case")
    parser.add_argument("--precision", choices=["32", "bf16"], default="32")
    parser.add_argument("--compile", action="store_true", help="torch.compile the decoder")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batch = args.batch_size or (500 if device.type == "cuda" else 64)
    print(f"device: {device} ({device_name(device)}), torch {torch.__version__}; untrained paper-profile model, "
          f"precision {args.precision}, compile {args.compile}, {args.steps} timed steps")
    print("| crystals | batch | atoms/cell | ms per step | ms per decoder call | sampler overhead "
          f"| crystal-steps/s | crystals/s at {FULL_STEPS:,} steps | {N_GENERATED:,} crystals × {FULL_STEPS:,} steps |")
    print("|---|---|---|---|---|---|---|---|---|")
    with torch.inference_mode():
        for case in args.cases:
            dataset, atoms = CASES[case]
            torch.manual_seed(0)
            model = paper_model(dataset, atoms).to(device)
            step, call = bench_case(model, atoms, batch, args.steps, device, args.precision, args.compile)
            total_h = N_GENERATED / batch * FULL_STEPS * step / 3600
            print(f"| {case} | {batch} | {atoms} | {1e3 * step:.1f} | {1e3 * call:.1f} "
                  f"| {100 * (step - call) / step:+.0f}% | {batch / step:,.0f} | {batch / (FULL_STEPS * step):.3f} "
                  f"| {total_h:.2f} h |")


if __name__ == "__main__":
    main()
