"""Admin routes under ``/_simulator``: change faults at run time, read the ledger, reset.

No key is needed (the simulator only listens on loopback). Profiles are reported by key id,
never by key, so the admin answers cannot leak a secret either.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from airflow_banana.exceptions import ConfigurationError
from airflow_banana.testing.app import AppBuilder
from airflow_banana.testing.config import FaultProfile
from airflow_banana.testing.state import SimulatorState


def apply_faults(state: SimulatorState, body: Any) -> None:
    """``{"key": k, "profile": {...}}`` sets one key; ``{"keys": {...}, "default": {...}}`` replaces all."""
    if not isinstance(body, dict):
        raise ConfigurationError("PUT /_simulator/faults: body must be a JSON object")
    if "key" in body:
        state.faults.set_profile(str(body["key"]), FaultProfile.from_dict(body.get("profile") or {}))
        return
    if "keys" in body or "default" in body:
        keys = {str(k): FaultProfile.from_dict(v) for k, v in (body.get("keys") or {}).items()}
        default = FaultProfile.from_dict(body["default"]) if body.get("default") is not None else None
        state.faults.set_all(keys, default)
        return
    raise ConfigurationError('PUT /_simulator/faults: expected {"key", "profile"} or {"keys", "default"}')


async def faults(request: Request) -> Response:
    state: SimulatorState = request.app.state.sim
    if request.method == "PUT":
        try:
            apply_faults(state, await request.json())
        except (ConfigurationError, ValueError) as err:
            return JSONResponse(
                {"error": {"code": 400, "message": str(err), "status": "INVALID_ARGUMENT"}}, status_code=400
            )
    return JSONResponse(state.faults.snapshot())


async def ledger(request: Request) -> Response:
    state: SimulatorState = request.app.state.sim
    return JSONResponse(state.ledger.snapshot())


async def reset(request: Request) -> Response:
    state: SimulatorState = request.app.state.sim
    raw = await request.body()
    try:
        restore = bool((await request.json()).get("faults", False)) if raw else False
    except (ValueError, AttributeError):
        restore = False
    state.reset(faults=restore)
    return JSONResponse({"reset": True, "faults_restored": restore})


def register(builder: AppBuilder) -> None:
    builder.add_route(Route("/_simulator/faults", faults, methods=["GET", "PUT"]))
    builder.add_route(Route("/_simulator/ledger", ledger, methods=["GET"]))
    builder.add_route(Route("/_simulator/reset", reset, methods=["POST"]))
