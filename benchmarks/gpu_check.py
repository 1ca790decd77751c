"""The GPU check: one script, ≤ 8 minutes on one GPU, that writes the table issue 11 asks for.

Sections (each timed after a warm-up, peak memory per section):

1. **Decoder and Langevin step** at batch ``--batch-size`` (500), perov_5-sized (5 atoms) and mp_20-sized
   (20 atoms) crystals, untrained paper-profile model (CDVAE's GemNet-dT): ms per bare decoder call and per
   Langevin step, fp32 and bf16, eager, ``torch.compile`` and ``torch.compile(mode="reduce-overhead")`` (CUDA
   graphs).
2. **Generation** of ``--n-generate`` (10,000) perov_5 crystals with the shipped model (``models/perov_5.pt``;
   an untrained paper model when it is absent) with CDVAE's protocol (50 levels × 100 steps = 5,000 decoder
   calls) and with a 250-call schedule (50 × 5), each within a wall-clock budget (``--budget-s``): crystals
   done, crystals/s and the time 10,000 would take. CDVAE's code: 1.2–1.8 crystals/s on an H100.
3. **Training step** of the paper profile (batch 512 perov_5-sized synthetic crystals): ms per step, fp32
   and bf16.

Writes ``<out>/gpu_check.json`` and ``<out>/gpu_check.md`` (default ``$OUT`` or ``runs/gpu_check``), labelled
with the card's name, torch version and commit. ``--tiny`` runs every section on the CPU with tiny sizes in
seconds (the test suite does, so the script cannot rot).

Run: ``python benchmarks/gpu_check.py`` (on a GPU machine) or ``python benchmarks/gpu_check.py --tiny``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import torch
from decoder_throughput import random_crystals
from sampling_throughput import bench_case, paper_model
from torch_geometric.loader import DataLoader

from tvcsp.checkpoint import load_model, provenance
from tvcsp.data import CrystalDataset, CrystalTensors, fit_scalers
from tvcsp.geometry import lattice_matrix_to_params
from tvcsp.pretrained import PretrainedNotFoundError, pretrained_path
from tvcsp.sampling import SamplerSettings, decode, make_generator
from tvcsp.train import make_configs

CASES = {"perov_5-sized": ("perov_5", 5), "mp_20-sized": ("mp_20", 20)}
COMPILE_MODES = {"eager": None, "compile": "default", "compile + CUDA graphs": "reduce-overhead"}
SCHEDULES = {"CDVAE (50 × 100 = 5,000 calls)": 100, "50 × 5 = 250 calls": 5}
CDVAE_H100 = (1.2, 1.8)  # crystals/s of CDVAE's own code on an H100


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def compiled_decoder(model, mode: str | None):
    """``model`` with its decoder wrapped by ``torch.compile(mode=...)`` (``None``: eager, unchanged)."""
    if mode is not None:
        model.decoder = torch.compile(model.decoder, mode=mode, dynamic=True)
    return model


def decoder_and_step(device: torch.device, batch: int, steps: int, precisions: list[str], modes: list[str]):
    rows = []
    for case, (dataset, atoms) in CASES.items():
        for precision in precisions:
            for mode in modes:
                torch.manual_seed(0)
                model = compiled_decoder(paper_model(dataset, atoms).to(device), COMPILE_MODES[mode])
                reset_peak(device)
                try:
                    with torch.inference_mode():
                        step, call = bench_case(model, atoms, batch, steps, device, precision, compile=False)
                    row = {"ms_per_step": 1e3 * step, "ms_per_decoder_call": 1e3 * call}
                except Exception as err:  # a compile mode this torch/card cannot run: say so, go on
                    row = {"error": " ".join(str(err).split())[:200]}
                rows.append({"case": case, "batch": batch, "precision": precision, "mode": mode, **row,
                             "peak_mib": peak_mib(device)})
                print(rows[-1], flush=True)
    return rows


def shipped_or_untrained(device: torch.device):
    try:
        path = pretrained_path("perov_5")
        return load_model(path).to(device).eval(), str(path)
    except PretrainedNotFoundError:
        torch.manual_seed(0)
        return paper_model("perov_5", 5).to(device), "untrained paper-profile model (models/perov_5.pt absent)"


def generation(device: torch.device, n: int, batch: int, budget_s: float, schedules: dict[str, int]):
    model, source = shipped_or_untrained(device)
    rows = []
    for name, n_step_each in schedules.items():
        sampler = SamplerSettings(n_step_each=n_step_each)
        decode(model, torch.zeros(2, model.config.latent_dim, device=device), SamplerSettings(n_step_each=1), seed=0,
               progress=False)  # warm-up
        reset_peak(device)
        done, start, index = 0, time.perf_counter(), 0
        with torch.inference_mode():
            while done < n and time.perf_counter() - start < budget_s:
                size = min(batch, n - done)
                z = torch.randn(size, model.config.latent_dim, generator=make_generator(index, device), device=device)
                decode(model, z, sampler, seed=index, progress=False)
                synchronize(device)
                done, index = done + size, index + 1
        seconds = time.perf_counter() - start
        rate = done / seconds
        rows.append({"schedule": name, "decoder_calls": sampler.decoder_calls(model.sigmas), "model": source,
                     "batch": batch, "crystals": done, "seconds": seconds, "crystals_per_s": rate,
                     f"minutes_for_{n}": n / rate / 60, "speed_up_vs_cdvae_h100": [rate / c for c in CDVAE_H100],
                     "peak_mib": peak_mib(device)})
        print(rows[-1], flush=True)
    return rows


def synthetic_split(n: int, atoms: int) -> CrystalTensors:
    frac, types, num_atoms, lattice = random_crystals(n, (atoms, atoms))
    lengths, angles = lattice_matrix_to_params(lattice)
    return CrystalTensors(types, frac.double(), num_atoms, lengths.double(), angles.double(),
                          torch.zeros(n, dtype=torch.float64), [f"s{i}" for i in range(n)])


def training_step(device: torch.device, batch: int, steps: int, precisions: list[str], tiny: bool):
    crystals = synthetic_split(batch * (steps + 1), 5)
    vae, _ = make_configs("perov_5", "quick" if tiny else "paper")
    vae = dataclasses.replace(vae, decoder=dataclasses.replace(vae.decoder, scale_factors="none"))
    template = paper_model("perov_5", 5)
    rows = []
    for precision in precisions:
        torch.manual_seed(0)
        model = type(template)(vae, template.stats, fit_scalers(crystals)).to(device).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        loader = iter(DataLoader(CrystalDataset(crystals, model.scalers), batch_size=batch))
        reset_peak(device)
        times = []
        for i in range(steps + 1):  # the first step warms up
            data = next(loader).to(device)
            synchronize(device)
            start = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = model(data, teacher_forcing=True)["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            synchronize(device)
            if i:
                times.append(time.perf_counter() - start)
        rows.append({"profile": "quick (tiny mode)" if tiny else "paper", "batch": batch, "precision": precision,
                     "ms_per_step": 1e3 * sorted(times)[len(times) // 2], "peak_mib": peak_mib(device)})
        print(rows[-1], flush=True)
    return rows


def markdown(report: dict) -> str:
    lines = [f"# GPU check on {report['labels']['device']} (torch {report['labels']['torch']}, "
             f"commit {report['labels']['commit']})", "",
             "| crystals | batch | precision | mode | ms / decoder call | ms / Langevin step | peak MiB |",
             "|---|---|---|---|---|---|---|"]
    for r in report["decoder_and_step"]:
        cells = (f"{r['ms_per_decoder_call']:.2f} | {r['ms_per_step']:.2f}" if "error" not in r
                 else f"failed: {r['error'][:60]} | –")
        lines.append(f"| {r['case']} | {r['batch']} | {r['precision']} | {r['mode']} | {cells} | {r['peak_mib']} |")
    lines += ["", "| generation | calls / crystal | crystals | s | crystals/s | × CDVAE (H100) | peak MiB |",
              "|---|---|---|---|---|---|---|"]
    for r in report["generation"]:
        low, high = r["speed_up_vs_cdvae_h100"]
        lines.append(f"| {r['schedule']} | {r['decoder_calls']} | {r['crystals']} | {r['seconds']:.1f} "
                     f"| {r['crystals_per_s']:.2f} | {high:.1f}–{low:.1f} | {r['peak_mib']} |")
    lines += ["", "| training step | batch | precision | ms / step | peak MiB |", "|---|---|---|---|---|"]
    for r in report["training_step"]:
        lines.append(f"| {r['profile']} | {r['batch']} | {r['precision']} | {r['ms_per_step']:.1f} "
                     f"| {r['peak_mib']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="CPU, tiny sizes: seconds (the test suite's mode)")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--steps", type=int, default=10, help="timed Langevin steps / decoder calls per case")
    parser.add_argument("--n-generate", type=int, default=10_000)
    parser.add_argument("--budget-s", type=float, default=90.0, help="wall-clock budget of each generation run")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    if args.tiny:
        args.batch_size, args.steps, args.n_generate, args.budget_s = 4, 1, 4, 60.0
    precisions = ["32"] if args.tiny else ["32", "bf16"]
    modes = ["eager"] if args.tiny else list(COMPILE_MODES)
    schedules = {"tiny: 50 × 1 = 50 calls": 1} if args.tiny else SCHEDULES
    out = args.out or Path(os.environ.get("OUT") or "runs/gpu_check")
    out.mkdir(parents=True, exist_ok=True)
    labels = {**provenance(), "torch": torch.__version__, "tiny": args.tiny}
    print(labels, flush=True)
    start = time.perf_counter()
    report = {"labels": labels,
              "decoder_and_step": decoder_and_step(device, args.batch_size, args.steps, precisions, modes),
              "generation": generation(device, args.n_generate, args.batch_size, args.budget_s, schedules),
              "training_step": training_step(device, 8 if args.tiny else 512, 1 if args.tiny else 5, precisions,
                                             args.tiny)}
    report["labels"]["seconds"] = time.perf_counter() - start
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    (out / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
