"""The simulator's jobs in a SQLite database, so a restarted simulator still knows them.

With `SimulatorConfig(state_path=...)` a job is written once when it is accepted (request id,
owner digest, model, body, output plan, drawn duration and failure, creation time, what became
of its submit's answer), and again when it is cancelled or one of its outputs is fetched. Its
starts and finishes are never written: they follow exactly from those rows and the per-token
cap, so a starting simulator replays the rows through the engine (`replay`). Times are the
engine's clock, stored with the wall-clock time of its zero (`wall_origin`); the restarted
engine's clock continues from the wall clock, so the schedule goes on as if the simulator had
never stopped, like the real service does while its client is away: a job in progress ends at
its planned wall-clock end (already ended if that has passed), queued jobs start in FIFO order
as slots freed, also during the downtime.

Every write is its own transaction, in WAL mode with `synchronous=NORMAL`: what was written
survives the process being killed (SIGKILL), not necessarily a power cut. The database is held
in EXCLUSIVE locking mode, so a second simulator on the same state fails at start instead of
both writing to it; the lock goes with the process, however it ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rcbatch.errors import InputError
from rcbatch.runcomfy.simulator.engine import Engine, Job
from rcbatch.runcomfy.simulator.outputs import OutputFile, OutputPlan

DB_NAME = "simulator.sqlite3"
DB_SUFFIXES = (".sqlite3", ".sqlite", ".db")
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    idx INTEGER PRIMARY KEY, request_id TEXT NOT NULL UNIQUE, owner TEXT NOT NULL,
    model_id TEXT NOT NULL, body TEXT NOT NULL, outputs TEXT NOT NULL, gets TEXT NOT NULL,
    duration REAL NOT NULL, will_fail INTEGER NOT NULL, created REAL NOT NULL,
    cancelled REAL, answer TEXT NOT NULL, client_port INTEGER);
"""
_FILE_FIELDS = ("n", "kind", "ext", "content_type", "width", "height", "size_bytes", "gone",
                "gone_fetches")
_JOB_COLUMNS = ("idx, request_id, owner, model_id, body, outputs, gets, duration, will_fail, "
                "created, cancelled, answer, client_port")


def database_path(state_path: str | os.PathLike[str]) -> Path:
    """The database file of a state path: the path itself when it is an existing file or ends
    in .sqlite3/.sqlite/.db, otherwise `<folder>/simulator.sqlite3`."""
    path = Path(state_path).expanduser()
    if path.is_file() or path.suffix in DB_SUFFIXES:
        return path
    return path / DB_NAME


@dataclass
class Saved:
    """What a previous run left: the epoch's draws and clock, the cap's history, the jobs."""

    seed: int
    wall_origin: float
    #: (engine time, per-token cap) from the epoch's start, in order
    capacities: list[tuple[float, int]]
    requests: dict[str, int]
    jobs: list[Job]
    #: request id -> engine time of its cancel
    cancels: dict[str, float] = field(default_factory=dict)

    @property
    def latest(self) -> float:
        """The engine time of the last thing recorded (no restart may begin before it)."""
        times = [at for at, _ in self.capacities] + [j.created for j in self.jobs]
        return max([*times, *self.cancels.values()])


class JobStore:
    """The database behind `state_path`, opened and locked for this process."""

    def __init__(self, state_path: str | os.PathLike[str]) -> None:
        self.path = database_path(state_path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = _open(self.path)
        except (OSError, sqlite3.Error) as exc:
            raise InputError(_describe(self.path, exc)) from exc

    def load(self) -> Saved | None:
        """The saved epoch, or None when the database holds none yet."""
        meta = {k: json.loads(v) for k, v in self._db.execute("SELECT key, value FROM meta")}
        if "seed" not in meta:
            return None
        if meta.get("version") != SCHEMA_VERSION:
            raise InputError(f"simulator state {self.path}: written by another version "
                             f"(schema {meta.get('version')}); use another --state")
        rows = self._db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs ORDER BY idx").fetchall()
        return Saved(seed=meta["seed"], wall_origin=meta["wall_origin"],
                     capacities=[(at, n) for at, n in meta["capacities"]],
                     requests=meta.get("requests", {}), jobs=[_job(row) for row in rows],
                     cancels={row[1]: row[10] for row in rows if row[10] is not None})

    def begin(self, seed: int, wall_origin: float, capacity: int, at: float) -> None:
        """Forget everything and start a new epoch (a fresh start, or `POST /_sim/reset`)."""
        with self._transaction():
            self._db.execute("DELETE FROM jobs")
            self._db.execute("DELETE FROM meta")
            self._put({"version": SCHEMA_VERSION, "seed": seed, "wall_origin": wall_origin,
                       "capacities": [[at, capacity]], "requests": {}})

    def note_seed(self, seed: int) -> None:
        """Record the seed new jobs are drawn from (a restart may be given another one)."""
        self._put({"seed": seed})

    def add_capacity(self, at: float, capacity: int) -> None:
        """Record that the per-token cap became `capacity` at engine time `at`."""
        (text,) = self._db.execute("SELECT value FROM meta WHERE key='capacities'").fetchone()
        self._put({"capacities": [*json.loads(text), [at, capacity]]})

    def add_job(self, job: Job) -> None:
        """Write a job just accepted."""
        outputs = {"key": job.outputs.key,
                   "files": [{k: getattr(f, k) for k in _FILE_FIELDS} for f in job.outputs.files]}
        row = (job.index, job.request_id, job.owner, job.model_id, _dump(job.body),
               _dump(outputs), _gets(job), job.duration, int(job.will_fail), job.created,
               None, job.answer, job.client_port)
        self._db.execute(f"INSERT INTO jobs ({_JOB_COLUMNS}) VALUES "
                         "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)

    def cancel(self, job: Job) -> None:
        """Write that a queued job was cancelled (at `job.finished`)."""
        self._db.execute("UPDATE jobs SET cancelled=? WHERE idx=?", (job.finished, job.index))

    def fetched(self, job: Job) -> None:
        """Write how often each output of the job has been fetched (404s and truncations
        depend on it)."""
        self._db.execute("UPDATE jobs SET gets=? WHERE idx=?", (_gets(job), job.index))

    def save_requests(self, requests: Mapping[str, int]) -> None:
        """Write the request counters of the fault draws. Only a clean stop does: after a
        kill the next run repeats the draws of the requests since the last clean stop."""
        self._put({"requests": dict(requests)})

    def close(self) -> None:
        """Close the database (and release its lock)."""
        self._db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        # isolation_level=None leaves transactions to us: BEGIN explicitly, commit on exit.
        self._db.execute("BEGIN")
        with self._db:  # commits, or rolls back on an exception
            yield

    def _put(self, values: Mapping[str, Any]) -> None:
        self._db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                             [(k, _dump(v)) for k, v in values.items()])


def replay(engine: Engine, saved: Saved) -> None:
    """Put the saved jobs into a new engine (with the saved clock) in the order they came:
    each accepted, and each cancelled, at its recorded time, with the cap of that time."""
    by_id = {job.request_id: job for job in saved.jobs}
    events: list[tuple[float, int, int, Job | None]]
    events = [(job.created, 0, job.index, job) for job in saved.jobs]
    events += [(at, 1, by_id[rid].index, by_id[rid]) for rid, at in saved.cancels.items()]
    events += [(at, -1, n, None) for at, n in saved.capacities[1:]]
    for at, kind, number, job in sorted(events, key=lambda e: e[:3]):
        engine.advance(at)
        if job is None:
            engine.set_capacity(number, at)
        elif kind == 0:
            engine.add(job)
        else:
            engine.cancel(job, at)


def _open(path: Path) -> sqlite3.Connection:
    # check_same_thread=False: SimulatorServer builds the app in one thread and serves it from
    # uvicorn's; all use is from one thread at a time. timeout=0: a locked state fails at once.
    db = sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA locking_mode=EXCLUSIVE")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("BEGIN EXCLUSIVE")  # takes the lock now, held until close
        db.executescript(_SCHEMA)  # commits
    except sqlite3.Error:
        db.close()
        raise
    return db


def _describe(path: Path, exc: BaseException) -> str:
    if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
        return f"simulator state {path} is in use by another simulator"
    return f"simulator state {path} cannot be used: {exc}"


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _gets(job: Job) -> str:
    return _dump([f.gets for f in job.outputs.files])


def _job(row: tuple[Any, ...]) -> Job:
    (index, request_id, owner, model_id, body, outputs, gets, duration, will_fail, created,
     _cancelled, answer, client_port) = row
    plan = json.loads(outputs)
    files = tuple(OutputFile(**spec, gets=count)
                  for spec, count in zip(plan["files"], json.loads(gets), strict=True))
    return Job(index=index, request_id=request_id, owner=owner, model_id=model_id,
               body=json.loads(body), outputs=OutputPlan(plan["key"], files),
               duration=duration, will_fail=bool(will_fail), created=created, answer=answer,
               client_port=client_port)
