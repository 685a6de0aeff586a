"""Keys that never print: the ``Secret`` wrapper, and scrubbing them out of text and exceptions.

``Secret`` never shows its value, so an API key cannot leak through repr/str/logs. What does
leak is text a provider or SDK wrote: relays have echoed keys in error messages, URLs carry
``?key=``, an SDK exception may quote a header. ``scrub`` replaces every known secret (and
anything shaped like a credential) by ``***``; ``scrub_exception`` does it in place before an
exception is chained as a cause. The secrets of a connection are
``channels.config.config_secrets``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping


class Secret:
    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        """The secret itself: only for the one call that sends it."""
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret('')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("Secret values are not picklable: pass the connection id instead")


# ----------------------------------------------------------------------------- scrubbing

_KEY_PATTERNS = (
    re.compile(r"AIza[0-9A-Za-z_\-]{20,}"),  # Google API keys
    re.compile(r"(?i)(bearer\s+)[^\s\"',]+"),
    re.compile(r"(?i)((?:api[_-]?key|key|access_token|token)=)[^&\s\"',]+"),
    re.compile(r"(?i)(x-goog-api-key[\"']?\s*[:=]\s*[\"']?)[^\s\"',]+"),
    re.compile(r"sk-[A-Za-z0-9_\-]{16,}"),  # OpenAI/OpenRouter-style keys
)


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every known secret and anything shaped like a credential replaced by ***.

    Defensive: relays have echoed keys in error messages, and URLs may carry ``?key=``.
    """
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
            quoted = json.dumps(secret)[1:-1]
            if quoted != secret:
                text = text.replace(quoted, "***")
    for pattern in _KEY_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + "***", text)
    return text


def scrub_exception(err: BaseException, secrets: Iterable[str]) -> None:
    """Scrub an exception's args/message in place before it is chained as a ``__cause__``.

    Tracebacks print the cause, so a key echoed into an SDK exception would otherwise leak.
    """
    secrets = [s for s in secrets if s]
    try:
        err.args = tuple(scrub(a, secrets) if isinstance(a, str) else a for a in err.args)
        for attr in ("message", "details"):
            value = getattr(err, attr, None)
            if isinstance(value, str):
                setattr(err, attr, scrub(value, secrets))
            elif isinstance(value, Mapping | list):
                dumped = json.dumps(value, default=str)
                cleaned = scrub(dumped, secrets)
                if cleaned != dumped:
                    setattr(err, attr, json.loads(cleaned))
    except Exception:  # an exotic exception type must never turn a scrub into a new failure
        pass
