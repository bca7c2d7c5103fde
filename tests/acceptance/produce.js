"use strict";
/**
 * A Node.js producer for the tests: submits tasks with the SDK's FeederClient.submitMany
 * and prints the feeder's answers as JSON. It reads one JSON object on stdin,
 *
 *     {"target": "127.0.0.1:50051", "queue": "q",
 *      "tasks": [{"payload": {"sleep": 0.01}, "idempotencyKey": "k-1", "maxAttempts": 3}, ...]}
 *
 * (each payload is sent as its JSON text; idempotencyKey and maxAttempts may be left out),
 * and prints one line, in the order of "tasks":
 *
 *     {"task_ids": ["1", ...], "deduplicated": [false, ...], "idempotency_keys": ["k-1", ...]}
 *
 * The SDK is $FEEDWORK_NODE_SDK (its index.js), else clients/node/dist of this checkout.
 * Exits 1 with the error on stderr if a Submit fails for good.
 */
const path = require("node:path");

const sdk = process.env.FEEDWORK_NODE_SDK || path.resolve(__dirname, "../../clients/node/dist/index.js");
const { FeederClient } = require(sdk);

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return JSON.parse(Buffer.concat(chunks).toString("utf8"));
}

async function main() {
  const request = await readStdin();
  const client = new FeederClient({ target: request.target });
  try {
    const results = await client.submitMany(
      request.tasks.map((task) => ({
        queue: request.queue,
        payload: JSON.stringify(task.payload ?? {}),
        ...(task.idempotencyKey === undefined ? {} : { idempotencyKey: task.idempotencyKey }),
        ...(task.maxAttempts === undefined ? {} : { maxAttempts: task.maxAttempts }),
      })),
    );
    process.stdout.write(
      `${JSON.stringify({
        task_ids: results.map((r) => r.taskId),
        deduplicated: results.map((r) => r.deduplicated),
        idempotency_keys: results.map((r) => r.idempotencyKey),
      })}\n`,
    );
  } finally {
    client.close();
  }
}

main().catch((error) => {
  process.stderr.write(`produce.js: ${error && error.stack ? error.stack : error}\n`);
  process.exitCode = 1;
});
