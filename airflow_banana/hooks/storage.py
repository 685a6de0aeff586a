"""Turn an Airflow connection into a :class:`~airflow_banana.storage.objects.Storage`.

GCS credentials live in a connection (any type; ``google_cloud_platform`` is the usual one), never
in operator arguments. Recognised extras, with or without the provider-google style prefix
``extra__google_cloud_platform__``: ``keyfile_dict`` or ``credentials`` (service-account JSON as
an object or a string), ``key_path`` (path to that JSON file), ``project``. No connection id, or a
connection without a key, means Application Default Credentials. Works with connections defined
as ``AIRFLOW_CONN_<ID>`` JSON environment variables.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from airflow_banana.exceptions import ConfigurationError
from airflow_banana.storage.objects import Storage, open_storage

_LEGACY_PREFIX = "extra__google_cloud_platform__"


def _extra(extras: dict[str, Any], key: str) -> Any:
    value = extras.get(key)
    return value if value not in (None, "") else extras.get(_LEGACY_PREFIX + key) or None


def credentials_from_extras(
    extras: dict[str, Any], *, conn_id: str
) -> tuple[dict[str, Any] | None, str | None]:
    """(service-account info, project) from a connection's extras; errors never quote the key."""
    info: Any = _extra(extras, "keyfile_dict") or _extra(extras, "credentials")
    key_path = _extra(extras, "key_path")
    if info is None and key_path:
        try:
            info = Path(str(key_path)).read_text("utf-8")
        except OSError as err:
            raise ConfigurationError(
                f"connection '{conn_id}': cannot read key_path {key_path!r} ({err.strerror}); "
                "nothing was read or written"
            ) from err
    if isinstance(info, str):
        try:
            info = json.loads(info)
        except json.JSONDecodeError as err:
            raise ConfigurationError(
                f"connection '{conn_id}': the service-account key is not valid JSON "
                f"(line {err.lineno}); nothing was read or written"
            ) from err
    if info is not None and not isinstance(info, dict):
        raise ConfigurationError(
            f"connection '{conn_id}': the service-account key must be a JSON object; "
            "nothing was read or written"
        )
    project = _extra(extras, "project")
    if project is None and info:
        project = info.get("project_id")
    return info, (str(project) if project else None)


def storage_for(uri: str, gcp_conn_id: str | None = None) -> Storage:
    """A Storage for ``uri`` using the credentials of ``gcp_conn_id`` (ADC when None)."""
    if not gcp_conn_id:
        return open_storage(uri)
    from airflow.sdk import BaseHook

    try:
        conn = BaseHook.get_connection(gcp_conn_id)
    except Exception as err:
        raise ConfigurationError(
            f"connection '{gcp_conn_id}' for {uri} cannot be loaded ({type(err).__name__}); "
            "define it (e.g. AIRFLOW_CONN_" + gcp_conn_id.upper() + ") and retry"
        ) from err
    info, project = credentials_from_extras(conn.extra_dejson or {}, conn_id=gcp_conn_id)
    return open_storage(uri, credentials_info=info, project=project)
