/**
 * feedwork for Node.js: a producer client and a worker, on the feedwork.v1 contract.
 *
 *     import { FeederClient, Worker, Retry, Fail } from "@feedwork/client";
 */
export { FeederClient, autoKey, SUBMIT_BATCH_BYTES, SUBMIT_BATCH_LIMIT, type ClientOptions } from "./client";
export { Worker, type AckEvent, type Handler, type HandlerResult, type Logger, type WorkerCounters, type WorkerOptions } from "./worker";
export { Task, Retry, Fail, type CancelReason } from "./task";
export { Connection, DEFAULT_TARGET, type ConnectionOptions, type SecurityOptions } from "./channel";
export {
  FeedworkError,
  InvalidArgument,
  NotFound,
  AlreadyExists,
  ResourceExhausted,
  FailedPrecondition,
  Unavailable,
  DeadlineExceeded,
  Unauthenticated,
  PermissionDenied,
  WaitTimeout,
  CredentialsError,
  TargetError,
  Status,
  isTransient,
  type FieldViolation,
} from "./errors";
export type {
  AttemptInfo,
  AttemptOutcome,
  CancelResult,
  DeadPage,
  QueueStats,
  Stats,
  SubmitResult,
  TaskInfo,
  TaskSpec,
  TaskState,
  Totals,
} from "./types";
