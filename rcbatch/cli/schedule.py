"""Reading the times users give for scheduled batches (`submit --at`)."""

from __future__ import annotations

from datetime import datetime, timedelta

from rcbatch.errors import InputError


def parse_when(text: str, now: datetime | None = None) -> float:
    """`HH:MM` (the next such local time) or an ISO 8601 time, as a UNIX timestamp."""
    now = now or datetime.now().astimezone()
    try:
        clock = datetime.strptime(text, "%H:%M")
    except ValueError:
        clock = None
    if clock is not None:
        when = now.replace(hour=clock.hour, minute=clock.minute, second=0, microsecond=0)
        return (when if when > now else when + timedelta(days=1)).timestamp()
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise InputError(f"--at: {text!r} is neither HH:MM nor an ISO 8601 time") from None
    if parsed.tzinfo is None:
        parsed = parsed.astimezone()
    return parsed.timestamp()
