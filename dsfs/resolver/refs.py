"""Refs: how a user names a version.

    <id> or a unique prefix of >= 6 hex chars     a version by id
    DATASET@NAME                                    a version by name (unique in its dataset)
    DATASET@draft                                   the dataset's single draft
    DATASET                                         the dataset's latest published version

A ref that names nothing says what is there instead: the close matches ("did you mean"), the
dataset's versions, or the drafts to choose from.
"""

from __future__ import annotations

import re

from ..catalog import Catalog, did_you_mean
from ..changeset.manifest import VersionManifest, check_dataset_name
from ..errors import Ambiguous, InvalidInput, NotFound

MIN_PREFIX = 6
_HEX = re.compile(r"[0-9a-f]{6,32}")
_SHORT_HEX = re.compile(r"[0-9a-f]{1,5}")
_LISTED = 10  # names shown when a version is not found


def resolve_ref(catalog: Catalog, ref: str) -> VersionManifest:
    if not ref or "\x00" in ref:
        raise InvalidInput(f"invalid version ref: {ref!r}")
    if "@" in ref:
        # Dataset names never hold '@'; version names may.
        dataset, _, name = ref.partition("@")
        check_dataset_name(dataset)
        versions = catalog.versions(dataset)
        if name == "draft":
            return single_draft(dataset, versions)
        named = [v for v in versions if v.name == name]
        if not named:
            raise NotFound(f"version not found: {ref!r}{_version_hint(dataset, name, versions)}")
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
        raise NotFound(f"no dataset or version matches ref: {ref!r}{_ref_hint(catalog, ref)}")
    return latest_published(ref, dataset_versions)


def single_draft(dataset: str, versions: list[VersionManifest]) -> VersionManifest:
    drafts = sorted((v for v in versions if not v.is_published), key=lambda v: v.created)
    if not drafts:
        raise NotFound(f"dataset {dataset!r} has no draft")
    if len(drafts) > 1:
        raise Ambiguous(f"dataset {dataset!r} has {len(drafts)} drafts, name one as {dataset}@NAME: "
                        + ", ".join(f"{dataset}@{v.name}" for v in drafts))
    return drafts[0]


def latest_published(dataset: str, versions: list[VersionManifest]) -> VersionManifest:
    published = [v for v in versions if v.is_published]
    if not published:
        raise NotFound(f"dataset {dataset!r} has no published version (its draft is {dataset}@draft)")
    return max(published, key=lambda v: (v.published or "", v.created))


def _version_hint(dataset: str, name: str, versions: list[VersionManifest]) -> str:
    names = [v.name for v in sorted(versions, key=lambda v: v.created)]
    if not names:
        return f"; dataset {dataset!r} has no versions"
    if len(names) <= _LISTED:
        label = f"versions of {dataset!r}"
    else:
        label = f"newest {_LISTED} of {len(names)} versions of {dataset!r}"
    return f"{did_you_mean(name, names)}; {label}: {', '.join(names[-_LISTED:])}"


def _ref_hint(catalog: Catalog, ref: str) -> str:
    hint = did_you_mean(ref, catalog.dataset_names())
    if not hint and _SHORT_HEX.fullmatch(ref):
        hint = f" (a version id prefix needs at least {MIN_PREFIX} characters)"
    return hint
