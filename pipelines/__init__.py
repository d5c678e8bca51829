"""The `ue` product around ue_core: sources and releases (local or S3), MLflow tracking, the Ray engine,
sweeps, victims and the command line. Needs the ``[ray]`` extra for everything that tracks or runs on Ray."""

from importlib import metadata

DISTRIBUTION = "unlearnable-beo"
__version__ = metadata.version(DISTRIBUTION)
