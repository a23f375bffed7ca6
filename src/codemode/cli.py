"""The ``codemode`` command line (docs/protocol.md).

``codemode run FILE`` runs one cell in a fresh session against the demo tools and prints its
events as they arrive; ``codemode run --example`` runs the bundled demo cell. Exit status: 0 the
cell succeeded, 1 it failed (its error on stderr), 2 usage error, 3 terminated (Ctrl-C).

What the commands share (exit statuses, ``--version``, logging, ``HOST:PORT``) lives in
:mod:`codemode.cli_common`. ``codemode mcp`` takes its config from ``--config PATH`` or, when that
is absent, from ``$CODEMODE_MCP_CONFIG`` (the MCP Inspector's CLI claims ``--config`` for itself).
When the reader of stdout goes away (``codemode run ... | head``), the command ends quietly with
status 1: the cell is terminated with its session, and no traceback is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import importlib.resources
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from codemode.cli_common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_TERMINATED,
    EXIT_USAGE,
    StoreOptions,
    configure_logging,
    positive_seconds,
    session_id_problem,
    silence_stdout,
    version_text,
)
from codemode.engine.base import Engine
from codemode.engine.choice import (
    ENGINE_CHOICES,
    engine_factory,
    engine_options,
    using_default_engine,
)
from codemode.errors import MissingCell, SessionBusy, StoreError
from codemode.model import (
    CellLimits,
    Completed,
    CreateCellRequest,
    ImageItem,
    OutputItem,
    Pending,
    SessionDelegate,
    Terminated,
    TextItem,
    ToolDefinition,
    ToolKind,
    Yielded,
)
from codemode.protocol.codec import event_to_wire
from codemode.session import SessionRuntime, tools_delegate
from codemode.store.base import SessionStore

__all__ = ["DEMO_TOOLS", "MCP_CONFIG_ENV", "demo_delegate", "main"]

MCP_CONFIG_ENV = "CODEMODE_MCP_CONFIG"
"""The environment variable ``codemode mcp`` reads its config path from when ``--config`` is
absent."""

DEMO_TOOLS: tuple[ToolDefinition, ...] = (
    ToolDefinition(
        "echo",
        "Returns its input unchanged.",
        input_schema={"type": "object", "additionalProperties": True},
    ),
    ToolDefinition(
        "sleep",
        "Waits `ms` milliseconds, then returns {slept: ms}.",
        input_schema={
            "type": "object",
            "properties": {"ms": {"type": "number", "description": "milliseconds to wait"}},
            "required": ["ms"],
        },
        output_schema={"type": "object", "properties": {"slept": {"type": "number"}}},
    ),
    ToolDefinition(
        "fail",
        "Fails with `message`.",
        input_schema={
            "type": "object",
            "properties": {"message": {"type": "string"}},
            "required": ["message"],
        },
    ),
    ToolDefinition("upper", "Upper-cases its string input.", kind=ToolKind.FREEFORM),
)


async def _echo(value: Any) -> Any:
    return value


async def _sleep(value: Any) -> Any:
    ms = value.get("ms", 0) if isinstance(value, dict) else 0
    if not isinstance(ms, int | float) or isinstance(ms, bool) or ms < 0:
        raise ValueError("sleep expects {ms: a non-negative number}")
    await asyncio.sleep(ms / 1000)
    return {"slept": ms}


async def _fail(value: Any) -> Any:
    message = value.get("message", "failed") if isinstance(value, dict) else "failed"
    raise RuntimeError(str(message))


async def _upper(value: Any) -> Any:
    return str(value).upper()


def demo_delegate(err: TextIO | None = None) -> Any:
    """The delegate of the demo tools; notifications go to ``err`` as ``notify: {text}``."""
    stream = err if err is not None else sys.stderr

    async def notify(call_id: str, cell_id: str, text: str) -> None:
        print(f"notify: {text}", file=stream, flush=True)

    return tools_delegate(
        {"echo": _echo, "sleep": _sleep, "fail": _fail, "upper": _upper}, notify=notify
    )


def example_source(python: bool = False) -> str:
    """The bundled demo cell (in Python with ``python``)."""
    name = "demo_python.cell" if python else "demo.js"
    return importlib.resources.files("codemode.examples").joinpath(name).read_text("utf-8")


def _add_limit_flags(parser: argparse.ArgumentParser) -> None:
    defaults = CellLimits()
    group = parser.add_argument_group("limits (docs/safety.md)")
    group.add_argument("--max-heap-bytes", type=int, default=defaults.max_heap_bytes)
    group.add_argument("--max-tool-calls", type=int, default=defaults.max_tool_calls)
    group.add_argument(
        "--max-parallel-tool-calls", type=int, default=defaults.max_parallel_tool_calls
    )
    group.add_argument("--max-output-bytes", type=int, default=defaults.max_output_bytes)
    group.add_argument("--max-cpu-seconds", type=float, default=defaults.max_cpu_seconds)
    group.add_argument("--max-live-cells", type=int, default=defaults.max_live_cells)


def _add_engine_flags(
    parser: argparse.ArgumentParser, default: str, choices: Sequence[str] = ENGINE_CHOICES
) -> None:
    group = parser.add_argument_group("engine (docs/engines.md)")
    python = ", python: Python cells on Monty" if "python" in choices else ""
    group.add_argument(
        "--engine",
        choices=choices,
        default=None,
        help="worker: JavaScript cells on V8 in a worker process per session, under OS limits; "
        f"v8: the same in this process (trusted code only){python}. Default: the environment "
        f"variable CODEMODE_ENGINE if set, else {default}",
    )
    parser.set_defaults(default_engine=default)
    group.add_argument(
        "--rss-budget-bytes",
        type=int,
        default=None,
        metavar="BYTES",
        help="worker: resident memory of one worker past which the cell that grew it is "
        "stopped (default 1 GiB); v8: the same for this whole process (default: no budget)",
    )
    group.add_argument(
        "--worker-memory-limit-bytes",
        type=int,
        default=None,
        metavar="BYTES",
        help="RLIMIT_DATA of each worker process (default 4 GiB)",
    )


def engine_name_from_args(args: argparse.Namespace) -> str:
    """The engine named by ``--engine``, else ``$CODEMODE_ENGINE``, else the command's default;
    ``ValueError`` if the engine flags are invalid."""
    for option in ("rss_budget_bytes", "worker_memory_limit_bytes"):
        value = getattr(args, option)
        if value is not None and value <= 0:
            raise ValueError(f"--{option.replace('_', '-')} must be positive")
    name: str = args.engine or os.environ.get("CODEMODE_ENGINE") or args.default_engine
    if name not in ENGINE_CHOICES:
        raise ValueError(f"unknown engine {name!r}; choose one of {', '.join(ENGINE_CHOICES)}")
    return name


def engine_from_args(args: argparse.Namespace) -> Callable[[], Engine]:
    """The engine factory named by the engine flags; ``ValueError`` if they are invalid."""
    return engine_factory(
        engine_name_from_args(args),
        rss_budget_bytes=args.rss_budget_bytes,
        memory_limit_bytes=args.worker_memory_limit_bytes,
    )


def limits_from_args(args: argparse.Namespace) -> CellLimits:
    """The :class:`CellLimits` named by the limit flags; ``ValueError`` if they are invalid."""
    live = args.max_live_cells
    return CellLimits(
        max_heap_bytes=args.max_heap_bytes,
        max_tool_calls=args.max_tool_calls,
        max_parallel_tool_calls=args.max_parallel_tool_calls,
        max_output_bytes=args.max_output_bytes,
        max_cpu_seconds=args.max_cpu_seconds,
        max_live_cells=live,
        max_idempotency_keys=max(CellLimits().max_idempotency_keys, live),
    )


def _add_store_flags(parser: argparse.ArgumentParser, *, run: bool) -> None:
    group = parser.add_argument_group("durable sessions (docs/durability.md)")
    what = (
        "run the cell in a durable session kept in the SQLite file PATH (or the PostgreSQL "
        "database of a DSN, postgresql://...): a run that was killed is recovered by running "
        "the same command again"
        if run
        else "keep the sessions in the SQLite file PATH, or in the PostgreSQL database of a DSN "
        "(postgresql://... or libpq key=value pairs), which servers on several machines may "
        "share: a session whose connection ends is suspended, not shut down, and session/open "
        "with its sessionId reattaches to it, also after a restart of the server or on another "
        "server sharing the store (with --cluster: the store the cluster's hosts share)"
    )
    group.add_argument("--store", metavar="PATH_OR_DSN", help=what)
    if run:
        group.add_argument(
            "--session",
            metavar="ID",
            help="with --store: the session to run the cell in, created if the store does not "
            "hold it; an existing session's cell from an earlier "
            "run of the same FILE is recovered and observed instead of started again. Default: "
            "a new session, whose id is printed on stderr",
        )
    group.add_argument(
        "--lease-seconds",
        type=positive_seconds,
        default=10.0,
        metavar="SECONDS",
        help="with --store: how long a session stays owned by a process that stopped renewing "
        "its lease (it crashed) before another may take it over (default: 10)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="codemode", description="Run LLM-written JavaScript cells that call tools."
    )
    parser.add_argument("--version", action="version", version=version_text())
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="run one cell against the demo tools",
        description="Run one cell in a fresh session against the demo tools "
        "(echo, sleep, fail, upper) and print its events as they arrive. With --store PATH "
        "--session ID the session is durable: running the same command again after a crash "
        "recovers the cell and prints only what was not printed yet (docs/durability.md).",
    )
    src = run.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "file",
        nargs="?",
        help="the cell's source (JavaScript; Python with --python or a .py name); - reads stdin",
    )
    src.add_argument("--example", action="store_true", help="run the bundled demo cell")
    run.add_argument(
        "--yield-after",
        type=positive_seconds,
        default=None,
        metavar="SECONDS",
        help="observe in steps of SECONDS, printing '--- yielded ---' between events",
    )
    run.add_argument("--json", action="store_true", help="print events as wire-format JSON lines")
    run.add_argument(
        "--pausable",
        action="store_true",
        help="run a pausable cell, resuming it at each frontier (frontiers go to stderr)",
    )
    run.add_argument(
        "--python",
        action="store_true",
        help="the cell is Python, run on the Monty sandbox (implied by a FILE ending in .py)",
    )
    run.add_argument(
        "--mcp-config",
        metavar="PATH",
        help="use the tools of the MCP servers listed in PATH instead of the demo tools",
    )
    _add_limit_flags(run)
    _add_engine_flags(run, "v8", ("v8", "worker"))
    _add_store_flags(run, run=True)

    serve = sub.add_parser(
        "serve",
        help="speak the codemode protocol (JSON-RPC) on stdio or WebSocket",
        description="Serve code-mode sessions over the wire protocol: newline-delimited JSON-RPC "
        "on stdin/stdout (the default), or WebSocket with --listen. The limit flags set the "
        "sessions' defaults and ceilings.",
    )
    serve.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="serve WebSocket on ws://HOST:PORT/ (:PORT binds 127.0.0.1)",
    )
    serve.add_argument(
        "--token-env",
        metavar="NAME",
        help="require 'Authorization: Bearer <value of the environment variable NAME>'",
    )
    _add_limit_flags(serve)
    _add_engine_flags(serve, "worker")
    _add_store_flags(serve, run=False)
    from codemode.protocol.policy import add_serve_flags

    add_serve_flags(serve)
    from codemode.protocol.cluster_source import add_cluster_flags

    add_cluster_flags(serve)

    mcp = sub.add_parser(
        "mcp",
        help="an MCP server offering exec and wait over the tools of upstream MCP servers",
        description="Run an MCP server whose only tools are exec and wait; the nested tools "
        "are those of the upstream MCP servers listed in the config file.",
    )
    mcp.add_argument(
        "--config",
        metavar="PATH",
        help='{"mcpServers": {...}} JSON; default: the path in $' + MCP_CONFIG_ENV,
    )
    mcp.add_argument(
        "--http", metavar="HOST:PORT", help="serve streamable HTTP at /mcp instead of stdio"
    )
    _add_limit_flags(mcp)
    _add_engine_flags(mcp, "worker")
    return parser


def _image_bytes(item: ImageItem) -> int:
    url = item.image_url
    header, _, payload = url.partition(",")
    if header.endswith(";base64"):
        with contextlib.suppress(ValueError):
            return len(base64.b64decode(payload, validate=False))
    return len(payload)


class _Printer:
    def __init__(self, out: TextIO, err: TextIO, as_json: bool) -> None:
        self.out, self.err, self.as_json = out, err, as_json

    def items(self, items: Sequence[OutputItem]) -> None:
        for item in items:
            if isinstance(item, TextItem):
                print(item.text, file=self.out)
            else:
                print(f"[image {item.detail}, {_image_bytes(item)} bytes]", file=self.out)
        self.out.flush()

    def event(self, event: Yielded | Completed | Terminated | Pending) -> None:
        if self.as_json:
            print(json.dumps(event_to_wire(event), ensure_ascii=False), file=self.out, flush=True)
            return
        if isinstance(event, Pending):
            f = event.frontier
            self.items(f.items)
            ids = ", ".join(f.pending_tool_call_ids) or "none"
            print(f"--- frontier {f.generation}: pending {ids} ---", file=self.err, flush=True)
            return
        self.items(event.items)
        if isinstance(event, Yielded):
            print("--- yielded ---", file=self.out, flush=True)


async def run_cell(
    source: str,
    *,
    limits: CellLimits,
    yield_after: float | None,
    pausable: bool,
    as_json: bool,
    out: TextIO,
    err: TextIO,
    tools: Sequence[ToolDefinition] = DEMO_TOOLS,
    delegate: SessionDelegate | None = None,
    python: bool = False,
    store: StoreOptions | None = None,
    session_id: str | None = None,
) -> int:
    """Run ``source`` in a fresh session; return the exit status.

    The cell gets ``tools``, run by ``delegate``: by default the demo tools and their delegate
    (notifications to ``err``). With ``python`` the cell is Python, run by a ``PythonEngine``.

    With ``store`` the session is durable (``--store PATH``), of id ``session_id`` (a new id,
    printed on ``err``, when ``None``), and the cell is created with an idempotency key made
    of its kind and source: when the session already holds that cell (an earlier run of the
    same source was killed), it is recovered and observed, printing only what the earlier run
    had not printed; when that cell has already ended, a note says so and the status is 0.
    """
    printer = _Printer(out, err, as_json)
    session_delegate = delegate if delegate is not None else demo_delegate(err)
    engine = None
    if python:
        from codemode.engine.python import PythonEngine

        engine = PythonEngine()
    if store is None:
        runtime = SessionRuntime(session_delegate, limits=limits, engine=engine)
        key = None
    else:
        session_store = store.open()
        key = run_idempotency_key(source, pausable)
        try:
            runtime = await _open_durable(
                session_delegate, limits, engine, session_store, session_id
            )
        except (SessionBusy, StoreError) as exc:
            await session_store.close()
            print(f"codemode run: {exc}", file=err, flush=True)
            return EXIT_FAILED
        if session_id is None:
            print(f"codemode run: session {runtime.session_id}", file=err, flush=True)
    try:
        return await _run_in(runtime, source, tools, key, pausable, yield_after, printer, err)
    except (SessionBusy, StoreError) as exc:  # the lease was lost, or the store failed
        print(f"codemode run: {exc}", file=err, flush=True)
        return EXIT_FAILED
    finally:
        if store is not None:
            await session_store.close()


async def _open_durable(
    delegate: SessionDelegate,
    limits: CellLimits,
    engine: Engine | None,
    store: SessionStore,
    session_id: str | None,
) -> SessionRuntime:
    """Open the durable session, waiting (up to the store's lease and a second) for a process
    that died holding it to lose its lease; ``SessionBusy`` if it stays held."""
    deadline = time.monotonic() + store.lease_seconds + 1.0
    while True:
        runtime = SessionRuntime(
            delegate, limits=limits, engine=engine, store=store, session_id=session_id
        )
        try:
            return await runtime.open()
        except SessionBusy:
            if session_id is None or time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.1)


def run_idempotency_key(source: str, pausable: bool) -> str:
    """The idempotency key of ``codemode run --store``'s cell: its kind and a digest of its
    source, so that running the same file again in a session finds the same cell."""
    digest = hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"codemode-run:{'pausable' if pausable else 'continuing'}:{digest}"


async def _run_in(
    runtime: SessionRuntime,
    source: str,
    tools: Sequence[ToolDefinition],
    key: str | None,
    pausable: bool,
    yield_after: float | None,
    printer: _Printer,
    err: TextIO,
) -> int:
    async with runtime:
        request = CreateCellRequest(source, tuple(tools), tool_call_id="cli", idempotency_key=key)
        final: Completed | Terminated
        try:
            if pausable:
                pcell = await runtime.create_pausable_cell(request)
                cell_id = pcell.cell_id
                while True:
                    pevent = await runtime.wait_to_pending(pcell)
                    printer.event(pevent)
                    if not isinstance(pevent, Pending):
                        final = pevent
                        break
                    await _refuse_held_calls(runtime, cell_id, err)
                    await runtime.resume(pcell, pevent.frontier.generation)
            else:
                cell = await runtime.create_cell(request)
                cell_id = cell.cell_id
                budget = yield_after if yield_after is not None else 365 * 24 * 3600.0
                while True:
                    event = await runtime.wait(cell, budget)
                    printer.event(event)
                    if not isinstance(event, Yielded):
                        final = event
                        break
                    await _refuse_held_calls(runtime, cell_id, err)
        except MissingCell as exc:
            if key is None:
                raise
            # A durable session's cell of this source had already ended (an earlier run).
            print(
                f"codemode run: cell {exc.cell_id} already ran to its end in session "
                f"{runtime.session_id} (an earlier run printed its output)",
                file=err,
                flush=True,
            )
            return EXIT_OK
        except asyncio.CancelledError:
            # Ctrl-C: terminate the cell and report what it had produced.
            with contextlib.suppress(Exception):
                if "cell_id" in locals():
                    printer.event(await runtime.terminate(cell_id))
            print("terminated", file=err, flush=True)
            return EXIT_TERMINATED
    if isinstance(final, Terminated):
        return EXIT_TERMINATED
    if final.error_text is not None:
        print(final.error_text, file=err, flush=True)
        return EXIT_FAILED
    return EXIT_OK


RUN_APPROVAL_REASON = (
    "approval was unavailable: `codemode run` cannot ask for approval, so this call was not run"
)


async def _refuse_held_calls(runtime: SessionRuntime, cell_id: str, err: TextIO) -> None:
    """`codemode run` has nobody to ask: calls held for approval are rejected, never run."""
    for request in runtime.awaiting_approval(cell_id):
        print(f"rejected {request.call_id} {request.tool.name}: no approval", file=err, flush=True)
        await runtime.reject(cell_id, request.call_id, RUN_APPROVAL_REASON)


async def _run_with_mcp(
    args: argparse.Namespace, source: str, limits: CellLimits, config_path: str
) -> int:
    """Run the cell with the tools of the upstream MCP servers of ``config_path``
    (docs/protocol.md)."""
    from codemode.mcp.approval import load_approval_policy
    from codemode.mcp.config import ConfigError, load_config
    from codemode.mcp.upstream import UpstreamSet

    try:
        configs = load_config(config_path)
        approval = load_approval_policy(config_path)
    except ConfigError as exc:
        print(f"codemode: {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE

    async def notify(call_id: str, cell_id: str, text: str) -> None:
        print(f"notify: {text}", file=sys.stderr, flush=True)

    async with UpstreamSet(configs) as upstreams:
        return await run_cell(
            source,
            limits=limits,
            yield_after=args.yield_after,
            pausable=args.pausable,
            as_json=args.json,
            out=sys.stdout,
            err=sys.stderr,
            tools=approval.mark(upstreams),
            delegate=upstreams.delegate(notify),
            python=args.python,
            store=_store_options(args),
            session_id=args.session,
        )


async def _run_main(args: argparse.Namespace, source: str, limits: CellLimits) -> int:
    if args.mcp_config is not None:
        runner = _run_with_mcp(args, source, limits, args.mcp_config)
    else:
        runner = run_cell(
            source,
            limits=limits,
            yield_after=args.yield_after,
            pausable=args.pausable,
            as_json=args.json,
            out=sys.stdout,
            err=sys.stderr,
            python=args.python,
            store=_store_options(args),
            session_id=args.session,
        )
    task = asyncio.ensure_future(runner)
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGINT, task.cancel)
    try:
        return await task
    except asyncio.CancelledError:
        return EXIT_TERMINATED


def _store_options(args: argparse.Namespace) -> StoreOptions | None:
    """The ``--store`` / ``--lease-seconds`` options, or ``None`` without ``--store``."""
    if args.store is None:
        return None
    return StoreOptions(args.store, args.lease_seconds)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``codemode`` command; returns the exit status."""
    try:
        return _main(argv)
    except BrokenPipeError:
        # The reader of stdout went away (`| head`): the session has shut the cell down on the
        # way out; end quietly, and keep the interpreter's last flush from raising again.
        silence_stdout()
        return EXIT_FAILED


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "run":
        if args.example:
            source = example_source(args.python)
        elif args.file == "-":
            source = sys.stdin.read()
        else:
            try:
                with open(args.file, encoding="utf-8") as fh:
                    source = fh.read()
            except OSError as exc:
                print(f"codemode: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
                return EXIT_USAGE
            if args.file.endswith(".py"):
                args.python = True
        if args.session is not None and args.store is None:
            print("codemode: --session needs --store PATH_OR_DSN", file=sys.stderr)
            return EXIT_USAGE
        if args.session is not None and (problem := session_id_problem(args.session)):
            print(f"codemode: --session {problem}", file=sys.stderr)
            return EXIT_USAGE
        try:
            limits = limits_from_args(args)
            engine = engine_from_args(args)
        except ValueError as exc:
            print(f"codemode: {exc}", file=sys.stderr)
            return EXIT_USAGE
        configure_logging("WARNING")  # stderr is the cell's: only problems, unless asked
        with using_default_engine(engine):
            return asyncio.run(_run_main(args, source, limits))
    try:
        limits = limits_from_args(args)
        engine_name = engine_name_from_args(args)
    except ValueError as exc:
        print(f"codemode: {exc}", file=sys.stderr)
        return EXIT_USAGE
    # Every session these fronts open gets a fresh engine of the chosen kind.
    options = engine_options(
        rss_budget_bytes=args.rss_budget_bytes, memory_limit_bytes=args.worker_memory_limit_bytes
    )
    if args.command == "serve":
        from codemode.protocol.cluster_source import source_from_args
        from codemode.protocol.policy import policy_from_args
        from codemode.protocol.server import serve_main

        try:
            policy = policy_from_args(args)
            sessions = source_from_args(args, limits)  # --cluster: sessions on Ray
        except ValueError as exc:
            print(f"codemode: {exc}", file=sys.stderr)
            return EXIT_USAGE
        with options:
            return serve_main(
                listen=args.listen,
                token_env=args.token_env,
                limits=limits,
                engine=engine_name,
                policy=policy,
                # (With `serve --cluster`, --store is the store the cluster's hosts share.)
                store=None if getattr(args, "cluster", None) else _store_options(args),
                source=sessions,
            )
    if args.command == "mcp":
        from codemode.mcp.server import mcp_main

        config_path = args.config or os.environ.get(MCP_CONFIG_ENV) or None
        if config_path is None:
            parser.error(f"mcp needs --config PATH or the {MCP_CONFIG_ENV} environment variable")
        with options:
            return mcp_main(
                config_path=config_path, http=args.http, limits=limits, engine=engine_name
            )
    parser.error(f"unknown command {args.command}")  # pragma: no cover - argparse exits
    return EXIT_USAGE  # pragma: no cover
