"""Source as models write it, on real V8: TypeScript, fences, quoted sources, error places
(docs/cells.md, "Source as models write it")."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from codemode import (
    CellLimits,
    CodeModeTools,
    Completed,
    CreateCellRequest,
    OutputItem,
    Pending,
    SessionRuntime,
    TextItem,
    Yielded,
)
from codemode.engine.base import CellBoot, OutputProduced
from codemode.engine.source import (
    JSON_STRING_MESSAGE,
    clean_error_text,
    position,
    prepare_source,
    unwrap_fence,
)
from codemode.engine.source_ts import strip_types
from codemode.engine.v8 import V8Engine
from model_corpus import CORPUS_TOOLS, CorpusCell, corpus_delegate, load_corpus

CELL_PLACE = re.compile(r"cell\.js:(\d+):(\d+)")
FRAME = re.compile(r"^\s+at (.*)$", re.MULTILINE)


@pytest.fixture
async def session() -> AsyncIterator[SessionRuntime]:
    async with SessionRuntime(corpus_delegate()) as rt:
        yield rt


async def run(rt: SessionRuntime, source: str, *, pausable: bool = False) -> Completed:
    request = CreateCellRequest(source=source, tools=CORPUS_TOOLS)
    if pausable:
        pcell = await rt.create_pausable_cell(request)
        pevent = await asyncio.wait_for(rt.wait_to_pending(pcell), 30)
        while isinstance(pevent, Pending):
            await rt.resume(pcell, pevent.frontier.generation)
            pevent = await asyncio.wait_for(rt.wait_to_pending(pcell), 30)
        assert isinstance(pevent, Completed), pevent
        return pevent
    cell = await rt.create_cell(request)
    items: list[OutputItem] = []
    event = await rt.wait(cell, 30)
    while isinstance(event, Yielded):  # yield_control(): keep observing, keep the output
        items.extend(event.items)
        event = await rt.wait(cell, 30)
    assert isinstance(event, Completed), event
    return Completed((*items, *event.items), event.error_text)


def texts(event: Completed) -> list[str]:
    return [i.text for i in event.items if isinstance(i, TextItem)]


def frames(error_text: str) -> list[str]:
    return FRAME.findall(error_text)


def assert_only_cell_frames(error_text: str) -> None:
    for frame in frames(error_text):
        assert CELL_PLACE.search(frame), error_text
    for leak in ("codemode-prelude", "<anonymous>", "eval at", "(eval"):
        assert leak not in error_text, error_text


# ----------------------------------------------------------------------------- TypeScript


TS_PROGRAM = """\
interface Hit { id: string; title: string; score: number }
type Ranked = Hit & { rank: number };
declare const DEBUG: boolean;
abstract class Ranker<T extends Hit> {
  protected readonly limit: number = 2;
  abstract key(h: T): number;
  rank(hits: T[]): Ranked[] {
    return [...hits].sort((a: T, b: T) => this.key(b) - this.key(a))
      .slice(0, this.limit).map((h, i): Ranked => ({ ...h, rank: i + 1 }));
  }
}
class ByScore extends Ranker<Hit> implements Object {
  override key(h: Hit): number { return h.score; }
}
function pick<K extends keyof Hit>(h: Hit, key: K): Hit[K] { return h[key]; }
const first = <T,>(xs: T[]): T | undefined => xs[0];
const res = (await tools.search({ q: "ts" })) as { hits: Hit[] };
const ranked = new ByScore().rank(res.hits) satisfies Ranked[];
const top: Ranked = first<Ranked>(ranked)!;
const modes = ["a", "b"] as const;
let late!: string;
late = pick(top, "title") as string;
function opt(a?: number, b: string = "d"): string { return `${a ?? "-"}${b}`; }
text([top.rank, late, ranked.length, modes.length, opt(), new Map<string, number>().size]);
"""


async def test_typescript_runs(session: SessionRuntime) -> None:
    event = await run(session, TS_PROGRAM)
    assert event.error_text is None
    assert texts(event) == ['[1,"ts result 1",2,2,"-d",0]']


async def test_typescript_runs_in_a_pausable_cell(session: SessionRuntime) -> None:
    event = await run(session, TS_PROGRAM, pausable=True)
    assert event.error_text is None
    assert texts(event) == ['[1,"ts result 1",2,2,"-d",0]']


def test_stripping_keeps_every_line_and_column() -> None:
    stripped = strip_types(TS_PROGRAM)
    assert stripped != TS_PROGRAM
    assert len(stripped) == len(TS_PROGRAM)
    for before, after in zip(TS_PROGRAM.split("\n"), stripped.split("\n"), strict=True):
        assert len(before) == len(after)
        for a, b in zip(before, after, strict=True):
            assert b in (a, " ", ";"), (before, after)


def test_each_construct_is_blanked_exactly() -> None:
    cases = {
        "const x: number = 1;": "const x         = 1;",
        "let y = (z as any)!.w;": "let y = (z       ) .w;",
        "const m = new Map<string, number>();": "const m = new Map                ();",
        "f(a!, b != c);": "f(a , b != c);",
        "function g(a?: T, b = 2): void {}": "function g(a    , b = 2)       {}",
        "const o = {a: 1} satisfies R as const;": "const o = {a: 1}" + " " * 21 + ";",
        "const id = <T,>(x: T): T => x;": "const id =     (x   )    => x;",
        "let v = <any>w;": "let v =      w;",
        "class A { private x?: number; public m(): void {} }": "class A {         x         ;        m()       {} }",
        "class B implements I { declare d: string; }": "class B"
        + " " * 14
        + "{"
        + " " * 18
        + "; }",
        "function h(this: W, a) {}": "function h(         a) {}",
        "type T = {\n  a: 1\n};": ";" + " " * 9 + "\n      \n  ",
        "const s: '😀' = '😀';": "const s" + " " * 7 + "= '😀';",  # '😀' is 2 UTF-16 units
    }
    for source, expected in cases.items():
        assert strip_types(source) == expected, source


async def test_a_return_type_over_several_lines_keeps_its_arrow(session: SessionRuntime) -> None:
    # JavaScript allows no line break before `=>`: it moves up to where the type began.
    source = "const f = async (x: number): Promise<{\n  v: number;\n}> =>\n  ({ v: x });\ntext((await f(4)).v);"
    stripped = strip_types(source)
    assert stripped.split("\n")[0] == "const f = async (x        )=>" + " " * 9
    assert stripped.split("\n")[3:] == source.split("\n")[3:]
    assert texts(await run(session, source)) == ["4"]


async def test_a_removed_statement_keeps_the_statements_around_it_apart(
    session: SessionRuntime,
) -> None:
    # Without the `;` left where the interface was, JavaScript would read `[1]\n[2].forEach`.
    source = "const a = [1]\ninterface A { a: 1 }\n[2].forEach(v => text(v))"
    event = await run(session, source)
    assert event.error_text is None and texts(event) == ["2"]


def test_plain_javascript_is_the_same_object() -> None:
    for source in ["text(1)", "const a = b < c;", "x = y ? (z) : w => w;", "a?.b ?? c", ""]:
        prepared = prepare_source(source)
        assert prepared.code is source
        assert prepared.as_written is None and prepared.error_text is None


async def test_valid_javascript_typescript_would_read_otherwise_runs_as_written(
    session: SessionRuntime,
) -> None:
    # TypeScript reads `a < b > (c)` as a generic call; V8 compiles it as comparisons, so it runs
    # as written.
    source = "const a = 1, b = 2, c = 0;\ntext(a < b > (c));"
    assert prepare_source(source).as_written == source
    assert texts(await run(session, source)) == ["true"]  # as TypeScript: a is not a function
    ternary = "const k = false;\nconst f = k ? (x) : y => y + 1;\ntext(f(1));"
    assert texts(await run(session, ternary)) == ["2"]


async def v8_compiles(sources: Sequence[str], then_run: str = "text(1)") -> tuple[list[bool], str]:
    """Ask the V8 engine's own compile check (the prelude's ``compiles``, which the engine asks
    before running a source as written) about each of ``sources``, in one fresh cell; then start
    that cell on ``then_run`` and return its first text output."""
    engine = V8Engine(pool_size=0)
    try:
        cell = await engine.open_cell(
            CellBoot("compile-check", then_run, (), {}, CellLimits(), False)
        )
        try:
            bridge = cell._bridge  # type: ignore[attr-defined]
            answers = [await cell._eval(bridge.compiles, s) for s in sources]  # type: ignore[attr-defined]
            report = await cell.run()
        finally:
            cell.close()
    finally:
        await engine.aclose()
    outputs = [e.item for e in report.events if isinstance(e, OutputProduced)]
    assert report.settlement is not None and report.settlement.error_text is None, report
    first = outputs[0]
    assert isinstance(first, TextItem)
    return answers, first.text


async def test_the_compile_check_reports_javascript_validity() -> None:
    answers, ran = await v8_compiles(
        [
            "text(a < b > (c))",
            "const x: number = 1",
            "}); globalThis.ran = 1; (function () {",
            "await 1; return 2",
            "with (a) {}",  # the body is strict
        ],
        then_run="text(typeof globalThis.ran)",
    )
    assert answers == [True, False, False, True, False]
    assert ran == "undefined"  # the check compiled the source alone: none of it ran


@pytest.mark.parametrize(
    ("source", "message", "place"),
    [
        (
            "enum Color { Red }",
            "TypeScript enum is not supported in exec; use a plain object",
            "1:1",
        ),
        (
            "const x = 1;\n  const enum D { A }",
            "TypeScript enum is not supported in exec; use a plain object",
            "2:3",
        ),
        (
            "namespace N { export const a = 1 }",
            "TypeScript namespace with values is not supported in exec; use a plain object",
            "1:1",
        ),
        (
            "function d(c) { return c }\n@d class K {}",
            "TypeScript decorators are not supported in exec; call the function directly",
            "2:1",
        ),
        (
            "class C {\n  constructor(private a: string) {}\n}",
            "TypeScript parameter properties are not supported in exec; assign the field in the "
            "constructor body",
            "2:15",
        ),
        (
            "class C { constructor(readonly a) {} }",
            "TypeScript parameter properties are not supported in exec; assign the field in the "
            "constructor body",
            "1:23",
        ),
    ],
)
async def test_typescript_needing_code_generation_is_refused(
    session: SessionRuntime, source: str, message: str, place: str
) -> None:
    event = await run(session, source)
    assert event.error_text == f"SyntaxError: {message}\n    at cell.js:{place}"
    assert event.items == ()


async def test_type_only_namespace_and_declare_vanish(session: SessionRuntime) -> None:
    source = (
        "namespace Api { export interface Hit { id: string } }\n"
        "declare namespace Env { const x: number }\n"
        "declare function f(): void;\n"
        "declare enum Shade { Dark }\n"
        "declare const enum Tone { Low }\n"
        "const h: Api.Hit = { id: 'n' };\ntext(h.id);"
    )
    assert texts(await run(session, source)) == ["n"]


async def test_type_only_import_is_still_an_unsupported_import(session: SessionRuntime) -> None:
    event = await run(session, 'import type { Hit } from "./hits";\nconst h: Hit = 1;\ntext(h);')
    assert event.error_text is not None
    assert "Unsupported import in exec: ./hits" in event.error_text
    assert event.items == ()


# ----------------------------------------------------------------------------- fences and JSON


@pytest.mark.parametrize(
    "fenced",
    [
        "```js\n{code}\n```",
        "```javascript\n{code}\n```",
        "```ts\n{code}\n```",
        "```typescript\n{code}\n```",
        "```\n{code}\n```",
        "~~~js\n{code}\n~~~",
        "````js\n{code}\n````",
        "\n\n  ```js  \n{code}\n```\n\n",
        "```js\r\n{code}\r\n```\r\n",
    ],
)
async def test_one_fence_is_unwrapped(session: SessionRuntime, fenced: str) -> None:
    code = "const n: number = 2;\ntext(n * 21);"
    event = await run(session, fenced.replace("{code}", code))
    assert event.error_text is None
    assert texts(event) == ["42"]


async def test_fence_lines_count_from_the_first_inner_line(session: SessionRuntime) -> None:
    event = await run(session, "```ts\nconst a: number = 1;\n  null.x;\n```")
    assert event.error_text is not None
    assert frames(event.error_text) == ["cell.js:2:8"]
    event = await run(session, "\n\n```js\nconst a = 1;\nconst b = ;\n```\n")
    assert event.error_text == "SyntaxError: Unexpected token ';'\n    at cell.js:2:11"


def test_what_is_not_one_fence_is_left_alone() -> None:
    for source in [
        "Here is the code:\n```js\ntext(1)\n```",
        "```js\ntext(1)\n```\nThat prints 1.",
        "```js\ntext(1)\n~~~",
        "````js\ntext(1)\n```",
        "text('```')",
    ]:
        assert unwrap_fence(source) is source


@pytest.mark.parametrize(
    "source", ['"text(1)"', '  "const a = 1;\\ntext(a);"\n', '"\\u0074ext(1)"', '```json\n"x"\n```']
)
async def test_a_json_string_is_refused(session: SessionRuntime, source: str) -> None:
    event = await run(session, source)
    assert event.error_text == JSON_STRING_MESSAGE
    assert event.items == ()


async def test_a_javascript_string_statement_is_not_a_json_string(
    session: SessionRuntime,
) -> None:
    event = await run(session, "'single quoted';\ntext('ran')")
    assert event.error_text is None and texts(event) == ["ran"]
    event = await run(session, '"a" + "b"')
    assert event.error_text is None


# ----------------------------------------------------------------------------- error places


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("const x = ;", "SyntaxError: Unexpected token ';'\n    at cell.js:1:11"),
        (
            "text(1);\nconst a: number = 1;\nconst b = a +;",
            "SyntaxError: Unexpected token ';'\n    at cell.js:3:14",
        ),
        (
            "const a = 1;\n  const a = 2;",
            "SyntaxError: Identifier 'a' has already been declared\n    at cell.js:2:9",
        ),
        ("foo(\n", "SyntaxError: Unexpected end of input\n    at cell.js:1:5"),
        ("if (a) {\n}\n}\ntext(1);", "SyntaxError: Unexpected token '}'\n    at cell.js:3:1"),
        ("if (x) {\n  text(1);", "SyntaxError: Unexpected end of input\n    at cell.js:2:11"),
        ('const s = "😀"; const t = ;', "SyntaxError: Unexpected token ';'\n    at cell.js:1:27"),
        ("\tconst q = ;", "SyntaxError: Unexpected token ';'\n    at cell.js:1:12"),
        ("text(1);\n  ^\nconst = 2;", "SyntaxError: Unexpected token '^'\n    at cell.js:2:3"),
        (
            "with (a) {}",
            "SyntaxError: Strict mode code may not include a with statement\n    at cell.js:1:1",
        ),
        (
            "}); text('escaped'); (function () {",
            "SyntaxError: Unexpected token '}'\n    at cell.js:1:1",
        ),
        ("a\rb\u2028const = 1", "SyntaxError: Unexpected token '='\n    at cell.js:3:7"),
    ],
)
async def test_a_syntax_error_names_its_place(
    session: SessionRuntime, source: str, expected: str
) -> None:
    event = await run(session, source)
    assert event.error_text == expected
    assert event.items == ()


@pytest.mark.parametrize(
    ("source", "first_frame", "all_frames"),
    [
        ("const x = 1; null.foo;", "cell.js:1:19", 1),
        ("null.x;", "cell.js:1:6", 1),
        ("text(1)\nfunction f() {\n  throw new Error('deep');\n}\nf();", "f (cell.js:3:9)", 2),
        ("[1].map(x => { throw new TypeError('in map') })", "cell.js:1:22", 2),
        ("JSON.parse('{');", "cell.js:1:6", 1),
        ("eval('null.x')", "cell.js:1:1", 1),
        ("const a: number = 1;\nconst b: string = (null as any).field;", "cell.js:2:33", 1),
        (
            "setTimeout(() => { null.y }, 1);\nawait new Promise(r => setTimeout(r, 5));",
            "cell.js:1:25",
            1,
        ),
        ("await tools.echo({});\nthrow new Error('after');", "cell.js:2:7", 1),
        (
            "async function g() { await null; throw new Error('a'); }\nawait g();",
            "g (cell.js:1:40)",
            2,
        ),
    ],
)
async def test_runtime_frames_name_their_place(
    session: SessionRuntime, source: str, first_frame: str, all_frames: int
) -> None:
    event = await run(session, source)
    assert event.error_text is not None
    found = frames(event.error_text)
    assert found[0] == first_frame, event.error_text
    assert len(found) == all_frames, event.error_text
    assert_only_cell_frames(event.error_text)


async def test_runtime_frames_of_helpers_and_tools_are_dropped(session: SessionRuntime) -> None:
    event = await run(session, "image(5)")
    assert event.error_text is not None
    assert event.error_text.startswith("TypeError: image expects")
    assert frames(event.error_text) == ["cell.js:1:1"]
    event = await run(session, "await tools.read_file({ path: '/missing' })")
    assert event.error_text == "Error: no such file: /missing"


async def test_exec_counts_the_pragma_line(session: SessionRuntime) -> None:
    tools = CodeModeTools(session, CORPUS_TOOLS)
    result = await tools.exec(
        '// @exec: {"yield_time_ms": 5000}\nconst a: number = 1;\nnull.x;', "c1"
    )
    assert result.is_error
    assert "cell.js:3:6" in result.text
    result = await tools.exec('// @exec: {"yield_time_ms": 5000}\nconst a = ;', "c2")
    assert "SyntaxError: Unexpected token ';'\n    at cell.js:2:11" in result.text
    result = await tools.exec("const a = ;", "c3")
    assert "SyntaxError: Unexpected token ';'\n    at cell.js:1:11" in result.text


async def test_exec_runs_a_fenced_typescript_cell(session: SessionRuntime) -> None:
    tools = CodeModeTools(session, CORPUS_TOOLS)
    code = "```ts\nconst r = (await tools.search({ q: 'f' })) as { hits: { id: string }[] };\ntext(r.hits[0]!.id);\n```"
    result = await tools.call("exec", {"code": code}, "c4")
    assert not result.is_error
    assert result.text.endswith("Output:\n\n1")
    result = await tools.call("exec", {"code": '"text(1)"'}, "c5")
    assert result.is_error and JSON_STRING_MESSAGE in result.text


async def test_a_pausable_cell_locates_its_errors(session: SessionRuntime) -> None:
    event = await run(session, "const a: number = 1;\nconst b = ;", pausable=True)
    assert event.error_text == "SyntaxError: Unexpected token ';'\n    at cell.js:2:11"
    event = await run(session, "await tools.echo({});\n  null.x;", pausable=True)
    assert event.error_text is not None and frames(event.error_text) == ["cell.js:2:8"]


def test_clean_error_text() -> None:
    text = (
        "Error: x\n    at f (cell.js:3:9)\n    at eval (cell.js:1:40)\n"
        "    at async eval (cell.js:2:1)\n    at Array.map (<anonymous>)\n"
        "    at Object.run (codemode-prelude.js:513:68)\n    at <anonymous>:1:232"
    )
    assert clean_error_text(text) == (
        "Error: x\n    at f (cell.js:3:9)\n    at cell.js:1:7\n    at async cell.js:2:1"
    )
    assert clean_error_text("plain text") == "plain text"
    assert clean_error_text("Error: only runtime\n    at step (codemode-prelude.js:1:1)") == (
        "Error: only runtime"
    )


def test_position_counts_javascript_lines_and_utf16_columns() -> None:
    assert position("abc", 2) == (1, 3)
    assert position("a\r\nb\rc\u2028d\ne", 9) == (5, 1)
    assert position("😀x", 1) == (1, 3)


# ----------------------------------------------------------------------------- cost


async def test_a_100_kb_typescript_cell_runs(session: SessionRuntime) -> None:
    chunk = "const v{i}: Record<string, number> = {{ a: {i} }} as const;\n"
    source = "".join(chunk.format(i=i) for i in range(1800)) + "text(v1799.a);"
    assert len(source) > 100_000
    event = await run(session, source)
    assert event.error_text is None
    assert texts(event) == ["1799"]


# ----------------------------------------------------------------------------- corpora


CORPUS = load_corpus()


def test_the_model_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 200
    assert len({cell.name for cell in CORPUS}) == len(CORPUS)


def _check(cell: CorpusCell, event: Completed) -> str | None:
    """Why the cell did not behave as expected, or None."""
    error = event.error_text
    if cell.expect == "ok":
        if error is not None:
            return f"failed: {error}"
        if not texts(event):
            return "wrote no output"
        return None
    if error is None:
        return "completed"
    if cell.expect == "refused":
        ok = error.startswith("SyntaxError: TypeScript ") and "not supported in exec" in error
        return None if ok and CELL_PLACE.search(error) else f"not refused: {error}"
    if cell.expect == "json":
        return None if error == JSON_STRING_MESSAGE else f"not refused: {error}"
    if cell.expect == "import":
        return None if "Unsupported import in exec" in error else f"not refused: {error}"
    found = frames(error)
    if not found:
        return f"no place: {error}"
    place = CELL_PLACE.search(found[0])
    at = f"{place.group(1)}:{place.group(2)}" if place else None
    expected = f"{cell.place[0]}:{cell.place[1]}" if cell.place else None
    if cell.expect == "syntax" and (not error.startswith("SyntaxError: ") or len(found) != 1):
        return f"not a located syntax error: {error}"
    if at != expected:
        return f"at {at}, expected {expected}: {error}"
    for frame in found:
        if not CELL_PLACE.search(frame):
            return f"runtime frame leaked: {error}"
    return None


async def test_the_model_corpus(session: SessionRuntime) -> None:
    failures: list[str] = []
    ran = 0
    for cell in CORPUS:
        event = await run(session, cell.source)
        if cell.expect == "ok" and event.error_text is None:
            ran += 1
        problem = _check(cell, event)
        if problem is not None:
            failures.append(f"{cell.name}: {problem}")
    must_run = sum(1 for cell in CORPUS if cell.expect == "ok")
    print(
        f"\nmodel corpus: {len(CORPUS)} cells, {must_run} expected to run, {ran} ran; "
        f"{len(CORPUS) - len(failures)} behaved as expected"
    )
    assert failures == [], "\n".join(failures)


JS_CORPUS_PACKAGES = ("lodash@4.17.21", "underscore@1.13.7", "async@3.2.6")


@pytest.fixture(scope="session")
def js_corpus() -> list[Path]:
    """Real-world JavaScript: every .js file of a few npm packages, installed once into a cache
    directory."""
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is missing: the real-world JavaScript corpus was NOT checked")
    root = Path(os.environ.get("CODEMODE_TEST_CACHE", Path.home() / ".cache" / "codemode-tests"))
    target = root / "js-corpus"
    marker = target / ("installed-" + "-".join(JS_CORPUS_PACKAGES).replace("/", "_"))
    if not marker.exists():
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                npm,
                "install",
                "--no-audit",
                "--no-fund",
                "--ignore-scripts",
                "--prefix",
                str(target),
                *JS_CORPUS_PACKAGES,
            ],
            check=True,
            capture_output=True,
            timeout=600,
        )
        marker.touch()
    files = sorted((target / "node_modules").rglob("*.js"))
    assert len(files) > 1000
    return files


def test_real_world_javascript_passes_through_byte_identical(js_corpus: list[Path]) -> None:
    changed = []
    total = 0
    for path in js_corpus:
        source = path.read_text("utf-8")
        total += len(source)
        prepared = prepare_source(source)
        if prepared.code is not source or prepared.as_written is not None:
            changed.append(str(path))
    print(
        f"\nreal-world JavaScript: {len(js_corpus)} files, {total} characters, "
        f"{len(js_corpus) - len(changed)} unchanged"
    )
    assert changed == []


async def test_tricky_javascript_passes_through_byte_identical() -> None:
    """Plain JavaScript that looks like TypeScript: unchanged by the parser, or kept as written
    because V8 compiles it (the engine's check)."""
    cells = [c for c in CORPUS if c.name.startswith("js-plain-")]
    assert len(cells) >= 25
    as_written: list[str] = []
    for cell in cells:
        prepared = prepare_source(cell.source)
        assert prepared.error_text is None, cell.name
        if prepared.as_written is None:
            assert prepared.code is cell.source, cell.name
        else:
            as_written.append(prepared.as_written)
            assert prepared.as_javascript().code is cell.source
    assert as_written, "no tricky cell exercises the engine's compile check"
    answers, _ = await v8_compiles(as_written)
    assert answers == [True] * len(as_written)
