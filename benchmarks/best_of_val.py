"""Choose K of best-of-K reconstruction (tvcsp.reencode.decode_best_of) on validation crystals.

Per crystal, K latents are drawn from q(z | x) and decoded in the order ``decode_best_of`` draws them (one seeded
generator per batch), every candidate is matched against the crystal (StructureMatcher stol 0.5, angle_tol 10,
ltol 0.3, CDVAE's validity rule) and re-encoded. Because candidate j is the same for every K > j, one run scores
every K' ≤ K: the match rate of the candidate that re-encodes nearest μ(x) among the first K' (what
``decode_best_of(..., k=K')`` returns), the rate of "any of the first K'" (the ceiling of any selection rule), and
each candidate alone (one draw each, CDVAE's protocol), and the early stop of ``decode_best_of(..., accept=τ)``
replayed for each ``--accept`` τ (match rate and draws per crystal). The candidates of a crystal are also matched
against each other (``agree``: the pairs j < l that StructureMatcher matches), which scores a consensus rule:
keep the candidate that agrees with the most others, ties to the nearest re-encoding (``vote``). Writes ``<out>``
(JSON, labelled) and prints one line per K'. ``--rescore FILE`` replays new τ on the draws of an earlier file
without decoding.

Run: ``python benchmarks/best_of_val.py models/perov_5.pt --k 4 --limit 400 --out runs/best_of_val.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from tvcsp.checkpoint import device_name, load_model, provenance, read_checkpoint
from tvcsp.data import CrystalBatches, load_split
from tvcsp.metrics import evaluate_crystals, match_rms, split_crystal_arrays, write_metrics_json
from tvcsp.reencode import encode_decoded
from tvcsp.sampling import SamplerSettings, decode, make_generator
from tvcsp.tasks import batch_seed, model_fingerprint
from tvcsp.vae import reparameterise


def arrays(d) -> list:
    """A decoded batch (or a data batch, by attribute) → one CrystalArrays per crystal."""
    get = d.__getitem__ if isinstance(d, dict) else lambda key: getattr(d, key)
    return split_crystal_arrays(*(get(k) for k in ("lengths", "angles", "num_atoms", "atom_types", "frac_coords")))


@torch.no_grad()
def score_batch(model, batch, sampler: SamplerSettings, k: int, generator) -> list[dict]:
    """Per crystal: ``matched`` (k,) bool and ``distance`` (k,) of its k candidates, in drawing order, and
    ``agree``: the pairs [j, l] (j < l) of its valid candidates that match each other."""
    mu, logvar, _ = model.encode(batch, sample=False)
    truth = evaluate_crystals(arrays(batch), workers=1, progress=False)
    matched, distance, preds = [], [], []
    for _ in range(k):
        decoded = decode(model, reparameterise(mu, logvar, generator), sampler, generator=generator, progress=False)
        gap = (encode_decoded(model, decoded) - mu).norm(dim=-1)
        distance.append(torch.where(decoded["valid_lattice"], gap, torch.full_like(gap, torch.inf)).tolist())
        pred = evaluate_crystals(arrays(decoded), workers=1, progress=False)
        rms = match_rms([p.structure for p in pred], [t.structure for t in truth], workers=1, progress=False)
        matched.append([r is not None and p.valid for r, p in zip(rms, pred, strict=True)])
        preds.append(pred)
    agree = [[] for _ in range(len(mu))]
    for j in range(k):
        for m in range(j + 1, k):
            rms = match_rms([p.structure for p in preds[j]], [p.structure for p in preds[m]], workers=1, progress=False)
            for i, r in enumerate(rms):
                if r is not None and preds[j][i].valid and preds[m][i].valid:
                    agree[i].append([j, m])
    return [{"matched": [m[i] for m in matched], "distance": [d[i] for d in distance], "agree": agree[i]}
            for i in range(len(mu))]


def vote(row: dict, kk: int) -> int:
    """The consensus rule among the first ``kk`` candidates: most agreements, ties to the nearest re-encoding."""
    support = [0] * kk
    for j, m in row.get("agree", []):
        if m < kk:
            support[j] += 1
            support[m] += 1
    return min(range(kk), key=lambda j: (-support[j], row["distance"][j]))


def summarise(rows: list[dict], k: int) -> list[dict]:
    out, voted = [], "agree" in rows[0]
    for kk in range(1, k + 1):
        chosen = [min(range(kk), key=lambda j, r=r: r["distance"][j]) for r in rows]  # first of equal distances
        out.append({"k": kk, "best_of": sum(r["matched"][j] for r, j in zip(rows, chosen, strict=True)) / len(rows),
                    "any_of": sum(any(r["matched"][:kk]) for r in rows) / len(rows),
                    **({"vote": sum(r["matched"][vote(r, kk)] for r in rows) / len(rows)} if voted else {}),
                    "single_draw": sum(r["matched"][kk - 1] for r in rows) / len(rows)})
    return out


def adaptive(rows: list[dict], k: int, taus: list[float]) -> list[dict]:
    """``decode_best_of(..., k, accept=τ)`` replayed on the scored draws: stop at the first draw closer than τ."""
    out = []
    for tau in taus:
        matched = draws = 0
        for r in rows:
            best = 0
            for j in range(k):
                best = j if r["distance"][j] < r["distance"][best] else best
                if r["distance"][j] < tau:
                    break
            matched += r["matched"][best]
            draws += j + 1
        out.append({"k": k, "accept": tau, "match_rate": matched / len(rows), "draws_per_crystal": draws / len(rows)})
    return out


def adaptive_vote(rows: list[dict], k: int, taus: list[float]) -> list[dict]:
    """Early stop at the first draw closer than τ or agreeing with an earlier draw, then :func:`vote` among the
    drawn candidates (needs ``agree``)."""
    out = []
    for tau in taus:
        matched = draws = 0
        for r in rows:
            for j in range(k):
                if r["distance"][j] < tau or any(m == j for _, m in r["agree"]):
                    break
            matched += r["matched"][vote(r, j + 1)]
            draws += j + 1
        out.append({"k": k, "accept": tau, "match_rate": matched / len(rows), "draws_per_crystal": draws / len(rows)})
    return out


def replays(rows: list[dict], k: int, taus: list[float]) -> dict:
    """Every selection rule replayed on the scored draws."""
    out = {"summary": summarise(rows, k), "adaptive": adaptive(rows, k, taus)}
    return {**out, "adaptive_vote": adaptive_vote(rows, k, taus)} if "agree" in rows[0] else out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--k", type=int, default=4, help="candidates per crystal")
    parser.add_argument("--limit", type=int, default=400, help="first N validation crystals")
    parser.add_argument("--split", default="val")
    parser.add_argument("--n-step-each", type=int, default=2)
    parser.add_argument("--update", default="langevin", choices=["langevin", "ancestral", "ddim"])
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--accept", type=float, nargs="*", default=[0.5, 0.8, 1.0, 1.2, 1.5, 2.0],
                        help="accept distances τ replayed on the K draws (decode_best_of's early stop)")
    parser.add_argument("--rescore", type=Path, default=None,
                        help="replay on the draws of an earlier --out file instead of decoding again")
    parser.add_argument("--out", type=Path, required=True, help="JSON file")
    args = parser.parse_args()
    if args.rescore:
        earlier = json.loads(args.rescore.read_text())
        rows, k = earlier["metrics"]["per_crystal"], len(earlier["metrics"]["per_crystal"][0]["matched"])
        metrics = {**earlier["metrics"], **replays(rows, k, args.accept)}
        write_metrics_json(args.out, metrics, {**earlier["labels"], "rescored": str(args.rescore)})
        for a in metrics["adaptive"]:
            print(f"K={k}, accept {a['accept']}: match {a['match_rate']:.4f} with {a['draws_per_crystal']:.3f} draws")
        return
    torch.set_num_threads(args.threads)
    model = load_model(args.model).eval()
    crystals = load_split(read_checkpoint(args.model)["dataset"], args.split, progress=False)
    crystals = crystals.select(slice(0, args.limit))
    sampler = SamplerSettings(n_step_each=args.n_step_each, update=args.update, keep_composition=True)
    batches = CrystalBatches(crystals, args.batch_size, model.scalers)
    rows, t0 = [], time.perf_counter()
    for b in tqdm(range(len(batches)), desc="batches"):
        rows += score_batch(model, batches[b], sampler, args.k, make_generator(batch_seed(args.seed, b)))
    metrics = replays(rows, args.k, args.accept)
    labels = {"task": "best-of-K reconstruction, K chosen on validation crystals", "split": args.split,
              "n": len(rows), "model": str(args.model), "model_fingerprint": model_fingerprint(model),
              **sampler.to_dict(), "decoder_calls_per_candidate": sampler.decoder_calls(model.sigmas),
              "seed": args.seed, "threads": args.threads, "device": device_name("cpu"), **provenance()}
    write_metrics_json(args.out, {**metrics, "per_crystal": rows, "seconds": time.perf_counter() - t0}, labels)
    for a in metrics.get("adaptive_vote", []):
        print(f"K={args.k}, accept {a['accept']} or agreement, vote: match {a['match_rate']:.4f} with "
              f"{a['draws_per_crystal']:.3f} draws")
    for s in metrics["summary"]:
        print(f"K={s['k']}: best-of {s['best_of']:.4f}, vote {s.get('vote', float('nan')):.4f}, "
              f"any-of {s['any_of']:.4f}, draw {s['k']} alone "
              f"{s['single_draw']:.4f}")
    print(json.dumps({"written": str(args.out)}))


if __name__ == "__main__":
    main()
