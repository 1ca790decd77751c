"""Learning diagnostics: what each head has learnt, how much the latent carries, and the reconstruction
match rate of a fixed probe set — the number users care about — as a training curve.

* :func:`probe_reconstruction` — encode a fixed set of crystals, decode them with a short sampler and score
  them with CDVAE's StructureMatcher rule (match rate, RMSE, and what went wrong when they do not match).
* :func:`latent_usage` — spread of μ across crystals against the posterior σ, KL per dimension, active units.
* :func:`denoising_by_level` — the decoder's coordinate-score error and type accuracy at chosen noise levels.
* :func:`two_sample_distance` — how far two sets of latents are apart (MMD and a nearest-neighbour classifier):
  how well a prior matches the encodings of held-out crystals.
* :func:`posterior_usage`, :func:`latent_prior_report`, :func:`latent_prior_table` — the aggregate posterior of
  encoded crystals against N(0, I) and a learned prior (notebooks 04 and 06).
* :class:`ProbeCallback` — a Lightning callback logging all three every few epochs.

Everything here runs the model in eval mode without gradients and restores the training mode afterwards.
"""

from __future__ import annotations

import contextlib
import math

import lightning as L
import torch

from .data import CrystalBatches, CrystalTensors
from .sampling import SamplerSettings, decode, make_generator
from .vae import reparameterise

__all__ = ["FAILURE_KINDS", "PROBE_SAMPLER", "ProbeCallback", "denoising_by_level", "failure_kinds",
           "latent_prior_report", "latent_prior_table", "latent_usage", "posterior_usage", "probe_reconstruction",
           "two_sample_distance"]

FAILURE_KINDS = ("no structure", "atom count", "composition", "positions", "sites")
"""Why a reconstruction does not match, the first that applies: no usable structure, the wrong number of atoms,
the wrong composition, atoms not where the truth has them (even with every element made the same), or the
right positions with the elements on the wrong sites."""
PROBE_SAMPLER = SamplerSettings(n_step_each=10)
"""The probe's default sampler: CDVAE's Langevin update and types, 10 steps per level (500 decoder calls)."""


@contextlib.contextmanager
def _evaluating(model: torch.nn.Module):
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _batches(model, crystals: CrystalTensors, batch_size: int):
    """PyG batches of ``crystals`` in order, on the model's device, with the model's scalers applied."""
    device = next(model.parameters()).device
    return (batch.to(device) for batch in CrystalBatches(crystals, batch_size, model.scalers))


def _same_composition(types_a, types_b) -> bool:
    return sorted(types_a.tolist()) == sorted(types_b.tolist())


def probe_reconstruction(
    model, crystals: CrystalTensors, sampler: SamplerSettings = PROBE_SAMPLER, *, latent: str = "sample",
    force_atom_types: bool = False, seed: int = 0, batch_size: int = 128, workers: int | None = 1,
) -> dict:
    """Reconstruct ``crystals`` and score them with CDVAE's matcher (stol 0.5, angle_tol 10°, ltol 0.3).

    Args:
        model: a :class:`~tvcsp.vae.CrystalVAE`.
        crystals: the probe set (keep it small: each crystal costs ``sampler.decoder_calls(model.sigmas)`` calls).
        sampler: the :class:`~tvcsp.sampling.SamplerSettings` (default :data:`PROBE_SAMPLER`).
        latent: ``'sample'`` decodes z = μ + σ·ε (CDVAE's reconstruction), ``'mu'`` decodes μ.
        force_atom_types: decode with the true atom types and counts (isolates the coordinate score).
        seed: seeds ε and the sampler; workers: processes for the matcher (1 = in this process).

    Returns:
        ``match_rate``, ``rmse`` (CDVAE's rule), ``match_rate_no_validity``, ``natom_accuracy`` (decoded atom
        count right), ``composition_accuracy`` (decoded multiset of elements right), ``failures`` (unmatched
        crystals by :func:`failure_kinds`; SMACT-invalid matches are not among them), ``n``, and the settings
        (``latent``, ``force_atom_types``, ``seed`` and every field of ``sampler``).
    """
    from .metrics import evaluate_reconstruction
    from .tasks import to_structures

    if latent not in ("sample", "mu"):
        raise ValueError(f"latent must be 'sample' or 'mu', got {latent!r}")
    generator = make_generator(seed, next(model.parameters()).device)
    preds, truths, natom_ok, comp_ok = [], [], [], []
    with _evaluating(model):
        for batch in _batches(model, crystals, batch_size):
            mu, logvar, _ = model.encode(batch, sample=False)
            sampled = reparameterise(mu, logvar, generator)  # drawn for μ too: both see the same sampler noise
            z = sampled if latent == "sample" else mu
            forced = {"num_atoms": batch.num_atoms, "atom_types": batch.atom_types} if force_atom_types else {}
            out = decode(model, z, sampler, generator=generator, progress=False, **forced)
            samples = {k: v.unsqueeze(0).cpu() for k, v in out.items()}
            samples.update({f"gt_{k}": getattr(batch, k).cpu()
                            for k in ("num_atoms", "lengths", "angles", "frac_coords", "atom_types")})
            preds += to_structures(samples)
            truths += to_structures(samples, ground_truth=True)
            natom_ok += (out["num_atoms"].cpu() == batch.num_atoms.cpu()).tolist()
            pred_types = out["atom_types"].cpu().split(out["num_atoms"].cpu().tolist())
            true_types = batch.atom_types.cpu().split(batch.num_atoms.cpu().tolist())
            comp_ok += [_same_composition(a, b) for a, b in zip(pred_types, true_types, strict=True)]
    metrics = evaluate_reconstruction(preds, truths, workers=workers, progress=False)
    return {
        "n": len(crystals), "match_rate": metrics["match_rate"], "rmse": metrics["rmse"],
        "failures": failure_kinds(preds, truths, metrics["rms_dist"]),
        "match_rate_no_validity": metrics["match_rate_no_validity"],
        "natom_accuracy": sum(natom_ok) / max(len(natom_ok), 1),
        "composition_accuracy": sum(comp_ok) / max(len(comp_ok), 1),
        "latent": latent, **sampler.to_dict(), "force_atom_types": force_atom_types, "seed": seed,
    }


def failure_kinds(preds, truths, rms_dist) -> dict[str, int]:
    """How many unmatched reconstructions fail for each of :data:`FAILURE_KINDS`.

    Args:
        preds, truths: pymatgen Structures (``None`` = no structure), pairwise.
        rms_dist: per pair, the matcher's result (``None`` = no match), e.g. ``reconstruction_metrics``'s
            ``rms_dist``; matched pairs are not counted.
    """
    from .metrics.reconstruction import MATCHER_SETTINGS, match_rms

    counts = dict.fromkeys(FAILURE_KINDS, 0)
    bare_preds, bare_truths = [], []  # every element made the same
    for pred, truth, rms in zip(preds, truths, rms_dist, strict=True):
        if rms is not None:
            continue
        if pred is None:
            counts["no structure"] += 1
        elif len(pred) != len(truth):
            counts["atom count"] += 1
        elif pred.composition != truth.composition:
            counts["composition"] += 1
        else:
            bare_preds.append(_one_element(pred))
            bare_truths.append(_one_element(truth))
    placed = match_rms(bare_preds, bare_truths, workers=1, progress=False, **MATCHER_SETTINGS)
    counts["positions"] = sum(r is None for r in placed)
    counts["sites"] = len(placed) - counts["positions"]
    return counts


def _one_element(structure):
    out = structure.copy()
    out.replace_species({element: "Si" for element in structure.composition.elements})
    return out


def latent_usage(model, crystals: CrystalTensors, batch_size: int = 256, active_threshold: float = 0.01) -> dict:
    """How much information z carries about the crystal.

    Returns:
        ``mu_spread``: mean over dimensions of the standard deviation of μ across crystals;
        ``posterior_sigma``: mean posterior σ; ``kl_per_dim`` (list, nats, averaged over crystals);
        ``kl``: their sum; ``active_units``: dimensions whose μ varies across crystals with variance above
        ``active_threshold`` (Burda et al.'s count).
    """
    mus, logvars = [], []
    with _evaluating(model):
        for batch in _batches(model, crystals, batch_size):
            mu, logvar, _ = model.encode(batch, sample=False)
            mus.append(mu.double().cpu())
            logvars.append(logvar.double().cpu())
    usage = posterior_usage(torch.cat(mus), torch.cat(logvars), active_threshold)
    return {k: usage[k] for k in ("mu_spread", "posterior_sigma", "kl_per_dim", "kl", "active_units")}


def posterior_usage(mu: torch.Tensor, logvar: torch.Tensor, active_threshold: float = 0.01) -> dict:
    """:func:`latent_usage` of encodings already made: ``mu``, ``logvar`` ``(N, D)`` (e.g.
    :func:`tvcsp.latent.encode_posterior`).

    Returns:
        ``mu_spread`` (mean over dimensions of std of μ across crystals), ``posterior_sigma`` (mean σ),
        ``kl_per_dim`` (list, nats, mean over crystals), ``kl`` (their sum), ``active_units`` (dimensions with
        Var μ > ``active_threshold``, recorded too), ``latent_dim`` D, ``n`` N, and per dimension
        ``mu_std_per_dim`` (std of μ across crystals) and ``sigma_per_dim`` (mean σ): a dimension whose μ
        spreads much less than its σ carries little about the crystal.
    """
    mu, logvar = mu.detach().double().cpu(), logvar.detach().double().cpu()
    kl = (-0.5 * (1 + logvar - mu**2 - logvar.exp())).mean(0)
    variance = mu.var(0) if mu.shape[0] > 1 else torch.zeros(mu.shape[1], dtype=mu.dtype)
    sigma = torch.exp(0.5 * logvar).mean(0)
    return {
        "mu_spread": float(variance.sqrt().mean()),
        "posterior_sigma": float(sigma.mean()),
        "kl_per_dim": kl.tolist(),
        "kl": float(kl.sum()),
        "active_units": int((variance > active_threshold).sum()),
        "active_threshold": active_threshold,
        "latent_dim": int(mu.shape[1]),
        "n": int(mu.shape[0]),
        "mu_std_per_dim": variance.sqrt().tolist(),
        "sigma_per_dim": sigma.tolist(),
    }


YARDSTICK = "aggregate posterior, other half of the crystals"
"""The row of :func:`latent_prior_report` that compares the encoded crystals with themselves: what the two-sample
statistics give for two samples of the same distribution."""


def latent_prior_report(mu: torch.Tensor, logvar: torch.Tensor, priors: dict[str, torch.Tensor], seed: int = 0,
                        active_threshold: float = 0.01, neighbours: int = 5) -> dict:
    """How far the aggregate posterior of encoded crystals is from each prior's samples.

    The crystals (held out from training and from the prior's fit, e.g. the test split) are split at random into
    halves A and B; z = μ + σ·ε is drawn for each (the aggregate posterior q(z)). Every set of ``priors``
    samples is compared with z_A by :func:`two_sample_distance`, and so is z_B (the row :data:`YARDSTICK`: the
    values two samples of one distribution give at this size). Each comparison is made in all D dimensions and in
    the active units only: inactive dimensions hold z ≈ N(0, 1) noise in every set and dilute the difference.

    Args:
        mu, logvar: ``(N, D)`` encodings (:func:`tvcsp.latent.encode_posterior`), N ≥ 4.
        priors: name → ``(M, D)`` latents drawn from it (e.g. ``{"N(0, I)": …, "learned prior": …}``);
            M ≥ N / 2 uses the full half.
        seed: seeds the split, ε and the statistics.

    Returns:
        ``usage`` (:func:`posterior_usage`), ``distances`` (name → ``mmd2``, ``knn_accuracy``, ``n``, the same in
        the active units ``mmd2_active``, ``knn_accuracy_active`` (``None`` without active units), and
        ``mean_std``: the mean over dimensions of the set's std; for the yardstick that of z), ``seed``;
        JSON-serialisable.
    """
    mu, logvar = mu.detach().double().cpu(), logvar.detach().double().cpu()
    if mu.shape[0] < 4:
        raise ValueError(f"need at least 4 encoded crystals to split in halves, got {mu.shape[0]}")
    gen = torch.Generator().manual_seed(seed)
    z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=gen, dtype=mu.dtype)
    order = torch.randperm(mu.shape[0], generator=gen)
    half_a, half_b = z[order[: mu.shape[0] // 2]], z[order[mu.shape[0] // 2:]]
    sets = {YARDSTICK: half_b, **{name: latents.detach().double().cpu() for name, latents in priors.items()}}
    active = (mu.var(0) > active_threshold).nonzero().flatten()
    distances = {}
    for name, latents in sets.items():
        within = {"mmd2": None, "knn_accuracy": None}
        if len(active):
            within = two_sample_distance(half_a[:, active], latents[:, active], neighbours, seed)
        spread = float(latents.std(0).mean()) if name != YARDSTICK else float(z.std(0).mean())
        distances[name] = {**two_sample_distance(half_a, latents, neighbours, seed),
                           "mmd2_active": within["mmd2"], "knn_accuracy_active": within["knn_accuracy"],
                           "mean_std": spread}
    return {"usage": posterior_usage(mu, logvar, active_threshold), "distances": distances, "seed": seed}


def latent_prior_table(report: dict):
    """:func:`latent_prior_report` as a pandas DataFrame, one row per latent set compared with the held-out
    aggregate posterior (columns ``n``, ``MMD²``, ``kNN accuracy`` in all dimensions, the same two in the
    active units, ``mean std``), with the posterior's usage (active units, mean std of μ, mean σ, KL) in
    ``DataFrame.attrs["usage"]`` and its caption in ``attrs["caption"]``."""
    import pandas as pd

    rows = {name: {"n": d["n"], "MMD²": d["mmd2"], "kNN accuracy": d["knn_accuracy"],
                   "MMD² (active units)": d["mmd2_active"], "kNN accuracy (active units)": d["knn_accuracy_active"],
                   "mean std": d["mean_std"]}
            for name, d in report["distances"].items()}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "latents vs the held-out aggregate posterior"
    u = report["usage"]
    table.attrs["usage"] = {"crystals": u["n"], "active units": f"{u['active_units']} of {u['latent_dim']}",
                            "mean std of μ": u["mu_spread"], "mean σ": u["posterior_sigma"], "KL (nats)": u["kl"]}
    table.attrs["caption"] = ("MMD² ≈ 0 and kNN accuracy ≈ 0.5: indistinguishable from the encoded crystals' "
                              "latents; kNN accuracy 1: disjoint. The first row is the yardstick (same distribution)")
    return table



def _mmd2(x: torch.Tensor, y: torch.Tensor, bandwidth: float) -> float:
    """Unbiased squared MMD with the Gaussian kernel exp(−‖a − b‖² / 2h²) between ``(n, D)`` and ``(m, D)``."""
    def kernel(a, b):
        return torch.exp(-torch.cdist(a, b).pow(2) / (2 * bandwidth**2))

    n, m = x.shape[0], y.shape[0]
    kxx, kyy = kernel(x, x), kernel(y, y)
    within = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1)) + (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(within - 2 * kernel(x, y).mean())


def two_sample_distance(reference: torch.Tensor, samples: torch.Tensor, neighbours: int = 5, seed: int = 0) -> dict:
    """How distinguishable two sets of latents are, e.g. encodings of held-out crystals and prior samples.

    Args:
        reference, samples: ``(n, D)`` and ``(m, D)`` latents (the larger set is subsampled to the smaller size).
        neighbours: k of the nearest-neighbour classifier.
        seed: seeds the subsampling and the split.

    Returns:
        ``mmd2``: unbiased squared maximum mean discrepancy with a Gaussian kernel whose bandwidth is the median
        distance between the reference latents (0 for identical distributions, up to ~2); ``knn_accuracy``: the
        held-out accuracy of a k-nearest-neighbour classifier told to separate the sets, trained on one half and
        scored on the other (0.5: indistinguishable, 1.0: disjoint); ``n``: latents per set used.
    """
    from sklearn.neighbors import KNeighborsClassifier

    gen = torch.Generator().manual_seed(seed)
    n = min(reference.shape[0], samples.shape[0])
    x = reference.double().cpu()[torch.randperm(reference.shape[0], generator=gen)[:n]]
    y = samples.double().cpu()[torch.randperm(samples.shape[0], generator=gen)[:n]]
    bandwidth = float(torch.cdist(x, x)[torch.triu_indices(n, n, 1).unbind()].median())
    data = torch.cat([x, y]).numpy()
    labels = torch.cat([torch.zeros(n), torch.ones(n)]).numpy()
    order = torch.randperm(2 * n, generator=gen).numpy()
    fit, held = order[: n], order[n:]
    knn = KNeighborsClassifier(n_neighbors=neighbours).fit(data[fit], labels[fit])
    return {"mmd2": _mmd2(x, y, bandwidth), "knn_accuracy": float(knn.score(data[held], labels[held])), "n": n}


def denoising_by_level(model, crystals: CrystalTensors, levels: tuple[int, ...] = (0, 10, 20, 30, 40, 49),
                       seed: int = 0, batch_size: int = 256) -> dict:
    """Coordinate-score loss and decoder type accuracy with every crystal noised at each of ``levels``
    (indices into the model's 50 noise levels, 0 = largest σ), z = μ, the true lattice.

    Returns:
        ``{"sigma": [...], "coord": [...], "type_accuracy": [...]}`` in the order of ``levels``.
    """
    out = {"sigma": [], "coord": [], "type_accuracy": []}
    with _evaluating(model):
        for level in levels:
            coord = accuracy = count = 0.0
            for b, batch in enumerate(_batches(model, crystals, batch_size)):
                torch.manual_seed(seed * 1_000_003 + b)
                terms = model(batch, teacher_forcing=True, levels=level, sample=False)
                n = batch.num_atoms.numel()
                coord, accuracy, count = coord + n * float(terms["coord"]), accuracy + n * float(
                    terms["type_accuracy"]), count + n
            out["sigma"].append(float(model.sigmas[level]))
            out["coord"].append(coord / count)
            out["type_accuracy"].append(accuracy / count)
    return out


class ProbeCallback(L.Callback):
    """At the end of a validation run, every ``every_n_epochs`` epochs (and at the first one), log the probe
    match rate of each probe set (``probe_<name>_match_rate``, ``…_composition_accuracy``) and the latent usage
    of the first set; the values stay in ``trainer.callback_metrics`` so a checkpoint callback listed after this
    one can select on them. Its state (the probe history and the last probe's metrics, which decide when the next
    probe runs and what a selection on them sees until then) is kept in Lightning's checkpoints, so a resumed run
    probes and selects as the uninterrupted one.

    Args:
        probes: ``{name: CrystalTensors}``, e.g. ``{"train": 64 training crystals, "val": 64 validation ones}``.
        every_n_epochs: how often; options: keyword arguments of :func:`probe_reconstruction` (``sampler``,
            ``latent``, ``seed`` …).
    """

    def __init__(self, probes: dict[str, CrystalTensors], every_n_epochs: int = 10, **options):
        self.probes, self.every, self.options = probes, every_n_epochs, options
        self.history: list[dict] = []
        self._last: dict[str, float] = {}

    def state_dict(self) -> dict:
        return {"history": self.history, "last": self._last}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history, self._last = list(state_dict["history"]), dict(state_dict["last"])

    def _probe(self, trainer, module) -> dict[str, float]:
        model = module.inference_model
        row = {}
        for name, crystals in self.probes.items():
            result = probe_reconstruction(model, crystals, **self.options)
            row[f"probe_{name}_match_rate"] = result["match_rate"]
            row[f"probe_{name}_composition_accuracy"] = result["composition_accuracy"]
        usage = latent_usage(model, next(iter(self.probes.values())))
        row.update(mu_spread=usage["mu_spread"], posterior_sigma=usage["posterior_sigma"], kl=usage["kl"],
                   active_units=usage["active_units"])
        metrics = {k: float(v) for k, v in row.items() if v is not None and math.isfinite(float(v))}
        self.history.append({"epoch": trainer.current_epoch, "step": trainer.global_step, **metrics})
        if trainer.logger is not None:
            trainer.logger.log_metrics(metrics, step=trainer.global_step)
        return metrics

    def on_validation_end(self, trainer, module) -> None:
        if trainer.sanity_checking:
            return
        if not self._last or (trainer.current_epoch + 1) % self.every == 0:
            self._last = self._probe(trainer, module)
        for k, v in self._last.items():
            trainer.callback_metrics[k] = torch.tensor(v)
