"""The feeder's Prometheus endpoint (`--metrics-listen`) through real feeders: what it
reports matches GetStats and the work done, on every store and across two feeders of one
PostgreSQL database; it is behind the access list's admin keys and TLS when the feeder is;
a feeder will not serve it off loopback in clear text.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import re
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from feeder.config import Settings
from feeder.server.app import FeederServer, StartupError
from feedwork import devcerts
from feedwork.v1 import feeder_pb2 as pb
from tests.conftest import ALL_STORES, FeederFactory, RunningFeeder
from worker import Worker

pytestmark = pytest.mark.timeout(90)
ROOT = Path(__file__).resolve().parents[2]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def feeder_settings(tmp_path: Path) -> Settings:
    return Settings(
        listen="127.0.0.1:0",
        db=str(tmp_path / "feedwork.db"),
        shutdown_grace=1.0,
        metrics_listen="127.0.0.1:0",
    )


def scrape_text(feeder: FeederServer, *, key: str | None = None, tls: Path | None = None) -> str:
    endpoint = feeder.metrics_endpoint
    assert endpoint is not None
    request = urllib.request.Request(f"{endpoint.scheme}://127.0.0.1:{endpoint.port}/metrics")
    if key is not None:
        request.add_header("Authorization", f"Bearer {key}")
    context = ssl.create_default_context(cafile=str(tls)) if tls is not None else None
    with urllib.request.urlopen(request, timeout=10, context=context) as reply:
        return str(reply.read().decode())


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return bytes(reply.read())


async def scrape(feeder: FeederServer, **kw: object) -> Samples:
    """Every sample of one scrape, by (name, sorted labels). The scrape runs in a thread:
    the endpoint reads the store on the feeder's loop, which this test must not block."""
    text = await asyncio.to_thread(scrape_text, feeder, **kw)  # type: ignore[arg-type]
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def work(feeder: RunningFeeder, queue: str, count: int) -> None:
    """Submits `count` tasks, leases them all, acks all but two, nacks one of those."""
    specs = [pb.TaskSpec(queue=queue, payload=b"x") for _ in range(count)]
    await feeder.stub.Submit(pb.SubmitRequest(tasks=specs))
    leased: list[pb.LeasedTask] = []
    while len(leased) < count:
        request = pb.LeaseRequest(queue=queue, max_tasks=count, worker_id="w")
        leased += (await feeder.stub.Lease(request)).tasks
    acks = [pb.AckItem(lease_token=t.lease_token, result=b"ok") for t in leased[:-2]]
    await feeder.stub.Ack(pb.AckRequest(items=acks))
    await feeder.stub.Ack(pb.AckRequest(items=acks[:3]))  # resent: DUPLICATE
    nack = pb.NackItem(lease_token=leased[-1].lease_token, error="boom")
    await feeder.stub.Nack(pb.NackRequest(items=[nack]))


@ALL_STORES
async def test_the_queues_and_the_work_done(feeder: RunningFeeder) -> None:
    await work(feeder, "m", 20)
    with pytest.raises(Exception, match="INVALID_ARGUMENT"):
        await feeder.stub.Submit(pb.SubmitRequest(tasks=[pb.TaskSpec(queue="no spaces")]))
    samples = await scrape(feeder.server)
    stats = (await feeder.stub.GetStats(pb.GetStatsRequest(queues=["m"]))).queues[0]

    assert value(samples, "feedwork_store_up") == 1
    for state in ("scheduled", "ready", "leased", "completed", "dead", "cancelled"):
        got = value(samples, "feedwork_queue_tasks", queue="m", state=state)
        assert got == getattr(stats, state), state
    assert value(samples, "feedwork_queue_tasks", queue="m", state="completed") == 18
    assert value(samples, "feedwork_queue_tasks", queue="m", state="leased") == 1
    for event in ("submitted", "completed", "failed", "duplicate_acks", "expired"):
        got = value(samples, "feedwork_queue_events_total", queue="m", event=event)
        assert got == getattr(stats.totals, event), event
    assert value(samples, "feedwork_leased_tasks_total", queue="m") == 20
    assert value(samples, "feedwork_acks_total", outcome="ACKED") == 18
    assert value(samples, "feedwork_acks_total", outcome="DUPLICATE") == 3
    assert value(samples, "feedwork_nacks_total", outcome="RETRYING") == 1
    assert value(samples, "feedwork_dispatch_latency_seconds_count", queue="m") == 20
    assert value(samples, "feedwork_task_run_seconds_count", queue="m") == 18
    inf = value(samples, "feedwork_task_run_seconds_bucket", queue="m", le="+Inf")
    assert inf == 18
    assert value(samples, "feedwork_rpcs_total", method="Submit", code="OK") == 1
    assert value(samples, "feedwork_rpcs_total", method="Submit", code="INVALID_ARGUMENT") == 1
    assert value(samples, "feedwork_rpcs_total", method="Ack", code="OK") == 2
    assert value(samples, "feedwork_rpc_duration_seconds_count", method="Ack") == 2
    assert value(samples, "feedwork_consumers") == 1  # the Lease caller "w", one lease held
    assert value(samples, "feedwork_leases_held") == 1
    assert value(samples, "feedwork_process_resident_memory_bytes") > 0


async def test_a_consume_stream_is_counted_while_open(feeder: RunningFeeder) -> None:
    await feeder.stub.Submit(pb.SubmitRequest(tasks=[pb.TaskSpec(queue="s")]))
    call = feeder.stub.Consume()
    await call.write(pb.ConsumeRequest(start=pb.ConsumeStart(queue="s", worker_id="c"), credits=1))
    assert (await call.read()).tasks
    samples = await scrape(feeder.server)
    assert value(samples, "feedwork_consume_streams") == 1
    assert value(samples, "feedwork_consumers") == 1
    call.cancel()
    for _ in range(100):
        if value(await scrape(feeder.server), "feedwork_consume_streams") == 0:
            break
        await asyncio.sleep(0.05)
    assert value(await scrape(feeder.server), "feedwork_consume_streams") == 0


async def test_two_feeders_of_one_database_report_the_same_queues(
    feeder_factory: FeederFactory,
) -> None:
    one = await feeder_factory(store_kind="postgres")
    two = await feeder_factory(store_kind="postgres")
    await work(one, "shared", 10)
    first, second = await scrape(one.server), await scrape(two.server)
    for state in ("ready", "leased", "completed"):
        assert value(first, "feedwork_queue_tasks", queue="shared", state=state) == value(
            second, "feedwork_queue_tasks", queue="shared", state=state
        )
    assert value(second, "feedwork_queue_events_total", queue="shared", event="submitted") == 10
    # The work itself is each feeder's own: sum() over feeders.
    assert value(first, "feedwork_leased_tasks_total", queue="shared") == 10
    assert value(second, "feedwork_leased_tasks_total", queue="shared") == 0


KEYS = {"ops": "fwk_o0000001_ops-secret", "prod": "fwk_p0000001_prod-secret"}


async def test_behind_the_access_list_an_admin_key_is_needed(
    feeder_factory: FeederFactory, feeder_settings: Settings
) -> None:
    access = "\n".join(
        [
            f"ops sha256:{hashlib.sha256(KEYS['ops'].encode()).hexdigest()} admin",
            f"prod sha256:{hashlib.sha256(KEYS['prod'].encode()).hexdigest()} producer:*",
        ]
    )
    settings = dataclasses.replace(feeder_settings, auth=access)
    feeder = await feeder_factory(store_kind="memory", settings=settings)
    for key, status in ((None, 401), ("fwk_x_forged", 401), (KEYS["prod"], 403)):
        with pytest.raises(urllib.error.HTTPError) as refused:
            await asyncio.to_thread(scrape_text, feeder.server, key=key)
        assert refused.value.code == status, key
        refused.value.close()
    # A call the access list refuses is counted with its code.
    with pytest.raises(Exception, match="PERMISSION_DENIED"):
        await feeder.stub.GetStats(
            pb.GetStatsRequest(), metadata=[("authorization", f"Bearer {KEYS['prod']}")]
        )
    samples = await scrape(feeder.server, key=KEYS["ops"])
    assert value(samples, "feedwork_rpcs_total", method="GetStats", code="PERMISSION_DENIED") == 1


async def test_over_tls_with_the_feeders_certificate(
    tmp_path: Path, feeder_settings: Settings, feeder_factory: FeederFactory
) -> None:
    certs = tmp_path / "certs"
    devcerts.write_dev_dir(out=certs)
    settings = dataclasses.replace(
        feeder_settings,
        tls_cert=str(certs / "feeder.pem"),
        tls_key=str(certs / "feeder-key.pem"),
    )
    feeder = FeederServer(settings)
    await feeder.start()
    try:
        assert feeder.metrics_endpoint is not None and feeder.metrics_endpoint.scheme == "https"
        samples = await scrape(feeder, tls=certs / "ca.pem")
        assert value(samples, "feedwork_store_up") == 1
        with pytest.raises(OSError):  # clear text to a TLS port: reset, or a bad reply
            url = f"http://127.0.0.1:{feeder.metrics_endpoint.port}/metrics"
            await asyncio.to_thread(fetch, url)
    finally:
        await feeder.stop()


async def test_metrics_off_loopback_in_clear_text_are_refused(feeder_settings: Settings) -> None:
    settings = dataclasses.replace(feeder_settings, metrics_listen="0.0.0.0:0")
    with pytest.raises(
        StartupError, match=r"refusing to serve metrics on 0\.0\.0\.0:0 without TLS"
    ):
        await FeederServer(settings).start()
    # With --insecure it serves (on a network the operator trusts).
    insecure = FeederServer(dataclasses.replace(settings, insecure=True))
    await insecure.start()
    await insecure.stop()


async def test_unknown_paths_are_not_found(feeder: RunningFeeder) -> None:
    endpoint = feeder.server.metrics_endpoint
    assert endpoint is not None
    with pytest.raises(urllib.error.HTTPError) as missing:
        await asyncio.to_thread(fetch, f"http://127.0.0.1:{endpoint.port}/admin")
    assert missing.value.code == 404
    missing.value.close()


def exported(text: str) -> set[str]:
    """Every series name a scrape's families can have (zero samples included): a counter's
    NAME_total, a histogram's NAME_bucket, _count and _sum, a gauge's NAME."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names |= {f"{family.name}_{part}" for part in ("bucket", "count", "sum")}
        else:
            names.add(family.name)
    return names


def used_by_the_examples() -> dict[str, str]:
    """The feedwork_* names each expression of the dashboard and the alert rules uses,
    with where it is used."""
    folder = ROOT / "docs" / "observability"
    expressions: list[tuple[str, str]] = []
    dashboard = json.loads((folder / "grafana-dashboard.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expressions.append((f"dashboard panel {panel['title']!r}", target["expr"]))
    rules = yaml.safe_load((folder / "alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            expressions.append((f"alert {rule['alert']}", rule["expr"]))
    used: dict[str, str] = {}
    for where, expression in expressions:
        for name in re.findall(r"\bfeedwork_[a-z_]+\b", expression):
            used.setdefault(name, where)
    return used


async def test_the_dashboard_and_the_alerts_use_only_exported_metrics(
    feeder: RunningFeeder,
) -> None:
    await work(feeder, "m", 3)
    worker = Worker(
        target=feeder.target,
        queue="m",
        handler=lambda task: b"",
        metrics_listen="127.0.0.1:0",
        wait=1.0,
    )
    run = asyncio.create_task(worker.run_async())
    try:
        for _ in range(200):
            if worker.metrics_port is not None or run.done():
                break
            await asyncio.sleep(0.02)
        assert worker.metrics_port is not None, run
        url = f"http://127.0.0.1:{worker.metrics_port}/metrics"
        worker_text = (await asyncio.to_thread(fetch, url)).decode()
    finally:
        worker.stop()
        await asyncio.wait_for(run, 30)
    names = exported(await asyncio.to_thread(scrape_text, feeder.server)) | exported(worker_text)
    used = used_by_the_examples()
    assert len(used) >= 15
    missing = {name: where for name, where in used.items() if name not in names}
    assert not missing, f"used but not exported: {missing}"
