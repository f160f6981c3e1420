"""Object stores: a local folder (default) or S3 through boto3, behind one interface."""

from __future__ import annotations

from ..config import Settings
from .base import ObjectInfo, ObjectStore
from .local import LocalStore

__all__ = ["ObjectInfo", "ObjectStore", "LocalStore", "open_store"]


def open_store(url: str, settings: Settings | None = None, *, create: bool = False) -> ObjectStore:
    """``s3://bucket/prefix`` opens an S3 store; ``memory://NAME`` this process's in-memory store
    of that name (tests); anything else is a local folder, made if ``create`` (a missing bucket is
    never made: that is the administrator's choice)."""
    if url.startswith("s3://"):
        from .s3 import S3Store  # boto3 is slow to import; only pay for it when used

        return S3Store.from_url(url, settings or Settings())
    if url.startswith("memory://"):
        from .memory import named

        return named(url)
    if "://" in url:
        from ..errors import InvalidInput

        raise InvalidInput(f"unsupported store url: {url!r} (use a folder or s3://bucket/prefix)")
    return LocalStore(url, create=create)
