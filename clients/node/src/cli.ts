#!/usr/bin/env node
/**
 * feedwork-node-worker: run a Node.js handler as a feedwork worker, as `python -m worker`
 * does a Python one. Flags over FEEDWORK_* variables over defaults.
 *
 *     feedwork-node-worker --queue images --handler ./jobs.js:resize --concurrency 8
 */
import * as path from "node:path";
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";

import type { SecurityOptions } from "./channel";
import { Worker, type Handler, type WorkerOptions } from "./worker";

const USAGE = `usage: feedwork-node-worker --queue NAME --handler FILE[:EXPORT] [options]

Leases tasks from a feeder queue, runs the handler (an exported function, "default" if
EXPORT is not given) on each, and acks or nacks the result. SIGTERM or SIGINT stops it
gracefully (running tasks get --grace seconds, the rest are given back); a second signal
exits at once (status 130). Each option's default is its FEEDWORK_* variable
(FEEDWORK_QUEUE, FEEDWORK_CONCURRENCY, ...). Durations are in seconds.

  --target HOST:PORT[,HOST:PORT...]   feeders (FEEDWORK_TARGET; 127.0.0.1:50051)
  --queue NAME                        queue to work on
  --handler FILE[:EXPORT]             module and function to run
  --concurrency N                     tasks at once (1)
  --lease-duration S                  each lease's length (the queue's)
  --task-timeout S                    time limit of a handler (none)
  --grace S                           time running tasks get at shutdown (30)
  --worker-id ID                      shown in task histories (HOST-PID)
  --transport stream|unary            Consume stream or Lease calls (stream)
  --wait S                            a Lease call's long poll, unary only (30)
  --ack-ledger FILE                   JSON lines of every answered ack
  --tls --tls-ca FILE --tls-client-cert FILE --tls-client-key FILE --tls-server-name NAME
  --api-key KEY --api-key-file FILE   TLS and the API key (docs/SECURITY.md)
`;

const OPTIONS = {
  target: { type: "string" },
  queue: { type: "string" },
  handler: { type: "string" },
  concurrency: { type: "string" },
  "lease-duration": { type: "string" },
  "task-timeout": { type: "string" },
  grace: { type: "string" },
  "worker-id": { type: "string" },
  transport: { type: "string" },
  wait: { type: "string" },
  "ack-ledger": { type: "string" },
  tls: { type: "boolean" },
  "tls-ca": { type: "string" },
  "tls-client-cert": { type: "string" },
  "tls-client-key": { type: "string" },
  "tls-server-name": { type: "string" },
  "api-key": { type: "string" },
  "api-key-file": { type: "string" },
  help: { type: "boolean", short: "h" },
} as const;

class UsageError extends Error {}

function option(values: Record<string, string | boolean | undefined>, name: string): string | undefined {
  const given = values[name];
  if (typeof given === "string") return given;
  const variable = process.env[`FEEDWORK_${name.toUpperCase().replace(/-/g, "_")}`];
  return variable === undefined || variable.trim() === "" ? undefined : variable.trim();
}

function number(values: Record<string, string | boolean | undefined>, name: string, integer = false): number | undefined {
  const text = option(values, name);
  if (text === undefined) return undefined;
  const value = Number(text);
  if (text.trim() === "" || !Number.isFinite(value) || value < 0 || (integer && !Number.isInteger(value))) {
    throw new UsageError(`--${name} must be ${integer ? "a whole number" : "a number of seconds"}, got ${JSON.stringify(text)}`);
  }
  return value;
}

async function loadHandler(spec: string): Promise<Handler> {
  const colon = spec.lastIndexOf(":");
  const hasExport = colon > 1; // not a Windows drive letter
  const file = hasExport ? spec.slice(0, colon) : spec;
  const name = hasExport ? spec.slice(colon + 1) : "default";
  const module = (await import(pathToFileURL(path.resolve(file)).href)) as Record<string, unknown>;
  let handler = module[name];
  // A CommonJS module's exports come as `default` too.
  if (handler === undefined && module.default && typeof module.default === "object") {
    handler = (module.default as Record<string, unknown>)[name];
  }
  if (typeof handler !== "function") {
    throw new UsageError(`--handler ${JSON.stringify(spec)}: ${JSON.stringify(name)} is not a function exported by ${file}`);
  }
  return handler as Handler;
}

export async function main(argv: string[] = process.argv.slice(2)): Promise<number> {
  let worker: Worker;
  try {
    const { values } = parseArgs({ args: argv, options: OPTIONS, strict: true });
    if (values.help) {
      process.stdout.write(USAGE);
      return 0;
    }
    const queue = option(values, "queue");
    const handlerSpec = option(values, "handler");
    if (!queue) throw new UsageError("--queue is required (or set FEEDWORK_QUEUE)");
    if (!handlerSpec) throw new UsageError("--handler is required (or set FEEDWORK_HANDLER)");
    const transport = option(values, "transport") ?? "stream";
    if (transport !== "stream" && transport !== "unary") {
      throw new UsageError(`--transport must be stream or unary, got ${JSON.stringify(transport)}`);
    }
    const security: SecurityOptions = {
      ...(values.tls ? { tls: true } : {}),
      tlsCa: option(values, "tls-ca"),
      tlsClientCert: option(values, "tls-client-cert"),
      tlsClientKey: option(values, "tls-client-key"),
      tlsServerName: option(values, "tls-server-name"),
      apiKey: option(values, "api-key"),
      apiKeyFile: option(values, "api-key-file"),
    };
    const options: WorkerOptions = {
      ...security,
      target: option(values, "target"),
      queue,
      handler: () => undefined, // loaded below, once the other options are checked
      concurrency: number(values, "concurrency", true) ?? 1,
      leaseDuration: number(values, "lease-duration"),
      taskTimeout: number(values, "task-timeout"),
      grace: number(values, "grace"),
      workerId: option(values, "worker-id"),
      transport,
      wait: number(values, "wait"),
      ackLedger: option(values, "ack-ledger"),
    };
    options.handler = await loadHandler(handlerSpec);
    worker = new Worker(options);
  } catch (error) {
    process.stderr.write(`feedwork-node-worker: ${(error as Error).message}\n\n${USAGE}`);
    return 2;
  }
  try {
    await worker.run();
  } catch (error) {
    process.stderr.write(`feedwork-node-worker: ${(error as Error).message}\n`);
    return 1;
  }
  return 0;
}

if (require.main === module) {
  void main().then((code) => {
    process.exitCode = code;
  });
}
