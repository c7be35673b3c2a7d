"""Running the simulator under uvicorn: in a background thread, or in the foreground."""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from types import FrameType, TracebackType
from typing import TextIO

import uvicorn
from starlette.applications import Starlette

from rcbatch.runcomfy.simulator.app import create_app
from rcbatch.runcomfy.simulator.config import SimulatorConfig

_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 5.0


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port); port 0 picks a free port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on accepted sockets whose
    # proto says TCP; without it every answer waits ~40 ms for a delayed ACK (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    return sock


def base_url_of(sock: socket.socket) -> str:
    """The http:// base URL of a bound socket, e.g. http://127.0.0.1:54321."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def uvicorn_config(app: Starlette, config: SimulatorConfig, log_level: str) -> uvicorn.Config:
    """uvicorn options: the h11 protocol (ConnectionControl relies on its request cycle)."""
    return uvicorn.Config(
        app, http="h11", ws="none", loop="asyncio", lifespan="on", log_level=log_level,
        access_log=config.access_log, proxy_headers=False, timeout_graceful_shutdown=1,
        timeout_keep_alive=30,
    )


class SimulatorServer:
    """The simulator on a loopback port in a background thread, as a context manager.

        with SimulatorServer(SimulatorConfig(duration=(0.05, 0.2))) as sim:
            httpx.get(f"{sim.base_url}/_sim/stats")
    """

    def __init__(self, config: SimulatorConfig, *, log_level: str = "warning") -> None:
        self.config = config
        self.app = create_app(config)
        self._server = uvicorn.Server(uvicorn_config(self.app, config, log_level))
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    @property
    def base_url(self) -> str:
        """The simulator's base URL, e.g. "http://127.0.0.1:54321" (once started)."""
        if self._sock is None:
            raise RuntimeError("the simulator is not started")
        return base_url_of(self._sock)

    def start(self) -> None:
        """Bind the port, start uvicorn in a thread, return once it accepts requests."""
        self._sock = bind_socket(self.config.host, self.config.port)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                        name="rcbatch-simulator", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + _START_TIMEOUT
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the simulator failed to start")
            time.sleep(0.01)

    def stop(self) -> None:
        """Stop uvicorn (cutting off requests still running after a second) and close the port."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(_STOP_TIMEOUT)
            if self._thread.is_alive():
                self._server.force_exit = True
                self._thread.join(_STOP_TIMEOUT)
        if self._sock is not None:
            self._sock.close()

    def __enter__(self) -> SimulatorServer:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class _ForegroundServer(uvicorn.Server):
    """uvicorn that stops on SIGTERM/SIGINT without re-raising the signal afterwards."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Install our handlers for the run, restore the previous ones after."""
        wanted = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in wanted}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True  # a second Ctrl-C: do not wait for running requests
        self.should_exit = True


def run_forever(config: SimulatorConfig, *, out: TextIO | None = None,
                log_level: str = "info") -> None:
    """Serve in the foreground until SIGTERM/SIGINT.

    The first line written to `out` (stdout by default) is
    `rcbatch simulator listening on http://HOST:PORT`, for a parent process to read.
    """
    out = out or sys.stdout
    sock = bind_socket(config.host, config.port)
    server = _ForegroundServer(uvicorn_config(create_app(config), config, log_level))
    print(f"rcbatch simulator listening on {base_url_of(sock)}", file=out, flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
