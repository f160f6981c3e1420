"""dsfs: mount versions of datasets as ordinary folders."""

__version__ = "0.1.0"
