"""Manifest reading: formats, schema errors with line and field, ids, defaults, policies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from airflow_banana.exceptions import ConfigurationError, ManifestError
from airflow_banana.manifests import (
    ManifestItem,
    manifest_schema,
    read_manifest,
    write_manifest,
)
from airflow_banana.models import DEFAULT_MODEL, ImageRequest, ReferenceImage
from airflow_banana.storage.objects import open_storage

STORAGE = open_storage()


def jsonl(path: Path, *rows: Any) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), "utf-8")
    return str(path)


def test_schema_file_is_valid_draft_2020_12_and_shipped_in_the_package() -> None:
    schema = manifest_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    assert validator.is_valid({"id": "a", "prompt": "p", "image_size": "4K", "deadline": "+6h"})
    assert not validator.is_valid({"id": "a", "prompt": "p", "image_size": "1k"})
    assert not validator.is_valid({"id": "../a", "prompt": "p"})
    assert not validator.is_valid({"id": "a", "prompt": "p", "imagesize": "1K"})
    assert not validator.is_valid({"id": "a", "prompt": "p", "deadline": "2026-12-01T10:00:00"})
    assert not validator.is_valid({"id": "a", "prompt": "p", "reference_images": ["x"] * 15})


def test_jsonl_with_builtin_defaults_and_blank_lines(tmp_path: Path) -> None:
    uri = jsonl(
        tmp_path / "m.jsonl", {"id": "a", "prompt": "a cat"}, "", "   ", {"id": "b", "prompt": "a dog"}
    )
    result = read_manifest(uri, STORAGE)
    assert result.format == "jsonl" and result.rejects == () and result.uri == uri
    assert result.items == (
        ManifestItem(
            id="a", prompt="a cat", image_size="1K", aspect_ratio="1:1", model=DEFAULT_MODEL, line=1
        ),
        ManifestItem(id="b", prompt="a dog", line=4),
    )


def test_precedence_item_over_manifest_over_operator_over_builtin(tmp_path: Path) -> None:
    uri = jsonl(
        tmp_path / "m.jsonl",
        {"manifest_version": 1, "defaults": {"image_size": "2K", "metadata": {"team": "m", "x": 1}}},
        {"id": "a", "prompt": "p"},
        {"id": "b", "prompt": "p", "image_size": "4K", "metadata": {"x": 2}},
    )
    operator = {"image_size": "1K", "aspect_ratio": "16:9", "metadata": {"dag": "d", "team": "op"}}
    a, b = read_manifest(uri, STORAGE, defaults=operator).items
    assert (a.image_size, a.aspect_ratio, a.model) == ("2K", "16:9", DEFAULT_MODEL)
    assert a.metadata == {"dag": "d", "team": "m", "x": 1}
    assert (b.image_size, b.aspect_ratio) == ("4K", "16:9")
    assert b.metadata == {"dag": "d", "team": "m", "x": 2}
    assert a.line == 2


def test_json_array_and_object_documents(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps([{"id": "a", "prompt": "p"}, {"id": "b", "prompt": "q"}]))
    result = read_manifest(str(tmp_path / "a.json"), STORAGE)
    assert result.format == "json" and [i.id for i in result.items] == ["a", "b"]
    assert [i.line for i in result.items] == [1, 2]

    doc = {"manifest_version": 1, "defaults": {"aspect_ratio": "3:2"}, "items": [{"id": "c", "prompt": "p"}]}
    (tmp_path / "o.json").write_text(json.dumps(doc, indent=2))  # pretty-printed: spans lines
    (item,) = read_manifest(str(tmp_path / "o.json"), STORAGE).items
    assert item.aspect_ratio == "3:2"
    (tmp_path / "o1.json").write_text(json.dumps(doc))  # the same on one line
    assert read_manifest(str(tmp_path / "o1.json"), STORAGE).items == (item,)


def test_invalid_json_array_document_names_the_line(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text('[\n {"id": "a", "prompt": "p"},\n {"id": }\n]')
    with pytest.raises(ManifestError, match=r"a\.json:3") as info:
        read_manifest(str(tmp_path / "a.json"), STORAGE, on_invalid="quarantine")
    assert info.value.line == 3


def test_errors_name_manifest_line_and_field(tmp_path: Path) -> None:
    uri = jsonl(
        tmp_path / "m.jsonl", {"id": "a", "prompt": "p"}, {"id": "b", "prompt": "p", "image_size": "1k"}
    )
    with pytest.raises(ManifestError) as info:
        read_manifest(uri, STORAGE)
    err = info.value
    assert (err.manifest, err.line, err.field) == (uri, 2, "image_size")
    assert f"{uri}:2 field 'image_size'" in str(err)
    assert "use '1K'" in str(err) and "nothing was generated or spent" in str(err)


@pytest.mark.parametrize(
    ("row", "field", "reason"),
    [
        ('{"id": "a", "prompt": ', None, "not JSON"),
        ("[1, 2]", None, "must be a JSON object"),
        ({"prompt": "p"}, "id", "is required"),
        ({"id": "a"}, "prompt", "is required"),
        ({"id": "a", "prompt": "   "}, "prompt", "empty or only whitespace"),
        ({"id": "a", "prompt": "p", "imagesize": "2K"}, "imagesize", "did you mean 'image_size'"),
        ({"id": "a", "prompt": "p", "aspect_ratio": "1:2"}, "aspect_ratio", "is not one of"),
        ({"id": "a", "prompt": "p", "reference_images": "x.png"}, "reference_images", "not of type 'array'"),
        ({"id": "a", "prompt": "p", "reference_images": ["https://x/y.png"]}, "reference_images[0]", "gs://"),
        ({"id": "a", "prompt": "p", "metadata": []}, "metadata", "not of type 'object'"),
        ({"id": "a", "prompt": "p", "deadline": "tomorrow"}, "deadline", "neither an ISO-8601"),
        ({"id": "a", "prompt": "p", "deadline": "2026-12-01T10:00:00"}, "deadline", "no timezone"),
        ({"id": "a", "prompt": "p", "deadline": "2026-13-01T10:00:00Z"}, "deadline", "neither"),
        ({"id": "a", "prompt": 5}, "prompt", "not of type 'string'"),
        ({"id": "a", "prompt": "p", "manifest_version": 1}, "manifest_version", "first line"),
    ],
)
def test_each_kind_of_bad_line_is_quarantined_with_field_and_reason(
    tmp_path: Path, row: Any, field: str | None, reason: str
) -> None:
    uri = jsonl(tmp_path / "m.jsonl", {"id": "ok", "prompt": "p"}, row)
    result = read_manifest(uri, STORAGE, on_invalid="quarantine")
    assert [i.id for i in result.items] == ["ok"]
    (reject,) = result.rejects
    assert reject.line == 2
    assert reject.field == field
    assert reason in reject.reason
    assert reject.raw == (row if isinstance(row, str) else json.dumps(row))


@pytest.mark.parametrize(
    ("item_id", "reason"),
    [
        ("a/b", "path separator"),
        ("a\\b", "path separator"),
        ("..", "'..'"),
        ("a..b", "'..'"),
        (".hidden", "starts with '.'"),
        ("", "empty"),
        ("x" * 129, "limit is 128"),
        ("tab\there", "control character"),
        ("nul\x00", "control character"),
        ("spa ce", "only A-Z a-z 0-9"),
        ("ünï", "only A-Z a-z 0-9"),
        (7, "must be a string"),
    ],
)
def test_unsafe_ids_are_rejected(tmp_path: Path, item_id: Any, reason: str) -> None:
    uri = jsonl(tmp_path / "m.jsonl", {"id": item_id, "prompt": "p"})
    with pytest.raises(ManifestError) as info:
        read_manifest(uri, STORAGE)
    assert info.value.field == "id" and info.value.line == 1
    assert reason in str(info.value)


def test_safe_ids_are_accepted(tmp_path: Path) -> None:
    ids = ["a", "A-b_c.9", "x" * 128, "-lead-dash", "v1.2"]
    uri = jsonl(tmp_path / "m.jsonl", *({"id": i, "prompt": "p"} for i in ids))
    assert [i.id for i in read_manifest(uri, STORAGE).items] == ids


def test_duplicate_ids_reject_every_copy_naming_the_other_lines(tmp_path: Path) -> None:
    uri = jsonl(
        tmp_path / "m.jsonl",
        {"id": "a", "prompt": "one"},
        {"id": "b", "prompt": "p"},
        {"id": "A", "prompt": "two"},  # collides with "a" on case-insensitive disks
        {"id": "a", "prompt": "three"},
    )
    result = read_manifest(uri, STORAGE, on_invalid="quarantine")
    assert [i.id for i in result.items] == ["b"]
    assert [(r.line, r.field, r.item_id) for r in result.rejects] == [
        (1, "id", "a"),
        (3, "id", "A"),
        (4, "id", "a"),
    ]
    assert "also on line 3, line 4" in result.rejects[0].reason
    assert "also on line 1, line 4" in result.rejects[1].reason
    with pytest.raises(ManifestError, match="3 invalid items"):
        read_manifest(uri, STORAGE)


def test_reject_policy_lists_all_problems_up_to_a_limit(tmp_path: Path) -> None:
    rows = [{"id": f"i{n}", "prompt": "p", "image_size": "8K"} for n in range(30)]
    uri = jsonl(tmp_path / "m.jsonl", {"id": "good", "prompt": "p"}, *rows)
    with pytest.raises(ManifestError) as info:
        read_manifest(uri, STORAGE, max_problems=5)
    text = str(info.value)
    assert "30 invalid items" in text
    assert "line 2 field 'image_size'" in text and "line 6 field 'image_size'" in text
    assert "line 7 " not in text and "... and 25 more" in text
    assert "on_invalid='quarantine'" in text


def test_quarantine_rejects_jsonl_is_written_by_the_caller(tmp_path: Path) -> None:
    uri = jsonl(tmp_path / "m.jsonl", {"id": "a", "prompt": "p"}, "not json")
    result = read_manifest(uri, STORAGE, on_invalid="quarantine")
    rows = [json.loads(line) for line in result.rejects_jsonl().splitlines()]
    assert rows == [
        {"line": 2, "item_id": None, "field": None, "reason": rows[0]["reason"], "raw": "not json"}
    ]
    assert rows[0]["reason"].startswith("line is not JSON")


def test_bad_header_always_raises(tmp_path: Path) -> None:
    uri = jsonl(tmp_path / "m.jsonl", {"manifest_version": 2}, {"id": "a", "prompt": "p"})
    with pytest.raises(ManifestError, match="invalid manifest header") as info:
        read_manifest(uri, STORAGE, on_invalid="quarantine")
    assert (info.value.line, info.value.field) == (1, "manifest_version")
    uri = jsonl(tmp_path / "d.jsonl", {"manifest_version": 1, "defaults": {"image_size": "1k"}})
    with pytest.raises(ManifestError) as info:
        read_manifest(uri, STORAGE, on_invalid="quarantine")
    assert info.value.field == "defaults.image_size"
    uri = jsonl(tmp_path / "p.jsonl", {"manifest_version": 1, "defaults": {"prompt": "x"}})
    with pytest.raises(ManifestError, match="unknown field") as info:
        read_manifest(uri, STORAGE)
    assert info.value.field == "defaults.prompt"


def test_bad_operator_defaults_and_policy_are_configuration_errors(tmp_path: Path) -> None:
    uri = jsonl(tmp_path / "m.jsonl", {"id": "a", "prompt": "p"})
    with pytest.raises(ConfigurationError, match="field 'image_size': '2k' is not one of"):
        read_manifest(uri, STORAGE, defaults={"image_size": "2k"})
    with pytest.raises(ConfigurationError, match="on_invalid"):
        read_manifest(uri, STORAGE, on_invalid="ignore")  # type: ignore[arg-type]


def test_non_utf8_line_is_rejected_with_its_number(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"id": "a", "prompt": "p"}\n{"id": "b", "prompt": "\xff"}\n')
    result = read_manifest(str(path), STORAGE, on_invalid="quarantine")
    assert [i.id for i in result.items] == ["a"]
    assert (result.rejects[0].line, result.rejects[0].reason) == (2, "line is not valid UTF-8")


def test_bom_and_crlf_are_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"id": "a", "prompt": "p"}\r\n{"id": "b", "prompt": "q"}\r\n')
    assert [i.id for i in read_manifest(str(path), STORAGE).items] == ["a", "b"]


def test_first_line_broken_falls_back_to_jsonl(tmp_path: Path) -> None:
    uri = jsonl(tmp_path / "m.jsonl", '{"id": "a", "prompt": ', {"id": "b", "prompt": "p"})
    result = read_manifest(uri, STORAGE, on_invalid="quarantine")
    assert result.format == "jsonl"
    assert [i.id for i in result.items] == ["b"] and result.rejects[0].line == 1


def test_document_errors_name_the_item_position(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps([{"id": "a", "prompt": "p"}, {"id": "b", "prompt": ""}]))
    with pytest.raises(ManifestError) as info:
        read_manifest(str(tmp_path / "a.json"), STORAGE)
    assert info.value.field == "items[1].prompt"
    with pytest.raises(ManifestError, match="'items' array"):
        (tmp_path / "h.json").write_text('{\n"manifest_version": 1\n}')
        read_manifest(str(tmp_path / "h.json"), STORAGE)


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="does not exist"):
        read_manifest(str(tmp_path / "none.jsonl"), STORAGE)


def test_empty_manifest_has_no_items(tmp_path: Path) -> None:
    (tmp_path / "e.jsonl").write_text("\n\n")
    assert read_manifest(str(tmp_path / "e.jsonl"), STORAGE).items == ()


def test_relative_reference_images_resolve_against_the_manifest_folder(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    uri = jsonl(
        tmp_path / "sub" / "m.jsonl",
        {"id": "a", "prompt": "p", "reference_images": ["refs/cat.png", "/abs/dog.png", "gs://b/c.png"]},
    )
    (item,) = read_manifest(uri, STORAGE).items
    assert item.reference_images == (f"{tmp_path}/sub/refs/cat.png", "/abs/dog.png", "gs://b/c.png")


def test_to_request_and_write_manifest_roundtrip(tmp_path: Path) -> None:
    uri = jsonl(
        tmp_path / "m.jsonl",
        {"manifest_version": 1, "defaults": {"image_size": "2K"}},
        {"id": "a", "prompt": "p", "deadline": "+6h", "metadata": {"k": "v"}},
        {"id": "b", "prompt": "q", "reference_images": ["gs://b/r.png"]},
    )
    items = read_manifest(uri, STORAGE).items
    request = items[0].to_request()
    assert request == ImageRequest(item_id="a", prompt="p", image_size="2K", aspect_ratio="1:1")
    ref = ReferenceImage(data=b"img", mime_type="image/png", uri="gs://b/r.png")
    assert items[1].to_request((ref,)).reference_images == (ref,)
    with pytest.raises(ValueError, match="load_reference_images"):
        items[1].to_request()

    out = str(tmp_path / "sub.jsonl")
    write_manifest(out, items, STORAGE)
    again = read_manifest(out, STORAGE).items
    assert again == items and again[0].metadata == {"k": "v"}
    assert [i.line for i in again] == [2, 3]  # after the header line
    assert again[0].to_request().fingerprint() == request.fingerprint()
