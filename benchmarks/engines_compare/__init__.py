"""The same code-mode workloads on several sandbox engines, side by side on this machine.

Set up and run the full comparison with one command (from the repository root)::

    benchmarks/compare-setup.sh --run

It creates ``benchmarks/.venv-compare`` from the pinned ``benchmarks/requirements-compare.txt``
(codemode itself with ``-e .``, quickjs-ng, pydantic-monty, deno) and runs this script there
(``--run --runs 3`` repeats the whole comparison three times). The comparison engines never
become dependencies of the project. Later runs:
``benchmarks/.venv-compare/bin/python benchmarks/engines_compare [--runs 3]``, or ``./dev
bench``: run with any other interpreter (the main ``.venv``), this script re-executes itself in
``benchmarks/.venv-compare`` when that exists; otherwise it measures what it can (codemode and raw
mini-racer are in the main venv) and prints which engines are missing.

Engines (columns), each in its own child process so that memory figures and V8 flags do not mix:

- ``codemode``: V8 through codemode's whole session runtime (``SessionRuntime.create_cell`` +
  ``wait``; the pool of isolates created ahead, JSON-only bridge, outbox drains).
- ``mini-racer``: the same V8 (mini-racer 0.14.1) without codemode, through its public API.
- ``quickjs-ng``: QuickJS through the PyPI ``quickjs-ng`` wrapper, on the asyncio thread.
- ``monty``: pydantic-monty, a Python-subset sandbox; its cells are the equivalent Python.
- ``deno-worker``: one long-lived ``deno`` process; each cell is a Web Worker in it.
- ``deno-process``: one ``deno`` process per cell.

Workloads (rows); every cell's output is checked, so a figure always comes from a cell that did
the work. A "cell" is timed from the host's request until the host holds its output and every
disposal step the host must wait for is done (``MiniRacer.close()``, dropping a QuickJS context,
releasing a Monty session); teardown an engine does off the cell's path (codemode frees isolates
on a worker thread, a Deno worker is terminated fire-and-forget, a Deno cell process exits by
itself and is reaped between cells) is not timed.

- fresh cell: create the sandbox, set up the bridge, run a program that outputs "hi", dispose.
  Twice: with the sandbox created ahead of time (codemode's isolate pool, a ``MiniRacer()`` or
  QuickJS context made before the timer, Monty's warm worker pool, a Deno worker or process
  spawned and ready: creation not timed), and with it created on demand (timed).
- 1000 sequential awaited host calls, each a round trip to an async Python function that echoes
  its input: calls/s over the whole cell (sandbox made ahead), as in ``cell_basics.py``.
- 1000 host calls in one ``Promise.all`` (``asyncio.gather`` in Monty): the whole cell, ms.
- one call echoing a 1 MiB string (whole cell): the cost of moving data across the bridge.
- pure compute: 10^6 iterations of ``s = (s + i*i) % 1000003`` (whole cell): the price of an
  interpreter (QuickJS, Monty) against a JIT (V8; codemode and mini-racer run V8 with
  ``--single-threaded``, so no concurrent optimising compiler, unlike Deno).
- stop ``while (true) {}`` from the host: milliseconds from the deadline (50 ms after the start)
  until the host has it stopped, checked by sampling the CPU the engine's process(es) burn over
  the next 0.3 s (a "stop" that leaves a thread spinning is reported as not possible). QuickJS
  has no host-side stop: its figure is how far past a 50 ms CPU-time limit, set before the run,
  the loop was interrupted.
- the host event loop's longest stall while compute cells run (a 1 ms ticker): an engine that
  runs JavaScript on the loop's own thread blocks the host for the whole cell. On a loaded
  machine the noise floor is several ms.
- memory per live idle cell: N cells each waiting on a host call that never answers; the
  resident-set (RSS) delta of this process and all its children, divided by N, and the same for
  the proportional set size (PSS), which splits pages shared between processes (RSS counts the
  shared binary of every extra worker or deno process again; PSS counts it once, but moves a
  little when unrelated processes map the same libraries); and the threads and processes each
  cell holds.

How each engine's host-call bridge works is documented on its adapter class below. Figures are
medians over repeated runs; ``--runs N`` repeats the whole comparison (fresh child processes) and
reports the median of the per-run medians. Prints a table and writes
``benchmarks/results/engines_compare.json``.
"""
