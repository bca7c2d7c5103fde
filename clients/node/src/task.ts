/** What a handler sees: the `Task` it is given, and the `Retry` and `Fail` it may throw. */

/**
 * Throw to fail this attempt and ask for the next one no sooner than `after` seconds
 * (none: the queue's backoff). `cause` is kept in the error recorded with the task.
 */
export class Retry extends Error {
  readonly after: number | undefined;

  constructor(message = "", options: { after?: number; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    if (options.after !== undefined && !(options.after >= 0)) {
      throw new RangeError("Retry: after must be a number of seconds, not negative");
    }
    this.name = "Retry";
    this.after = options.after;
  }
}

/** Throw to fail the task for good: it goes dead at once, whatever attempts are left. */
export class Fail extends Error {
  constructor(message = "", options: { cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "Fail";
  }
}

/** Why the worker stopped caring about a task's result (`task.signal.reason`). */
export type CancelReason = "lease lost" | "cancelled" | "completed elsewhere" | "timeout" | "shutdown";

/**
 * One leased task. `signal` aborts when the worker stops caring about the result: the
 * lease was lost, the task was cancelled or completed elsewhere, the time limit passed, or
 * the worker is shutting down (`cancelReason` says which). Pass it to what you call
 * (`fetch(url, { signal: task.signal })`) or check `signal.aborted` in long work.
 */
export class Task {
  readonly id: string;
  readonly queue: string;
  readonly payload: Buffer;
  readonly headers: Readonly<Record<string, string>>;
  /** 1-based: above 1, an earlier attempt failed, expired or was released. */
  readonly attempt: number;
  /** Failures allowed before the task is dead. */
  readonly maxAttempts: number;
  readonly priority: number;
  readonly leaseToken: string;
  private readonly controller = new AbortController();

  constructor(fields: {
    id: string;
    queue: string;
    payload: Buffer;
    headers: Record<string, string>;
    attempt: number;
    maxAttempts: number;
    priority: number;
    leaseToken: string;
  }) {
    this.id = fields.id;
    this.queue = fields.queue;
    this.payload = fields.payload;
    this.headers = Object.freeze({ ...fields.headers });
    this.attempt = fields.attempt;
    this.maxAttempts = fields.maxAttempts;
    this.priority = fields.priority;
    this.leaseToken = fields.leaseToken;
  }

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  get cancelReason(): CancelReason | undefined {
    return this.controller.signal.aborted ? (this.controller.signal.reason as CancelReason) : undefined;
  }

  /** True when a failure now makes the task dead. */
  get isLastAttempt(): boolean {
    return this.maxAttempts > 0 && this.attempt >= this.maxAttempts;
  }

  /** The payload as UTF-8 text. */
  text(): string {
    return this.payload.toString("utf8");
  }

  /** The payload parsed as JSON. */
  json<T = unknown>(): T {
    return JSON.parse(this.text()) as T;
  }

  /** Tells the handler to stop (the worker calls it). */
  cancel(reason: CancelReason): void {
    if (!this.controller.signal.aborted) this.controller.abort(reason);
  }
}
