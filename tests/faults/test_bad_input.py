"""Bad input against one running `python -m feeder`: it answers, it does not crash.

- A hypothesis-driven fuzz of every RPC with random field values (huge, empty, negative,
  unicode, out of range, wrong/forged/tampered lease tokens, tokens of other tasks, stale
  tokens): every call ends with a documented status (OK, INVALID_ARGUMENT, NOT_FOUND,
  RESOURCE_EXHAUSTED, and FAILED_PRECONDITION for a DeleteQueue of a queue with tasks),
  never INTERNAL or UNKNOWN.
- Forged and tampered tokens: every Ack, Nack and Extend item with one is INVALID_TOKEN,
  and the tasks whose real tokens they were made from are untouched (still leased by their
  owner, who can still ack them).
- Raw bytes that are not a valid request message, and messages over the size limit, sent
  to each method path: INVALID_ARGUMENT or RESOURCE_EXHAUSTED.
- Malformed HTTP/2 from raw sockets: the server drops those connections and keeps serving.

After all of it the feeder process is alive, its health check answers SERVING, and its log
holds no traceback.

All of it runs twice: against an open feeder, and against one with an access list
(`auth`), where the fuzz calls with a key limited to the queues `fuzz-*` (each role), and
every tenth call with no key or a forged one. There, a call without a valid key is
UNAUTHENTICATED whatever its input, one outside `fuzz-*` is PERMISSION_DENIED, and no
call that succeeds named (or read) a queue outside `fuzz-*`: no input gets past auth.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import itertools
import os
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feedwork.v1 import feeder_pb2 as pb
from feedwork.v1 import feeder_pb2_grpc
from tests.faults.harness import FeederProc, healthy, record, scaled

EXAMPLES = scaled(120, 1500)
MiB = 1024 * 1024
DOCUMENTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
}
METHODS = [m.name for m in pb.DESCRIPTOR.services_by_name["Feeder"].methods]
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(scaled(240, 1200))]

# The auth variant: the setup and final checks call as root; the fuzz as `fuzzer`, limited
# to FUZZ_QUEUES, except every tenth call (no key, or one the feeder does not know).
ROOT_KEY = "fwk_00000001_root-key-of-the-bad-input-fuzz"
FUZZ_KEY = "fwk_00000002_fuzzer-key-of-the-bad-input-fuzz"
FUZZ_QUEUES = "fuzz-*"
ACCESS = "; ".join(
    [
        f"root sha256:{hashlib.sha256(ROOT_KEY.encode()).hexdigest()} admin",
        f"fuzzer sha256:{hashlib.sha256(FUZZ_KEY.encode()).hexdigest()} "
        + " ".join(f"{role}:{FUZZ_QUEUES}" for role in ("producer", "worker", "admin")),
    ]
)
# What the fuzz calls with, in turn (auth variant).
FUZZ_CREDENTIALS = (*[FUZZ_KEY] * 8, None, "fwk_00000002_forged")


@dataclass
class Env:
    feeder: FeederProc
    stub: feeder_pb2_grpc.FeederStub
    channel: grpc.Channel
    owned: dict[str, str]  # task id -> the owner's lease token (never sent by the fuzz)
    decoy_tokens: list[str]  # genuine tokens of decoy tasks, which the fuzz may use
    task_of: dict[str, str]  # decoy or stale token -> its task id
    stale_tokens: list[str]  # tokens of attempts that are over
    task_ids: list[str]  # ids the fuzz may name (not the owned ones)
    private_task: str  # a task outside FUZZ_QUEUES, which the fuzz may name
    codes: Counter[str] = field(default_factory=Counter)
    cases: Counter[str] = field(default_factory=Counter)
    auth: bool = False
    # The key the next call carries (None: none); the fuzz's turn comes from `fuzzing`.
    key: str | None = None
    fuzzing: Iterator[str | None] = field(default_factory=lambda: itertools.cycle(FUZZ_CREDENTIALS))
    tampered_sent: int = 0
    # Tampered tokens that got anything but INVALID_TOKEN, or named a task.
    tampered_accepted: int = 0
    started: float = field(default_factory=time.monotonic)


class _WithKey(grpc.UnaryUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):  # type: ignore[misc]
    """Puts the key `env.key` names in each call's metadata (auth variant)."""

    def __init__(self, keys: Callable[[], str | None]) -> None:
        self._keys = keys

    def _details(self, details: Any) -> Any:
        key = self._keys()
        metadata = [] if key is None else [("authorization", f"Bearer {key}")]
        return details._replace(metadata=metadata) if hasattr(details, "_replace") else _Details(
            details.method, details.timeout, metadata, details.credentials,
            details.wait_for_ready, details.compression,
        )  # fmt: skip

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


@dataclass(frozen=True)
class _Details(grpc.ClientCallDetails):  # type: ignore[misc]
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: bool | None
    compression: Any


@pytest.fixture(scope="module", params=["open", "auth"])
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    auth = request.param == "auth"
    workdir = tmp_path_factory.mktemp(f"bad-input-{request.param}")
    feeder = FeederProc(workdir, args=["--auth", ACCESS] if auth else [])
    feeder.start()
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    channel = grpc.insecure_channel(feeder.target, options=options)
    holder: list[Env] = []
    if auth:
        channel = grpc.intercept_channel(
            channel, _WithKey(lambda: holder[0].key if holder else ROOT_KEY)
        )
    stub = feeder_pb2_grpc.FeederStub(channel)
    try:
        owned = _lease_all(stub, "fuzz-owned", 6, worker="owner", seconds=12 * 3600)
        decoys = _lease_all(stub, "fuzz-decoy", 30, worker="decoy", seconds=12 * 3600)
        stale = list(_lease_all(stub, "fuzz-stale", 6, worker="stale", seconds=3600).items())
        items = [pb.AckItem(lease_token=token) for _, token in stale]
        stub.Ack(pb.AckRequest(items=items), timeout=10)
        private = stub.Submit(pb.SubmitRequest(tasks=[pb.TaskSpec(queue="private")]), timeout=10)
        private_task = private.results[0].task_id
        made = Env(
            auth=auth,
            key=ROOT_KEY if auth else None,
            feeder=feeder,
            stub=stub,
            channel=channel,
            owned=owned,
            decoy_tokens=list(decoys.values()),
            task_of={token: task_id for task_id, token in [*decoys.items(), *stale]},
            stale_tokens=[token for _, token in stale],
            task_ids=[*decoys, *(task_id for task_id, _ in stale), private_task],
            private_task=private_task,
        )
        holder.append(made)
        yield made
    finally:
        channel.close()
        feeder.stop()


def _lease_all(
    stub: feeder_pb2_grpc.FeederStub, queue: str, n: int, *, worker: str, seconds: int
) -> dict[str, str]:
    specs = [pb.TaskSpec(queue=queue, payload=b"real") for _ in range(n)]
    stub.Submit(pb.SubmitRequest(tasks=specs), timeout=10)
    request = pb.LeaseRequest(
        queue=queue, max_tasks=n, worker_id=worker, lease_duration=Duration(seconds=seconds)
    )
    leased = stub.Lease(request, timeout=10).tasks
    assert len(leased) == n
    return {t.task_id: t.lease_token for t in leased}


# -- strategies -------------------------------------------------------------------------------

TOKEN_BODY = struct.Struct(">BQI")
# Batches longer than this (over the 1000-item limit) get no drawn field values.
MAX_DRAWN_ITEMS = 5
HUGE_TEXT = "x" * 100_000

texts = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "",
            "q",
            "fuzz-decoy",
            "a" * 128,
            "a" * 129,
            "../../etc/passwd",
            "q\x00q",
            "ünïcødé-名前",
            "🙂" * 20,
            " q ",
            "Robert'); DROP TABLE tasks;--",
            HUGE_TEXT,
        ]
    ),
)
int32s = st.one_of(
    st.integers(-(2**31), 2**31 - 1),
    st.sampled_from([0, 1, -1, 1000, 1001, -1000, -1001, 100_000, 100_001, 2**31 - 1, -(2**31)]),
)
payloads = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([b"", b"\x00" * 1000, b"x" * (MiB + 1)]),
)
durations = st.one_of(
    st.none(),
    st.builds(
        Duration,
        seconds=st.one_of(
            st.integers(-(10**12), 10**12),
            st.sampled_from([0, 1, 59, 60, 61, 43_200, 43_201, 31_536_000, 31_536_001]),
        ),
        nanos=st.one_of(st.integers(-(2**31), 2**31 - 1), st.sampled_from([0, 999_999_999])),
    ),
)
# Lease waits that do not hold a call up: invalid ones, or at most 50 ms.
waits = st.one_of(
    st.none(),
    st.builds(Duration, seconds=st.integers(-(10**9), 0), nanos=st.integers(0, 50_000_000)),
    st.builds(Duration, seconds=st.integers(61, 10**12), nanos=st.integers(0, 10)),
    st.builds(Duration, seconds=st.just(0), nanos=st.integers(-(2**31), -1)),
)
timestamps = st.one_of(
    st.none(),
    st.builds(
        Timestamp,
        seconds=st.one_of(
            st.integers(-(2**62), 2**62), st.sampled_from([0, 253_402_300_799, 253_402_300_800])
        ),
        nanos=st.integers(-(2**31), 2**31 - 1),
    ),
)
headers = st.one_of(
    st.dictionaries(st.text(max_size=20), st.text(max_size=20), max_size=4),
    st.just({"k": "v" * 20_000}),
    st.just({"k" * 129: "v"}),
)


def tampered(token: str, draw: Callable[[st.SearchStrategy[Any]], Any]) -> str:
    """A token that was never issued, made from a real one."""
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    body, tag = raw[: TOKEN_BODY.size], raw[TOKEN_BODY.size :]
    version, task_id, attempt = TOKEN_BODY.unpack(body)
    how = draw(st.integers(0, 7))
    if how == 0:  # one character changed
        i = draw(st.integers(0, len(token) - 1))
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        new = draw(st.sampled_from([c for c in alphabet if c != token[i]]))
        return token[:i] + new + token[i + 1 :]
    if how == 1:  # the next attempt, same tag
        body = TOKEN_BODY.pack(version, task_id, attempt + draw(st.integers(1, 5)))
    elif how == 2:  # another task (perhaps an owned one), same tag
        body = TOKEN_BODY.pack(version, draw(st.integers(0, 2**64 - 1)), attempt)
    elif how == 3:  # forged tag
        tag = draw(st.binary(min_size=16, max_size=16))
    elif how == 4:  # cut short or made longer
        return draw(st.sampled_from([token[:-1], token + "A", token[:10], token + "=="]))
    elif how == 5:  # another version
        body = TOKEN_BODY.pack(draw(st.integers(0, 255).filter(lambda v: v != 1)), task_id, 1)
    elif how == 6:  # standard base64 alphabet, padding
        return base64.b64encode(raw).decode()
    else:  # random bytes of the right length
        body, tag = draw(st.binary(min_size=len(raw), max_size=len(raw))), b""
    made = base64.urlsafe_b64encode(body + tag).decode().rstrip("=")
    if made == token:  # e.g. "another task" drew the same task id: that is no tampering
        made = base64.urlsafe_b64encode(raw[:-1] + bytes([raw[-1] ^ 1])).decode().rstrip("=")
    return made


@dataclass
class Token:
    value: str
    kind: str  # "tampered", "decoy", "stale", "junk"


def draw_token(env: Env, draw: Callable[[st.SearchStrategy[Any]], Any]) -> Token:
    kind = draw(st.sampled_from(["tampered", "tampered", "decoy", "stale", "junk"]))
    if kind == "tampered":
        original = draw(st.sampled_from(sorted(env.owned.values())))
        return Token(tampered(original, draw), kind)
    if kind == "decoy":
        return Token(draw(st.sampled_from(env.decoy_tokens)), kind)
    if kind == "stale":
        return Token(draw(st.sampled_from(env.stale_tokens)), kind)
    return Token(draw(texts), kind)


def draw_task_id(env: Env, draw: Callable[[st.SearchStrategy[Any]], Any]) -> str:
    value = draw(
        st.one_of(
            st.sampled_from(env.task_ids),
            texts,
            st.integers(-(2**70), 2**70).map(str),
            st.sampled_from(["0", "-1", "+1", " 1", "1_0", "٣", "9" * 19, "9" * 20]),
        )
    )
    # Never name an owned task: the fuzz must not cancel what the owner holds.
    if value.strip().lstrip("+").isdigit() and value.strip().lstrip("+").isascii():
        with_number = int(value.strip().lstrip("+"))
        if str(with_number) in env.owned:
            return "0"
    return value


# -- the requests -----------------------------------------------------------------------------


def submit_request(env: Env, draw: Any) -> pb.SubmitRequest:
    n = draw(st.sampled_from([0, 1, 2, 3, 1001]))
    specs = []
    for _ in range(min(n, 3)):
        if draw(st.integers(0, 3)) == 0:  # a plain spec, valid on a valid queue name
            specs.append(pb.TaskSpec(queue=draw(texts)))
            continue
        spec = pb.TaskSpec(
            queue=draw(texts),
            payload=draw(payloads),
            headers=draw(headers),
            priority=draw(int32s),
            max_attempts=draw(int32s),
            idempotency_key=draw(texts),
        )
        if (t := draw(timestamps)) is not None:
            spec.not_before.CopyFrom(t)
        if (d := draw(durations)) is not None:
            spec.delay.CopyFrom(d)
        if (d := draw(durations)) is not None:
            spec.lease_duration.CopyFrom(d)
        specs.append(spec)
    if n == 1001:
        specs = [pb.TaskSpec(queue="fuzz-many")] * n
    return pb.SubmitRequest(tasks=specs)


def lease_request(env: Env, draw: Any) -> pb.LeaseRequest:
    if draw(st.integers(0, 3)) == 0:  # a plain request, valid on a valid queue name
        return pb.LeaseRequest(queue=draw(texts), max_tasks=1)
    request = pb.LeaseRequest(
        queue=draw(st.one_of(texts, st.just("fuzz-decoy"))),
        max_tasks=draw(int32s),
        worker_id=draw(texts),
    )
    if (d := draw(durations)) is not None:
        request.lease_duration.CopyFrom(d)
    if (w := draw(waits)) is not None:
        request.wait.CopyFrom(w)
    return request


def token_items(env: Env, draw: Any) -> list[Token]:
    n = draw(st.sampled_from([0, 1, 2, 5, 1001]))
    if n == 1001:
        return [Token("x", "junk")] * n
    return [draw_token(env, draw) for _ in range(n)]


def ack_request(env: Env, draw: Any, tokens: list[Token]) -> pb.AckRequest:
    if len(tokens) > MAX_DRAWN_ITEMS:  # too many items: the values do not matter
        return pb.AckRequest(items=[pb.AckItem(lease_token=t.value) for t in tokens])
    return pb.AckRequest(
        items=[pb.AckItem(lease_token=t.value, result=draw(payloads)) for t in tokens]
    )


def nack_request(env: Env, draw: Any, tokens: list[Token]) -> pb.NackRequest:
    if len(tokens) > MAX_DRAWN_ITEMS:
        return pb.NackRequest(items=[pb.NackItem(lease_token=t.value) for t in tokens])
    items = []
    for t in tokens:
        item = pb.NackItem(
            lease_token=t.value,
            error=draw(st.one_of(texts, st.just("é" * 5000))),
            terminal=draw(st.booleans()),
            release=draw(st.booleans()),
        )
        if (d := draw(durations)) is not None:
            item.retry_after.CopyFrom(d)
        items.append(item)
    return pb.NackRequest(items=items)


def extend_request(env: Env, draw: Any, tokens: list[Token]) -> pb.ExtendRequest:
    if len(tokens) > MAX_DRAWN_ITEMS:
        return pb.ExtendRequest(items=[pb.ExtendItem(lease_token=t.value) for t in tokens])
    items = []
    for t in tokens:
        item = pb.ExtendItem(lease_token=t.value)
        if (d := draw(durations)) is not None:
            item.lease_duration.CopyFrom(d)
        items.append(item)
    return pb.ExtendRequest(items=items)


def selector(env: Env, draw: Any) -> pb.DeadTaskSelector:
    n = draw(st.sampled_from([0, 1, 3]))
    return pb.DeadTaskSelector(
        queue=draw(texts),
        task_ids=[draw_task_id(env, draw) for _ in range(n)],
        limit=draw(int32s),
    )


SIMPLE: dict[str, Callable[[Env, Any], Any]] = {
    "Submit": submit_request,
    "Lease": lease_request,
    "GetTask": lambda env, draw: pb.GetTaskRequest(task_id=draw_task_id(env, draw)),
    "CancelTask": lambda env, draw: pb.CancelTaskRequest(task_id=draw_task_id(env, draw)),
    "ListDeadTasks": lambda env, draw: pb.ListDeadTasksRequest(
        queue=draw(texts), page_size=draw(int32s), page_token=draw(texts)
    ),
    "RedriveDeadTasks": lambda env, draw: pb.RedriveDeadTasksRequest(selector=selector(env, draw)),
    "PurgeDeadTasks": lambda env, draw: pb.PurgeDeadTasksRequest(selector=selector(env, draw)),
    "GetStats": lambda env, draw: pb.GetStatsRequest(
        queues=[draw(texts) for _ in range(draw(st.sampled_from([0, 1, 3])))]
    ),
    "ListQueues": lambda env, draw: pb.ListQueuesRequest(
        page_size=draw(int32s), page_token=draw(texts)
    ),
    "ListTasks": lambda env, draw: pb.ListTasksRequest(
        queue=draw(texts),
        states=draw(st.lists(st.integers(-3, 9), max_size=3)),
        page_size=draw(int32s),
        page_token=draw(texts),
        newest_first=draw(st.booleans()),
        include_payloads=draw(st.booleans()),
    ),
    "ListWorkers": lambda env, draw: pb.ListWorkersRequest(queue=draw(texts), limit=draw(int32s)),
    "PauseQueue": lambda env, draw: pb.PauseQueueRequest(queue=draw(texts)),
    "ResumeQueue": lambda env, draw: pb.ResumeQueueRequest(queue=draw(texts)),
    "PurgeQueue": lambda env, draw: pb.PurgeQueueRequest(queue=draw(texts), confirm=draw(texts)),
    "DeleteQueue": lambda env, draw: pb.DeleteQueueRequest(queue=draw(texts)),
}
WITH_TOKENS: dict[str, Callable[[Env, Any, list[Token]], Any]] = {
    "Ack": ack_request,
    "Nack": nack_request,
    "Extend": extend_request,
}
INVALID_TOKEN = {
    "Ack": pb.ACK_OUTCOME_INVALID_TOKEN,
    "Nack": pb.NACK_OUTCOME_INVALID_TOKEN,
    "Extend": pb.EXTEND_OUTCOME_INVALID_TOKEN,
}
STREAMING = ("Consume",)
assert set(SIMPLE) | set(WITH_TOKENS) | set(STREAMING) == set(METHODS)


def next_key(env: Env) -> None:
    """The key of the fuzz's next call (auth variant): mostly the fuzzer's, or none, or
    a forged one."""
    if env.auth:
        env.key = next(env.fuzzing)


def check_code(env: Env, method: str, code: grpc.StatusCode, details: str | None) -> None:
    if env.auth and env.key != FUZZ_KEY:
        assert code == grpc.StatusCode.UNAUTHENTICATED, f"{method} with key {env.key}: {code}"
        return
    allowed = DOCUMENTED | ({grpc.StatusCode.PERMISSION_DENIED} if env.auth else set())
    assert code in allowed, f"{method}: {code.name}: {details}"


def named_queues(request: Any, reply: Any) -> list[str]:
    """The queues a successful call named or read (the test's own reading of the contract,
    not the feeder's rule table)."""
    if isinstance(request, pb.SubmitRequest):
        return [spec.queue for spec in request.tasks]
    if isinstance(request, pb.LeaseRequest | pb.ListDeadTasksRequest):
        return [request.queue]
    if isinstance(request, pb.RedriveDeadTasksRequest | pb.PurgeDeadTasksRequest):
        return [request.selector.queue]
    if isinstance(request, pb.GetStatsRequest):
        return list(request.queues) or ["(every queue)"]
    if isinstance(request, pb.GetTaskRequest):
        return [reply.task.queue]
    if isinstance(request, pb.ListQueuesRequest):
        return ["(every queue)"]
    if isinstance(request, pb.ListWorkersRequest):
        return [request.queue or "(every queue)"]
    if isinstance(
        request,
        pb.ListTasksRequest
        | pb.PauseQueueRequest
        | pb.ResumeQueueRequest
        | pb.PurgeQueueRequest
        | pb.DeleteQueueRequest,
    ):
        return [request.queue]
    return []


def send(env: Env, method: str, request: Any) -> tuple[grpc.StatusCode, Any]:
    env.cases[method] += 1
    next_key(env)
    try:
        reply = getattr(env.stub, method)(request, timeout=10)
    except grpc.RpcError as exc:
        code = exc.code()
        env.codes[code.name] += 1
        check_code(env, method, code, exc.details())
        return code, None
    env.codes["OK"] += 1
    if env.auth:
        assert env.key == FUZZ_KEY, f"{method} succeeded with key {env.key}"
        outside = [
            q for q in named_queues(request, reply) if not fnmatch.fnmatchcase(q, FUZZ_QUEUES)
        ]
        assert not outside, f"{method} succeeded on {outside}"
    return grpc.StatusCode.OK, reply


@pytest.mark.parametrize("method", sorted(SIMPLE))
def test_fuzz_rpc(env: Env, method: str) -> None:
    @FUZZ
    @given(data=st.data())
    def fuzz(data: st.DataObject) -> None:
        send(env, method, SIMPLE[method](env, data.draw))

    fuzz()


@pytest.mark.parametrize("method", sorted(WITH_TOKENS))
def test_fuzz_token_rpc(env: Env, method: str) -> None:
    @FUZZ
    @given(data=st.data())
    def fuzz(data: st.DataObject) -> None:
        tokens = token_items(env, data.draw)
        _, reply = send(env, method, WITH_TOKENS[method](env, data.draw, tokens))
        if reply is None:
            return
        assert len(reply.results) == len(tokens)
        for token, result in zip(tokens, reply.results, strict=True):
            if token.kind == "tampered":
                env.tampered_sent += 1
                accepted = result.outcome != INVALID_TOKEN[method] or result.task_id != ""
                env.tampered_accepted += accepted
                # A token that was never issued names no task and changes nothing.
                assert result.outcome == INVALID_TOKEN[method], (token, result)
                assert result.task_id == ""
            elif token.kind in ("decoy", "stale") and result.outcome != INVALID_TOKEN[method]:
                assert result.task_id == env.task_of[token.value], (token, result)

    fuzz()


def consume_messages(env: Env, draw: Any, tokens: list[Token]) -> list[pb.ConsumeRequest]:
    """A Consume stream's messages: a drawn first message (with or without a valid start),
    then reports made of the drawn token items, some with credits or a second start."""
    start = pb.ConsumeStart(queue=draw(texts), worker_id=draw(texts))
    if (d := draw(durations)) is not None:
        start.lease_duration.CopyFrom(d)
    first = pb.ConsumeRequest(credits=draw(int32s))
    if draw(st.integers(0, 9)) > 0:  # mostly with a start, else refused at once
        first.start.CopyFrom(start)
    messages = [first]
    for report_id in range(1, draw(st.integers(0, 3)) + 1):
        kind = draw(st.sampled_from(sorted(WITH_TOKENS)))
        items = WITH_TOKENS[kind](env, draw, tokens).items
        message = pb.ConsumeRequest(report_id=report_id, credits=draw(st.sampled_from([0, 1])))
        getattr(message, {"Ack": "acks", "Nack": "nacks", "Extend": "extends"}[kind]).extend(items)
        messages.append(message)
    if draw(st.integers(0, 9)) == 0:
        messages.append(pb.ConsumeRequest(start=start))
    return messages


def test_fuzz_consume(env: Env) -> None:
    @FUZZ
    @given(data=st.data())
    def fuzz(data: st.DataObject) -> None:
        tokens = token_items(env, data.draw)
        messages = consume_messages(env, data.draw, tokens)
        env.cases["Consume"] += 1
        next_key(env)
        answers = {}
        try:
            for response in env.stub.Consume(iter(messages), timeout=10):
                # A message may carry tasks, a report's answer, or both.
                results = [*response.ack_results, *response.nack_results]
                if results or response.extend_results or response.error_code:
                    answers[response.report_id] = response
        except grpc.RpcError as exc:
            code = exc.code()
            env.codes[f"Consume {code.name}"] += 1
            check_code(env, "Consume", code, exc.details())
            return
        env.codes["Consume OK"] += 1
        if env.auth:
            assert env.key == FUZZ_KEY and fnmatch.fnmatchcase(messages[0].start.queue, FUZZ_QUEUES)
        for message in messages[1:]:
            if not (message.acks or message.nacks or message.extends):
                continue  # not a report (no items): nothing is answered
            answer = answers[message.report_id]
            if answer.error_code:
                assert grpc.StatusCode.INVALID_ARGUMENT.value[0] == answer.error_code, answer
                continue
            results = [*answer.ack_results, *answer.nack_results, *answer.extend_results]
            items = [*message.acks, *message.nacks, *message.extends]
            assert len(results) == len(items)
            for token, result in zip(tokens, results, strict=False):
                if token.kind == "tampered":
                    env.tampered_sent += 1
                    env.tampered_accepted += result.task_id != ""
                    assert result.task_id == "", (token, result)

    fuzz()


def test_valid_calls_outside_the_scope_are_denied(env: Env) -> None:
    """What the fuzz reaches by chance, for certain: well-formed calls on a queue outside
    FUZZ_QUEUES (or on every queue), and on the private task, with the fuzzer's key. (The
    open variant, without an access list, denies none of them.)"""
    env.key = FUZZ_KEY if env.auth else None
    private = pb.DeadTaskSelector(queue="private")
    calls = {
        "Submit": pb.SubmitRequest(tasks=[pb.TaskSpec(queue="fuzz-ok"), pb.TaskSpec(queue="q")]),
        "Lease": pb.LeaseRequest(queue="private", max_tasks=1),
        "GetTask": pb.GetTaskRequest(task_id=env.private_task),
        "CancelTask": pb.CancelTaskRequest(task_id=env.private_task),
        "ListDeadTasks": pb.ListDeadTasksRequest(queue="private"),
        "RedriveDeadTasks": pb.RedriveDeadTasksRequest(selector=private),
        "PurgeDeadTasks": pb.PurgeDeadTasksRequest(selector=private),
        "GetStats": pb.GetStatsRequest(),
        "ListQueues": pb.ListQueuesRequest(),
        "ListTasks": pb.ListTasksRequest(queue="private"),
        "ListWorkers": pb.ListWorkersRequest(),
        "PauseQueue": pb.PauseQueueRequest(queue="private"),
        "ResumeQueue": pb.ResumeQueueRequest(queue="private"),
        "PurgeQueue": pb.PurgeQueueRequest(queue="private", confirm="private"),
        "DeleteQueue": pb.DeleteQueueRequest(queue="private"),
    }
    if not env.auth:  # the open feeder would cancel, lease, purge the private task (and
        # refuse to delete its queue): not those
        left_out = ("CancelTask", "Lease", "PurgeQueue", "DeleteQueue")
        calls = {m: r for m, r in calls.items() if m not in left_out}
    want = grpc.StatusCode.PERMISSION_DENIED if env.auth else grpc.StatusCode.OK
    for method, request in calls.items():
        try:
            getattr(env.stub, method)(request, timeout=10)
            code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            code = exc.code()
        assert code == want, method
    stream = env.stub.Consume(iter([pb.ConsumeRequest(start=pb.ConsumeStart(queue="q"))]))
    try:
        list(stream)
        code = grpc.StatusCode.OK
    except grpc.RpcError as exc:
        code = exc.code()
    assert code == want


@settings(max_examples=scaled(40, 400), deadline=None, database=None)
@given(method=st.sampled_from(METHODS), body=st.binary(max_size=512))
def test_garbage_bytes(env: Env, method: str, body: bytes) -> None:
    next_key(env)
    code = raw_call(env, f"/feedwork.v1.Feeder/{method}", body)
    check_code(env, method, code, repr(body))


def raw_call(env: Env, path: str, body: bytes) -> grpc.StatusCode:
    call = env.channel.unary_unary(path, request_serializer=None, response_deserializer=None)
    env.cases["raw"] += 1
    try:
        call(body, timeout=10)
    except grpc.RpcError as exc:
        env.codes[f"raw {exc.code().name}"] += 1
        return exc.code()
    env.codes["raw OK"] += 1
    return grpc.StatusCode.OK


@pytest.mark.parametrize("method", METHODS)
def test_oversized_and_undecodable_messages(env: Env, method: str) -> None:
    env.key = FUZZ_KEY if env.auth else None
    path = f"/feedwork.v1.Feeder/{method}"
    assert raw_call(env, path, b"\x0a" + b"\xff" * 20) == grpc.StatusCode.INVALID_ARGUMENT
    assert raw_call(env, path, os.urandom(9 * MiB)) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert raw_call(env, "/feedwork.v1.Feeder/Nope", b"") == grpc.StatusCode.UNIMPLEMENTED


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def frame(kind: int, flags: int, stream: int, payload: bytes, length: int | None = None) -> bytes:
    size = len(payload) if length is None else length
    return struct.pack(">I", size)[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


MALFORMED: dict[str, bytes] = {
    "not http2": b"GET / HTTP/1.1\r\nHost: feeder\r\n\r\n",
    "random bytes": os.urandom(4096),
    "bad preface": b"PRI * HTTP/3.0\r\n\r\nXX\r\n\r\n" + os.urandom(64),
    "settings of odd length": PREFACE + frame(0x4, 0, 0, b"\x00\x01\x00"),
    "huge frame length": PREFACE + frame(0x4, 0, 0, b"", length=0xFFFFFF) + b"\x00" * 100,
    "headers with broken hpack": PREFACE + frame(0x4, 0, 0, b"") + frame(0x1, 0x5, 1, b"\xff" * 32),
    "data on stream 0": PREFACE + frame(0x4, 0, 0, b"") + frame(0x0, 0x1, 0, b"abc"),
    "window update of 0": PREFACE + frame(0x4, 0, 0, b"") + frame(0x8, 0, 0, b"\x00" * 4),
    "headers on an even stream": PREFACE
    + frame(0x4, 0, 0, b"")
    + frame(0x1, 0x5, 2, b"\x82\x86\x84"),
    "rst of an idle stream": PREFACE + frame(0x4, 0, 0, b"") + frame(0x3, 0, 7, b"\x00" * 4),
    "goaway then data": PREFACE + frame(0x7, 0, 0, b"\x00" * 8) + os.urandom(256),
    "truncated frame": PREFACE + frame(0x4, 0, 0, b"")[:5],
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_http2(env: Env, name: str) -> None:
    env.key = ROOT_KEY if env.auth else None
    with socket.create_connection(("127.0.0.1", env.feeder.port), timeout=5) as sock:
        sock.sendall(MALFORMED[name])
        sock.settimeout(1)
        try:  # the server answers with GOAWAY and/or closes; read what it sends
            while sock.recv(65536):
                pass
        except (TimeoutError, ConnectionError, OSError):
            pass
    env.cases["http2"] += 1
    assert env.feeder.alive()
    assert healthy(env.feeder.target)
    env.stub.GetStats(pb.GetStatsRequest(), timeout=10)


def test_idle_connections_do_not_block_others(env: Env) -> None:
    """Many connections that send a preface and then nothing (slowloris)."""
    env.key = ROOT_KEY if env.auth else None
    socks = []
    try:
        for _ in range(scaled(50, 300)):
            sock = socket.create_connection(("127.0.0.1", env.feeder.port), timeout=5)
            sock.sendall(PREFACE + frame(0x4, 0, 0, b""))
            socks.append(sock)
        env.cases["idle connections"] += len(socks)
        started = time.monotonic()
        assert healthy(env.feeder.target)
        env.stub.GetStats(pb.GetStatsRequest(), timeout=10)
        assert time.monotonic() - started < 5
    finally:
        for sock in socks:
            sock.close()


def test_zz_owned_tasks_untouched_and_feeder_healthy(env: Env) -> None:
    """Runs last: the owned tasks survived every forged and tampered token. The figures
    are recorded before the checks, so that a failure shows in them."""
    env.key = ROOT_KEY if env.auth else None
    private = env.stub.GetTask(pb.GetTaskRequest(task_id=env.private_task), timeout=10).task
    # Auth variant: the fuzz could name the private task, never touch it.
    private_untouched = private.state == pb.TASK_STATE_READY and private.attempts == 0
    untouched = []
    for task_id, _ in env.owned.items():
        task = env.stub.GetTask(pb.GetTaskRequest(task_id=task_id), timeout=10).task
        history = [(h.worker_id, h.outcome) for h in task.history]
        untouched.append(
            task.state == pb.TASK_STATE_LEASED
            and task.attempts == 1
            and task.failures == 0
            and history == [("owner", pb.ATTEMPT_OUTCOME_RUNNING)]
        )
    tokens = list(env.owned.values())
    extended = env.stub.Extend(
        pb.ExtendRequest(items=[pb.ExtendItem(lease_token=t) for t in tokens]), timeout=10
    )
    acked = env.stub.Ack(
        pb.AckRequest(items=[pb.AckItem(lease_token=t, result=b"mine") for t in tokens]),
        timeout=10,
    )
    alive, serving = env.feeder.alive(), healthy(env.feeder.target)
    log = Path(env.feeder.log_path).read_text(errors="replace")
    cases = sum(env.cases.values())
    record(
        "bad_input_auth" if env.auth else "bad_input",
        {
            "examples_per_rpc": EXAMPLES,
            "fuzz_cases": cases,
            "cases_by_kind": dict(sorted(env.cases.items())),
            "status_codes": dict(sorted(env.codes.items())),
            "tampered_tokens_sent": env.tampered_sent,
            "tampered_tokens_accepted": env.tampered_accepted,
            "owned_tasks_untouched": f"{sum(untouched)} of {len(untouched)}",
            "feeder_restarts": env.feeder.starts - 1,
            "healthy_after": alive and serving,
            "tracebacks_in_log": log.count("Traceback"),
            "private_task_untouched": private_untouched if env.auth else "n/a (no auth)",
            "seconds": round(time.monotonic() - env.started, 1),
            "internal_or_unknown": sum(
                n for code, n in env.codes.items() if code.endswith(("INTERNAL", "UNKNOWN"))
            ),
        },
    )
    assert all(untouched), untouched
    assert {r.outcome for r in extended.results} == {pb.EXTEND_OUTCOME_EXTENDED}
    assert {r.outcome for r in acked.results} == {pb.ACK_OUTCOME_ACKED}
    assert alive and serving
    assert "Traceback" not in log, log[-3000:]
    assert env.tampered_accepted == 0
    assert private_untouched or not env.auth, private
