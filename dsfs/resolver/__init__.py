"""Refs -> lineage DAG -> merged view, materialized as an on-disk index."""

from .build import ViewBuilder, check_against_view
from .index import Node, VersionIndex
from .refs import latest_published, resolve_ref

__all__ = ["ViewBuilder", "VersionIndex", "Node", "resolve_ref", "latest_published", "check_against_view"]
