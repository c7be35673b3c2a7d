"""Structured logging: one event per state change, JSON lines when not on a terminal.

Decided once, in `configure_logging`: the renderer (console on a TTY, JSON otherwise) and the
redaction of secrets. `Redactor` replaces every occurrence of a secret in any event value, a
last line of defence behind the rule that no code puts the token in an event at all.
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from collections.abc import Iterable, MutableMapping
from pathlib import Path
from typing import Any, TextIO

import structlog

REDACTED = "[redacted]"


class Redactor:
    """A structlog processor that blanks out known secrets anywhere in an event."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets = [s for s in secrets if s and len(s) >= 4]

    def __call__(self, _logger: Any, _name: str,
                 event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        """Redact the event in place and return it."""
        if self.secrets:
            for key, value in list(event.items()):
                event[key] = self._clean(value)
        return event

    def _clean(self, value: Any) -> Any:
        if isinstance(value, str):
            for secret in self.secrets:
                value = value.replace(secret, REDACTED)
            return value
        if isinstance(value, dict):
            return {k: self._clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self._clean(v) for v in value]
        return value


class LevelCounter:
    """A structlog processor that counts events per level (for a run's closing summary)."""

    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()

    def __call__(self, _logger: Any, name: str,
                 event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        """Count the event and pass it on unchanged."""
        self.seen[name] += 1
        return event


def configure_logging(*, level: str = "INFO", secrets: Iterable[str] = (),
                      stream: TextIO | None = None, json: bool | None = None,
                      counter: LevelCounter | None = None) -> None:
    """Set up structlog (and the stdlib root logger it writes through) once per process."""
    stream = stream or sys.stderr
    as_json = (not stream.isatty()) if json is None else json
    renderer: Any = (structlog.processors.JSONRenderer() if as_json
                     else structlog.dev.ConsoleRenderer(colors=False))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            Redactor(secrets),
            *([counter] if counter else []),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    _quiet_third_party(stream, secrets)


def _quiet_third_party(stream: TextIO, secrets: Iterable[str]) -> None:
    """Route stdlib logging (Celery, httpx, botocore) through the same redaction."""
    handler = logging.StreamHandler(stream)
    handler.addFilter(_StdlibRedactor(list(secrets)))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    for noisy in ("httpx", "httpcore", "aiohttp", "botocore", "boto3", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class _StdlibRedactor(logging.Filter):
    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s and len(s) >= 4]

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            for secret in self.secrets:
                message = message.replace(secret, REDACTED)
            record.msg, record.args = message, None
        return True


def log_to_file(path: Path, *, level: str, secrets: Iterable[str]) -> LevelCounter:
    """Send this process's log events to `path` (JSON lines), never over a progress bar;
    the returned counter tells the command how many warnings to sum up at its end."""
    path.parent.mkdir(parents=True, exist_ok=True)
    counter = LevelCounter()
    configure_logging(level=level, secrets=secrets, json=True, counter=counter,
                      stream=path.open("a", encoding="utf-8"))
    return counter


def warnings_line(counter: LevelCounter, path: Path) -> str | None:
    """`N warnings logged to PATH ...`, or None when there were none."""
    warned = counter.seen["warning"] + counter.seen["error"]
    if not warned:
        return None
    return f"{warned} warnings logged to {path} (the workers' logs are beside it)"
