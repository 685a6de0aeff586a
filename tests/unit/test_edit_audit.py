"""The local thought-signature audit agrees with Google's rule and positions (and the simulator's)."""

from __future__ import annotations

import base64
import random
from typing import Any

import pytest

from airflow_banana.editing.audit import audit_history, audit_model_turn, find_gaps, signature_bytes
from airflow_banana.exceptions import SignatureError
from airflow_banana.testing.signatures import SignatureIssuer, check_history

ISSUER = SignatureIssuer("unit")


def _sig(n: int) -> str:
    return base64.urlsafe_b64encode(ISSUER.issue(f"resp{n}", n)).decode()


def _model(n: int, *, thoughts: bool = False) -> dict[str, Any]:
    parts: list[dict[str, Any]] = []
    if thoughts:
        parts += [{"text": "planning", "thought": True}, {"inline_data": {"data": "AAAA"}, "thought": True}]
    parts += [
        {"text": "Here it is", "thought_signature": _sig(n)},
        {"inline_data": {"data": "iVBORw==", "mime_type": "image/png"}, "thought_signature": _sig(n + 1)},
    ]
    return {"role": "model", "parts": parts}


def _user(text: str) -> dict[str, Any]:
    return {"role": "user", "parts": [{"text": text}]}


def test_a_complete_history_passes() -> None:
    history = [_user("a"), _model(1, thoughts=True), _user("b"), _model(3), _user("c")]
    assert find_gaps(history) == []
    audit_history(history, session="s")


def test_gaps_are_reported_with_googles_1_based_positions_and_wording() -> None:
    history = [_user("a"), _model(1, thoughts=True), _user("b"), _model(3), _user("c")]
    del history[1]["parts"][3]["thought_signature"]  # the image of the first model turn
    del history[3]["parts"][0]["thought_signature"]  # the text of the second
    gaps = find_gaps(history)
    assert [(g.content_position, g.part_position, g.kind) for g in gaps] == [(2, 4, "Image"), (4, 1, "Text")]
    with pytest.raises(SignatureError) as err:
        audit_history(history, session="shoe")
    message = str(err.value)
    assert (
        "edit session 'shoe': Image part is missing a thought_signature in content position 2, "
        "part position 4." in message
    )
    assert "1 more gap" in message and "nothing was sent" in message and "NOT restarted" in message


def test_wire_camel_case_empty_and_undecodable_signatures() -> None:
    model = {
        "role": "model",
        "parts": [{"text": "t", "thoughtSignature": _sig(1)}, {"inlineData": {"data": "x"}}],
    }
    assert [(g.part_position, g.kind) for g in find_gaps([model])] == [(2, "Image")]
    assert signature_bytes({"thought_signature": ""}) is None
    assert signature_bytes({"thought_signature": "!!not base64!!"}) is None
    assert signature_bytes({"thoughtSignature": "c2tpcF90aG91Z2h0X3NpZ25hdHVyZV92YWxpZGF0b3I"}) == (
        b"skip_thought_signature_validator"  # a documented bypass value, unpadded
    )
    assert audit_model_turn(model) is not None
    assert audit_model_turn(_model(5)) is None


def test_agrees_with_the_simulators_validator_on_random_strippings() -> None:
    """Two independent implementations of Google's rule: they must find the same first gap."""
    rng = random.Random(7)
    for _ in range(200):
        history: list[dict[str, Any]] = []
        for i in range(rng.randint(1, 4)):
            history += [_user(str(i)), _model(10 * i, thoughts=rng.random() < 0.5)]
        history.append(_user("next"))
        for content in history:
            for part in content["parts"]:
                if "thought_signature" in part and rng.random() < 0.2:
                    del part["thought_signature"]
        # The simulator reads wire JSON (camelCase); the SDK dump is snake_case.
        wire = [
            {
                "role": c["role"],
                "parts": [
                    {
                        (
                            "inlineData"
                            if k == "inline_data"
                            else "thoughtSignature"
                            if k == "thought_signature"
                            else k
                        ): v
                        for k, v in p.items()
                    }
                    for p in c["parts"]
                ],
            }
            for c in history
        ]
        ours = find_gaps(history)
        theirs = check_history(wire, ISSUER)
        if theirs is None:
            assert ours == []
        else:
            assert (ours[0].content_position, ours[0].part_position, ours[0].kind) == (
                theirs.content_position,
                theirs.part_position,
                theirs.kind,
            )
