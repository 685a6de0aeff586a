"""pytest plugin: a real GCS emulator for integration tests.

Enable with ``pytest_plugins = ["airflow_banana.testing.gcs_fixtures"]`` (or
``pytest -p airflow_banana.testing.gcs_fixtures``). ``gcs_emulator`` starts one in-memory
fake-gcs-server per session and keeps ``STORAGE_EMULATOR_HOST`` pointing at it, so no test that
touches ``gs://`` can reach real Google Cloud Storage. ``gcs_bucket`` gives each test its own
bucket, so tests never see each other's objects.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from airflow_banana.testing.gcs_emulator import EMULATOR_ENV, GcsEmulator


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[GcsEmulator]:
    """The session's in-memory emulator (``.endpoint``, ``.create_bucket(name)``)."""
    with GcsEmulator(backend="memory") as emulator:
        yield emulator


@pytest.fixture
def gcs_bucket(gcs_emulator: GcsEmulator, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh, empty bucket name; the test's gs:// traffic goes to the emulator."""
    if os.environ.get(EMULATOR_ENV) != gcs_emulator.endpoint:  # a test may have changed it
        monkeypatch.setenv(EMULATOR_ENV, gcs_emulator.endpoint)
    return gcs_emulator.create_bucket(f"test-{uuid.uuid4().hex[:12]}")
