"""Prompt manifests: the versioned schema, the streaming reader, the item model and reference images.

Everything here runs before the first paid call, so a bad manifest costs nothing. ``prepare``
(every check before spend, ending in the lanes' ``PreparedManifest``) is imported from its module,
not from here: it needs the realtime lane's ``WorkItem``, and the package stays cheap to import.
"""

from __future__ import annotations

from airflow_banana.manifests.limits import DEFAULT_LIMITS, ManifestLimits, limits_from_env
from airflow_banana.manifests.model import (
    BUILTIN_DEFAULTS,
    ManifestItem,
    deadline_problem,
    id_problem,
    parse_duration,
    rendered_none,
    resolve_deadline,
)
from airflow_banana.manifests.reader import (
    MANIFEST_VERSION,
    ManifestReadResult,
    ManifestReject,
    OnInvalid,
    manifest_schema,
    read_manifest,
    validate_defaults,
    write_manifest,
)
from airflow_banana.manifests.references import load_reference_images

__all__ = [
    "BUILTIN_DEFAULTS",
    "DEFAULT_LIMITS",
    "MANIFEST_VERSION",
    "ManifestItem",
    "ManifestLimits",
    "ManifestReadResult",
    "ManifestReject",
    "OnInvalid",
    "deadline_problem",
    "id_problem",
    "limits_from_env",
    "load_reference_images",
    "manifest_schema",
    "parse_duration",
    "read_manifest",
    "rendered_none",
    "resolve_deadline",
    "validate_defaults",
    "write_manifest",
]
