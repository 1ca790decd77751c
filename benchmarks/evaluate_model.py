"""Evaluate a model file the way its model card reports it: Table 1 and Table 3 of the paper, on the dataset the
model was trained on (``--dataset`` names another label of the same data, e.g. with other split files).

1. Reconstruction of test crystals (a seeded random subset of ``--limit``, or the whole split with
   ``--limit 0``): CDVAE's match rate and RMSE, why the unmatched ones fail
   (``tvcsp.diagnostics.failure_kinds``), plus match rate and RMSE on the test crystals whose reduced formula
   never occurs in the training split (the benchmark shares polymorphs between splits).
2. Generation of ``--n-generate`` crystals from z ~ N(0, I) (``--prior normal``, the paper's; ``--prior learned``
   draws from the model's learned prior beside it): validity, COV-R / COV-P and property EMDs against
   the test split (or its first ``--reference-limit`` crystals); the energy EMD needs CDVAE's property model
   and is skipped, with the reason stored, where it cannot be fetched. ``--n-generate 0`` skips it.

``--best-of K`` reconstructs with :func:`tvcsp.reencode.decode_best_of` (K posterior draws decoded, the one that
re-encodes nearest μ(x) kept; K times the decoder calls) instead of CDVAE's single draw.

Both use the annealed Langevin sampler with ``--n-step-each`` steps per noise level (CDVAE: 100) and the
sampler options ``--num-levels``, ``--update``, ``--keep-composition``, ``--composition-rule``
(docs/sampling.md). Writes ``<out>/evaluation.json`` (labelled: dataset/split, model, seed, sampler, commit,
device, timings) and prints a table.
Run: ``python benchmarks/evaluate_model.py models/perov_5.pt --limit 500 --n-generate 1000``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from pymatgen.core import Composition, Element

from tvcsp.checkpoint import load_model, provenance, read_checkpoint
from tvcsp.data import get_dataset, load_split
from tvcsp.diagnostics import failure_kinds
from tvcsp.metrics import evaluate_crystals, evaluate_generation, reconstruction_metrics, write_metrics_json
from tvcsp.metrics.property_model import energy_predictor
from tvcsp.sampling import SamplerSettings
from tvcsp.stoichiometry import COMPOSITION_RULES
from tvcsp.tasks import generate, reconstruct, to_crystal_arrays


def reduced_formulas(crystals) -> list[str]:
    """Reduced formula of every crystal, from its atom types alone (no Structure is built)."""
    out, start = [], 0
    for n in crystals.num_atoms.tolist():
        types = crystals.atom_types[start:start + n].tolist()
        out.append(Composition({Element.from_Z(z): types.count(z) for z in set(types)}).reduced_formula)
        start += n
    return out


def test_subset(test, limit: int, seed: int):
    if not limit or limit >= len(test):
        return test
    pick = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))[:limit]
    return test.select(pick.sort().values)


def sampler_settings(args) -> SamplerSettings:
    return SamplerSettings(n_step_each=args.n_step_each, num_levels=args.num_levels, update=args.update,
                           keep_composition=args.keep_composition, composition_rule=args.composition_rule)


def evaluate_reconstruction_split(model, crystals, train_formulas: set[str], args) -> dict:
    samples = reconstruct(model, crystals, args.out / "reconstruction", sampler_settings(args),
                          batch_size=args.batch_size, best_of=args.best_of, accept_distance=args.accept_distance,
                          seed=args.seed, dataset=args.dataset,
                          split="test", checkpoint=str(args.model), progress=True)
    pred = evaluate_crystals(to_crystal_arrays(samples), workers=args.workers, desc="predictions")
    truth = evaluate_crystals(to_crystal_arrays(samples, ground_truth=True), workers=args.workers,
                              desc="ground truth")
    everything = reconstruction_metrics(pred, truth, workers=args.workers)
    novel = [i for i, f in enumerate(reduced_formulas(crystals)) if f not in train_formulas]
    unseen = (reconstruction_metrics([pred[i] for i in novel], [truth[i] for i in novel], workers=args.workers)
              if novel else {"n": 0})  # e.g. carbon_24: one formula
    failures = failure_kinds([c.structure for c in pred], [c.structure for c in truth], everything["rms_dist"])
    drop = ("rms_dist",)
    distance = samples.get("candidate_distance")  # best-of runs: NaN marks a draw not made
    draws = float((~distance.isnan()).sum(1).float().mean()) if distance is not None else 1.0
    return {"all": {**{k: v for k, v in everything.items() if k not in drop}, "failures": failures},
            "unseen_formula": {k: v for k, v in unseen.items() if k not in drop},
            "draws_per_crystal": draws,
            "decoder_calls_per_crystal": draws * sampler_settings(args).decoder_calls(model.sigmas)}


def evaluate_generation_run(model, info, test, args) -> dict:
    """Generate ``--n-generate`` crystals and score them against the test split (or its seeded subset)."""
    samples = generate(model, args.n_generate, args.out / "generation", sampler_settings(args),
                       batch_size=args.batch_size, seed=args.seed, prior=args.prior, dataset=info.label,
                       checkpoint=str(args.model))
    reference = test_subset(test, args.reference_limit, args.seed)
    predict, skipped = energy_predictor(info.name)
    gen = evaluate_generation(to_crystal_arrays(samples), reference.to_crystal_arrays(), info.name, predict=predict,
                              workers=args.workers, energy_skipped=skipped)
    return {**gen, "n_reference": len(reference)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="model file (e.g. models/perov_5.pt)")
    parser.add_argument("--limit", type=int, default=500, help="test crystals reconstructed (0: the whole split)")
    parser.add_argument("--n-generate", type=int, default=1000, help="generated crystals (0: reconstruction only)")
    parser.add_argument("--best-of", type=int, default=1, metavar="K",
                        help="reconstruction keeps the best of K decoded posterior draws by re-encoding (1: CDVAE)")
    parser.add_argument("--accept-distance", type=float, default=None, metavar="TAU",
                        help="with --best-of: stop at the first draw that re-encodes closer than TAU to μ(x)")
    parser.add_argument("--reference-limit", type=int, default=0, help="reference test crystals (0: all)")
    parser.add_argument("--n-step-each", type=int, default=10, help="Langevin steps per noise level (CDVAE: 100)")
    parser.add_argument("--num-levels", type=int, default=None, help="noise levels visited (all 50)")
    parser.add_argument("--update", default="langevin", choices=["langevin", "ancestral", "ddim"])
    parser.add_argument("--keep-composition", action="store_true", help="types keep the composition head's counts")
    parser.add_argument("--composition-rule", default="sample", choices=list(COMPOSITION_RULES),
                        help="starting element counts (docs/sampling.md#composition-rules; CDVAE: sample)")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--prior", default="normal", choices=["normal", "learned"],
                        help="where generated latents come from (normal: N(0, I), the paper's)")
    parser.add_argument("--dataset", default=None, help="dataset label (default: the model's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="default runs/evaluate_<model name>")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out = args.out or Path("runs") / f"evaluate_{args.model.stem}"
    args.dataset = args.dataset or read_checkpoint(args.model)["dataset"]
    info = get_dataset(args.dataset)
    model = load_model(args.model).eval()
    test = load_split(info, "test", progress=False)
    train_formulas = set(reduced_formulas(load_split(info, "train", progress=False)))
    timings, t0 = {}, time.perf_counter()
    crystals = test_subset(test, args.limit, args.seed)
    recon = evaluate_reconstruction_split(model, crystals, train_formulas, args)
    timings["reconstruction"], t0 = time.perf_counter() - t0, time.perf_counter()

    sampler = sampler_settings(args)
    gen = evaluate_generation_run(model, info, test, args) if args.n_generate else None
    timings["generation"] = time.perf_counter() - t0
    labels = {"dataset": info.label, "split": "test", "model": str(args.model), "n_reconstructed": len(crystals),
              "test_size": len(test), "n_generated": args.n_generate,
              "n_reference": gen["n_reference"] if gen else 0, "best_of": args.best_of,
              "accept_distance": args.accept_distance,
              **sampler.to_dict(), "decoder_calls_per_crystal": sampler.decoder_calls(model.sigmas),
              "latent": "sampled z (CDVAE)" if args.best_of == 1 else
              f"best of {args.best_of} sampled z, kept by re-encoding nearest μ(x)",
              "prior": args.prior, "seed": args.seed, "threads": args.threads,
              **provenance()}
    metrics = {"reconstruction": recon, "generation": gen, "timings_s": timings}
    path = write_metrics_json(args.out / "evaluation.json", metrics, labels)
    r, u = recon["all"], recon["unseen_formula"]
    print(json.dumps(labels, indent=1))
    print(f"reconstruction ({r['n']} test crystals, {recon['decoder_calls_per_crystal']:.0f} decoder calls each): "
          f"match {r['match_rate']:.4f}, RMSE {r['rmse']}; "
          f"unseen formulas ({u['n']}): match {u.get('match_rate')}, RMSE {u.get('rmse')}")
    if gen:
        v, c = gen["validity"], gen["coverage"]
        print(f"generation ({args.n_generate}): struct valid {v['struct_valid']:.4f}, "
              f"comp valid {v['comp_valid']:.4f}, COV-R {c['cov_recall']:.4f}, COV-P {c['cov_precision']:.4f}")
    print(f"written {path}")


if __name__ == "__main__":
    main()
