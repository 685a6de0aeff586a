"""The deadline of items that carry none: operator argument, execution_timeout, or the soft default."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from airflow_banana.exceptions import ConfigurationError
from airflow_banana.operators._common import run_deadline

START = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def due(value: object, timeout: timedelta | None = None) -> datetime | None:
    return run_deadline(value, started=START, execution_timeout=timeout, task_id="t")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (timedelta(hours=2), START + timedelta(hours=2)),
        ("PT90S", START + timedelta(seconds=90)),
        ("+2h", START + timedelta(hours=2)),
        ("2026-12-03T18:00:00Z", datetime(2026, 12, 3, 18, 0, tzinfo=UTC)),
        (datetime(2026, 12, 4, tzinfo=UTC), datetime(2026, 12, 4, tzinfo=UTC)),
    ],
)
def test_the_operators_deadline_as_datetime_duration_or_templated_string(
    value: object, expected: datetime
) -> None:
    assert due(value) == expected
    assert due(value, timedelta(minutes=5)) == expected  # the operator's own word wins


def test_execution_timeout_gives_the_deadline_less_the_reports_share() -> None:
    assert due(None, timedelta(minutes=30)) == START + timedelta(minutes=29)  # a tenth, at most 1 min
    assert due("None", timedelta(seconds=100)) == START + timedelta(seconds=90)  # a rendered None
    assert due("", None) is None  # nothing given: the router's soft default horizon


@pytest.mark.parametrize(
    "value",
    ["tomorrow", "2026-12-03T18:00:00", datetime(2026, 12, 4), timedelta(0), 42],
)
def test_a_bad_deadline_is_a_configuration_error_before_any_spend(value: object) -> None:
    with pytest.raises(ConfigurationError, match="t: "):
        due(value)
