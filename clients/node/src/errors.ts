/**
 * Errors: every failed call becomes a `FeedworkError` subclass chosen by its gRPC status
 * code, with the feeder's message (it names the field at fault, e.g. `tasks[3].queue`) and,
 * for INVALID_ARGUMENT, the `google.rpc.BadRequest` field violations of the status details.
 */
import { status as Status, type Metadata, type ServiceError } from "@grpc/grpc-js";
import * as protobuf from "protobufjs";

export { Status };

/** One field of a request the feeder refused, and why. */
export interface FieldViolation {
  field: string;
  description: string;
}

export class FeedworkError extends Error {
  /** The gRPC status code (`Status.INVALID_ARGUMENT`, ...), or undefined for a local error. */
  readonly code: number | undefined;
  /** The feeder's message, without the code's name. */
  readonly details: string;
  readonly fieldViolations: readonly FieldViolation[];

  constructor(
    message: string,
    options: { code?: number; fieldViolations?: readonly FieldViolation[]; cause?: unknown } = {},
  ) {
    const name = options.code === undefined ? undefined : Status[options.code];
    super(name ? `${name}: ${message}` : message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = options.code;
    this.details = message;
    this.fieldViolations = options.fieldViolations ?? [];
  }
}

/** The request was malformed; the message and `fieldViolations` name the field. */
export class InvalidArgument extends FeedworkError {}
/** No such task (never existed, or purged after its retention). */
export class NotFound extends FeedworkError {}
export class AlreadyExists extends FeedworkError {}
/** A queue is full or a limit was reached. */
export class ResourceExhausted extends FeedworkError {}
export class FailedPrecondition extends FeedworkError {}
/** No feeder could be reached (after the retries). */
export class Unavailable extends FeedworkError {}
export class DeadlineExceeded extends FeedworkError {}
/** No API key, or one the feeder does not know. Never retried. */
export class Unauthenticated extends FeedworkError {}
/** The key's roles do not allow this call on this queue. Never retried. */
export class PermissionDenied extends FeedworkError {}
/** `wait()` gave up before the task settled. */
export class WaitTimeout extends FeedworkError {}
/** TLS or API key options that cannot work (a key in clear text to another host...). */
export class CredentialsError extends FeedworkError {}
/** A feeder target that is malformed. */
export class TargetError extends FeedworkError {}

const BY_CODE: Record<number, new (message: string, options: { code?: number; fieldViolations?: readonly FieldViolation[]; cause?: unknown }) => FeedworkError> = {
  [Status.INVALID_ARGUMENT]: InvalidArgument,
  [Status.NOT_FOUND]: NotFound,
  [Status.ALREADY_EXISTS]: AlreadyExists,
  [Status.RESOURCE_EXHAUSTED]: ResourceExhausted,
  [Status.FAILED_PRECONDITION]: FailedPrecondition,
  [Status.UNAVAILABLE]: Unavailable,
  [Status.DEADLINE_EXCEEDED]: DeadlineExceeded,
  [Status.UNAUTHENTICATED]: Unauthenticated,
  [Status.PERMISSION_DENIED]: PermissionDenied,
};

/** The error for a status code and message (a refused Consume report, a failed call). */
export function errorFromStatus(
  code: number,
  message: string,
  fieldViolations: readonly FieldViolation[] = [],
  cause?: unknown,
): FeedworkError {
  const Class = BY_CODE[code] ?? FeedworkError;
  return new Class(message, { code, fieldViolations, cause });
}

export function isServiceError(value: unknown): value is ServiceError {
  return value instanceof Error && typeof (value as Partial<ServiceError>).code === "number" && "metadata" in value;
}

/** A FeedworkError for anything a call threw. */
export function errorFromCall(error: unknown): FeedworkError {
  if (error instanceof FeedworkError) return error;
  if (isServiceError(error)) {
    return errorFromStatus(error.code, error.details, fieldViolations(error.metadata), error);
  }
  return new FeedworkError(error instanceof Error ? error.message : String(error), { cause: error });
}

// google.rpc.Status and google.rpc.BadRequest: the standard error details
// (googleapis/google/rpc/status.proto and error_details.proto), only the fields read here.
const RPC = protobuf.Root.fromJSON({
  nested: {
    google: {
      nested: {
        protobuf: { nested: { Any: { fields: { type_url: { type: "string", id: 1 }, value: { type: "bytes", id: 2 } } } } },
        rpc: {
          nested: {
            Status: {
              fields: {
                code: { type: "int32", id: 1 },
                message: { type: "string", id: 2 },
                details: { rule: "repeated", type: "google.protobuf.Any", id: 3 },
              },
            },
            BadRequest: {
              fields: { field_violations: { rule: "repeated", type: "FieldViolation", id: 1 } },
              nested: {
                FieldViolation: {
                  fields: { field: { type: "string", id: 1 }, description: { type: "string", id: 2 } },
                },
              },
            },
          },
        },
      },
    },
  },
});
const RPC_STATUS = RPC.lookupType("google.rpc.Status");
const BAD_REQUEST = RPC.lookupType("google.rpc.BadRequest");
const BAD_REQUEST_URL = "type.googleapis.com/google.rpc.BadRequest";
export const STATUS_DETAILS_KEY = "grpc-status-details-bin";

/** The field violations of a failed call's status details (none if it has none). */
export function fieldViolations(metadata: Metadata | undefined): FieldViolation[] {
  const values = metadata?.get(STATUS_DETAILS_KEY) ?? [];
  const found: FieldViolation[] = [];
  for (const value of values) {
    if (typeof value === "string") continue;
    try {
      const status = RPC_STATUS.toObject(RPC_STATUS.decode(value)) as {
        details?: { type_url: string; value: Uint8Array }[];
      };
      for (const detail of status.details ?? []) {
        if (detail.type_url !== BAD_REQUEST_URL) continue;
        const bad = BAD_REQUEST.toObject(BAD_REQUEST.decode(detail.value)) as {
          field_violations?: FieldViolation[];
        };
        for (const v of bad.field_violations ?? []) found.push({ field: v.field ?? "", description: v.description ?? "" });
      }
    } catch {
      // Details we cannot read add nothing; the message still says it all.
    }
  }
  return found;
}

// Worth trying again: the feeder was down, restarting, draining or overloaded, or the
// call was cut. Every write is idempotent (idempotency keys, lease tokens).
const TRANSIENT = new Set<number>([Status.UNAVAILABLE, Status.DEADLINE_EXCEEDED, Status.CANCELLED]);

/** True for failures a retry may cure (UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED). */
export function isTransient(error: unknown): boolean {
  const code = error instanceof FeedworkError ? error.code : isServiceError(error) ? error.code : undefined;
  return code !== undefined && TRANSIENT.has(code);
}
