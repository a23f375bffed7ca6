"""The cell's JavaScript environment on real V8 (docs/cells.md; scenarios 1-26)."""

from __future__ import annotations

import asyncio
import time

from codemode import (
    Completed,
    ImageDetail,
    ImageItem,
    SessionRuntime,
    TextItem,
    ToolDefinition,
    ToolKind,
)
from conftest import ECHO, RecordingDelegate, request


async def run(rt: SessionRuntime, source: str, *tools: ToolDefinition) -> Completed:
    cell = await rt.create_cell(request(source, *tools))
    event = await rt.wait(cell, 10)
    assert isinstance(event, Completed), event
    return event


def texts(event: Completed) -> list[str]:
    return [i.text for i in event.items if isinstance(i, TextItem)]


async def test_text_conversions_and_return_values(runtime: SessionRuntime) -> None:  # 1
    ev = await run(
        runtime,
        'text("a"); text({b: 1}); text(undefined);'
        'text([text("x"), image("data:image/png;base64,AA"), notify("n")].map(String).join())',
    )
    assert texts(ev)[:3] == ["a", '{"b":1}', "undefined"]
    assert texts(ev)[-1] == "undefined,undefined,undefined"
    assert ev.error_text is None


async def test_text_of_bigint_symbol_function_and_cycle(runtime: SessionRuntime) -> None:
    ev = await run(runtime, "text(10n); text(Symbol('s')); text(null); text(true)")
    assert texts(ev) == ["10", "Symbol(s)", "null", "true"]
    ev = await run(runtime, "const a = {}; a.a = a; text(a)")
    assert ev.error_text is not None and "TypeError" in ev.error_text


async def test_console_methods(runtime: SessionRuntime) -> None:  # 2
    ev = await run(
        runtime,
        'console.log("x", {a: 1}, 2); console.error(); console.info("i"); console.warn("w");'
        'console.debug("d"); text(Object.keys(console).sort().join())',
    )
    assert texts(ev) == ['x {"a":1} 2', "", "i", "w", "d", "debug,error,info,log,warn"]


async def test_top_level_await_over_a_nested_call(runtime: SessionRuntime) -> None:  # 3
    ev = await run(runtime, "text(await tools.echo({v: 1}))")
    assert texts(ev) == ['{"v":1}']


async def test_thrown_error_keeps_output_and_stack(runtime: SessionRuntime) -> None:  # 4
    ev = await run(runtime, 'text("before"); throw new Error("boom")')
    assert texts(ev) == ["before"]
    assert ev.error_text is not None
    assert "Error: boom" in ev.error_text and "\n    at " in ev.error_text


async def test_thrown_non_error_and_syntax_error(runtime: SessionRuntime) -> None:  # 5
    ev = await run(runtime, 'throw "plain"')
    assert ev.error_text == "plain"
    ev = await run(runtime, "throw {toString() { throw 1 }}")
    assert ev.error_text == "uncaught exception"
    ev = await run(runtime, "text(1;")
    assert ev.error_text is not None and "SyntaxError" in ev.error_text
    assert ev.items == ()


async def test_exit(runtime: SessionRuntime) -> None:  # 6
    ev = await run(runtime, 'text("before"); exit(); text("after")')
    assert texts(ev) == ["before"] and ev.error_text is None
    ev = await run(runtime, 'try { exit() } catch { text("x") }')
    assert ev.items == () and ev.error_text is None
    ev = await run(runtime, 'try { exit() } finally { text("y"); throw new Error("z") }')
    assert ev.items == () and ev.error_text is None


async def test_exit_inside_a_timer_callback(runtime: SessionRuntime) -> None:
    ev = await run(
        runtime,
        'text("a"); setTimeout(() => { text("b"); exit(); text("c") }, 5);'
        "await new Promise(() => {})",
    )
    assert texts(ev) == ["a", "b"] and ev.error_text is None


async def test_writes_before_exit_are_committed(runtime: SessionRuntime) -> None:
    ev = await run(runtime, 'store("k", 1); exit(); store("k", 2)')
    assert ev.error_text is None
    ev = await run(runtime, 'text(load("k"))')
    assert texts(ev) == ["1"]


async def test_pending_timer_and_unawaited_call_do_not_keep_cell_alive(
    runtime: SessionRuntime, delegate: RecordingDelegate
) -> None:  # 7
    ev = await run(
        runtime,
        'setTimeout(() => text("late"), 10); tools.block({ id: 1 }); text("done")',
    )
    assert texts(ev) == ["done"]
    assert delegate.names() == ["block"]
    assert delegate.cancelled == ["tool-1"]


async def test_timer_ids_and_errors(runtime: SessionRuntime) -> None:  # 8
    ev = await run(
        runtime,
        "text(setTimeout(() => {}, 1)); text(setTimeout(() => {}));"
        "try { setTimeout(1) } catch (e) { text(e.message) }"
        'try { clearTimeout("x") } catch (e) { text(e.message) }'
        "clearTimeout(null); clearTimeout(undefined); clearTimeout(-1); clearTimeout(99)",
    )
    assert texts(ev) == [
        "1",
        "2",
        "setTimeout expects a function callback",
        "clearTimeout expects a numeric timeout id",
    ]
    ev = await run(
        runtime,
        'setTimeout(() => { throw new Error("cb") }, 1);await new Promise(r => setTimeout(r, 50))',
    )
    assert ev.error_text is not None and "Error: cb" in ev.error_text


async def test_timers_order_and_clear(runtime: SessionRuntime) -> None:
    ev = await run(
        runtime,
        'setTimeout(() => text("b"), 20); setTimeout(() => text("a"), 5);'
        'const t = setTimeout(() => text("never"), 10); clearTimeout(t);'
        'setTimeout(() => text("a2"), 5);'
        "await new Promise(r => setTimeout(r, 40))",
    )
    assert texts(ev) == ["a", "a2", "b"]


async def test_sleep_with_a_timer(runtime: SessionRuntime) -> None:  # 9
    started = time.monotonic()
    ev = await run(runtime, 'await new Promise(r => setTimeout(r, 50)); text("t")')
    assert texts(ev) == ["t"]
    assert time.monotonic() - started >= 0.05


async def test_imports(runtime: SessionRuntime) -> None:  # 10
    ev = await run(runtime, 'text("x"); import fs from "fs"')
    assert ev.items == ()
    assert ev.error_text is not None and "Unsupported import in exec: fs" in ev.error_text
    ev = await run(runtime, 'export { a } from "mod"; import "other"')
    assert ev.error_text is not None and "Unsupported import in exec: mod" in ev.error_text
    ev = await run(
        runtime, 'try { await import("x") } catch (e) { text(e.message); text(e instanceof Error) }'
    )
    assert texts(ev) == ["unsupported import in exec", "true"]
    ev = await run(runtime, 'await import("x")')
    assert ev.error_text is not None and "unsupported import in exec" in ev.error_text
    ev = await run(runtime, "export const x = 1")
    assert ev.error_text is not None and "SyntaxError" in ev.error_text


async def test_removed_globals(runtime: SessionRuntime) -> None:  # 11
    ev = await run(
        runtime,
        'for (const n of ["Atomics", "SharedArrayBuffer", "WebAssembly"])'
        "  text([typeof globalThis[n], Object.prototype.hasOwnProperty.call(globalThis, n)].join());"
        "text(typeof console.log); text(typeof require); text(typeof fetch); text(typeof process);"
        "text(typeof gc)",
    )
    assert texts(ev) == ["undefined,false"] * 3 + ["function"] + ["undefined"] * 4


async def test_intl_has_full_icu(runtime: SessionRuntime) -> None:  # 12
    ev = await run(
        runtime,
        "const d = new Date(Date.UTC(2025, 0, 2, 3, 4, 5));"
        "const o = {timeZone: 'UTC', weekday: 'long', day: 'numeric', month: 'long',"
        " hour: '2-digit', minute: '2-digit', second: '2-digit'};"
        "text(d.toLocaleString('fr-FR', o)); text(new Intl.DateTimeFormat('fr-FR', o).format(d))",
    )
    assert texts(ev) == ["jeudi 2 janvier à 03:04:05"] * 2


PNG = "data:image/png;base64,iVBORw0KGgo="


async def test_image_details(runtime: SessionRuntime) -> None:  # 13
    ev = await run(
        runtime,
        f'image("{PNG}"); image({{image_url: "{PNG}", detail: "low"}});'
        f'image({{image_url: "{PNG}", detail: "low"}}, "Original");'
        f'image({{type: "image", data: "AA", mimeType: "image/png", _meta: {{"codex/imageDetail": "low"}}}}, "auto")',
    )
    assert ev.items == (
        ImageItem(PNG, ImageDetail.HIGH),
        ImageItem(PNG, ImageDetail.LOW),
        ImageItem(PNG, ImageDetail.ORIGINAL),
        ImageItem("data:image/png;base64,AA", ImageDetail.AUTO),
    )


async def test_image_mcp_block(runtime: SessionRuntime) -> None:  # 14
    ev = await run(
        runtime,
        'image({type: "image", data: "QUJD", mimeType: "image/gif",'
        ' _meta: {"codex/imageDetail": "original"}});'
        'image({type: "image", data: "QUJD"}); image({type: "image", data: "DATA:x/y;base64,QQ"})',
    )
    assert ev.items == (
        ImageItem("data:image/gif;base64,QUJD", ImageDetail.ORIGINAL),
        ImageItem("data:application/octet-stream;base64,QUJD", ImageDetail.HIGH),
        ImageItem("DATA:x/y;base64,QQ", ImageDetail.HIGH),
    )


async def test_image_rejections(runtime: SessionRuntime) -> None:  # 15
    cases = {
        '"http://example.com/a.png"': "Tool call failed: remote image URLs are not supported in "
        "tool outputs. Pass a base64 data URI instead",
        '"HTTPS://example.com/a.png"': "Tool call failed: remote image URLs are not supported in "
        "tool outputs. Pass a base64 data URI instead",
        '"not-a-url"': "Tool call failed: invalid image output. Pass a base64 data URI instead",
        f'"{PNG}", "medium"': "image detail must be one of: auto, low, high, original",
        f'"{PNG}", 5': "image detail must be a string when provided",
        '{content: [{type: "image", data: "AA"}]}': "image expects a non-empty image URL string, "
        "an object with image_url and optional detail, or a raw MCP image block",
        '""': "image expects a non-empty image URL string, an object with image_url and optional "
        "detail, or a raw MCP image block",
        '{type: "text", text: "x"}': 'image only accepts MCP image blocks, got "text"',
        '{type: "image", data: ""}': "image expected MCP image data",
    }
    for args, message in cases.items():
        ev = await run(
            runtime, f"try {{ image({args}) }} catch (e) {{ text(e.name + ': ' + e.message) }}"
        )
        assert texts(ev) == [f"TypeError: {message}"], args


async def test_notify(runtime: SessionRuntime, delegate: RecordingDelegate) -> None:  # 16
    cell = await runtime.create_cell(
        request(
            'try { notify("  ") } catch (e) { text(e.message) } notify("half"); text("end")',
            tool_call_id="call-7",
        )
    )
    ev = await runtime.wait(cell, 10)
    assert isinstance(ev, Completed)
    assert texts(ev) == ["notify expects non-empty text", "end"]
    assert delegate.notifications == [("call-7", cell.cell_id, "half")]


async def test_tool_identifiers(runtime: SessionRuntime) -> None:  # 17
    tools = (
        ToolDefinition("hidden-dynamic-tool", "d1"),
        ToolDefinition("a-b"),
        ToolDefinition("a_b"),
        ToolDefinition("x!"),
        ToolDefinition("9lives"),
    )
    ev = await run(
        runtime,
        "text(Object.keys(tools).join()); text(ALL_TOOLS.map(t => t.name).join());"
        "text(ALL_TOOLS[0].description); text(Object.isFrozen(tools) && Object.isFrozen(ALL_TOOLS));"
        "text(typeof tools.unknown)",
        *tools,
    )
    assert texts(ev) == [
        "hidden_dynamic_tool,a_b,a_b_2,x_,_lives",
        "hidden_dynamic_tool,a_b,a_b_2,x_,_lives",
        "d1",
        "true",
        "undefined",
    ]


async def test_function_tool_arguments(
    runtime: SessionRuntime, delegate: RecordingDelegate
) -> None:  # 18
    ev = await run(
        runtime,
        "await tools.echo(); await tools.echo(undefined);"
        "for (const v of [5, 'x', null, [1], true]) {"
        "  try { await tools.echo(v) } catch (e) { text(e.message) } }",
    )
    assert [c.input for c in delegate.calls] == [{}, {}]
    assert texts(ev) == ["tool `echo` expects a JSON object for arguments"] * 5


async def test_freeform_tool(runtime: SessionRuntime, delegate: RecordingDelegate) -> None:  # 19
    up = ToolDefinition("up-per", kind=ToolKind.FREEFORM)
    ev = await run(
        runtime,
        'text(await tools.up_per("abc"));'
        "for (const v of [{}, undefined, 5]) {"
        "  try { await tools.up_per(v) } catch (e) { text(e.message) } }",
        up,
    )
    assert [c.input for c in delegate.calls] == ["abc"]
    assert texts(ev) == ["abc"] + ["tool `up-per` expects a string input"] * 3


async def test_call_ids_and_delegate_errors(
    runtime: SessionRuntime, delegate: RecordingDelegate
) -> None:  # 20
    ev = await run(
        runtime,
        "await tools.echo({}); await tools.echo({});"
        'try { await tools.fail({message: "nope"}) } catch (e) { text(e instanceof Error); text(e.message) }',
    )
    assert [c.call_id for c in delegate.calls] == ["tool-1", "tool-2", "tool-3"]
    assert texts(ev) == ["true", "nope"]


async def test_delegate_error_without_message_and_non_json_result(make_runtime) -> None:  # type: ignore[no-untyped-def]
    class Odd:
        async def invoke_tool(self, call):  # type: ignore[no-untyped-def]
            if call.tool.name == "empty":
                raise KeyError()
            if call.tool.name == "tuple":
                return (1, None, "x")
            return {1, 2}

        async def notify(self, call_id, cell_id, text):  # type: ignore[no-untyped-def]
            return None

    rt = make_runtime(d=Odd())
    ev = await run(
        rt,
        "try { await tools.empty() } catch (e) { text(e.message) }"
        "text(await tools.tuple());"
        "try { await tools.set() } catch (e) { text(e.message) }",
        ToolDefinition("empty"),
        ToolDefinition("tuple"),
        ToolDefinition("set"),
    )
    assert texts(ev) == ["KeyError", '[1,null,"x"]', "tool `set` returned a value that is not JSON"]


async def test_store_and_load_across_cells_and_sessions(make_runtime) -> None:  # type: ignore[no-untyped-def]  # 21
    a = make_runtime()
    b = make_runtime()
    await run(a, 'store("k", {v: [1, 2]})')
    assert texts(await run(a, 'text(load("k"))')) == ['{"v":[1,2]}']
    assert texts(await run(b, 'text(String(load("k")))')) == ["undefined"]


async def test_own_writes_and_snapshot_isolation(
    runtime: SessionRuntime, delegate: RecordingDelegate
) -> None:  # 22
    reader = await runtime.create_cell(request('await tools.block({}); text(String(load("k")))'))
    await delegate.wait_calls(1)
    ev = await run(runtime, 'store("k", 1); text(load("k"))')
    assert texts(ev) == ["1"]
    delegate.release()
    ev2 = await runtime.wait(reader, 10)
    assert isinstance(ev2, Completed) and texts(ev2) == ["undefined"]


async def test_failed_cell_commits_its_writes(runtime: SessionRuntime) -> None:  # 23
    ev = await run(runtime, 'store("k", 1); throw new Error("boom")')
    assert ev.error_text is not None and "boom" in ev.error_text
    assert texts(await run(runtime, 'text(load("k"))')) == ["1"]


async def test_terminated_cell_discards_its_writes(
    runtime: SessionRuntime, delegate: RecordingDelegate
) -> None:  # 24
    cell = await runtime.create_cell(request('store("candidate", 1); await tools.block({})'))
    await delegate.wait_calls(1)
    assert (await runtime.terminate(cell)).__class__.__name__ == "Terminated"
    assert delegate.cancelled == ["tool-1"]
    assert texts(await run(runtime, 'text(String(load("candidate")))')) == ["undefined"]


async def test_store_errors_and_copies(runtime: SessionRuntime) -> None:  # 25
    ev = await run(
        runtime,
        'try { store("k", undefined) } catch (e) { text(e.message) }'
        'try { const a = {}; a.a = a; store("c", a) } catch (e) { text(e.name) }'
        'try { store("b", 1n) } catch (e) { text(e.name) }'
        'store("o", {a: [1, NaN, undefined], d: new Date(0), u: undefined});'
        'const x = load("o"); x.a.push(9); text(load("o")); text(String(load("none")))',
    )
    assert texts(ev) == [
        'Unable to store "k". Only plain serializable objects can be stored.',
        "TypeError",
        "TypeError",
        '{"a":[1,null,null],"d":"1970-01-01T00:00:00.000Z"}',
        "undefined",
    ]


async def test_last_commit_wins(runtime: SessionRuntime, delegate: RecordingDelegate) -> None:  # 26
    first = await runtime.create_cell(request('store("k", "first"); await tools.block({})'))
    await delegate.wait_calls(1)
    await run(runtime, 'store("k", "second")')
    delegate.release()
    await runtime.wait(first, 10)
    assert texts(await run(runtime, 'text(load("k"))')) == ["first"]


async def test_tools_run_concurrently(runtime: SessionRuntime, delegate: RecordingDelegate) -> None:
    cell = await runtime.create_cell(
        request("const r = await Promise.all([tools.block({a: 1}), tools.echo({b: 2})]); text(r)")
    )
    await delegate.wait_calls(2)
    await asyncio.sleep(0.01)
    delegate.release("tool-1")
    ev = await runtime.wait(cell, 10)
    assert isinstance(ev, Completed) and texts(ev) == ['[{"a":1},{"b":2}]']


async def test_echo_tool_input_is_a_fresh_dict(
    runtime: SessionRuntime, delegate: RecordingDelegate
) -> None:
    await run(runtime, "await tools.echo({nested: {a: [1, 'x']}})", ECHO)
    assert delegate.calls[0].input == {"nested": {"a": [1, "x"]}}


async def test_unknown_tool_fails_the_cell_clearly(
    runtime: SessionRuntime, delegate: RecordingDelegate
) -> None:
    ev = await run(runtime, 'text("a"); await tools.nope({})')
    assert texts(ev) == ["a"]
    assert ev.error_text is not None and "TypeError: tools.nope is not a function" in ev.error_text
    assert delegate.calls == []


async def test_a_warmed_pool_isolate_carries_nothing_into_the_cell(runtime: SessionRuntime) -> None:
    # Pooled isolates run a throwaway cell to compile the prelude; none of its state may leak.
    for _ in range(6):  # enough to take isolates that were pre-created and warmed
        ev = await run(
            runtime,
            'text([String(load("k")), setTimeout(() => {}, 1), ALL_TOOLS.length,'
            " typeof tools.t].join())",
        )
        assert texts(ev) == ["undefined,1,4,undefined"]
        await asyncio.sleep(0.02)
