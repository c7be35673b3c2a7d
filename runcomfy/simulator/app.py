"""The Starlette application of the simulator."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.types import ASGIApp

from rcbatch.runcomfy.simulator import admin, api, files
from rcbatch.runcomfy.simulator.config import SimulatorConfig
from rcbatch.runcomfy.simulator.connection import ConnectionControl
from rcbatch.runcomfy.simulator.state import SimState

#: the longest the background tick sleeps when no job is about to end
TICK_SECONDS = 0.25


class SimulatorApp(Starlette):
    """Starlette with `ConnectionControl` outside even its error middleware.

    It has to be outermost: Starlette's ServerErrorMiddleware would otherwise answer 500 for
    a request the simulator means to leave unanswered.
    """

    def build_middleware_stack(self) -> ASGIApp:
        """The usual stack, wrapped in ConnectionControl."""
        return ConnectionControl(super().build_middleware_stack())


async def _tick(sim: SimState) -> None:
    """Advance the clock when the next job ends, so stats stay fresh without requests."""
    while True:
        upcoming = sim.engine.next_event()
        wait = TICK_SECONDS if upcoming is None else upcoming - sim.engine.now()
        await asyncio.sleep(min(TICK_SECONDS, max(0.001, wait)))
        sim.engine.advance()


def create_app(config: SimulatorConfig,
               clock: Callable[[], float] = time.monotonic) -> Starlette:
    """The simulator as an ASGI app; `clock` (monotonic seconds) is injectable for tests."""
    sim = SimState(config, clock)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        ticker = asyncio.create_task(_tick(sim))
        try:
            yield
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            sim.close()

    app = SimulatorApp(routes=[*api.ROUTES, *files.ROUTES, *admin.ROUTES], lifespan=lifespan)
    app.state.sim = sim
    return app
