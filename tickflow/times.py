"""One way to give a time on every command and API that takes one: an ISO 8601 datetime
with its zone (``2025-11-13T15:30:00Z``, ``2025-11-13T10:30:00.123456789-05:00``), a date
(``2025-11-13``: its 00:00 UTC, the lake's dates), or integer UTC nanoseconds since the
epoch. Exact to the nanosecond (no float on the way)."""

from __future__ import annotations

import datetime as dt
import re

_FRACTION = re.compile(r"^(.*T\d{2}:\d{2}:\d{2})\.(\d{1,9})(.*)$")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class BadTime(ValueError):
    """A time in none of the accepted forms; the message shows the forms."""


def parse_time_ns(value: str | int | dt.datetime | dt.date) -> int:
    """UTC nanoseconds since the epoch for ``value`` (see the module doc)."""
    if isinstance(value, bool):
        raise BadTime(f"not a time: {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise BadTime(f"{value!r} has no time zone; give one (e.g. UTC)")
        delta = value - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * 10**9 + delta.microseconds * 1000
    if isinstance(value, dt.date):
        return (value - _EPOCH.date()).days * 86_400 * 10**9
    text = value.strip()
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        return parse_time_ns(dt.date.fromisoformat(text))
    extra_ns = 0
    m = _FRACTION.match(text)
    if m:  # datetime keeps microseconds: the rest of a 9-digit fraction is added exactly
        digits = m.group(2).ljust(9, "0")
        text = f"{m.group(1)}.{digits[:6]}{m.group(3)}"
        extra_ns = int(digits[6:])
    try:
        parsed = dt.datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise BadTime(f"not a time: {value!r}; give ISO 8601 with a zone "
                      "(2025-11-13T15:30:00Z), a date (2025-11-13) or UTC ns") from None
    if parsed.tzinfo is None:
        raise BadTime(f"{value!r} has no time zone; add one (Z for UTC, or -05:00)")
    return parse_time_ns(parsed) + extra_ns
