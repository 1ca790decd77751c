"""The installed package's version (``0.0.0+unknown`` in a source tree that is not installed)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tvcsp")
except PackageNotFoundError:
    __version__ = "0.0.0+unknown"
