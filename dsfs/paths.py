"""Dataset paths: the one place that decides what a path inside a version may look like.

A dataset path is relative, uses ``/``, and has no empty, ``.`` or ``..`` components, no NUL and
no component longer than 255 bytes. Every path from a user or from a manifest read from the store
passes through ``check_path`` before it is used.
"""

from __future__ import annotations

from .errors import InvalidInput

MAX_COMPONENT_BYTES = 255


def check_path(path: str, *, what: str = "path") -> str:
    """Return ``path`` if it is a valid dataset path, else raise InvalidInput naming it."""
    # Fast path (manifests hold millions of paths): plain substring tests, no splitting.
    if (isinstance(path, str) and path and len(path) <= MAX_COMPONENT_BYTES // 4
            and path[0] != "/" and path[-1] != "/" and "\x00" not in path and "//" not in path
            and "/./" not in f"/{path}/" and "/../" not in f"/{path}/"):
        return path
    if not isinstance(path, str) or path == "":
        raise InvalidInput(f"{what} must not be empty")
    if "\x00" in path:
        raise InvalidInput(f"{what} contains a nul byte: {path!r}")
    if path.startswith("/"):
        raise InvalidInput(f"{what} must be relative, not absolute: {path!r}")
    for part in path.split("/"):
        if part == "":
            raise InvalidInput(f"{what} has an empty component: {path!r}")
        if part in (".", ".."):
            raise InvalidInput(f"{what} must not contain '{part}' components: {path!r}")
        if len(part.encode("utf-8", "surrogateescape")) > MAX_COMPONENT_BYTES:
            raise InvalidInput(f"{what} has a component longer than 255 bytes: {path!r}")
    return path


def normalize_dest(dest: str | None) -> str:
    """Normalize a user-given destination folder ('', '.', 'a/b/', '/a') to '' or 'a/b'."""
    if dest is None:
        return ""
    dest = dest.strip("/")
    if dest in ("", "."):
        return ""
    parts = [p for p in dest.split("/") if p not in ("", ".")]
    return check_path("/".join(parts), what="destination")


def join(dest: str, rel: str) -> str:
    return f"{dest}/{rel}" if dest else rel


def parent_of(path: str) -> str:
    """'a/b/c' -> 'a/b'; 'a' -> '' (the root)."""
    head, _, _ = path.rpartition("/")
    return head


def name_of(path: str) -> str:
    return path.rpartition("/")[2]


def ancestors(path: str):
    """Yield the proper ancestor directories of ``path``, shallowest first ('a', 'a/b')."""
    idx = path.find("/")
    while idx != -1:
        yield path[:idx]
        idx = path.find("/", idx + 1)


def subtree_bounds(path: str) -> tuple[str, str]:
    """Half-open string range [lo, hi) holding exactly the paths strictly below ``path``."""
    return path + "/", path + "0"  # '0' is the character after '/'
