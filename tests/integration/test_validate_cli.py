"""``airflow-banana validate MANIFEST``: every problem in one pass, with line numbers, no connection."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from airflow_banana.cli import main

pytestmark = [pytest.mark.integration]


def _png(path: Path) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, format="PNG")
    path.write_bytes(buf.getvalue())
    return str(path)


def test_validate_lists_every_problem_with_its_line_and_exits_non_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # no connection at all: nothing here may need one
    for var in [v for v in __import__("os").environ if v.startswith("AIRFLOW_CONN_")]:
        monkeypatch.delenv(var)
    good_ref = _png(tmp_path / "ref.png")
    (tmp_path / "notes.txt").write_text("not an image")
    lines = [
        {"id": "ok", "prompt": "a mug"},
        {"id": "no-prompt"},
        "{not json",
        {"id": "ok", "prompt": "the same id again"},
        {"id": "missing-ref", "prompt": "x", "reference_images": [str(tmp_path / "nope.png")]},
        {"id": "text-ref", "prompt": "x", "reference_images": [str(tmp_path / "notes.txt")]},
        {"id": "big", "prompt": "x", "image_size": "8K"},
        {"id": "with-ref", "prompt": "a mug like this", "reference_images": [good_ref]},
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))

    assert main(["validate", str(manifest)]) == 1
    out = capsys.readouterr().out.splitlines()
    problems = {int(line.split(":")[1].split()[0]): line for line in out[:-1]}
    assert sorted(problems) == [1, 2, 3, 4, 5, 6, 7]  # every bad line, in one pass
    assert "duplicate id 'ok'" in problems[1] and "duplicate id 'ok'" in problems[4]
    assert "field 'prompt'" in problems[2]
    assert "reference_images" in problems[5] and "reference_images" in problems[6]
    assert "field 'image_size'" in problems[7]
    assert out[-1] == "1 item(s) valid, 7 line(s) with problems"

    assert main(["validate", str(manifest), "--json"]) == 1
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(r["line"] for r in rows[:-1]) == [1, 2, 3, 4, 5, 6, 7]
    assert rows[-1] == {"valid": 1, "invalid": 7}


def test_validate_a_clean_manifest_exits_zero_and_a_missing_one_two(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "a", "prompt": "a mug"}) + "\n")
    assert main(["validate", str(manifest)]) == 0
    assert capsys.readouterr().out.strip() == "1 item(s) valid, 0 line(s) with problems"
    assert main(["validate", str(tmp_path / "absent.jsonl")]) == 2
    assert "absent.jsonl" in capsys.readouterr().err
