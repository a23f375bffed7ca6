// The cell environment of codemode (SPEC section 2), evaluated once in every fresh V8 context.
//
// The host talks to this file only through `globalThis.__codemode`, with JSON in and JSON out:
//
//   __codemode.boot(config)   install tools, stored values and limits; returns nothing
//   __codemode.run(source)    compile the cell body and start it; returns nothing
//   __codemode.step(inputs)   apply tool results and fire timers, in the given order
//   __codemode.drain()        a JSON string: {ev: [...], pending: [...], settled: ...}
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
//   ["store", key, value]              store(key, value)
// `pending` is only reported for pausable cells (a continuing cell never takes a frontier).
// `settled` is null while the body runs, else {ok: true} or {ok: false, error: text} or
// {ok: false, limit: fieldName}.
// Each event is kept as JSON text from the moment it is emitted, with tool inputs and stored
// values embedded as the JSON they were converted to, so the host decodes every value once.
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
  const ErrorCtor = Error;
  const globalEval = eval;
  const gcFn = typeof global.gc === "function" ? global.gc : null;
  const IntrinsicArrayBuffer = ArrayBuffer;

  // Globals the sandbox removes (SPEC 2.8) or replaces with its own (timers, console).
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
  let outbox = [];
  let settled = null;           // the terminal report, once decided
  let exited = false;           // exit() was called: helpers are no-ops
  let limitHit = false;         // a limit was exceeded: helpers throw
  let pausable = false;
  let toolDefs = [];            // [{name, ident, kind}]
  let stored = new MapCtor();   // key -> JSON text (the cell's snapshot plus its own writes)
  let limits = { maxToolCalls: 1000, maxParallel: 100, maxOutputBytes: 1048576, maxExternalBytes: 67108864 };
  let callsIssued = 0;
  const pending = new MapCtor(); // call id -> {resolve, reject}
  const timers = new MapCtor();  // timer id -> callback
  let timerSeq = 0;
  let outputBytes = 0;

  // Thrown to unwind the cell after exit() or a limit; never an error of the cell itself.
  const EXIT = ObjectFreeze({ toString() { return "exit"; } });
  const LIMIT = ObjectFreeze({ toString() { return "limit exceeded"; } });

  const emit = (ev) => { outbox[outbox.length] = JSONstringify(ev); };
  // `json` is already JSON text: embed it as it is.
  const emitRaw = (head, json) => { outbox[outbox.length] = JSONstringify(head).slice(0, -1) + "," + json + "]"; };

  function failLimit(field) {
    if (!limitHit && settled === null) {
      limitHit = true;
      settled = { ok: false, limit: field };
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
    const n = utf8Length(s);
    if (outputBytes + n > limits.maxOutputBytes) failLimit("max_output_bytes");
    outputBytes += n;
  }

  // SPEC 2.2 "conversion to text".
  function toText(v) {
    const t = typeof v;
    if (v === undefined || v === null || t === "boolean" || t === "number" || t === "bigint" || t === "string") {
      return StringCtor(v);
    }
    const s = JSONstringify(v);
    return s === undefined ? StringCtor(v) : s;
  }

  // SPEC 2.9.
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
    stored.set(k, json);
    emitRaw(["store", k], json);
    return undefined;
  }

  function load(key) {
    let k;
    try { k = StringCtor(key); } catch (_) { throw new TypeErrorCtor("load key must be a string"); }
    const json = stored.get(k);
    return json === undefined ? undefined : JSONparse(json);
  }

  // ---------------------------------------------------------------- control
  function yield_control() {
    if (!checkAlive()) return undefined;
    if (!pausable) emit(["yield"]);
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
    const id = ++timerSeq;
    timers.set(id, callback);
    emit(["timer", id, ms]);
    return id;
  }

  function clearTimeout(id) {
    if (id === undefined || id === null) return undefined;
    if (typeof id !== "number") throw new TypeErrorCtor("clearTimeout expects a numeric timeout id");
    if (!NumberIsFinite(id) || id <= 0) return undefined;
    if (timers.delete(id)) emit(["clear", id]);
    return undefined;
  }

  // ---------------------------------------------------------------- nested tools
  function makeTool(index, name, kind) {
    return function () {
      // Conversion first, so its errors are thrown synchronously (SPEC 2.7).
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
      emitRaw(["call", id, index], json === undefined ? "{}" : json);
      return new PromiseCtor((resolve, reject) => { pending.set(id, { resolve, reject }); });
    };
  }

  // ---------------------------------------------------------------- external memory (SPEC 8.3)
  // V8's heap limit does not see ArrayBuffer backing stores (ENGINE-NOTES 2), so every way of
  // allocating one goes through `account`, which holds live bytes to limits.maxExternalBytes.
  // Live bytes are found by sweeping weak references after a full GC when the budget runs out.
  let externalBytes = 0;
  let externalRecords = [];
  let sweepAt = 1024;
  const accounted = new WeakSetCtor();

  function sweep() {
    const kept = [];
    let total = 0;
    for (const rec of externalRecords) {
      if (rec.ref.deref() !== undefined) { kept.push(rec); total += rec.n; }
    }
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

  function account(buffer) {
    if (!(buffer instanceof IntrinsicArrayBuffer) || accounted.has(buffer)) return;
    const n = buffer.resizable ? buffer.maxByteLength : buffer.byteLength;
    reserve(n);
    accounted.add(buffer);
    externalBytes += n;
    externalRecords.push({ ref: new WeakRefCtor(buffer), n });
    if (externalRecords.length > sweepAt) {
      sweep();
      sweepAt = Math.max(1024, externalRecords.length * 2);
    }
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
    const wrapper = new ProxyCtor(Intrinsic, {
      construct(target, args, newTarget) {
        const a0 = args[0];
        if (isBuffer) {
          let n = requestedLength(a0);
          const opts = args[1];
          if (opts !== null && typeof opts === "object" && opts.maxByteLength !== undefined) {
            n = Math.max(n, requestedLength(opts.maxByteLength));
          }
          reserve(n);
        } else if (a0 === null || typeof a0 !== "object") {
          reserve(requestedLength(a0) * bytesPerElement);
        } else if (!(a0 instanceof IntrinsicArrayBuffer)) {
          reserve(requestedLength(a0.length) * bytesPerElement);
        }
        const obj = ReflectConstruct(target, args, newTarget === wrapper ? target : newTarget);
        account(isBuffer ? obj : obj.buffer);
        return obj;
      },
    });
    ObjectDefineProperty(Intrinsic.prototype, "constructor", {
      value: wrapper, writable: true, configurable: true, enumerable: false,
    });
    ObjectDefineProperty(global, name, {
      value: wrapper, writable: true, configurable: true, enumerable: false,
    });
  }

  function wrapResultMethod(proto, method, resultBuffer) {
    const original = proto[method];
    if (typeof original !== "function") return;
    ObjectDefineProperty(proto, method, {
      value: {
        [method]() {
          const result = ReflectApply(original, this, arguments);
          account(resultBuffer(result));
          return result;
        },
      }[method],
      writable: true, configurable: true, enumerable: false,
    });
  }

  const typedArrayNames = [
    "Int8Array", "Uint8Array", "Uint8ClampedArray", "Int16Array", "Uint16Array", "Int32Array",
    "Uint32Array", "Float16Array", "Float32Array", "Float64Array", "BigInt64Array", "BigUint64Array",
  ];
  const TypedArrayPrototype = Object.getPrototypeOf(Uint8Array.prototype);
  for (const m of ["toReversed", "toSorted", "with", "slice", "map", "filter"]) {
    wrapResultMethod(TypedArrayPrototype, m, (r) => r.buffer);
  }
  for (const m of ["slice", "transfer", "transferToFixedLength"]) {
    wrapResultMethod(IntrinsicArrayBuffer.prototype, m, (r) => r);
  }
  wrapAllocator("ArrayBuffer");
  for (const name of typedArrayNames) wrapAllocator(name);

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

  // ---------------------------------------------------------------- catalog (SPEC 9.6)
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
    boot(config) {
      outbox = [];
      settled = null;
      exited = false;
      limitHit = false;
      callsIssued = 0;
      pending.clear();
      timers.clear();
      timerSeq = 0;
      outputBytes = 0;
      externalBytes = 0;
      externalRecords = [];
      sweepAt = 1024;
      pausable = config.pausable === true;
      limits = config.limits;
      toolDefs = config.tools;
      catalogApi.reset(toolDefs, config.reference);
      stored = new MapCtor();
      for (const key of Object.keys(config.stored)) stored.set(key, JSONstringify(config.stored[key]));
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
        promise = PromiseCtor.resolve(typeof body === "function" ? body() : body);
      } catch (e) {
        settleBody(e, true);
        return;
      }
      promise.then(
        () => settleBody(undefined, false),
        (e) => {
          if (e === EXIT || e === LIMIT) return;
          settleBody(e, true);
        },
      );
    },

    step(inputs) {
      for (const input of inputs) {
        if (settled !== null) return;
        if (input[0] === "r") {
          const entry = pending.get(input[1]);
          if (entry === undefined) continue;
          pending.delete(input[1]);
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

    drain() {
      const events = outbox;
      outbox = [];
      return '{"ev":[' + events.join(",") + '],"pending":' +
        (pausable ? JSONstringify([...pending.keys()]) : "null") +
        ',"settled":' + JSONstringify(settled) + "}";
    },
  });

  ObjectDefineProperty(global, "__codemode", {
    value: bridge, writable: false, configurable: false, enumerable: false,
  });
})(globalThis);
