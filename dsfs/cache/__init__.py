"""The local cache of fetched file bytes (see ``blocks`` for the design)."""

from .blocks import BlockCache, ReadState, default_cache_size

__all__ = ["BlockCache", "ReadState", "default_cache_size"]
