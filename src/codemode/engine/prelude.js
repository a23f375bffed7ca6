// The cell environment of codemode (docs/cells.md), evaluated once in every fresh V8 context.
//
// The host talks to this file only through the bridge object this script evaluates to (no global
// names it, so a cell cannot reach it), with strings in (parsed here) and JSON text out:
//
//   bridge.start(config, stored, source)  install tools and limits, the stored values' JSON
//                                         text, compile the body and start it; returns the
//                                         output journal's buffer
//   bridge.step(inputs)                   apply tool results and fire timers, in order (the
//                                         inputs as an argument, or in the inbox)
//   bridge.drain()                        {ev: [...], pending: [...], settled: ...} as JSON text,
//                                         plus reads: N when the cell read the clock or the
//                                         random source (N runs of reads, see envRead)
//
// JavaScript runs only while the host is inside one of these calls, and V8 flushes microtasks at
// the end of each call, so after a drain the cell is quiescent: `pending` lists exactly the tool
// calls whose promises are still unsettled inside the engine. That is what makes a pending
// frontier exact (ENGINE-NOTES 4).
//
// Outbox events, in the order the cell produced them:
//   ["text", string]                   a text item
//   ["image", url, detail]             an image item (detail lowercase)
//   ["call", id, toolIndex, input]     a nested tool call was issued (input: its JSON value)
//   ["notify", string]                 notify(...)
//   ["yield"]                          yield_control() (continuing cells only)
//   ["timer", id, delayMs]             setTimeout
//   ["clear", id]                      clearTimeout of a live timer
//   ["store", key, valueJSON]          store(key, value), the value's JSON as a string
// Timers set and stores written since the last drain are emitted by the drain (a timer cleared
// before then never reaches the host; a key's last write wins). The host re-checks everything
// (codemode.cell.authority); the checks here are the fast, friendly first line.
// `pending` is only reported for pausable cells (a continuing cell never takes a frontier).
// `settled` is null while the body runs, else {ok: true} or {ok: false, error: text} or
// {ok: false, limit: fieldName}.
// Each event is kept as JSON text from the moment it is emitted, with tool inputs embedded as the
// JSON they were converted to, so the host decodes every value once.
(function (global) {
  "use strict";

  // Intrinsics captured before the cell can touch them.
  const JSONstringify = JSON.stringify;
  const JSONparse = JSON.parse;
  const ObjectFreeze = Object.freeze;
  const ObjectDefineProperty = Object.defineProperty;
  const ArrayIsArray = Array.isArray;
  const StringCtor = String;
  const NumberCtor = Number;
  const MathTrunc = Math.trunc;
  const NumberIsFinite = Number.isFinite;
  const ReflectConstruct = Reflect.construct;
  const ReflectApply = Reflect.apply;
  const WeakRefCtor = WeakRef;
  const WeakSetCtor = WeakSet;
  const MapCtor = Map;
  const PromiseCtor = Promise;
  const ProxyCtor = Proxy;
  const TypeErrorCtor = TypeError;
  const RangeErrorCtor = RangeError;
  const ErrorCtor = Error;
  const globalEval = eval;
  const AsyncFunctionCtor = Object.getPrototypeOf(async function () {}).constructor;
  const gcFn = typeof global.gc === "function" ? global.gc : null;
  const IntrinsicArrayBuffer = ArrayBuffer;
  // Hardening (docs/safety.md): the bridge's own state never goes through a method or accessor
  // the cell could replace after the prelude ran; the host re-checks every report anyway.
  const MathMax = Math.max;
  const Uint16ArrayCtor = Uint16Array;
  const Uint32ArrayCtor = Uint32Array;
  const Int32ArrayCtor = Int32Array;
  const AtomicsLoad = Atomics.load;
  const Float64ArrayCtor = Float64Array;
  const ObjectHasOwn = Object.prototype.hasOwnProperty;
  // f.call bound once: a cell replacing Function.prototype.call later changes nothing here.
  const uncurry = (f) => ReflectApply(Function.prototype.bind, Function.prototype.call, [f]);
  const getter = (proto, name) => uncurry(Object.getOwnPropertyDescriptor(proto, name).get);
  const promiseThen = uncurry(Promise.prototype.then);
  const PromiseResolve = Promise.resolve;
  // A new promise with its resolve and reject, as one object (own data properties only).
  const promiseWithResolvers = ReflectApply(Function.prototype.bind, Promise.withResolvers, [PromiseCtor]);
  const mapGet = uncurry(Map.prototype.get);
  const mapSet = uncurry(Map.prototype.set);
  const mapHas = uncurry(Map.prototype.has);
  const mapDelete = uncurry(Map.prototype.delete);
  const mapClear = uncurry(Map.prototype.clear);
  const mapForEach = uncurry(Map.prototype.forEach);
  const mapSize = getter(Map.prototype, "size");
  const weakSetHas = uncurry(WeakSet.prototype.has);
  const weakSetAdd = uncurry(WeakSet.prototype.add);
  const weakRefDeref = uncurry(WeakRef.prototype.deref);
  const bufferByteLength = getter(ArrayBuffer.prototype, "byteLength");
  const bufferMaxByteLength = getter(ArrayBuffer.prototype, "maxByteLength");
  const bufferResizable = getter(ArrayBuffer.prototype, "resizable");
  const typedArrayBuffer = getter(Object.getPrototypeOf(Uint8Array.prototype), "buffer");
  const hasOwn = (o, k) => ReflectApply(ObjectHasOwn, o, [k]);
  // A Map whose methods are fixed now (own properties of a frozen object).
  function makeMap() {
    const m = new MapCtor();
    return ObjectFreeze({
      get: (k) => mapGet(m, k),
      set: (k, v) => { mapSet(m, k, v); },
      has: (k) => mapHas(m, k),
      delete: (k) => mapDelete(m, k),
      clear: () => { mapClear(m); },
      forEach: (f) => { mapForEach(m, f); },
      get size() { return mapSize(m); },
    });
  }
  // Timers one cell may hold live at once (the host holds the same bound).
  const MAX_LIVE_TIMERS = 10000;
  // Nesting depth of one stored value (the host holds the same bound).
  const MAX_STORED_DEPTH = 128;
  // Every output item costs at least this many bytes (its framing; the host counts the same).
  const MIN_ITEM_BYTES = 16;

  // Globals the sandbox removes (docs/cells.md) or replaces with its own (timers, console).
  for (const name of [
    "gc", "Atomics", "SharedArrayBuffer", "WebAssembly", "console",
    "setTimeout", "clearTimeout", "setInterval", "clearInterval", "__timer_manager",
  ]) {
    try { delete global[name]; } catch (_) { /* non-configurable: neutralised below */ }
  }
  // V8 installs `gc` as a non-configurable (but writable) global: take its value away.
  if (Object.prototype.hasOwnProperty.call(global, "gc")) {
    try { ObjectDefineProperty(global, "gc", { value: undefined, writable: false }); } catch (_) { /* keep going */ }
  }

  // ---------------------------------------------------------------- state of the cell
  let outbox = "";              // JSON texts of events, comma-separated
  let lastYield = false;        // the outbox ends with a yield: consecutive ones are one
  let settled = null;           // the terminal report, once decided
  let exited = false;           // exit() was called: helpers are no-ops
  let limitHit = false;         // a limit was exceeded: helpers throw
  let pausable = false;
  let toolDefs = [];            // [{name, ident, kind}]
  let stored = makeMap();       // key -> JSON text (the cell's own writes)
  let freshStores = makeMap();  // key -> JSON text, written since the last drain
  let spareStores = makeMap();  // emptied by each drain, then swapped with freshStores
  let snapshotText = "{}";      // the session's values at admission, parsed on first use
  let snapshot = null;
  let storedBytes = 0;          // what the snapshot costs (max_stored_bytes)
  let ownSizes = makeMap();     // key -> what the cell's own write costs
  let ownBytes = 0;
  let creditBytes = 0;          // what the snapshot held under the keys the cell wrote...
  let creditKnown = false;      // ...once worked out
  let limits = { maxToolCalls: 1000, maxParallel: 100, maxOutputBytes: 1048576, maxExternalBytes: 67108864 };
  let callsIssued = 0;
  // call id -> {promise, resolve, reject}; a Map reached only through the captured methods (mapGet...):
  // the busiest of the bridge's maps, so without makeMap's extra call per use.
  const pending = new MapCtor();
  const timers = makeMap();  // timer id -> callback
  let freshTimers = makeMap();   // timer id -> delay (ms), set since the last drain
  let spareTimers = makeMap();   // emptied by each drain, then swapped with freshTimers
  let timerSeq = 0;
  let outputBytes = 0;

  // Thrown to unwind the cell after exit() or a limit; never an error of the cell itself.
  const EXIT = ObjectFreeze({ toString() { return "exit"; } });
  const LIMIT = ObjectFreeze({ toString() { return "limit exceeded"; } });

  const push = (evText) => {
    outbox = outbox === "" ? evText : outbox + "," + evText;
    lastYield = false;
  };
  // Events hold primitives only, stringified one by one (no toJSON lookup on arrays).
  const headText = (head) => {
    let s = "[";
    for (let i = 0; i < head.length; i++) s += (i === 0 ? "" : ",") + JSONstringify(head[i]);
    return s;
  };
  const emit = (ev) => {
    push(headText(ev) + "]");
    if (ev[0] === "text") journalWrite(1, ev[1]);
    else if (ev[0] === "image") journalWrite(2, ev[2] + " " + ev[1]);
  };

  // The output journal: output events not yet in a drain report the host has, also written
  // as UTF-16 records into a buffer whose memory the host reads directly. When a cell spins in
  // a continuation (V8 runs those after the host's call returned, where stopping it also stops
  // any drain), or a drain's report never reaches the host, the host still salvages what it
  // wrote. Records: [kind, length low, length high, units...]; units 0-1 (one 32-bit word,
  // written last) hold the committed end, units 2-3 a limit the cell hit (1 + its index in
  // FLAGGED_LIMITS), records start at unit 4. Only the host empties it (it sets the end back
  // to 4 once it has a drain's report: engine/v8.py, _V8Cell._journal_delivered), never a
  // drain: mini-racer may report a drain terminated after it committed, and then its report is
  // gone.
  let journal = null;
  let journalEnd = null;
  let journalFlag = null;
  const charCodeAt = uncurry(String.prototype.charCodeAt);
  const stringSlice = uncurry(String.prototype.slice);
  const StringFromCharCode = StringCtor.fromCharCode;
  // One journal per isolate, made now: the host holds a view of its memory before any cell
  // runs. 4 Mi units (8 MiB of address space, committed only as far as it is written): the
  // journal's records take the first JOURNAL_UNITS, the inbox (below) the rest.
  const journalBuffer = new IntrinsicArrayBuffer(4194304 * 2);
  const JOURNAL_UNITS = 4194304 - 131072;

  // The inbox: the host writes a step's inputs (JSON text, UTF-16 units) here, and their
  // length into the 32-bit word before them, instead of copying a string argument into the
  // isolate, which costs a blocking round trip to the isolate's thread (engine/v8.py keeps the
  // same layout). Written by the host only between two bridge calls; read by step().
  const inboxLength = new Uint32ArrayCtor(journalBuffer, JOURNAL_UNITS * 2, 1);
  // Chunks of the inbox go to one fromCharCode call each, as views of the buffer made by the
  // intrinsic constructor. fromCharCode reads a view's length as a property: each view gets
  // it as an own data property (a descriptor without a prototype), so no getter a cell defines
  // on the typed arrays' prototypes is ever reached (indexed reads of a view never look there).
  const INBOX_CHUNK = 8192;
  const inboxOffset = JOURNAL_UNITS * 2 + 4;
  function readInbox() {
    const n = inboxLength[0];
    let text = "";
    for (let i = 0; i < n; i += INBOX_CHUNK) {
      const k = n - i < INBOX_CHUNK ? n - i : INBOX_CHUNK;
      const view = new Uint16ArrayCtor(journalBuffer, inboxOffset + 2 * i, k);
      ObjectDefineProperty(view, "length", { __proto__: null, value: k });
      text += ReflectApply(StringFromCharCode, null, view);
    }
    return text;
  }
  // The hold word (the buffer's last 32 bits, after the inbox): the host adds one to it
  // before it posts anything; bridge.hold (below) polls it. holdSeen: its value when the last
  // drain ended, before the host could have read that drain's report.
  const holdWord = new Int32ArrayCtor(journalBuffer, 4194304 * 2 - 4, 1);
  let holdSeen = 0;
  // About 0.1 ms of polls in optimised code (a poll is an atomic load, ~8 ns).
  const HOLD_POLLS = 12000;
  function journalReset() {
    journal = new Uint16ArrayCtor(journalBuffer, 0, JOURNAL_UNITS);
    journalEnd = new Uint32ArrayCtor(journalBuffer, 0, 1);
    journalFlag = new Uint32ArrayCtor(journalBuffer, 4, 1);
    journalEnd[0] = 4;
    journalFlag[0] = 0;
  }
  function journalWrite(kind, s) {
    if (journal === null) return;
    const n = s.length;
    const at = journalEnd[0];  // the host may have emptied it since the last write
    if (at + 3 + n > JOURNAL_UNITS) return;  // full: the drain still has them (no length getter: a cell may replace it)
    journal[at] = kind;
    journal[at + 1] = n & 0xffff;
    journal[at + 2] = n >>> 16;
    for (let i = 0; i < n; i++) journal[at + 3 + i] = charCodeAt(s, i);
    journalEnd[0] = at + 3 + n;
  }

  // Limits the journal can flag to the host (the host keeps the same list).
  const FLAGGED_LIMITS = ["max_tool_calls", "max_parallel_tool_calls", "max_output_bytes", "max_heap_bytes", "max_stored_bytes"];

  function failLimit(field) {
    if (!limitHit && settled === null) {
      limitHit = true;
      settled = { ok: false, limit: field };
      // Tell the host at once, through memory it reads while JavaScript runs: a cell that
      // catches the unwinding in a loop is stopped by the host rather than spinning on.
      if (journalFlag !== null) {
        for (let i = 0; i < FLAGGED_LIMITS.length; i++) if (FLAGGED_LIMITS[i] === field) journalFlag[0] = i + 1;
      }
    }
    throw LIMIT;
  }

  // After exit() a helper does nothing; after a limit or settlement it unwinds the caller.
  function checkAlive() {
    if (limitHit) throw LIMIT;
    return !exited && settled === null;
  }

  function utf8Length(s) {
    let n = 0;
    for (let i = 0; i < s.length; i++) {
      const c = s.charCodeAt(i);
      if (c < 0x80) n += 1;
      else if (c < 0x800) n += 2;
      else if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) {
        const d = s.charCodeAt(i + 1);
        if (d >= 0xdc00 && d <= 0xdfff) { n += 4; i++; } else n += 3;
      } else n += 3;
    }
    return n;
  }

  function countOutput(s) {
    const n = MathMax(utf8Length(s), MIN_ITEM_BYTES);
    if (outputBytes + n > limits.maxOutputBytes) failLimit("max_output_bytes");
    outputBytes += n;
  }

  // docs/cells.md "conversion to text".
  function toText(v) {
    const t = typeof v;
    if (v === undefined || v === null || t === "boolean" || t === "number" || t === "bigint" || t === "string") {
      return StringCtor(v);
    }
    const s = JSONstringify(v);
    return s === undefined ? StringCtor(v) : s;
  }

  // docs/cells.md.
  function errorText(v) {
    try {
      if (v !== null && (typeof v === "object" || typeof v === "function") && typeof v.stack === "string") {
        return v.stack;
      }
      return StringCtor(v);
    } catch (_) {
      return "uncaught exception";
    }
  }

  function settleBody(error, failed) {
    if (settled !== null) return;
    if (exited) { settled = { ok: true }; return; }
    settled = failed ? { ok: false, error: errorText(error) } : { ok: true };
  }

  // ---------------------------------------------------------------- output helpers
  function text(value) {
    if (!checkAlive()) return undefined;
    const s = toText(value);
    countOutput(s);
    emit(["text", s]);
    return undefined;
  }

  function consoleMethod() {
    return function () {
      if (!checkAlive()) return undefined;
      const parts = [];
      for (let i = 0; i < arguments.length; i++) parts.push(toText(arguments[i]));
      const s = parts.join(" ");
      countOutput(s);
      emit(["text", s]);
      return undefined;
    };
  }

  function notify(value) {
    if (!checkAlive()) return undefined;
    const s = toText(value);
    if (s.trim() === "") throw new TypeErrorCtor("notify expects non-empty text");
    countOutput(s);
    emit(["notify", s]);
    return undefined;
  }

  const IMAGE_EXPECTS = "image expects a non-empty image URL string, an object with image_url and optional detail, or a raw MCP image block";
  const DETAILS = ["auto", "low", "high", "original"];

  function image(value, detail) {
    if (!checkAlive()) return undefined;
    let url;
    let embedded = null;
    if (typeof value === "string") {
      url = value;
    } else if (value !== null && typeof value === "object" && !ArrayIsArray(value)) {
      if (value.image_url !== undefined) {
        if (typeof value.image_url !== "string") throw new TypeErrorCtor(IMAGE_EXPECTS);
        url = value.image_url;
        const d = value.detail;
        if (d !== undefined && d !== null && typeof d !== "string") {
          throw new TypeErrorCtor("image detail must be a string when provided");
        }
        if (typeof d === "string") embedded = d;
      } else {
        const json = JSONstringify(value);
        const block = json === undefined ? undefined : JSONparse(json);
        if (block === null || typeof block !== "object" || typeof block.type !== "string") {
          throw new TypeErrorCtor(IMAGE_EXPECTS);
        }
        if (block.type !== "image") {
          throw new TypeErrorCtor('image only accepts MCP image blocks, got "' + block.type + '"');
        }
        if (typeof block.data !== "string" || block.data === "") {
          throw new TypeErrorCtor("image expected MCP image data");
        }
        if (/^data:/i.test(block.data)) {
          url = block.data;
        } else {
          let mime = "application/octet-stream";
          if (typeof block.mimeType === "string") mime = block.mimeType;
          else if (typeof block.mime_type === "string") mime = block.mime_type;
          url = "data:" + mime + ";base64," + block.data;
        }
        const meta = block._meta;
        const metaDetail = meta !== null && typeof meta === "object" ? meta["codex/imageDetail"] : undefined;
        if (typeof metaDetail === "string" && DETAILS.includes(metaDetail)) embedded = metaDetail;
      }
    } else {
      throw new TypeErrorCtor(IMAGE_EXPECTS);
    }
    if (url === "") throw new TypeErrorCtor(IMAGE_EXPECTS);
    const scheme = /^([A-Za-z][A-Za-z0-9+.\-]*):/.exec(url);
    const schemeName = scheme ? scheme[1].toLowerCase() : null;
    if (schemeName !== "data") {
      if (schemeName === "http" || schemeName === "https") {
        throw new TypeErrorCtor("Tool call failed: remote image URLs are not supported in tool outputs. Pass a base64 data URI instead");
      }
      throw new TypeErrorCtor("Tool call failed: invalid image output. Pass a base64 data URI instead");
    }
    let chosen = embedded;
    if (detail !== undefined && detail !== null) {
      if (typeof detail !== "string") throw new TypeErrorCtor("image detail must be a string when provided");
      chosen = detail;
    }
    let finalDetail = "high";
    if (chosen !== null) {
      const lower = chosen.toLowerCase();
      if (!DETAILS.includes(lower)) {
        throw new TypeErrorCtor("image detail must be one of: auto, low, high, original");
      }
      finalDetail = lower;
    }
    countOutput(url);
    emit(["image", url, finalDetail]);
    return undefined;
  }

  // ---------------------------------------------------------------- stored values
  function store(key, value) {
    let k;
    try { k = StringCtor(key); } catch (_) { throw new TypeErrorCtor("store key must be a string"); }
    if (!checkAlive()) return undefined;
    const json = JSONstringify(value);
    if (json === undefined) {
      throw new TypeErrorCtor("Unable to store " + JSONstringify(k) + ". Only plain serializable objects can be stored.");
    }
    if (jsonDepth(json) > MAX_STORED_DEPTH) {
      throw new TypeErrorCtor("Unable to store " + JSONstringify(k) + ". Values nested deeper than " + MAX_STORED_DEPTH + " levels cannot be stored.");
    }
    // The cell's view costs the snapshot, plus its own writes, minus what the snapshot held
    // under the keys it overwrote. That credit needs the parsed snapshot, so it is only worked
    // out once the cheaper upper bound passes the budget.
    const size = entrySize(k, json);
    const prev = ownSizes.get(k);
    const own = ownBytes - (prev === undefined ? 0 : prev) + size;
    let credit = creditBytes;
    if (creditKnown && prev === undefined) credit += snapshotSize(k);
    if (storedBytes + own - credit > limits.maxStoredBytes) {
      if (!creditKnown) {
        credit = prev === undefined ? snapshotSize(k) : 0;
        ownSizes.forEach((_, key) => { credit += snapshotSize(key); });
        creditKnown = true;
      }
      if (storedBytes + own - credit > limits.maxStoredBytes) failLimit("max_stored_bytes");
    }
    ownSizes.set(k, size);
    ownBytes = own;
    creditBytes = credit;
    stored.set(k, json);
    freshStores.set(k, json);
    return undefined;
  }

  function getSnapshot() {
    if (snapshot === null) snapshot = JSONparse(snapshotText);
    return snapshot;
  }

  function snapshotJSON(k) {
    const snap = getSnapshot();
    return hasOwn(snap, k) ? JSONstringify(snap[k]) : undefined;
  }

  const entrySize = (k, json) => utf8Length(JSONstringify(k)) + 2 + utf8Length(json);

  function snapshotSize(k) {
    const json = snapshotJSON(k);
    return json === undefined ? 0 : entrySize(k, json);
  }

  // Nesting depth of a JSON text (brackets outside strings).
  function jsonDepth(json) {
    let depth = 0;
    let max = 0;
    let inString = false;
    for (let i = 0; i < json.length; i++) {
      const c = json.charCodeAt(i);
      if (inString) {
        if (c === 92) i++;
        else if (c === 34) inString = false;
      } else if (c === 34) inString = true;
      else if (c === 91 || c === 123) { if (++depth > max) max = depth; }
      else if (c === 93 || c === 125) depth--;
    }
    return max;
  }

  function load(key) {
    let k;
    try { k = StringCtor(key); } catch (_) { throw new TypeErrorCtor("load key must be a string"); }
    let json = stored.get(k);
    if (json === undefined) json = snapshotJSON(k);
    return json === undefined ? undefined : JSONparse(json);
  }

  // ---------------------------------------------------------------- control
  function yield_control() {
    if (!checkAlive()) return undefined;
    if (!pausable && !lastYield) { push('["yield"]'); lastYield = true; }
    return undefined;
  }

  function exit() {
    if (!limitHit && settled === null && !exited) {
      exited = true;
      settled = { ok: true };
    }
    throw EXIT;
  }

  // ---------------------------------------------------------------- timers (host-driven)
  function setTimeout(callback, delay) {
    if (typeof callback !== "function") throw new TypeErrorCtor("setTimeout expects a function callback");
    let ms = NumberCtor(delay);
    ms = NumberIsFinite(ms) && ms > 0 ? MathTrunc(ms) : 0;
    if (!checkAlive()) return undefined;
    if (timers.size >= MAX_LIVE_TIMERS) {
      throw new RangeErrorCtor("setTimeout: more than " + MAX_LIVE_TIMERS + " live timers");
    }
    const id = ++timerSeq;
    timers.set(id, callback);
    freshTimers.set(id, ms);
    return id;
  }

  function clearTimeout(id) {
    if (id === undefined || id === null) return undefined;
    if (typeof id !== "number") throw new TypeErrorCtor("clearTimeout expects a numeric timeout id");
    if (!NumberIsFinite(id) || id <= 0) return undefined;
    // A timer set since the last drain is forgotten here; the host never hears of it.
    if (timers.delete(id) && !freshTimers.delete(id)) emit(["clear", id]);
    return undefined;
  }

  // ---------------------------------------------------------------- nested tools
  function makeTool(index, name, kind) {
    return function () {
      // Conversion first, so its errors are thrown synchronously (docs/cells.md).
      const json = arguments.length === 0 ? undefined : JSONstringify(arguments[0]);
      if (limitHit) throw LIMIT;
      if (exited || settled !== null) return new PromiseCtor(() => {});
      if (kind === "freeform") {
        if (json === undefined || json.charCodeAt(0) !== 34 /* " */) {
          return PromiseCtor.reject(new TypeErrorCtor("tool `" + name + "` expects a string input"));
        }
      } else if (json !== undefined && json.charCodeAt(0) !== 123 /* { */) {
        return PromiseCtor.reject(new TypeErrorCtor("tool `" + name + "` expects a JSON object for arguments"));
      }
      if (callsIssued + 1 > limits.maxToolCalls) failLimit("max_tool_calls");
      callsIssued += 1;
      const id = "tool-" + callsIssued;
      // ["call", id, index, input]: the id and the index need no escaping.
      push('["call","' + id + '",' + index + "," + (json === undefined ? "{}" : json) + "]");
      const entry = promiseWithResolvers();
      mapSet(pending, id, entry);
      return entry.promise;
    };
  }

  // ---------------------------------------------------------------- external memory (docs/safety.md)
  // V8's heap limit does not see ArrayBuffer backing stores (ENGINE-NOTES 2), so every way of
  // allocating one goes through `account`, which holds live bytes to limits.maxExternalBytes.
  // Live bytes are found by sweeping weak references after a full GC when the budget runs out.
  // Every method and accessor used here was captured before the cell ran, and the records live
  // in a Map wrapper, so a cell that replaces WeakRef/WeakSet methods, ArrayBuffer accessors,
  // Symbol.hasInstance or Array.prototype cannot switch the accounting off.
  let externalBytes = 0;
  let externalRecords = makeMap();  // serial -> {ref, n}
  let recordSerial = 0;
  let sweepAt = 1024;
  const accounted = new WeakSetCtor();

  function sweep() {
    const kept = makeMap();
    let total = 0;
    externalRecords.forEach((rec, serial) => {
      if (weakRefDeref(rec.ref) !== undefined) { kept.set(serial, rec); total += rec.n; }
    });
    externalRecords = kept;
    externalBytes = total;
  }

  function reserve(n) {
    if (!(n > 0)) return;
    if (externalBytes + n <= limits.maxExternalBytes) return;
    if (gcFn !== null) gcFn();
    sweep();
    if (externalBytes + n > limits.maxExternalBytes) failLimit("max_heap_bytes");
  }

  // The bytes a buffer holds or may grow to; -1 when `buffer` is no ArrayBuffer (brand check
  // through the captured accessors, never instanceof).
  function bufferBytes(buffer) {
    try {
      return bufferResizable(buffer) ? bufferMaxByteLength(buffer) : bufferByteLength(buffer);
    } catch (_) {
      return -1;
    }
  }

  function account(buffer) {
    const n = bufferBytes(buffer);
    if (n < 0 || weakSetHas(accounted, buffer)) return;
    reserve(n);
    weakSetAdd(accounted, buffer);
    externalBytes += n;
    externalRecords.set(++recordSerial, { ref: new WeakRefCtor(buffer), n });
    if (externalRecords.size > sweepAt) {
      sweep();
      sweepAt = MathMax(1024, externalRecords.size * 2);
    }
  }

  function viewBuffer(view) {
    try { return typedArrayBuffer(view); } catch (_) { return null; }
  }

  function requestedLength(v) {
    const n = NumberCtor(typeof v === "bigint" ? 0 : v);
    return NumberIsFinite(n) && n > 0 ? MathTrunc(n) : 0;
  }

  function wrapAllocator(name) {
    const Intrinsic = global[name];
    if (typeof Intrinsic !== "function") return;
    const isBuffer = name === "ArrayBuffer";
    const bytesPerElement = isBuffer ? 1 : Intrinsic.BYTES_PER_ELEMENT;
    // A handler without a prototype: a trap the cell adds to Object.prototype never runs (it
    // would be handed the intrinsic constructor).
    const wrapper = new ProxyCtor(Intrinsic, {
      __proto__: null,
      construct(target, args, newTarget) {
        const a0 = args[0];
        if (isBuffer) {
          let n = requestedLength(a0);
          const opts = args[1];
          if (opts !== null && typeof opts === "object" && opts.maxByteLength !== undefined) {
            n = MathMax(n, requestedLength(opts.maxByteLength));
          }
          reserve(n);
        } else if (a0 === null || typeof a0 !== "object") {
          reserve(requestedLength(a0) * bytesPerElement);
        } else if (bufferBytes(a0) < 0) {
          reserve(requestedLength(a0.length) * bytesPerElement);
        }
        const obj = ReflectConstruct(target, args, newTarget === wrapper ? target : newTarget);
        account(isBuffer ? obj : viewBuffer(obj));
        return obj;
      },
    });
    ObjectDefineProperty(Intrinsic.prototype, "constructor", {
      value: wrapper, writable: true, configurable: true, enumerable: false,
    });
    ObjectDefineProperty(global, name, {
      value: wrapper, writable: true, configurable: true, enumerable: false,
    });
    ObjectFreeze(Intrinsic);  // through the proxy, a cell could otherwise redefine its statics
  }

  // `before(args)` reserves what the call is about to allocate, when that is known up front.
  function wrapResultMethod(owner, method, resultBuffer, before) {
    const original = owner[method];
    if (typeof original !== "function") return;
    ObjectDefineProperty(owner, method, {
      value: {
        [method]() {
          if (before !== undefined) before(arguments);
          const result = ReflectApply(original, this, arguments);
          account(resultBuffer(result));
          return result;
        },
      }[method],
      writable: false, configurable: false, enumerable: false,
    });
  }

  const typedArrayNames = [
    "Int8Array", "Uint8Array", "Uint8ClampedArray", "Int16Array", "Uint16Array", "Int32Array",
    "Uint32Array", "Float16Array", "Float32Array", "Float64Array", "BigInt64Array", "BigUint64Array",
  ];
  const TypedArrayPrototype = Object.getPrototypeOf(Uint8Array.prototype);
  for (const m of ["toReversed", "toSorted", "with", "slice", "map", "filter"]) {
    wrapResultMethod(TypedArrayPrototype, m, viewBuffer);
  }
  const reserveNewLength = (args) => { if (args.length > 0) reserve(requestedLength(args[0])); };
  for (const m of ["slice", "transfer", "transferToFixedLength"]) {
    wrapResultMethod(IntrinsicArrayBuffer.prototype, m, (r) => r, m === "slice" ? undefined : reserveNewLength);
  }
  // Statics that allocate without calling `this` (base64 / hex decoding).
  for (const m of ["fromBase64", "fromHex"]) {
    wrapResultMethod(Uint8Array, m, viewBuffer, (args) => {
      const text = args[0];
      if (typeof text === "string") reserve(m === "fromHex" ? text.length >>> 1 : ((text.length * 3) >>> 2) + 3);
    });
  }
  wrapAllocator("ArrayBuffer");

  for (const name of typedArrayNames) wrapAllocator(name);

  // ---------------------------------------------------------------- a deterministic environment
  // Every value a cell can read from the clock or from entropy goes through envRead, which
  // answers from the replayed record while it matches and from the live source otherwise, and
  // keeps what it answered for the drain (docs/determinism.md). Sources by code (the host keeps
  // the same list): 0 clock (ms since the epoch), 1 random (the seed of the cell's Math.random
  // generator, read at its first call). envRead calls only intrinsics captured here, so a cell
  // that replaces Date, Math.random, Temporal or Intl changes what it calls itself, never what is
  // read or recorded.
  // Reads are kept as runs [code, value, count] (consecutive reads that answered the same value:
  // a loop polling Date.now() makes one run per millisecond), written as float64 triples into a
  // buffer whose memory the host reads after the drain, which only says how many runs there
  // are: no host crossing and no number formatting per read.
  const MAX_READS_PER_STEP = 100000;  // runs per step (the host holds the same bound)
  const IntrinsicDate = Date;
  const DateNow = Date.now;
  const MathRandom = Math.random;
  const MathImul = Math.imul;
  const dateToString = uncurry(Date.prototype.toString);
  // One per isolate, made now (the host holds a view of its memory); committed as it is written.
  const readBuffer = new IntrinsicArrayBuffer(MAX_READS_PER_STEP * 24);
  const readSlots = new Float64ArrayCtor(readBuffer);
  let readRuns = 0;       // runs since the last drain (the last one may still grow)
  let replay = null;      // the record still to answer: [code, value, count, ...], or null once live
  let replayAt = 0;       // the run being answered...
  let replayLeft = 0;     // ...and how many reads it still answers

  function envRead(code) {
    let v;
    if (replay !== null && replayAt < replay.length && replay[replayAt] === code) {
      v = replay[replayAt + 1];
      if (--replayLeft <= 0) {
        replayAt += 3;
        replayLeft = replayAt < replay.length ? replay[replayAt + 2] : 0;
      }
    } else {
      replay = null;  // past the record, or diverged: live from here on
      v = code === 0 ? DateNow() : MathRandom();
    }
    const last = 3 * (readRuns - 1);
    if (readRuns > 0 && readSlots[last] === code && readSlots[last + 1] === v) {
      readSlots[last + 2] += 1;
      return v;
    }
    if (readRuns >= MAX_READS_PER_STEP) {
      throw new RangeErrorCtor("more than " + MAX_READS_PER_STEP + " distinct reads of the clock and the random source in one step");
    }
    readSlots[3 * readRuns] = code;
    readSlots[3 * readRuns + 1] = v;
    readSlots[3 * readRuns + 2] = 1;
    readRuns++;
    return v;
  }
  const clock = () => envRead(0);

  // Math.random: xoshiro128** seeded from one recorded read at the cell's first call, so a cell
  // drawing millions of numbers records one value (V8's own generator is seeded per isolate).
  let seeded = false;
  const rng = new Uint32ArrayCtor(4);  // the generator's state (no boxed numbers per draw)
  function splitmix32(a) {
    let t = (a + 0x9e3779b9) | 0;
    t = MathImul(t ^ (t >>> 16), 0x21f0aaad);
    t = MathImul(t ^ (t >>> 15), 0x735a2d97);
    return (t ^ (t >>> 15)) >>> 0;
  }
  function next32() {
    const a = rng[0], b = rng[1];
    const r = MathImul(b, 5);
    const c = rng[2] ^ a;
    const d = rng[3] ^ b;
    rng[0] = a ^ d;
    rng[1] = b ^ c;
    rng[2] = c ^ (b << 9);
    rng[3] = (d << 11) | (d >>> 21);
    return MathImul((r << 7) | (r >>> 25), 9) >>> 0;
  }
  function random() {
    if (!seeded) {
      const x = envRead(1) * 9007199254740992;  // the seed's 53 bits
      const lo = x >>> 0;
      const hi = (x - lo) / 4294967296;
      rng[0] = splitmix32(lo);
      rng[1] = splitmix32(hi ^ rng[0]);
      rng[2] = splitmix32(lo ^ rng[1]);
      rng[3] = splitmix32(hi ^ rng[2]);
      if ((rng[0] | rng[1] | rng[2] | rng[3]) === 0) rng[0] = 1;
      seeded = true;
    }
    return ((next32() >>> 5) * 67108864 + (next32() >>> 6)) / 9007199254740992;
  }

  // Called by boot: the record to replay (an array of numbers from the config), or none.
  function envReset(record) {
    readRuns = 0;
    seeded = false;
    replay = ArrayIsArray(record) && record.length >= 3 ? record : null;
    replayAt = 0;
    replayLeft = replay !== null ? replay[2] : 0;
  }

  // Date: `new Date()`, `Date()` and `Date.now()` read the clock once each. `new Date(...)` with
  // arguments and every Date.prototype method read none (a no-argument Date holds the value its
  // construction read). Subclasses construct through here too.
  const DateWrapper = new ProxyCtor(IntrinsicDate, {
    __proto__: null,
    construct(target, args, newTarget) {
      return ReflectConstruct(target, args.length === 0 ? [clock()] : args, newTarget === DateWrapper ? target : newTarget);
    },
    apply() {
      return dateToString(new IntrinsicDate(clock()));
    },
  });
  const defineMethod = (owner, name, fn) => {
    ObjectDefineProperty(owner, name, { value: fn, writable: true, configurable: true, enumerable: false });
  };
  defineMethod(IntrinsicDate, "now", { now() { return clock(); } }.now);
  defineMethod(IntrinsicDate.prototype, "constructor", DateWrapper);
  defineMethod(global, "Date", DateWrapper);
  defineMethod(Math, "random", { random() { return random(); } }.random);

  // Intl.DateTimeFormat formats the current time when given no date.
  const DateTimeFormatProto = Intl.DateTimeFormat.prototype;
  const formatGetter = getter(DateTimeFormatProto, "format");
  const formatToParts = DateTimeFormatProto.formatToParts;
  const weakMapGet = uncurry(WeakMap.prototype.get);
  const weakMapSet = uncurry(WeakMap.prototype.set);
  const boundFormats = new WeakMap();  // the intrinsic bound format -> ours (one per formatter)
  const formatAccessor = Object.getOwnPropertyDescriptor({
    get format() {
      const intrinsic = formatGetter(this);
      let f = weakMapGet(boundFormats, intrinsic);
      if (f === undefined) {
        f = (date) => intrinsic(date === undefined ? clock() : date);
        weakMapSet(boundFormats, intrinsic, f);
      }
      return f;
    },
  }, "format").get;
  ObjectDefineProperty(DateTimeFormatProto, "format", {
    get: formatAccessor, set: undefined, configurable: true, enumerable: false,
  });
  defineMethod(DateTimeFormatProto, "formatToParts", {
    formatToParts(date) { return ReflectApply(formatToParts, this, [date === undefined ? clock() : date]); },
  }.formatToParts);

  // Temporal.Now: every function reads the clock once (millisecond resolution, like Date).
  // V8 builds its Temporal namespace (every constructor and prototype, ~90 KiB of heap) on the
  // first read of globalThis.Temporal, and defining over that property builds it too; deleting it
  // does not. So the global is deleted unread and replaced by an accessor that builds the
  // namespace on the cell's first use: V8's constructors, reached through
  // Date.prototype.toTemporalInstant (which makes them without the namespace), and a Now of our
  // own whose functions read through `clock`. V8's own Temporal.Now stays unreachable: the only
  // way to it was the deleted property. A cell that replaced the constructors' methods before
  // its first use of Temporal gets what it put there (it changes only its own calls).
  if (ReflectApply(ObjectHasOwn, global, ["Temporal"])) {
    // Everything below that runs at the cell's first use calls only what is captured here, and
    // its property descriptors have no prototype (a cell's Object.prototype.get changes nothing).
    const DateProto = IntrinsicDate.prototype;
    const ObjectGetPrototypeOf = Object.getPrototypeOf;
    const ObjectGetOwnPropertyDescriptor = Object.getOwnPropertyDescriptor;
    const ObjectCreate = Object.create;
    const ObjectPrototype = Object.prototype;
    const IntlDateTimeFormat = Intl.DateTimeFormat;
    const IntlResolvedOptions = IntlDateTimeFormat.prototype.resolvedOptions;
    const toStringTag = Symbol.toStringTag;
    const define = (owner, key, value, writable) => {
      ObjectDefineProperty(owner, key, { __proto__: null, value, writable, configurable: true, enumerable: false });
    };
    const resolvedTimeZone = () => ReflectApply(IntlResolvedOptions, new IntlDateTimeFormat(), []).timeZone;
    const classOf = (value) => ObjectGetPrototypeOf(value).constructor;
    // The optional time zone argument (V8's functions have length 0, so these take no parameter).
    const tzOf = (args) => (args.length > 0 ? args[0] : undefined);
    const build = () => {
      // The lazy toTemporalInstant makes V8's Temporal constructors (not the global namespace).
      const instant0 = ReflectApply(DateProto.toTemporalInstant, new IntrinsicDate(0), []);
      const Instant = classOf(instant0);
      const instantProto = Instant.prototype;
      const toZoned = instantProto.toZonedDateTimeISO;
      const zoned0 = ReflectApply(toZoned, instant0, ["UTC"]);
      const ZonedDateTime = classOf(zoned0);
      const zonedProto = ZonedDateTime.prototype;
      const toPlainDateTime = zonedProto.toPlainDateTime;
      const toPlainDate = zonedProto.toPlainDate;
      const toPlainTime = zonedProto.toPlainTime;
      const date0 = ReflectApply(toPlainDate, zoned0, []);
      const PlainDate = classOf(date0);
      const datePro = PlainDate.prototype;
      const members = [
        "PlainDate", PlainDate,
        "PlainTime", classOf(ReflectApply(toPlainTime, zoned0, [])),
        "PlainDateTime", classOf(ReflectApply(toPlainDateTime, zoned0, [])),
        "ZonedDateTime", ZonedDateTime,
        "Duration", classOf(ReflectApply(instantProto.since, instant0, [instant0])),
        "Instant", Instant,
        "PlainYearMonth", classOf(ReflectApply(datePro.toPlainYearMonth, date0, [])),
        "PlainMonthDay", classOf(ReflectApply(datePro.toPlainMonthDay, date0, [])),
      ];
      const instantFromMs = Instant.fromEpochMilliseconds;
      const instant = () => ReflectApply(instantFromMs, Instant, [clock()]);
      const zoned = (tz) => ReflectApply(toZoned, instant(), [tz === undefined ? resolvedTimeZone() : tz]);
      const Now = ObjectCreate(ObjectPrototype);
      define(Now, "instant", { instant() { return instant(); } }.instant, true);
      define(Now, "timeZoneId", { timeZoneId() { return resolvedTimeZone(); } }.timeZoneId, true);
      define(Now, "plainDateTimeISO", { plainDateTimeISO() { return ReflectApply(toPlainDateTime, zoned(tzOf(arguments)), []); } }.plainDateTimeISO, true);
      define(Now, "zonedDateTimeISO", { zonedDateTimeISO() { return zoned(tzOf(arguments)); } }.zonedDateTimeISO, true);
      define(Now, "plainDateISO", { plainDateISO() { return ReflectApply(toPlainDate, zoned(tzOf(arguments)), []); } }.plainDateISO, true);
      define(Now, "plainTimeISO", { plainTimeISO() { return ReflectApply(toPlainTime, zoned(tzOf(arguments)), []); } }.plainTimeISO, true);
      define(Now, toStringTag, "Temporal.Now", false);
      const ns = ObjectCreate(ObjectPrototype);
      define(ns, "Now", Now, true);
      for (let i = 0; i < members.length; i += 2) define(ns, members[i], members[i + 1], true);
      define(ns, toStringTag, "Temporal", false);
      return ns;
    };
    const settle = (value) => define(global, "Temporal", value, true);  // a data property again
    delete global.Temporal;  // unread: deleting does not make V8 build it
    const accessor = ObjectGetOwnPropertyDescriptor({
      get Temporal() { const ns = build(); settle(ns); return ns; },
      set Temporal(value) { settle(value); },
    }, "Temporal");
    ObjectDefineProperty(global, "Temporal", {
      get: accessor.get, set: accessor.set, configurable: true, enumerable: false,
    });
  }

  // Removed: what the garbage collector's timing decides (a WeakRef's target, when a
  // FinalizationRegistry callback runs) differs between a run and its replay.
  for (const name of ["WeakRef", "FinalizationRegistry"]) {
    try { delete global[name]; } catch (_) { /* keep going */ }
  }

  // ---------------------------------------------------------------- globals
  function defineGlobal(name, value) {
    ObjectDefineProperty(global, name, { value, writable: true, configurable: true, enumerable: false });
  }

  const consoleObject = ObjectFreeze({
    log: consoleMethod(), info: consoleMethod(), warn: consoleMethod(),
    error: consoleMethod(), debug: consoleMethod(),
  });

  defineGlobal("text", text);
  defineGlobal("image", image);
  defineGlobal("notify", notify);
  defineGlobal("store", store);
  defineGlobal("load", load);
  defineGlobal("yield_control", yield_control);
  defineGlobal("exit", exit);
  defineGlobal("setTimeout", setTimeout);
  defineGlobal("clearTimeout", clearTimeout);
  defineGlobal("console", consoleObject);

  function unsupportedImport() {
    return PromiseCtor.reject(new ErrorCtor("unsupported import in exec"));
  }

  // ---------------------------------------------------------------- catalog (docs/model-tools.md)
  // `catalog.search(query, {limit})` and `catalog.describe(name)` answer from what the cell got at
  // boot (the tools' identifiers and descriptions, and their reference entries as JSON text, parsed
  // on the first describe): no host round trip, no tool call, no frontier. Tools that match more
  // of the query's words rank first; among those, BM25 over the words of identifiers (weighted up)
  // and descriptions, with partial credit for a query word that begins a word of the tool. The
  // index is built on the first search.
  const catalogApi = (function () {
    const StrLower = String.prototype.toLowerCase;
    const StrCharCodeAt = String.prototype.charCodeAt;
    const StrSlice = String.prototype.slice;
    const StrStartsWith = String.prototype.startsWith;
    const ArraySort = Array.prototype.sort;
    const MathLog = Math.log;
    const MathFloor = Math.floor;
    const NumberIsInteger = Number.isInteger;
    const SetCtor = Set;
    const SetHas = Set.prototype.has;
    const SetAdd = Set.prototype.add;
    const MapGet = Map.prototype.get;
    const MapSet = Map.prototype.set;
    const MapHas = Map.prototype.has;
    const K1 = 1.2, B = 0.75, IDENT_WEIGHT = 2.5, PREFIX_WEIGHT = 0.4, COORD = 1e6;

    let catalogTools = [];       // [{name, ident, description}]
    let referenceJson = null;    // JSON text of the reference entries, until parsed
    let reference = null;        // the parsed entries (an array of strings), or false if unusable
    let index = null;            // built by the first search

    const lower = (s) => ReflectApply(StrLower, s, []);
    const code = (s, i) => ReflectApply(StrCharCodeAt, s, [i]);
    const slice = (s, a, b) => ReflectApply(StrSlice, s, [a, b]);
    const mapGet = (m, k) => ReflectApply(MapGet, m, [k]);
    const mapSet = (m, k, v) => ReflectApply(MapSet, m, [k, v]);
    const mapHas = (m, k) => ReflectApply(MapHas, m, [k]);
    const setHas = (m, k) => ReflectApply(SetHas, m, [k]);

    // A word as it is compared: lower case, a plural "s" (or "ies") folded away.
    function normalize(word) {
      let w = lower(word);
      const n = w.length;
      if (n > 4 && slice(w, n - 3, n) === "ies") w = slice(w, 0, n - 3) + "y";
      else if (n > 3 && code(w, n - 1) === 115 && code(w, n - 2) !== 115) w = slice(w, 0, n - 1);
      return w;
    }

    // The words of a text: runs of letters and digits (any non-ASCII character counts as a
    // letter), also split where a lower-case letter or digit meets an upper-case one (camelCase).
    function words(text) {
      const out = [];
      let start = -1;
      let prevLower = false;
      const n = text.length;
      for (let i = 0; i <= n; i++) {
        const c = i < n ? code(text, i) : 32;
        const upper = c >= 65 && c <= 90;
        const lowerOrDigit = (c >= 97 && c <= 122) || (c >= 48 && c <= 57);
        const word = upper || lowerOrDigit || c >= 128;
        if (start >= 0 && (!word || (upper && prevLower))) {
          out[out.length] = normalize(slice(text, start, i));
          start = -1;
        }
        if (word && start < 0) start = i;
        prevLower = lowerOrDigit || c >= 128;
      }
      return out;
    }

    function buildIndex() {
      const docs = [];
      const df = new MapCtor();
      let totalLength = 0;
      for (let i = 0; i < catalogTools.length; i++) {
        const t = catalogTools[i];
        const ident = new SetCtor();
        const all = new SetCtor();
        const distinct = [];
        const add = (w) => {
          if (!setHas(all, w)) {
            ReflectApply(SetAdd, all, [w]);
            distinct[distinct.length] = w;
          }
        };
        const identWords = words(t.ident);
        for (let k = 0; k < identWords.length; k++) {
          ReflectApply(SetAdd, ident, [identWords[k]]);
          add(identWords[k]);
        }
        const tf = new MapCtor();
        const descWords = words(t.description);
        for (let k = 0; k < descWords.length; k++) {
          const w = descWords[k];
          mapSet(tf, w, (mapHas(tf, w) ? mapGet(tf, w) : 0) + 1);
          add(w);
        }
        for (let k = 0; k < distinct.length; k++) {
          const w = distinct[k];
          mapSet(df, w, (mapHas(df, w) ? mapGet(df, w) : 0) + 1);
        }
        totalLength += descWords.length;
        docs[docs.length] = { ident, tf, length: descWords.length, distinct, key: compact(t.ident) };
      }
      const n = catalogTools.length;
      return { docs, df, n, avgLength: n > 0 ? totalLength / n || 1 : 1 };
    }

    function compact(text) {
      const list = words(text);
      let out = "";
      for (let k = 0; k < list.length; k++) out += list[k];
      return out;
    }

    function idf(word) {
      const d = mapHas(index.df, word) ? mapGet(index.df, word) : 0;
      return MathLog(1 + (index.n - d + 0.5) / (d + 0.5));
    }

    // Tools matching more of the query's words rank first; BM25 orders those matching as many.
    function score(doc, query, weights, whole) {
      let total = 0;
      let matched = 0;
      for (let q = 0; q < query.length; q++) {
        const word = query[q];
        const w = weights[q];
        let s = 0;
        if (setHas(doc.ident, word)) s += IDENT_WEIGHT * w;
        const tf = mapHas(doc.tf, word) ? mapGet(doc.tf, word) : 0;
        if (tf > 0) {
          s += w * (tf * (K1 + 1)) / (tf + K1 * (1 - B + (B * doc.length) / index.avgLength));
        }
        if (s === 0 && word.length >= 3) {
          const distinct = doc.distinct;
          for (let k = 0; k < distinct.length; k++) {
            const d = distinct[k];
            if (d.length > word.length && ReflectApply(StrStartsWith, d, [word])) {
              s = PREFIX_WEIGHT * w;
              break;
            }
          }
        }
        if (s > 0) matched++;
        total += s;
      }
      if (total > 0 && whole.length >= 4) {
        if (doc.key === whole) total += IDENT_WEIGHT * 2;
      }
      return total > 0 ? matched * COORD + total : 0;
    }

    function search(query, options) {
      if (typeof query !== "string") {
        return PromiseCtor.reject(new TypeErrorCtor("catalog.search expects a query string"));
      }
      let limit = 10;
      if (options !== undefined) {
        if (options === null || typeof options !== "object") {
          return PromiseCtor.reject(new TypeErrorCtor("catalog.search options must be an object like {limit: 10}"));
        }
        const given = options.limit;
        if (given !== undefined) {
          if (typeof given !== "number" || !NumberIsInteger(given) || given < 1) {
            return PromiseCtor.reject(new TypeErrorCtor("catalog.search limit must be a positive integer"));
          }
          limit = given;
        }
      }
      if (index === null) index = buildIndex();
      const seen = new SetCtor();
      const terms = [];
      const weights = [];
      const queryWords = words(query);
      for (let k = 0; k < queryWords.length; k++) {
        const w = queryWords[k];
        if (setHas(seen, w)) continue;
        ReflectApply(SetAdd, seen, [w]);
        terms[terms.length] = w;
        weights[weights.length] = idf(w);
      }
      const whole = compact(query);
      const hits = [];
      if (terms.length > 0) {
        for (let i = 0; i < index.docs.length; i++) {
          const s = score(index.docs[i], terms, weights, whole);
          if (s > 0) hits[hits.length] = [s, i];
        }
      }
      ReflectApply(ArraySort, hits, [(a, b) => (b[0] - a[0]) || (a[1] - b[1])]);
      const result = [];
      const count = hits.length < limit ? hits.length : MathFloor(limit);
      for (let k = 0; k < count; k++) {
        const t = catalogTools[hits[k][1]];
        result[result.length] = { name: t.ident, description: t.description };
      }
      return PromiseCtor.resolve(result);
    }

    function referenceEntry(i) {
      if (reference === null) {
        reference = false;
        if (typeof referenceJson === "string") {
          try {
            const parsed = JSONparse(referenceJson);
            if (ArrayIsArray(parsed) && parsed.length === catalogTools.length) reference = parsed;
          } catch (_) { /* unusable: descriptions alone */ }
        }
        referenceJson = null;
      }
      if (reference !== false && typeof reference[i] === "string") return reference[i];
      const t = catalogTools[i];
      return "### `" + t.ident + "`\n" + t.description;
    }

    function describe(name) {
      if (typeof name === "string") {
        for (let i = 0; i < catalogTools.length; i++) {
          if (catalogTools[i].ident === name) return PromiseCtor.resolve(referenceEntry(i));
        }
        for (let i = 0; i < catalogTools.length; i++) {
          if (catalogTools[i].name === name) return PromiseCtor.resolve(referenceEntry(i));
        }
      }
      let shown;
      try { shown = StringCtor(name); } catch (_) { shown = typeof name; }
      return PromiseCtor.reject(new ErrorCtor("unknown tool " + shown));
    }

    const searchTools = search;
    const describeTool = describe;
    const api = ObjectFreeze({
      search(query, options) { return searchTools(query, options); },
      describe(name) { return describeTool(name); },
    });

    return {
      // Called by boot: this cell's tools and their reference entries (JSON text or undefined).
      reset(tools, json) {
        const list = [];
        for (let i = 0; i < tools.length; i++) {
          const t = tools[i];
          list[list.length] = { name: t.name, ident: t.ident, description: StringCtor(t.description) };
        }
        catalogTools = list;
        referenceJson = typeof json === "string" ? json : null;
        reference = null;
        index = null;
        defineGlobal("catalog", api);
      },
    };
  })();

  // ---------------------------------------------------------------- the bridge
  const bridge = ObjectFreeze({
    // Every piece of per-cell state starts afresh here, so an isolate warmed up by a throwaway
    // boot/run/drain (which compiles this file's hot functions ahead of time) carries nothing of
    // it into the real cell.
    boot(configText, storedText) {
      const config = JSONparse(configText);
      envReset(config.replay);
      outbox = "";
      lastYield = false;
      settled = null;
      exited = false;
      limitHit = false;
      callsIssued = 0;
      mapClear(pending);
      timers.clear();
      freshTimers.clear();
      timerSeq = 0;
      outputBytes = 0;
      externalBytes = 0;
      externalRecords = makeMap();
      recordSerial = 0;
      sweepAt = 1024;
      pausable = config.pausable === true;
      limits = config.limits;
      toolDefs = config.tools;
      catalogApi.reset(toolDefs, config.reference);
      stored = makeMap();
      freshStores = makeMap();
      snapshotText = typeof storedText === "string" ? storedText : "{}";
      snapshot = null;
      storedBytes = config.storedBytes;
      ownSizes = makeMap();
      ownBytes = 0;
      creditBytes = 0;
      creditKnown = false;
      const toolsObject = {};
      const all = [];
      toolDefs.forEach((t, index) => {
        toolsObject[t.ident] = makeTool(index, t.name, t.kind);
        all.push(ObjectFreeze({ name: t.ident, description: t.description }));
      });
      defineGlobal("tools", ObjectFreeze(toolsObject));
      defineGlobal("ALL_TOOLS", ObjectFreeze(all));
      ObjectDefineProperty(global, "__codemode_import", {
        value: unsupportedImport, writable: false, configurable: false, enumerable: false,
      });
    },

    run(source) {
      // Indirect eval at global scope keeps the cell's line numbers in stack traces (the
      // Function constructor would add two header lines) and gives it no access to this closure.
      let body;
      try {
        body = globalEval('(async function () {"use strict";' + source + "\n})\n//# sourceURL=cell.js");
      } catch (e) {
        settleBody(e, true);
        return;
      }
      let promise;
      try {
        promise = ReflectApply(PromiseResolve, PromiseCtor, [typeof body === "function" ? body() : body]);
      } catch (e) {
        settleBody(e, true);
        return;
      }
      promiseThen(
        promise,
        () => settleBody(undefined, false),
        (e) => {
          if (e === EXIT || e === LIMIT) return;
          settleBody(e, true);
        },
      );
    },

    // Compile a body alone, running none of it: true when it is valid JavaScript (the host asks
    // this before choosing between a source as written and its stripped TypeScript).
    compiles(source) {
      try {
        new AsyncFunctionCtor('"use strict";\n' + source);
        return true;
      } catch (_) {
        return false;
      }
    },

    start(configText, storedText, source) {
      // The body is first compiled on its own by the function constructor (so it cannot close
      // the wrapper early), and its SyntaxError, uncaught here, reaches the host with V8's own
      // line and caret, which the host reports as `cell.js:LINE:COLUMN` (docs/cells.md).
      new AsyncFunctionCtor('"use strict";\n' + source);
      bridge.boot(configText, storedText);
      journalReset();
      bridge.run(source);
    },

    // The output journal's buffer, or with "reads" the buffer of the environment's reads (the
    // host keeps a view of the memory of each).
    journal(which) {
      return which === "reads" ? readBuffer : journalBuffer;
    },

    // Posted by the host right behind a step and its drain when the cell's calls answer
    // quickly (engine/v8.py, docs/call-path.md "Polling for a quick answer"): keeps the
    // isolate's thread running, instead of waiting to be woken, until the host posts the next
    // call (it changes the hold word first), for at most HOLD_POLLS polls. Touches nothing
    // else: the cell's state is the same whether it ran or not.
    hold() {
      for (let i = 0; i < HOLD_POLLS; i++) {
        if (AtomicsLoad(holdWord, 0) !== holdSeen) return;
      }
    },

    // `inputsText` absent: the inputs are in the inbox.
    step(inputsText) {
      const inputs = JSONparse(inputsText === undefined ? readInbox() : inputsText);
      for (let i = 0; i < inputs.length; i++) {
        const input = inputs[i];
        if (settled !== null) return;
        if (input[0] === "r") {
          const entry = mapGet(pending, input[1]);
          if (entry === undefined) continue;
          mapDelete(pending, input[1]);
          if (input[2]) entry.resolve(input[3]);
          else entry.reject(new ErrorCtor(input[3]));
        } else {
          const callback = timers.get(input[1]);
          if (callback === undefined) continue;
          timers.delete(input[1]);
          try {
            callback();
          } catch (e) {
            if (e !== EXIT && e !== LIMIT) settleBody(e, true);
          }
        }
      }
    },

    // Nothing is emptied until the report's text is whole: the commit at the end assigns
    // variables and calls no function, and V8 only sees a termination at a function's entry or
    // a loop's back edge. So a drain stopped part way (a stopped cell's termination can reach
    // the drain queued behind it, engine/v8.py _drain_stopped) leaves the outbox, the timers
    // and stores set since the last drain and the read count as they were: the next drain
    // reports them. The output journal is not touched here at all: the host empties it once it
    // has the report, so the output of a drain terminated after its commit (mini-racer then
    // drops its report) is still there for the host to read. The fresh maps are swapped with
    // spares emptied here, before the commit.
    drain() {
      spareTimers.clear();
      spareStores.clear();
      let events = outbox;
      const add = (ev) => { events = events === "" ? headText(ev) + "]" : events + "," + headText(ev) + "]"; };
      freshTimers.forEach((ms, id) => { add(["timer", id, ms]); });
      freshStores.forEach((json, k) => { add(["store", k, json]); });
      let ids = "null";
      if (pausable) {
        ids = "";
        mapForEach(pending, (_, id) => { ids += (ids === "" ? "" : ",") + JSONstringify(id); });
        ids = "[" + ids + "]";
      }
      let end = "null";
      if (settled !== null) {
        if (settled.ok) end = '{"ok":true}';
        else if (hasOwn(settled, "limit")) end = '{"ok":false,"limit":' + JSONstringify(settled.limit) + "}";
        else end = '{"ok":false,"error":' + JSONstringify(settled.error) + "}";
      }
      const reads = readRuns === 0 ? "" : ',"reads":' + readRuns;
      const text = '{"ev":[' + events + '],"pending":' + ids + ',"settled":' + end + reads + "}";
      const seen = AtomicsLoad(holdWord, 0);
      // The commit.
      const usedTimers = freshTimers;
      freshTimers = spareTimers;
      spareTimers = usedTimers;
      const usedStores = freshStores;
      freshStores = spareStores;
      spareStores = usedStores;
      outbox = "";
      lastYield = false;
      readRuns = 0;
      holdSeen = seen;
      return text;
    },

    // Replay (engine/v8.py replay_steps, docs/durability.md): the recorded inputs of many steps
    // at once, a JSON array of step() texts (as an argument, or in the inbox). replayQueue
    // applies the first; each replayNext returns the report of the step before (as drain()
    // does, its environment reads inline: the read buffer is rewritten before the host looks)
    // and applies the next; replayDrain reports the last. One task per step: V8 runs the
    // microtasks of a step after its task, before the next task drains them.
    replayQueue(stepsText) {
      replaySteps = JSONparse(stepsText === undefined ? readInbox() : stepsText);
      replayStepAt = 0;
      replayApply();
    },
    replayNext() {
      const report = bridge.replayDrain();
      replayApply();
      return report;
    },
    replayDrain() {
      let reads = "";
      if (readRuns > 0) {
        for (let i = 0; i < 3 * readRuns; i++) reads += (i === 0 ? "" : ",") + readSlots[i];
        readRuns = 0;  // drain() adds no count: the runs go inline
      }
      const report = bridge.drain();
      if (reads === "") return report;
      return stringSlice(report, 0, report.length - 1) + ',"reads":[' + reads + "]}";
    },
  });
  let replaySteps = null;  // replayQueue's step texts
  let replayStepAt = 0;
  function replayApply() {
    if (replaySteps === null || replayStepAt >= replaySteps.length) {
      replaySteps = null;
      return;
    }
    const text = replaySteps[replayStepAt];
    replaySteps[replayStepAt++] = null;
    bridge.step(text);
  }

  // The bridge is the completion value of this script: only the host holds it (no global
  // names it), so a cell can neither call it nor boot it again.
  return bridge;
})(globalThis);
