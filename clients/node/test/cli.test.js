// feedwork-node-worker, the command line worker, and a feeder without Consume.
"use strict";
const assert = require("node:assert/strict");
const { spawn } = require("node:child_process");
const fs = require("node:fs");
const path = require("node:path");
const { test } = require("node:test");
const grpc = require("@grpc/grpc-js");

const { FeederClient, Worker } = require("../dist/index.js");
const { feedworkV1 } = require("../dist/proto.js");
const { Feeder, feederEnv, tempDir, waitFor } = require("../testkit/feeder.js");

const CLI = path.resolve(__dirname, "..", "dist", "cli.js");

function run(args, options = {}) {
  const child = spawn(process.execPath, [CLI, ...args], { env: feederEnv(options.env), stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  child.stdout.on("data", (d) => (out += d));
  child.stderr.on("data", (d) => (out += d));
  const exited = new Promise((resolve) => child.on("close", (code, signal) => resolve({ code, signal, out })));
  return { child, exited, output: () => out };
}

test("--help, and a clear usage error (exit 2) for a missing or bad option", async () => {
  const help = await run(["--help"]).exited;
  assert.equal(help.code, 0);
  assert.match(help.out, /--handler FILE\[:EXPORT\]/);
  const missing = await run(["--handler", "x.js"]).exited;
  assert.equal(missing.code, 2);
  assert.match(missing.out, /--queue is required/);
  const bad = await run(["--queue", "q", "--handler", "x.js", "--concurrency", "two"]).exited;
  assert.equal(bad.code, 2);
  assert.match(bad.out, /--concurrency must be a whole number, got "two"/);
  const dir = tempDir();
  fs.writeFileSync(path.join(dir, "h.js"), "exports.other = () => 1;\n");
  const noExport = await run(["--queue", "q", "--handler", `${path.join(dir, "h.js")}:work`]).exited;
  assert.equal(noExport.code, 2);
  assert.match(noExport.out, /"work" is not a function exported by/);
});

test("runs a handler file from flags and FEEDWORK_* variables; SIGTERM stops it gracefully", async () => {
  const feeder = await new Feeder().start();
  const client = new FeederClient({ target: feeder.target });
  const dir = tempDir();
  const handler = path.join(dir, "jobs.mjs");
  fs.writeFileSync(handler, "export async function shout(task) { return task.text().toUpperCase(); }\n");
  const ledger = path.join(dir, "acks.jsonl");
  const ids = (await client.submitMany(["a", "b", "c"].map((p) => ({ queue: "cli-q", payload: p })))).map((r) => r.taskId);
  const worker = run(["--handler", `${handler}:shout`, "--concurrency", "2", "--ack-ledger", ledger, "--worker-id", "cli-1"], {
    env: { FEEDWORK_TARGET: feeder.target, FEEDWORK_QUEUE: "cli-q" },
  });
  try {
    for (const id of ids) {
      const task = await client.wait(id, { timeout: 15 });
      assert.equal(task.state, "COMPLETED");
      assert.equal(task.history[0].workerId, "cli-1");
    }
    assert.equal((await client.get(ids[1])).result.toString(), "B");
    await waitFor(() => fs.existsSync(ledger) && fs.readFileSync(ledger, "utf8").split("\n").length > 3, { what: "the ack ledger" });
    const lines = fs.readFileSync(ledger, "utf8").trim().split("\n").map((l) => JSON.parse(l));
    assert.deepEqual(lines.map((l) => l.task_id).sort(), [...ids].sort());
    const line = lines.find((l) => l.task_id === ids[2]);
    assert.equal(line.outcome, "ACKED");
    assert.equal(Buffer.from(line.result, "base64").toString(), "C");
    assert.equal(line.worker_id, "cli-1");
    assert.equal(line.attempt, 1);
    worker.child.kill("SIGTERM");
    const { code, out } = await worker.exited;
    assert.equal(code, 0, out);
    assert.match(out, /SIGTERM: stopping/);
  } finally {
    worker.child.kill("SIGKILL");
    client.close();
    await feeder.stop();
  }
});

test("a feeder without Consume (UNIMPLEMENTED): the worker leases with unary calls", async () => {
  // A stand-in feeder that offers Lease and Ack only.
  const server = new grpc.Server();
  const queue = [
    { taskId: "t1", queue: "old", payload: Buffer.from("one"), attempt: 1, leaseToken: "tok-1", maxAttempts: 3, leaseDeadline: { seconds: Math.floor(Date.now() / 1000) + 60 } },
    { taskId: "t2", queue: "old", payload: Buffer.from("two"), attempt: 1, leaseToken: "tok-2", maxAttempts: 3, leaseDeadline: { seconds: Math.floor(Date.now() / 1000) + 60 } },
  ];
  const acked = [];
  let leaseCalls = 0;
  server.addService(feedworkV1().Feeder.service, {
    Lease(call, callback) {
      leaseCalls += 1;
      assert.equal(call.request.queue, "old");
      const tasks = queue.splice(0, call.request.maxTasks);
      setTimeout(() => callback(null, { tasks }), tasks.length ? 0 : 100);
    },
    Ack(call, callback) {
      acked.push(...call.request.items.map((i) => [i.leaseToken, i.result.toString()]));
      callback(null, { results: call.request.items.map(() => ({ outcome: "ACK_OUTCOME_ACKED" })) });
    },
  });
  const port = await new Promise((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))),
  );
  const warnings = [];
  const worker = new Worker({
    target: `127.0.0.1:${port}`,
    queue: "old",
    concurrency: 4,
    wait: 0.1,
    handleSignals: false,
    logger: { info() {}, warn: (m) => warnings.push(m), error() {} },
    handler: (task) => `done ${task.text()}`,
  });
  const running = worker.run();
  try {
    await waitFor(() => acked.length === 2, { what: "two acks" });
    assert.deepEqual(acked.sort(), [["tok-1", "done one"], ["tok-2", "done two"]]);
    assert.ok(leaseCalls >= 1);
    assert.ok(warnings.some((w) => /no Consume stream/.test(w)), warnings.join("\n"));
  } finally {
    worker.stop();
    await running;
    server.forceShutdown();
  }
});
