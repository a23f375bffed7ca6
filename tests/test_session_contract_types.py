"""The one ``Session`` contract: its surface is docs/sessions.md plus the approvals, and every kind of
session implements it (mypy checks the signatures; this checks the surface and the wiring)."""

from __future__ import annotations

import inspect

import codemode
from codemode.contract import Session
from codemode.integrations._bridge import _LazySession
from codemode.protocol.client import RemoteSession
from codemode.session import SessionRuntime
from codemode.tools.exec_wait import CodeModeSession, CodeModeTools

SURFACE = {
    "is_alive",
    "create_cell",
    "create_pausable_cell",
    "wait",
    "wait_to_pending",
    "resume",
    "terminate",
    "shutdown",
    "cell",
    "pausable_cell",
    "awaiting_approval",
    "approve",
    "reject",
    "__aenter__",
    "__aexit__",
}


def test_the_protocol_has_exactly_the_session_surface() -> None:
    members = {
        name
        for name, value in vars(Session).items()
        if callable(value) or isinstance(value, property)
    }
    members -= {"__init__", "__subclasshook__", "_is_protocol", "__class_getitem__"}
    members = {m for m in members if not (m.startswith("_") and not m.startswith("__a"))}
    assert members == SURFACE


def test_every_kind_of_session_implements_it() -> None:
    for kind in (SessionRuntime, RemoteSession, _LazySession):
        assert Session in kind.__mro__, kind
        for name in SURFACE:
            assert getattr(kind, name) is not getattr(Session, name), (kind, name)


def test_fronts_take_a_session() -> None:
    assert codemode.Session is Session
    assert CodeModeSession is Session
    hints = inspect.signature(CodeModeTools.__init__).parameters["session"].annotation
    assert hints == "Session"


def test_signatures_match_the_protocol() -> None:
    for kind in (SessionRuntime, RemoteSession, _LazySession):
        for name in SURFACE - {"is_alive"}:
            want = inspect.signature(getattr(Session, name))
            got = inspect.signature(getattr(kind, name))
            assert list(got.parameters) == list(want.parameters), (kind, name)
