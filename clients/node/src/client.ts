/**
 * The producer and operator client: submit tasks (one or many, batched by count and bytes,
 * each with an idempotency key so that retries never duplicate), read them back, wait for
 * them, cancel them, read stats, and handle dead letters.
 *
 *     const client = new FeederClient({ target: "127.0.0.1:50051" });
 *     const { taskId } = await client.submit("hello", { queue: "emails" });
 *     const task = await client.wait(taskId, { timeout: 30 });
 *     client.close();
 */
import { randomBytes } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";

import { call, type Unary } from "./calls";
import { Connection, type ConnectionOptions } from "./channel";
import { FeedworkError, InvalidArgument, WaitTimeout, errorFromCall, type FieldViolation } from "./errors";
import { duration, timestamp } from "./proto";
import {
  SETTLED,
  queueStats,
  taskInfo,
  totals,
  unprefixed,
  type CancelResult,
  type DeadPage,
  type QueueStats,
  type Stats,
  type SubmitResult,
  type TaskInfo,
  type TaskSpec,
  type TaskState,
} from "./types";
import type { TaskSpec as WireTaskSpec } from "./gen/feedwork/v1/TaskSpec";
import type { QueueStats__Output } from "./gen/feedwork/v1/QueueStats";

/** Tasks per Submit: the feeder's limit. */
export const SUBMIT_BATCH_LIMIT = 1000;
/** Bytes per Submit, kept under the feeder's 8 MiB message limit. */
export const SUBMIT_BATCH_BYTES = 7 * 1024 * 1024;

const POLL_FIRST = 0.05;
const POLL_MAX = 1.0;
const POLL_GROWTH = 1.5;

export interface ClientOptions extends ConnectionOptions {
  /** Seconds each call may take (default 10). */
  timeout?: number;
  /** Seconds of retries (UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED) before a call fails (default 30). */
  maxRetryDelay?: number;
}

/** A fresh idempotency key: `auto-` and a UUIDv7 in hex (48 bits of Unix milliseconds,
 * then random bits), time-ordered so that the feeder's index of keys stays compact. The
 * Python SDK makes the same. */
export function autoKey(now: number = Date.now()): string {
  const bytes = randomBytes(16);
  bytes.writeUIntBE(now, 0, 6);
  bytes[6] = 0x70 | (bytes[6]! & 0x0f);
  bytes[8] = 0x80 | (bytes[8]! & 0x3f);
  return `auto-${bytes.toString("hex")}`;
}

function payloadBytes(payload: TaskSpec["payload"]): Buffer {
  if (payload === undefined) return Buffer.alloc(0);
  if (typeof payload === "string") return Buffer.from(payload, "utf8");
  return Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength);
}

/** The wire spec, and an upper bound of its encoded size. */
function wireSpec(spec: TaskSpec, key: string): { message: WireTaskSpec; size: number } {
  const payload = payloadBytes(spec.payload);
  let size = 64 + payload.length + Buffer.byteLength(spec.queue ?? "") + Buffer.byteLength(key);
  for (const [k, v] of Object.entries(spec.headers ?? {})) size += 16 + Buffer.byteLength(k) + Buffer.byteLength(v);
  const message: WireTaskSpec = {
    queue: spec.queue,
    payload,
    headers: spec.headers ?? {},
    priority: spec.priority ?? 0,
    maxAttempts: spec.maxAttempts ?? 0,
    idempotencyKey: key,
  };
  if (spec.delay !== undefined) message.delay = duration(spec.delay);
  if (spec.notBefore !== undefined) message.notBefore = timestamp(spec.notBefore);
  if (spec.leaseDuration !== undefined) message.leaseDuration = duration(spec.leaseDuration);
  return { message, size };
}

/** Batches of at most `maxTasks` tasks and about `maxBytes` bytes (a larger task goes alone). */
export function* batches<T>(
  items: readonly { message: T; size: number }[],
  maxTasks = SUBMIT_BATCH_LIMIT,
  maxBytes = SUBMIT_BATCH_BYTES,
): Generator<{ offset: number; batch: T[] }> {
  let start = 0;
  let bytes = 0;
  for (let i = 0; i < items.length; i++) {
    const size = items[i]!.size;
    if (i > start && (i - start >= maxTasks || bytes + size > maxBytes)) {
      yield { offset: start, batch: items.slice(start, i).map((x) => x.message) };
      start = i;
      bytes = 0;
    }
    bytes += size;
  }
  if (start < items.length) yield { offset: start, batch: items.slice(start).map((x) => x.message) };
}

const BATCH_INDEX = /^tasks\[(\d+)\]/;

/** The error of a batch at `offset`, with the feeder's `tasks[i]` turned into the index
 * in the caller's own list. */
function renumbered(error: FeedworkError, offset: number): FeedworkError {
  if (offset === 0 || !(error instanceof InvalidArgument)) return error;
  const shift = (text: string): string => text.replace(BATCH_INDEX, (_, i: string) => `tasks[${Number(i) + offset}]`);
  const violations: FieldViolation[] = error.fieldViolations.map((v) => ({ field: shift(v.field), description: v.description }));
  return new InvalidArgument(shift(error.details), { code: error.code, fieldViolations: violations, cause: error });
}

export class FeederClient {
  readonly connection: Connection;
  private readonly timeout: number;
  private readonly maxRetryDelay: number;

  constructor(options: ClientOptions = {}) {
    this.connection = new Connection(options);
    this.timeout = options.timeout ?? 10;
    this.maxRetryDelay = options.maxRetryDelay ?? 30;
  }

  get target(): string {
    return this.connection.target;
  }

  close(): void {
    this.connection.close();
  }

  // -- producing ----------------------------------------------------------------------

  /** Submits one task. */
  async submit(payload: TaskSpec["payload"], options: Omit<TaskSpec, "payload">): Promise<SubmitResult> {
    const [result] = await this.submitMany([{ ...options, payload }]);
    return result!;
  }

  /**
   * Submits tasks in batches (1,000 tasks or about 7 MiB each), results in order. Each
   * batch is all or nothing; when a later batch fails, the earlier ones stay submitted
   * (submitting the same specs again, with the keys of the results, is safe). An
   * InvalidArgument names the task by its index in `specs` (`tasks[1203].queue`).
   */
  async submitMany(specs: Iterable<TaskSpec>): Promise<SubmitResult[]> {
    const items = [...specs].map((spec) => wireSpec(spec, spec.idempotencyKey || autoKey()));
    const results: SubmitResult[] = [];
    for (const { offset, batch } of batches(items)) {
      let response;
      try {
        response = await this.call("Submit", { tasks: batch });
      } catch (error) {
        throw renumbered(errorFromCall(error), offset);
      }
      response.results.forEach((r, i) =>
        results.push({
          taskId: r.taskId,
          state: unprefixed<TaskState>(String(r.state), "TASK_STATE_"),
          deduplicated: r.deduplicated,
          idempotencyKey: batch[i]!.idempotencyKey ?? "",
        }),
      );
    }
    return results;
  }

  // -- inspecting ---------------------------------------------------------------------

  /** The task with its history. Throws NotFound if there is none. */
  async get(taskId: string): Promise<TaskInfo> {
    const response = await this.call("GetTask", { taskId });
    return taskInfo(response.task!);
  }

  /** Polls until the task is COMPLETED, DEAD or CANCELLED; WaitTimeout after `timeout` seconds. */
  async wait(taskId: string, options: { timeout?: number; signal?: AbortSignal } = {}): Promise<TaskInfo> {
    const deadline = options.timeout === undefined ? Infinity : Date.now() + options.timeout * 1000;
    let interval = POLL_FIRST;
    for (;;) {
      const task = await this.get(taskId);
      if (SETTLED.has(task.state)) return task;
      const remaining = (deadline - Date.now()) / 1000;
      if (remaining <= 0) throw new WaitTimeout(`task ${taskId} still ${task.state} after ${options.timeout} s`);
      await sleep(Math.min(interval, remaining) * 1000, undefined, { signal: options.signal });
      interval = Math.min(interval * POLL_GROWTH, POLL_MAX);
    }
  }

  /** Counts and totals of the given queues, or of every queue (read a page at a time). */
  async stats(queues: Iterable<string> = []): Promise<Stats> {
    const names = [...queues];
    const all: QueueStats__Output[] = [];
    let pageToken = "";
    let last;
    do {
      last = await this.call("GetStats", { queues: names, pageToken });
      all.push(...last.queues);
      pageToken = last.nextPageToken;
    } while (pageToken);
    return { queues: all.map(queueStats), totals: totals(last.totals) };
  }

  /** The stats of one queue (zeros for a queue the feeder has not seen). */
  async queueStats(queue: string): Promise<QueueStats> {
    const stats = await this.stats([queue]);
    return stats.queues.find((q) => q.queue === queue) ?? queueStats({ queue } as QueueStats__Output);
  }

  // -- administering ------------------------------------------------------------------

  /** Cancels a task that has not completed. Throws NotFound if there is none. */
  async cancel(taskId: string): Promise<CancelResult> {
    const response = await this.call("CancelTask", { taskId });
    return {
      outcome: unprefixed<CancelResult["outcome"]>(String(response.outcome), "CANCEL_OUTCOME_"),
      state: unprefixed<TaskState>(String(response.state), "TASK_STATE_"),
    };
  }

  /** One page of the dead tasks of `queue`, oldest first; payloads and results only with `includePayloads`. */
  async deadList(
    queue: string,
    options: { pageSize?: number; pageToken?: string; includePayloads?: boolean } = {},
  ): Promise<DeadPage> {
    const response = await this.call("ListDeadTasks", {
      queue,
      pageSize: options.pageSize ?? 100,
      pageToken: options.pageToken ?? "",
      includePayloads: options.includePayloads ?? false,
    });
    return { tasks: response.tasks.map(taskInfo), nextPageToken: response.nextPageToken };
  }

  /** Puts dead tasks (these ids, or up to `limit` of the queue) back to READY; returns how many. */
  async deadRedrive(queue: string, options: { taskIds?: string[]; limit?: number } = {}): Promise<number> {
    const selector = { queue, taskIds: options.taskIds ?? [], limit: options.limit ?? 0 };
    return (await this.call("RedriveDeadTasks", { selector })).redriven;
  }

  /** Deletes dead tasks (these ids, or up to `limit` of the queue) for good; returns how many. */
  async deadPurge(queue: string, options: { taskIds?: string[]; limit?: number } = {}): Promise<number> {
    const selector = { queue, taskIds: options.taskIds ?? [], limit: options.limit ?? 0 };
    return (await this.call("PurgeDeadTasks", { selector })).purged;
  }

  // -- plumbing -----------------------------------------------------------------------

  private async call<M extends keyof Unary>(method: M, request: Unary[M][0]): Promise<Unary[M][1]> {
    const stub = await this.connection.stub();
    return call(stub, method, request, { timeout: this.timeout, maxRetryDelay: this.maxRetryDelay });
  }
}
