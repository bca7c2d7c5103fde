"""The access list's text format and its decisions (feeder/server/access.py), and the
refusal to serve in clear text on a non-loopback address."""

from __future__ import annotations

import hashlib

import pytest

from feeder.config import Settings
from feeder.server.access import AccessError, Grant, Principal, Role, parse_access_list
from feeder.server.app import exposure_refusal, is_loopback_listen

KEY = "fwk_0123abcd_a-long-enough-secret"
HASH = "sha256:" + hashlib.sha256(KEY.encode()).hexdigest()


def test_entries_keys_certificates_comments_and_semicolons() -> None:
    text = f"""
    # name  credential  roles
    ingest  {HASH}  producer:images producer:emails.*   # trailing comment
    w7 cert:worker-7.example.com worker:images; ops cert:ops admin
    """
    access = parse_access_list(text, "access.txt")
    principal = access.for_key(KEY)
    assert principal == Principal(
        "ingest", (Grant(Role.PRODUCER, "images"), Grant(Role.PRODUCER, "emails.*"))
    )
    assert access.for_key(KEY + "x") is None
    assert access.for_certificate("worker-7.example.com") == Principal(
        "w7", (Grant(Role.WORKER, "images"),)
    )
    assert access.for_certificate("ops") == Principal("ops", (Grant(Role.ADMIN),))
    assert len(access) == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ingest " + HASH, "want NAME CREDENTIAL ROLE"),
        ("ingest sha256:abc producer", "neither sha256:<64 hex digits>"),
        ("ingest password producer", "neither sha256"),
        (f"ingest {HASH} reader", "'reader' is not a role"),
        (f"ingest {HASH} producer:a/b", "not a queue name or pattern"),
        (f"-x {HASH} producer", "is not a name"),
        (f"a {HASH} producer\nb {HASH} worker", "the same key hash as 'a'"),
        ("a cert:x producer\na cert:y worker", "'a' has an entry already"),
    ],
)
def test_malformed_entries_name_the_source_and_line(text: str, message: str) -> None:
    with pytest.raises(AccessError, match=message) as caught:
        parse_access_list(text, "access.txt")
    assert str(caught.value).startswith("access.txt:")


def test_grants_cover_their_role_and_queues_and_admin_covers_every_role() -> None:
    producer = Principal("p", (Grant(Role.PRODUCER, "img-*"),))
    assert producer.may(Role.PRODUCER, ["img-1", "img-2"]) is None
    assert producer.may(Role.PRODUCER, ["img-1", "mail"]) == "mail"
    assert producer.may(Role.WORKER, ["img-1"]) == "img-1"
    assert producer.may(Role.PRODUCER, [None]) == "*"  # every queue: an unlimited grant only
    admin = Principal("a", (Grant(Role.ADMIN, "img-?"),))
    assert admin.may(Role.WORKER, ["img-1"]) is None and admin.may(Role.PRODUCER, ["img-10"])
    root = Principal("r", (Grant(Role.ADMIN),))
    assert root.may(Role.ADMIN, [None]) is None and root.has(Role.WORKER)
    assert not producer.has(Role.ADMIN)


@pytest.mark.parametrize(
    ("listen", "loopback"),
    [
        ("127.0.0.1:50051", True),
        ("127.1.2.3:1", True),
        ("[::1]:50051", True),
        ("localhost:50051", True),
        ("0.0.0.0:50051", False),
        ("[::]:50051", False),
        ("10.0.0.5:50051", False),
        ("feeder:50051", False),
    ],
)
def test_loopback_addresses(listen: str, loopback: bool) -> None:
    assert is_loopback_listen(listen) is loopback


def test_refusal_to_serve_openly_without_tls() -> None:
    open_settings = Settings(listen="0.0.0.0:50051")
    refusal = exposure_refusal(open_settings)
    assert refusal is not None and "--insecure" in refusal and "without auth" in refusal
    with_keys = exposure_refusal(Settings(listen="0.0.0.0:50051", auth="x cert:y admin"))
    assert with_keys is not None and "in clear text" in with_keys
    assert exposure_refusal(Settings(listen="0.0.0.0:50051", insecure=True)) is None
    tls = Settings(listen="0.0.0.0:50051", tls_cert="c.pem", tls_key="k.pem")
    assert exposure_refusal(tls) is None
    assert exposure_refusal(Settings(listen="127.0.0.1:50051")) is None
