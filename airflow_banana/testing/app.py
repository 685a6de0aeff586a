"""Assembly of the simulator's Starlette app from small route modules.

Each route module has ``register(builder: AppBuilder) -> None`` and may add plain routes (matched
before the core catch-alls) or model actions (the part after ``:`` in
``/{v}/models/{model}:{action}``, e.g. ``generateContent``; a batch module adds
``batchGenerateContent``). To add a module, append its dotted name to ``ROUTE_MODULES`` or pass
``modules=`` to ``build_app``.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp

from airflow_banana.testing.state import SimulatorState
from airflow_banana.testing.wire import Caller, RawSendMiddleware

# Order matters only for routes: extension modules come first so they can claim paths.
ROUTE_MODULES: list[str] = [
    "airflow_banana.testing.admin",
    "airflow_banana.testing.files_routes",
    "airflow_banana.testing.batch_routes",
    "airflow_banana.testing.vertex_batch",
    "airflow_banana.testing.gemini_routes",
    "airflow_banana.testing.openai_compat",
]


@dataclass(frozen=True)
class ActionContext:
    """What a model action handler gets besides the request."""

    state: SimulatorState
    caller: Caller
    model: str
    version: str
    surface: str  # "developer" | "vertex"
    project: str = ""
    location: str = ""


ModelAction = Callable[[Request, ActionContext], Awaitable[Response]]


@dataclass
class AppBuilder:
    state: SimulatorState
    routes: list[BaseRoute] = field(default_factory=list)
    core_routes: list[BaseRoute] = field(default_factory=list)
    model_actions: dict[str, ModelAction] = field(default_factory=dict)
    vertex_actions: dict[str, ModelAction] = field(default_factory=dict)

    def add_route(self, route: BaseRoute) -> None:
        """A route matched before the core catch-all patterns."""
        self.routes.append(route)

    def add_core_route(self, route: BaseRoute) -> None:
        self.core_routes.append(route)

    def add_model_action(
        self, action: str, handler: ModelAction, *, developer: bool = True, vertex: bool = False
    ) -> None:
        if developer:
            self.model_actions[action] = handler
        if vertex:
            self.vertex_actions[action] = handler


def build_app(state: SimulatorState, modules: Sequence[str] | None = None) -> ASGIApp:
    builder = AppBuilder(state)
    for name in modules if modules is not None else ROUTE_MODULES:
        importlib.import_module(name).register(builder)
    app = Starlette(routes=[*builder.routes, *builder.core_routes])
    app.state.sim = state
    app.state.builder = builder
    return RawSendMiddleware(app)
