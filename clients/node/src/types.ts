/** What the client returns: plain objects, enum names without their prefixes. */
import { date, seconds } from "./proto";
import type { Task__Output } from "./gen/feedwork/v1/Task";
import type { QueueStats__Output } from "./gen/feedwork/v1/QueueStats";
import type { Totals__Output } from "./gen/feedwork/v1/Totals";

export type TaskState = "SCHEDULED" | "READY" | "LEASED" | "COMPLETED" | "DEAD" | "CANCELLED" | "UNSPECIFIED";
export type AttemptOutcome = "RUNNING" | "ACKED" | "FAILED" | "EXPIRED" | "RELEASED" | "REVOKED" | "UNSPECIFIED";

/** A task to submit. Durations are in seconds. */
export interface TaskSpec {
  queue: string;
  payload?: Buffer | Uint8Array | string;
  headers?: Record<string, string>;
  /** Higher first. */
  priority?: number;
  /** Not before this many seconds from now (exclusive with `notBefore`). */
  delay?: number;
  notBefore?: Date;
  /** Failures allowed before the task is dead (0 or none: the queue's default). */
  maxAttempts?: number;
  /** Seconds each lease lasts (none: the queue's default). */
  leaseDuration?: number;
  /** Made for you when not given (`auto-` and a UUIDv7), so that retries never duplicate. */
  idempotencyKey?: string;
}

export interface SubmitResult {
  taskId: string;
  state: TaskState;
  /** True when a task with this idempotency key existed: nothing new was created. */
  deduplicated: boolean;
  idempotencyKey: string;
}

export interface AttemptInfo {
  attempt: number;
  workerId: string;
  /** Who leased it: the API key's id or the certificate's name (empty without auth). */
  caller: string;
  leasedAt: Date | null;
  endedAt: Date | null;
  outcome: AttemptOutcome;
  error: string;
}

export interface TaskInfo {
  taskId: string;
  queue: string;
  payload: Buffer;
  headers: Record<string, string>;
  priority: number;
  state: TaskState;
  attempts: number;
  failures: number;
  maxAttempts: number;
  notBefore: Date | null;
  leaseDeadline: Date | null;
  result: Buffer;
  idempotencyKey: string;
  createdAt: Date | null;
  finishedAt: Date | null;
  history: AttemptInfo[];
  /** Seconds, or null for the queue's default. */
  leaseDuration: number | null;
  attemptsOmitted: number;
}

export interface Totals {
  submitted: number;
  completed: number;
  expired: number;
  redelivered: number;
  duplicateAcks: number;
  deadLettered: number;
  adopted: number;
  failed: number;
  cancelled: number;
}

export interface QueueStats {
  queue: string;
  scheduled: number;
  ready: number;
  leased: number;
  completed: number;
  dead: number;
  cancelled: number;
  /** Seconds the oldest ready task has waited. */
  oldestReadyAge: number;
  totals: Totals;
}

export interface Stats {
  queues: QueueStats[];
  totals: Totals;
}

export interface CancelResult {
  outcome: "CANCELLED" | "ALREADY_CANCELLED" | "ALREADY_COMPLETED" | "UNSPECIFIED";
  state: TaskState;
}

export interface DeadPage {
  tasks: TaskInfo[];
  /** Empty on the last page. */
  nextPageToken: string;
}

export const SETTLED: ReadonlySet<TaskState> = new Set(["COMPLETED", "DEAD", "CANCELLED"]);

/** `name` without `prefix` (the proto's enum names are prefixed by their type). */
export function unprefixed<T extends string>(name: string, prefix: string): T {
  return (name.startsWith(prefix) ? name.slice(prefix.length) : name) as T;
}

export function taskInfo(task: Task__Output): TaskInfo {
  return {
    taskId: task.taskId,
    queue: task.queue,
    payload: task.payload,
    headers: { ...task.headers },
    priority: task.priority,
    state: unprefixed<TaskState>(String(task.state), "TASK_STATE_"),
    attempts: task.attempts,
    failures: task.failures,
    maxAttempts: task.maxAttempts,
    notBefore: date(task.notBefore),
    leaseDeadline: date(task.leaseDeadline),
    result: task.result,
    idempotencyKey: task.idempotencyKey,
    createdAt: date(task.createdAt),
    finishedAt: date(task.finishedAt),
    history: task.history.map((a) => ({
      attempt: a.attempt,
      workerId: a.workerId,
      caller: a.caller,
      leasedAt: date(a.leasedAt),
      endedAt: date(a.endedAt),
      outcome: unprefixed<AttemptOutcome>(String(a.outcome), "ATTEMPT_OUTCOME_"),
      error: a.error,
    })),
    leaseDuration: task.leaseDuration ? seconds(task.leaseDuration) : null,
    attemptsOmitted: task.attemptsOmitted,
  };
}

export function totals(t: Totals__Output | null): Totals {
  return {
    submitted: Number(t?.submitted ?? 0),
    completed: Number(t?.completed ?? 0),
    expired: Number(t?.expired ?? 0),
    redelivered: Number(t?.redelivered ?? 0),
    duplicateAcks: Number(t?.duplicateAcks ?? 0),
    deadLettered: Number(t?.deadLettered ?? 0),
    adopted: Number(t?.adopted ?? 0),
    failed: Number(t?.failed ?? 0),
    cancelled: Number(t?.cancelled ?? 0),
  };
}

export function queueStats(q: QueueStats__Output): QueueStats {
  return {
    queue: q.queue,
    scheduled: Number(q.scheduled),
    ready: Number(q.ready),
    leased: Number(q.leased),
    completed: Number(q.completed),
    dead: Number(q.dead),
    cancelled: Number(q.cancelled),
    oldestReadyAge: seconds(q.oldestReadyAge),
    totals: totals(q.totals),
  };
}
