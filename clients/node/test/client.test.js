// The producer client against a real feeder.
"use strict";
const assert = require("node:assert/strict");
const { after, before, describe, test } = require("node:test");

const {
  FeederClient,
  InvalidArgument,
  NotFound,
  Status,
  Unavailable,
  WaitTimeout,
  Worker,
  autoKey,
} = require("../dist/index.js");
const { batches } = require("../dist/client.js");
const { Feeder, freePort, sleep } = require("../testkit/feeder.js");

describe("FeederClient", () => {
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

  test("submits, reads back and waits for a task", async () => {
    const submitted = await client.submit(JSON.stringify({ n: 1 }), {
      queue: "c-roundtrip",
      headers: { trace: "abc" },
      priority: 3,
      maxAttempts: 7,
      leaseDuration: 12.5,
    });
    assert.equal(submitted.state, "READY");
    assert.equal(submitted.deduplicated, false);
    assert.match(submitted.idempotencyKey, /^auto-[0-9a-f]{12}7[0-9a-f]{3}[89ab][0-9a-f]{15}$/);
    const task = await client.get(submitted.taskId);
    assert.equal(task.taskId, submitted.taskId);
    assert.equal(task.queue, "c-roundtrip");
    assert.deepEqual(JSON.parse(task.payload.toString()), { n: 1 });
    assert.deepEqual(task.headers, { trace: "abc" });
    assert.equal(task.priority, 3);
    assert.equal(task.maxAttempts, 7);
    assert.equal(task.leaseDuration, 12.5);
    assert.equal(task.idempotencyKey, submitted.idempotencyKey);
    assert.ok(task.createdAt instanceof Date);
    await assert.rejects(client.wait(submitted.taskId, { timeout: 0.2 }), WaitTimeout);

    const worker = new Worker({
      target: feeder.target,
      queue: "c-roundtrip",
      handleSignals: false,
      logger: quiet,
      handler: (t) => `got ${t.json().n}`,
    });
    const running = worker.run();
    const done = await client.wait(submitted.taskId, { timeout: 10 });
    worker.stop();
    await running;
    assert.equal(done.state, "COMPLETED");
    assert.equal(done.result.toString(), "got 1");
    assert.equal(done.history.length, 1);
    assert.equal(done.history[0].outcome, "ACKED");
  });

  test("delays a task", async () => {
    const { taskId, state } = await client.submit("", { queue: "c-delay", delay: 60 });
    assert.equal(state, "SCHEDULED");
    const task = await client.get(taskId);
    assert.ok(task.notBefore.getTime() > Date.now() + 50_000);
    const at = new Date(Date.now() + 120_000);
    const later = await client.get((await client.submit("", { queue: "c-delay", notBefore: at })).taskId);
    assert.ok(Math.abs(later.notBefore.getTime() - at.getTime()) < 1000);
  });

  test("submits many in batches of 1,000, in order, and a retry with the same keys creates nothing", async () => {
    const specs = Array.from({ length: 2500 }, (_, i) => ({ queue: "c-many", payload: String(i) }));
    const results = await client.submitMany(specs);
    assert.equal(results.length, 2500);
    assert.equal(new Set(results.map((r) => r.taskId)).size, 2500);
    const probe = await client.get(results[1234].taskId);
    assert.equal(probe.payload.toString(), "1234");
    // The same tasks again, with the keys the first submit made: the same ids, nothing new.
    const again = await client.submitMany(specs.map((s, i) => ({ ...s, idempotencyKey: results[i].idempotencyKey })));
    assert.deepEqual(again.map((r) => r.taskId), results.map((r) => r.taskId));
    assert.ok(again.every((r) => r.deduplicated));
    const stats = await client.queueStats("c-many");
    assert.equal(stats.ready, 2500);
    assert.equal(stats.totals.submitted, 2500);
  });

  test("cuts batches by count and by bytes", () => {
    const item = (size) => ({ message: size, size });
    const cut = (sizes, maxTasks, maxBytes) => [...batches(sizes.map(item), maxTasks, maxBytes)].map((b) => [b.offset, b.batch]);
    assert.deepEqual(cut([1, 1, 1, 1, 1], 2, 100), [[0, [1, 1]], [2, [1, 1]], [4, [1]]]);
    assert.deepEqual(cut([60, 30, 20, 90, 5], 10, 100), [[0, [60, 30]], [2, [20]], [3, [90, 5]]]);
    assert.deepEqual(cut([500, 10], 10, 100), [[0, [500]], [1, [10]]]); // too large: alone
  });

  test("an invalid task is named by its index in the caller's list, with the field violation", async () => {
    const specs = Array.from({ length: 1500 }, () => ({ queue: "c-bad", payload: "x" }));
    specs[1203] = { queue: "no spaces allowed", payload: "x" };
    const error = await client.submitMany(specs).then(
      () => assert.fail("submitted"),
      (e) => e,
    );
    assert.ok(error instanceof InvalidArgument, String(error));
    assert.equal(error.code, Status.INVALID_ARGUMENT);
    assert.match(error.message, /^INVALID_ARGUMENT: tasks\[1203\]\.queue: /);
    assert.deepEqual(error.fieldViolations.map((v) => v.field), ["tasks[1203].queue"]);
    assert.match(error.fieldViolations[0].description, /"no spaces allowed"|\[A-Za-z0-9._-\]/);
    // The first batch (tasks 0-999) went in; the one holding the bad task did not.
    assert.equal((await client.queueStats("c-bad")).ready, 1000);
  });

  test("counts string limits in UTF-8 bytes", async () => {
    const emoji = "\u{1F600}".repeat(65); // 260 bytes, 65 code points
    await assert.rejects(client.submit("", { queue: "c-bytes", idempotencyKey: emoji }), (e) => {
      assert.ok(e instanceof InvalidArgument);
      assert.equal(e.fieldViolations[0].field, "tasks[0].idempotency_key");
      return true;
    });
    await client.submit("", { queue: "c-bytes", idempotencyKey: "\u{1F600}".repeat(64) });
  });

  test("cancels, and says NotFound for a task that does not exist", async () => {
    const { taskId } = await client.submit("", { queue: "c-cancel" });
    assert.deepEqual(await client.cancel(taskId), { outcome: "CANCELLED", state: "CANCELLED" });
    assert.deepEqual(await client.cancel(taskId), { outcome: "ALREADY_CANCELLED", state: "CANCELLED" });
    await assert.rejects(client.get("987654321"), NotFound);
    await assert.rejects(client.cancel("987654321"), NotFound);
  });

  test("lists, redrives and purges dead tasks", async () => {
    const specs = Array.from({ length: 5 }, (_, i) => ({ queue: "c-dead", payload: `p${i}`, maxAttempts: 1 }));
    const ids = (await client.submitMany(specs)).map((r) => r.taskId);
    const worker = new Worker({
      target: feeder.target,
      queue: "c-dead",
      concurrency: 5,
      handleSignals: false,
      logger: quiet,
      handler: () => {
        throw new Error("always fails");
      },
    });
    const running = worker.run();
    for (const id of ids) assert.equal((await client.wait(id, { timeout: 10 })).state, "DEAD");
    worker.stop();
    await running;
    const page = await client.deadList("c-dead", { pageSize: 3, includePayloads: true });
    assert.equal(page.tasks.length, 3);
    assert.ok(page.nextPageToken);
    assert.match(page.tasks[0].history[0].error, /always fails/);
    assert.equal(page.tasks[0].payload.toString(), "p0");
    const rest = await client.deadList("c-dead", { pageToken: page.nextPageToken });
    assert.equal(rest.tasks.length, 2);
    assert.equal(rest.nextPageToken, "");
    assert.equal(await client.deadRedrive("c-dead", { taskIds: [ids[0]] }), 1);
    assert.equal((await client.get(ids[0])).state, "READY");
    assert.equal(await client.deadPurge("c-dead", { limit: 10 }), 4);
    await assert.rejects(client.get(ids[1]), NotFound);
    const stats = await client.stats();
    assert.ok(stats.queues.some((q) => q.queue === "c-dead"));
    assert.ok(stats.totals.submitted >= 5);
  });
});

describe("FeederClient and an unreachable feeder", () => {
  test("retries UNAVAILABLE until the feeder is up, and the task is created once", async () => {
    const feeder = new Feeder({ port: await freePort() });
    const client = new FeederClient({ target: feeder.target, maxRetryDelay: 30 });
    try {
      const submitting = client.submit("late", { queue: "c-late" });
      await sleep(700);
      await feeder.start();
      const { taskId } = await submitting;
      assert.equal((await client.get(taskId)).payload.toString(), "late");
      assert.equal((await client.queueStats("c-late")).totals.submitted, 1);
    } finally {
      client.close();
      await feeder.stop();
    }
  });

  test("gives up after maxRetryDelay with Unavailable", async () => {
    const client = new FeederClient({ target: `127.0.0.1:${await freePort()}`, maxRetryDelay: 0.5, timeout: 0.3 });
    const began = Date.now();
    await assert.rejects(client.get("1"), (e) => e instanceof Unavailable && e.code === Status.UNAVAILABLE);
    assert.ok(Date.now() - began < 5000);
    client.close();
  });
});

test("autoKey: a UUIDv7 in hex, time-ordered", () => {
  const a = autoKey(1_700_000_000_000);
  const b = autoKey(1_700_000_000_001);
  assert.match(a, /^auto-[0-9a-f]{32}$/);
  assert.ok(a.slice(5, 17) < b.slice(5, 17));
  assert.equal(a.slice(5, 17), (1_700_000_000_000).toString(16).padStart(12, "0"));
});

const quiet = { info() {}, warn() {}, error() {} };
