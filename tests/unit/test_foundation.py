"""Pure foundation pieces: provider info, config parsing, pricing, secrets, imaging, identity."""

from __future__ import annotations

import io
import json
import pickle
import subprocess
import sys

import pytest
from PIL import Image

import airflow_banana
from airflow_banana.channels.config import ChannelConfig, check_base_url, parse_channel
from airflow_banana.exceptions import ConfigurationError, ImageValidationError, InsecureBaseUrlError
from airflow_banana.identity import RunIdentity, fingerprint_of
from airflow_banana.imaging import inspect_image, sniff_mime
from airflow_banana.models import PIXEL_SIZES, ImageRequest, ReferenceImage, expected_pixels
from airflow_banana.pricing import LIST_PRICES, attempt_cost, price_table, savings_vs_direct
from airflow_banana.secrets import Secret


def _png(size: tuple[int, int] = (8, 4), fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 10, 10)).save(buf, format=fmt)
    return buf.getvalue()


def test_provider_info_registers_the_connection_type() -> None:
    info = airflow_banana.get_provider_info()
    assert info["package-name"] == "airflow-banana"
    (conn,) = info["connection-types"]
    assert conn["connection-type"] == "banana"
    assert conn["hook-class-name"] == "airflow_banana.hooks.channel.BananaChannelHook"


def test_importing_the_package_imports_no_sdk() -> None:
    code = (
        "import sys, airflow_banana, airflow_banana.operators, airflow_banana.testing;"
        "bad=[m for m in ('google.genai','google.cloud.storage','PIL') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_airflow_providers_list_shows_the_provider() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "airflow", "providers", "list", "--output", "json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("[{"))
    names = [p["package_name"] for p in json.loads(line)]
    assert "airflow-banana" in names


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://generativelanguage.googleapis.com", True),
        ("http://127.0.0.1:8080", True),
        ("http://localhost:9", True),
        ("http://[::1]:9", True),
        ("http://relay.example.com", False),
        ("http://10.0.0.5:80", False),
    ],
)
def test_plain_http_only_to_loopback(url: str, ok: bool) -> None:
    if ok:
        assert check_base_url(url, channel="c") == url
    else:
        with pytest.raises(InsecureBaseUrlError, match="channel 'c'"):
            check_base_url(url, channel="c")
    assert check_base_url(url, channel="c", allow_insecure=True) == url


def test_parse_channel_defaults_and_overrides() -> None:
    cfg = parse_channel(
        "relay",
        host="http://127.0.0.1:1/api/v1",
        password="sk-secret",
        extra={"protocol": "openai", "prices": {"1K": 0.04}, "rpm": "30", "max_concurrency": 2},
    )
    assert isinstance(cfg, ChannelConfig)
    assert cfg.prices == {"1K": 0.04, "2K": 0.05, "4K": 0.05}
    assert cfg.rpm == 30.0 and cfg.max_concurrency == 2
    assert cfg.signatures is False
    assert "sk-secret" not in repr(cfg)
    direct = parse_channel("g", host=None, password="k", extra='{"protocol": "gemini"}')
    assert direct.base_url == "https://generativelanguage.googleapis.com" and direct.signatures


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({}, 4),  # no rate: the default
        ({"rpm": 10}, 7),  # ceil(10 / 60 x 30 x 1.25)
        ({"rpm": 50}, 32),
        ({"rpm": 50, "ipm": 10}, 7),  # the tighter rate binds
        ({"rpm": 2}, 4),  # never below the default
        ({"rpm": 1000}, 64),  # nor above the cap
        ({"rpm": 60, "timeout": 8}, 10),  # calls cannot outlast the attempt timeout
        ({"rpm": 50, "max_concurrency": 3}, 3),  # what the connection says wins
    ],
)
def test_max_concurrency_is_derived_from_the_rate_when_unset(extra: dict[str, object], expected: int) -> None:
    cfg = parse_channel("g", host=None, password="k", extra={"protocol": "gemini", **extra})
    assert cfg.max_concurrency == expected


@pytest.mark.parametrize(
    ("extra", "password", "message"),
    [
        ({"protocol": "smtp"}, "k", "protocol must be one of"),
        ({"protocol": "gemini"}, None, "no API key"),
        ({"protocol": "vertex"}, "t", "needs extra.project and extra.location"),
        ({"rpm": "fast"}, "k", "rpm must be a number"),
        ({"rpm": -1}, "k", "rpm must be positive"),
        ({"prices": {"8K": 1}}, "k", "unknown image size"),
        ({"prices": [1]}, "k", "prices must be an object"),
    ],
)
def test_parse_channel_rejects_bad_connections(extra: dict, password: str | None, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as err:
        parse_channel("chan", host="https://x.example", password=password, extra=extra)
    assert "chan" in str(err.value)


def test_parse_channel_invalid_extra_json() -> None:
    with pytest.raises(ConfigurationError, match="not valid JSON"):
        parse_channel("chan", host=None, password="k", extra="{nope")


def test_pricing() -> None:
    table = price_table("gemini")
    assert table == {"1K": 0.134, "2K": 0.134, "4K": 0.24}
    assert LIST_PRICES["batch"]["4K"] == 0.12
    assert attempt_cost(table, "4K", succeeded=True, billed_on_failure=False) == 0.24
    assert attempt_cost(table, "4K", succeeded=False, billed_on_failure=False) == 0.0
    assert attempt_cost(table, "4K", succeeded=False, billed_on_failure=True) == 0.24
    assert savings_vs_direct(0.10, {"1K": 1}) == pytest.approx(0.034)
    with pytest.raises(ConfigurationError):
        price_table("gemini", {"1K": -1})


def test_secret_never_shows() -> None:
    secret = Secret("AIza-very-secret")
    assert (
        "very-secret" not in repr(secret)
        and "very-secret" not in str(secret)
        and "very-secret" not in f"{secret}"
    )
    assert secret.reveal() == "AIza-very-secret"
    with pytest.raises(TypeError):
        pickle.dumps(secret)


def test_sniff_and_inspect() -> None:
    png, jpeg = _png(), _png(fmt="JPEG")
    assert sniff_mime(png) == "image/png" and sniff_mime(jpeg) == "image/jpeg"
    assert sniff_mime(b"RIFF0000WAVE") is None and sniff_mime(b"<html>") is None
    info = inspect_image(jpeg)
    assert (info.mime_type, info.width, info.height, info.extension) == ("image/jpeg", 8, 4, "jpg")
    with pytest.raises(ImageValidationError, match="not a known image type"):
        inspect_image(b'{"json": true}')
    with pytest.raises(ImageValidationError, match="do not decode"):
        inspect_image(png[: len(png) // 2])


def test_pixel_table_matches_ratios() -> None:
    for ratio, sizes in PIXEL_SIZES.items():
        w, h = (int(x) for x in ratio.split(":"))
        for size, (pw, ph) in sizes.items():
            assert abs(pw / ph - w / h) < 0.03, (ratio, size)
    assert expected_pixels("4K", "16:9") == (5504, 3072)


def test_request_fingerprint_ignores_item_id_but_not_content() -> None:
    ref = ReferenceImage(_png(), "image/png", uri="gs://b/ref.png")
    a = ImageRequest("a", "a cat", "1K", "1:1", reference_images=(ref,))
    assert a.fingerprint() == ImageRequest("b", "a cat", "1K", "1:1", reference_images=(ref,)).fingerprint()
    assert a.fingerprint() != ImageRequest("a", "a cat", "2K", "1:1", reference_images=(ref,)).fingerprint()
    assert a.fingerprint() != ImageRequest("a", "a cat", "1K", "1:1").fingerprint()


def test_run_identity_key_is_stable_and_safe() -> None:
    ident = RunIdentity("dag", "task", "manual__2026-01-01T00:00:00+00:00", 3)
    assert ident.run_key == "dag__task__manual__2026-01-01T00_00_00_00_00__m3"
    assert "/" not in RunIdentity("d", "t", "a/b/../c").run_key
    assert RunIdentity("d", "t", "r").run_key == "d__t__r"
    assert fingerprint_of(["b", "a"]) == fingerprint_of(["a", "b"]) != fingerprint_of(["a"])


def test_airflow_shows_the_connection_form_behaviour() -> None:
    code = (
        "import json; from airflow.providers_manager import ProvidersManager;"
        "pm = ProvidersManager();"
        "print(json.dumps({'behaviour': pm.field_behaviours.get('banana'),"
        " 'hook': pm.hooks['banana'].hook_class_name if pm.hooks.get('banana') else None}))"
    )
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["hook"] == "airflow_banana.hooks.channel.BananaChannelHook"
    behaviour = seen["behaviour"]
    assert behaviour["relabeling"] == {"password": "API Key", "host": "Base URL"}
    assert set(behaviour["hidden_fields"]) == {"schema", "login", "port"}
