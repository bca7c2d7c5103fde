// A real feeder (`python -m feeder` from the repository's .venv) for the tests: started
// on a free port of 127.0.0.1, stopped (or killed and restarted on the same port) by
// the test, always stopped when the test process ends.
"use strict";
const { spawn, execFileSync } = require("node:child_process");
const fs = require("node:fs");
const net = require("node:net");
const os = require("node:os");
const path = require("node:path");

const REPO = path.resolve(__dirname, "..", "..", "..");
const PYTHON = process.env.FEEDWORK_PYTHON || path.join(REPO, ".venv", "bin", "python");
const live = new Set();

process.on("exit", () => {
  for (const child of live) child.kill("SIGKILL");
});

function python() {
  if (!fs.existsSync(PYTHON)) {
    throw new Error(`no Python for the feeder at ${PYTHON}: run 'make venv' in ${REPO} (or set FEEDWORK_PYTHON)`);
  }
  return PYTHON;
}

function tempDir(prefix = "feedwork-node-") {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

class Feeder {
  /** `args`: more feeder flags; `db`: a file, :memory: or a PostgreSQL URL. */
  constructor({ dir = tempDir(), db, args = [], port } = {}) {
    this.dir = dir;
    this.db = db ?? path.join(dir, "feedwork.db");
    this.args = args;
    this.port = port;
    this.child = undefined;
    this.logPath = path.join(dir, "feeder.log");
  }

  get target() {
    return `127.0.0.1:${this.port}`;
  }

  async start(within = 30_000) {
    this.port ??= await freePort();
    const portFile = path.join(this.dir, "feeder.port");
    const deadline = Date.now() + within;
    for (;;) {
      fs.rmSync(portFile, { force: true });
      const log = fs.openSync(this.logPath, "a");
      const argv = [
        "-m", "feeder",
        "--listen", `127.0.0.1:${this.port}`,
        "--db", this.db,
        "--port-file", portFile,
        "--log-level", "warning",
        "--shutdown-grace", "2s",
        ...this.args,
      ];
      const child = spawn(python(), argv, { cwd: REPO, stdio: ["ignore", log, log], env: feederEnv() });
      fs.closeSync(log);
      this.child = child;
      live.add(child);
      child.on("exit", () => live.delete(child));
      while (child.exitCode === null && child.signalCode === null && !fs.existsSync(portFile)) {
        if (Date.now() > deadline) {
          this.kill9();
          throw new Error(`the feeder did not start:\n${this.logTail()}`);
        }
        await sleep(25);
      }
      if (child.exitCode === null && child.signalCode === null) return this;
      if (Date.now() > deadline) throw new Error(`the feeder exited at start:\n${this.logTail()}`);
      await sleep(100); // the port may still be held by the previous process
    }
  }

  kill9() {
    const child = this.child;
    if (child && child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    return exited(child);
  }

  async stop() {
    const child = this.child;
    if (child && child.exitCode === null && child.signalCode === null) {
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
      await exited(child);
      clearTimeout(timer);
    }
  }

  logTail(lines = 30) {
    try {
      return fs.readFileSync(this.logPath, "utf8").split("\n").slice(-lines).join("\n");
    } catch {
      return "";
    }
  }
}

function exited(child) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => child.once("exit", resolve));
}

/** This environment without FEEDWORK_* settings (a developer's must not leak into a test). */
function feederEnv(extra = {}) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("FEEDWORK_")) env[k] = v;
  env.PYTHONPATH = REPO;
  return { ...env, ...extra };
}

/** `feedwork dev-certs --keys` into a new folder: CA, feeder certificate, three keys, auth.txt. */
function devCerts() {
  const dir = tempDir("feedwork-node-certs-");
  execFileSync(python(), ["-m", "feedwork.cli", "dev-certs", "--out", dir, "--keys", "--client", "node-client"], {
    cwd: REPO,
    env: feederEnv(),
    stdio: "pipe",
  });
  const read = (name) => fs.readFileSync(path.join(dir, name), "utf8").trim();
  return { dir, file: (name) => path.join(dir, name), key: read };
}

/** Polls `condition` until it returns something truthy, or throws after `within` ms. */
async function waitFor(condition, { within = 20_000, every = 50, what = "a condition" } = {}) {
  const deadline = Date.now() + within;
  for (;;) {
    const value = await condition();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${within} ms waiting for ${what}`);
    await sleep(every);
  }
}

module.exports = { Feeder, REPO, devCerts, feederEnv, freePort, sleep, tempDir, waitFor };
