"""Records in the store: dataset records, version manifests and change-set files.

Store layout (docs/FORMAT.md has the full description)::

    datasets/<name>.json                      dataset record (mutable, compare-and-swap)
    versions/<id>/draft.json                  draft manifest (mutable, compare-and-swap)
    versions/<id>/published.json              published manifest (created once, never changed)
    versions/<id>/changesets/<cs>.jsonl.gz    one change-set: a header line, then one line per entry
    versions/<id>/chunks/<cs>-<n>.zip         the bytes, as standard zip files

Everything read from the store is validated here: schema version, field types, and every path
through ``check_path``, so a hostile or corrupt manifest cannot name ``../`` or an absolute path.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import io
import itertools
import json
import re
import zlib
from collections.abc import Callable, Iterator
from typing import BinaryIO, TypeVar

from ..errors import Corrupt, InvalidInput
from ..paths import check_path, name_bytes

SCHEMA = 1
STORED = 0
DEFLATED = 8

FILE = "file"
SYMLINK = "symlink"
DIR = "dir"
TYPES = (FILE, SYMLINK, DIR)

DRAFT = "draft"
PUBLISHING = "publishing"
PUBLISHED = "published"

EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
# Stored files larger than this carry a hash tree (``tree``, see tree.py), so a read of any part
# of them can be checked without reading all of it. Change-sets written before trees carry a
# sha256 per HASH_BLOCK-sized piece instead ("blocks"), for big files of either method.
HASH_BLOCK = 4 << 20
_HEX = frozenset("0123456789abcdef")
T = TypeVar("T")


def block_count(size: int) -> int:
    return (size + HASH_BLOCK - 1) // HASH_BLOCK

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._ +-]{0,127}")
_ID_RE = re.compile(r"[0-9a-f]{32}")


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")


def new_id() -> str:
    import secrets  # (imported where used: mount start-up needs neither this nor gzip)

    return secrets.token_hex(16)


def new_changeset_id() -> str:
    """A change-set's id: the UTC time of its commit to the second, then 8 random hex digits
    (``20261121T170656-22894b9e``)."""
    return f"{now_iso()[:19].replace(':', '').replace('-', '')}-{new_id()[:8]}"


_CHANGESET_TIME = re.compile(r"(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})-[0-9a-f]{8}")


def changeset_time(changeset_id: str) -> str | None:
    """The commit time a ``new_changeset_id`` carries, as an ISO time in UTC (as ``now_iso``
    writes them); None for an id that carries none (a squash's)."""
    found = _CHANGESET_TIME.fullmatch(changeset_id)
    if found is None:
        return None
    year, month, day, hour, minute, second = found.groups()
    return f"{year}-{month}-{day}T{hour}:{minute}:{second}.000000+00:00"


def check_dataset_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or name.endswith(" "):
        raise InvalidInput(
            f"invalid dataset name: {name!r} (letters, digits, '.', '_', '-', '+', space; "
            "must start with a letter or digit)"
        )
    return name


def check_version_name(name: str) -> str:
    if not isinstance(name, str) or not name.strip() or "\x00" in name or "\n" in name or len(name) > 200:
        raise InvalidInput(f"invalid version name: {name!r}")
    if name.lower() == "draft":
        raise InvalidInput("version name 'draft' is reserved (DATASET@draft names the draft)")
    return name


# -- keys -----------------------------------------------------------------------------------


def dataset_key(name: str) -> str:
    return f"datasets/{name}.json"


def draft_key(version_id: str) -> str:
    return f"versions/{version_id}/draft.json"


def published_key(version_id: str) -> str:
    return f"versions/{version_id}/published.json"


def changeset_key(version_id: str, changeset_id: str) -> str:
    return f"versions/{version_id}/changesets/{changeset_id}.jsonl.gz"


def chunk_key(version_id: str, changeset_id: str, n: int) -> str:
    return f"versions/{version_id}/chunks/{changeset_id}-{n:04d}.zip"


# -- entries --------------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class Entry:
    """One added or modified path. ``chunk`` is None when there are no bytes to fetch
    (directories, symlinks, empty files)."""

    path: str
    type: str = FILE
    size: int = 0
    sha256: str = EMPTY_SHA256
    mode: int = 0o644
    mtime_ns: int = 0
    target: str | None = None
    chunk: str | None = None
    offset: int = 0
    csize: int = 0
    method: int = STORED
    blocks: str | None = None  # sha256 hex of each HASH_BLOCK piece, concatenated (older big files)
    tree: str | None = None  # root of the hash tree, hex (big stored files)
    tree_offset: int = 0  # where the tree member's data starts in ``chunk``

    def block_sha256(self, i: int) -> str | None:
        return None if self.blocks is None else self.blocks[64 * i:64 * (i + 1)]

    def to_json(self) -> dict:
        d = {"op": "add", "path": self.path, "type": self.type, "mode": self.mode,
             "mtime_ns": self.mtime_ns}
        if self.type == FILE:
            d.update(size=self.size, sha256=self.sha256)
            if self.chunk is not None:
                d.update(chunk=self.chunk, offset=self.offset, csize=self.csize, method=self.method)
            if self.blocks is not None:
                d["blocks"] = self.blocks
            if self.tree is not None:
                d.update(tree=self.tree, tree_offset=self.tree_offset)
        elif self.type == SYMLINK:
            d.update(target=self.target, size=len(name_bytes(self.target)))
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Entry":
        return cls(*entry_fields(d))


def entry_fields(d: dict) -> tuple:
    """Validate one decoded "add" line and return its fields in Entry's order (path, type, size,
    sha256, mode, mtime_ns, target, chunk, offset, csize, method, blocks, tree, tree_offset).
    The index build takes these tuples as they are: a million Entry objects would cost more than
    the rest of the build."""
    try:
        kind = d["type"]
        path = check_path(d["path"], what="manifest path")
        mode, mtime_ns = int(d["mode"]) & 0o7777, int(d["mtime_ns"])
        if kind == FILE:
            size, sha256 = int(d["size"]), str(d["sha256"])
            if len(sha256) != 64 or size < 0 or not _HEX.issuperset(sha256):
                raise Corrupt(f"manifest entry has a bad size or sha256: {path!r}")
            return (path, kind, size, sha256, mode, mtime_ns, None, *_location(d, path, size))
        if kind == DIR:
            return (path, kind, 0, EMPTY_SHA256, mode, mtime_ns, None, None, 0, 0, STORED, None, None, 0)
        if kind == SYMLINK:
            target = str(d["target"])
            return (path, kind, len(name_bytes(target)), EMPTY_SHA256, mode, mtime_ns, target, None, 0, 0,
                    STORED, None, None, 0)
        raise Corrupt(f"manifest entry has unknown type: {kind!r}")
    except InvalidInput as exc:
        raise Corrupt(f"corrupt manifest: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise Corrupt(f"corrupt manifest entry {d.get('path')!r}: bad field {exc}") from None


def _location(d: dict, path: str, size: int) -> tuple:
    """(chunk, offset, csize, method, blocks, tree, tree_offset) of a file entry, checked."""
    if "chunk" not in d:
        if size:
            raise Corrupt(f"manifest entry has bytes but no chunk: {path!r}")
        chunk, offset, csize, method = None, 0, 0, STORED
    else:
        chunk, offset, csize, method = str(d["chunk"]), int(d["offset"]), int(d["csize"]), int(d["method"])
        if method not in (STORED, DEFLATED) or offset < 0 or csize < 0:
            raise Corrupt(f"manifest entry has a bad byte location: {path!r}")
    blocks = tree = None
    tree_offset = 0
    if "blocks" in d:
        blocks = str(d["blocks"])
        if len(blocks) != 64 * block_count(size) or not _HEX.issuperset(blocks):
            raise Corrupt(f"manifest entry has bad block hashes: {path!r}")
    if "tree" in d:
        tree, tree_offset = str(d["tree"]), int(d["tree_offset"])
        if (len(tree) != 64 or not _HEX.issuperset(tree) or tree_offset < 0
                or method != STORED or size <= HASH_BLOCK):
            raise Corrupt(f"manifest entry has a bad hash tree: {path!r}")
    return chunk, offset, csize, method, blocks, tree, tree_offset


@dataclasses.dataclass(slots=True, frozen=True)
class Removal:
    """A tombstone. ``is_dir`` removes the whole subtree below ``path`` too."""

    path: str
    is_dir: bool = False

    def to_json(self) -> dict:
        return {"op": "remove", "path": self.path, "type": DIR if self.is_dir else FILE}


@dataclasses.dataclass
class ChangeSet:
    """A change-set file: removals apply first, then entries, so an add always wins."""

    version_id: str
    id: str
    created: str
    entries: list[Entry]
    removals: list[Removal]

    def dumps(self) -> bytes:
        """gzip'd JSON lines: removals first, then entries (``zcat`` shows them)."""
        import gzip

        buf = io.BytesIO()
        with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=3, mtime=0) as gz:
            header = {"schema": SCHEMA, "kind": "dsfs-changeset", "version": self.version_id,
                      "id": self.id, "created": self.created}
            items = itertools.chain([header], (r.to_json() for r in self.removals),
                                    (e.to_json() for e in self.entries))
            while lines := [_line(d) for d in itertools.islice(items, 4096)]:
                gz.write(b"".join(lines))  # a write per line costs more than the line
        return buf.getvalue()


_decode = json.JSONDecoder().decode
CHANGESET_BLOCK = 1 << 20  # bytes of a change-set's text read (and its lines decoded) at a time


_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")


def _line(d: dict) -> bytes:
    """One JSON line in valid UTF-8. A name byte that is not UTF-8 (a PEP 383 surrogate, see
    dsfs/paths.py) is written as the JSON escape ``\\udcXX``, which json.loads turns back into it.
    (Files written before this kept the raw byte; reading decodes with surrogateescape, so both
    forms read the same.)"""
    text = json.dumps(d, ensure_ascii=False)
    try:
        return (text + "\n").encode("utf-8")
    except UnicodeEncodeError:
        return (_ESCAPED_BYTE.sub(lambda m: f"\\u{ord(m[0]):04x}", text) + "\n").encode("utf-8")


def _line_batches(read: Callable[[int], bytes]) -> Iterator[list[bytes]]:
    """The decompressed lines ``read`` returns in batches, read in big blocks (not line by line)."""
    rest = b""
    while block := read(CHANGESET_BLOCK):
        lines = (rest + block).split(b"\n")
        rest = lines.pop()
        if lines:
            yield lines
    if rest:
        yield [rest]


def _decode_batch(lines: list[bytes], first: int, key: str) -> list:
    """JSON-decode many lines in one call (blank ones skipped); on failure, find and name the bad
    line."""
    try:  # (blank lines are rare: looked for only when the batch does not decode)
        return _decode("[" + b",".join(lines).decode("utf-8", "surrogateescape") + "]")
    except ValueError:
        pass
    lines = [raw for raw in lines if raw.strip()]
    try:
        return _decode("[" + b",".join(lines).decode("utf-8", "surrogateescape") + "]")
    except ValueError:
        pass
    for n, raw in enumerate(lines, start=first):
        try:
            _decode(raw.decode("utf-8", "surrogateescape"))
        except ValueError:
            raise Corrupt(f"corrupt change-set line {n}: {key!r}") from None
    raise Corrupt(f"corrupt change-set near line {first}: {key!r}")


def iter_changeset(stream: BinaryIO, key: str, *, make: Callable[[dict], T] | None = None
                   ) -> Iterator[Entry | T | Removal]:
    """Parse a gzip'd change-set file lazily from a binary stream, validating each line.
    Adds come as Entry objects, or as what ``make`` returns for the decoded line (``entry_fields``
    and the index build's row maker: each refuses a bad line as ``Entry.from_json`` does).

    Removals must come before entries (that is what makes "an add wins" hold inside one file).
    Lines are decoded a batch at a time (about 1 MiB of text), so memory stays bounded.
    """
    import gzip

    return read_changeset(gzip.GzipFile(fileobj=stream, mode="rb").read, key, make=make)


def read_changeset(read: Callable[[int], bytes], key: str, *, make: Callable[[dict], T] | None = None
                   ) -> Iterator[Entry | T | Removal]:
    """``iter_changeset`` of the decompressed text that ``read(CHANGESET_BLOCK)`` returns a block
    at a time: a GzipFile's read, or what stands for one (b"" at the end, an OSError, EOFError or
    zlib.error where the stream breaks)."""
    batches = _line_batches(read)
    try:
        first = next(batches)
        header = json.loads(first[0])
    except (StopIteration, IndexError, ValueError, OSError, EOFError, zlib.error):
        raise Corrupt(f"corrupt change-set (no header): {key!r}") from None
    _check_schema(header, "dsfs-changeset", key)
    seen_add = False
    make = make or Entry.from_json
    n = 1
    try:
        batch = first[1:]
        while True:
            for d in _decode_batch(batch, n + 1, key):
                n += 1
                try:
                    op = d["op"]
                except (KeyError, TypeError):
                    raise Corrupt(f"corrupt change-set line {n}: {key!r}") from None
                if op == "add":
                    seen_add = True
                    yield make(d)
                elif op == "remove":
                    if seen_add:
                        raise Corrupt(f"corrupt change-set line {n} (removal after an add): {key!r}")
                    try:
                        path = check_path(d["path"], what="manifest path")
                    except InvalidInput as exc:
                        raise Corrupt(f"corrupt manifest: {exc}") from None
                    yield Removal(path, d.get("type") == DIR)
                else:
                    raise Corrupt(f"corrupt change-set line {n} (unknown op {op!r}): {key!r}")
            batch = next(batches, None)
            if batch is None:
                return
    except Corrupt:
        raise  # a bad line, already named (Corrupt is an OSError too)
    except (OSError, EOFError, zlib.error):
        raise Corrupt(f"corrupt change-set (truncated after line {n}): {key!r}") from None


def _check_schema(d: dict, kind: str, key: str) -> None:
    if not isinstance(d, dict) or d.get("kind") != kind:
        raise Corrupt(f"not a {kind} record: {key!r}")
    if d.get("schema") != SCHEMA:
        raise Corrupt(f"unsupported schema version {d.get('schema')!r} in {key!r} (this dsfs reads {SCHEMA})")


# -- records --------------------------------------------------------------------------------


@dataclasses.dataclass
class ChangeSetRef:
    id: str
    key: str
    entries: int
    removals: int
    bytes_new: int
    bytes_dedup: int
    chunks: list[str]


@dataclasses.dataclass
class VersionManifest:
    id: str
    dataset: str
    name: str
    parents: list[str]
    state: str = DRAFT
    created: str = ""
    published: str | None = None
    comment: str = ""
    metadata: dict = dataclasses.field(default_factory=dict)
    changesets: list[ChangeSetRef] = dataclasses.field(default_factory=list)

    @property
    def is_published(self) -> bool:
        return self.state == PUBLISHED

    def dumps(self) -> bytes:
        d = {"schema": SCHEMA, "kind": "dsfs-version", **dataclasses.asdict(self)}
        return json.dumps(d, indent=1, ensure_ascii=False).encode()

    @classmethod
    def loads(cls, data: bytes, key: str) -> "VersionManifest":
        d = _load_json(data, key)
        _check_schema(d, "dsfs-version", key)
        try:
            refs = [ChangeSetRef(**c) for c in d["changesets"]]
            m = cls(id=d["id"], dataset=d["dataset"], name=d["name"], parents=list(d["parents"]),
                    state=d["state"], created=d["created"], published=d.get("published"),
                    comment=d.get("comment", ""), metadata=dict(d.get("metadata") or {}),
                    changesets=refs)
        except (KeyError, TypeError) as exc:
            raise Corrupt(f"corrupt version manifest {key!r}: bad field {exc}") from None
        if not _ID_RE.fullmatch(m.id) or any(not _ID_RE.fullmatch(p) for p in m.parents):
            raise Corrupt(f"corrupt version manifest {key!r}: bad version id")
        if m.state not in (DRAFT, PUBLISHING, PUBLISHED):
            raise Corrupt(f"corrupt version manifest {key!r}: unknown state {m.state!r}")
        prefix = f"versions/{m.id}/"
        for ref in m.changesets:
            if not ref.key.startswith(prefix):
                raise Corrupt(f"corrupt version manifest {key!r}: foreign change-set {ref.key!r}")
        return m


@dataclasses.dataclass
class DatasetRecord:
    name: str
    project: str = ""
    tags: list[str] = dataclasses.field(default_factory=list)
    description: str = ""
    created: str = ""
    versions: list[str] = dataclasses.field(default_factory=list)
    # Version name -> id: where names are made unique (Catalog.claim_name). None in a record
    # written by an older dsfs; rebuilt from the manifests on the next claim.
    names: dict[str, str] | None = None

    def dumps(self) -> bytes:
        d = {"schema": SCHEMA, "kind": "dsfs-dataset", **dataclasses.asdict(self)}
        return json.dumps(d, indent=1, ensure_ascii=False).encode()

    @classmethod
    def loads(cls, data: bytes, key: str) -> "DatasetRecord":
        d = _load_json(data, key)
        _check_schema(d, "dsfs-dataset", key)
        try:
            names = d.get("names")
            if names is not None:
                names = {str(k): str(v) for k, v in names.items()}
            return cls(name=d["name"], project=d.get("project", ""), tags=list(d.get("tags", [])),
                       description=d.get("description", ""), created=d.get("created", ""),
                       versions=list(d["versions"]), names=names)
        except (KeyError, TypeError, AttributeError) as exc:
            raise Corrupt(f"corrupt dataset record {key!r}: bad field {exc}") from None


def _load_json(data: bytes, key: str):
    try:
        return json.loads(data)
    except ValueError:
        raise Corrupt(f"corrupt record (not json): {key!r}") from None


