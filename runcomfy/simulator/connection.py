"""Closing a client's connection without an answer, or in the middle of one.

ASGI has no message for "drop this connection", and an exception escaping an app makes
uvicorn answer 500 when no response has started. So a handler raises `DropConnection`, which
derives from BaseException on purpose: Starlette's error middlewares catch `Exception` only,
so it passes them without a 500 being sent. The outermost `ConnectionControl` middleware
catches it and closes the socket through the transport of uvicorn's request cycle (the object
behind the `send` callable uvicorn hands to the app). A client then sees the connection end:
with no response at all (httpx: RemoteProtocolError "Server disconnected without sending a
response"), or short of its Content-Length for a response already started.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

SCOPE_KEY = "rcbatch.simulator.connection"
_CLOSE_WAIT = 2.0


class DropConnection(BaseException):
    """Raised by a handler to make the server close the connection without (more) answer;
    with `reset`, abortively (a TCP RST, "connection reset by peer") instead of a FIN."""

    def __init__(self, *, reset: bool = False) -> None:
        super().__init__()
        self.reset = reset


class Connection:
    """The socket behind one request, as far as uvicorn lets us reach it."""

    def __init__(self, send: Send) -> None:
        cycle: Any = getattr(send, "__self__", None)
        self._cycle = cycle
        self._transport: Any = getattr(cycle, "transport", None)

    @property
    def supported(self) -> bool:
        """True when the server is one whose socket we can close (uvicorn)."""
        return self._transport is not None and hasattr(self._cycle, "disconnected")

    @property
    def closed(self) -> bool:
        """True once the client has gone (or we dropped it)."""
        return bool(getattr(self._cycle, "disconnected", False))

    async def drop(self, *, reset: bool = False) -> None:
        """Close the socket (after what was already written), then wait until uvicorn sees it.

        With `reset`, linger 0 and abort: the kernel answers with a TCP RST at once. Waiting
        for uvicorn's connection_lost keeps it from logging an "incomplete response" error or
        sending a 500 for a request we meant to leave unanswered.
        """
        sock = self._transport.get_extra_info("socket")
        if reset and sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self._transport.abort()
        else:
            self._transport.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _CLOSE_WAIT
        while not self.closed and loop.time() < deadline:
            await asyncio.sleep(0.005)


class ConnectionControl:
    """Outermost ASGI middleware: gives handlers their `Connection`, honours DropConnection."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app; on DropConnection close the socket instead of answering."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        connection = Connection(send)
        scope[SCOPE_KEY] = connection
        try:
            await self.app(scope, receive, send)
        except DropConnection as dropped:
            if not connection.supported:
                raise RuntimeError("dropping a connection needs uvicorn as the server") from None
            await connection.drop(reset=dropped.reset)


def connection_of(scope: Scope) -> Connection | None:
    """The Connection ConnectionControl attached to this request's scope."""
    found = scope.get(SCOPE_KEY)
    return found if isinstance(found, Connection) else None
