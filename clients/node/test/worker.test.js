// The worker against a real feeder: what it reports for each outcome, lease extension,
// cancellation, shutdown, reconnection.
"use strict";
const assert = require("node:assert/strict");
const { after, before, describe, test } = require("node:test");

const { FeederClient, Fail, PermissionDenied, Retry, Worker, InvalidArgument } = require("../dist/index.js");
const { Feeder, sleep, waitFor } = require("../testkit/feeder.js");

const quiet = { info() {}, warn() {}, error() {} };

function startWorker(options) {
  const worker = new Worker({ handleSignals: false, logger: quiet, ...options });
  const acks = [];
  worker.on("ack", (event) => acks.push(event));
  const running = worker.run();
  return { worker, acks, running };
}

describe("Worker", () => {
  let feeder;
  let client;

  before(async () => {
    feeder = await new Feeder().start();
    client = new FeederClient({ target: feeder.target });
  });

  after(async () => {
    client.close();
    await feeder.stop();
  });

  async function submitN(queue, n, payload = (i) => JSON.stringify({ i }), extra = {}) {
    const results = await client.submitMany(Array.from({ length: n }, (_, i) => ({ queue, payload: payload(i), ...extra })));
    return results.map((r) => r.taskId);
  }

  async function settled(queue, n) {
    return waitFor(
      async () => {
        const q = await client.queueStats(queue);
        return q.completed + q.dead + q.cancelled >= n && q.ready + q.leased + q.scheduled === 0 ? q : null;
      },
      { within: 30_000, what: `${n} tasks of ${queue} to settle` },
    );
  }

  for (const transport of ["stream", "unary"]) {
    test(`completes every task once (${transport})`, async () => {
      const queue = `w-all-${transport}`;
      const ids = await submitN(queue, 300);
      let inFlight = 0;
      let most = 0;
      const { worker, acks, running } = startWorker({
        target: feeder.target,
        queue,
        concurrency: 8,
        transport,
        wait: 1,
        handler: async (task) => {
          most = Math.max(most, ++inFlight);
          await sleep(task.json().i % 3);
          inFlight--;
          return `done ${task.id}`;
        },
      });
      const stats = await settled(queue, 300);
      worker.stop();
      await running;
      assert.equal(stats.completed, 300);
      assert.ok(most <= 8, `at most 8 at once, saw ${most}`);
      assert.equal(acks.length, 300);
      assert.deepEqual(new Set(acks.map((a) => a.outcome)), new Set(["ACKED"]));
      assert.deepEqual(new Set(acks.map((a) => a.taskId)), new Set(ids));
      const task = await client.get(ids[17]);
      assert.equal(task.result.toString(), `done ${ids[17]}`);
      assert.equal(task.history[0].workerId, worker.workerId);
      assert.equal(worker.counters.succeeded, 300);
      assert.equal(worker.counters.acked, 300);
    });
  }

  test("Retry asks for another attempt, Fail kills the task, an error is recorded with its stack", async () => {
    const queue = "w-outcomes";
    const [retried, failed, thrown, result] = await submitN(queue, 4, (i) => ["retry", "fail", "throw", "object"][i], { maxAttempts: 3 });
    const { worker, running } = startWorker({
      target: feeder.target,
      queue,
      concurrency: 4,
      handler: (task) => {
        const what = task.text();
        if (what === "retry" && task.attempt === 1) throw new Retry("not yet", { after: 0.2, cause: new Error("upstream 503") });
        if (what === "fail") throw new Fail("bad input");
        if (what === "throw") throw new TypeError(`broken on attempt ${task.attempt}`);
        if (what === "object") return { ok: true };
        return Buffer.from("second time");
      },
    });
    const r = await client.wait(retried, { timeout: 15 });
    assert.equal(r.state, "COMPLETED");
    assert.equal(r.result.toString(), "second time");
    assert.deepEqual(r.history.map((a) => a.outcome), ["FAILED", "ACKED"]);
    assert.match(r.history[0].error, /Retry: not yet[\s\S]*Caused by: Error: upstream 503/);
    const gap = r.history[1].leasedAt - r.history[0].endedAt;
    assert.ok(gap >= 150, `retried after ${gap} ms, asked 200`);
    const f = await client.wait(failed, { timeout: 15 });
    assert.equal(f.state, "DEAD");
    assert.equal(f.history.length, 1);
    assert.match(f.history[0].error, /^Fail: bad input/);
    const t = await client.wait(thrown, { timeout: 30 });
    assert.equal(t.state, "DEAD");
    assert.equal(t.history.length, 3);
    assert.match(t.history[2].error, /^TypeError: broken on attempt 3\n\s+at /);
    assert.equal((await client.wait(result, { timeout: 15 })).result.toString(), '{"ok":true}');
    worker.stop();
    await running;
  });

  test("extends the leases of long tasks: one attempt, no expiry", async () => {
    const queue = "w-extend";
    const [id] = await submitN(queue, 1);
    const { worker, running } = startWorker({
      target: feeder.target,
      queue,
      leaseDuration: 1.2,
      handler: async () => {
        await sleep(3500);
        return "slow but kept";
      },
    });
    const task = await client.wait(id, { timeout: 20 });
    worker.stop();
    await running;
    assert.equal(task.state, "COMPLETED");
    assert.equal(task.history.length, 1, JSON.stringify(task.history));
    assert.equal(task.history[0].outcome, "ACKED");
    assert.ok(worker.counters.extended >= 3, `extended ${worker.counters.extended} times`);
    assert.equal((await client.queueStats(queue)).totals.expired, 0);
  });

  for (const transport of ["stream", "unary"]) {
    test(`a cancelled task's signal aborts and nothing is reported for it (${transport})`, async () => {
      const queue = `w-cancel-${transport}`;
      const [id] = await submitN(queue, 1);
      let reason;
      const started = [];
      const { worker, acks, running } = startWorker({
        target: feeder.target,
        queue,
        transport,
        leaseDuration: 1.5,
        handler: (task) =>
          new Promise((resolve) => {
            started.push(task.id);
            task.signal.addEventListener("abort", () => {
              reason = task.cancelReason;
              resolve("finished anyway");
            });
          }),
      });
      await waitFor(() => started.length === 1, { what: "the task to start" });
      await client.cancel(id);
      // On the stream the feeder pushes the cancel; with unary calls the next Extend finds it.
      await waitFor(() => reason !== undefined, { within: 10_000, what: "the handler's signal" });
      assert.equal(reason, "cancelled");
      await sleep(300);
      worker.stop();
      await running;
      assert.equal(acks.length, 0);
      assert.equal(worker.counters.abandoned, 1);
      assert.equal((await client.get(id)).state, "CANCELLED");
    });
  }

  test("taskTimeout aborts the handler and fails the attempt", async () => {
    const queue = "w-timeout";
    const [id] = await submitN(queue, 1, () => "", { maxAttempts: 1 });
    const { worker, running } = startWorker({
      target: feeder.target,
      queue,
      taskTimeout: 0.3,
      handler: (task) => new Promise((resolve) => task.signal.addEventListener("abort", () => resolve("late"))),
    });
    const task = await client.wait(id, { timeout: 10 });
    worker.stop();
    await running;
    assert.equal(task.state, "DEAD");
    assert.match(task.history[0].error, /time limit of 0.3 s/);
  });

  test("stop(): running tasks get the grace, then are given back without a failure", async () => {
    const queue = "w-stop";
    const [quick, slow] = await submitN(queue, 2, (i) => (i === 0 ? "quick" : "slow"));
    const started = new Set();
    const { worker, acks, running } = startWorker({
      target: feeder.target,
      queue,
      concurrency: 2,
      grace: 0.6,
      handler: async (task) => {
        started.add(task.text());
        if (task.text() === "quick") {
          await sleep(300);
          return "quick done";
        }
        await new Promise((resolve) => task.signal.addEventListener("abort", resolve));
        throw new Error("stopped");
      },
    });
    await waitFor(() => started.size === 2, { what: "both tasks to start" });
    const began = Date.now();
    worker.stop();
    await running;
    assert.ok(Date.now() - began < 5000, `stopped in ${Date.now() - began} ms`);
    assert.deepEqual(acks.map((a) => a.taskId), [quick]);
    const s = await client.get(slow);
    assert.equal(s.state, "READY");
    assert.equal(s.failures, 0);
    assert.equal(s.history[0].outcome, "RELEASED");
    assert.equal(worker.counters.released, 1);
  });

  test("a refusal no retry can fix ends run() with the error", async () => {
    const worker = new Worker({ target: feeder.target, queue: "not a queue", handleSignals: false, logger: quiet, handler: () => "" });
    await assert.rejects(worker.run(), InvalidArgument);
  });
});

describe("Worker and feeder restarts", () => {
  test("reconnects to a feeder killed and restarted on the same port; nothing is lost", async () => {
    const feeder = await new Feeder().start();
    const client = new FeederClient({ target: feeder.target });
    const queue = "w-restart";
    const ids = (await client.submitMany(Array.from({ length: 400 }, () => ({ queue, payload: "" })))).map((r) => r.taskId);
    const { worker, running } = startWorker({
      target: feeder.target,
      queue,
      concurrency: 8,
      leaseDuration: 2,
      handler: async () => {
        await sleep(5);
        return "ok";
      },
    });
    try {
      await waitFor(async () => (await client.queueStats(queue)).completed >= 100, { what: "100 completed" });
      await feeder.kill9();
      await sleep(300);
      await feeder.start();
      await waitFor(async () => (await client.queueStats(queue)).completed === 400, { within: 40_000, what: "all 400 completed" });
      assert.ok(worker.counters.reconnects >= 1);
      for (const id of ids.slice(0, 50)) assert.equal((await client.get(id)).state, "COMPLETED");
    } finally {
      worker.stop();
      await running;
      client.close();
      await feeder.stop();
    }
  });
});

module.exports = { PermissionDenied };
