"""The soak's producers: threads that submit at a steady rate through the producer SDK
(`feedwork.FeederClient`), each task with an idempotency key of its own and a payload of
100 B to 16 KiB.

Each producer keeps to its rate by the clock: every tick it submits, in one call, the
tasks owed since it started (rate x elapsed - sent), so a slow call is caught up on the
next tick instead of lowering the rate; what it could not catch up shows as `behind`.
Payload sizes are log-uniform (as many of 100-400 B as of 4-16 KiB; 3.1 KiB on average),
JSON that the fault tests' ledger handler reads: {"pad": "..."}.

Once per call, a producer also resubmits the key of a task it stored a while ago
(`resubmit_age`: a quarter of the retention, at most a minute; most likely finished, not
purged), which must come back as that task, deduplicated: the feeder's lookup of a
finished task's key, under load.

A call that fails (after the client's own retries) is sent again with the same keys, so a
task stored by a call whose answer was lost is found, not submitted twice.
"""

from __future__ import annotations

import collections
import math
import random
import threading
import time
from dataclasses import dataclass, field

from feedwork import FeederClient, TaskSpec
from feedwork.errors import FeedworkError

KiB = 1024
SMALLEST = 100
LARGEST = 16 * KiB
# Bounds one call when catching up after a stall.
MAX_BATCH = 500
# Attempts at one batch (the client retries UNAVAILABLE within each) before giving up.
ATTEMPTS = 5
_PAD = ("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ" * 300)[:LARGEST]


def payload(size: int) -> bytes:
    """`size` bytes of JSON (at least 12): {"pad": "..."}."""
    return ('{"pad":"' + _PAD[: max(0, size - 10)] + '"}').encode()


def payload_size(rng: random.Random) -> int:
    return int(math.exp(rng.uniform(math.log(SMALLEST), math.log(LARGEST))))


@dataclass
class Tally:
    """What one producer did. Written by its thread, read by the sampler (ints only)."""

    submitted: int = 0  # new tasks stored
    payload_bytes: int = 0
    resubmitted: int = 0
    calls: int = 0
    # Calls that failed and were sent again with the same keys.
    retried_calls: int = 0
    behind: int = 0  # tasks owed but not yet sent, at the last tick
    task_ids: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


class Producer(threading.Thread):
    def __init__(
        self,
        *,
        name: str,
        target: str,
        queue: str,
        rate: float,
        resubmit_age: float,
        stop: threading.Event,
        seed: int,
        tick: float = 0.1,
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.target = target
        self.queue = queue
        self.rate = rate
        self.resubmit_age = resubmit_age
        self.tick = tick
        self._stop_event = stop
        self._rng = random.Random(seed)
        self.tally = Tally()
        # (monotonic time, key, task id) of the first task of recent calls, oldest first.
        self._recent: collections.deque[tuple[float, str, str]] = collections.deque()

    def run(self) -> None:
        with FeederClient(self.target, timeout=10.0, max_retry_delay=5.0) as client:
            started = time.monotonic()
            sent = 0
            next_tick = started
            while not self._stop_event.is_set():
                now = time.monotonic()
                owed = int(self.rate * (now - started)) - sent
                count = min(owed, MAX_BATCH)
                self.tally.behind = owed - count
                if count > 0:
                    if not self._submit(client, sent, count, now):
                        return
                    sent += count
                next_tick += self.tick
                self._stop_event.wait(max(0.0, next_tick - time.monotonic()))

    def _submit(self, client: FeederClient, first: int, count: int, now: float) -> bool:
        specs = []
        for seq in range(first, first + count):
            data = payload(payload_size(self._rng))
            self.tally.payload_bytes += len(data)
            specs.append(TaskSpec(self.queue, data, idempotency_key=f"{self.name}-{seq}"))
        again = self._old_key(now)
        if again is not None:
            specs.append(TaskSpec(self.queue, payload(SMALLEST), idempotency_key=again[0]))
        results = None
        attempt = 0
        while results is None:
            try:
                results = client.submit_many(specs)
            except FeedworkError as exc:
                attempt += 1
                if attempt == ATTEMPTS:
                    self.tally.problems.append(f"{self.name}: a submit failed {ATTEMPTS}x: {exc}")
                    return False
                self.tally.retried_calls += 1
                self._stop_event.wait(1.0)
        self.tally.calls += 1
        fresh = results[:count]
        # A new key may only come back deduplicated in a call sent again: the first one
        # stored its tasks, and its answer was lost.
        if attempt == 0 and any(r.deduplicated for r in fresh):
            self.tally.problems.append(f"{self.name}: a new key came back deduplicated")
        self.tally.task_ids += [r.task_id for r in fresh]
        self.tally.submitted += count
        self._recent.append((now, specs[0].idempotency_key or "", fresh[0].task_id))
        if again is not None:
            self._check_resubmit(again, results[-1].task_id, results[-1].deduplicated)
        return True

    def _old_key(self, now: float) -> tuple[str, str] | None:
        """(key, task id) of a task stored about `resubmit_age` ago, if there is one."""
        recent = self._recent
        while len(recent) > 1 and now - recent[1][0] >= self.resubmit_age:
            recent.popleft()
        if recent and now - recent[0][0] >= self.resubmit_age:
            _, key, task_id = recent.popleft()
            return key, task_id
        return None

    def _check_resubmit(self, again: tuple[str, str], task_id: str, deduplicated: bool) -> None:
        self.tally.resubmitted += 1
        key, expected = again
        if not deduplicated or task_id != expected:
            self.tally.problems.append(
                f"{self.name}: key {key} of task {expected} resubmitted: got task {task_id}"
                f" (deduplicated={deduplicated})"
            )
