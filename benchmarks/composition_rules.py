"""How often each composition rule (docs/sampling.md#composition-rules) starts a crystal with its true element
counts: the composition head read at z drawn from q(z | x) of every crystal of a split, atom counts from the
atom-count head (or the true ones), with ``"sample"`` (CDVAE), ``"nearest"`` and ``"balanced"`` at several
slacks. Only the encoder and the heads run (no decoder), so a whole split takes minutes on one core.

Run: ``python benchmarks/composition_rules.py models/mp_20_reduced.pt --split val --out LOG.json``.
Choose the rule and the slack on validation crystals.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter

import torch
from tqdm.auto import tqdm

from tvcsp.checkpoint import load_model, model_fingerprint, provenance, read_checkpoint
from tvcsp.data import CrystalBatches, load_split
from tvcsp.sampling import composition_sample, make_generator
from tvcsp.stoichiometry import integer_composition
from tvcsp.vae import reparameterise

SLACKS = (0.0, 0.1, 0.2, 0.4, 1.0)


def split_counts(types: torch.Tensor, num_atoms: torch.Tensor) -> list[Counter]:
    return [Counter(part.tolist()) for part in torch.split(types, num_atoms.long().tolist())]


def rule_types(rule: str, probs: torch.Tensor, num_atoms: torch.Tensor, generator: torch.Generator,
               slack: float) -> torch.Tensor:
    if rule == "sample":
        return composition_sample(probs, num_atoms, generator)
    return integer_composition(probs, num_atoms, rule, slack)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--split", default="val")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model).eval()
    dataset = read_checkpoint(args.model)["dataset"]
    crystals = load_split(dataset, args.split, progress=False)
    generator = make_generator(args.seed)
    rules = [("sample", 0.0), ("nearest", 0.0)] + [("balanced", s) for s in SLACKS]
    right = {(atoms, rule, slack): 0 for atoms in ("predicted", "true") for rule, slack in rules}
    start = time.perf_counter()
    with torch.no_grad():
        for batch in tqdm(CrystalBatches(crystals, 250, model.scalers), desc="batches"):
            mu, logvar, _ = model.encode(batch, sample=False)
            z = reparameterise(mu, logvar, generator)
            probs = torch.log_softmax(model.fc_composition(z).float(), -1).exp()
            truth = split_counts(batch.atom_types, batch.num_atoms)
            for atoms, num_atoms in (("predicted", model.predict_num_atoms(z)), ("true", batch.num_atoms)):
                for rule, slack in rules:
                    got = split_counts(rule_types(rule, probs, num_atoms, generator, slack), num_atoms)
                    right[atoms, rule, slack] += sum(g == t for g, t in zip(got, truth, strict=True))
    n = len(crystals)
    rows = [{"atom_counts": atoms, "rule": rule, "slack": slack if rule == "balanced" else None,
             "composition_right": count / n} for (atoms, rule, slack), count in right.items()]
    for row in rows:
        print(f"{row['atom_counts']:9s} {row['rule']:8s} {row['slack'] if row['slack'] is not None else '':4} "
              f"{row['composition_right']:.4f}")
    record = {"model": args.model, "model_fingerprint": model_fingerprint(model), "dataset": dataset,
              "split": args.split, "n": n,
              "seed": args.seed, "latent": "z ~ q(z | x)", "rows": rows,
              "seconds": round(time.perf_counter() - start, 1), **provenance()}
    with open(args.out, "w") as handle:
        json.dump(record, handle, indent=1)


if __name__ == "__main__":
    main()
