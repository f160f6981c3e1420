"""The local cache of fetched file bytes (see ``blocks`` for the design)."""

from .blocks import BlockCache, default_cache_size, open_cache
from .readahead import ReadState

__all__ = ["BlockCache", "ReadState", "default_cache_size", "open_cache"]
