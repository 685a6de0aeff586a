"""``SignatureEditOperator``: multi-turn image editing that survives tasks, retries and days.

Thin by design: it orchestrates. Every check that can be made before money is spent is made
first: channels that drop signatures (``editing.engine.refuse_signature_droppers``), the session,
its model and settings, every turn's images (``editing.prepare.prepare_turns``), the data policy
(``routing.eligibility``). Then ``editing.engine.run_turns`` hands each turn to ``EditEngine``,
which audits the history's signatures, fails over between signature-capable channels, stores
each turn's image and commits the session document. XCom gets a small summary — never bytes.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_banana.editing.prepare import EditRequest, parse_instructions, parse_uris
from airflow_banana.editing.session import DEFAULT_INLINE_MAX_BYTES
from airflow_banana.exceptions import ConfigurationError
from airflow_banana.hooks.channel import load_channel_configs
from airflow_banana.identity import RunIdentity
from airflow_banana.models import DATA_POLICIES, DEFAULT_DATA_POLICY
from airflow_banana.operators._common import budget_from, shared_state_for
from airflow_banana.operators.assets import record_run_event, scalar_fields
from airflow_banana.operators.publish import add_output_outlet

if TYPE_CHECKING:
    from airflow.sdk import Context


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
        from airflow_banana.editing.engine import channels_for_model, refuse_signature_droppers, run_turns
        from airflow_banana.editing.prepare import prepare_turns, resolve_session_uri
        from airflow_banana.editing.session import SessionStore
        from airflow_banana.hooks.storage import storage_for
        from airflow_banana.manifests.model import strictest_policy
        from airflow_banana.routing.eligibility import ItemNeeds, allowed, require_servable

        task = self.task_id
        identity = RunIdentity.from_context(context)
        budget = budget_from(self.budget_usd, task_id=task)
        request = self._request()
        configs = load_channel_configs(self.channels, task_id=task)
        refuse_signature_droppers(configs, who=task)
        uri = resolve_session_uri(
            output_prefix=self.output_prefix,
            session_id=self.session_id,
            session_uri=self.session_uri,
            who=task,
        )

        storage = storage_for(uri, self.gcp_conn_id)
        store = SessionStore(storage, inline_max_bytes=self.inline_max_bytes)
        session, specs = prepare_turns(
            request,
            store.load(uri),
            uri=uri,
            default_model=configs[0].model,
            storage=storage,
            identity=identity,
            who=task,
        )
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
        run = run_turns(
            session,
            specs,
            serving,
            store=store,
            output_prefix=self.output_prefix,
            budget_usd=budget,
            max_attempts=self.max_attempts_per_turn,
            max_wait_s=self.max_wait_s,
            state_for=lambda: shared_state_for(
                serving, self.redis_conn_id, task_id=task, rng=random.Random()
            ),
            who=task,
        )
        summary = asyncio.run(run)
        record_run_event(
            context,
            self.outlets,
            output_prefix=self.output_prefix,
            extra={**scalar_fields(summary), "lane": "edit", "output_prefix": self.output_prefix},
        )
        return summary

    def _request(self) -> EditRequest:
        """The run's request as rendered: instructions and URIs parsed, nothing read yet."""
        task = self.task_id
        return EditRequest(
            session_id=self.session_id,
            prompt=self.prompt,
            base_image=self.base_image,
            instructions=parse_instructions(self.instructions, who=task),
            reference_images=parse_uris(self.reference_images, who=task, what="reference_images"),
            image_size=self.image_size,
            aspect_ratio=self.aspect_ratio,
            include_thoughts=self.include_thoughts,
            model=self.model,
            data_policy=self.data_policy,
        )
