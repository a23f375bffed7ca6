"""``examples/agent_loop.py``'s approval round trip: the model's cell holds ``send_sms`` calls,
the host approves one and rejects the other, and the model sees each step."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from codemode import TextItem

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "agent_loop.py"


@pytest.fixture(scope="module")
def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("agent_loop_approval_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def test_approval_round_trip(example: ModuleType) -> None:
    run, service, decisions = await example.approval_main(verbose=False)
    (_, first), (_, second), (_, third) = run.results
    texts = [
        [i.text for i in r.items if isinstance(i, TextItem)][1:] for r in (first, second, third)
    ]
    # exec: the first message is held; the model is told which call waits and with what.
    assert texts[0] == [
        'Awaiting approval: tool-2 send_sms {"to":"+51 1 555 0100","text":"Lima: 22 °C"}'
    ]
    # wait: approved, sent; the second message is held.
    assert texts[1] == [
        "sent sms-2",
        'Awaiting approval: tool-3 send_sms {"to":"+1 900 555 0199","text":"Lima is warm"}',
    ]
    # wait: rejected with the user's reason, which the program caught.
    assert third.text.startswith("Script completed")
    assert texts[2] == ["second message not sent: +1 900 555 0199 is not in the user's contacts"]
    assert [(r.call_id, d) for r, d in decisions] == [
        ("tool-2", True),
        ("tool-3", "+1 900 555 0199 is not in the user's contacts"),
    ]
    # Only the approved message reached the host's tool.
    assert [c for c in service.calls if c[0] == "send_sms"] == [("send_sms", "+51 1 555 0100")]
    assert run.answer.startswith("I texted")
