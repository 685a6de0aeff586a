"""Local-path storage: atomic writes, create-only, generations, listing, URI helpers."""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path

import pytest

from airflow_banana.exceptions import (
    ConfigurationError,
    ObjectNotFoundError,
    PreconditionFailedError,
    StorageError,
)
from airflow_banana.storage.objects import (
    TRUNCATED_HEAD_BYTES,
    TruncatedLine,
    join_uri,
    open_storage,
    parent_uri,
    split_lines,
    utcnow_iso,
)


def test_utcnow_iso_is_aware_and_to_the_second() -> None:
    from datetime import UTC, datetime

    stamp = datetime.fromisoformat(utcnow_iso())
    assert stamp.utcoffset() is not None and stamp.microsecond == 0
    assert abs((datetime.now(UTC) - stamp).total_seconds()) < 5


def test_join_uri_uses_exactly_one_slash() -> None:
    assert join_uri("gs://b/out/", "/images/", "x.png") == "gs://b/out/images/x.png"
    assert join_uri("gs://b", "x.json") == "gs://b/x.json"
    assert join_uri("/tmp/out", "runs", "", "r1") == "/tmp/out/runs/r1"
    assert join_uri("file:///tmp/out/", "a") == "file:///tmp/out/a"


def test_parent_uri() -> None:
    assert parent_uri("gs://b/dir/m.jsonl") == "gs://b/dir"
    assert parent_uri("gs://b/m.jsonl") == "gs://b"
    assert parent_uri("/tmp/m.jsonl") == "/tmp"
    assert parent_uri("m.jsonl") == "."


def test_split_lines_handles_crlf_chunk_borders_and_missing_final_newline() -> None:
    data = b"a\r\nbb\n\nccc\nlast"
    for chunk in (1, 2, 3, 1024):
        assert list(split_lines(io.BytesIO(data), chunk_size=chunk)) == [b"a", b"bb", b"", b"ccc", b"last"]
    assert list(split_lines(io.BytesIO(b""))) == []
    assert list(split_lines(io.BytesIO(b"x\n"))) == [b"x"]


def test_split_lines_with_a_bound_counts_long_lines_without_assembling_them() -> None:
    data = b"ok\n" + b"x" * 5000 + b"\nyy\n" + b"0123456789\n" + b"z" * 3000
    for chunk in (1, 7, 64, 1 << 20):
        out = list(split_lines(io.BytesIO(data), chunk_size=chunk, max_line_bytes=2000))
        assert out[0] == b"ok" and out[2:4] == [b"yy", b"0123456789"]
        assert not any(isinstance(o, TruncatedLine) for o in (out[0], out[2], out[3]))
        long, tail = out[1], out[4]
        assert isinstance(long, TruncatedLine) and long.length == 5000 and long == b"x" * TRUNCATED_HEAD_BYTES
        assert isinstance(tail, TruncatedLine) and tail.length == 3000 and tail.startswith(b"zzz")
    exact = list(split_lines(io.BytesIO(b"a" * 10 + b"\n" + b"b" * 11), chunk_size=4, max_line_bytes=10))
    assert exact[0] == b"a" * 10 and not isinstance(exact[0], TruncatedLine)
    assert isinstance(exact[1], TruncatedLine) and exact[1].length == 11


def test_unsupported_scheme_fails_up_front() -> None:
    with pytest.raises(ConfigurationError, match="s3://"):
        open_storage("s3://bucket/x")
    with pytest.raises(ConfigurationError, match="no bucket"):
        open_storage("gs:///x")
    with pytest.raises(ConfigurationError, match="http://"):
        open_storage().read_bytes("http://example.invalid/x")


def test_write_read_roundtrip_creates_directories(tmp_path: Path) -> None:
    storage = open_storage(str(tmp_path))
    uri = str(tmp_path / "a" / "b" / "c.bin")
    generation = storage.write_bytes(uri, b"hello")
    assert generation > 0
    assert storage.read_bytes(uri) == b"hello"
    assert storage.read_with_generation(uri) == (b"hello", generation)
    assert storage.size(uri) == 5
    assert storage.exists(uri)
    assert not storage.exists(str(tmp_path / "a"))  # a directory is not an object


def test_file_scheme_is_the_same_object(tmp_path: Path) -> None:
    storage = open_storage()
    storage.write_text(f"file://{tmp_path}/t.txt", "über")
    assert (tmp_path / "t.txt").read_text("utf-8") == "über"
    assert storage.read_text(str(tmp_path / "t.txt")) == "über"
    assert list(storage.list(f"file://{tmp_path}/")) == [f"file://{tmp_path}/t.txt"]


def test_missing_object_errors_name_the_uri(tmp_path: Path) -> None:
    storage = open_storage()
    missing = str(tmp_path / "nope.json")
    for call in (storage.read_bytes, storage.read_json, storage.delete):
        with pytest.raises(ObjectNotFoundError, match=r"nope\.json"):
            call(missing)
    with pytest.raises(ObjectNotFoundError, match=r"nope\.json"), storage.open_read(missing):
        pass
    assert storage.size(missing) is None


def test_json_is_stable_and_invalid_json_is_a_storage_error(tmp_path: Path) -> None:
    storage = open_storage()
    uri = str(tmp_path / "m.json")
    storage.write_json(uri, {"b": 1, "a": [1, 2]})
    assert (tmp_path / "m.json").read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'
    assert storage.read_json(uri) == {"a": [1, 2], "b": 1}
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(StorageError, match="not valid JSON"):
        storage.read_json(str(tmp_path / "bad.json"))


def test_create_only_refuses_to_overwrite(tmp_path: Path) -> None:
    storage = open_storage()
    uri = str(tmp_path / "x.json")
    storage.write_bytes(uri, b"first", if_absent=True)
    with pytest.raises(PreconditionFailedError, match="already exists"):
        storage.write_bytes(uri, b"second", if_absent=True)
    assert storage.read_bytes(uri) == b"first"
    assert sorted(os.listdir(tmp_path)) == ["x.json"]  # no temp file left behind


def test_generation_match_detects_a_concurrent_update(tmp_path: Path) -> None:
    storage = open_storage()
    uri = str(tmp_path / "state.json")
    g1 = storage.write_json(uri, {"state": "intent"})
    _, seen = storage.read_with_generation(uri)
    assert seen == g1
    g2 = storage.write_json(uri, {"state": "submitted"}, if_generation_match=g1)
    assert g2 != g1
    with pytest.raises(PreconditionFailedError, match="changed since generation"):
        storage.write_json(uri, {"state": "stale"}, if_generation_match=g1)
    assert storage.read_json(uri) == {"state": "submitted"}
    with pytest.raises(PreconditionFailedError):
        storage.write_bytes(str(tmp_path / "absent.json"), b"x", if_generation_match=12345)
    with pytest.raises(ConfigurationError, match="contradict"):
        storage.write_bytes(uri, b"x", if_absent=True, if_generation_match=g2)


def test_concurrent_create_only_has_exactly_one_winner(tmp_path: Path) -> None:
    storage = open_storage()
    uri = str(tmp_path / "race.json")
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def attempt(n: int) -> None:
        barrier.wait()
        try:
            storage.write_bytes(uri, f"writer {n}".encode(), if_absent=True)
            outcomes.append(f"win {n}")
        except PreconditionFailedError:
            outcomes.append("lose")

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [o for o in outcomes if o.startswith("win")]
    assert len(winners) == 1 and outcomes.count("lose") == 7
    assert storage.read_bytes(uri) == f"writer {winners[0].split()[1]}".encode()


def test_a_failed_write_leaves_the_old_object_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = open_storage()
    uri = str(tmp_path / "keep.txt")
    storage.write_text(uri, "old")

    def disk_error(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", disk_error)  # the disk fails after half the bytes were written
    with pytest.raises(StorageError, match="intact") as info:
        storage.write_text(uri, "new")
    assert isinstance(info.value.__cause__, OSError)
    monkeypatch.undo()
    assert storage.read_text(uri) == "old"
    assert os.listdir(tmp_path) == ["keep.txt"]  # the temp file was cleaned up


def test_list_is_a_recursive_string_prefix_and_hides_temp_files(tmp_path: Path) -> None:
    storage = open_storage()
    for name in ("images/a.png", "images/b.png", "images/sub/c.png", "imagesX/d.png", "metadata/a.json"):
        storage.write_bytes(str(tmp_path / name), b"x")
    (tmp_path / "images" / ".e.png.banana-tmp-123").write_bytes(b"partial")
    assert list(storage.list(f"{tmp_path}/images/")) == [
        f"{tmp_path}/images/a.png",
        f"{tmp_path}/images/b.png",
        f"{tmp_path}/images/sub/c.png",
    ]
    assert len(list(storage.list(f"{tmp_path}/images"))) == 4  # string prefix also matches imagesX/
    assert list(storage.list(f"{tmp_path}/nothing/")) == []


def test_list_relative_prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    storage = open_storage()
    storage.write_bytes("out/a.txt", b"1")
    storage.write_bytes("outer.txt", b"2")
    assert list(storage.list("out")) == ["out/a.txt", "outer.txt"]
    assert list(storage.list("out/")) == ["out/a.txt"]


def test_iter_lines_streams_and_rejects_bad_utf8(tmp_path: Path) -> None:
    storage = open_storage()
    path = tmp_path / "lines.txt"
    path.write_bytes(b"one\r\ntwo\n\nthree")
    assert list(storage.iter_lines(str(path))) == ["one", "two", "", "three"]
    path.write_bytes(b"ok\n\xff\xfe\n")
    with pytest.raises(StorageError, match="line 2 is not valid UTF-8"):
        list(storage.iter_lines(str(path)))


def test_delete(tmp_path: Path) -> None:
    storage = open_storage()
    uri = str(tmp_path / "d.txt")
    storage.write_text(uri, "x")
    storage.delete(uri)
    assert not storage.exists(uri)
    with pytest.raises(ObjectNotFoundError):
        storage.delete(uri)
