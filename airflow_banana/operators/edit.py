"""``SignatureEditOperator``: multi-turn image editing that survives tasks, retries and days.

Thin by design. It checks everything that can be checked before money is spent (channels that
drop signatures, the session's model, reference images, the history's signatures), then hands
each turn to ``editing.EditEngine``, which fails over between signature-capable channels, stores
each turn's image and commits the session document. XCom gets a small summary — never bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_banana.editing.session import DEFAULT_INLINE_MAX_BYTES
from airflow_banana.exceptions import BananaError, ConfigurationError
from airflow_banana.hooks.channel import load_channel_configs
from airflow_banana.identity import RunIdentity
from airflow_banana.models import DATA_POLICIES, DEFAULT_DATA_POLICY, MAX_REFERENCE_IMAGES, ReferenceImage
from airflow_banana.operators._common import budget_from
from airflow_banana.operators.assets import record_run_event, scalar_fields
from airflow_banana.operators.publish import add_output_outlet

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_banana.channels.config import ChannelConfig
    from airflow_banana.editing.engine import TurnSpec
    from airflow_banana.editing.session import EditSession
    from airflow_banana.storage.objects import Storage


@dataclass(frozen=True)
class _Instruction:
    text: str
    reference_images: tuple[str, ...]


def _instructions(value: Any, *, task_id: str) -> list[_Instruction]:
    """Instructions as given: one string, or a list of strings / ``{"text", "reference_images"}``."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return []  # a template that rendered empty: no instruction this run
    items = [value] if isinstance(value, str | Mapping) else list(value)
    out: list[_Instruction] = []
    for n, item in enumerate(items, start=1):
        if isinstance(item, str):
            text, refs = item, ()
        elif isinstance(item, Mapping):
            text = item.get("text") or item.get("instruction") or ""
            refs = item.get("reference_images") or ()
        else:
            raise ConfigurationError(
                f"{task_id}: instruction {n} must be a string or {{'text': ..., 'reference_images': [...]}}, "
                f"got {type(item).__name__}"
            )
        if not isinstance(text, str) or not text.strip():
            raise ConfigurationError(f"{task_id}: instruction {n} is empty")
        out.append(_Instruction(text, _uris(refs, task_id=task_id, what=f"instruction {n} reference_images")))
    return out


def _uris(value: Any, *, task_id: str, what: str) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    items = [value] if isinstance(value, str) else list(value)
    if not all(isinstance(u, str) and u for u in items):
        raise ConfigurationError(f"{task_id}: {what} must be a list of URIs, got {value!r}")
    return tuple(items)


class SignatureEditOperator(BaseOperator):
    """Start or continue an edit session and apply edit instructions, one paid turn each.

    Start a session from ``prompt`` (text to image), from ``base_image`` (a URI; ``prompt`` or
    the first instruction is the edit applied to it), or continue the session at
    ``session_uri`` / ``{output_prefix}/sessions/{session_id}/session.json``. A session that
    already exists is continued; giving it a different start is refused.

    :param channels: ``banana`` connection ids, tried in order; only ``gemini``/``vertex`` channels
        that serve the session's model. A relay (``openai``) is refused before anything is sent.
    :param output_prefix: URI under which ``sessions/``, ``images/{session}/`` and
        ``metadata/{session}/`` are written.
    :param session_id: the session's id (safe for object names); or give ``session_uri``.
    :param session_uri: where the session document lives (to continue one stored elsewhere).
    :param prompt: text of the first turn when starting a session.
    :param base_image: URI of an image to start editing from.
    :param instructions: edit instructions (templated): a string, or a list of strings or of
        ``{"text": ..., "reference_images": [uri, ...]}``; each is one turn.
    :param reference_images: reference image URIs sent with the first turn (with ``base_image``
        at most 13 more; Google takes 14 images per turn).
    :param image_size / aspect_ratio / include_thoughts / model: generation config of a NEW
        session (an existing one keeps its own; a different explicit value is refused).
    :param gcp_conn_id: connection with GCS credentials; default Application Default Credentials.
    :param budget_usd: stop before a turn would take this task's spending over it.
    :param max_attempts_per_turn: attempts (all channels together) before a turn fails.
    :param max_wait_s: the longest single wait for a rate-limited/overloaded channel.
    :param data_policy: ``"official_only"``: every turn goes to official Google channels only
        (Google direct, Vertex AI; ``routing.eligibility``), never to a relay. A session started
        so keeps the policy in its document: later runs cannot loosen it. Default: the session's own.
    :param inline_max_bytes: history images above this size are stored as objects, not inline.
    :param redis_conn_id: a ``redis`` connection through which turns share breakers, rate limits
        and 429 closures with every other worker and lane (also read from a channel's extra).
    :param emit_output_asset: add the output prefix's Asset to the outlets (an alias when the
        prefix is templated; ``airflow_banana.operators.assets``); every outlet's event
        gets the session id and URI, turns, spend and latest image URI as ``extra`` (recorded
        by Airflow when the task succeeds). Other ``outlets`` may be given too.
    """

    template_fields: Sequence[str] = (
        "session_id",
        "session_uri",
        "output_prefix",
        "prompt",
        "base_image",
        "instructions",
        "reference_images",
        "channels",
        "budget_usd",
        "model",
    )
    template_fields_renderers = {"instructions": "json"}
    ui_color = "#f5d547"

    def __init__(
        self,
        *,
        channels: Sequence[str],
        output_prefix: str,
        session_id: str | None = None,
        session_uri: str | None = None,
        prompt: str | None = None,
        base_image: str | None = None,
        instructions: str | Sequence[str | Mapping[str, Any]] | None = None,
        reference_images: Sequence[str] | None = None,
        image_size: str | None = None,
        aspect_ratio: str | None = None,
        include_thoughts: bool | None = None,
        model: str | None = None,
        gcp_conn_id: str | None = None,
        budget_usd: float | None = None,
        redis_conn_id: str | None = None,
        max_attempts_per_turn: int = 6,
        max_wait_s: float = 120.0,
        inline_max_bytes: int = DEFAULT_INLINE_MAX_BYTES,
        data_policy: str | None = None,
        emit_output_asset: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if data_policy is not None and data_policy not in DATA_POLICIES:
            raise ConfigurationError(
                f"{self.task_id}: data_policy must be one of {DATA_POLICIES}, got {data_policy!r}"
            )
        self.data_policy = data_policy
        if emit_output_asset:
            add_output_outlet(self, output_prefix)
        self.channels = channels
        self.output_prefix = output_prefix
        self.session_id = session_id
        self.session_uri = session_uri
        self.prompt = prompt
        self.base_image = base_image
        self.instructions = instructions
        self.reference_images = reference_images
        self.image_size = image_size
        self.aspect_ratio = aspect_ratio
        self.include_thoughts = include_thoughts
        self.model = model
        self.gcp_conn_id = gcp_conn_id
        self.budget_usd = budget_usd
        self.redis_conn_id = redis_conn_id
        self.max_attempts_per_turn = max_attempts_per_turn
        self.max_wait_s = max_wait_s
        self.inline_max_bytes = inline_max_bytes

    # ------------------------------------------------------------------------------ execute

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_banana.editing.engine import channels_for_model, refuse_signature_droppers
        from airflow_banana.editing.session import SessionStore, session_uri_for
        from airflow_banana.hooks.storage import storage_for
        from airflow_banana.manifests.model import id_problem, strictest_policy
        from airflow_banana.routing.eligibility import ItemNeeds, allowed, require_servable

        task = self.task_id
        identity = RunIdentity.from_context(context)
        budget = budget_from(self.budget_usd, task_id=task)
        instructions = _instructions(self.instructions, task_id=task)
        start_refs = _uris(self.reference_images, task_id=task, what="reference_images")
        configs = load_channel_configs(self.channels, task_id=task)
        refuse_signature_droppers(configs, who=task)

        if not self.output_prefix:
            raise ConfigurationError(f"{task}: output_prefix is required")
        if self.session_uri:
            uri = self.session_uri
        elif self.session_id:
            problem = id_problem(self.session_id)
            if problem:
                raise ConfigurationError(f"{task}: session_id {self.session_id!r}: {problem}")
            uri = session_uri_for(self.output_prefix, self.session_id)
        else:
            raise ConfigurationError(f"{task}: give session_id (a new or existing session) or session_uri")

        storage = storage_for(uri, self.gcp_conn_id)
        store = SessionStore(storage, inline_max_bytes=self.inline_max_bytes)
        session = store.load(uri)
        session, specs = self._plan(session, uri, configs, instructions, start_refs, storage, identity)
        serving = channels_for_model(configs, session.model, who=task)
        policy = strictest_policy(session.settings.data_policy, self.data_policy)
        if policy != DEFAULT_DATA_POLICY:
            # one filter for every lane (routing.eligibility): the session's turns never reach a relay
            needs = ItemNeeds(data_policy=policy)
            require_servable([(session.session_id, needs)], serving, who=task, lane="edit")
            serving = allowed(serving, needs)
        self.log.info(
            "edit session %s (%s): %d turn(s) stored, %d to apply, channels %s, model %s",
            session.session_id,
            uri,
            len(session.turns),
            len(specs),
            ", ".join(c.name for c in serving),
            session.model,
        )
        summary = asyncio.run(self._run(session, specs, serving, store, budget))
        record_run_event(
            context,
            self.outlets,
            output_prefix=self.output_prefix,
            extra={**scalar_fields(summary), "lane": "edit", "output_prefix": self.output_prefix},
        )
        return summary

    def _plan(
        self,
        session: EditSession | None,
        uri: str,
        configs: Sequence[ChannelConfig],
        instructions: list[_Instruction],
        start_refs: tuple[str, ...],
        storage: Storage,
        identity: RunIdentity,
    ) -> tuple[EditSession, list[TurnSpec]]:
        """The session (new or loaded) and every turn to apply, all inputs checked before spend."""
        from airflow_banana.editing.engine import TurnSpec
        from airflow_banana.editing.session import EditSession, GenerationSettings
        from airflow_banana.editing.turns import start_fingerprint, turn_key

        task = self.task_id
        run = identity.labels()
        starting = bool(self.prompt or self.base_image)
        start_text = self.prompt or ""
        if self.base_image and not start_text:
            if not instructions:
                raise ConfigurationError(
                    f"{task}: base_image needs a prompt or an instruction to apply to it"
                )
            first, instructions = instructions[0], instructions[1:]
            start_text, start_refs = first.text, start_refs + first.reference_images
        if not starting and start_refs:
            raise ConfigurationError(
                f"{task}: reference_images belong to the first turn (prompt/base_image); for later "
                "turns give them per instruction: {'text': ..., 'reference_images': [...]}"
            )
        if not starting and not instructions:
            raise ConfigurationError(f"{task}: nothing to do: give prompt, base_image or instructions")

        session_id = session.session_id if session else (self.session_id or _id_from_uri(uri))
        if session is not None and self.session_id and self.session_id != session.session_id:
            raise ConfigurationError(
                f"{task}: session_id {self.session_id!r} does not match the session at {uri} "
                f"({session.session_id!r}); nothing was sent"
            )
        start_uris = ((self.base_image,) if self.base_image else ()) + start_refs
        start_images = self._load(session_id, start_text or "start", start_uris, storage)
        turn_images = [self._load(session_id, i.text, i.reference_images, storage) for i in instructions]

        requested = {
            "image_size": self.image_size,
            "aspect_ratio": self.aspect_ratio,
            "include_thoughts": self.include_thoughts,
        }
        if session is None:
            if not starting:
                raise ConfigurationError(
                    f"{task}: there is no edit session at {uri}; give prompt or base_image to start "
                    "one (nothing was sent)"
                )
            settings = GenerationSettings(
                image_size=self.image_size or "1K",
                aspect_ratio=self.aspect_ratio or "1:1",
                include_thoughts=bool(self.include_thoughts),
                data_policy=self.data_policy or DEFAULT_DATA_POLICY,
            )
            model = self.model or configs[0].model
        else:
            settings, model = session.settings, session.model
            current = settings.as_dict()
            for name, value in requested.items():
                if value is not None and value != current[name]:
                    raise ConfigurationError(
                        f"{task}: edit session '{session.session_id}' was started with {name}="
                        f"{current[name]!r}; it cannot continue with {value!r} (start a new session)"
                    )
            if self.model and self.model != model:
                raise ConfigurationError(
                    f"{task}: edit session '{session.session_id}' uses model {model!r}, not "
                    f"{self.model!r}: another model cannot continue its thought chain"
                )

        specs: list[TurnSpec] = []
        base_sha = start_images[0].sha256 if self.base_image else None
        ref_shas = [i.sha256 for i in (start_images[1:] if self.base_image else start_images)]
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
                f"{task}: edit session '{session.session_id}' at {uri} already exists and was started "
                "from a different prompt/base image/config. Continue it by giving only instructions, "
                "or choose another session_id. Nothing was sent"
            )
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

    def _load(
        self, session_id: str, text: str, uris: tuple[str, ...], storage: Storage
    ) -> tuple[ReferenceImage, ...]:
        from airflow_banana.manifests.limits import env_name, limits_from_env
        from airflow_banana.manifests.model import ManifestItem
        from airflow_banana.manifests.references import load_reference_images

        if len(uris) > MAX_REFERENCE_IMAGES:
            raise ConfigurationError(
                f"{self.task_id}: edit session '{session_id}': a turn carries {len(uris)} images; "
                f"Google takes at most {MAX_REFERENCE_IMAGES} (base image included). Nothing was sent"
            )
        limits = limits_from_env()
        if len(text) > limits.max_prompt_chars(len(uris)):
            raise ConfigurationError(
                f"{self.task_id}: edit session '{session_id}': a turn's text is {len(text)} characters, "
                f"over the {limits.max_prompt_chars(len(uris))} that fit in the model's "
                f"{limits.max_input_tokens}-token input limit beside {len(uris)} image(s); nothing was "
                f"sent (limit: {env_name('max_input_tokens')})"
            )
        if not uris:
            return ()
        item = ManifestItem(id=session_id, prompt=text, reference_images=uris)
        return load_reference_images(item, storage, limits=limits)

    async def _run(
        self,
        session: EditSession,
        specs: Sequence[TurnSpec],
        configs: Sequence[ChannelConfig],
        store: Any,
        budget: float | None,
    ) -> dict[str, Any]:
        from airflow_banana.channels import build_channel
        from airflow_banana.editing.engine import EditEngine, HistoryChannel
        from airflow_banana.editing.turns import TurnPolicy
        from airflow_banana.operators._common import shared_state_for
        from airflow_banana.routing import RouterConfig, SystemClock, policy_for

        channels: dict[str, HistoryChannel] = {c.name: build_channel(c) for c in configs}  # type: ignore[misc]
        try:
            policy = TurnPolicy(
                tuple(channels),
                max_attempts=int(self.max_attempts_per_turn),
                max_wait_s=float(self.max_wait_s),
            )
        except (TypeError, ValueError) as err:
            raise ConfigurationError(f"{self.task_id}: {err}; nothing was sent") from err
        state = shared_state_for(configs, self.redis_conn_id, task_id=self.task_id, rng=random.Random())
        if state is not None:
            router_config = RouterConfig()
            for config in configs:
                state.register(config.name, policy_for(config, router_config))
        engine = EditEngine(
            channels=channels,
            store=store,
            output_prefix=self.output_prefix,
            policy=policy,
            budget_usd=budget,
            state=state,
            state_clock=SystemClock(shared=True).now,
        )
        applied: list[dict[str, Any]] = []
        try:
            for spec in specs:
                session, outcome = await engine.run_turn(session, spec)
                applied.append(
                    {
                        "turn": outcome.record.index,
                        "skipped": outcome.skipped,
                        "channel": outcome.record.channel,
                        "image_uri": outcome.record.image["uri"],
                        "cost_usd": 0.0 if outcome.skipped else outcome.record.cost_usd,
                        "metadata_uri": outcome.metadata_uri,
                    }
                )
        finally:
            for channel in channels.values():
                try:
                    await channel.aclose()
                except BananaError:
                    self.log.debug("closing channel %s failed", channel.name, exc_info=True)
        latest = session.turns[-1].image["uri"] if session.turns else None
        return {
            "session_id": session.session_id,
            "session_uri": session.uri,
            "turns": len(session.turns),
            "applied": applied,
            "spent_usd": round(engine.spent_usd, 6),
            "session_spent_usd": session.spent_usd,
            "latest_image_uri": latest,
        }


def _id_from_uri(uri: str) -> str:
    """A session id for a session created at an explicit URI: its folder name, else a hash."""
    from airflow_banana.manifests.model import id_problem

    parts = [p for p in uri.replace("\\", "/").split("/") if p]
    if len(parts) >= 2 and parts[-1] == "session.json" and id_problem(parts[-2]) is None:
        return parts[-2]
    return "session-" + hashlib.sha256(uri.encode()).hexdigest()[:12]
