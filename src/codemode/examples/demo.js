// The codemode demo cell: three nested tool calls in parallel, a yield, a caught tool error,
// a stored value, and a summary. Run it with `codemode run --example`.
const started = Date.now();
notify("calling echo, sleep and upper in parallel");
const [echoed, slept, shouted] = await Promise.all([
  tools.echo({ greeting: "hello from a cell" }),
  tools.sleep({ ms: 300 }),
  tools.upper("code mode"),
]);
text(`echo   -> ${JSON.stringify(echoed)}`);
text(`sleep  -> ${JSON.stringify(slept)}`);
text(`upper  -> ${JSON.stringify(shouted)}`);
text(`three calls took ${Date.now() - started} ms together (the slowest alone sleeps 300 ms)`);
yield_control(); // hand what we have to the observer now; the cell keeps running

try {
  await tools.fail({ message: "the tool refused" });
} catch (error) {
  text(`fail   -> rejected in the cell: ${error.message}`);
}
const runs = (load("demo:runs") ?? 0) + 1;
store("demo:runs", runs);
const lengths = await Promise.all(["alpha", "beta", "gamma"].map((w) => tools.upper(w)));
text(`upper x3 in parallel -> ${lengths.join(", ")}`);
text("done");
