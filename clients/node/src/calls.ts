/** Unary calls as promises, with a deadline, retried on transient failures. */
import type * as grpc from "@grpc/grpc-js";

import type { FeederStub } from "./proto";
import { retrying } from "./retry";
import type { SubmitRequest } from "./gen/feedwork/v1/SubmitRequest";
import type { SubmitResponse__Output } from "./gen/feedwork/v1/SubmitResponse";
import type { LeaseRequest } from "./gen/feedwork/v1/LeaseRequest";
import type { LeaseResponse__Output } from "./gen/feedwork/v1/LeaseResponse";
import type { AckRequest } from "./gen/feedwork/v1/AckRequest";
import type { AckResponse__Output } from "./gen/feedwork/v1/AckResponse";
import type { NackRequest } from "./gen/feedwork/v1/NackRequest";
import type { NackResponse__Output } from "./gen/feedwork/v1/NackResponse";
import type { ExtendRequest } from "./gen/feedwork/v1/ExtendRequest";
import type { ExtendResponse__Output } from "./gen/feedwork/v1/ExtendResponse";
import type { GetTaskRequest } from "./gen/feedwork/v1/GetTaskRequest";
import type { GetTaskResponse__Output } from "./gen/feedwork/v1/GetTaskResponse";
import type { CancelTaskRequest } from "./gen/feedwork/v1/CancelTaskRequest";
import type { CancelTaskResponse__Output } from "./gen/feedwork/v1/CancelTaskResponse";
import type { ListDeadTasksRequest } from "./gen/feedwork/v1/ListDeadTasksRequest";
import type { ListDeadTasksResponse__Output } from "./gen/feedwork/v1/ListDeadTasksResponse";
import type { RedriveDeadTasksRequest } from "./gen/feedwork/v1/RedriveDeadTasksRequest";
import type { RedriveDeadTasksResponse__Output } from "./gen/feedwork/v1/RedriveDeadTasksResponse";
import type { PurgeDeadTasksRequest } from "./gen/feedwork/v1/PurgeDeadTasksRequest";
import type { PurgeDeadTasksResponse__Output } from "./gen/feedwork/v1/PurgeDeadTasksResponse";
import type { GetStatsRequest } from "./gen/feedwork/v1/GetStatsRequest";
import type { GetStatsResponse__Output } from "./gen/feedwork/v1/GetStatsResponse";

/** The Feeder's unary methods: request and reply types. */
export interface Unary {
  Submit: [SubmitRequest, SubmitResponse__Output];
  Lease: [LeaseRequest, LeaseResponse__Output];
  Ack: [AckRequest, AckResponse__Output];
  Nack: [NackRequest, NackResponse__Output];
  Extend: [ExtendRequest, ExtendResponse__Output];
  GetTask: [GetTaskRequest, GetTaskResponse__Output];
  CancelTask: [CancelTaskRequest, CancelTaskResponse__Output];
  ListDeadTasks: [ListDeadTasksRequest, ListDeadTasksResponse__Output];
  RedriveDeadTasks: [RedriveDeadTasksRequest, RedriveDeadTasksResponse__Output];
  PurgeDeadTasks: [PurgeDeadTasksRequest, PurgeDeadTasksResponse__Output];
  GetStats: [GetStatsRequest, GetStatsResponse__Output];
}

type Callback<Res> = (error: grpc.ServiceError | null, response?: Res) => void;

/** One call of `method`, failing after `timeout` seconds. */
export function callOnce<M extends keyof Unary>(
  stub: FeederStub,
  method: M,
  request: Unary[M][0],
  timeout: number,
  signal?: AbortSignal,
): Promise<Unary[M][1]> {
  type Fn = (r: Unary[M][0], o: grpc.CallOptions, cb: Callback<Unary[M][1]>) => grpc.ClientUnaryCall;
  const fn = stub[method] as unknown as Fn;
  return new Promise((resolve, reject) => {
    const onAbort = (): void => running.cancel();
    const running = fn.call(stub, request, { deadline: Date.now() + timeout * 1000 }, (error, response) => {
      signal?.removeEventListener("abort", onAbort);
      if (error) reject(error);
      else resolve(response as Unary[M][1]);
    });
    if (signal?.aborted) running.cancel();
    else signal?.addEventListener("abort", onAbort, { once: true });
  });
}

export interface CallOptions {
  timeout: number;
  maxRetryDelay: number;
  signal?: AbortSignal | undefined;
}

/** `callOnce`, retried with backoff for up to `maxRetryDelay` seconds on UNAVAILABLE,
 * DEADLINE_EXCEEDED and CANCELLED (every feedwork write is idempotent). */
export function call<M extends keyof Unary>(
  stub: FeederStub,
  method: M,
  request: Unary[M][0],
  options: CallOptions,
): Promise<Unary[M][1]> {
  return retrying(() => callOnce(stub, method, request, options.timeout), {
    maxDelay: options.maxRetryDelay,
    signal: options.signal,
  });
}
