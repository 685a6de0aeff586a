"""Every check of an edit run before the first paid turn: the session to continue and its turns.

``SignatureEditOperator`` hands this module what the task was given (``EditRequest``) and the
session document loaded from storage (or None); ``prepare_turns`` answers the session (the
loaded one, or a new one) and one ``TurnSpec`` per turn to apply, or raises
``ConfigurationError`` saying that nothing was sent. Checked here, in this order:

1. the start: ``prompt`` and/or ``base_image`` (with ``base_image`` and no prompt, the first
   instruction is the edit applied to it); ``reference_images`` belong to the start only;
2. the session: its id matches; an existing session keeps its model and generation settings (a
   different explicit value is refused) and a start given again must be the same start (its
   fingerprint, ``turns.start_fingerprint``);
3. every turn's images: at most ``MAX_REFERENCE_IMAGES``, text within the model's input limit
   beside them, each image read and checked (``manifests.references``).

A turn's key (``turns.turn_key``) is what makes a retried task skip the turns it already paid
for: the start's key comes from its fingerprint, an instruction's from the run key and its
position in this run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_banana.editing.session import EditSession, GenerationSettings, session_uri_for
from airflow_banana.editing.turns import start_fingerprint, turn_key
from airflow_banana.exceptions import ConfigurationError
from airflow_banana.models import DEFAULT_DATA_POLICY, MAX_REFERENCE_IMAGES, ReferenceImage

if TYPE_CHECKING:
    from airflow_banana.editing.engine import TurnSpec
    from airflow_banana.identity import RunIdentity
    from airflow_banana.storage.objects import Storage


@dataclass(frozen=True)
class Instruction:
    """One edit instruction: its text and the reference images sent with it."""

    text: str
    reference_images: tuple[str, ...]


@dataclass(frozen=True)
class EditRequest:
    """What one run asks of a session, as the task was given it (rendered, not yet checked).

    ``prompt``/``base_image``/``reference_images`` start a session; ``instructions`` are the
    turns after the start; the generation settings and ``model`` apply to a NEW session (an
    existing one keeps its own; a different explicit value is refused).
    """

    session_id: str | None = None
    prompt: str | None = None
    base_image: str | None = None
    instructions: tuple[Instruction, ...] = ()
    reference_images: tuple[str, ...] = ()
    image_size: str | None = None
    aspect_ratio: str | None = None
    include_thoughts: bool | None = None
    model: str | None = None
    data_policy: str | None = None

    @property
    def starting(self) -> bool:
        return bool(self.prompt or self.base_image)


def parse_instructions(value: Any, *, who: str) -> tuple[Instruction, ...]:
    """Instructions as given: one string, or a list of strings / ``{"text", "reference_images"}``."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return ()  # a template that rendered empty: no instruction this run
    items = [value] if isinstance(value, str | Mapping) else list(value)
    out: list[Instruction] = []
    for n, item in enumerate(items, start=1):
        if isinstance(item, str):
            text, refs = item, ()
        elif isinstance(item, Mapping):
            text = item.get("text") or item.get("instruction") or ""
            refs = item.get("reference_images") or ()
        else:
            raise ConfigurationError(
                f"{who}: instruction {n} must be a string or {{'text': ..., 'reference_images': [...]}}, "
                f"got {type(item).__name__}"
            )
        if not isinstance(text, str) or not text.strip():
            raise ConfigurationError(f"{who}: instruction {n} is empty")
        out.append(Instruction(text, parse_uris(refs, who=who, what=f"instruction {n} reference_images")))
    return tuple(out)


def parse_uris(value: Any, *, who: str, what: str) -> tuple[str, ...]:
    """A tuple of URIs from one URI, a list of them, or nothing."""
    if value is None or value == "":
        return ()
    items = [value] if isinstance(value, str) else list(value)
    if not all(isinstance(u, str) and u for u in items):
        raise ConfigurationError(f"{who}: {what} must be a list of URIs, got {value!r}")
    return tuple(items)


def resolve_session_uri(
    *, output_prefix: str, session_id: str | None, session_uri: str | None, who: str
) -> str:
    """Where the session document lives: ``session_uri``, else under ``output_prefix`` by id."""
    from airflow_banana.manifests.model import id_problem

    if not output_prefix:
        raise ConfigurationError(f"{who}: output_prefix is required")
    if session_uri:
        return session_uri
    if session_id:
        problem = id_problem(session_id)
        if problem:
            raise ConfigurationError(f"{who}: session_id {session_id!r}: {problem}")
        return session_uri_for(output_prefix, session_id)
    raise ConfigurationError(f"{who}: give session_id (a new or existing session) or session_uri")


def session_id_from_uri(uri: str) -> str:
    """A session id for a session created at an explicit URI: its folder name, else a hash."""
    from airflow_banana.manifests.model import id_problem

    parts = [p for p in uri.replace("\\", "/").split("/") if p]
    if len(parts) >= 2 and parts[-1] == "session.json" and id_problem(parts[-2]) is None:
        return parts[-2]
    return "session-" + hashlib.sha256(uri.encode()).hexdigest()[:12]


def prepare_turns(
    request: EditRequest,
    session: EditSession | None,
    *,
    uri: str,
    default_model: str,
    storage: Storage,
    identity: RunIdentity,
    who: str,
) -> tuple[EditSession, list[TurnSpec]]:
    """The session (``session`` or a new one) and every turn to apply, all inputs checked before spend.

    ``default_model`` is the model of a new session that names none (the first channel's).
    """
    from airflow_banana.editing.engine import TurnSpec

    run = identity.labels()
    starting = request.starting
    instructions = request.instructions
    start_text = request.prompt or ""
    start_refs = request.reference_images
    if request.base_image and not start_text:
        if not instructions:
            raise ConfigurationError(f"{who}: base_image needs a prompt or an instruction to apply to it")
        first, instructions = instructions[0], instructions[1:]
        start_text, start_refs = first.text, start_refs + first.reference_images
    if not starting and start_refs:
        raise ConfigurationError(
            f"{who}: reference_images belong to the first turn (prompt/base_image); for later "
            "turns give them per instruction: {'text': ..., 'reference_images': [...]}"
        )
    if not starting and not instructions:
        raise ConfigurationError(f"{who}: nothing to do: give prompt, base_image or instructions")

    session_id = session.session_id if session else (request.session_id or session_id_from_uri(uri))
    if session is not None and request.session_id and request.session_id != session.session_id:
        raise ConfigurationError(
            f"{who}: session_id {request.session_id!r} does not match the session at {uri} "
            f"({session.session_id!r}); nothing was sent"
        )
    start_uris = ((request.base_image,) if request.base_image else ()) + start_refs
    start_images = load_turn_images(session_id, start_text or "start", start_uris, storage, who=who)
    turn_images = [
        load_turn_images(session_id, i.text, i.reference_images, storage, who=who) for i in instructions
    ]
    settings, model = _session_settings(request, session, uri=uri, default_model=default_model, who=who)

    base_sha = start_images[0].sha256 if request.base_image else None
    ref_shas = [i.sha256 for i in (start_images[1:] if request.base_image else start_images)]
    fingerprint = (
        start_fingerprint(
            prompt=start_text,
            base_image_sha256=base_sha,
            reference_sha256=ref_shas,
            model=model,
            settings=settings.as_dict(),
        )
        if starting
        else ""
    )
    if session is None:
        session = EditSession(
            session_id=session_id, uri=uri, model=model, settings=settings, start_fingerprint=fingerprint
        )
    elif starting and fingerprint != session.start_fingerprint:
        raise ConfigurationError(
            f"{who}: edit session '{session.session_id}' at {uri} already exists and was started "
            "from a different prompt/base image/config. Continue it by giving only instructions, "
            "or choose another session_id. Nothing was sent"
        )
    specs: list[TurnSpec] = []
    if starting:
        specs.append(
            TurnSpec(
                key=turn_key(session_id=session_id, scope="start:" + fingerprint, instruction=start_text),
                instruction=start_text,
                images=start_images,
                reference_uris=start_uris,
                parent_sha256=base_sha,
                run=run,
            )
        )
    for position, (instruction, images) in enumerate(zip(instructions, turn_images, strict=True)):
        specs.append(
            TurnSpec(
                key=turn_key(
                    session_id=session_id,
                    scope=f"{identity.run_key}#{position}",
                    instruction=instruction.text,
                    reference_sha256=[i.sha256 for i in images],
                ),
                instruction=instruction.text,
                images=images,
                reference_uris=instruction.reference_images,
                run=run,
            )
        )
    return session, specs


def _session_settings(
    request: EditRequest, session: EditSession | None, *, uri: str, default_model: str, who: str
) -> tuple[GenerationSettings, str]:
    """A new session's settings and model from the request; an existing one's, checked against it."""
    if session is None:
        if not request.starting:
            raise ConfigurationError(
                f"{who}: there is no edit session at {uri}; give prompt or base_image to start "
                "one (nothing was sent)"
            )
        settings = GenerationSettings(
            image_size=request.image_size or "1K",
            aspect_ratio=request.aspect_ratio or "1:1",
            include_thoughts=bool(request.include_thoughts),
            data_policy=request.data_policy or DEFAULT_DATA_POLICY,
        )
        return settings, request.model or default_model
    settings, model = session.settings, session.model
    current = settings.as_dict()
    requested = {
        "image_size": request.image_size,
        "aspect_ratio": request.aspect_ratio,
        "include_thoughts": request.include_thoughts,
    }
    for name, value in requested.items():
        if value is not None and value != current[name]:
            raise ConfigurationError(
                f"{who}: edit session '{session.session_id}' was started with {name}="
                f"{current[name]!r}; it cannot continue with {value!r} (start a new session)"
            )
    if request.model and request.model != model:
        raise ConfigurationError(
            f"{who}: edit session '{session.session_id}' uses model {model!r}, not "
            f"{request.model!r}: another model cannot continue its thought chain"
        )
    return settings, model


def load_turn_images(
    session_id: str, text: str, uris: tuple[str, ...], storage: Storage, *, who: str
) -> tuple[ReferenceImage, ...]:
    """The images of one turn, read and checked, after checking the turn fits the model's input."""
    from airflow_banana.manifests.limits import env_name, limits_from_env
    from airflow_banana.manifests.model import ManifestItem
    from airflow_banana.manifests.references import load_reference_images

    if len(uris) > MAX_REFERENCE_IMAGES:
        raise ConfigurationError(
            f"{who}: edit session '{session_id}': a turn carries {len(uris)} images; "
            f"Google takes at most {MAX_REFERENCE_IMAGES} (base image included). Nothing was sent"
        )
    limits = limits_from_env()
    if len(text) > limits.max_prompt_chars(len(uris)):
        raise ConfigurationError(
            f"{who}: edit session '{session_id}': a turn's text is {len(text)} characters, "
            f"over the {limits.max_prompt_chars(len(uris))} that fit in the model's "
            f"{limits.max_input_tokens}-token input limit beside {len(uris)} image(s); nothing was "
            f"sent (limit: {env_name('max_input_tokens')})"
        )
    if not uris:
        return ()
    item = ManifestItem(id=session_id, prompt=text, reference_images=uris)
    return load_reference_images(item, storage, limits=limits)
