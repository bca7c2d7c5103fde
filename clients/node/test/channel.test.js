// Targets, option checks and error mapping, without a feeder.
"use strict";
const assert = require("node:assert/strict");
const { test } = require("node:test");
const grpc = require("@grpc/grpc-js");

const { Connection, InvalidArgument, NotFound, Status, TargetError, Worker, isTransient } = require("../dist/index.js");
const { parseTarget } = require("../dist/channel.js");
const { errorFromCall, fieldViolations } = require("../dist/errors.js");
const protobuf = require("protobufjs");

test("targets: one address, a list, IPv6, gRPC URIs; malformed ones are refused with the reason", () => {
  assert.deepEqual(parseTarget("feeder:50051"), [{ host: "feeder", port: 50051 }]);
  assert.deepEqual(parseTarget("10.0.0.1:1, 10.0.0.2:2"), [
    { host: "10.0.0.1", port: 1 },
    { host: "10.0.0.2", port: 2 },
  ]);
  assert.deepEqual(parseTarget("[::1]:50051"), [{ host: "::1", port: 50051 }]);
  assert.equal(parseTarget("dns:///feeder:50051"), null);
  assert.equal(parseTarget("ipv4:127.0.0.1:1,127.0.0.1:2"), null);
  assert.equal(parseTarget("unix:/run/feeder.sock"), null);
  assert.throws(() => parseTarget("feeder"), (e) => e instanceof TargetError && /HOST:PORT/.test(e.message));
  assert.throws(() => parseTarget("feeder:0"), /port must be 1 to 65535, got "0"/);
  assert.throws(() => parseTarget("feeder:99999"), /port must be 1 to 65535/);
  assert.throws(() => parseTarget("a:1,,b:2"), /empty address/);
  assert.throws(() => parseTarget("bad host:1"), /not a host name/);
  assert.throws(() => new Connection({ target: "feeder" }), TargetError);
});

test("a list of names is looked up into one static list", async () => {
  const connection = new Connection({ target: "localhost:7001,127.0.0.1:7002" });
  const stub = await connection.stub();
  assert.match(stub.getChannel().getTarget(), /^ipv[46]:.*7001.*7002/);
  connection.close();
});

test("worker options are checked when it is made", () => {
  const base = { queue: "q", handler: () => undefined };
  assert.throws(() => new Worker({ ...base, queue: "" }), /queue is required/);
  assert.throws(() => new Worker({ ...base, handler: "nope" }), /handler must be a function/);
  assert.throws(() => new Worker({ ...base, concurrency: 0 }), /concurrency must be a whole number from 1, got 0/);
  assert.throws(() => new Worker({ ...base, leaseDuration: -1 }), /leaseDuration must be a number of seconds/);
});

test("errors: a class per status code, the field violations of the status details, what to retry", () => {
  const root = protobuf.Root.fromJSON({
    nested: {
      Any: { fields: { type_url: { type: "string", id: 1 }, value: { type: "bytes", id: 2 } } },
      Status: { fields: { code: { type: "int32", id: 1 }, message: { type: "string", id: 2 }, details: { rule: "repeated", type: "Any", id: 3 } } },
      BadRequest: { fields: { v: { rule: "repeated", type: "V", id: 1 } } },
      V: { fields: { field: { type: "string", id: 1 }, description: { type: "string", id: 2 } } },
    },
  });
  const bad = root.lookupType("BadRequest").encode({ v: [{ field: "tasks[2].queue", description: "must not be empty" }] }).finish();
  const status = root
    .lookupType("Status")
    .encode({ code: 3, message: "m", details: [{ type_url: "type.googleapis.com/google.rpc.BadRequest", value: bad }] })
    .finish();
  const metadata = new grpc.Metadata();
  metadata.set("grpc-status-details-bin", Buffer.from(status));
  assert.deepEqual(fieldViolations(metadata), [{ field: "tasks[2].queue", description: "must not be empty" }]);
  const serviceError = Object.assign(new Error("3 INVALID_ARGUMENT: tasks[2].queue: must not be empty"), {
    code: Status.INVALID_ARGUMENT,
    details: "tasks[2].queue: must not be empty",
    metadata,
  });
  const error = errorFromCall(serviceError);
  assert.ok(error instanceof InvalidArgument);
  assert.equal(error.message, "INVALID_ARGUMENT: tasks[2].queue: must not be empty");
  assert.equal(error.fieldViolations[0].field, "tasks[2].queue");
  assert.ok(errorFromCall({ ...serviceError, code: Status.NOT_FOUND, __proto__: Error.prototype }) instanceof NotFound);
  for (const code of [Status.UNAVAILABLE, Status.DEADLINE_EXCEEDED, Status.CANCELLED]) {
    assert.ok(isTransient(Object.assign(new Error(), { code, metadata })), Status[code]);
  }
  for (const code of [Status.INVALID_ARGUMENT, Status.RESOURCE_EXHAUSTED, Status.UNAUTHENTICATED, Status.PERMISSION_DENIED]) {
    assert.ok(!isTransient(Object.assign(new Error(), { code, metadata })), Status[code]);
  }
  const garbage = new grpc.Metadata();
  garbage.set("grpc-status-details-bin", Buffer.from([0xff, 0xff, 0xff]));
  assert.deepEqual(fieldViolations(garbage), []);
});
