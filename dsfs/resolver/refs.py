"""Refs: how a user names a version.

    <id> or a unique prefix of >= 6 hex chars     a version by id
    DATASET@NAME                                    a version by name
    DATASET@draft                                   the dataset's single draft
    DATASET                                         the dataset's latest published version
"""

from __future__ import annotations

import re

from ..catalog import Catalog
from ..changeset.manifest import VersionManifest, check_dataset_name
from ..errors import Ambiguous, InvalidInput, NotFound

MIN_PREFIX = 6
_HEX = re.compile(r"[0-9a-f]{6,32}")


def resolve_ref(catalog: Catalog, ref: str) -> VersionManifest:
    if not ref or "\x00" in ref:
        raise InvalidInput(f"invalid version ref: {ref!r}")
    if "@" in ref:
        dataset, _, name = ref.rpartition("@")
        check_dataset_name(dataset)
        versions = catalog.versions(dataset)
        if name == "draft":
            drafts = [v for v in versions if not v.is_published]
            if not drafts:
                raise NotFound(f"dataset {dataset!r} has no draft")
            if len(drafts) > 1:
                listing = ", ".join(f"{v.id[:12]} ({v.name})" for v in drafts)
                raise Ambiguous(f"dataset {dataset!r} has {len(drafts)} drafts, name one: {listing}")
            return drafts[0]
        named = [v for v in versions if v.name == name]
        if not named:
            raise NotFound(f"version not found: {ref!r}")
        return named[0]
    by_id = catalog.find_ids(ref) if _HEX.fullmatch(ref) else []
    if len(by_id) > 1:
        listing = ", ".join(by_id[:5])
        raise Ambiguous(f"version id prefix {ref!r} is ambiguous: {listing}")
    try:
        check_dataset_name(ref)
        dataset_versions = catalog.versions(ref)
    except (NotFound, InvalidInput):
        dataset_versions = None
    if by_id and dataset_versions is not None:
        raise Ambiguous(f"ref {ref!r} is both a dataset name and a version id prefix; "
                        f"use {ref}@NAME or a longer id")
    if by_id:
        return catalog.version(by_id[0])
    if dataset_versions is None:
        raise NotFound(f"no dataset or version matches ref: {ref!r}")
    return latest_published(ref, dataset_versions)


def latest_published(dataset: str, versions: list[VersionManifest]) -> VersionManifest:
    published = [v for v in versions if v.is_published]
    if not published:
        raise NotFound(f"dataset {dataset!r} has no published version (its draft is {dataset}@draft)")
    return max(published, key=lambda v: (v.published or "", v.created))
