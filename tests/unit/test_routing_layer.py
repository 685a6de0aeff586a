"""The routing core is pure and sits below the channel layer: it takes ``ChannelTerms``."""

from __future__ import annotations

import json
import random
import subprocess
import sys

from airflow_banana.channels.config import ChannelConfig
from airflow_banana.pricing import price_table
from airflow_banana.routing import FakeClock, router_for
from airflow_banana.routing.terms import ChannelTerms, terms_of
from airflow_banana.secrets import Secret

_SCRIPT = """
import json, sys
import airflow_banana.routing
print(json.dumps(sorted(m for m in sys.modules if m.startswith("airflow_banana.channels"))))
"""


def test_the_routing_package_imports_nothing_from_the_channel_layer() -> None:
    done = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_a_connection_maps_onto_the_terms_the_router_decides_on() -> None:
    config = ChannelConfig(
        name="relay",
        protocol="openai",
        base_url="http://127.0.0.1:9",
        api_key=Secret("sk-secret"),
        prices={"1K": 0.04},
        rpm=30.0,
        billed_on_failure=True,
        attempt_timeout_s=45.0,
    )
    terms = terms_of(config)
    assert terms == config.terms()
    assert terms.prices == {**price_table("openai"), "1K": 0.04}
    assert (terms.rpm, terms.billed_on_failure, terms.attempt_timeout_s) == (30.0, True, 45.0)
    assert "sk-secret" not in repr(terms)
    by_config = router_for([config], FakeClock(), random.Random(1))
    by_terms = router_for([terms], FakeClock(), random.Random(1))
    assert by_config.channels == by_terms.channels == {"relay": terms}
    assert by_terms.price("relay", "1K") == 0.04
    assert terms_of(terms) is terms and isinstance(terms, ChannelTerms)
