"""Settings: where the store and the cache are, and the tunables, from flags, env and a file.

Precedence, highest first: command-line flag, environment variable, config file
(``--config``, ``DSFS_CONFIG`` or ``~/.config/dsfs/config.yaml``), built-in default.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

from .errors import InvalidInput

MiB = 1 << 20
GiB = 1 << 30


def _home() -> Path:
    return Path(os.path.expanduser("~"))


@dataclasses.dataclass
class Settings:
    store: str = ""
    cache_dir: str = ""
    chunk_size: int = 512 * MiB
    compression: str = "auto"  # auto | store | deflate
    compress_level: int = 6
    block_size: int = 4 * MiB
    cache_size: int | None = None  # None: min(10 GiB, 80% of free space)
    # A local-folder store is read in place: its bytes are already on a local disk, and copying
    # them into the disk cache would double the disk traffic and space. True caches them anyway.
    cache_local_store: bool = False
    # A local store's published mount prepares files ahead of the reader (order hints, cold reads
    # in folder order) only when true: its reads cost the daemon CPU, not waiting, and on a
    # machine with few cores the preparing competes with the reader for them (bench_mount: an
    # order hint or a folder-order walk ran at half the speed of plain demand reads on 2 cores).
    prefetch_local: bool = False
    # A miss on a small file of a remote store also fetches the small files around it in the
    # same chunk, up to this many bytes in one ranged GET (0: one GET per file).
    neighbour_bytes: int = MiB
    # The kernel's read-ahead on mounts (set when the daemon may: root): sequential reads then
    # reach the daemon in requests of up to 1 MiB instead of 128 KiB. 0 keeps the kernel's.
    read_ahead: int = MiB
    # A writable draft mount makes a closed file durable against power loss only on fsync,
    # `dsfs commit` or unmount (a kill of its daemon loses nothing closed); True fsyncs every
    # close (docs/SEMANTICS.md, Durability of a draft mount).
    durable_close: bool = False
    # A commit of a draft mount that makes no progress (no byte hashed, packed or uploaded) for
    # this many seconds fails, keeping every change pending.
    commit_stall_timeout: float = 300.0
    s3_endpoint: str | None = None
    s3_region: str | None = None
    s3_max_attempts: int = 5
    s3_connect_timeout: float = 5.0
    s3_read_timeout: float = 30.0

    def caches(self, store) -> bool:
        """Whether bytes read from ``store`` are kept in the disk cache."""
        return self.cache_local_store or not store.is_local

    @property
    def index_dir(self) -> str:
        """Where resolved views' index files go (a cache: any of them can be rebuilt)."""
        return os.path.join(self.cache_dir, "index")

    @property
    def state_dir(self) -> Path:
        """Per-user state that must survive cache clears (journals, mount records)."""
        return Path(self.cache_dir) / "state"


def parse_size(text: str | int, *, what: str = "size") -> int:
    """'512M', '10GiB', '4096' -> bytes."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(i?[bB])?\s*", str(text))
    if not m:
        raise InvalidInput(f"{what} is not a size: {text!r}")
    scale = {"": 1, "k": 1 << 10, "m": MiB, "g": GiB, "t": 1 << 40}[m.group(2).lower()]
    return int(float(m.group(1)) * scale)


_FILE_KEYS = {f.name for f in dataclasses.fields(Settings)}


def load_settings(
    *, store: str | None = None, cache_dir: str | None = None, config: str | None = None,
    options: dict | None = None,
) -> Settings:
    """Settings from the flags given, the environment and the config file. ``options`` are
    config keys given in code (as ``fsspec.filesystem("dsfs", block_size="1M")`` does); they
    win over the file and are checked as its keys are."""
    settings = Settings()
    config_path = config or os.environ.get("DSFS_CONFIG")
    if config_path is None:
        default = _home() / ".config" / "dsfs" / "config.yaml"
        config_path = str(default) if default.exists() else None
    if config_path is not None:
        _apply_file(settings, Path(config_path))
    if options:
        _apply(settings, options, "options")
    env_store = os.environ.get("DSFS_STORE")
    env_cache = os.environ.get("DSFS_CACHE_DIR")
    settings.store = store or env_store or settings.store or str(
        _home() / ".local" / "share" / "dsfs" / "store"
    )
    settings.cache_dir = cache_dir or env_cache or settings.cache_dir or str(
        _home() / ".cache" / "dsfs"
    )
    if settings.compression not in ("auto", "store", "deflate"):
        raise InvalidInput(f"compression must be auto, store or deflate: {settings.compression!r}")
    stall = settings.commit_stall_timeout
    if isinstance(stall, bool) or not isinstance(stall, (int, float)) or stall <= 0:
        raise InvalidInput(f"commit_stall_timeout must be a number of seconds > 0: {stall!r}")
    if settings.chunk_size < 1:
        raise InvalidInput(f"chunk_size must be > 0: {settings.chunk_size}")
    return settings


def _apply_file(settings: Settings, path: Path) -> None:
    import yaml  # only when there is a file to read: it is slow to import (a mount pays for it)

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise InvalidInput(f"config file not found: {str(path)!r}") from None
    except yaml.YAMLError as exc:
        raise InvalidInput(f"config file is not valid yaml: {str(path)!r}: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidInput(f"config file must hold a mapping: {str(path)!r}")
    _apply(settings, data, repr(str(path)))


def _apply(settings: Settings, data: dict, where: str) -> None:
    for key, value in data.items():
        attr = key.replace("-", "_")
        if attr not in _FILE_KEYS:
            raise InvalidInput(f"unknown config key {key!r} in {where}")
        if attr in ("chunk_size", "block_size", "cache_size", "neighbour_bytes", "read_ahead") and value is not None:
            value = parse_size(value, what=key)
        if attr in ("cache_local_store", "durable_close", "prefetch_local") and not isinstance(value, bool):
            raise InvalidInput(f"config key {key!r} must be true or false, not {value!r}")
        setattr(settings, attr, value)
