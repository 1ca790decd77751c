"""Latent-space tools for notebook 04: encoding, 2-D projections, labels, interpolation, decoding and
CDVAE's property optimisation task (docs/sampling.md#property-optimisation) with its success rates.

Shapes: ``B`` crystals or starting points, ``D`` latent size, ``S`` interpolation steps. Latents are float32
tensors on the model's device; projections and labels are numpy / pandas on the CPU.

Decoding uses a *fast* sampler by default (:data:`~tvcsp.sampling.FAST_SAMPLER`: the ancestral update, 2 steps per
noise level, 100 decoder evaluations per crystal, compositions kept; docs/sampling.md). CDVAE's setting
(:data:`~tvcsp.sampling.CDVAE_SAMPLER`, 100 Langevin steps per level, 5,000 evaluations) is what CDVAE's numbers
use. Both are :class:`~tvcsp.sampling.SamplerSettings`, importable from here too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .data import CrystalBatches, CrystalTensors, DatasetInfo, cdvae_settings
from .sampling import CDVAE_SAMPLER, FAST_SAMPLER, SamplerSettings, decode
from .tasks import to_structures
from .vae import reparameterise

if TYPE_CHECKING:
    from pymatgen.core import Structure

    from .vae import CrystalVAE

__all__ = ["CDVAE_SAMPLER", "FAST_SAMPLER", "PROJECTIONS", "PROJECTION_PACKAGES", "LinearProjection",
           "OptimizationPath", "SuccessRates", "available_projections", "crystal_labels", "crystal_valid",
           "decode_latents", "encode_posterior", "encode_split", "fit_pca", "interpolate", "neighbourhood",
           "optimize_property", "predict_property", "project", "sr_thresholds", "success_rates"]



# ------------------------------------------------------------------------------------------------ encoding


@torch.no_grad()
def encode_posterior(model: CrystalVAE, crystals: CrystalTensors, batch_size: int = 256
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """The posterior q(z | x) = N(μ, σ²) of every crystal: μ and log σ², each ``(B, D)``, on the model's device."""
    device = next(model.parameters()).device
    parts = [model.encode(batch.to(device), sample=False)[:2] for batch in CrystalBatches(crystals, batch_size,
                                                                                          model.scalers)]
    return torch.cat([mu for mu, _ in parts]), torch.cat([logvar for _, logvar in parts])


def encode_split(model: CrystalVAE, crystals: CrystalTensors, batch_size: int = 256, sample: bool = False,
                 seed: int = 0) -> torch.Tensor:
    """Latents ``(B, D)`` of every crystal: the means μ, or with ``sample`` z = μ + σ·ε (ε seeded by ``seed``)."""
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    out = []
    for batch in CrystalBatches(crystals, batch_size, model.scalers):
        mu, logvar, _ = model.encode(batch.to(device), sample=False)
        out.append(reparameterise(mu, logvar, generator) if sample else mu)
    return torch.cat(out)


PROJECTIONS = ("pca", "tsne", "umap")
PROJECTION_PACKAGES = {"tsne": ("sklearn", "scikit-learn"), "umap": ("umap", "umap-learn")}
"""(module, distribution) each nonlinear projection needs: scikit-learn is a core dependency, umap-learn is only
in the ``notebooks`` and ``dev`` extras (``pip install -e ".[notebooks]"``)."""


def available_projections(requested: Sequence[str] | None = None) -> tuple[list[str], str | None]:
    """The projections to draw and a one-line note on those left out (``None`` when none is).

    ``requested=None`` means every one of :data:`PROJECTIONS` whose library is installed (no note: nothing was
    asked for). Requested projections whose library is missing are dropped and named in the note; if none is
    left, PCA is used. An unknown name is a ``ValueError``.
    """
    import importlib.util

    unknown = [m for m in requested or () if m not in PROJECTIONS]
    if unknown:
        raise ValueError(f"unknown projection(s) {unknown}; expected any of {PROJECTIONS}")
    wanted = list(PROJECTIONS if requested is None else dict.fromkeys(requested))
    missing = [m for m in wanted if m in PROJECTION_PACKAGES
               and importlib.util.find_spec(PROJECTION_PACKAGES[m][0]) is None]
    chosen = [m for m in wanted if m not in missing] or ["pca"]
    if not missing or requested is None:
        return chosen, None
    names = ", ".join(f"{m} ({PROJECTION_PACKAGES[m][1]} is not installed)" for m in missing)
    return chosen, f"skipping {names}: pip install -e '.[notebooks]' adds it; drawing {', '.join(chosen)}"


def _as_array(latents: torch.Tensor | np.ndarray) -> np.ndarray:
    return np.asarray(latents.detach().cpu() if isinstance(latents, torch.Tensor) else latents, dtype=np.float64)


@dataclass(frozen=True)
class LinearProjection:
    """A fitted 2-D PCA that places new latents on the same map (:func:`fit_pca`).

    Attributes:
        mean: ``(D,)`` mean of the latents it was fitted on.
        axes: ``(2, D)`` orthonormal principal directions, each signed so that its largest-magnitude loading is
            positive (deterministic).
        explained: fraction of the fitted latents' total variance the two axes hold.
    """

    mean: np.ndarray
    axes: np.ndarray
    explained: float

    def transform(self, latents: torch.Tensor | np.ndarray) -> np.ndarray:
        """``(B, D)`` latents → ``(B, 2)`` map coordinates (same units as the latents)."""
        return (_as_array(latents) - self.mean) @ self.axes.T


def fit_pca(latents: torch.Tensor | np.ndarray) -> LinearProjection:
    """The two principal axes of latents ``(B, D)`` (centred SVD), as a :class:`LinearProjection` that can map
    other latents (prior samples, generated crystals) onto the map of these; ``project(x, "pca")`` is
    ``fit_pca(x).transform(x)``."""
    x = _as_array(latents)
    mean = x.mean(0)
    _, singular, vt = np.linalg.svd(x - mean, full_matrices=False)
    axes = vt[:2]
    signs = np.sign(axes[np.arange(len(axes)), np.abs(axes).argmax(1)])
    total = float((singular**2).sum())
    return LinearProjection(mean, axes * signs[:, None], float((singular[:2] ** 2).sum()) / total if total else 0.0)


def project(latents: torch.Tensor | np.ndarray, method: str = "pca", seed: int = 0,
            perplexity: float = 30.0, n_neighbors: int = 15) -> np.ndarray:
    """2-D projection ``(B, 2)`` of latents ``(B, D)``.

    ``pca``: centred SVD, each axis' sign fixed so that its largest-magnitude loading is positive (deterministic).
    ``tsne``: scikit-learn t-SNE (PCA initialisation, ``random_state=seed``; perplexity capped at (B − 1) / 3).
    ``umap``: umap-learn's UMAP (``n_neighbors`` capped at B − 1, ``random_state=seed``, hence single-threaded
    and reproducible); the first call in a process spends ~30 s compiling umap's numba kernels. numba's OpenMP
    layer sets the OpenMP thread count torch shares to all cores; torch's is restored afterwards (left at 2 on a
    busy 2-core machine, the decoder ran 20–35× slower).
    """
    x = _as_array(latents)
    if method == "pca":
        return fit_pca(x).transform(x)
    if method == "tsne":
        from sklearn.manifold import TSNE

        tsne = TSNE(2, perplexity=min(perplexity, (len(x) - 1) / 3), init="pca", random_state=seed)
        return tsne.fit_transform(x)
    if method == "umap":
        import umap

        threads = torch.get_num_threads()  # numba's OpenMP layer resets the shared runtime's thread count
        try:
            reducer = umap.UMAP(n_components=2, n_neighbors=min(n_neighbors, len(x) - 1), random_state=seed,
                                n_jobs=1)
            return reducer.fit_transform(x).astype(np.float64)
        finally:
            torch.set_num_threads(threads)
    raise ValueError(f"unknown projection {method!r}; expected one of {PROJECTIONS}")


def _spacegroup(structure: Structure, symprec: float) -> tuple[str, str, int]:
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        sga = SpacegroupAnalyzer(structure, symprec=symprec)
        return sga.get_crystal_system(), sga.get_space_group_symbol(), sga.get_space_group_number()
    except Exception:  # noqa: BLE001 - spglib gives up on degenerate cells: label them unknown
        return "unknown", "unknown", 0


def crystal_labels(crystals: CrystalTensors | Sequence[Structure], elements: Sequence[str] = (),
                   symprec: float = 0.1) -> pd.DataFrame:
    """One row per crystal: ``id``, ``formula`` (reduced), ``num_atoms``, ``property`` (NaN for bare Structures),
    ``crystal_system``, ``spacegroup`` (symbol), ``spacegroup_number`` (SpacegroupAnalyzer with ``symprec`` Å)
    and a bool column ``has_<El>`` per element of ``elements``."""
    if isinstance(crystals, CrystalTensors):
        structures = [crystals.to_structure(i) for i in range(len(crystals))]
        ids, props = list(crystals.material_ids), crystals.y.tolist()
    else:
        structures, ids, props = list(crystals), [str(i) for i in range(len(crystals))], [np.nan] * len(crystals)
    rows = []
    for sid, prop, s in zip(ids, props, structures, strict=True):
        system, symbol, number = _spacegroup(s, symprec)
        present = {el.symbol for el in s.composition.elements}
        rows.append({"id": sid, "formula": s.composition.reduced_formula, "num_atoms": len(s), "property": prop,
                     "crystal_system": system, "spacegroup": symbol, "spacegroup_number": number,
                     **{f"has_{el}": el in present for el in elements}})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------- moving in latent space


def interpolate(z0: torch.Tensor, z1: torch.Tensor, t: int | Sequence[float] | torch.Tensor,
                method: str = "linear") -> torch.Tensor:
    """``(S, D)`` points between ``z0`` and ``z1`` (both ``(D,)``) at fractions ``t`` (``S`` values in [0, 1], or an
    int ``S`` ≥ 2 for equally spaced points with both endpoints); t = 0 and t = 1 give exactly ``z0`` and ``z1``.

    ``linear``: (1 − t)·z0 + t·z1. ``slerp``: along the great circle between the two directions, with the norm
    following the sines as well (linear when the vectors are nearly parallel).
    """
    if isinstance(t, int):
        if t < 2:
            raise ValueError("an int t counts the points including both endpoints: at least 2")
        t = torch.linspace(0.0, 1.0, t)
    t = torch.as_tensor(t, dtype=z0.dtype, device=z0.device).reshape(-1, 1)
    cos = torch.dot(z0, z1) / (z0.norm() * z1.norm()).clamp_min(1e-12)
    omega = torch.arccos(cos.clamp(-1.0, 1.0))
    if method == "slerp" and omega > 1e-4:
        path = (torch.sin((1 - t) * omega) * z0 + torch.sin(t * omega) * z1) / torch.sin(omega)
    elif method in ("linear", "slerp"):
        path = (1 - t) * z0 + t * z1
    else:
        raise ValueError(f"unknown interpolation {method!r}; expected 'linear' or 'slerp'")
    return torch.where(t == 0, z0, torch.where(t == 1, z1, path))


def neighbourhood(z: torch.Tensor, n: int, radius: float = 0.5, seed: int = 0) -> torch.Tensor:
    """``n`` points ``(n, D)`` around ``z`` ``(D,)``: z + radius·ε, ε ~ N(0, I) (seeded; the prior has unit std)."""
    generator = torch.Generator(device=z.device).manual_seed(seed)
    return z + radius * torch.randn((n, z.numel()), generator=generator, device=z.device, dtype=z.dtype)


@torch.no_grad()
def predict_property(model: CrystalVAE, z: torch.Tensor) -> torch.Tensor:
    """The property head's prediction ``(B,)`` in the dataset's physical unit for latents ``(B, D)``."""
    if model.fc_property is None:
        raise ValueError("this model has no property head (train it with predict_property=True)")
    return model.scalers.prop.inverse_transform(model.fc_property(z).squeeze(-1).double()).float()


@torch.no_grad()
def decode_latents(model: CrystalVAE, z: torch.Tensor, sampler: SamplerSettings = FAST_SAMPLER, seed: int = 0,
                   shared_noise: bool = True, progress: bool = False) -> list[Structure | None]:
    """Decode latents ``(B, D)`` into pymatgen Structures (None where a crystal cannot be built).

    ``sampler``: the :class:`~tvcsp.sampling.SamplerSettings` (default the fast sampler).
    ``shared_noise=True`` decodes each latent on its own with a generator seeded by ``seed``: the crystal is then
    a function of z alone (same point → same crystal; smooth interpolation strips). ``False`` decodes the batch
    at once with one generator (faster; the result of a latent depends on the rest of the batch).
    """
    groups = [z[i : i + 1] for i in range(len(z))] if shared_noise else [z]
    structures = []
    for group in groups:
        samples = decode(model, group, sampler, seed=seed, progress=progress)
        structures += to_structures({k: v.unsqueeze(0).cpu() for k, v in samples.items()})
    return structures


def crystal_valid(structure: Structure | None) -> bool:
    """CDVAE validity of one crystal: constructed, structurally valid and SMACT-valid (docs/metrics.md#validity)."""
    from .metrics import composition_validity, reduced_composition, structure_validity

    if structure is None or len(structure) == 0:
        return False
    return structure_validity(structure) and composition_validity(*reduced_composition(structure.atomic_numbers))


# -------------------------------------------------------------------------------- property optimisation


@dataclass
class OptimizationPath:
    """Result of :func:`optimize_property` for ``B`` starting points and ``K`` decoded steps.

    Attributes:
        predicted: ``(steps + 1, B)`` the property head's prediction (physical unit) before step 0 and after
            every Adam step.
        decode_steps: the ``K`` step indices whose z was saved (and decoded).
        z: ``(K, B, D)`` latents at those steps.
        structures: ``K`` decoded sets of ``B`` crystals (empty when decoding was off).
    """

    predicted: torch.Tensor
    decode_steps: list[int]
    z: torch.Tensor
    structures: list[list[Structure | None]] = field(default_factory=list)


def optimize_property(model: CrystalVAE, z0: torch.Tensor, steps: int = 5000, lr: float = 1e-3,
                      decode_every: int = 555, decode_sets: bool = True, sampler: SamplerSettings = FAST_SAMPLER,
                      seed: int = 0, progress: bool = True) -> OptimizationPath:
    """CDVAE's "opt" task (docs/sampling.md#property-optimisation): Adam on z (model frozen) minimising
    mean(fc_property(z)) in standardised units; after step i, z is saved and decoded when i mod ``decode_every`` = 0 and
    at the last step.

    CDVAE: ``z0`` = 100 sampled latents of the first test batch (or z ~ N(0, I)), 5,000 steps, lr 1e-3,
    decode_every 555 = 5000 // 9 → 11 decoded sets, decoded with :data:`CDVAE_SAMPLER`. Decoding here is batched
    (``shared_noise=False``) with ``sampler`` (default the fast sampler) and a generator seeded per set.
    """
    if model.fc_property is None:
        raise ValueError("property optimisation needs a model trained with predict_property=True")
    requires = [p.requires_grad for p in model.parameters()]
    model.eval().requires_grad_(False)
    z = z0.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([z], lr=lr)
    predicted, decode_steps, saved, structures = [predict_property(model, z.detach())], [], [], []
    try:
        for i in tqdm(range(steps), desc="optimising z", disable=not progress):
            optimizer.zero_grad()
            model.fc_property(z).mean().backward()
            optimizer.step()
            predicted.append(predict_property(model, z.detach()))
            if i % decode_every == 0 or i == steps - 1:
                decode_steps.append(i)
                saved.append(z.detach().clone())
                if decode_sets:
                    structures.append(decode_latents(model, saved[-1], sampler, seed + i, shared_noise=False))
    finally:
        for p, flag in zip(model.parameters(), requires, strict=True):
            p.requires_grad_(flag)
    return OptimizationPath(torch.stack(predicted).cpu(), decode_steps, torch.stack(saved).cpu(), structures)


def sr_thresholds(dataset: str | DatasetInfo) -> tuple[float, float, float]:
    """SR5/SR10/SR15 property thresholds of a dataset with CDVAE's settings (:class:`~tvcsp.data.CDVAESettings`:
    the 5th, 10th and 15th percentile of its property, eV/atom; the reduced variants share their dataset's); a
    one-line ``KeyError`` for any other."""
    return cdvae_settings(dataset, "success-rate thresholds").sr_thresholds


@dataclass
class SuccessRates:
    """SR5/SR10/SR15 of a property optimisation run (docs/metrics.md#success-rates).

    Attributes:
        rates: ``{"SR5": …, "SR10": …, "SR15": …}``, fractions of the ``B`` starting points.
        properties: ``(K, B)`` predicted property of every valid decoded crystal, NaN for the others.
        valid_fraction: fraction of the ``K·B`` decoded crystals that are valid.
    """

    rates: dict[str, float]
    properties: np.ndarray
    valid_fraction: float


def success_rates(decoded_sets: Sequence[Sequence[Structure | None]],
                  predictor: Callable[[list[Structure]], np.ndarray], dataset: str,
                  valid: Callable[[Structure | None], bool] = crystal_valid) -> SuccessRates:
    """Success rates SRx: the fraction of starting points whose best (minimum) predicted property among their
    *valid* decoded crystals is ≤ the dataset's x-th percentile threshold (:func:`sr_thresholds`, x = 5, 10, 15).

    Args:
        decoded_sets: ``K`` sets of ``B`` crystals (set k, starting point b), e.g. :attr:`OptimizationPath.structures`.
        predictor: structures → ``(n,)`` properties in the dataset's unit (e.g. ``PropertyModel.predict``); it is
            called once, on the valid crystals only. NaN predictions count as missing.
        valid: per-crystal validity (default :func:`crystal_valid`).
    """
    flags = np.array([[valid(s) for s in row] for row in decoded_sets], dtype=bool).reshape(len(decoded_sets), -1)
    props = np.full(flags.shape, np.nan)
    ks, bs = flags.nonzero()
    if len(ks):
        props[ks, bs] = np.asarray(predictor([decoded_sets[k][b] for k, b in zip(ks, bs, strict=True)]), float)
    best = np.where(np.isnan(props), np.inf, props).min(axis=0) if props.size else np.full(0, np.inf)
    rates = {f"SR{x}": float((best <= t).mean()) if best.size else 0.0
             for x, t in zip((5, 10, 15), sr_thresholds(dataset), strict=True)}
    return SuccessRates(rates, props, float(flags.mean()) if flags.size else 0.0)
