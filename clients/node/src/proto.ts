/**
 * The feedwork.v1 contract, loaded from `protos/` at run time (no generated code to keep in
 * step: the types under `src/gen` are generated from the same file at build time).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

import type { ProtoGrpcType } from "./gen/feeder";
import type { FeederClient as FeederStub } from "./gen/feedwork/v1/Feeder";

export type { FeederStub };

// How messages look in JavaScript: camelCase fields, int64 as numbers (counts and seconds
// stay far below 2^53), enums as their names, bytes as Buffers, every field present.
export const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: false,
  longs: Number,
  enums: String,
  bytes: Buffer,
  defaults: true,
  oneofs: true,
};

const PROTO_FILE = path.join("feedwork", "v1", "feeder.proto");

/** Where feeder.proto is: $FEEDWORK_PROTO_DIR, the package's own copy (`proto/`, made
 * when it is packed), or the repository's `protos/` (a checkout). */
export function protoDir(): string {
  const packageRoot = path.resolve(__dirname, "..");
  const candidates = [
    process.env.FEEDWORK_PROTO_DIR,
    path.join(packageRoot, "proto"),
    path.resolve(packageRoot, "..", "..", "protos"),
  ];
  for (const dir of candidates) {
    if (dir && fs.existsSync(path.join(dir, PROTO_FILE))) return dir;
  }
  throw new Error(
    `feedwork: ${PROTO_FILE} not found in ${candidates.filter(Boolean).join(", ")}; ` +
      "set FEEDWORK_PROTO_DIR to the folder that holds feedwork/v1/feeder.proto",
  );
}

let loaded: ProtoGrpcType | undefined;

/** The loaded package (once per process). */
export function feedworkV1(): ProtoGrpcType["feedwork"]["v1"] {
  if (loaded === undefined) {
    const definition = protoLoader.loadSync(PROTO_FILE, { ...LOADER_OPTIONS, includeDirs: [protoDir()] });
    loaded = grpc.loadPackageDefinition(definition) as unknown as ProtoGrpcType;
  }
  return loaded.feedwork.v1;
}

/** google.protobuf.Duration from seconds. */
export function duration(seconds: number): { seconds: number; nanos: number } {
  const whole = Math.floor(seconds);
  return { seconds: whole, nanos: Math.round((seconds - whole) * 1e9) };
}

/** Seconds from a google.protobuf.Duration (0 for none). */
export function seconds(value: { seconds?: number | string | null; nanos?: number | null } | null | undefined): number {
  if (!value) return 0;
  return Number(value.seconds ?? 0) + (value.nanos ?? 0) / 1e9;
}

/** google.protobuf.Timestamp from a Date. */
export function timestamp(date: Date): { seconds: number; nanos: number } {
  const ms = date.getTime();
  const secs = Math.floor(ms / 1000);
  return { seconds: secs, nanos: (ms - secs * 1000) * 1e6 };
}

/** A Date from a google.protobuf.Timestamp; null for an unset one. */
export function date(value: { seconds?: number | string | null; nanos?: number | null } | null | undefined): Date | null {
  if (!value) return null;
  const secs = Number(value.seconds ?? 0);
  const nanos = value.nanos ?? 0;
  if (secs === 0 && nanos === 0) return null;
  return new Date(secs * 1000 + Math.floor(nanos / 1e6));
}
