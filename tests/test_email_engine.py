"""Email through the real delivery engine and a real SMTP server (aiosmtpd)."""

from __future__ import annotations

from pathlib import Path

from delivery_harness import EngineHarness
from smtp_server import SmtpServer

CONFIG = """
store: sqlite:///gw.db
retry: {attempts: 3, initial: 10s, max_interval: 10s}
destinations:
  support:
    type: email
    host: 127.0.0.1
    port: %d
    starttls: false
    from: gateway@example.com
    to: [support@example.com, gone@example.com]
    subject: "{{ event.channel_type }} message {{ event.status }}"
    body: "Message {{ event.message_uuid }} is {{ event.status }}."
routes:
  - {to: [support]}
"""


async def test_partly_refused_recipients_are_kept_in_the_attempt_history(tmp_path: Path) -> None:
    with SmtpServer() as smtp:
        smtp.refuse_rcpt["gone@example.com"] = "550 5.1.1 No such user"
        async with EngineHarness(tmp_path, CONFIG % smtp.port) as h:
            (did,) = await h.add("support")
            await h.engine.start()
            record, attempts = await h.until(did, lambda r: r.state == "delivered")

        (message,) = smtp.messages
        assert message.rcpt_tos == ["support@example.com"]
        assert message.message["Subject"] == "SMS message delivered"
        assert "Message 063474ec-a34f-4558-90c5-984395000004 is delivered." in message.text()
        assert [a.outcome for a in attempts] == ["delivered"]
        assert "refused gone@example.com: 550 5.1.1 No such user" in attempts[0].error
        assert attempts[0].details == {"refused": {"gone@example.com": "550 5.1.1 No such user"}}
        assert record.last_error == attempts[0].error


async def test_a_451_is_retried_on_schedule_then_delivered(tmp_path: Path) -> None:
    with SmtpServer() as smtp:
        smtp.data_reply = "451 4.3.0 Try again later"
        async with EngineHarness(tmp_path, CONFIG % smtp.port) as h:
            (did,) = await h.add("support")
            await h.engine.start()
            record, attempts = await h.until(did, lambda r: r.attempts == 1)
            assert record.state == "pending"
            assert attempts[0].outcome == "retry" and attempts[0].status == 451
            assert record.next_attempt_at > h.clock.now()

            smtp.data_reply = None
            await h.advance(record.next_attempt_at - h.clock.now())
            record, attempts = await h.until(did, lambda r: r.state == "delivered")
        assert [a.outcome for a in attempts] == ["retry", "delivered"]
        assert len(smtp.messages) == 1
