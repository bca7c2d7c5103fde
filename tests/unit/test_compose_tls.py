"""docker-compose.tls.yml on top of docker-compose.yml: every feeder serves TLS with API
keys and none keeps --insecure; every worker and healthcheck verifies the feeders and calls
with a key; each role gets the files its flags name and no more; and `make dev-certs` makes
a certificate for the names the containers verify. The plain file's feeders, which listen
on every address of their container without TLS or keys, say --insecure. With host
networking as well (docker/compose.host.yml, then docker/compose.host.tls.yml, as `make
docker-cluster-tls` runs them), the feeders keep both: loopback and TLS with keys."""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

import yaml

from tests.acceptance.test_compose_cluster import interpolate

ROOT = Path(__file__).resolve().parents[2]
TLS_FLAGS = {"--tls-cert": "/certs/feeder.pem", "--tls-key": "/certs/feeder-key.pem"}
HOST_TLS = (
    "docker-compose.yml",
    "docker-compose.tls.yml",
    "docker/compose.host.yml",
    "docker/compose.host.tls.yml",
)
AUTH_FLAGS = {"--auth-file": "/certs/auth.txt"}


def services(name: str) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = interpolate(
        yaml.safe_load((ROOT / name).read_text())["services"], {}
    )
    return found


def merged(*files: str) -> dict[str, dict[str, Any]]:
    """The files (by default the TLS file over the main one) as compose merges them: a
    command replaces the other, mappings (environment, depends_on, build) and volumes (by
    container path) add up."""
    first, *overrides = files or ("docker-compose.yml", "docker-compose.tls.yml")
    result = services(first)
    for name, override in (item for file in overrides for item in services(file).items()):
        service = dict(result.get(name, {}))
        for key, value in override.items():
            if isinstance(value, dict):
                service[key] = {**service.get(key, {}), **value}
            elif key == "volumes":
                mounts = {v.split(":")[1]: v for v in [*service.get(key, []), *value]}
                service[key] = list(mounts.values())
            else:
                service[key] = value
        result[name] = service
    return result


def runs(service: dict[str, Any], module: str) -> bool:
    command: list[str] = service.get("command", [])
    return command[:3] == ["python", "-m", module]


def flag_values(command: list[str]) -> dict[str, str]:
    return dict(itertools.pairwise(command))


def installed() -> dict[str, set[str]]:
    """What the tls-certs service copies to each role's volume: {"/feeder": {files}}."""
    script = services("docker-compose.tls.yml")["tls-certs"]["command"][-1]
    copies: dict[str, set[str]] = {}
    for line in script.splitlines():
        words = iter(line.split())
        if next(words, None) != "install":
            continue
        sources = []
        for word in words:
            if word.startswith("-"):
                next(words)  # -o OWNER, -m MODE: the option's value
            else:
                sources.append(word)
        *files, target = sources
        copies.setdefault(target.rstrip("/"), set()).update(files)
    return copies


def mounted(service: dict[str, Any]) -> str:
    """The volume a service has at /certs."""
    [source] = [v.split(":")[0] for v in service.get("volumes", []) if ":/certs" in v]
    return str(source)


def test_the_plain_feeders_on_every_address_say_insecure() -> None:
    feeders = {n: s for n, s in services("docker-compose.yml").items() if runs(s, "feeder")}
    assert set(feeders) == {"feeder", "feeder-1", "feeder-2", "feeder-3"}
    for name, service in feeders.items():
        command = service["command"]
        assert flag_values(command)["--listen"].startswith("0.0.0.0:"), name
        assert "--insecure" in command, name


def test_every_feeder_serves_tls_with_keys_and_none_is_insecure() -> None:
    plain = services("docker-compose.yml")
    feeders = {n: s for n, s in merged().items() if runs(s, "feeder")}
    assert set(feeders) == {"feeder", "feeder-1", "feeder-2", "feeder-3"}
    for name, service in feeders.items():
        command = service["command"]
        assert "--insecure" not in command, name
        values = flag_values(command)
        for flag, path in {**TLS_FLAGS, **AUTH_FLAGS}.items():
            assert values.get(flag) == path, (name, flag)
        # The same feeder otherwise: its listen address, its database.
        same = [arg for arg in plain[name]["command"] if arg != "--insecure"]
        assert command[: len(same)] == same, name
        assert service["environment"]["FEEDWORK_TLS_CA"] == "/certs/ca.pem", name
        assert mounted(service) == "tls-feeder", name
        assert service["depends_on"]["tls-certs"]["condition"] == ("service_completed_successfully")


def test_every_worker_verifies_the_feeders_and_calls_with_its_key() -> None:
    workers = {n: s for n, s in merged().items() if runs(s, "worker")}
    assert set(workers) == {"worker", "cluster-worker"}
    for name, service in workers.items():
        environment = service["environment"]
        assert environment["FEEDWORK_TLS_CA"] == "/certs/ca.pem", name
        assert environment["FEEDWORK_API_KEY_FILE"] == "/certs/worker.key", name
        assert environment["FEEDWORK_TLS_SERVER_NAME"] == "feeder", name
        assert mounted(service) == "tls-worker", name
        assert service["depends_on"]["tls-certs"]["condition"] == ("service_completed_successfully")


def test_each_role_gets_the_files_it_names_and_no_other() -> None:
    copies = installed()
    assert copies["/feeder"] == {"ca.pem", "feeder.pem", "feeder-key.pem", "auth.txt"}
    assert copies["/worker"] == {"ca.pem", "worker.key"}
    for service in merged().values():
        if runs(service, "feeder"):
            values = flag_values(service["command"])
            named = {values[f] for f in {**TLS_FLAGS, **AUTH_FLAGS}}
            named.add(service["environment"]["FEEDWORK_TLS_CA"])
            assert {f"/certs/{f}" for f in copies["/feeder"]} == named
        elif runs(service, "worker"):
            named = {v for v in service["environment"].values() if v.startswith("/certs/")}
            assert {f"/certs/{f}" for f in copies["/worker"]} == named


def test_only_the_copying_service_sees_the_certificates_directory() -> None:
    for name, service in merged().items():
        for volume in service.get("volumes", []):
            if volume.split(":")[0] == "./certs":
                assert name == "tls-certs", (name, volume)
                assert volume.endswith(":ro"), volume


def test_make_dev_certs_names_every_feeder_the_containers_verify() -> None:
    makefile = (ROOT / "Makefile").read_text()
    match = re.search(r"^DEV_CERTS_HOSTS\s*:?=\s*(.*)$", makefile, re.M)
    assert match, "DEV_CERTS_HOSTS"
    hosts = set(match[1].split())
    feeders = {n for n, s in merged().items() if runs(s, "feeder")}
    assert feeders <= hosts
    assert "feeder" in hosts  # FEEDWORK_TLS_SERVER_NAME of the workers


def test_with_host_networking_every_feeder_serves_tls_with_keys_on_loopback() -> None:
    host = services("docker/compose.host.yml")
    feeders = {n: s for n, s in merged(*HOST_TLS).items() if runs(s, "feeder")}
    assert set(feeders) == {"feeder", "feeder-1", "feeder-2", "feeder-3"}
    for name, service in feeders.items():
        command = service["command"]
        values = flag_values(command)
        assert "--insecure" not in command, name
        # The host file's feeder (127.0.0.1, its PostgreSQL port), with the TLS file's flags.
        assert command[: len(host[name]["command"])] == host[name]["command"], name
        assert values["--listen"].startswith("127.0.0.1:"), name
        for flag, path in {**TLS_FLAGS, **AUTH_FLAGS}.items():
            assert values.get(flag) == path, (name, flag)
        assert service["environment"]["FEEDWORK_TLS_CA"] == "/certs/ca.pem", name
        assert mounted(service) == "tls-feeder", name


def test_with_host_networking_the_workers_keep_their_tls_and_key() -> None:
    workers = {n: s for n, s in merged(*HOST_TLS).items() if runs(s, "worker")}
    assert set(workers) == {"worker", "cluster-worker"}
    for name, service in workers.items():
        assert service["environment"] == merged()[name]["environment"], name
        assert mounted(service) == "tls-worker", name
        assert service["network_mode"] == "host", name


def test_with_host_networking_no_service_needs_a_network_of_its_own() -> None:
    """A service without network_mode joins the project's default network, which compose
    creates as a bridge: an interface and firewall rules on the host, which host
    networking is there to avoid (and an engine started with --bridge=none lacks)."""
    for name, service in merged(*HOST_TLS).items():
        assert service.get("network_mode") in ("host", "none"), name
    assert merged(*HOST_TLS)["tls-certs"]["network_mode"] == "none"
