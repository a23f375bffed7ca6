"""A command's report as the sandbox gave it, and the one host check that makes it a
:class:`~codemode.engine.base.StepReport` (docs/safety.md).

The V8 engine reads what each command of a cell did from the cell itself: the prelude's *drain
report* (JSON text), the cell's read buffer (docs/determinism.md), and, when the cell was
stopped before it could drain, the output records of its journal. All of it is written inside
the sandbox, so all of it is untrusted. :class:`RawReport` carries it unchecked, with what the
engine itself knows about how the command ended (a limit stopped it; the engine ended the cell
with its own error text). :func:`check_report` turns it into a :class:`StepReport` through the
cell's :class:`~codemode.cell.authority.CellAuthority`.

The in-process engine checks each report right where it reads it. A worker process
(``WorkerEngine``) does not check anything: it sends the raw report to its host, which checks it
with this same function against its own record of the cell. A worker whose V8 was subverted
therefore gets no further than a hostile cell in process: the calls, output, timers, stored
values and limits the host accepts are decided by the host.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from typing import Any

from codemode.cell.authority import CellAuthority
from codemode.engine.base import (
    EngineEvent,
    Settlement,
    StepReport,
    limit_error_text,
)
from codemode.engine.source import clean_error_text
from codemode.model import CellLimits

__all__ = [
    "THREAD_READ_BYTES",
    "THREAD_REPORT_CHARS",
    "RawReport",
    "check_report",
    "check_report_async",
    "offloaded",
    "stopped_events",
    "unreported_events",
]

# Drain reports longer than this, or with more read bytes than this (2,000 runs of reads, each
# three float64s), are checked on a worker thread.
THREAD_REPORT_CHARS = 64 * 1024
THREAD_READ_BYTES = 24 * 2000


@dataclass(slots=True)  # not frozen: one is made per command, and never changed
class RawReport:
    """What one command of a V8 cell left behind, not yet checked.

    ``raw`` is the drain's value (the prelude's JSON text; whatever a hostile cell returned
    instead), or None when no drain could be read (the cell was stopped; then ``journal`` holds
    the output records read from its journal memory, kind 1 text and kind 2 ``detail url``).
    ``reads`` is a copy of the cell's read memory the report's ``"reads": N`` refers to (the
    first N float64 triples), taken with the report: the memory goes with the cell.
    ``limit`` names the :class:`CellLimits` field that stopped the command; ``ending`` is the
    error text the engine itself ended the cell with (a syntax error, an unsupported import, a
    memory budget). Either one ends the cell whatever the report says.
    """

    raw: Any = None
    cpu_seconds: float = 0.0
    reads: bytes | None = None
    journal: tuple[tuple[int, str], ...] = ()
    limit: str | None = None
    ending: str | None = None


def stopped_events(authority: CellAuthority, report: RawReport) -> tuple[EngineEvent, ...]:
    """The events of ``report`` checked like any output, its settlement left aside: a stopped
    cell's last output (its final drain's, or its journal's records when V8 could not answer)."""
    if report.raw is None:
        return authority.salvage(report.journal)
    return authority.accept_raw(report.raw, 0.0, report.reads).events


def check_report(authority: CellAuthority, limits: CellLimits, report: RawReport) -> StepReport:
    """The host's view of one command: ``report`` checked by the cell's ``authority`` (which
    never raises), its settlement's stack frames naming their place in the cell as written.

    A command a limit stopped settles with the limit's error text (or the more precise one the
    prelude reported in the same drain) and keeps the output the cell recorded before; one the
    engine ended settles with the engine's text. Neither has pending calls."""
    if report.ending is not None:
        return StepReport(stopped_events(authority, report), (), Settlement(report.ending))
    if report.limit is not None:
        settlement = Settlement(limit_error_text(limits, report.limit))
        if report.raw is None:
            return StepReport(authority.salvage(report.journal), (), settlement)
        checked = authority.accept_raw(report.raw, 0.0, report.reads)
        reported = checked.settlement
        if reported is not None and (reported.error_text or "").startswith("exec cell exceeded"):
            settlement = reported
        return StepReport(checked.events, (), settlement, reads=checked.reads)
    return _located(authority.accept_raw(report.raw, report.cpu_seconds, report.reads))


def offloaded(report: RawReport) -> bool:
    """A drain report large enough (or with enough reads) to be checked on a worker thread."""
    raw = report.raw
    if not isinstance(raw, str):
        return False
    reads = report.reads
    return len(raw) > THREAD_REPORT_CHARS or (reads is not None and len(reads) > THREAD_READ_BYTES)


async def check_report_async(
    authority: CellAuthority,
    limits: CellLimits,
    report: RawReport,
    unreported: list[asyncio.Future[StepReport]],
) -> StepReport:
    """:func:`check_report`, on a worker thread for a large report (decoded event by event
    there, so the event loop keeps getting the GIL).

    A caller cancelled meanwhile (``terminate`` cancels the command in flight) does not lose
    the report: the command's drain already emptied the cell, so this report is the only
    record of its output. The check goes on, and its future joins ``unreported``, the cell's
    list whose events its stop gives first (:func:`unreported_events`)."""
    if not offloaded(report):
        return check_report(authority, limits, report)
    checking = asyncio.ensure_future(asyncio.to_thread(check_report, authority, limits, report))
    try:
        return await asyncio.shield(checking)
    except asyncio.CancelledError:
        unreported.append(checking)
        raise


async def unreported_events(
    unreported: list[asyncio.Future[StepReport]],
) -> tuple[EngineEvent, ...]:
    """The events of the reports ``unreported`` holds (see :func:`check_report_async`), in
    order, their settlements left aside, as :func:`stopped_events` gives a stopped cell's;
    empties the list."""
    events: tuple[EngineEvent, ...] = ()
    while unreported:
        checking = unreported.pop(0)
        try:
            events += (await asyncio.shield(checking)).events
        except asyncio.CancelledError:
            unreported.insert(0, checking)
            raise
        except Exception:  # pragma: no cover - the check never raises (CellAuthority)
            continue
    return events


def _located(report: StepReport) -> StepReport:
    """``report`` with its settlement's stack frames naming their place in the cell as written,
    and only there (docs/cells.md)."""
    settlement = report.settlement
    if settlement is None or settlement.error_text is None:
        return report
    located = clean_error_text(settlement.error_text)
    if located == settlement.error_text:
        return report
    return dataclasses.replace(report, settlement=Settlement(located))
