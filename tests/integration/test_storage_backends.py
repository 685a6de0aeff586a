"""Storage against the real fake-gcs-server, and the same contract on local paths."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from airflow_banana.exceptions import ObjectNotFoundError, PreconditionFailedError
from airflow_banana.storage.objects import Storage, join_uri, open_storage
from airflow_banana.testing.gcs_emulator import EMULATOR_ENV, GcsEmulator

pytestmark = pytest.mark.integration


@pytest.fixture(params=["local", "gs"])
def base(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "gs":
        return f"gs://{request.getfixturevalue('gcs_bucket')}/run"
    return str(tmp_path / "run")


@pytest.fixture
def storage() -> Storage:
    return open_storage()


def test_write_read_exists_size_delete(base: str, storage: Storage) -> None:
    uri = join_uri(base, "images", "cat.png")
    assert not storage.exists(uri)
    assert storage.size(uri) is None
    generation = storage.write_bytes(uri, b"\x89PNG fake", content_type="image/png")
    assert generation > 0
    assert storage.exists(uri)
    assert storage.size(uri) == 9
    assert storage.read_with_generation(uri) == (b"\x89PNG fake", generation)
    stat = storage.stat(uri)
    assert stat is not None and stat.generation == generation
    storage.delete(uri)
    assert not storage.exists(uri)
    with pytest.raises(ObjectNotFoundError, match=r"cat\.png"):
        storage.read_bytes(uri)
    with pytest.raises(ObjectNotFoundError, match=r"cat\.png"):
        storage.delete(uri)


def test_json_roundtrip(base: str, storage: Storage) -> None:
    uri = join_uri(base, "metadata", "a.json")
    storage.write_json(uri, {"z": 1, "a": "ü"})
    assert storage.read_json(uri) == {"a": "ü", "z": 1}
    assert storage.read_text(uri).startswith('{\n  "a": "ü"')


def test_create_only_precondition(base: str, storage: Storage) -> None:
    uri = join_uri(base, "metadata", "item.json")
    storage.write_json(uri, {"winner": 1}, if_absent=True)
    with pytest.raises(PreconditionFailedError, match=r"item\.json"):
        storage.write_json(uri, {"winner": 2}, if_absent=True)
    assert storage.read_json(uri) == {"winner": 1}


def test_generation_match_read_modify_write(base: str, storage: Storage) -> None:
    uri = join_uri(base, "state.json")
    g1 = storage.write_json(uri, {"state": "intent"}, if_absent=True)
    g2 = storage.write_json(uri, {"state": "submitted"}, if_generation_match=g1)
    with pytest.raises(PreconditionFailedError):
        storage.write_json(uri, {"state": "lost update"}, if_generation_match=g1)
    assert storage.read_with_generation(uri) == (b'{\n  "state": "submitted"\n}\n', g2)


def test_concurrent_create_only_exactly_one_wins(base: str, storage: Storage) -> None:
    uri = join_uri(base, "race.json")
    barrier = threading.Barrier(6)
    wins: list[int] = []
    losses: list[int] = []

    def attempt(n: int) -> None:
        barrier.wait()
        try:
            storage.write_json(uri, {"writer": n}, if_absent=True)
            wins.append(n)
        except PreconditionFailedError:
            losses.append(n)

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and len(losses) == 5
    assert storage.read_json(uri) == {"writer": wins[0]}


def test_stream_lines_of_a_multi_chunk_object(base: str, storage: Storage) -> None:
    uri = join_uri(base, "batch", "output.jsonl")
    lines = [f'{{"key": "item-{n}", "pad": "{"x" * (n % 80)}"}}' for n in range(80_000)]
    storage.write_text(uri, "\n".join(lines) + "\n")
    assert (storage.size(uri) or 0) > 4 * 1024 * 1024  # more than one read chunk
    count = 0
    for count, line in enumerate(storage.iter_lines(uri), start=1):
        assert line == lines[count - 1]
    assert count == len(lines)
    with storage.open_read(uri) as stream:
        assert stream.read(9) == b'{"key": "'


def test_list_prefix(base: str, storage: Storage) -> None:
    for name in ("images/a.png", "images/b.png", "metadata/a.json"):
        storage.write_bytes(join_uri(base, name), b"x")
    assert list(storage.list(join_uri(base, "images") + "/")) == [
        join_uri(base, "images/a.png"),
        join_uri(base, "images/b.png"),
    ]
    assert len(list(storage.list(base + "/"))) == 3


def test_missing_object_on_open_read(base: str, storage: Storage) -> None:
    with pytest.raises(ObjectNotFoundError), storage.open_read(join_uri(base, "absent.jsonl")):
        pass


def test_emulator_itself_enforces_if_generation_match(gcs_bucket: str) -> None:
    # Our create-only semantics on gs:// rest on the server answering 412, not on the client.
    from google.api_core.exceptions import PreconditionFailed
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs

    client = gcs.Client(credentials=AnonymousCredentials(), project="p")
    blob = client.bucket(gcs_bucket).blob("x")
    blob.upload_from_string(b"1", if_generation_match=0)
    with pytest.raises(PreconditionFailed) as info:
        client.bucket(gcs_bucket).blob("x").upload_from_string(b"2", if_generation_match=0)
    assert info.value.code == 412
    assert client.bucket(gcs_bucket).blob("x").download_as_bytes() == b"1"


def test_missing_bucket_is_not_found(gcs_bucket: str, storage: Storage) -> None:
    assert not storage.exists("gs://no-such-bucket-banana/x")
    with pytest.raises(ObjectNotFoundError):
        storage.read_bytes("gs://no-such-bucket-banana/x")


def test_filesystem_backend_puts_objects_on_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    previous = os.environ.get(EMULATOR_ENV)
    with GcsEmulator(backend="filesystem", root=tmp_path / "gcs") as emulator:
        assert os.environ[EMULATOR_ENV] == emulator.endpoint
        emulator.create_bucket("demo")
        emulator.create_bucket("demo")  # idempotent
        open_storage().write_bytes("gs://demo/images/cat.png", b"png bytes", content_type="image/png")
        assert (tmp_path / "gcs" / "demo" / "images" / "cat.png").read_bytes() == b"png bytes"
    assert os.environ.get(EMULATOR_ENV) == previous  # restored on stop
