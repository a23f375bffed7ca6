"""One observer per cell at a time (``docs/sessions.md``, observation rule 2).

A ``wait`` or ``wait_to_pending`` of a cell while another observation of it is in progress raises
``BusyObserver``; the first observer keeps its place and still gets its event.
:func:`refuse_second_observer` is the one place that decides it. Four parts of codemode keep their
own record of "an observation of this cell is in progress", each because its observation is a
different thing, and all of them ask this function:

- :class:`~codemode.cell.machine.CellMachine`: its attached observer (the rule in-process, and
  behind every served session);
- :class:`~codemode.protocol.client.RemoteSession`: a caller waiting on the cell's observation
  request, which may outlive an earlier, cancelled caller (the next observer joins it);
- the protocol server's :class:`~codemode.protocol.observations.ObservationRecords`: the next
  observation number while the latest is still pending (``docs/protocol.md``);
- :class:`~codemode.tools.exec_wait.CodeModeTools`: one ``wait`` tool call, which may observe the
  cell several times (``until: "completed"``, approvals) and carries output between them.
"""

from __future__ import annotations

from codemode.errors import BusyObserver

__all__ = ["refuse_second_observer"]


def refuse_second_observer(cell_id: str, observing: bool) -> None:
    """Raise ``BusyObserver`` for a new observation of ``cell_id`` when ``observing`` (an
    observation of it is in progress); the one in progress is left as it is."""
    if observing:
        raise BusyObserver(cell_id)
