// Several feeders on one PostgreSQL database: a worker given both addresses loses one
// feeder (SIGKILL) and carries on with the other, then loses that one too (the first is
// back by then); nothing is lost, nothing completed twice.
"use strict";
const assert = require("node:assert/strict");
const { execFileSync } = require("node:child_process");
const { test } = require("node:test");

const { FeederClient, Worker } = require("../dist/index.js");
const { Feeder, waitFor } = require("../testkit/feeder.js");

const ADMIN = process.env.FEEDWORK_TEST_POSTGRES || "postgresql://postgres@127.0.0.1:5432/postgres";

function psql(sql) {
  try {
    execFileSync("psql", [ADMIN, "-v", "ON_ERROR_STOP=1", "-qc", sql], { stdio: "pipe" });
  } catch (error) {
    throw new Error(`PostgreSQL at ${ADMIN} is needed ('make services' starts it): ${error.stderr || error.message}`);
  }
}

test("a worker with two feeders' addresses goes on when either is killed", async () => {
  const name = `feedwork_node_test_${process.pid}`;
  psql(`CREATE DATABASE ${name}`);
  const url = new URL(ADMIN);
  url.pathname = `/${name}`;
  const one = new Feeder({ db: url.toString() });
  const two = new Feeder({ db: url.toString() });
  let client;
  let worker;
  let running;
  try {
    await one.start();
    await two.start();
    client = new FeederClient({ target: `${one.target},${two.target}` });
    const queue = "two-feeders";
    await client.submitMany(Array.from({ length: 600 }, (_, i) => ({ queue, payload: String(i) })));
    const acked = new Map();
    worker = new Worker({
      target: `${one.target},${two.target}`,
      queue,
      concurrency: 8,
      leaseDuration: 2,
      handleSignals: false,
      logger: { info() {}, warn() {}, error() {} },
      handler: async (task) => {
        await new Promise((r) => setTimeout(r, 5));
        return task.text();
      },
    });
    worker.on("ack", (e) => {
      if (e.outcome === "ACKED" || e.outcome === "ADOPTED") acked.set(e.taskId, (acked.get(e.taskId) ?? 0) + 1);
    });
    running = worker.run();
    await waitFor(async () => (await client.queueStats(queue)).completed >= 150, { what: "150 completed" });
    await one.kill9();
    await waitFor(async () => (await client.queueStats(queue)).completed >= 300, { within: 30_000, what: "300 completed" });
    await one.start();
    await two.kill9();
    const stats = await waitFor(
      async () => {
        const q = await client.queueStats(queue);
        return q.completed === 600 ? q : null;
      },
      { within: 60_000, what: "all 600 completed on the other feeder" },
    );
    assert.equal(stats.ready + stats.leased + stats.dead, 0);
    assert.ok([...acked.values()].every((n) => n === 1), "no task acknowledged as completed twice");
    // The worker's stream was on one of them: it reconnected at least once.
    assert.ok(worker.counters.reconnects >= 1, `reconnects: ${worker.counters.reconnects}`);
  } finally {
    worker?.stop();
    await running?.catch(() => undefined);
    client?.close();
    await one.stop();
    await two.stop();
    psql(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  }
});
