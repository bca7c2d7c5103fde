// The README's example runs as written against a real feeder.
"use strict";
const assert = require("node:assert/strict");
const { execFile } = require("node:child_process");
const path = require("node:path");
const { test } = require("node:test");
const { promisify } = require("node:util");

const { Feeder, feederEnv } = require("../testkit/feeder.js");

test("examples/quickstart.js submits, works and reads back a task", async () => {
  const feeder = await new Feeder().start();
  try {
    const { stdout } = await promisify(execFile)(process.execPath, [path.join(__dirname, "..", "examples", "quickstart.js")], {
      env: feederEnv({ FEEDWORK_TARGET: feeder.target }),
      timeout: 30_000,
    });
    assert.equal(stdout.trim(), "COMPLETED sent to ada@example.com");
  } finally {
    await feeder.stop();
  }
});
