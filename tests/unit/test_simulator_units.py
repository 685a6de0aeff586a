"""Pure parts of the simulator: fault decisions with a fake clock, signatures, config, rendering."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from airflow_banana.exceptions import ConfigurationError
from airflow_banana.models import ImageRequest
from airflow_banana.testing.config import FaultProfile, SimulatorConfig
from airflow_banana.testing.errors import format_delay
from airflow_banana.testing.faults import DAY_QUOTA_ID, MINUTE_QUOTA_ID, FaultEngine, key_id_for, markers_in
from airflow_banana.testing.generate import camelize, generate_content_response, last_user_prompt
from airflow_banana.testing.render import png_text, render_image
from airflow_banana.testing.signatures import (
    SignatureIssuer,
    b64decode_any,
    check_history,
    required_positions,
)
from airflow_banana.testing.state import SimulatorState


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def engine(profile: FaultProfile, **config: object) -> tuple[FaultEngine, FakeClock]:
    clock = FakeClock()
    return FaultEngine(SimulatorConfig(keys={"k": profile}, **config), clock), clock  # type: ignore[arg-type]


def test_rpm_quota_with_retry_delay_until_window_frees() -> None:
    eng, clock = engine(FaultProfile(rpm=2), minute_s=10)
    assert eng.decide("k").fault is None
    clock.now += 3
    assert eng.decide("k").fault is None
    clock.now += 1
    refused = eng.decide("k")
    assert refused.fault == "quota" and refused.status == 429 and refused.quota_id == MINUTE_QUOTA_ID
    assert refused.retry_delay_s == pytest.approx(6.0)  # first request leaves the window at +10
    clock.now += 6
    assert eng.decide("k").fault is None


@pytest.mark.parametrize(("enforced", "left_at_3s"), [(True, 2.0), (False, 5.0)])
def test_retry_delay_enforced_or_a_fresh_dice_roll(enforced: bool, left_at_3s: float) -> None:
    eng, clock = engine(FaultProfile(rate_limit_rate=1.0, retry_delay_s=5.0, retry_delay_enforced=enforced))
    assert eng.decide("k").retry_delay_s == pytest.approx(5.0)
    clock.now += 3
    # enforced: the key is still closed, the answer carries the delay that is left; otherwise the
    # 429 is a new independent draw with the full delay
    assert eng.decide("k").retry_delay_s == pytest.approx(left_at_3s)
    clock.now += 2
    assert eng.decide("k").retry_delay_s == pytest.approx(5.0)  # closed again by a new draw


def test_rpd_quota_uses_day_id_and_refusals_do_not_count() -> None:
    eng, clock = engine(FaultProfile(rpd=1), day_s=100)
    assert eng.decide("k").fault is None
    for _ in range(3):
        d = eng.decide("k")
        assert d.quota_id == DAY_QUOTA_ID and d.quota_value == 1
    clock.now += 100
    assert eng.decide("k").fault is None


def test_ipm_counts_images() -> None:
    eng, _ = engine(FaultProfile(ipm=3))
    assert eng.decide("k", images=2).fault is None
    assert eng.decide("k", images=2).fault == "quota"
    assert eng.decide("k", images=1).fault is None


def test_outage_window_measured_from_profile_set() -> None:
    eng, clock = engine(FaultProfile(outage_start_s=5, outage_duration_s=10))
    assert eng.decide("k").fault is None  # starts the key's clock
    clock.now += 5
    assert eng.decide("k").fault == "outage"
    clock.now += 10
    assert eng.decide("k").fault is None
    eng.set_profile("k", FaultProfile(outage_start_s=0, outage_duration_s=1))
    assert eng.decide("k").status == 503


def test_outage_clock_starts_at_the_keys_first_request_not_at_set_time() -> None:
    # A run that starts 10 s after the profile was set still sees the whole 3 s outage.
    eng, clock = engine(FaultProfile(outage_duration_s=3))
    clock.now += 10
    assert eng.decide_metadata("k").status == 503  # the preflight's free call starts the clock
    clock.now += 2.9
    assert eng.decide("k").fault == "outage"
    clock.now += 0.2
    assert eng.decide("k").fault is None


def test_rate_limit_first_answers_the_first_n_generations_429_with_retry_info_then_healthy() -> None:
    eng, _clock = engine(FaultProfile(rate_limit_first=5, retry_delay_s=1.0))
    assert eng.decide_metadata("k").fault is None  # a free call is not one of the five
    first = [eng.decide("k") for _ in range(5)]
    assert [(d.fault, d.status, d.retry_delay_s) for d in first] == [("rate_limit", 429, 1.0)] * 5
    assert eng.decide("k").fault is None  # the sixth, at once: the hint is not enforced
    assert [eng.decide("k").fault for _ in range(50)] == [None] * 50
    eng.reset()
    assert eng.decide("k").fault == "rate_limit"  # a reset starts the burst again


def test_rate_limit_first_enforced_keeps_the_key_shut_until_the_delay_ends() -> None:
    eng, clock = engine(FaultProfile(rate_limit_first=1, retry_delay_s=1.0, retry_delay_enforced=True))
    assert eng.decide("k").retry_delay_s == pytest.approx(1.0)
    clock.now += 0.4
    assert eng.decide("k").retry_delay_s == pytest.approx(0.6)
    clock.now += 0.6
    assert eng.decide("k").fault is None


def test_rate_limit_first_round_trips_and_is_validated() -> None:
    assert FaultProfile.from_dict({"rate_limit_first": 5}).rate_limit_first == 5
    assert FaultProfile.from_dict(FaultProfile(rate_limit_first=3).to_dict()).rate_limit_first == 3
    with pytest.raises(ConfigurationError, match="rate_limit_first"):
        FaultProfile(rate_limit_first=-1)


def test_rates_are_reproducible_per_key_and_roughly_right() -> None:
    eng1, _ = engine(FaultProfile(overload_rate=0.3, rate_limit_rate=0.1), seed=7)
    eng2, _ = engine(FaultProfile(overload_rate=0.3, rate_limit_rate=0.1), seed=7)
    seq1 = [eng1.decide("k").fault for _ in range(2000)]
    seq2 = [eng2.decide("k").fault for _ in range(2000)]
    assert seq1 == seq2
    assert 0.25 < seq1.count("overload") / 2000 < 0.35
    assert 0.07 < seq1.count("rate_limit") / 2000 < 0.13
    eng1.reset()
    assert [eng1.decide("k").fault for _ in range(50)] == seq2[:50]


def test_latency_distributions() -> None:
    eng, _ = engine(FaultProfile(latency_ms=(100, 200)))
    lat = [eng.decide("k").latency_s for _ in range(200)]
    assert all(0.1 <= x <= 0.2 for x in lat)
    eng, _ = engine(FaultProfile(latency_lognormal_ms=(100, 400)))
    lat = sorted(eng.decide("k").latency_s for _ in range(4000))
    assert 0.085 < lat[2000] < 0.115 and 0.33 < lat[3800] < 0.48


def test_markers_fixed_status_precedence() -> None:
    eng, _ = engine(FaultProfile(fixed_status=401))
    assert eng.decide("k", "[sim:no_image]").status == 401
    eng, _ = engine(FaultProfile())
    assert eng.decide("k", "hi [sim:hang]").fault == "hang"
    assert eng.decide("k", "hi [sim:503]").status == 503
    assert eng.decide("k", "hi [sim:jpeg_as_png]").content == "jpeg_as_png"
    assert eng.decide("k", "[sim:truncated]").body == "truncated"
    assert markers_in("[sim:429] [sim:bogus] [sim:reset]") == ["rate_limit", "reset"]


def test_key_id_never_the_key() -> None:
    assert key_id_for("sekrit") == "key-" + __import__("hashlib").sha256(b"sekrit").hexdigest()[:8]
    eng, _ = engine(FaultProfile(name="primary"))
    assert eng.key_id("k") == "primary"
    assert list(eng.snapshot()["keys"]) == ["primary"]  # type: ignore[call-overload]
    assert "sekrit" not in repr(SimulatorConfig(keys={"sekrit": FaultProfile()}))


def test_signatures_issue_verify_and_positions() -> None:
    issuer = SignatureIssuer("s")
    sig = issuer.issue("resp", 2)
    assert issuer.is_valid(sig) and not SignatureIssuer("other").is_valid(sig)
    assert not issuer.is_valid(sig[:-1] + bytes([sig[-1] ^ 1]))
    assert issuer.is_valid(b"skip_thought_signature_validator")
    import base64

    assert b64decode_any(base64.urlsafe_b64encode(sig).decode().rstrip("=")) == sig
    parts: list[dict[str, Any]] = [
        {"text": "t", "thought": True},
        {"text": "a"},
        {"inlineData": {}},
        {"text": "b"},
        {"inlineData": {}},
    ]
    assert required_positions(parts) == [1, 2, 4]
    good = base64.b64encode(sig).decode()
    history: list[dict[str, Any]] = [
        {"role": "user", "parts": [{"text": "x"}]},
        {
            "role": "model",
            "parts": [
                {"text": "t", "thought": True},
                {"text": "a", "thoughtSignature": good},
                {"inlineData": {"data": ""}},
            ],
        },
    ]
    missing = check_history(history, issuer)
    assert missing is not None and (missing.content_position, missing.part_position, missing.kind) == (
        2,
        3,
        "Image",
    )
    assert missing.message.startswith(
        "Image part is missing a thought_signature in content position 2, part position 3."
    )


def test_config_round_trip_peak_and_validation(tmp_path: Path) -> None:
    peak = FaultProfile.peak()
    assert peak.overload_rate + peak.rate_limit_rate + peak.reset_rate + peak.truncated_rate == pytest.approx(
        0.45
    )
    assert FaultProfile.from_dict(peak.to_dict()) == peak
    assert FaultProfile.from_dict({"preset": "peak", "name": "x"}).overload_rate == peak.overload_rate
    assert FaultProfile.from_dict({"retry_delay_s": "26s"}).retry_delay_s == 26.0
    with pytest.raises(ConfigurationError):
        FaultProfile(overload_rate=0.8, rate_limit_rate=0.3)
    with pytest.raises(ConfigurationError):
        FaultProfile.from_dict({"overload": 1})
    with pytest.raises(ConfigurationError):
        FaultProfile(fixed_status=418)
    shipped = Path(__file__).parents[2] / "airflow_banana" / "testing" / "peak_profile.json"
    assert SimulatorConfig.load(shipped).default.overload_rate == peak.overload_rate
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(ConfigurationError):
        SimulatorConfig.load(bad)


def test_render_exact_size_deterministic_with_text_chunks() -> None:
    a = render_image("seed", "hello", 1376, 768, chunks=(("sim:fingerprint", "abc"),))
    assert a == render_image("seed", "hello", 1376, 768, chunks=(("sim:fingerprint", "abc"),))
    with Image.open(io.BytesIO(a)) as img:
        assert img.size == (1376, 768) and img.format == "PNG"
    assert png_text(a) == {"sim:fingerprint": "abc"}
    assert render_image("seed", "hello", 64, 64, fmt="JPEG").startswith(b"\xff\xd8\xff")


def test_camelize_and_prompt_extraction() -> None:
    body = {
        "contents": [
            {"role": "user", "parts": [{"text": "a"}, {"inline_data": {"mime_type": "x"}}]},
            {"role": "model", "parts": [{"text": "m"}]},
            {"role": "user", "parts": [{"text": "b"}, {"text": "c"}]},
        ]
    }
    assert camelize(body)["contents"][0]["parts"][1] == {"inlineData": {"mimeType": "x"}}
    assert last_user_prompt(body) == "b\nc"
    assert last_user_prompt({"contents": "garbage"}) == ""
    assert format_delay(26) == "26s" and format_delay(0.5) == "0.5s"


def test_importing_testing_package_does_not_import_genai() -> None:
    code = (
        "import sys, airflow_banana.testing as t; t.SimulatorConfig; assert 'google.genai' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


def test_generate_content_response_for_batch_lane() -> None:
    state = SimulatorState(SimulatorConfig(keys={"bk": FaultProfile(name="batch-chan")}))
    body = {
        "contents": [{"parts": [{"text": "batch item"}]}],
        "generationConfig": {"imageConfig": {"imageSize": "2K"}},
    }
    status, resp = generate_content_response(
        state, body, model="gemini-3-pro-image-preview", key="bk", price_lane="batch"
    )
    assert status == 200 and resp["candidates"][0]["finishReason"] == "STOP"
    [billed] = state.ledger.billable("batch-chan")
    assert billed["price_lane"] == "batch"
    assert (
        billed["fingerprint"] == ImageRequest(item_id="", prompt="batch item", image_size="2K").fingerprint()
    )
    status, resp = generate_content_response(
        state, {"contents": [{"parts": [{"text": "x [sim:no_image]"}]}]}, model="gemini-3-pro-image-preview"
    )
    assert status == 200 and resp["candidates"][0]["finishReason"] == "NO_IMAGE"
    status, resp = generate_content_response(state, body, model="nope")
    assert status == 404 and resp["error"]["status"] == "NOT_FOUND"
    assert len(state.ledger.billable()) == 1
