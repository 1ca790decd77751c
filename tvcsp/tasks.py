"""Reconstruction and generation runs (docs/sampling.md): seeded, resumable batch by batch, labelled outputs.

A run writes into ``out_dir``:

* ``meta.json`` — the settings (compared on every rerun: a mismatch raises :class:`RunMismatchError`), labels
  (dataset, split, checkpoint path; ``devices``, every device the run's batches were sampled on, see
  :func:`~tvcsp.checkpoint.device_name`) and the :func:`~tvcsp.checkpoint.provenance` of every (re)start with
  its ``sampling_device``;
* ``batches/batch_NNNNN.pt`` — one file per finished batch, written atomically; a rerun skips them;
* ``samples.pt`` — the whole run (:func:`load_samples`): per-evaluation tensors with a leading ``num_evals``
  axis — ``num_atoms`` ``(E, B)``, ``lengths``/``angles`` ``(E, B, 3)`` Å/°, ``frac_coords`` ``(E, N, 3)``,
  ``atom_types`` ``(E, N)`` Z, ``valid_lattice`` ``(E, B)`` — plus ``z`` ``(B, latent)``, ``meta``, and for
  reconstruction the ground truth ``gt_*`` (float32, as the model saw it) and ``material_ids``;
* ``cif/`` — one CIF per crystal and ``skipped.json`` (crystals that cannot be built); ``samples.extxyz``.

Each batch draws from its own generator seeded by (seed, batch index), so a resumed run equals an
uninterrupted one (bit for bit on CPU; a run resumed on another device lists both in ``devices``). Only
:func:`write_outputs` and :func:`to_structures` import pymatgen.

Metrics read a run through :func:`to_crystal_arrays` (the crystals as sampled, judged by the metrics' own rules);
:func:`to_structures` is for export and viewing.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from .checkpoint import device_name, model_fingerprint, provenance
from .data import CrystalBatches, batch_ranges
from .errors import UserInputError
from .geometry import lattice_params_to_matrix
from .prior import LatentPrior, resolve_prior, sample_latents
from .reencode import decode_best_of, decode_consistent
from .sampling import CDVAE_SAMPLER, SamplerSettings, decode, make_generator
from .vae import reparameterise

if TYPE_CHECKING:
    from .data import CrystalTensors
    from .vae import CrystalVAE

__all__ = [
    "EVAL_KEYS",
    "SAMPLES_FILE",
    "RunMismatchError",
    "generate",
    "load_samples",
    "model_fingerprint",
    "reconstruct",
    "to_crystal_arrays",
    "to_structures",
    "write_extxyz",
    "write_outputs",
]

SAMPLES_FILE, META_FILE, BATCH_DIR, CIF_DIR, EXTXYZ_FILE = "samples.pt", "meta.json", "batches", "cif", "samples.extxyz"
EVAL_KEYS = ("num_atoms", "lengths", "angles", "frac_coords", "atom_types", "valid_lattice")
SYMBOLS = (  # element symbols, index = Z
    "X", "H", "He", "Li", "Be", "B", "C", "N", "O", "F", "Ne", "Na", "Mg", "Al", "Si", "P", "S", "Cl", "Ar", "K",
    "Ca", "Sc", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn", "Ga", "Ge", "As", "Se", "Br", "Kr", "Rb", "Sr",
    "Y", "Zr", "Nb", "Mo", "Tc", "Ru", "Rh", "Pd", "Ag", "Cd", "In", "Sn", "Sb", "Te", "I", "Xe", "Cs", "Ba", "La",
    "Ce", "Pr", "Nd", "Pm", "Sm", "Eu", "Gd", "Tb", "Dy", "Ho", "Er", "Tm", "Yb", "Lu", "Hf", "Ta", "W", "Re", "Os",
    "Ir", "Pt", "Au", "Hg", "Tl", "Pb", "Bi", "Po", "At", "Rn", "Fr", "Ra", "Ac", "Th", "Pa", "U", "Np", "Pu", "Am",
    "Cm", "Bk", "Cf", "Es", "Fm",
)


class RunMismatchError(UserInputError):
    """``out_dir`` already holds a run made with other settings."""


def batch_seed(seed: int, index: int) -> int:
    """Independent 63-bit seed for batch ``index`` of a run seeded with ``seed``."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def _save(obj, path: Path) -> None:
    """Atomic ``torch.save`` (temporary file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


UNRECORDED_DEVICE = "unrecorded (batches sampled before runs recorded their device)"
"""The ``devices`` entry of a run started before runs recorded their device, once it is resumed."""


def _open_run(out: Path, settings: dict, labels: dict, device: str) -> dict:
    """Create ``meta.json`` or check that the saved settings equal ``settings``; add ``device`` (a
    :func:`~tvcsp.checkpoint.device_name`) to the run's ``devices`` and this start to its provenance; returns the
    meta dict."""
    settings = json.loads(json.dumps(settings))
    path = out / META_FILE
    if path.is_file():
        meta = json.loads(path.read_text())
        saved = meta.get("settings", {})
        if saved.get("task") == "generation":  # runs from before the prior label drew their latents from N(0, I)
            saved.setdefault("prior", "normal")
        diff = {k: (saved.get(k), settings.get(k)) for k in saved.keys() | settings.keys()
                if saved.get(k) != settings.get(k)}
        if diff:
            details = ", ".join(f"{k}: {old!r} there, {new!r} now" for k, (old, new) in sorted(diff.items()))
            raise RunMismatchError(f"{out} holds a run with other settings ({details}); use another output folder")
        if "devices" not in meta:  # a run from before the label: where its batches were sampled is unknown
            meta["devices"] = [UNRECORDED_DEVICE] if any((out / BATCH_DIR).glob("batch_*.pt")) else []
    else:
        meta = {"settings": settings, **labels, "devices": [], "provenance": []}
    if device not in meta["devices"]:
        meta["devices"].append(device)
    meta["provenance"].append({**provenance(), "sampling_device": device,
                               "started": datetime.now(UTC).isoformat(timespec="seconds")})
    out.mkdir(parents=True, exist_ok=True)
    _write_text(path, json.dumps(meta, indent=1))
    return meta


def _sampler_record(sampler: SamplerSettings) -> dict:
    """The sampler's entries in a run's settings: every field, ``composition_prior`` only when it is on and
    ``composition_rule`` only when it is not CDVAE's ``'sample'`` (runs written before they could be chosen have
    no such keys and must still resume)."""
    record = sampler.to_dict()
    if not sampler.composition_prior:
        del record["composition_prior"]
    if sampler.composition_rule == "sample":
        del record["composition_rule"]
    return record


def prior_settings(prior: LatentPrior | None) -> dict:
    """The labels a generation run records for its prior: ``{"prior": "normal"}`` or ``{"prior": "learned",
    "prior_network_calls": …, "prior_fingerprint": …}``, plus ``"prior_smoothing"`` when the prior smooths its
    samples (:attr:`tvcsp.prior.FlowPriorConfig.smoothing`)."""
    if prior is None:
        return {"prior": "normal"}
    labels = {"prior": "learned", "prior_network_calls": prior.network_calls,
              "prior_fingerprint": model_fingerprint(prior)}
    return labels | ({"prior_smoothing": prior.config.smoothing} if prior.config.smoothing > 0 else {})


def _stack_evals(evals: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """``num_evals`` decode results of the same latents → tensors with a leading evaluation axis, on CPU."""
    return {k: torch.stack([e[k] for e in evals]).cpu() for k in EVAL_KEYS}


def _run(
    model: CrystalVAE, out_dir: str | os.PathLike, settings: dict, labels: dict, n_batches: int,
    make_batch: Callable[[int, torch.Generator, torch.device], dict], device: str | torch.device | None,
    progress: bool,
) -> dict:
    """Shared driver: open/check the run, produce the missing batches, assemble, export."""
    if settings["n"] < 1 or settings["batch_size"] < 1 or settings["num_evals"] < 1:
        raise UserInputError(f"nothing to sample: n, batch_size and num_evals must be positive ({settings})")
    out = Path(out_dir)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    meta = _open_run(out, settings, labels, device_name(device))
    model.to(device).eval()
    paths = [out / BATCH_DIR / f"batch_{b:05d}.pt" for b in range(n_batches)]
    todo = [b for b, p in enumerate(paths) if not p.is_file()]
    with tqdm(total=n_batches, initial=n_batches - len(todo), desc=settings["task"], disable=not progress) as bar:
        for b in todo:
            generator = make_generator(batch_seed(settings["seed"], b), device)
            _save(make_batch(b, generator, device), paths[b])
            bar.update(1)
    samples = _assemble([torch.load(p, weights_only=True) for p in paths])
    samples["meta"] = {k: v for k, v in meta.items() if k != "provenance"}
    _save(samples, out / SAMPLES_FILE)
    try:
        write_outputs(out, samples)
    except ImportError as err:  # e.g. a GPU machine without pymatgen: samples.pt is complete, export later
        warnings.warn(f"CIF export skipped ({err}); run tvcsp.tasks.write_outputs({str(out)!r}) later", stacklevel=2)
    return samples


def _assemble(parts: list[dict]) -> dict:
    """Concatenate batch files: evaluation tensors along the crystal/atom axis 1, the rest along axis 0."""
    samples = {}
    for key in parts[0]:
        values = [p[key] for p in parts]
        if isinstance(values[0], torch.Tensor):
            samples[key] = torch.cat(values, dim=1 if key in EVAL_KEYS else 0)
        else:
            samples[key] = [v for part in values for v in part]
    return samples


def reconstruct(
    model: CrystalVAE, crystals: CrystalTensors, out_dir: str | os.PathLike, sampler: SamplerSettings = CDVAE_SAMPLER,
    *, batch_size: int = 256, sample_z: bool = True, num_evals: int = 1, compile: bool = False,
    force_num_atoms: bool = False, force_atom_types: bool = False, best_of: int = 1,
    accept_distance: float | None = None, seed: int = 0,
    device: str | torch.device | None = None, dataset: str | None = None, split: str | None = None,
    checkpoint: str | None = None, progress: bool = True,
) -> dict:
    """Encode every crystal and decode it ``num_evals`` times (docs/sampling.md#reconstruction).

    Args:
        model: a :class:`~tvcsp.vae.CrystalVAE`; crystals: a :class:`~tvcsp.data.CrystalTensors` split.
        out_dir: run folder (see the module docstring).
        sampler: the :class:`~tvcsp.sampling.SamplerSettings` (default CDVAE's), recorded in the run's settings.
        batch_size: crystals per batch (no shuffling).
        sample_z: z = μ + σ·ε as CDVAE does (docs/sampling.md#reconstruction); ``False`` decodes μ.
        force_num_atoms / force_atom_types: decode with the ground-truth N / types.
        best_of: ``k > 1`` decodes k latents drawn from q(z | x) per crystal and keeps the candidate that
            re-encodes nearest μ(x) (:func:`tvcsp.reencode.decode_best_of`; one evaluation only); the run then
            also holds ``candidate`` ``(B,)`` and ``candidate_distance`` ``(B, k)``. 1: CDVAE's one draw.
        accept_distance: with ``best_of``, a crystal stops drawing at its first candidate that re-encodes
            closer than this to μ(x) (the ``accept`` of :func:`~tvcsp.reencode.decode_best_of`).
        dataset, split: labels (default from ``crystals.meta``); checkpoint: path label.
        compile: as in :func:`tvcsp.sampling.decode` (not recorded: a run may be resumed either way).

    Returns:
        the :func:`load_samples` dict.
    """
    if best_of < 1 or (best_of > 1 and num_evals != 1):
        raise UserInputError(f"best_of must be ≥ 1 and, above 1, needs num_evals = 1 (got {best_of}, {num_evals})")
    dataset = dataset or crystals.meta.get("dataset")
    split = split or crystals.meta.get("split")
    batches = CrystalBatches(crystals, batch_size)

    def make_batch(b: int, generator: torch.Generator, device: torch.device) -> dict:
        batch = batches[b].to(device)
        mu, logvar, _ = model.encode(batch, sample=False)
        forced = {"num_atoms": batch.num_atoms if force_num_atoms else None,
                  "atom_types": batch.atom_types if force_atom_types else None}
        gt = {f"gt_{k}": getattr(batch, k).cpu() for k in ("num_atoms", "lengths", "angles", "frac_coords",
                                                            "atom_types")}
        ids = {"material_ids": [crystals.material_ids[i] for i in batches.ranges[b]]}
        if best_of > 1:
            best = decode_best_of(model, mu, logvar, sampler, best_of, accept=accept_distance, sample_z=sample_z,
                                  generator=generator, compile=compile, progress=progress, **forced)
            return {**_stack_evals([best]), "z": best["z"].float().cpu(), "candidate": best["candidate"].cpu(),
                    "candidate_distance": best["distance"].T.float().cpu(), **gt, **ids}
        sampled = reparameterise(mu, logvar, generator)  # drawn for μ too: both then see the same sampler noise
        z = sampled if sample_z else mu
        evals = [decode(model, z, sampler, generator=generator, compile=compile, progress=progress, **forced)
                 for _ in range(num_evals)]
        return {**_stack_evals(evals), "z": z.float().cpu(), **gt, **ids}

    settings = {"task": "reconstruction", "dataset": dataset, "split": split, "n": len(crystals),
                "batch_size": batch_size, "seed": seed, "num_evals": num_evals, "sample_z": sample_z,
                "force_num_atoms": force_num_atoms, "force_atom_types": force_atom_types, **_sampler_record(sampler),
                "model": model_fingerprint(model)}
    if best_of > 1:  # runs written before best-of existed have no such key and must still resume
        settings |= {"best_of": best_of, "accept_distance": accept_distance}
    with torch.no_grad():
        return _run(model, out_dir, settings, {"checkpoint": checkpoint}, len(batches), make_batch, device, progress)


def generate(
    model: CrystalVAE, n: int, out_dir: str | os.PathLike, sampler: SamplerSettings = CDVAE_SAMPLER, *,
    batch_size: int = 500, num_evals: int = 1, compile: bool = False, seed: int = 0,
    prior: str | LatentPrior | None = None, reject_distance: float | None = None, max_draws: int = 10,
    device: str | torch.device | None = None, dataset: str | None = None, checkpoint: str | None = None,
    progress: bool = True,
) -> dict:
    """Decode ``n`` latents of the model's latent size (docs/sampling.md#generation; CDVAE: 20 × 500 = 10,000).

    ``prior``: where the latents come from (:func:`tvcsp.prior.resolve_prior`): by default the model's learned
    prior when it has one, else N(0, I); ``"normal"`` is CDVAE's and the paper's N(0, I), ``"learned"`` insists
    on the model's own. The run's settings record it (``prior``: ``"normal"`` or ``"learned"``, and the prior's
    network calls per latent and fingerprint). ``reject_distance`` τ: a crystal whose decoding reads back farther
    than τ from its latent gets a fresh latent, up to ``max_draws`` (:func:`tvcsp.reencode.decode_consistent`;
    one evaluation only; the run then also holds ``roundtrip_distance`` and ``draws``, ``(B,)`` each). Other
    arguments as in :func:`reconstruct`; ``dataset`` is a label (default: unlabelled).
    """
    if reject_distance is not None and num_evals != 1:
        raise UserInputError(f"reject_distance needs num_evals = 1 (got {num_evals})")
    chosen = resolve_prior(model, prior)
    sizes = [len(r) for r in batch_ranges(n, batch_size)]

    def make_batch(b: int, generator: torch.Generator, device: torch.device) -> dict:
        if reject_distance is not None:
            kept = decode_consistent(model, lambda m: sample_latents(model, m, chosen, generator, device), sizes[b],
                                     sampler, reject_distance, max_draws=max_draws, generator=generator,
                                     compile=compile, progress=progress)
            return {**_stack_evals([kept]), "z": kept["z"].cpu(), "roundtrip_distance": kept["distance"].cpu(),
                    "draws": kept["draws"].cpu()}
        z = sample_latents(model, sizes[b], chosen, generator, device)
        evals = [decode(model, z, sampler, generator=generator, compile=compile, progress=progress)
                 for _ in range(num_evals)]
        return {**_stack_evals(evals), "z": z.cpu()}

    settings = {"task": "generation", "dataset": dataset, "n": n, "batch_size": batch_size, "seed": seed,
                "num_evals": num_evals, **_sampler_record(sampler), **prior_settings(chosen),
                "model": model_fingerprint(model)}
    if reject_distance is not None:  # runs written before round-trip rejection have no such keys
        settings |= {"reject_distance": reject_distance, "max_draws": max_draws}
    with torch.no_grad():
        return _run(model, out_dir, settings, {"checkpoint": checkpoint}, len(sizes), make_batch, device, progress)


def load_samples(out_dir: str | os.PathLike) -> dict:
    """The ``samples.pt`` of a finished run (see the module docstring for the keys and shapes)."""
    return torch.load(Path(out_dir) / SAMPLES_FILE, weights_only=True)


def _crystals(samples: dict, eval_index: int, ground_truth: bool = False):
    """Per crystal: (index, reason it cannot be built or ``None``, Z (n,), frac (n, 3), lengths (3,) Å,
    angles (3,) °) as numpy; ``ground_truth`` reads the ``gt_*`` arrays of a reconstruction run."""
    if ground_truth:
        num_atoms, lengths, angles, frac, types = (samples[f"gt_{k}"] for k in EVAL_KEYS[:5])
        usable = torch.ones_like(num_atoms, dtype=torch.bool)
    else:
        num_atoms, lengths, angles, frac, types, usable = (samples[k][eval_index] for k in EVAL_KEYS)
    lengths, angles, frac = lengths.double(), angles.double(), frac.double().numpy()
    usable = usable & torch.isfinite(lengths).all(-1) & torch.isfinite(angles).all(-1) & (lengths > 0).all(-1)
    ptr = torch.cat([num_atoms.new_zeros(1), num_atoms.long().cumsum(0)]).tolist()
    types, usable, lengths, angles = types.numpy(), usable.tolist(), lengths.numpy(), angles.numpy()
    for i in range(len(usable)):
        reason = "no atoms" if ptr[i + 1] == ptr[i] else None if usable[i] else "invalid lattice"
        yield i, reason, types[ptr[i]:ptr[i + 1]], frac[ptr[i]:ptr[i + 1]], lengths[i], angles[i]


def to_crystal_arrays(samples: dict, eval_index: int = 0, ground_truth: bool = False) -> list:
    """Every crystal of a run as :class:`~tvcsp.metrics.CrystalArrays`, exactly as sampled: unusable lattices and
    empty crystals included, for the metrics to judge by CDVAE's rules (docs/metrics.md#evaluated-crystals; e.g.
    composition validity from the atom types alone). This is what every metric of a run reads.

    ``ground_truth=True`` gives the ``gt_*`` crystals of a reconstruction run instead.
    """
    from .metrics.crystal import split_crystal_arrays

    keys = ("lengths", "angles", "num_atoms", "atom_types", "frac_coords")
    arrays = [samples[f"gt_{k}"] if ground_truth else samples[k][eval_index] for k in keys]
    return split_crystal_arrays(*arrays)


def to_structures(samples: dict, eval_index: int = 0, ground_truth: bool = False) -> list:
    """pymatgen ``Structure`` per crystal (``None`` when it cannot be built: no atoms, unusable lattice).

    ``ground_truth=True`` builds the ``gt_*`` crystals of a reconstruction run instead.
    """
    from pymatgen.core import Lattice, Structure

    structures = []
    for _, reason, types, frac, lengths, angles in _crystals(samples, eval_index, ground_truth):
        structure = None
        if reason is None:
            try:
                lattice = Lattice.from_parameters(*lengths.tolist(), *angles.tolist())
                structure = Structure(lattice, types.tolist(), frac, coords_are_cartesian=False)
            except (ValueError, TypeError, np.linalg.LinAlgError):
                structure = None
        structures.append(structure)
    return structures


def write_extxyz(samples: dict, path: str | os.PathLike) -> int:
    """Every buildable crystal of every evaluation as one extended-XYZ frame (Cartesian Å); returns the count.

    Frames carry ``index`` (crystal) and ``eval`` in their comment line. Written without pymatgen or ASE.
    """
    lines, count = [], 0
    for e in range(samples["num_atoms"].shape[0]):
        for i, reason, types, frac, lengths, angles in _crystals(samples, e):
            if reason is not None:
                continue
            matrix = lattice_params_to_matrix(torch.from_numpy(lengths)[None], torch.from_numpy(angles)[None])[0]
            cart = frac @ matrix.numpy()
            cell = " ".join(f"{x:.8f}" for x in matrix.flatten().tolist())
            lines += [str(len(types)),
                      f'Lattice="{cell}" Properties=species:S:1:pos:R:3 pbc="T T T" index={i} eval={e}']
            lines += [f"{SYMBOLS[t]} {x:.8f} {y:.8f} {z:.8f}" for t, (x, y, z) in zip(types, cart, strict=True)]
            count += 1
    _write_text(Path(path), "\n".join(lines) + "\n" if lines else "")
    return count


def write_outputs(out_dir: str | os.PathLike, samples: dict | None = None) -> list[dict]:
    """Write ``cif/`` (one file per crystal and evaluation), ``cif/skipped.json`` and ``samples.extxyz``.

    CIF names are ``NNNNN.cif`` (``NNNNN_eE.cif`` when there are several evaluations). Returns the skipped
    crystals as ``{"index", "eval", "reason"}`` dicts. Needs pymatgen.
    """
    from pymatgen.io.cif import CifWriter

    out = Path(out_dir)
    samples = samples if samples is not None else load_samples(out)
    folder = out / CIF_DIR
    folder.mkdir(parents=True, exist_ok=True)
    n_evals, skipped = samples["num_atoms"].shape[0], []
    for e in range(n_evals):
        reasons = {i: reason for i, reason, *_ in _crystals(samples, e)}
        for i, structure in enumerate(to_structures(samples, e)):
            if structure is None:
                skipped.append({"index": i, "eval": e, "reason": reasons[i] or "construction failed"})
                continue
            name = f"{i:05d}.cif" if n_evals == 1 else f"{i:05d}_e{e}.cif"
            CifWriter(structure).write_file(folder / name)
    _write_text(folder / "skipped.json", json.dumps(skipped, indent=1))
    write_extxyz(samples, out / EXTXYZ_FILE)
    return skipped
