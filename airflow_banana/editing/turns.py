"""Pure decisions of one edit turn: which channel next, wait, or stop -- and the turn's identity.

A session may only fail over to channels that keep signatures (``gemini``/``vertex``) and serve
the session's model, and every attempt resends the full history. The rules, per attempt outcome:

    success                      -> done
    signature_rejected           -> the channel refused the history's signatures (e.g. they were
                                    issued by another project): never try it again this session
                                    turn; try the next. NEVER start a fresh session instead.
    signatures_dropped           -> the channel answered without the signatures the next turn
                                    needs: its answer is unusable; try the next
    channel_fatal, quota_exhausted -> drop the channel for this turn; try the next
    item_terminal (blocked, 400) -> stop: the same model refuses it on every channel
    retryable, timeout, rate_limited, no_image, invalid_image
                                 -> try the next untried channel; when every channel has been
                                    tried, retry the one available soonest after a backoff of
                                    ``backoff_s * 2**(tries on it - 1)`` (capped at ``max_backoff_s``)
                                    or its 429 retry hint, whichever is longer

Caps: ``max_attempts`` attempts per turn, and a single wait longer than ``max_wait_s`` stops
the turn rather than holding a worker slot. Clock injected: ``now`` is passed in; no I/O.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from airflow_banana.exceptions import ChannelError, ErrorClass
from airflow_banana.models import resolve_model if False else None  # noqa: F401  (placeholder removed below)
