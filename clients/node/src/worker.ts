/**
 * The worker: leases tasks from one queue, runs the handler on each (`concurrency` at a
 * time), and reports the outcome, with the same semantics as the Python SDK's `worker`
 * (docs/PROTOCOL.md):
 *
 * - leasing over the Consume stream, one credit per free slot (no hidden prefetch), or
 *   with unary Lease calls when the feeder has no Consume (or `transport: "unary"`);
 * - acks and nacks batched, sent on the stream or as unary calls, resent after a broken
 *   stream (an ack resent after it took effect answers DUPLICATE: still a success);
 * - leases extended when a third of their time is left; a handler whose lease is lost, or
 *   whose task is cancelled, sees `task.signal` abort, and nothing is reported for it;
 * - reconnection with backoff, to any of several feeders;
 * - graceful shutdown on SIGTERM/SIGINT: running tasks get `grace` seconds, the rest are
 *   given back (released, no failure counted); a second signal exits at once (130).
 *
 *     const worker = new Worker({ queue: "emails", concurrency: 8, handler: async (task) => {
 *       await send(task.json(), { signal: task.signal });
 *       return "sent";
 *     }});
 *     await worker.run();
 */
import { EventEmitter } from "node:events";
import * as fs from "node:fs";
import * as os from "node:os";
import { performance } from "node:perf_hooks";
import { setTimeout as sleep } from "node:timers/promises";
import * as grpc from "@grpc/grpc-js";

import { call, callOnce } from "./calls";
import { Connection, type ConnectionOptions } from "./channel";
import { Status, errorFromCall, errorFromStatus, isServiceError, isTransient } from "./errors";
import { duration, seconds, type FeederStub } from "./proto";
import { jittered, type Backoff } from "./retry";
import { Fail, Retry, Task, type CancelReason } from "./task";
import { unprefixed } from "./types";
import type { AckItem } from "./gen/feedwork/v1/AckItem";
import type { NackItem } from "./gen/feedwork/v1/NackItem";
import type { ExtendItem } from "./gen/feedwork/v1/ExtendItem";
import type { LeasedTask__Output } from "./gen/feedwork/v1/LeasedTask";
import type { ConsumeRequest } from "./gen/feedwork/v1/ConsumeRequest";
import type { ConsumeResponse__Output } from "./gen/feedwork/v1/ConsumeResponse";

export type HandlerResult = Buffer | Uint8Array | string | null | undefined | void | object;
export type Handler = (task: Task) => HandlerResult | Promise<HandlerResult>;

export interface Logger {
  info(message: string): void;
  warn(message: string): void;
  error(message: string): void;
}

export interface WorkerOptions extends ConnectionOptions {
  queue: string;
  handler: Handler;
  /** Tasks run at once (default 1). */
  concurrency?: number;
  /** Seconds each lease lasts (none: the task's or the queue's). */
  leaseDuration?: number;
  /** Seconds a handler may run; then its signal aborts and the attempt fails. */
  taskTimeout?: number;
  /** Seconds running tasks get to finish at shutdown (default 30). */
  grace?: number;
  /** Shown in the task's history (default HOST-PID). */
  workerId?: string;
  /** "stream" (Consume, default) or "unary" (Lease calls). */
  transport?: "stream" | "unary";
  /** Seconds a Lease call waits for a task (unary transport; default 30). */
  wait?: number;
  /** Reports per batch (default 64) and seconds a report may wait for others (default 0.005). */
  ackBatchSize?: number;
  ackFlushInterval?: number;
  /** A JSON-lines file of every ack the feeder answered (the Python SDK's --ack-ledger). */
  ackLedger?: string;
  /** Stop gracefully on SIGTERM and SIGINT while `run()` runs (default true). */
  handleSignals?: boolean;
  logger?: Logger;
}

/** What the worker did, for tests, benchmarks and logs. */
export interface WorkerCounters {
  leased: number;
  succeeded: number;
  failed: number;
  abandoned: number;
  released: number;
  extended: number;
  acked: number;
  ackDuplicates: number;
  reconnects: number;
}

/** One answered ack, as the 'ack' event and the ack ledger give it. */
export interface AckEvent {
  taskId: string;
  attempt: number;
  outcome: string; // ACKED, ADOPTED, DUPLICATE, REJECTED, NOT_FOUND, INVALID_TOKEN
  result: Buffer;
}

// The feeder takes at most 1000 credits per message, and 10000 unused per stream.
const MAX_CREDITS_PER_MESSAGE = 1000;
const MAX_UNUSED_CREDITS = 10_000;
// A report not answered within this long is sent again another way (reports are idempotent).
const REPORT_TIMEOUT_MS = 10_000;
// A stream that stayed up this long, or brought anything, was working: the next opens at once.
const WORKING_STREAM_MS = 1_000;
const RECONNECT: Backoff = { first: 0.25, cap: 2 };
// Extend a lease when this share of its duration is left.
const EXTEND_AT_REMAINING = 1 / 3;
const HEARTBEAT_TICK_MS = 200;
// The feeder keeps at most 4 KiB of an error.
const MAX_ERROR_CHARS = 4096;
const ACCEPTED_KEY = "feedwork-consume";
// ACKED and ADOPTED completed the task; DUPLICATE after a resend did too.
const COMPLETING = new Set(["ACKED", "ADOPTED"]);

interface Running {
  task: Task;
  /** When the lease ends and when to extend it, on the monotonic clock (ms). */
  expiresAt: number;
  leaseMs: number;
  extending: boolean;
  /** The worker stopped caring (lease lost, cancelled): report nothing. */
  abandoned: boolean;
}

type Report =
  | { kind: "ack"; item: AckItem; task: Task; result: Buffer }
  | { kind: "nack"; item: NackItem; task: Task };

class StreamLost extends Error {}

/** Gives a task back: no failure counted. */
function releaseOf(task: Task): Report {
  return { kind: "nack", item: { leaseToken: task.leaseToken, error: "worker stopping", release: true }, task };
}

function resultBytes(value: HandlerResult): Buffer {
  if (value === undefined || value === null) return Buffer.alloc(0);
  if (Buffer.isBuffer(value)) return value;
  if (value instanceof Uint8Array) return Buffer.from(value.buffer, value.byteOffset, value.byteLength);
  if (typeof value === "string") return Buffer.from(value, "utf8");
  return Buffer.from(JSON.stringify(value), "utf8");
}

function errorText(error: unknown): string {
  let text = error instanceof Error ? (error.stack ?? `${error.name}: ${error.message}`) : String(error);
  let cause = error instanceof Error ? error.cause : undefined;
  for (let depth = 0; cause !== undefined && depth < 5; depth++) {
    text += `\nCaused by: ${cause instanceof Error ? (cause.stack ?? cause.message) : String(cause)}`;
    cause = cause instanceof Error ? cause.cause : undefined;
  }
  return text.length > MAX_ERROR_CHARS ? text.slice(0, MAX_ERROR_CHARS) : text;
}

const stderrLogger: Logger = {
  info: (m) => process.stderr.write(`feedwork-worker INFO ${m}\n`),
  warn: (m) => process.stderr.write(`feedwork-worker WARNING ${m}\n`),
  error: (m) => process.stderr.write(`feedwork-worker ERROR ${m}\n`),
};

export class Worker extends EventEmitter {
  readonly queue: string;
  readonly workerId: string;
  readonly concurrency: number;
  readonly counters: WorkerCounters = {
    leased: 0,
    succeeded: 0,
    failed: 0,
    abandoned: 0,
    released: 0,
    extended: 0,
    acked: 0,
    ackDuplicates: 0,
    reconnects: 0,
  };
  private readonly options: WorkerOptions;
  private readonly connection: Connection;
  private readonly log: Logger;
  private readonly running = new Map<string, Running>(); // by lease token
  private readonly handlers = new Set<Promise<void>>(); // handlers running
  private readonly sends = new Set<Promise<void>>(); // reports and extends not answered
  private readonly pending: Report[] = [];
  private flushTimer: NodeJS.Timeout | undefined;
  private stopping = false;
  private readonly stopController = new AbortController();
  private ledgerFd: number | undefined;
  private slotWaiters: (() => void)[] = [];
  // The open Consume stream.
  private stream: grpc.ClientDuplexStream<ConsumeRequest, ConsumeResponse__Output> | undefined;
  private unused = 0; // credits granted on the open stream, not used by a task yet
  private owed = 0; // credits to send
  private owedScheduled = false;
  private reportIds = 0;
  private readonly answers = new Map<number, { resolve: (r: ConsumeResponse__Output) => void; reject: (e: Error) => void }>();
  private runPromise: Promise<void> | undefined;

  constructor(options: WorkerOptions) {
    super();
    if (!options.queue) throw new TypeError("Worker: queue is required");
    if (typeof options.handler !== "function") throw new TypeError("Worker: handler must be a function");
    const concurrency = options.concurrency ?? 1;
    if (!Number.isInteger(concurrency) || concurrency < 1) {
      throw new RangeError(`Worker: concurrency must be a whole number from 1, got ${concurrency}`);
    }
    for (const name of ["leaseDuration", "taskTimeout", "grace", "wait", "ackFlushInterval"] as const) {
      const value = options[name];
      if (value !== undefined && !(typeof value === "number" && value >= 0 && Number.isFinite(value))) {
        throw new RangeError(`Worker: ${name} must be a number of seconds, not negative, got ${value}`);
      }
    }
    this.options = options;
    this.queue = options.queue;
    this.concurrency = concurrency;
    this.workerId = options.workerId ?? `${os.hostname()}-${process.pid}`;
    this.log = options.logger ?? stderrLogger;
    this.connection = new Connection(options);
  }

  /** Runs until `stop()` (or SIGTERM/SIGINT) and the graceful shutdown are done. Rejects
   * on a failure no retry can fix (a malformed queue name, a key refused). */
  run(): Promise<void> {
    this.runPromise ??= this.main();
    return this.runPromise;
  }

  /** Begins the graceful shutdown; `run()` resolves when it is done. */
  stop(): void {
    if (this.stopping) return;
    this.stopping = true;
    this.stopController.abort();
    this.wakeSlotWaiters();
  }

  private async main(): Promise<void> {
    if (this.options.ackLedger) {
      const flags = fs.constants.O_WRONLY | fs.constants.O_APPEND | fs.constants.O_CREAT;
      this.ledgerFd = fs.openSync(this.options.ackLedger, flags, 0o644);
    }
    const signals = this.options.handleSignals ?? true;
    const onSignal = (signal: NodeJS.Signals): void => {
      if (this.stopping) {
        this.log.warn(`${signal} again: exiting at once`);
        process.exit(130);
      }
      this.log.info(`${signal}: stopping (running tasks get ${this.options.grace ?? 30} s)`);
      this.stop();
    };
    if (signals) {
      process.on("SIGTERM", onSignal);
      process.on("SIGINT", onSignal);
    }
    const heartbeat = setInterval(() => this.heartbeat(), HEARTBEAT_TICK_MS);
    let failure: unknown;
    let leasing: Promise<void> | undefined;
    try {
      const stub = await this.connection.stub();
      this.log.info(
        `worker ${this.workerId} on queue ${JSON.stringify(this.queue)} at ${this.connection.target}, ` +
          `concurrency ${this.concurrency}`,
      );
      leasing = this.lease(stub);
      const stopped = new Promise<void>((resolve) => {
        if (this.stopping) resolve();
        else this.stopController.signal.addEventListener("abort", () => resolve(), { once: true });
      });
      await Promise.race([leasing, stopped]);
    } catch (error) {
      failure = error;
    } finally {
      this.stop();
      // The stream stays open while the running tasks finish and their reports go.
      await this.drain();
      clearInterval(heartbeat);
      this.endStream();
      await leasing?.catch(() => undefined);
      if (signals) {
        process.off("SIGTERM", onSignal);
        process.off("SIGINT", onSignal);
      }
      this.connection.close();
      if (this.ledgerFd !== undefined) fs.closeSync(this.ledgerFd);
      this.ledgerFd = undefined;
    }
    if (failure !== undefined) throw errorFromCall(failure);
  }

  private async lease(stub: FeederStub): Promise<void> {
    if ((this.options.transport ?? "stream") === "stream") {
      if (await this.consumeLoop(stub)) return;
      this.log.warn("the feeder has no Consume stream: leasing with unary calls");
    }
    await this.leaseLoop(stub);
  }

  /** Half-closes the stream (the feeder then ends it); cancels it if that takes long. */
  private endStream(): void {
    const stream = this.stream;
    if (stream === undefined) return;
    stream.end();
    setTimeout(() => stream.cancel(), 2000).unref();
  }

  /** Gives running tasks `grace` seconds, then cancels the rest and gives them back;
   * waits for every report to be answered. */
  private async drain(): Promise<void> {
    const graceOver = Date.now() + (this.options.grace ?? 30) * 1000;
    while (this.running.size > 0 && Date.now() < graceOver) {
      await Promise.race([...this.handlers, sleep(Math.max(0, graceOver - Date.now()), undefined, { ref: false })]);
    }
    for (const run of this.running.values()) {
      // Past the grace: stop the handler and give the task back; what it does later is ignored.
      run.abandoned = true;
      run.task.cancel("shutdown");
      this.counters.released += 1;
      this.enqueue(releaseOf(run.task));
    }
    const last = Date.now() + REPORT_TIMEOUT_MS * 2;
    while (this.sends.size > 0 || this.pending.length > 0) {
      this.flush();
      if (Date.now() > last) {
        this.log.warn(`${this.sends.size + this.pending.length} reports not answered at exit`);
        break;
      }
      await Promise.race([Promise.allSettled([...this.sends]), sleep(100)]);
    }
  }

  // -- leasing: the Consume stream -------------------------------------------------------

  /** Keeps a Consume stream open until stopped; false if the feeder has no Consume. */
  private async consumeLoop(stub: FeederStub): Promise<boolean> {
    let attempt = 0;
    while (!this.stopping) {
      const opened = performance.now();
      let worked = false;
      try {
        worked = await this.session(stub);
      } catch (error) {
        if (isServiceError(error) && error.code === Status.UNIMPLEMENTED) return false;
        if (!isTransient(error)) throw error;
        worked = performance.now() - opened >= WORKING_STREAM_MS || (error as { worked?: boolean }).worked === true;
        if (!this.stopping) this.log.warn(`Consume stream ended: ${(error as Error).message}; reconnecting`);
      }
      if (this.stopping) break;
      this.counters.reconnects += 1;
      attempt = worked ? 0 : attempt + 1;
      await sleep(jittered(RECONNECT, attempt) * 1000, undefined, { signal: this.stopController.signal }).catch(() => undefined);
    }
    return true;
  }

  /** One stream, until it ends. Resolves true when it ended cleanly after working. */
  private session(stub: FeederStub): Promise<boolean> {
    return new Promise((resolve, reject) => {
      const stream = stub.Consume(new grpc.Metadata({ waitForReady: true }));
      let heard = false;
      let done = false;
      const finish = (error?: Error): void => {
        if (done) return;
        done = true;
        this.stream = undefined;
        this.unused = 0;
        this.owed = 0;
        for (const answer of this.answers.values()) answer.reject(new StreamLost("the Consume stream broke"));
        this.answers.clear();
        if (error === undefined) resolve(heard);
        else reject(Object.assign(error, { worked: heard }));
      };
      stream.on("metadata", (metadata: grpc.Metadata) => {
        if (metadata.get(ACCEPTED_KEY).length > 0) heard = true;
      });
      stream.on("data", (response: ConsumeResponse__Output) => {
        heard = true;
        this.onConsumeResponse(response);
      });
      stream.on("error", (error: Error) => finish(error));
      stream.on("end", () => finish());
      stream.on("status", (status: grpc.StatusObject) => {
        if (status.code === Status.OK) finish();
      });
      this.stream = stream;
      this.unused = 0;
      this.owed = 0;
      this.grantFree();
      const start: ConsumeRequest = {
        start: {
          queue: this.queue,
          workerId: this.workerId,
          ...(this.options.leaseDuration === undefined ? {} : { leaseDuration: duration(this.options.leaseDuration) }),
        },
        credits: this.takeOwed(),
      };
      stream.write(start);
      this.flushOwed();
    });
  }

  private onConsumeResponse(response: ConsumeResponse__Output): void {
    if (response.tasks.length > 0) {
      this.unused = Math.max(0, this.unused - response.tasks.length);
      for (const leased of response.tasks) this.start(leased);
      this.grantFree();
    }
    for (const taskId of response.cancelledTaskIds) {
      for (const run of this.running.values()) {
        if (run.task.id === taskId) this.abandon(run, "cancelled");
      }
    }
    const reportId = Number(response.reportId);
    const answered =
      response.ackResults.length > 0 ||
      response.nackResults.length > 0 ||
      response.extendResults.length > 0 ||
      response.errorCode !== 0 ||
      String(response.error) !== "REPORT_ERROR_UNSPECIFIED";
    if (answered) {
      const answer = this.answers.get(reportId);
      this.answers.delete(reportId);
      answer?.resolve(response);
    }
  }

  /** Grants a credit for every free slot (none while stopping). */
  private grantFree(): void {
    if (this.stream === undefined || this.stopping) return;
    const free = this.concurrency - this.running.size - this.unused;
    const credits = Math.min(free, MAX_UNUSED_CREDITS - this.unused);
    if (credits <= 0) return;
    this.unused += credits;
    this.owed += credits;
    if (!this.owedScheduled) {
      this.owedScheduled = true;
      setImmediate(() => this.flushOwed());
    }
  }

  private takeOwed(): number {
    const credits = Math.min(this.owed, MAX_CREDITS_PER_MESSAGE);
    this.owed -= credits;
    return credits;
  }

  private flushOwed(): void {
    this.owedScheduled = false;
    while (this.owed > 0 && this.stream !== undefined) {
      this.stream.write({ credits: this.takeOwed() });
    }
  }

  /** Sends a report on the open stream; its answer, or StreamLost. */
  private report(items: { acks?: AckItem[]; nacks?: NackItem[]; extends?: ExtendItem[] }): Promise<ConsumeResponse__Output> {
    const stream = this.stream;
    if (stream === undefined) return Promise.reject(new StreamLost("no Consume stream is open"));
    const reportId = ++this.reportIds;
    return new Promise<ConsumeResponse__Output>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.answers.delete(reportId);
        reject(new StreamLost(`report ${reportId} got no answer in ${REPORT_TIMEOUT_MS / 1000} s`));
      }, REPORT_TIMEOUT_MS);
      this.answers.set(reportId, {
        resolve: (r) => {
          clearTimeout(timer);
          resolve(r);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      stream.write({ reportId, credits: this.takeOwed(), acks: items.acks ?? [], nacks: items.nacks ?? [], extends: items.extends ?? [] });
    }).then((response) => {
      const name = unprefixed<string>(String(response.error), "REPORT_ERROR_");
      const code = name !== "UNSPECIFIED" ? (Status as unknown as Record<string, number>)[name] ?? response.errorCode : response.errorCode;
      if (code) throw errorFromStatus(code, response.errorMessage);
      return response;
    });
  }

  // -- leasing: unary calls -------------------------------------------------------------

  private async leaseLoop(stub: FeederStub): Promise<void> {
    const wait = this.options.wait ?? 30;
    let attempt = 0;
    while (!this.stopping) {
      const free = this.concurrency - this.running.size;
      if (free <= 0) {
        await new Promise<void>((resolve) => this.slotWaiters.push(resolve));
        continue;
      }
      try {
        const response = await callOnce(
          stub,
          "Lease",
          {
            queue: this.queue,
            maxTasks: free,
            wait: duration(wait),
            workerId: this.workerId,
            ...(this.options.leaseDuration === undefined ? {} : { leaseDuration: duration(this.options.leaseDuration) }),
          },
          wait + 10,
          this.stopController.signal,
        );
        attempt = 0;
        for (const leased of response.tasks) this.start(leased);
      } catch (error) {
        if (this.stopping) break;
        if (!isTransient(error)) throw error;
        attempt += 1;
        this.log.warn(`Lease failed: ${(error as Error).message}; retrying`);
        await sleep(jittered(RECONNECT, attempt) * 1000, undefined, { signal: this.stopController.signal }).catch(() => undefined);
      }
    }
  }

  private wakeSlotWaiters(): void {
    const waiters = this.slotWaiters;
    this.slotWaiters = [];
    for (const wake of waiters) wake();
  }

  // -- running tasks --------------------------------------------------------------------

  private start(leased: LeasedTask__Output): void {
    this.counters.leased += 1;
    const task = new Task({
      id: leased.taskId,
      queue: leased.queue,
      payload: leased.payload,
      headers: leased.headers,
      attempt: leased.attempt,
      maxAttempts: leased.maxAttempts,
      priority: leased.priority,
      leaseToken: leased.leaseToken,
    });
    if (this.stopping) {
      // Came in while stopping: give it back at once.
      this.counters.released += 1;
      this.enqueue(releaseOf(task));
      return;
    }
    // The lease's length, judged from its deadline when not set here (the clocks may
    // differ a little: the lease still has a third of its time when we extend).
    const now = performance.now();
    const leaseMs =
      this.options.leaseDuration !== undefined
        ? this.options.leaseDuration * 1000
        : Math.max(1000, seconds(leased.leaseDeadline) * 1000 - Date.now());
    const run: Running = { task, expiresAt: now + leaseMs, leaseMs, extending: false, abandoned: false };
    this.running.set(task.leaseToken, run);
    this.track(this.handlers, this.execute(run));
  }

  private track(set: Set<Promise<void>>, promise: Promise<void>): void {
    set.add(promise);
    void promise.finally(() => set.delete(promise));
  }

  private async execute(run: Running): Promise<void> {
    const { task } = run;
    let report: Report | undefined;
    try {
      const result = await this.invoke(task);
      if (!run.abandoned) {
        report = { kind: "ack", item: { leaseToken: task.leaseToken, result }, task, result };
        this.counters.succeeded += 1;
      }
    } catch (error) {
      report = this.failure(run, error);
    } finally {
      this.running.delete(task.leaseToken);
      this.grantFree();
      this.wakeSlotWaiters();
    }
    if (report !== undefined) this.enqueue(report);
  }

  /** The handler's result, or its failure (a timeout is one). */
  private async invoke(task: Task): Promise<Buffer> {
    const handling = (async () => this.options.handler(task))();
    const limit = this.options.taskTimeout;
    if (limit === undefined) return resultBytes(await handling);
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        task.cancel("timeout");
        reject(new Error(`the task ran past its time limit of ${limit} s`));
      }, limit * 1000);
    });
    try {
      return resultBytes(await Promise.race([handling, timedOut]));
    } finally {
      clearTimeout(timer);
      // The slot stays busy until the handler gives up.
      await handling.catch(() => undefined);
    }
  }

  private failure(run: Running, error: unknown): Report | undefined {
    const { task } = run;
    if (run.abandoned) return undefined;
    this.counters.failed += 1;
    const item: NackItem = { leaseToken: task.leaseToken, error: errorText(error) };
    if (error instanceof Retry && error.after !== undefined) item.retryAfter = duration(error.after);
    if (error instanceof Fail) item.terminal = true;
    return { kind: "nack", item, task };
  }

  private abandon(run: Running, reason: CancelReason): void {
    if (run.abandoned) return;
    run.abandoned = true;
    this.counters.abandoned += 1;
    run.task.cancel(reason);
  }

  // -- reporting ------------------------------------------------------------------------

  private enqueue(report: Report): void {
    this.pending.push(report);
    const batch = this.options.ackBatchSize ?? 64;
    if (this.pending.length >= batch) this.flush();
    else this.flushTimer ??= setTimeout(() => this.flush(), (this.options.ackFlushInterval ?? 0.005) * 1000);
  }

  private flush(): void {
    clearTimeout(this.flushTimer);
    this.flushTimer = undefined;
    const batch = this.options.ackBatchSize ?? 64;
    while (this.pending.length > 0) {
      const reports = this.pending.splice(0, batch);
      this.track(this.sends, this.send(reports));
    }
  }

  /** Delivers reports: on the stream, else (or when it breaks) as unary calls, retried
   * until answered. */
  private async send(reports: Report[]): Promise<void> {
    const acks = reports.filter((r): r is Extract<Report, { kind: "ack" }> => r.kind === "ack");
    const nacks = reports.filter((r): r is Extract<Report, { kind: "nack" }> => r.kind === "nack");
    for (let attempt = 0; ; attempt++) {
      try {
        let ackOutcomes: string[];
        let nackOutcomes: string[];
        if (this.stream !== undefined) {
          try {
            const answer = await this.report({ acks: acks.map((r) => r.item), nacks: nacks.map((r) => r.item) });
            ackOutcomes = answer.ackResults.map((r) => String(r.outcome));
            nackOutcomes = answer.nackResults.map((r) => String(r.outcome));
            this.recordAcks(acks, ackOutcomes);
            this.recordNacks(nacks, nackOutcomes);
            return;
          } catch (error) {
            if (!(error instanceof StreamLost)) throw error;
          }
        }
        // One try of each call: this loop retries, and takes the Consume stream again as
        // soon as one is open (a new stream waits for the feeder to be back, where a unary
        // call fails at once while it is down, and retries of its own would back off for
        // seconds more after a feeder restart, past short leases).
        const stub = await this.connection.stub();
        const timeout = REPORT_TIMEOUT_MS / 1000;
        const [ackReply, nackReply] = await Promise.all([
          acks.length ? callOnce(stub, "Ack", { items: acks.map((r) => r.item) }, timeout) : undefined,
          nacks.length ? callOnce(stub, "Nack", { items: nacks.map((r) => r.item) }, timeout) : undefined,
        ]);
        if (ackReply) this.recordAcks(acks, ackReply.results.map((r) => String(r.outcome)));
        if (nackReply) this.recordNacks(nacks, nackReply.results.map((r) => String(r.outcome)));
        return;
      } catch (caught) {
        const error = errorFromCall(caught);
        if (!isTransient(error) && error.code !== Status.RESOURCE_EXHAUSTED) {
          this.log.error(`${reports.length} reports refused, dropped (their leases will expire): ${error.message}`);
          return;
        }
        if (attempt === 0) this.log.warn(`reports not delivered yet: ${error.message}; retrying`);
        await sleep(jittered(RECONNECT, attempt) * 1000);
      }
    }
  }

  private recordAcks(acks: Extract<Report, { kind: "ack" }>[], outcomes: string[]): void {
    acks.forEach((report, i) => {
      const outcome = unprefixed<string>(outcomes[i] ?? "ACK_OUTCOME_UNSPECIFIED", "ACK_OUTCOME_");
      if (COMPLETING.has(outcome)) this.counters.acked += 1;
      if (outcome === "DUPLICATE") this.counters.ackDuplicates += 1;
      if (outcome === "INVALID_TOKEN") this.log.error(`task ${report.task.id}: the feeder did not accept its lease token`);
      const event: AckEvent = { taskId: report.task.id, attempt: report.task.attempt, outcome, result: report.result };
      this.writeLedger(event);
      this.emit("ack", event);
    });
  }

  private recordNacks(nacks: Extract<Report, { kind: "nack" }>[], outcomes: string[]): void {
    nacks.forEach((report, i) => {
      const outcome = unprefixed<string>(outcomes[i] ?? "NACK_OUTCOME_UNSPECIFIED", "NACK_OUTCOME_");
      this.emit("nack", { taskId: report.task.id, attempt: report.task.attempt, outcome });
    });
  }

  private writeLedger(event: AckEvent): void {
    if (this.ledgerFd === undefined) return;
    const line = JSON.stringify({
      task_id: event.taskId,
      attempt: event.attempt,
      outcome: event.outcome,
      result: event.result.toString("base64"),
      worker_id: this.workerId,
      pid: process.pid,
      at: Date.now() / 1000,
    });
    fs.writeSync(this.ledgerFd, `${line}\n`);
  }

  // -- lease extension ------------------------------------------------------------------

  /** Extends every lease with a third or less of its time left, in one batch. */
  private heartbeat(): void {
    const now = performance.now();
    const due: Running[] = [];
    for (const run of this.running.values()) {
      if (!run.extending && !run.abandoned && run.expiresAt - now <= run.leaseMs * EXTEND_AT_REMAINING) due.push(run);
    }
    if (due.length === 0) return;
    for (const run of due) run.extending = true;
    this.track(this.sends, this.extend(due, now));
  }

  private async extend(due: Running[], sentAt: number): Promise<void> {
    const items: ExtendItem[] = due.map((run) => ({
      leaseToken: run.task.leaseToken,
      ...(this.options.leaseDuration === undefined ? {} : { leaseDuration: duration(this.options.leaseDuration) }),
    }));
    let outcomes: string[] | undefined;
    try {
      if (this.stream !== undefined) {
        try {
          outcomes = (await this.report({ extends: items })).extendResults.map((r) => String(r.outcome));
        } catch (error) {
          if (!(error instanceof StreamLost)) throw error;
        }
      }
      if (outcomes === undefined) {
        const stub = await this.connection.stub();
        // Retried while the lease may still be saved.
        const left = Math.max(1, (Math.min(...due.map((r) => r.expiresAt)) - performance.now()) / 1000);
        const reply = await call(stub, "Extend", { items }, { timeout: Math.min(10, left), maxRetryDelay: left });
        outcomes = reply.results.map((r) => String(r.outcome));
      }
    } catch (error) {
      this.log.warn(`extending ${due.length} leases failed: ${(error as Error).message}`);
      for (const run of due) run.extending = false;
      return;
    }
    due.forEach((run, i) => {
      run.extending = false;
      const outcome = unprefixed<string>(outcomes![i] ?? "", "EXTEND_OUTCOME_");
      if (outcome === "EXTENDED") {
        this.counters.extended += 1;
        run.expiresAt = sentAt + run.leaseMs;
      } else if (this.running.get(run.task.leaseToken) === run) {
        this.abandon(run, outcome === "CANCELLED" ? "cancelled" : outcome === "COMPLETED" ? "completed elsewhere" : "lease lost");
      }
    });
  }
}
