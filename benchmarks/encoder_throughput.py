"""Forward + backward throughput, peak memory and size of the TransVAE-CSP encoder.

Two synthetic workloads with the paper's graph settings (its Table 4):

* ``perov_5``: 5-atom near-ideal cubic perovskites (a ≈ 3.7–4.3 Å), cutoff 6 Å / 20 neighbours, Bessel basis;
* ``mp_20``: 10–20 random atoms in a random triclinic cell (≈ 18 Å³ per atom), cutoff 10 Å / 50 neighbours,
  Gaussian basis.

Every (workload, device) case runs in a fresh process, so that the CPU peak (resident-set high-water mark
above the process's state just before the model is built) belongs to that case alone; on CUDA the peak is
``torch.cuda.max_memory_allocated``.

Usage::

    python benchmarks/encoder_throughput.py --device cpu --batch-size 32 --repeats 3
"""

from __future__ import annotations

import argparse
import platform
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from multiprocessing import get_context

import torch

from tvcsp.encoder import EncoderConfig, TransformerEncoder
from tvcsp.geometry import lattice_params_to_matrix, radius_graph_pbc

WORKLOADS = {
    "perov_5": {"cutoff": 6.0, "max_neighbors": 20, "rbf": "bessel"},
    "mp_20": {"cutoff": 10.0, "max_neighbors": 50, "rbf": "gaussian"},
}
PEROVSKITE_SITES = [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]


def synthetic_batch(workload: str, batch_size: int, gen: torch.Generator):
    """Random crystals: ``(atom_types (N,), frac_coords (N, 3), lattice (B, 3, 3) Å, num_atoms (B,))``."""
    if workload == "perov_5":
        num_atoms = torch.full((batch_size,), 5)
        sites = torch.tensor(PEROVSKITE_SITES, dtype=torch.float32).repeat(batch_size, 1)
        frac = sites + 0.02 * torch.randn(sites.shape, generator=gen)
        lengths = (3.7 + 0.6 * torch.rand(batch_size, 1, generator=gen)).expand(-1, 3)
        angles = torch.full((batch_size, 3), 90.0)
    else:
        num_atoms = torch.randint(10, 21, (batch_size,), generator=gen)
        frac = torch.rand(int(num_atoms.sum()), 3, generator=gen)
        angles = 75.0 + 30.0 * torch.rand(batch_size, 3, generator=gen)
        shape = 0.8 + 0.4 * torch.rand(batch_size, 3, generator=gen)
        unit = lattice_params_to_matrix(shape, angles).det().abs()
        lengths = shape * (18.0 * num_atoms / unit).pow(1 / 3).unsqueeze(-1)
    atom_types = torch.randint(1, 95, (int(num_atoms.sum()),), generator=gen)
    return atom_types, frac, lattice_params_to_matrix(lengths, angles), num_atoms


def device_name(device: str) -> str:
    """GPU name, or the CPU model and the number of threads torch uses."""
    if device == "cuda":
        return torch.cuda.get_device_name()
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(
                (line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), model
            )
    except OSError:
        pass
    return f"{model}, {torch.get_num_threads()} threads"


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run_case(workload: str, device: str, batch_size: int, repeats: int, threads: int | None) -> dict:
    """Time ``repeats`` forward + backward steps after one warm-up step; returns one table row."""
    if threads:
        torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    batch = [t.to(device) for t in synthetic_batch(workload, batch_size, gen)]
    config = replace(EncoderConfig(), **WORKLOADS[workload])
    graph = radius_graph_pbc(batch[1], batch[2], batch[3], config.cutoff, config.max_neighbors)
    rss_before = _peak_rss_mib()
    encoder = TransformerEncoder(config, avg_degree=float(config.max_neighbors), avg_num_atoms=10.0).to(
        device
    )
    encoder.train()

    def step():
        encoder.zero_grad(set_to_none=True)
        mu, logvar = encoder(*batch)
        (mu.pow(2).mean() + logvar.exp().mean()).backward()
        if device == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    seconds = (time.perf_counter() - start) / repeats
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else _peak_rss_mib() - rss_before
    return {
        "workload": workload,
        "device": device,
        "device_name": device_name(device),
        "atoms": float(batch[3].float().mean()),
        "edges": float(graph.num_edges.float().mean()),
        "batch": batch_size,
        "params": sum(p.numel() for p in encoder.parameters()),
        "crystals_per_s": batch_size / seconds,
        "ms_per_step": 1000 * seconds,
        "peak_mib": peak,
    }


def format_table(rows: list[dict]) -> str:
    """Rows of :func:`run_case` as a text table, followed by the name of each device."""
    header = (
        f"{'workload':<8} {'device':<6} {'atoms/x':>7} {'edges/x':>7} {'batch':>5} {'params':>8} "
        f"{'crystals/s':>10} {'ms/step':>8} {'peak MiB':>8}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['workload']:<8} {r['device']:<6} {r['atoms']:>7.1f} {r['edges']:>7.0f} {r['batch']:>5d} "
            f"{r['params']:>8d} {r['crystals_per_s']:>10.1f} {r['ms_per_step']:>8.0f} {r['peak_mib']:>8.0f}"
        )
    names = {r["device"]: r["device_name"] for r in rows}
    lines += [f"{device}: {name}" for device, name in names.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--device", choices=["all", "cpu", "cuda"], default="all", help="all: CPU, and CUDA if present"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="crystals per step")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per case (after one warm-up)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    parser.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    args = parser.parse_args(argv)
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    if not devices:
        raise SystemExit("CUDA requested but not available")
    rows = []
    for device in devices:
        for workload in args.workloads:
            with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
                job = pool.submit(run_case, workload, device, args.batch_size, args.repeats, args.threads)
                rows.append(job.result())
    print(f"TransformerEncoder, default EncoderConfig; forward + backward; torch {torch.__version__}")
    print(format_table(rows))


if __name__ == "__main__":
    main()
