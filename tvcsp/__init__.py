"""tvcsp: TransVAE-CSP — an equivariant-transformer crystal VAE with CDVAE's decoder and metrics.

Modules, one per concept (importing ``tvcsp`` loads none of them):

* :mod:`tvcsp.data` — datasets, processed cache, scalers, statistics; :mod:`tvcsp.geometry` — periodic
  graphs in plain torch; :mod:`tvcsp.rbf` / :mod:`tvcsp.rbf_selection` — radial bases and their comparison;
* :mod:`tvcsp.encoder` — the equivariant transformer; :mod:`tvcsp.symmetry` — the invariance checker;
* :mod:`tvcsp.decoder` — GemNet-dT; :mod:`tvcsp.vae` — the model and its losses; :mod:`tvcsp.train`,
  :mod:`tvcsp.checkpoint` — training and model files;
* :mod:`tvcsp.sampling`, :mod:`tvcsp.tasks` — Langevin decoding, reconstruction and generation runs;
* :mod:`tvcsp.metrics` — CDVAE's evaluation metrics; :mod:`tvcsp.latent` — latent-space tools;
  :mod:`tvcsp.viz` — figures.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tvcsp")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
