"""``editing.prepare``: the checks of an edit run before spend, without Airflow or a channel."""

from __future__ import annotations

import pytest

from airflow_banana.editing.engine import TurnSpec
from airflow_banana.editing.prepare import (
    EditRequest,
    Instruction,
    parse_instructions,
    parse_uris,
    prepare_turns,
    resolve_session_uri,
    session_id_from_uri,
)
from airflow_banana.editing.session import EditSession
from airflow_banana.exceptions import ConfigurationError
from airflow_banana.identity import RunIdentity
from airflow_banana.storage.objects import Storage

RUN = RunIdentity("dag", "edit", "run-1")
URI = "/out/sessions/s1/session.json"


def prepare(
    request: EditRequest, session: EditSession | None, uri: str = URI
) -> tuple[EditSession, list[TurnSpec]]:
    return prepare_turns(
        request, session, uri=uri, default_model="m", storage=Storage(), identity=RUN, who="t"
    )


def test_instructions_in_every_accepted_shape() -> None:
    assert parse_instructions(None, who="t") == ()
    assert parse_instructions("  ", who="t") == ()
    assert parse_instructions("warmer", who="t") == (Instruction("warmer", ()),)
    given = ["a", {"text": "b", "reference_images": "gs://x/r.png"}]
    assert parse_instructions(given, who="t") == (Instruction("a", ()), Instruction("b", ("gs://x/r.png",)))
    with pytest.raises(ConfigurationError, match="instruction 2 is empty"):
        parse_instructions(["a", {"text": ""}], who="t")
    with pytest.raises(ConfigurationError, match="list of URIs"):
        parse_uris([""], who="t", what="reference_images")


def test_session_uri_and_id() -> None:
    uri = resolve_session_uri(output_prefix="/out", session_id="s1", session_uri=None, who="t")
    assert session_id_from_uri(uri) == "s1"
    assert session_id_from_uri("gs://b/x.json").startswith("session-")
    with pytest.raises(ConfigurationError, match="give session_id"):
        resolve_session_uri(output_prefix="/out", session_id=None, session_uri=None, who="t")
    with pytest.raises(ConfigurationError, match="output_prefix is required"):
        resolve_session_uri(output_prefix="", session_id="s1", session_uri=None, who="t")


def test_a_new_session_gets_a_start_turn_and_one_turn_per_instruction() -> None:
    request = EditRequest(prompt="a cat", instructions=parse_instructions(["hat", "scarf"], who="t"))
    session, specs = prepare(request, None)
    assert (session.session_id, session.model, session.settings.image_size) == ("s1", "m", "1K")
    assert [s.instruction for s in specs] == ["a cat", "hat", "scarf"]
    assert len({s.key for s in specs}) == 3
    _, respecs = prepare(request, None)
    assert [s.key for s in respecs] == [s.key for s in specs]  # a retried task skips what it paid for


def test_an_existing_session_keeps_its_settings_and_start() -> None:
    session, _ = prepare(EditRequest(prompt="a cat"), None)
    with pytest.raises(ConfigurationError, match="cannot continue with '2K'"):
        prepare(EditRequest(instructions=(Instruction("hat", ()),), image_size="2K"), session)
    with pytest.raises(ConfigurationError, match="different prompt"):
        prepare(EditRequest(prompt="a dog"), session)
    with pytest.raises(ConfigurationError, match="no edit session"):
        prepare(EditRequest(instructions=(Instruction("hat", ()),)), None)
