/**
 * Retrying calls: exponential backoff with full jitter (waits uniform in
 * [0, min(cap, first x 2^n)]), for failures `isTransient` says a retry may cure.
 */
import { setTimeout as sleep } from "node:timers/promises";

import { errorFromCall, isTransient } from "./errors";

export interface Backoff {
  /** The first wait's upper bound, in seconds. */
  first: number;
  /** No wait is longer than this, in seconds. */
  cap: number;
}

export const CALL_BACKOFF: Backoff = { first: 0.1, cap: 5 };

/** The n-th wait (n from 0), in seconds: uniform in [0, min(cap, first x 2^n)]. */
export function jittered(backoff: Backoff, attempt: number): number {
  return Math.random() * Math.min(backoff.cap, backoff.first * 2 ** Math.min(attempt, 30));
}

/**
 * `once()` until it succeeds, a failure is not transient, `maxDelay` seconds have gone by,
 * or `signal` aborts. Throws the last failure as a FeedworkError.
 */
export async function retrying<T>(
  once: () => Promise<T>,
  options: { maxDelay: number; backoff?: Backoff; signal?: AbortSignal | undefined },
): Promise<T> {
  const backoff = options.backoff ?? CALL_BACKOFF;
  const giveUpAt = Date.now() + options.maxDelay * 1000;
  for (let attempt = 0; ; attempt++) {
    try {
      return await once();
    } catch (error) {
      const wait = jittered(backoff, attempt) * 1000;
      if (!isTransient(error) || Date.now() + wait > giveUpAt || options.signal?.aborted) {
        throw errorFromCall(error);
      }
      await sleep(wait, undefined, { signal: options.signal }).catch(() => undefined);
    }
  }
}
