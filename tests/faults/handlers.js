"use strict";
/**
 * The ledger handler of tests/faults/handlers.py, for Node.js workers (the SDK's
 * feedwork-node-worker, `--handler tests/faults/handlers.js:ledger`). Same payloads, same
 * ledger: it appends one line per execution, "task_id attempt pid", to the file named by
 * $FEEDWORK_FAULTS_LEDGER (one write(2) on an O_APPEND descriptor, so lines from many
 * processes, Python's and Node's, never interleave), then does what the JSON payload asks:
 *
 *     {"sleep": 0.2}             sleep 0.2 s (wakes early if the worker cancels the task:
 *                                task.signal aborts on a lost lease, a cancel, a shutdown)
 *     {"sleep_first": 30}        sleep this long on attempt 1 only (then "sleep" applies)
 *     {"ignore_cancel": true}    sleep through a cancel
 *     {"exit": 3}                process.exit(3): the worker process dies mid-task (poison)
 *     {"fail": true}             throw: the attempt fails (nack)
 *
 * and returns "pid attempt" as the task's result. The ledger line is written before the
 * work starts, so an execution that a crash cut short is in the ledger too. Keep the two
 * files in step: tests/acceptance/test_ledger_handlers.py runs both through one checklist.
 */
const fs = require("node:fs");
const { setTimeout: sleep } = require("node:timers/promises");

const LEDGER_ENV = "FEEDWORK_FAULTS_LEDGER";

/** One write(2) on an O_APPEND descriptor: atomic with respect to other appenders. */
function appendLine(path, line) {
  const flags = fs.constants.O_WRONLY | fs.constants.O_APPEND | fs.constants.O_CREAT;
  const fd = fs.openSync(path, flags, 0o644);
  try {
    fs.writeSync(fd, Buffer.from(line));
  } finally {
    fs.closeSync(fd);
  }
}

function record(path, taskId, attempt, pid = process.pid) {
  appendLine(path, `${taskId} ${attempt} ${pid}\n`);
}

/** Python's truth value of a JSON value ([] and {} are false there too). */
function truthy(value) {
  if (Array.isArray(value)) return value.length > 0;
  if (value !== null && typeof value === "object") return Object.keys(value).length > 0;
  return Boolean(value);
}

/** Python's float() of a JSON value: a number, or a string holding one; else it throws. */
function float(value) {
  const number = typeof value === "string" && value.trim() !== "" ? Number(value) : value;
  if (typeof number !== "number" || Number.isNaN(number)) {
    throw new TypeError(`not a number: ${JSON.stringify(value)}`);
  }
  return number;
}

async function ledger(task) {
  const path = process.env[LEDGER_ENV];
  if (!path) throw new Error(`${LEDGER_ENV} is not set`);
  record(path, task.id, task.attempt);
  const spec = task.payload.length > 0 ? JSON.parse(task.payload.toString("utf8")) : {};
  const has = (key) => Object.prototype.hasOwnProperty.call(spec, key);
  if (has("exit")) process.exit(Math.trunc(float(spec.exit)));
  let seconds = float(has("sleep") ? spec.sleep : 0.0);
  if (task.attempt === 1 && has("sleep_first")) seconds = float(spec.sleep_first);
  if (seconds > 0) {
    if (truthy(spec.ignore_cancel)) {
      await sleep(seconds * 1000);
    } else {
      // Like Python's task.cancelled.wait(seconds): returns early once the signal aborts.
      await sleep(seconds * 1000, undefined, { signal: task.signal }).catch((error) => {
        if (error.name !== "AbortError") throw error;
      });
    }
  }
  if (truthy(spec.fail)) throw new Error("asked to fail");
  return `${process.pid} ${task.attempt}`;
}

module.exports = { ledger, record, appendLine };
