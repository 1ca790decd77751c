"""tvcsp: TransVAE-CSP — an equivariant-transformer crystal VAE with CDVAE's decoder and metrics.

Subpackages and modules: :mod:`tvcsp.data` (datasets, cache, scalers, statistics), :mod:`tvcsp.geometry`
(periodic graphs in plain torch), :mod:`tvcsp.rbf` (radial bases).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tvcsp")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
