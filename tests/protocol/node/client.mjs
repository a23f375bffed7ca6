// A JSON-RPC client of `codemode serve` written from docs/protocol.md alone, with Node's
// standard library only. It runs a continuing and a pausable cell and prints one JSON object
// (what it saw) on stdout. Usage: node client.mjs PYTHON [serve args...]
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";

const [python, ...serveArgs] = process.argv.slice(2);
const server = spawn(python, ["-m", "codemode", "serve", ...serveArgs], {
  stdio: ["pipe", "pipe", "inherit"],
});

let nextId = 0;
const pending = new Map(); // our request id -> {resolve, reject}
const invoked = []; // every tool/invoke we answered, in order
const notes = [];
const answered = new Set(); // callIds answered

function send(message) {
  server.stdin.write(JSON.stringify(message) + "\n"); // newline-delimited, no Content-Length
}

function call(method, params) {
  const id = ++nextId;
  send({ jsonrpc: "2.0", id, method, params });
  return new Promise((resolve, reject) => pending.set(id, { resolve, reject }));
}

function toolOutput(name, input) {
  if (name === "add") return { sum: input.a + input.b };
  if (name === "upper") return String(input).toUpperCase(); // a freeform tool's input is a string
  return null;
}

const lines = createInterface({ input: server.stdout });
lines.on("line", (line) => {
  if (!line.trim()) return;
  const message = JSON.parse(line);
  if (message.method === "tool/invoke") {
    const { callId, tool, input } = message.params;
    invoked.push({ callId, name: tool.name, input });
    answered.add(callId);
    if (tool.name === "fail") {
      // docs/protocol.md section 5: a failed tool is an error response, code -32001.
      send({ jsonrpc: "2.0", id: message.id, error: { code: -32001, message: `no such city: ${input.city}` } });
    } else {
      send({ jsonrpc: "2.0", id: message.id, result: { output: toolOutput(tool.name, input) } });
    }
    return;
  }
  if (message.method === "cell/notify") {
    notes.push(message.params.text);
    send({ jsonrpc: "2.0", id: message.id, result: {} });
    return;
  }
  if (message.method !== undefined) return; // $/cancelRequest and other notifications
  const waiter = pending.get(message.id);
  if (!waiter) return;
  pending.delete(message.id);
  if (message.error) waiter.reject(Object.assign(new Error(message.error.message), message.error));
  else waiter.resolve(message.result);
});

const texts = (items) => items.filter((i) => i.type === "text").map((i) => i.text);

async function main() {
  const init = await call("initialize", {
    protocolVersion: 1,
    clientInfo: { name: "node-contract-check", version: "1" },
    capabilities: { notify: true },
  });
  const opened = await call("session/open", {});
  const { sessionId } = opened;
  // docs/protocol.md "Durable sessions": with serve --store, the session is durable, and a
  // second open of its id while this connection holds it is refused with SessionBusy.
  let durable = null;
  if (opened.durable) {
    let busy = null;
    try {
      await call("session/open", { sessionId });
    } catch (error) {
      busy = { code: error.code, kind: error.data?.kind, message: error.message };
    }
    durable = { idLength: sessionId.length, cells: opened.cells, busy };
  }
  const tools = [
    { name: "add", kind: "function", inputSchema: { type: "object" } },
    { name: "fail", kind: "function" },
    { name: "upper", kind: "freeform" },
  ];

  // A continuing cell: parallel calls, a failed tool, a notification, a yield, then more output.
  const continuing = await call("cell/create", {
    sessionId,
    kind: "continuing",
    toolCallId: "node-call-1",
    idempotencyKey: "node-call-1",
    tools,
    source: `
      const [a, b] = await Promise.all([tools.add({a: 1, b: 2}), tools.add({a: 3, b: 4})]);
      text("sums " + a.sum + " " + b.sum);
      try { await tools.fail({city: "Atlantis"}); } catch (e) { text("caught " + e.message); }
      notify("halfway");
      yield_control();
      text(await tools.upper("done"));
    `,
  });
  const events = [];
  for (let observation = 0; ; observation++) {
    const event = await call("cell/wait", {
      sessionId, cellId: continuing.cellId, yieldAfterMs: 10000, observation,
    });
    events.push({ type: event.type, texts: texts(event.items), errorText: event.errorText ?? null });
    if (event.type === "completed" || event.type === "terminated") {
      await call("observation/release", { sessionId, cellId: continuing.cellId, observation });
      // A replay of a released observation is an error (docs/protocol.md section 4).
      let replay = null;
      try {
        await call("cell/wait", { sessionId, cellId: continuing.cellId, yieldAfterMs: 10000, observation });
      } catch (error) {
        replay = { code: error.code, message: error.message };
      }
      events.push({ replay });
      break;
    }
  }

  // A pausable cell: frontier by frontier, resumed by generation.
  const pausable = await call("cell/create", {
    sessionId,
    kind: "pausable",
    toolCallId: "node-call-2",
    tools,
    source: `
      const first = await tools.add({a: 10, b: 5});
      text("first " + first.sum);
      const [x, y] = await Promise.all([tools.add({a: 1, b: 1}), tools.upper("p")]);
      text("then " + x.sum + " " + y);
    `,
  });
  const frontiers = [];
  let final = null;
  for (let observation = 0; ; observation++) {
    const event = await call("cell/waitToPending", { sessionId, cellId: pausable.cellId, observation });
    if (event.type !== "pending") {
      final = { type: event.type, texts: texts(event.items), errorText: event.errorText ?? null };
      await call("observation/release", { sessionId, cellId: pausable.cellId, observation });
      break;
    }
    frontiers.push({ generation: event.generation, calls: event.pendingToolCallIds.length, texts: texts(event.items) });
    while (!event.pendingToolCallIds.every((id) => answered.has(id))) {
      await new Promise((r) => setTimeout(r, 10));
    }
    const resumed = await call("cell/resume", { sessionId, cellId: pausable.cellId, generation: event.generation });
    const again = await call("cell/resume", { sessionId, cellId: pausable.cellId, generation: event.generation });
    frontiers[frontiers.length - 1].outcomes = [resumed.outcome, again.outcome];
  }

  await call("session/shutdown", { sessionId });
  if (durable) {
    // Ended: the id can be opened again (its cells were deleted with the shutdown).
    const again = await call("session/open", { sessionId });
    durable.reopened = { sessionId: again.sessionId === sessionId, cells: again.cells };
    await call("session/shutdown", { sessionId });
  }
  process.stdout.write(JSON.stringify({
    durable,
    protocolVersion: init.protocolVersion,
    continuing: events,
    notes,
    pausable: { frontiers, final },
    invoked: invoked.map((c) => c.name),
  }) + "\n");
  server.stdin.end();
}

const guard = setTimeout(() => {
  process.stderr.write("node client: timed out\n");
  server.kill("SIGKILL");
  process.exit(3);
}, 60000);

main().then(
  () => {
    server.on("exit", () => { clearTimeout(guard); process.exit(0); });
  },
  (error) => {
    process.stderr.write(`node client failed: ${error.stack ?? error.message}\n`);
    server.kill("SIGKILL");
    process.exit(1);
  },
);
