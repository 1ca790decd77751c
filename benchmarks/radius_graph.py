"""Throughput of tvcsp's periodic radius graph vs pymatgen's neighbour list (crystals per second).

Inputs: perov_5-sized (5 atoms, 6 Å / 20 neighbours) and mp_20-sized (up to 20 atoms, 10 Å / 50 neighbours)
crystals, taken from the processed cache of perov_5 / mp_20_reduced test splits when present, otherwise
random crystals of the same sizes. Run: ``python benchmarks/radius_graph.py [--device cuda] [--n 2048]``.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from tvcsp.data import load_split
from tvcsp.geometry import lattice_params_to_matrix, radius_graph_pbc

CASES = {"perov_5": ("perov_5", 6.0, 20, 5), "mp_20": ("mp_20_reduced", 10.0, 50, 20)}


def crystals_for(case: str, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str]:
    dataset, _, _, max_atoms = CASES[case]
    try:
        c = load_split(dataset, "test", progress=False).select(slice(0, n))
        return c.frac_coords, c.lattices, c.num_atoms, f"{dataset} test"
    except FileNotFoundError:
        g = torch.Generator().manual_seed(0)
        num_atoms = torch.randint(1 if max_atoms > 5 else 5, max_atoms + 1, (n,), generator=g)
        lengths = 2.5 * num_atoms.double().pow(1 / 3).unsqueeze(-1) * (0.8 + 0.4 * torch.rand(n, 3, generator=g))
        angles = 75 + 30 * torch.rand(n, 3, generator=g, dtype=torch.float64)
        frac = torch.rand(int(num_atoms.sum()), 3, generator=g, dtype=torch.float64)
        return frac, lattice_params_to_matrix(lengths, angles), num_atoms, "random"


def time_tvcsp(frac, lattice, num_atoms, cutoff, k, device, batch_size, dtype) -> float:
    frac, lattice, num_atoms = frac.to(device, dtype), lattice.to(device, dtype), num_atoms.to(device)
    ptr = torch.cat([num_atoms.new_zeros(1), num_atoms.cumsum(0)]).tolist()

    def run():
        for s in range(0, len(num_atoms), batch_size):
            e = min(s + batch_size, len(num_atoms))
            radius_graph_pbc(frac[ptr[s] : ptr[e]], lattice[s:e], num_atoms[s:e], cutoff, k)
        if device.type == "cuda":
            torch.cuda.synchronize()

    run()  # warm-up
    start = time.perf_counter()
    run()
    return len(num_atoms) / (time.perf_counter() - start)


def time_pymatgen(frac, lattice, num_atoms, cutoff, n) -> float:
    from pymatgen.core import Lattice, Structure

    ptr = torch.cat([num_atoms.new_zeros(1), num_atoms.cumsum(0)]).tolist()
    structures = [
        Structure(Lattice(lattice[i].numpy()), [6] * int(num_atoms[i]), frac[ptr[i] : ptr[i + 1]].numpy())
        for i in range(min(n, len(num_atoms)))
    ]
    start = time.perf_counter()
    for s in structures:
        s.get_all_neighbors(cutoff)
    return len(structures) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n", type=int, default=2048, help="crystals per case")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--pymatgen-n", type=int, default=200, help="crystals timed with pymatgen (slow)")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    print(f"device: {device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}")
    print("| input | source | cutoff / K | mean atoms | tvcsp fp32 (crystals/s) | tvcsp fp64 | pymatgen (crystals/s) |")
    print("|---|---|---|---|---|---|---|")
    for case, (_, cutoff, k, _) in CASES.items():
        frac, lattice, num_atoms, source = crystals_for(case, args.n)
        fp32 = time_tvcsp(frac, lattice, num_atoms, cutoff, k, device, args.batch_size, torch.float32)
        fp64 = time_tvcsp(frac, lattice, num_atoms, cutoff, k, device, args.batch_size, torch.float64)
        pmg = time_pymatgen(frac, lattice, num_atoms, cutoff, args.pymatgen_n)
        cells = [f"{case}-sized", source, f"{cutoff:g} Å / {k}", f"{num_atoms.double().mean():.1f}"]
        print("| " + " | ".join(cells + [f"{v:,.0f}" for v in (fp32, fp64, pmg)]) + " |")


if __name__ == "__main__":
    main()
