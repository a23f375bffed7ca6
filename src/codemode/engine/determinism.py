"""The deterministic cell environment: the reads a cell makes of its nondeterministic sources
(docs/determinism.md).

Every value a cell can read from the clock or from entropy goes through one recorded read. On a
live run the engine answers it from the real source and reports it; on a replay
(``CellBoot.replay_reads``) it answers the recorded value while the recorded source matches, and
live values from the first read past the record or of another source. Engines report the reads of
each command in ``StepReport.reads``, in order, as runs of equal reads
(:class:`~codemode.engine.base.EnvRead` with its ``count``).

This module holds what the engines and the host share: the source names and their wire codes,
the per-command bound, the host's check of reported reads, :class:`ReadPlayer` (the replay logic
for engines whose reads are answered on the host: Python cells) and the pinning of V8's time zone
and locale.
"""

from __future__ import annotations

import array
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from codemode.engine.base import EnvRead

__all__ = [
    "MAX_CLOCK_MS",
    "MAX_READS_PER_STEP",
    "PINNED_LOCALE",
    "PINNED_TIME_ZONE",
    "SOURCES",
    "ReadPlayer",
    "TooManyReads",
    "check_reads",
    "decode_read_runs",
    "pin_v8_zone_and_locale",
    "read_runs",
    "replay_wire",
    "too_many_reads_text",
]

#: The sources an engine may report, by wire code (their index): ``clock`` is milliseconds since
#: the Unix epoch (``Date.now()``, ``new Date()``, ``datetime.now()``, ...), ``random`` the seed of
#: a cell's ``Math.random()`` generator in [0, 1) (read once, at the first call).
SOURCES: tuple[str, ...] = ("clock", "random")

#: Runs of reads (consecutive reads answering one value) one command (run or step) may make. A
#: cell that makes more gets an error from the read that passes the bound (a ``RangeError`` in
#: JavaScript, a ``RuntimeError`` in Python); a report holding more is refused by the host.
MAX_READS_PER_STEP = 100_000

#: The largest clock value (ms) a report may hold: the range of a JavaScript Date.
MAX_CLOCK_MS = 8.64e15

#: The largest count of one run (exactly representable as a float64).
MAX_RUN = 2**53

_CODES = {name: code for code, name in enumerate(SOURCES)}

logger = logging.getLogger("codemode.engine.determinism")


def too_many_reads_text() -> str:
    """The message of the error a cell gets when one step reads its sources too often."""
    return (
        f"more than {MAX_READS_PER_STEP} distinct reads of the clock and the random source "
        "in one step"
    )


class TooManyReads(Exception):
    """A command made more than :data:`MAX_READS_PER_STEP` runs of reads."""

    def __init__(self) -> None:
        super().__init__(too_many_reads_text())


def _value_ok(source: str, value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if not math.isfinite(value):
        return False
    if source == "random":
        return 0.0 <= value < 1.0
    return abs(value) <= MAX_CLOCK_MS


def check_reads(raw: Any) -> tuple[EnvRead, ...]:
    """The reads of one report, from their wire form ``[code, value, count, ...]``.

    Untrusted input: raises ``ValueError`` (with the reason) unless it is a flat list of triples,
    each a known source code, a finite value in its source's range and a count of at least 1,
    at most :data:`MAX_READS_PER_STEP` of them."""
    if not isinstance(raw, list) or len(raw) % 3:
        raise ValueError("the reads are not a list of source, value and count triples")
    if len(raw) > 3 * MAX_READS_PER_STEP:
        raise ValueError(f"more than {MAX_READS_PER_STEP} reads in one step")
    codes = raw[0::3]
    values = raw[1::3]
    counts = raw[2::3]
    # Checked a list at a time (a cell may report many reads); the first bad read is then
    # looked for one by one, for its reason.
    if not _all_ok(codes, values, counts):
        for code, value, count in zip(codes, values, counts, strict=True):
            _check_one(code, value, count)
    sources = SOURCES
    return tuple(
        EnvRead(sources[code], float(value), count)
        for code, value, count in zip(codes, values, counts, strict=True)
    )


def _all_ok(codes: list[Any], values: list[Any], counts: list[Any]) -> bool:
    if not set(map(type, codes)) <= {int} or not set(codes) <= set(range(len(SOURCES))):
        return False
    if not set(map(type, values)) <= {int, float} or not set(map(type, counts)) <= {int}:
        return False
    if not values:
        return True
    if not math.isfinite(sum(values)) or min(counts) < 1 or max(counts) > MAX_RUN:
        return False
    random = [v for c, v in zip(codes, values, strict=True) if c == 1]
    clock = [v for c, v in zip(codes, values, strict=True) if c == 0]
    if random and not (min(random) >= 0.0 and max(random) < 1.0):
        return False
    return not clock or max(map(abs, clock)) <= MAX_CLOCK_MS


def _check_one(code: Any, value: Any, count: Any) -> None:
    if type(code) is not int or not 0 <= code < len(SOURCES):
        raise ValueError(f"a read of an unknown source ({str(code)[:20]})")
    source = SOURCES[code]
    if not _value_ok(source, value):
        raise ValueError(f"a {source} read that is not a finite value in range")
    if type(count) is not int or not 1 <= count <= MAX_RUN:
        raise ValueError(f"a {source} read whose count is not a positive integer")


def decode_read_runs(memory: Any, runs: Any) -> list[Any]:
    """The first ``runs`` runs of a V8 cell's read buffer (float64 triples ``[code, value,
    count]`` in the machine's byte order) as ``[code, value, count, ...]`` for
    :func:`check_reads`, each integral code and count as an int. Raises ``ValueError`` when
    ``runs`` is not an int within the bound or the memory is too short."""
    if type(runs) is not int or not 0 < runs <= MAX_READS_PER_STEP:
        raise ValueError(f"a count of reads that is not 1 to {MAX_READS_PER_STEP}")
    if memory is None or len(memory) < 24 * runs:
        raise ValueError("the reads are not in the cell's read buffer")
    values = array.array("d")
    values.frombytes(bytes(memory[: 24 * runs]))
    flat: list[Any] = values.tolist()
    for i in range(0, len(flat), 3):
        code = flat[i]
        if code.is_integer() and 0 <= code < len(SOURCES):
            flat[i] = int(code)
        count = flat[i + 2]
        if count.is_integer() and 1 <= count <= MAX_RUN:
            flat[i + 2] = int(count)
    return flat


def read_runs(raw: Any) -> int:
    """How many runs of reads a V8 drain report says it carries (its ``,"reads":N}`` tail); 0
    when it says none, or says it in any other form (the host's check refuses that form)."""
    if not isinstance(raw, str):
        return 0
    at = raw.rfind(',"reads":', max(len(raw) - 32, 0))
    if at < 0:
        return 0
    digits = raw[at + 9 : -1]
    if not digits.isdigit() or len(digits) >= 10:
        return 0
    return int(digits)


def replay_wire(replay: Sequence[EnvRead]) -> list[float]:
    """``replay`` in the wire form ``[code, value, count, ...]`` a V8 cell answers from. A source
    the engine does not know gets code -1: no read matches it, so the replay turns live there.
    Raises ``ValueError`` for a value that is not a finite number or a count below 1."""
    out: list[float] = []
    for read in replay:
        value = read.value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError("a replayed read whose value is not a number")
        if not math.isfinite(value):
            raise ValueError("a replayed read whose value is not finite")
        count = read.count
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_RUN:
            raise ValueError("a replayed read whose count is not a positive integer")
        out += (_CODES.get(read.source, -1), value, count)
    return out


class ReadPlayer:
    """Answers one cell's reads on the host: from ``replay`` while it matches, then live.

    :meth:`read` records every answer (as runs of equal reads); :meth:`take` hands over the
    reads of the command that just ran (``StepReport.reads``) and starts the next one."""

    __slots__ = ("_at", "_left", "_reads", "_replay")

    def __init__(self, replay: Sequence[EnvRead] = ()) -> None:
        self._replay = tuple(replay)
        self._at = 0
        self._left = self._replay[0].count if self._replay else 0
        self._reads: list[EnvRead] = []

    def read(self, source: str, live: Callable[[], float]) -> float:
        """The value of the cell's next read of ``source``; raises :class:`TooManyReads` when it
        would start a run past the per-command bound."""
        replay = self._replay
        if self._at < len(replay) and replay[self._at].source == source:
            value = replay[self._at].value
            self._left -= 1
            if self._left <= 0:
                self._at += 1
                self._left = replay[self._at].count if self._at < len(replay) else 0
        else:
            self._at = len(replay)  # past the record, or diverged: live from here on
            value = live()
        reads = self._reads
        if reads and reads[-1].source == source and reads[-1].value == value:
            reads[-1] = EnvRead(source, value, reads[-1].count + 1)
            return value
        if len(reads) >= MAX_READS_PER_STEP:
            raise TooManyReads
        reads.append(EnvRead(source, value))
        return value

    @property
    def position(self) -> tuple[int, int]:
        """Where the replay stands (the run being answered, the reads it still answers)."""
        return self._at, self._left

    def seek(self, position: tuple[int, int]) -> None:
        """Continue the replay from a :attr:`position` (a dumped cell restored elsewhere)."""
        at, left = position
        self._at = min(max(int(at), 0), len(self._replay))
        self._left = int(left)

    def take(self) -> tuple[EnvRead, ...]:
        """The reads since the last call, in order."""
        if not self._reads:
            return ()
        reads, self._reads = tuple(self._reads), []
        return reads


#: The time zone and default locale of every JavaScript cell, whatever the machine's: a replay on
#: another machine formats dates and numbers exactly as the recorded run did.
PINNED_TIME_ZONE = "UTC"
PINNED_LOCALE = "en-US"


# What ICU reads, once per process, to choose its default time zone and locale.
_PIN_ENV = {"TZ": "UTC", "LC_ALL": "en_US.UTF-8"}
# Makes ICU settle both now (it caches them for the life of the process).
_PIN_PROBE = (
    "[Intl.DateTimeFormat().resolvedOptions().timeZone, Intl.NumberFormat().resolvedOptions()"
    ".locale, new Date(0).getTimezoneOffset(), (0).toLocaleString(), 'a'.localeCompare('b')]"
    ".slice(0, 3).join(' ')"
)
_pin_lock = threading.Lock()
_pinned: bool | None = None  # None: not tried yet; else whether cells see the pinned zone


def pin_v8_zone_and_locale(native_lock: Any) -> bool:
    """Make V8 (through ICU) settle on :data:`PINNED_TIME_ZONE` and :data:`PINNED_LOCALE` for
    the life of the process, whatever the machine's zone and locale; True when it did.

    ICU reads its default zone and locale from the environment once, the first time a context
    asks. So, once per process, this sets ``TZ`` and ``LC_ALL`` for the few milliseconds it takes
    a throwaway context (created under ``native_lock``, on a thread of its own) to ask, and
    restores them at once (and has the C library read the host's zone again): the host's own
    notion of local time is left alone. If V8 had already
    settled (the application ran JavaScript before codemode did), a warning says that cells see
    the host's zone and locale."""
    global _pinned
    with _pin_lock:
        if _pinned is None:
            seen: list[str] = []
            worker = threading.Thread(
                target=_probe, args=(native_lock, seen), name="codemode-v8-pin", daemon=True
            )
            worker.start()
            worker.join()
            expected = f"{PINNED_TIME_ZONE} {PINNED_LOCALE} 0"
            _pinned = seen == [expected]
            if not _pinned:
                logger.warning(
                    "V8 settled on another time zone or locale before codemode could pin them "
                    "(%s instead of %s): cells see the host's, and a replay on another machine "
                    "may format dates differently (docs/determinism.md)",
                    seen[0] if seen else "unknown",
                    expected,
                )
        return _pinned


def _probe(native_lock: Any, seen: list[str]) -> None:
    from py_mini_racer import MiniRacer
    from py_mini_racer._mini_racer import _make_context

    from codemode.engine.v8guard import drop_answers_after_loop_close

    saved = {name: os.environ.get(name) for name in _PIN_ENV}
    try:
        os.environ.update(_PIN_ENV)
        maker = _make_context()  # on a loop of its own, which closes before the context
        with native_lock:
            context = maker.__enter__()
        try:
            drop_answers_after_loop_close(context)
            seen.append(str(MiniRacer(context).eval(_PIN_PROBE)))
        finally:
            maker.__exit__(None, None, None)
    except Exception:  # pragma: no cover - native failure: the warning says so
        logger.debug("probing V8's time zone failed", exc_info=True)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        # ICU called the C library's tzset while TZ was pinned: let the C library read the
        # host's zone again, so the host's own local time is unchanged.
        if hasattr(time, "tzset"):
            time.tzset()
