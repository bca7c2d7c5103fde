// TLS, mTLS and API keys against a feeder started with them (docs/SECURITY.md).
"use strict";
const assert = require("node:assert/strict");
const fs = require("node:fs");
const path = require("node:path");
const { after, before, describe, test } = require("node:test");

const {
  CredentialsError,
  FeederClient,
  PermissionDenied,
  Unauthenticated,
  Unavailable,
  Worker,
} = require("../dist/index.js");
const { Feeder, devCerts, waitFor } = require("../testkit/feeder.js");

const quiet = { info() {}, warn() {}, error() {} };

describe("TLS and API keys", () => {
  let certs;
  let feeder;

  before(async () => {
    certs = devCerts();
    feeder = await new Feeder({
      args: ["--tls-cert", certs.file("feeder.pem"), "--tls-key", certs.file("feeder-key.pem"), "--auth-file", certs.file("auth.txt")],
    }).start();
  });

  after(async () => {
    await feeder.stop();
    fs.rmSync(certs.dir, { recursive: true, force: true });
  });

  const tls = () => ({ target: feeder.target, tlsCa: certs.file("ca.pem"), maxRetryDelay: 1, timeout: 5 });

  test("a producer key submits, a worker key works the queue, over TLS", async () => {
    const producer = new FeederClient({ ...tls(), apiKey: certs.key("producer.key") });
    const { taskId } = await producer.submit("secret", { queue: "s-tls" });
    const worker = new Worker({
      ...tls(),
      apiKeyFile: certs.file("worker.key"),
      queue: "s-tls",
      handleSignals: false,
      logger: quiet,
      handler: (task) => `seen ${task.text()}`,
    });
    const running = worker.run();
    const admin = new FeederClient({ ...tls(), apiKey: certs.key("admin.key") });
    const task = await waitFor(async () => {
      const t = await admin.get(taskId);
      return t.state === "COMPLETED" ? t : null;
    }, { what: "the task to complete" });
    worker.stop();
    await running;
    assert.equal(task.result.toString(), "seen secret");
    assert.equal(task.history[0].caller, "worker");
    producer.close();
    admin.close();
  });

  test("no key is UNAUTHENTICATED, a forged one too, the wrong role PERMISSION_DENIED", async () => {
    const none = new FeederClient(tls());
    await assert.rejects(none.submit("", { queue: "s-tls" }), Unauthenticated);
    const forged = new FeederClient({ ...tls(), apiKey: certs.key("producer.key").slice(0, -4) + "AAAA" });
    await assert.rejects(forged.submit("", { queue: "s-tls" }), Unauthenticated);
    const producer = new FeederClient({ ...tls(), apiKey: certs.key("producer.key") });
    await assert.rejects(producer.stats(), (e) => e instanceof PermissionDenied && /admin/.test(e.message));
    const worker = new Worker({ ...tls(), apiKey: certs.key("producer.key"), queue: "s-tls", handleSignals: false, logger: quiet, handler: () => "" });
    await assert.rejects(worker.run(), PermissionDenied);
    for (const c of [none, forged, producer]) c.close();
  });

  test("a client without the CA, or in clear text, cannot connect", async () => {
    const plain = new FeederClient({ target: feeder.target, apiKey: certs.key("admin.key"), maxRetryDelay: 0.5, timeout: 2 });
    await assert.rejects(plain.stats(), Unavailable);
    const systemCas = new FeederClient({ target: feeder.target, tls: true, apiKey: certs.key("admin.key"), maxRetryDelay: 0.5, timeout: 2 });
    await assert.rejects(systemCas.stats(), Unavailable);
    plain.close();
    systemCas.close();
  });

  test("a key is never sent in clear text to another host; TLS to a list needs a server name", () => {
    assert.throws(() => new FeederClient({ target: "10.1.2.3:50051", apiKey: "fwk_x_y" }), CredentialsError);
    assert.throws(() => new FeederClient({ target: "feeder.example:50051", apiKey: "fwk_x_y" }), CredentialsError);
    new FeederClient({ target: "127.0.0.1:50051", apiKey: "fwk_x_y" }).close(); // loopback: fine
    assert.throws(
      () => new FeederClient({ target: "127.0.0.1:1,127.0.0.1:2", tlsCa: certs.file("ca.pem") }),
      /tlsServerName/,
    );
    assert.throws(() => new FeederClient({ target: "127.0.0.1:1", tlsCa: path.join(certs.dir, "nope.pem") }), /tlsCa: cannot read/);
    assert.throws(() => new FeederClient({ tlsClientCert: certs.file("ca.pem") }), /go together/);
  });

  test("the FEEDWORK_* variables fill in options not given", async () => {
    const saved = { ...process.env };
    Object.assign(process.env, {
      FEEDWORK_TARGET: feeder.target,
      FEEDWORK_TLS_CA: certs.file("ca.pem"),
      FEEDWORK_API_KEY_FILE: certs.file("admin.key"),
    });
    try {
      const client = new FeederClient({ maxRetryDelay: 1 });
      assert.ok((await client.stats()).totals.submitted >= 1);
      client.close();
    } finally {
      for (const k of Object.keys(process.env)) if (!(k in saved)) delete process.env[k];
    }
  });
});

describe("mTLS", () => {
  test("a client certificate names the caller; none is refused", async () => {
    const certs = devCerts();
    const auth = path.join(certs.dir, "mtls-auth.txt");
    fs.writeFileSync(auth, "node-client cert:node-client admin:*\n");
    const feeder = await new Feeder({
      args: [
        "--tls-cert", certs.file("feeder.pem"),
        "--tls-key", certs.file("feeder-key.pem"),
        "--tls-client-ca", certs.file("ca.pem"),
        "--auth-file", auth,
      ],
    }).start();
    try {
      const base = { target: feeder.target, tlsCa: certs.file("ca.pem"), maxRetryDelay: 0.5, timeout: 3 };
      const withCert = new FeederClient({
        ...base,
        tlsClientCert: certs.file("client-node-client.pem"),
        tlsClientKey: certs.file("client-node-client-key.pem"),
      });
      const { taskId } = await withCert.submit("", { queue: "s-mtls" });
      assert.equal((await withCert.get(taskId)).state, "READY");
      const without = new FeederClient(base);
      await assert.rejects(without.get(taskId), Unavailable);
      withCert.close();
      without.close();
    } finally {
      await feeder.stop();
      fs.rmSync(certs.dir, { recursive: true, force: true });
    }
  });
});
