"""Which channels may carry an item: the one per-item candidate filter of every lane.

An item can narrow the channels it goes to. ``data_policy: official_only`` keeps its prompt and
images with Google (Developer API, Vertex AI): a relay sees everything it forwards, which a
healthcare, finance or government catalog may not allow. ``grounding: google_search`` needs a
channel that carries Gemini's Search tool. Both are the same question -- may this channel take
this item? -- answered here once, for the router (realtime and rescue), the batch lane, editing
sessions and the planner, so no lane can answer it differently.

Model tiers are the same question too: a router channel is (connection, model), and a channel
whose model the item does not allow (``model`` + ``fallback_models``), or one that cannot draw
the item's size (Flash Image: 1K only), is refused. So an item allowing Flash goes there when the
cost-first router finds it cheaper or Pro cannot meet its deadline; a 2K/4K item never does.

It is a filter, not a ranking rule: the router ranks channels as ever and leaves out the ones
refused for the item. An item no configured channel can take is refused before any spend
(``require_servable``), naming the item and why each channel was refused.

Pure: no I/O; works on anything with ``data_policy`` and ``grounding`` (a manifest item, a
request, the router's item progress).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from airflow_banana.exceptions import NoEligibleChannelError
from airflow_banana.models import (
    DEFAULT_DATA_POLICY,
    DEFAULT_MODEL,
    OFFICIAL_ONLY,
    TIER_MODELS,
    model_id,
    sizes_of,
)

# Items named in the error message; the exception carries every id.
_MAX_NAMED = 10


class Carrier(Protocol):
    """What a channel offers an item (``ChannelTerms``, or a connection's ``ChannelConfig``)."""

    @property
    def name(self) -> str: ...

    @property
    def official(self) -> bool: ...

    @property
    def grounding(self) -> bool: ...

    @property
    def model(self) -> str: ...


C = TypeVar("C", bound=Carrier)


class Needs(Protocol):
    """What an item asks of the channel that carries it."""

    @property
    def data_policy(self) -> str: ...

    @property
    def grounding(self) -> str | None: ...

    @property
    def image_size(self) -> str | None: ...

    @property
    def model(self) -> str | None: ...

    @property
    def fallback_models(self) -> tuple[str, ...]: ...


@dataclass(frozen=True)
class ItemNeeds:
    """``Needs`` on its own, for callers without an item object (an edit session's turns).

    ``model`` None: no model filter (an edit session picks its channels by its own model).
    """

    data_policy: str = DEFAULT_DATA_POLICY
    grounding: str | None = None
    image_size: str | None = None
    model: str | None = None
    fallback_models: tuple[str, ...] = ()


def allowed_models(needs: Needs) -> tuple[str, ...]:
    """The models an item allows, the primary first (``()``: any)."""
    if needs.model is None:
        return ()
    return tuple(dict.fromkeys(model_id(m) for m in (needs.model, *needs.fallback_models)))


def _model_refusal(channel: Carrier, needs: Needs) -> str | None:
    wanted = allowed_models(needs)
    if not wanted:
        return None
    tier = model_id(channel.model)
    if tier in TIER_MODELS and tier not in wanted and any(m in TIER_MODELS for m in wanted):
        return f"serves {tier}, a model the item does not allow ({', '.join(wanted)})"
    if needs.image_size and needs.image_size not in sizes_of(tier):
        return f"{tier} draws {'/'.join(sizes_of(tier))} only, not {needs.image_size}"
    return None


def refusal(channel: Carrier, needs: Needs) -> str | None:
    """Why ``channel`` may not carry an item with ``needs``, or None when it may."""
    reasons = []
    if needs.data_policy == OFFICIAL_ONLY and not channel.official:
        reasons.append("not an official Google channel (the item is data_policy official_only)")
    if needs.grounding and not channel.grounding:
        reasons.append(f"cannot carry {needs.grounding} grounding")
    model = _model_refusal(channel, needs)
    if model:
        reasons.append(model)
    return "; ".join(reasons) or None


def allowed(channels: Iterable[C], needs: Needs) -> list[C]:
    """The channels that may carry an item with ``needs``, in the given order."""
    return [c for c in channels if refusal(c, needs) is None]


def restricted(needs: Needs) -> bool:
    """Whether ``needs`` narrows the channels whatever they are (policy, grounding); a model tier
    narrows them only where tiers are configured, which ``allowed`` answers."""
    return needs.data_policy == OFFICIAL_ONLY or bool(needs.grounding)


def describe(needs: Needs) -> str:
    """``data_policy official_only, grounding google_search`` -- for errors and logs."""
    parts = []
    if needs.data_policy == OFFICIAL_ONLY:
        parts.append(f"data_policy {OFFICIAL_ONLY}")
    if needs.grounding:
        parts.append(f"grounding {needs.grounding}")
    wanted = allowed_models(needs)
    if wanted and wanted != (DEFAULT_MODEL,):  # the default model goes unsaid, as ever
        parts.append(f"{needs.image_size + ' ' if needs.image_size else ''}on {' or '.join(wanted)}")
    return ", ".join(parts) or "no channel requirements"


def require_servable(
    items: Iterable[tuple[str, Needs]], channels: Sequence[Carrier], *, who: str, lane: str
) -> None:
    """Raise ``NoEligibleChannelError`` naming every item that no channel of ``channels`` may take.

    ``items`` are (item id, needs) pairs. Called before the first paid call of a run, so a run
    with such an item spends nothing at all.
    """
    refused: list[str] = []
    named: list[str] = []
    for item_id, needs in items:
        if allowed(channels, needs):
            continue
        refused.append(item_id)
        if len(named) < _MAX_NAMED:
            why = "; ".join(f"'{c.name}': {refusal(c, needs)}" for c in channels) or "no channels given"
            named.append(f"item '{item_id}' ({describe(needs)}): {why}")
    if not refused:
        return
    more = f" and {len(refused) - len(named)} more" if len(refused) > len(named) else ""
    raise NoEligibleChannelError(
        f"{who}: {len(refused)} item(s) can go to none of the {lane} channels "
        f"{[c.name for c in channels]}: " + " | ".join(named) + more + ". Nothing was sent or spent; "
        "add an official Google channel (Google direct or Vertex AI; extra.official marks one that "
        "is operated by Google elsewhere), one that supports grounding, one serving the item's model "
        "(extra.models on a connection adds a model tier), or change the items",
        item_ids=tuple(refused),
    )
