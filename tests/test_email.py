"""The email destination against a real SMTP server (aiosmtpd) in the test process."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from gateway_plugins.email import Email, Options
from manual_clock import ManualClock
from pydantic import ValidationError
from smtp_server import Cert, SmtpServer, make_cert

from gateway.config import load_config_text
from gateway.destination.base import Services
from gateway.store import DeliveryRecord

PASSWORD = "s3cret-pa55"
UNDELIVERED = {
    "message_uuid": "063464ec-a34f-4558-90c5-984395000003",
    "channel_type": "SMS",
    "callback_event": "delivered",
    "status": "undelivered",
    "status_time": "2020-10-16T18:51:13Z",
    "error_code": 6969,
}
INBOUND = {
    "message_uuid": "0b2f6a10-a34f-4558-90c5-984395000009",
    "callback_event": "inbound_sent",
    "channel_type": "WHATSAPP",
    "status": "inbound_sent",
    "status_time": "2020-10-16T18:51:13Z",
    "item": {"contentType": "text", "text": "Hello, is my order <b>on its way</b>?"},
}


def record(
    fields: dict[str, Any], n: int = 1, enrichment: dict[str, Any] | None = None
) -> DeliveryRecord:
    return DeliveryRecord(
        id=f"dlv_{n:04d}",
        event_id=f"evt_{n:04d}",
        source="revicom",
        route="inbound",
        destination="support",
        state="in_flight",
        attempts=0,
        next_attempt_at=0.0,
        created_at=0.0,
        updated_at=0.0,
        raw=json.dumps(fields),
        enrichment=enrichment or {},
        message_uuid=fields.get("message_uuid"),
        received_at=1_700_000_000.25,
    )


@pytest.fixture(scope="session")
def cert(tmp_path_factory: pytest.TempPathFactory) -> Cert:
    return make_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture
async def services() -> AsyncIterator[Services]:
    # The email destination uses no HTTP client and no store.
    yield Services(None, ManualClock(), None, set())  # type: ignore[arg-type]


@pytest.fixture
def plain() -> Iterator[SmtpServer]:
    with SmtpServer() as server:
        yield server


def dest(services: Services, port: int, **opts: Any) -> Email:
    base = {
        "host": "127.0.0.1",
        "port": port,
        "from": "Gateway <gw@example.com>",
        "to": ["support@example.com"],
    }
    return Email("support", Options(**{**base, **opts}), services)


async def test_plaintext_relay_delivers_what_the_human_should_read(
    plain: SmtpServer, services: Services
) -> None:
    d = dest(
        services,
        plain.port,
        starttls=False,
        cc="lead@example.com",
        to=["support@example.com", "Ops <ops@example.com>"],
        subject="Customer wrote on {{ event.channel_type }}:\n{{ event.item.text }}",
        body="{{ event.item.text }}\n\nmessage {{ event.message_uuid }}",
    )
    outcome = await d.deliver(record(INBOUND))
    assert outcome.kind == "delivered" and outcome.error is None
    [got] = plain.messages
    assert got.mail_from == "gw@example.com"
    assert got.rcpt_tos == ["support@example.com", "ops@example.com", "lead@example.com"]
    msg = got.message
    assert msg["Subject"] == "Customer wrote on WHATSAPP: Hello, is my order <b>on its way</b>?"
    assert msg["From"] == "Gateway <gw@example.com>"
    assert msg["To"] == "support@example.com, Ops <ops@example.com>"
    assert msg["Cc"] == "lead@example.com"
    assert msg["Message-ID"] == "<dlv_0001@example.com>"
    assert msg["Date"] == "Tue, 14 Nov 2023 22:13:20 +0000"
    assert got.text() == (
        "Hello, is my order <b>on its way</b>?\n\nmessage 0b2f6a10-a34f-4558-90c5-984395000009\n"
    )
    assert got.html() is None
    assert not got.tls


async def test_default_subject_and_body_list_the_event(
    plain: SmtpServer, services: Services
) -> None:
    await dest(services, plain.port, starttls=False).deliver(
        record(UNDELIVERED, enrichment={"status_text": "Not delivered within the lifetime"})
    )
    got = plain.messages[0]
    assert got.message["Subject"] == (
        "[revicom] SMS undelivered 063464ec-a34f-4558-90c5-984395000003"
    )
    text = got.text()
    assert text.startswith("Not delivered within the lifetime\n\n")
    assert "error_code: 6969\n" in text
    assert "status_time: 2020-10-16T18:51:13Z\n" in text
    assert "delivery dlv_0001" in text


async def test_html_part_escapes_event_text(plain: SmtpServer, services: Services) -> None:
    d = dest(services, plain.port, starttls=False, html="<p>{{ event.item.text }}</p>")
    await d.deliver(record(INBOUND))
    assert plain.messages[0].html() == (
        "<p>Hello, is my order &lt;b&gt;on its way&lt;/b&gt;?</p>\n"
    )


async def test_starttls_is_used_before_auth(cert: Cert, services: Services) -> None:
    with SmtpServer(starttls=cert, users={"gw": PASSWORD}) as smtp:
        d = dest(services, smtp.port, ca_file=str(cert.cert), username="gw", password=PASSWORD)
        outcome = await d.deliver(record(UNDELIVERED))
        assert outcome.kind == "delivered", outcome.error
        assert smtp.auth_attempts == [("gw", True)]
        assert smtp.messages[0].tls and smtp.messages[0].login == "gw"


async def test_missing_starttls_is_permanent_and_sends_nothing(
    plain: SmtpServer, services: Services
) -> None:
    outcome = await dest(services, plain.port).deliver(record(UNDELIVERED))
    assert outcome.kind == "permanent"
    assert "does not offer STARTTLS, which is required" in (outcome.error or "")
    assert plain.messages == []


async def test_implicit_tls(cert: Cert, services: Services) -> None:
    with SmtpServer(tls=cert) as smtp:
        outcome = await dest(services, smtp.port, tls=True, ca_file=str(cert.cert)).deliver(
            record(UNDELIVERED)
        )
        assert outcome.kind == "delivered", outcome.error
        assert smtp.messages[0].tls


async def test_an_untrusted_certificate_is_retried_not_ignored(
    cert: Cert, services: Services
) -> None:
    with SmtpServer(starttls=cert) as smtp:
        outcome = await dest(services, smtp.port).deliver(record(UNDELIVERED))
        assert outcome.kind == "retry"
        assert "certificate" in (outcome.error or "").lower()
        assert smtp.messages == []


async def test_wrong_password_is_permanent_and_not_shown(cert: Cert, services: Services) -> None:
    with SmtpServer(starttls=cert, users={"gw": "other"}) as smtp:
        d = dest(services, smtp.port, ca_file=str(cert.cert), username="gw", password=PASSWORD)
        outcome = await d.deliver(record(UNDELIVERED))
        assert (outcome.kind, outcome.status) == ("permanent", 535)
        assert PASSWORD not in (outcome.error or "")


@pytest.mark.parametrize(
    ("reply", "kind", "status"),
    [
        ("451 4.3.0 Try again later", "retry", 451),
        ("554 5.7.1 Message rejected as spam", "permanent", 554),
    ],
)
async def test_data_replies_are_classified(
    plain: SmtpServer, services: Services, reply: str, kind: str, status: int
) -> None:
    plain.data_reply = reply
    outcome = await dest(services, plain.port, starttls=False).deliver(record(UNDELIVERED))
    assert (outcome.kind, outcome.status) == (kind, status)
    assert reply.split(" ", 1)[1] in (outcome.error or "")


async def test_partly_refused_recipients_are_delivered_and_reported(
    plain: SmtpServer, services: Services
) -> None:
    plain.refuse_rcpt["gone@example.com"] = "550 5.1.1 No such user"
    d = dest(services, plain.port, starttls=False, to=["support@example.com", "gone@example.com"])
    outcome = await d.deliver(record(UNDELIVERED))
    assert outcome.kind == "delivered"
    assert outcome.details == {"refused": {"gone@example.com": "550 5.1.1 No such user"}}
    assert outcome.error == (
        "accepted for 1 of 2 recipients; refused gone@example.com: 550 5.1.1 No such user"
    )
    assert plain.messages[0].rcpt_tos == ["support@example.com"]


@pytest.mark.parametrize(
    ("replies", "kind"),
    [
        (["550 5.1.1 No such user", "553 5.1.3 Bad address"], "permanent"),
        (["550 5.1.1 No such user", "451 4.2.0 Greylisted"], "retry"),
    ],
)
async def test_all_recipients_refused(
    plain: SmtpServer, services: Services, replies: list[str], kind: str
) -> None:
    to = ["a@example.com", "b@example.com"]
    plain.refuse_rcpt.update(zip(to, replies, strict=True))
    outcome = await dest(services, plain.port, starttls=False, to=to).deliver(record(UNDELIVERED))
    assert outcome.kind == kind
    assert "a@example.com: 550" in (outcome.error or "")
    assert plain.messages == []


async def test_no_server_is_retried(services: Services) -> None:
    outcome = await dest(services, 9, starttls=False).deliver(record(UNDELIVERED))
    assert outcome.kind == "retry"
    assert outcome.error and outcome.error.startswith("SMTP connection problem")


async def test_a_server_that_never_answers_times_out_as_retry(services: Services) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never greets
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        outcome = await dest(services, port, starttls=False, timeout="200ms").deliver(
            record(UNDELIVERED)
        )
    finally:
        server.close()
    assert outcome.kind == "retry"
    assert "timed out" in (outcome.error or "")


async def test_a_template_that_breaks_the_sandbox_is_permanent(
    plain: SmtpServer, services: Services
) -> None:
    d = dest(services, plain.port, starttls=False, body="{{ event.__class__.__mro__ }}")
    assert (await d.deliver(record(UNDELIVERED))).kind == "permanent"
    assert plain.messages == []


# -- options -----------------------------------------------------------------------------------


def test_starttls_is_the_default_and_ports_follow_the_mode() -> None:
    base = {"host": "h", "from": "a@b.c", "to": "x@y.z"}
    assert Options(**base).use_starttls and Options(**base).effective_port == 587
    assert Options(**base, tls=True).effective_port == 465
    assert not Options(**base, tls=True).use_starttls
    assert Options(**base, starttls=False).effective_port == 25
    assert Options(**base).to == ["x@y.z"]


@pytest.mark.parametrize(
    ("opts", "says"),
    [
        ({"tls": True, "starttls": True}, "exclude each other"),
        ({"username": "u"}, "both 'username' and 'password'"),
        ({"to": ["not-an-address"]}, "not a mail address"),
        ({"to": []}, "at least 1 item"),
        ({"subject": "{{ oops"}, "template syntax error"),
        ({"digest": {"window": 0}}, "greater than 0"),
        ({"digest": {"window": "5m", "max_events": 0}}, "greater than or equal to 1"),
    ],
)
def test_options_are_checked(opts: dict[str, Any], says: str) -> None:
    base = {"host": "h", "from": "a@b.c", "to": ["x@y.z"]}
    with pytest.raises(ValidationError, match=r"(?s).*" + re.escape(says)):
        Options(**{**base, **opts})


def test_config_check_accepts_an_email_destination(tmp_path: Path) -> None:
    text = f"""
destinations:
  support:
    type: email
    host: smtp.example.com
    from: gw@example.com
    to: [support@example.com]
    username: gw
    password: {PASSWORD}
routes:
  - {{to: [support]}}
"""
    loaded = load_config_text(text, env={})
    assert loaded.destination_options["support"].effective_port == 587
    assert PASSWORD in loaded.secrets
