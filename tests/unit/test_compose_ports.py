"""Compose publishes the feeders' and PostgreSQL's ports on 127.0.0.1 unless told
otherwise: before, `docker compose up` offered the plaintext feeders, which anyone could
read, lease, ack and purge through, on every interface of the host."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.acceptance.test_compose_cluster import interpolate

OVERRIDE = Path(__file__).resolve().parents[2] / "docker-compose.override.yml"


def published(env: dict[str, str]) -> dict[str, list[str]]:
    services = interpolate(yaml.safe_load(OVERRIDE.read_text())["services"], env)
    return {name: service.get("ports", []) for name, service in services.items()}


def test_every_published_port_is_on_loopback_by_default() -> None:
    ports = published({})
    assert {"feeder", "postgres", "feeder-1", "feeder-2", "feeder-3"} <= set(ports)
    for name, mappings in ports.items():
        assert mappings, name
        for mapping in mappings:
            assert mapping.startswith("127.0.0.1:"), (name, mapping)
            assert len(mapping.split(":")) == 3, (name, mapping)


def test_the_address_can_be_opened_on_purpose() -> None:
    for name, mappings in published({"FEEDWORK_PUBLISH_ADDRESS": "0.0.0.0"}).items():
        for mapping in mappings:
            assert mapping.startswith("0.0.0.0:"), (name, mapping)
