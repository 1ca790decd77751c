"""Throughput of the GemNet-dT score decoder with CDVAE's default configuration (one call = one Langevin step).

Inputs are random crystals: perov_5-sized (5 atoms per cell) and mp_20-sized (4–20 atoms, about 12 on average),
cells of ≈ 15 Å³ per atom with angles in 75–105°, uniformly random fractional coordinates (the state of the
sampler at the start of annealing). Times are forward passes without gradients, graph construction included.
The last column is the time of one Langevin step for CDVAE's generation batch of 500 crystals: measured when
``--batch-size`` is 500, otherwise extrapolated linearly from the timed batch (marked "≈").

Run: ``python benchmarks/decoder_throughput.py [--device cuda] [--batch-size 500] [--repeats 10]``.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import time

import torch

from tvcsp.decoder import DecoderConfig, GemNetTDecoder, build_decoder_graph
from tvcsp.geometry import lattice_params_to_matrix

LATENT_DIM = 256  # CDVAE's latent size
LANGEVIN_BATCH = 500  # CDVAE's generation batch
CASES = {"perov_5-sized": (5, 5), "mp_20-sized": (4, 20)}  # (min, max) atoms per cell


def random_crystals(n: int, atoms: tuple[int, int], seed: int = 0):
    """``n`` random crystals: (frac (N, 3), atom types (N,), num_atoms (n,), lattice (n, 3, 3))."""
    g = torch.Generator().manual_seed(seed)
    num_atoms = torch.randint(atoms[0], atoms[1] + 1, (n,), generator=g)
    volume = 15.0 * num_atoms * (0.8 + 0.4 * torch.rand(n, generator=g))
    lengths = volume.pow(1 / 3).unsqueeze(-1) * (0.85 + 0.3 * torch.rand(n, 3, generator=g))
    angles = 75.0 + 30.0 * torch.rand(n, 3, generator=g)
    total = int(num_atoms.sum())
    frac = torch.rand(total, 3, generator=g)
    types = torch.randint(1, 84, (total,), generator=g)
    return frac, types, num_atoms, lattice_params_to_matrix(lengths, angles)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def time_calls(model, inputs, device: torch.device, repeats: int, bf16: bool) -> float:
    """Median seconds per decoder call."""
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def call():
        with torch.inference_mode(), autocast:
            model(*inputs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    call()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=None, help="crystals per call (default: 64 CPU, 500 CUDA)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batch = args.batch_size or (LANGEVIN_BATCH if device.type == "cuda" else 64)
    config = DecoderConfig(scale_factors="none")  # the factors change values, not time; no download needed
    torch.manual_seed(0)
    model = GemNetTDecoder(config, LATENT_DIM).to(device).eval()
    precisions = ["fp32", "bf16 autocast"] if device.type == "cuda" else ["fp32"]

    print(f"device: {device} ({device_name(device)}), torch {torch.__version__}; decoder = CDVAE default "
          f"(hidden {config.hidden_dim}, {config.num_blocks} blocks, {config.cutoff} Å, ≤{config.max_neighbors} "
          f"neighbours, 27 images), {sum(p.numel() for p in model.parameters()):,} parameters")
    print("| crystals | precision | batch | atoms/cell | edges/atom | ms per call | crystals/s "
          f"| ms per Langevin step ({LANGEVIN_BATCH} crystals) |")
    print("|---|---|---|---|---|---|---|---|")
    for case, atoms in CASES.items():
        frac, types, num_atoms, lattice = (t.to(device) for t in random_crystals(batch, atoms))
        z = torch.randn(batch, LATENT_DIM, device=device)
        graph = build_decoder_graph(frac, lattice, num_atoms, config.cutoff, config.max_neighbors, config.image_range)
        edges_per_atom = graph.distances.numel() / frac.shape[0]
        for precision in precisions:
            seconds = time_calls(model, (z, frac, types, num_atoms, lattice), device, args.repeats,
                                 precision.startswith("bf16"))
            step = 1e3 * seconds * LANGEVIN_BATCH / batch
            mark = "" if batch == LANGEVIN_BATCH else "≈ "
            print(f"| {case} | {precision} | {batch} | {frac.shape[0] / batch:.1f} | {edges_per_atom:.1f} "
                  f"| {1e3 * seconds:.1f} | {batch / seconds:.0f} | {mark}{step:.0f} |")


if __name__ == "__main__":
    main()
