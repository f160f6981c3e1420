"""The ``user.dsfs.*`` extended attributes every view of a version shows, published or draft:
the mounted version and dataset on every path, and on a regular file its sha256 and the version
(and dataset) its bytes came from."""

from __future__ import annotations

import errno

from .catalog import Catalog
from .changeset.manifest import VersionManifest
from .errors import DsfsError, NotFound
from .store.base import ObjectStore

XATTR_SHA256 = "user.dsfs.sha256"
XATTR_VERSION = "user.dsfs.version"  # the mounted version, on every path
XATTR_DATASET = "user.dsfs.dataset"
XATTR_SOURCE_VERSION = "user.dsfs.source_version"  # the version that provided a file's bytes
XATTR_SOURCE_DATASET = "user.dsfs.source_dataset"


class NoAttribute(DsfsError):
    errno = errno.ENODATA


class DatasetOf:
    """The dataset of a version id, asked of the catalog once per version (ids never move)."""

    def __init__(self, store: ObjectStore, known: VersionManifest) -> None:
        self.catalog = Catalog(store)
        self._known = {known.id: known.dataset}

    def __call__(self, version_id: str) -> str | None:
        if version_id not in self._known:
            try:
                self._known[version_id] = self.catalog.version(version_id).dataset
            except NotFound:  # deleted since the index was built
                self._known[version_id] = None
        return self._known[version_id]


def file_xattrs(mounted: VersionManifest, sha256: str | None, source: str | None,
                dataset_of: DatasetOf) -> dict[str, bytes]:
    """The ``user.dsfs.*`` attributes of a path: the mounted version and dataset everywhere;
    a regular file also has its sha256 and the version (and dataset) its bytes came from."""
    attrs = {XATTR_VERSION: mounted.id.encode(), XATTR_DATASET: mounted.dataset.encode()}
    if sha256 is not None:
        attrs[XATTR_SHA256] = sha256.encode()
    if source is not None:
        attrs[XATTR_SOURCE_VERSION] = source.encode()
        source_dataset = dataset_of(source)
        if source_dataset is not None:
            attrs[XATTR_SOURCE_DATASET] = source_dataset.encode()
    return attrs
