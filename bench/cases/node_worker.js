#!/usr/bin/env node
/**
 * Node.js workers for the bench (`bench.cases.feedwork_node`): W `Worker`s of the Node SDK
 * (clients/node/dist, built with `cd clients/node && npm ci && npm run build`) in this one
 * process, each on its own Consume stream, held at the starting line:
 *
 *     node bench/cases/node_worker.js --sdk clients/node/dist/index.js --target HOST:PORT
 *         --queue Q [--workers 4] [--concurrency 64] [--mode drain|dispatch]
 *
 * It loads the SDK and makes the workers, prints `READY {"pid": ..., "port": 0}`, and waits
 * for commands on stdin, one a line:
 *
 *   GO     run the workers (`worker.run()`);
 *   STATS  print `STATS {json}`: the workers' counters, summed;
 *   EOF    (the benchmark closed the pipe, or went away) stop the workers gracefully
 *          (running tasks get --grace seconds), print `DONE {json}`, exit 0.
 *
 * SIGTERM stops them the same way; a second SIGTERM, or --max-seconds (default 600) after
 * the start, exits at once. A worker whose run() fails prints `FAILED message` and the
 * process exits 1. The benchmark also starts this with PR_SET_PDEATHSIG (setpriv), so it
 * cannot outlive it.
 *
 * Handlers: `drain` returns a small result at once (no work); `dispatch` also prints
 * `L seconds` for each task: its start in the handler minus the perf_counter stamp that
 * the benchmark put in the first 8 bytes of the payload (both clocks are CLOCK_MONOTONIC:
 * Python's time.perf_counter and Node's process.hrtime).
 *
 * No dependencies beyond the SDK's own (it is required by path, so @grpc/grpc-js comes
 * from clients/node/node_modules).
 */
"use strict";

const path = require("node:path");
const { parseArgs } = require("node:util");

const USAGE =
  "usage: node_worker.js --sdk clients/node/dist/index.js --target HOST:PORT --queue Q " +
  "[--workers N] [--concurrency N] [--mode drain|dispatch] [--grace S] [--worker-id PREFIX] " +
  "[--max-seconds S]\n";
const RESULT = Buffer.from("ok");
const STOP_BOUND_MS = 8_000;

function parse(argv) {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    options: {
      sdk: { type: "string" },
      target: { type: "string" },
      queue: { type: "string" },
      workers: { type: "string", default: "4" },
      concurrency: { type: "string", default: "1" },
      mode: { type: "string", default: "drain" },
      grace: { type: "string", default: "0" },
      "worker-id": { type: "string", default: "bench-node" },
      "max-seconds": { type: "string", default: "600" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    process.stdout.write(USAGE);
    process.exit(0);
  }
  for (const name of ["sdk", "target", "queue"]) {
    if (!values[name]) throw new Error(`--${name} is required`);
  }
  if (values.mode !== "drain" && values.mode !== "dispatch") {
    throw new Error(`--mode must be drain or dispatch, got ${JSON.stringify(values.mode)}`);
  }
  const number = (name) => {
    const value = Number(values[name]);
    if (!Number.isFinite(value) || value < 0) throw new Error(`--${name}: not a number: ${values[name]}`);
    return value;
  };
  return {
    sdk: path.resolve(values.sdk),
    target: values.target,
    queue: values.queue,
    workers: number("workers"),
    concurrency: number("concurrency"),
    mode: values.mode,
    grace: number("grace"),
    workerId: values["worker-id"],
    maxSeconds: number("max-seconds"),
  };
}

function out(line) {
  process.stdout.write(`${line}\n`);
}

// As `python -m worker --log-level WARNING`: warnings and errors only, on stderr.
const logger = {
  info: () => undefined,
  warn: (m) => process.stderr.write(`node_worker WARNING ${m}\n`),
  error: (m) => process.stderr.write(`node_worker ERROR ${m}\n`),
};

function monotonicSeconds() {
  // CLOCK_MONOTONIC in microseconds (exact in a double), as Python's time.perf_counter.
  return Number(process.hrtime.bigint() / 1000n) / 1e6;
}

function handlerFor(mode) {
  if (mode === "drain") return async () => RESULT;
  return async (task) => {
    const latency = monotonicSeconds() - task.payload.readDoubleLE(0);
    out(`L ${latency}`);
    return RESULT;
  };
}

function main() {
  let options;
  try {
    options = parse(process.argv.slice(2));
  } catch (error) {
    process.stderr.write(`node_worker: ${error.message}\n${USAGE}`);
    return 2;
  }
  // Bounded in time whatever happens (unref: the timer alone keeps nothing alive).
  setTimeout(() => {
    process.stderr.write(`node_worker: still running after ${options.maxSeconds} s: exiting\n`);
    process.exit(3);
  }, options.maxSeconds * 1000).unref();
  // A benchmark that stopped reading our stdout is gone or done: nothing to tell it.
  process.stdout.on("error", () => undefined);

  const { Worker } = require(options.sdk);
  const handler = handlerFor(options.mode);
  const workers = [];
  for (let i = 0; i < options.workers; i++) {
    workers.push(
      new Worker({
        target: options.target,
        queue: options.queue,
        handler,
        concurrency: options.concurrency,
        grace: options.grace,
        workerId: `${options.workerId}-${i}`,
        transport: "stream",
        handleSignals: false,
        logger,
      }),
    );
  }

  const counters = () => {
    const sum = {};
    for (const worker of workers) {
      for (const [key, value] of Object.entries(worker.counters)) sum[key] = (sum[key] ?? 0) + value;
    }
    return sum;
  };

  let runs;
  let stopping = false;
  const go = () => {
    if (runs !== undefined || stopping) return;
    runs = workers.map((worker) =>
      worker.run().catch((error) => {
        out(`FAILED ${worker.workerId}: ${String(error && error.message ? error.message : error).replace(/\n/g, " ")}`);
        process.exitCode = 1;
        stop();
      }),
    );
  };
  const stop = () => {
    if (stopping) return;
    stopping = true;
    for (const worker of workers) worker.stop();
    setTimeout(() => {
      process.stderr.write("node_worker: the workers did not stop in time: exiting\n");
      process.exit(4);
    }, STOP_BOUND_MS).unref();
    Promise.allSettled(runs ?? []).then(() => {
      out(`DONE ${JSON.stringify(counters())}`);
      process.stdin.destroy();
    });
  };

  process.on("SIGTERM", () => {
    if (stopping) process.exit(130);
    stop();
  });

  let buffered = "";
  process.stdin.setEncoding("utf8");
  process.stdin.on("data", (chunk) => {
    buffered += chunk;
    let newline;
    while ((newline = buffered.indexOf("\n")) >= 0) {
      const command = buffered.slice(0, newline).trim();
      buffered = buffered.slice(newline + 1);
      if (command === "GO") go();
      else if (command === "STATS") out(`STATS ${JSON.stringify(counters())}`);
      else if (command !== "") process.stderr.write(`node_worker: unknown command ${JSON.stringify(command)}\n`);
    }
  });
  // EOF: the benchmark is done with us, or gone.
  process.stdin.on("end", stop);
  process.stdin.on("error", stop);

  out(`READY ${JSON.stringify({ pid: process.pid, port: 0 })}`);
  return undefined;
}

const code = main();
if (code !== undefined) process.exitCode = code;
