/**
 * The one way this package makes a channel to feeders: the target (one address, a list of
 * them, or a gRPC URI), TLS, the API key, keepalive and reconnection settings, as the
 * Python SDK's `feedwork.channel` and `feedwork.credentials` (docs/PROTOCOL.md,
 * "Connections").
 *
 * Options not given come from the same FEEDWORK_* variables as the Python SDK's.
 */
import * as dns from "node:dns/promises";
import * as fs from "node:fs";
import * as net from "node:net";
import * as grpc from "@grpc/grpc-js";

import { CredentialsError, TargetError } from "./errors";
import { feedworkV1, type FeederStub } from "./proto";

/** TLS and the API key. Each option not given is read from its FEEDWORK_* variable. */
export interface SecurityOptions {
  /** TLS with the system's CAs (FEEDWORK_TLS=1). Implied by `tlsCa` and `tlsClientCert`. */
  tls?: boolean;
  /** A PEM file of the CA that signed the feeders' certificates (FEEDWORK_TLS_CA). */
  tlsCa?: string;
  /** A PEM certificate for mTLS (FEEDWORK_TLS_CLIENT_CERT), with `tlsClientKey`. */
  tlsClientCert?: string;
  /** Its private key (FEEDWORK_TLS_CLIENT_KEY). */
  tlsClientKey?: string;
  /** The name the feeders' certificates carry, needed with several addresses (FEEDWORK_TLS_SERVER_NAME). */
  tlsServerName?: string;
  /** The API key (FEEDWORK_API_KEY); sent as `authorization: Bearer <key>` on every call. */
  apiKey?: string;
  /** A file holding the API key (FEEDWORK_API_KEY_FILE). */
  apiKeyFile?: string;
}

export interface ConnectionOptions extends SecurityOptions {
  /** HOST:PORT, HOST:PORT,HOST:PORT,... or a gRPC URI (dns:, ipv4:, ipv6:, unix:). Default FEEDWORK_TARGET, else 127.0.0.1:50051. */
  target?: string;
  /** More grpc-js channel options (they win over ours). */
  channelOptions?: grpc.ChannelOptions;
}

export const DEFAULT_TARGET = "127.0.0.1:50051";

// Keepalive while a call is open (a worker's stream, a long poll): a ping every 30 s, the
// connection dropped when one is not answered in 10 s. The feeder accepts a ping at most
// every 10 s and closes the connection of a client that pings more often.
export const KEEPALIVE_TIME_MS = 30_000;
export const KEEPALIVE_TIMEOUT_MS = 10_000;

const SERVICE_CONFIG = JSON.stringify({ loadBalancingConfig: [{ round_robin: {} }] });

export const CHANNEL_OPTIONS: grpc.ChannelOptions = {
  // Replies (a Lease batch, a page of dead tasks) may be as large as the feeder allows.
  "grpc.max_receive_message_length": -1,
  "grpc.max_send_message_length": -1,
  // A restarted feeder should be found within seconds (gRPC's default grows to 2 min).
  "grpc.initial_reconnect_backoff_ms": 250,
  "grpc.max_reconnect_backoff_ms": 2000,
  "grpc.service_config": SERVICE_CONFIG,
  "grpc.service_config_disable_resolution": 1,
  "grpc.keepalive_time_ms": KEEPALIVE_TIME_MS,
  "grpc.keepalive_timeout_ms": KEEPALIVE_TIMEOUT_MS,
  "grpc.keepalive_permit_without_calls": 0,
};

const URI_SCHEMES = new Set(["dns", "ipv4", "ipv6", "unix", "unix-abstract"]);

interface Address {
  host: string; // a name or an IP address (IPv6 without brackets)
  port: number;
}

function env(name: string): string | undefined {
  const value = process.env[`FEEDWORK_${name}`];
  return value === undefined || value.trim() === "" ? undefined : value.trim();
}

function flag(value: string | undefined): boolean {
  if (value === undefined) return false;
  const v = value.toLowerCase();
  if (["1", "true", "yes", "on"].includes(v)) return true;
  if (["0", "false", "no", "off"].includes(v)) return false;
  throw new CredentialsError(`FEEDWORK_TLS must be 1 or 0, got ${JSON.stringify(value)}`);
}

/** The security options with the FEEDWORK_* variables filled in for those not given. */
export function securityFromEnv(given: SecurityOptions): Required<Pick<SecurityOptions, "tls">> & SecurityOptions {
  return {
    tls: given.tls ?? flag(env("TLS")),
    tlsCa: given.tlsCa ?? env("TLS_CA"),
    tlsClientCert: given.tlsClientCert ?? env("TLS_CLIENT_CERT"),
    tlsClientKey: given.tlsClientKey ?? env("TLS_CLIENT_KEY"),
    tlsServerName: given.tlsServerName ?? env("TLS_SERVER_NAME"),
    apiKey: given.apiKey ?? env("API_KEY"),
    apiKeyFile: given.apiKeyFile ?? env("API_KEY_FILE"),
  };
}

function readFile(file: string, option: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (error) {
    throw new CredentialsError(`${option}: cannot read ${JSON.stringify(file)}: ${(error as Error).message}`);
  }
}

function parsePort(text: string, target: string): number {
  const port = /^\d{1,5}$/.test(text) ? Number(text) : NaN;
  if (!(port >= 1 && port <= 65535)) {
    throw new TargetError(`target ${JSON.stringify(target)}: port must be 1 to 65535, got ${JSON.stringify(text)}`);
  }
  return port;
}

function parseAddress(entry: string, target: string): Address {
  const bracketed = /^\[([^\]]+)\]:(.*)$/.exec(entry);
  if (bracketed) {
    if (net.isIPv6(bracketed[1]!)) return { host: bracketed[1]!, port: parsePort(bracketed[2]!, target) };
    throw new TargetError(`target ${JSON.stringify(target)}: ${JSON.stringify(bracketed[1])} is not an IPv6 address`);
  }
  const colon = entry.lastIndexOf(":");
  if (colon <= 0 || entry.indexOf(":") !== colon) {
    throw new TargetError(
      `target ${JSON.stringify(target)}: each address must be HOST:PORT ([IPv6]:PORT), got ${JSON.stringify(entry)}`,
    );
  }
  const host = entry.slice(0, colon);
  if (!net.isIP(host) && !/^[A-Za-z0-9_][A-Za-z0-9_.-]{0,252}$/.test(host)) {
    throw new TargetError(`target ${JSON.stringify(target)}: ${JSON.stringify(host)} is not a host name or IP address`);
  }
  return { host, port: parsePort(entry.slice(colon + 1), target) };
}

/** The addresses of a target that is not a gRPC URI; null for a URI. Throws TargetError. */
export function parseTarget(target: string): Address[] | null {
  const text = target.trim();
  const scheme = /^([a-z][a-z0-9+.-]*):(?!\d+$)/.exec(text)?.[1];
  if (scheme && URI_SCHEMES.has(scheme)) return null;
  const entries = text.split(",").map((e) => e.trim());
  if (entries.length === 0 || entries.some((e) => e === "")) {
    throw new TargetError(`target ${JSON.stringify(target)}: empty address in the list`);
  }
  return entries.map((entry) => parseAddress(entry, target));
}

function isLoopbackIp(ip: string): boolean {
  if (net.isIPv4(ip)) return ip.startsWith("127.");
  const v6 = ip.toLowerCase();
  return v6 === "::1" || /^::ffff:127\./.test(v6);
}

function hostPort(host: string, port: number): string {
  return net.isIPv6(host) ? `[${host}]:${port}` : `${host}:${port}`;
}

/** The gRPC target for `addresses`: one address as is; several as one static list of their
 * IP addresses (names looked up now), spread over by round_robin. */
async function channelTarget(addresses: Address[], target: string): Promise<{ uri: string; ips: string[] | null }> {
  if (addresses.length === 1) {
    const { host, port } = addresses[0]!;
    const ips = net.isIP(host) ? [host] : host === "localhost" ? ["127.0.0.1"] : null;
    return { uri: hostPort(host, port), ips };
  }
  const resolved: Address[] = [];
  for (const { host, port } of addresses) {
    if (net.isIP(host)) {
      resolved.push({ host, port });
      continue;
    }
    let found: { address: string }[];
    try {
      found = await dns.lookup(host, { all: true });
    } catch (error) {
      throw new TargetError(`target ${JSON.stringify(target)}: cannot look up ${JSON.stringify(host)}: ${(error as Error).message}`);
    }
    for (const { address } of found) resolved.push({ host: address, port });
  }
  const v4 = resolved.filter((a) => net.isIPv4(a.host));
  const v6 = resolved.filter((a) => net.isIPv6(a.host));
  // One static list holds one family; IPv4 where a feeder has both.
  const chosen = v4.length >= v6.length ? v4 : v6;
  const scheme = chosen === v4 ? "ipv4" : "ipv6";
  return {
    uri: `${scheme}:${chosen.map((a) => hostPort(a.host, a.port)).join(",")}`,
    ips: chosen.map((a) => a.host),
  };
}

function uriIsLoopback(uri: string): boolean {
  if (uri.startsWith("unix:") || uri.startsWith("unix-abstract:")) return true;
  const ips = /^ipv[46]:(.*)$/.exec(uri)?.[1];
  if (ips === undefined) return false;
  return ips.split(",").every((entry) => isLoopbackIp(parseAddress(entry.replace(/^\/\//, ""), uri).host));
}

/** A channel to the feeders of `target`, made on first use: `stub()` is the Feeder client. */
export class Connection {
  readonly target: string;
  private readonly security: ReturnType<typeof securityFromEnv>;
  private readonly addresses: Address[] | null;
  private readonly extra: grpc.ChannelOptions;
  private readonly key: string | undefined;
  private readonly credentials: grpc.ChannelCredentials;
  private made: Promise<FeederStub> | undefined;
  private client: FeederStub | undefined;
  private closed = false;

  constructor(options: ConnectionOptions = {}) {
    this.target = (options.target ?? env("TARGET") ?? DEFAULT_TARGET).trim();
    this.addresses = parseTarget(this.target);
    this.security = securityFromEnv(options);
    this.extra = options.channelOptions ?? {};
    const s = this.security;
    if (s.apiKey !== undefined && s.apiKeyFile !== undefined) {
      throw new CredentialsError("give apiKey or apiKeyFile, not both");
    }
    const key = s.apiKey ?? (s.apiKeyFile === undefined ? undefined : readFile(s.apiKeyFile, "apiKeyFile").toString("utf8").trim());
    if (key !== undefined && (key === "" || /\s/.test(key))) {
      throw new CredentialsError("the API key is empty or holds white space");
    }
    this.key = key;
    if ((s.tlsClientCert === undefined) !== (s.tlsClientKey === undefined)) {
      throw new CredentialsError("tlsClientCert and tlsClientKey go together");
    }
    const useTls = s.tls || s.tlsCa !== undefined || s.tlsClientCert !== undefined;
    if (!useTls && (s.tlsServerName !== undefined)) {
      throw new CredentialsError("tlsServerName needs TLS (tls, tlsCa or tlsClientCert)");
    }
    if (useTls && this.addresses !== null && this.addresses.length > 1 && s.tlsServerName === undefined) {
      throw new CredentialsError(
        "TLS to several feeder addresses needs tlsServerName: the name their certificates share",
      );
    }
    this.credentials = useTls
      ? grpc.credentials.createSsl(
          s.tlsCa === undefined ? null : readFile(s.tlsCa, "tlsCa"),
          s.tlsClientKey === undefined ? null : readFile(s.tlsClientKey, "tlsClientKey"),
          s.tlsClientCert === undefined ? null : readFile(s.tlsClientCert, "tlsClientCert"),
        )
      : grpc.credentials.createInsecure();
    if (key !== undefined && !useTls && this.addresses !== null) {
      // Checked before anything is sent; lists and URIs are checked once resolved.
      const { host } = this.addresses[0]!;
      if (this.addresses.length === 1 && !(host === "localhost" || (net.isIP(host) && isLoopbackIp(host)))) {
        throw this.clearTextKey();
      }
    }
  }

  private clearTextKey(): CredentialsError {
    return new CredentialsError(
      `an API key would cross the network in clear text to ${JSON.stringify(this.target)}: ` +
        "use TLS (tlsCa or tls), or reach the feeder on a loopback address",
    );
  }

  /** The Feeder client (the channel is made on the first call). */
  stub(): Promise<FeederStub> {
    if (this.closed) return Promise.reject(new TargetError("the connection is closed"));
    this.made ??= this.make();
    return this.made;
  }

  private async make(): Promise<FeederStub> {
    let uri: string;
    if (this.addresses === null) {
      uri = this.target;
    } else {
      uri = (await channelTarget(this.addresses, this.target)).uri;
    }
    const tls = this.credentials._isSecure();
    if (this.key !== undefined && !tls && !uriIsLoopback(uri) && !/^(localhost|127\.[\d.]+|\[::1\]):\d+$/.test(uri)) {
      throw this.clearTextKey();
    }
    const options: grpc.ClientOptions = { ...CHANNEL_OPTIONS };
    if (this.security.tlsServerName !== undefined) {
      options["grpc.ssl_target_name_override"] = this.security.tlsServerName;
      options["grpc.default_authority"] = this.security.tlsServerName;
    }
    Object.assign(options, this.extra);
    if (this.key !== undefined) options.interceptors = [bearer(this.key)];
    if (this.closed) throw new TargetError("the connection is closed");
    const Feeder = feedworkV1().Feeder;
    this.client = new Feeder(uri, this.credentials, options) as unknown as FeederStub;
    return this.client;
  }

  close(): void {
    this.closed = true;
    this.client?.close();
  }
}

/** An interceptor that sends the API key on every call. */
function bearer(key: string): grpc.Interceptor {
  const value = `Bearer ${key}`;
  return (options, nextCall) =>
    new grpc.InterceptingCall(nextCall(options), {
      start(metadata, listener, next) {
        metadata.set("authorization", value);
        next(metadata, listener);
      },
    });
}
