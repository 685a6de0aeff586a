"""Item claims on local storage with a fake clock: take, hold, re-take, take over, renew, release."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import pytest

from airflow_banana.exceptions import PreconditionFailedError
from airflow_banana.realtime.claims import ClaimHeld, ItemClaims
from airflow_banana.storage.objects import open_storage
from airflow_banana.storage.outputs import OutputStore

TTL = 100.0
FP = "fp-1"


class FakeNow:
    def __init__(self, t: float = 1_700_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def store(tmp_path: Path) -> OutputStore:
    return OutputStore(open_storage(str(tmp_path)), str(tmp_path / "out"))


@pytest.fixture
def now() -> FakeNow:
    return FakeNow()


@pytest.fixture
def claims(store: OutputStore, now: FakeNow) -> ItemClaims:
    return ItemClaims(store, now=now)


def stored(store: OutputStore, item_id: str = "a") -> dict:
    return store.storage.read_json(store.claim_uri(item_id))


def test_take_writes_the_claim_where_the_store_says(claims: ItemClaims, store: OutputStore, now: FakeNow):
    assert claims.take("a", FP, owner="run-1", ttl_s=TTL) is None
    assert store.claim_uri("a") == f"{store.prefix}/claims/a.json"
    record = stored(store)
    assert record["owner"] == "run-1" and record["request_fingerprint"] == FP
    assert record["claimed_at"] == now.t and record["expires_at"] == now.t + TTL
    assert record["expires_at_iso"].startswith("2023-11-14T")  # for people reading the bucket


def test_a_live_claim_of_another_owner_is_held(claims: ItemClaims, store: OutputStore, now: FakeNow):
    claims.take("a", FP, owner="run-1", ttl_s=TTL)
    now.t += TTL - 1
    assert claims.take("a", FP, owner="run-2", ttl_s=TTL) == ClaimHeld("run-1", now.t + 1)
    assert stored(store)["owner"] == "run-1"


def test_own_claim_is_retaken_at_once(claims: ItemClaims, store: OutputStore, now: FakeNow):
    # an Airflow retry has the same run key: its dead attempt's claim must not make it wait
    claims.take("a", FP, owner="run-1", ttl_s=TTL)
    now.t += 10
    assert claims.take("a", FP, owner="run-1", ttl_s=TTL) is None
    assert stored(store)["expires_at"] == now.t + TTL


def test_an_expired_claim_is_taken_over(claims: ItemClaims, store: OutputStore, now: FakeNow):
    claims.take("a", FP, owner="run-1", ttl_s=TTL)
    now.t += TTL
    assert claims.take("a", FP, owner="run-2", ttl_s=TTL) is None
    assert stored(store)["owner"] == "run-2"
    assert claims.take("a", FP, owner="run-1", ttl_s=TTL) == ClaimHeld("run-2", now.t + TTL)


def test_an_unreadable_claim_counts_as_expired(claims: ItemClaims, store: OutputStore):
    store.storage.write_text(store.claim_uri("a"), "not json")
    assert claims.take("a", FP, owner="run-1", ttl_s=TTL) is None
    assert stored(store)["owner"] == "run-1"


def test_renew_extends_only_our_claim(claims: ItemClaims, store: OutputStore, now: FakeNow):
    claims.take("a", FP, owner="run-1", ttl_s=TTL)
    claimed_at = now.t
    now.t += 60
    assert claims.renew("a", owner="run-1", ttl_s=TTL) == now.t + TTL
    record = stored(store)
    assert record["expires_at"] == now.t + TTL and record["claimed_at"] == claimed_at


def test_renew_after_a_take_over_logs_and_does_not_raise(
    claims: ItemClaims, store: OutputStore, now: FakeNow, caplog: pytest.LogCaptureFixture
):
    claims.take("a", FP, owner="run-1", ttl_s=TTL)
    now.t += TTL + 1
    assert claims.take("a", FP, owner="run-2", ttl_s=TTL) is None
    with caplog.at_level(logging.WARNING, logger="airflow_banana.realtime.claims"):
        assert claims.renew("a", owner="run-1", ttl_s=TTL) is None
    assert stored(store)["owner"] == "run-2"  # not stolen back
    assert any("no longer ours" in r.getMessage() and "run-2" in r.getMessage() for r in caplog.records)


def test_renew_of_a_vanished_claim_logs_and_does_not_raise(
    claims: ItemClaims, caplog: pytest.LogCaptureFixture
):
    with caplog.at_level(logging.WARNING, logger="airflow_banana.realtime.claims"):
        assert claims.renew("a", owner="run-1", ttl_s=TTL) is None
    assert any("no longer ours" in r.getMessage() for r in caplog.records)


def test_release_deletes_only_our_live_claim(claims: ItemClaims, store: OutputStore, now: FakeNow):
    claims.take("a", FP, owner="run-1", ttl_s=TTL)
    claims.release("a", owner="run-2")
    assert stored(store)["owner"] == "run-1"
    claims.release("a", owner="run-1")
    assert not store.storage.exists(store.claim_uri("a"))
    claims.release("a", owner="run-1")  # already gone: nothing to do, no error
    # an expired claim of ours may be being taken over right now: left alone
    claims.take("b", FP, owner="run-1", ttl_s=TTL)
    now.t += TTL
    claims.release("b", owner="run-1")
    assert stored(store, "b")["owner"] == "run-1"


def test_release_storage_error_is_logged_not_raised(
    claims: ItemClaims, store: OutputStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    from airflow_banana.exceptions import StorageError

    claims.take("a", FP, owner="run-1", ttl_s=TTL)

    def broken(uri: str) -> None:
        raise StorageError(f"deleting {uri} failed (503)")

    monkeypatch.setattr(store.storage, "delete", broken)
    with caplog.at_level(logging.WARNING, logger="airflow_banana.realtime.claims"):
        claims.release("a", owner="run-1")
    assert any("releasing its claim failed" in r.getMessage() for r in caplog.records)


def test_a_lost_replace_reports_who_won(
    claims: ItemClaims, store: OutputStore, now: FakeNow, monkeypatch: pytest.MonkeyPatch
):
    """Two workers take over the same expired claim: the one whose replace lands second loses."""
    claims.take("a", FP, owner="run-1", ttl_s=TTL)
    now.t += TTL
    real_write = store.storage.write_json

    def racing_write(uri: str, value: object, **kwargs: object) -> int:
        if kwargs.get("if_generation_match"):
            # run-3 replaces the expired claim between our read and our write
            real_write(uri, {"owner": "run-3", "expires_at": now.t + TTL, "request_fingerprint": FP})
        return real_write(uri, value, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(store.storage, "write_json", racing_write)
    assert claims.take("a", FP, owner="run-2", ttl_s=TTL) == ClaimHeld("run-3", now.t + TTL)
    assert stored(store)["owner"] == "run-3"


def test_storage_rejects_a_second_create(store: OutputStore):
    """The primitive ``take`` rests on: a create-only write fails when the claim exists."""
    store.storage.write_json(store.claim_uri("a"), {"owner": "x"}, if_absent=True)
    with pytest.raises(PreconditionFailedError):
        store.storage.write_json(store.claim_uri("a"), {"owner": "y"}, if_absent=True)


@pytest.mark.parametrize("expired", [False, True], ids=["fresh", "expired"])
def test_two_threads_racing_take_exactly_one_wins(store: OutputStore, expired: bool, run_together):
    now = FakeNow()
    owners = ("w1", "w2")
    for r in range(20):
        item = f"item-{r}"
        if expired:  # both take over the same dead worker's claim
            ItemClaims(store, now=FakeNow(now.t - 2 * TTL)).take(item, FP, owner="dead", ttl_s=TTL)
        results = run_together(
            *(partial(ItemClaims(store, now=now).take, item, FP, owner=o, ttl_s=TTL) for o in owners)
        )
        winners = [o for o, held in zip(owners, results, strict=True) if held is None]
        assert len(winners) == 1, (r, results)
        assert [h for h in results if h is not None] == [ClaimHeld(winners[0], now.t + TTL)]
        assert stored(store, item)["owner"] == winners[0]
