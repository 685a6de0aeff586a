"""Bounded manifest inputs (issue 16): line, prompt, metadata and document-item limits, their
overrides, streamed JSON documents on both ijson backends, and peak RSS in a child process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ijson
import pytest

from airflow_banana.exceptions import ConfigurationError, ManifestError
from airflow_banana.manifests import ManifestLimits, limits_from_env, read_manifest
from airflow_banana.manifests import document as document_module
from airflow_banana.models import CHARS_PER_TOKEN, INPUT_IMAGE_TOKENS, MAX_INPUT_TOKENS
from airflow_banana.storage.objects import open_storage

STORAGE = open_storage()
MB = 1024 * 1024
ROOT = Path(__file__).resolve().parents[2]


def jsonl(path: Path, *rows: Any) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), "utf-8")
    return str(path)


@pytest.fixture(params=["yajl2_c", "python"])
def ijson_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Documents read with ijson's C backend (what the wheel ships) and with the pure-python one."""
    backend = ijson.get_backend(request.param)
    monkeypatch.setattr(document_module, "BACKEND", backend)
    yield request.param


def test_defaults_and_their_sources() -> None:
    limits = ManifestLimits()
    assert limits.max_input_tokens == MAX_INPUT_TOKENS == 65_536
    assert limits.max_prompt_chars() == 65_536 * CHARS_PER_TOKEN == 262_144
    assert limits.max_prompt_chars(2) == (65_536 - 2 * INPUT_IMAGE_TOKENS) * 4
    assert (limits.max_request_bytes, limits.max_reference_bytes) == (20_000_000, 7 * MB)
    assert (limits.max_line_bytes, limits.max_metadata_bytes) == (4 * MB, 64 * 1024)
    assert limits.max_line_bytes > 6 * limits.max_prompt_chars() + limits.max_metadata_bytes  # fully escaped


def test_environment_overrides_and_bad_values() -> None:
    assert limits_from_env({}) == ManifestLimits()
    assert limits_from_env({"BANANA_MAX_INPUT_TOKENS": "1_000"}).max_input_tokens == 1000
    with pytest.raises(ConfigurationError, match="BANANA_MAX_LINE_BYTES='big' is not an integer"):
        limits_from_env({"BANANA_MAX_LINE_BYTES": "big"})
    with pytest.raises(ConfigurationError, match="max_metadata_bytes must be a positive integer"):
        limits_from_env({"BANANA_MAX_METADATA_BYTES": "0"})


def test_a_50_mb_line_is_rejected_in_under_a_second_naming_its_line(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    with path.open("w") as out:
        out.write(json.dumps({"id": "ok", "prompt": "p"}) + "\n")
        out.write('{"id": "huge", "prompt": "' + "x" * (50 * MB) + '"}\n')
        out.write(json.dumps({"id": "after", "prompt": "p"}) + "\n")
    started = time.monotonic()
    result = read_manifest(str(path), STORAGE, on_invalid="quarantine")
    assert time.monotonic() - started < 1.0
    assert [i.id for i in result.items] == ["ok", "after"]
    (reject,) = result.rejects
    assert reject.line == 2 and reject.field is None
    assert reject.reason.startswith(f"line is {50 * MB + 28} bytes long, over the {4 * MB}-byte limit")
    assert "BANANA_MAX_LINE_BYTES" in reject.reason
    assert len(reject.raw) < 2000 and reject.raw.startswith('{"id": "huge"')
    with pytest.raises(ManifestError) as info:
        read_manifest(str(path), STORAGE)
    assert (info.value.line, info.value.field) == (2, None) and "nothing was generated or spent" in str(
        info.value
    )


def test_a_5_mb_prompt_is_rejected_in_under_a_second(tmp_path: Path) -> None:
    uri = jsonl(tmp_path / "m.jsonl", {"id": "big", "prompt": "y" * (5 * MB)})
    started = time.monotonic()
    with pytest.raises(ManifestError, match=r"line is \d+ bytes long") as info:
        read_manifest(uri, STORAGE)
    assert time.monotonic() - started < 1.0 and info.value.line == 1
    # allowed a longer line, the prompt itself is over Google's input limit
    started = time.monotonic()
    with pytest.raises(ManifestError) as info:
        read_manifest(uri, STORAGE, limits=ManifestLimits(max_line_bytes=8 * MB))
    assert time.monotonic() - started < 1.0
    assert (info.value.line, info.value.field) == (1, "prompt")
    assert f"prompt is {5 * MB} characters, over the 262144 that fit" in str(info.value)


def test_prompt_limit_counts_reference_images_and_follows_the_override(tmp_path: Path) -> None:
    fits = ManifestLimits().max_prompt_chars(1)
    uri = jsonl(
        tmp_path / "m.jsonl",
        {"id": "fits", "prompt": "a" * fits, "reference_images": ["r.png"]},
        {"id": "over", "prompt": "a" * (fits + 1), "reference_images": ["r.png"]},
        {"id": "alone", "prompt": "a" * (fits + 1)},
    )
    result = read_manifest(uri, STORAGE, on_invalid="quarantine")
    assert [i.id for i in result.items] == ["fits", "alone"]
    (reject,) = result.rejects
    assert (reject.line, reject.field, reject.item_id) == (2, "prompt", "over")
    assert "beside 1 reference image(s)" in reject.reason and "BANANA_MAX_INPUT_TOKENS" in reject.reason


def test_environment_override_reaches_read_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = jsonl(tmp_path / "m.jsonl", {"id": "a", "prompt": "x" * 41})
    monkeypatch.setenv("BANANA_MAX_INPUT_TOKENS", "10")
    with pytest.raises(ManifestError, match="prompt is 41 characters, over the 40"):
        read_manifest(uri, STORAGE)
    monkeypatch.delenv("BANANA_MAX_INPUT_TOKENS")
    assert len(read_manifest(uri, STORAGE).items) == 1


def test_metadata_size_counts_merged_defaults(tmp_path: Path) -> None:
    limits = ManifestLimits(max_metadata_bytes=100)
    uri = jsonl(
        tmp_path / "m.jsonl",
        {"manifest_version": 1, "defaults": {"metadata": {"team": "t" * 60}}},
        {"id": "small", "prompt": "p", "metadata": {"k": "v"}},
        {"id": "big", "prompt": "p", "metadata": {"note": "n" * 40}},
    )
    result = read_manifest(uri, STORAGE, on_invalid="quarantine", limits=limits)
    assert [i.id for i in result.items] == ["small"]
    (reject,) = result.rejects
    assert (reject.line, reject.field) == (3, "metadata")
    assert "over the 100-byte limit" in reject.reason


def test_json_array_is_streamed_and_an_oversized_item_names_its_position(
    tmp_path: Path, ijson_backend: str
) -> None:
    path = tmp_path / "a.json"
    rows = [{"id": "a", "prompt": "p", "metadata": {"ratio": 0.5}}, {"id": "b", "prompt": "q" * (5 * MB)}]
    path.write_text(json.dumps(rows))
    started = time.monotonic()
    with pytest.raises(ManifestError) as info:
        read_manifest(str(path), STORAGE, on_invalid="quarantine")
    assert time.monotonic() - started < (1.0 if ijson_backend == "yajl2_c" else 5.0)
    assert info.value.field == "items[1]" and "item 2 is over the" in str(info.value)
    path.write_text(json.dumps(rows[:1]))
    (item,) = read_manifest(str(path), STORAGE).items
    assert item.metadata == {"ratio": 0.5}  # a float, not ijson's Decimal


def test_json_object_with_items_before_its_header_is_streamed(tmp_path: Path, ijson_backend: str) -> None:
    doc = {"manifest_version": 1, "defaults": {"image_size": "2K"}, "items": [{"id": "a", "prompt": "p"}]}
    path = tmp_path / "o.json"
    path.write_text(json.dumps(doc, sort_keys=True, indent=1))  # "items" before "manifest_version"
    (item,) = read_manifest(str(path), STORAGE).items
    assert item.image_size == "2K" and item.line == 1
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(doc).encode())
    assert read_manifest(str(path), STORAGE).items == (item,)


def test_broken_documents_name_the_line_on_both_backends(tmp_path: Path, ijson_backend: str) -> None:
    path = tmp_path / "a.json"
    path.write_text('[\n {"id": "a", "prompt": "p"},\n {"id": "b", "prompt": "p"}')  # ends early: no ]
    with pytest.raises(ManifestError, match="JSON document is invalid") as info:
        read_manifest(str(path), STORAGE)
    assert info.value.line == 3
    path.write_bytes(b'[\n{"id": "a",\n "prompt": "\xff"}]')
    with pytest.raises(ManifestError, match="JSON document is invalid") as info:
        read_manifest(str(path), STORAGE)
    assert info.value.line == 3


CHILD = textwrap.dedent(
    """
    import json, resource, sys
    from airflow_banana.manifests import read_manifest
    from airflow_banana.storage.objects import open_storage
    storage = open_storage()
    read_manifest(sys.argv[1], storage, on_invalid="quarantine")  # imports and caches warmed
    out = {}
    for uri in sys.argv[2:]:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        result = read_manifest(uri, storage, on_invalid="quarantine")
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        grew_mb = (after - before) / 1024
        out[uri] = {"items": len(result.items), "rejects": len(result.rejects), "grew_mb": grew_mb}
    print(json.dumps(out))
    """
)


def test_peak_rss_reading_a_manifest_is_bounded(tmp_path: Path) -> None:
    """In a child process (ru_maxrss is per process): 30k items of each format and a 50 MB line.

    Before streaming and packing, 30k items grew RSS by ~40 MB (JSONL) / ~60 MB (JSON array) and
    the 50 MB line by >100 MB. The 200k-item figures are in bench/manifest_rss.py.
    """
    n = 30_000
    rows = [
        {"id": f"sku-{i:06d}", "prompt": f"Studio photo of product {i}, soft light", "metadata": {"sku": i}}
        for i in range(n)
    ]
    (tmp_path / "warm.jsonl").write_text(json.dumps(rows[0]) + "\n")
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "m.json").write_text("[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]\n")
    with (tmp_path / "long.jsonl").open("w") as out:
        out.write('{"id": "huge", "prompt": "' + "x" * (50 * MB) + '"}\n')
    names = ["m.jsonl", "m.json", "long.jsonl"]
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "warm.jsonl"), *(str(tmp_path / n) for n in names)],
        capture_output=True,
        text=True,
        cwd=str(ROOT),
        timeout=120,
        check=True,
    )
    grew = json.loads(proc.stdout.strip().splitlines()[-1])
    jsonl_run, json_run, long_run = (grew[str(tmp_path / name)] for name in names)
    assert jsonl_run["items"] == json_run["items"] == n and long_run["rejects"] == 1
    assert jsonl_run["grew_mb"] < 20, grew
    assert json_run["grew_mb"] < 20, grew
    assert long_run["grew_mb"] < 20, grew


def test_documents_with_big_integers_and_absurd_nesting(tmp_path: Path, ijson_backend: str) -> None:
    path = tmp_path / "a.json"
    big = {
        "id": "a",
        "prompt": "p",
        "metadata": {"n": 2**70},
    }  # over yajl's int64: the python backend reads it
    path.write_text(
        json.dumps({"manifest_version": 1, "defaults": {"metadata": {"m": 2**64}}, "items": [big]})
    )
    (item,) = read_manifest(str(path), STORAGE).items
    assert item.metadata == {"m": 2**64, "n": 2**70}
    deep = {"id": "deep", "prompt": "p", "metadata": json.loads("[" * 40 + "]" * 40)}
    path.write_text(json.dumps([deep, {"id": "ok", "prompt": "p"}], indent=1))
    result = read_manifest(str(path), STORAGE, on_invalid="quarantine")
    assert [i.id for i in result.items] == ["ok"]
    assert result.rejects[0].line == 1 and "nests 41 levels deep, over the 33" in result.rejects[0].reason
    path.write_text("[\n" + "[" * 100_000 + "]" * 100_000 + "\n]")  # state per level in any parser
    started = time.monotonic()
    with pytest.raises(ManifestError, match="nests deeper than 98 levels") as info:
        read_manifest(str(path), STORAGE)
    assert time.monotonic() - started < 2.0 and info.value.line == 2
