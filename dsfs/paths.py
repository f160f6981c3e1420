"""Dataset paths: the one place that decides what a path inside a version may look like.

A dataset path is relative, uses ``/``, and has no empty, ``.`` or ``..`` components, no NUL and
no component longer than 255 bytes. Every path from a user or from a manifest read from the store
passes through ``check_path`` before it is used.

Names are bytes, as on Linux: any byte but ``/`` and NUL. Inside dsfs a path is a ``str`` holding
those bytes decoded as UTF-8 with PEP 383's ``surrogateescape`` (a byte that is not part of valid
UTF-8 becomes the lone surrogate U+DC80..U+DCFF), so valid UTF-8 names read as themselves and every
other name still maps to exactly one ``str`` and back. ``name_bytes``/``name_str`` convert at the
edges (FUSE, SQLite); docs/FORMAT.md says how manifests and indexes carry such names.
"""

from __future__ import annotations

import errno

from .errors import InvalidInput

MAX_COMPONENT_BYTES = 255


class NameTooLong(InvalidInput):
    errno = errno.ENAMETOOLONG


def name_bytes(name: str) -> bytes:
    """The bytes a dataset name or path stands for (raises UnicodeEncodeError for a str that
    no bytes decode to, which ``check_path`` rejects)."""
    return name.encode("utf-8", "surrogateescape")


def name_str(raw: bytes) -> str:
    """The dataset name or path for raw bytes: the inverse of ``name_bytes``."""
    return raw.decode("utf-8", "surrogateescape")


def check_name_length(name: str) -> str:
    """Return ``name`` (one path component) if it fits in 255 bytes, else raise NameTooLong."""
    if len(name) > MAX_COMPONENT_BYTES // 4 and len(name_bytes(name)) > MAX_COMPONENT_BYTES:
        raise NameTooLong(f"name longer than 255 bytes: {name[:40]!r}...")
    return name


def _is_bytes_name(path: str) -> bool:
    """Is ``path`` the one decoding of some bytes? (Valid UTF-8, or PEP 383 escapes of bytes
    that are not; never a surrogate of another kind, or escapes that spell valid UTF-8.)"""
    try:
        path.encode("utf-8")
        return True
    except UnicodeEncodeError:
        pass
    try:
        return name_str(name_bytes(path)) == path
    except UnicodeEncodeError:
        return False


def check_path(path: str, *, what: str = "path") -> str:
    """Return ``path`` if it is a valid dataset path, else raise InvalidInput naming it."""
    # Fast path (manifests hold millions of paths): plain substring tests, no splitting. No name
    # starts with '.' (so none is '.' or '..'), and no name can pass 255 bytes (a character is at
    # most 4 bytes, an ASCII one 1).
    if (type(path) is str and path and path[0] != "/" and path[0] != "." and path[-1] != "/"
            and "/." not in path and "//" not in path and "\x00" not in path
            and (path.isascii() and len(path) <= MAX_COMPONENT_BYTES
                 or len(path) <= MAX_COMPONENT_BYTES // 4 and _is_bytes_name(path))):
        return path
    if not isinstance(path, str) or path == "":
        raise InvalidInput(f"{what} must not be empty")
    if "\x00" in path:
        raise InvalidInput(f"{what} contains a nul byte: {path!r}")
    if not _is_bytes_name(path):
        raise InvalidInput(f"{what} holds a character that stands for no bytes: {path!r}")
    if path.startswith("/"):
        raise InvalidInput(f"{what} must be relative, not absolute: {path!r}")
    for part in path.split("/"):
        if part == "":
            raise InvalidInput(f"{what} has an empty component: {path!r}")
        if part in (".", ".."):
            raise InvalidInput(f"{what} must not contain '{part}' components: {path!r}")
        if len(name_bytes(part)) > MAX_COMPONENT_BYTES:
            raise NameTooLong(f"{what} has a component longer than 255 bytes: {path!r}")
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
