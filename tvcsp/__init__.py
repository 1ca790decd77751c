"""tvcsp: TransVAE-CSP — an equivariant-transformer crystal VAE with CDVAE's decoder and metrics.

Modules, one per concept (importing ``tvcsp`` loads none of them):

* :mod:`tvcsp.data` — datasets, processed cache, scalers, statistics; :mod:`tvcsp.geometry` — periodic
  graphs in plain torch; :mod:`tvcsp.rbf` / :mod:`tvcsp.rbf_selection` — radial bases and their comparison;
* :mod:`tvcsp.encoder` — the equivariant transformer; :mod:`tvcsp.symmetry` — the invariance checker;
* :mod:`tvcsp.decoder` — GemNet-dT; :mod:`tvcsp.vae` — the model and its losses; :mod:`tvcsp.train`,
  :mod:`tvcsp.checkpoint` — training and model files;
* :mod:`tvcsp.sampling`, :mod:`tvcsp.tasks` — Langevin decoding, reconstruction and generation runs;
  :mod:`tvcsp.sampler_cost` — the sampler's quality against decoder calls, with the spread between seeds;
* :mod:`tvcsp.metrics` — CDVAE's evaluation metrics; :mod:`tvcsp.latent` — latent-space tools;
  :mod:`tvcsp.viz` — figures; :mod:`tvcsp.diagnostics` — learning diagnostics and the probe match rate;
* :mod:`tvcsp.pretrained` — the models shipped in ``models/``: ``tvcsp.load_pretrained("perov_5")``.
"""

from ._version import __version__

__all__ = ["__version__", "load_pretrained"]


def load_pretrained(name: str = "perov_5", map_location="cpu"):
    """The shipped model ``name`` in eval mode (see :mod:`tvcsp.pretrained`); imports torch on first use."""
    from .pretrained import load_pretrained as load

    return load(name, map_location)
