"""The email digest through the real engine: one email per window, each delivery tracked."""

from __future__ import annotations

from pathlib import Path

from delivery_harness import EngineHarness
from smtp_server import SmtpServer

CONFIG = """
store: sqlite:///gw.db
retry: {attempts: 5, initial: 30s, max_interval: 30s}
destinations:
  support:
    type: email
    host: 127.0.0.1
    port: %d
    starttls: false
    from: gateway@example.com
    to: [support@example.com]
    body: "{{ event.message_uuid }} is {{ event.status }}"
    digest: {window: 5m, max_events: 3}
routes:
  - {to: [support]}
"""


async def states(h: EngineHarness, ids: list[str]) -> list[str]:
    return [(await h.get(i))[0].state for i in ids]


async def test_events_of_one_window_arrive_as_one_email(tmp_path: Path) -> None:
    with SmtpServer() as smtp:
        async with EngineHarness(tmp_path, CONFIG % smtp.port) as h:
            ids = await h.add("support", n=2)
            await h.engine.start()
            await h.settle()
            assert smtp.messages == []  # the window is still open
            assert await states(h, ids) == ["pending", "pending"]

            await h.advance(300)
            for did in ids:  # each delivery keeps its own record and history
                _, attempts = await h.until(did, lambda r: r.state == "delivered")
                assert [a.outcome for a in attempts] == ["delivered"]

        (mail,) = smtp.messages
        assert mail.message["Subject"] == "2 callback events for support"
        text = mail.text()
        assert text.startswith("2 events:")
        assert text.count("063474ec-a34f-4558-90c5-984395000004 is delivered") == 2


async def test_max_events_sends_without_waiting_for_the_window(tmp_path: Path) -> None:
    with SmtpServer() as smtp:
        async with EngineHarness(tmp_path, CONFIG % smtp.port) as h:
            first = await h.add("support", n=3)
            await h.engine.start()
            for did in first:
                await h.until(did, lambda r: r.state == "delivered")
            later = await h.add("support", n=1)
            await h.settle()
            assert len(smtp.messages) == 1
            assert await states(h, later) == ["pending"]
            attempts = [(await h.get(did))[1] for did in first]
            assert [[a.outcome for a in history] for history in attempts] == [["delivered"]] * 3


async def test_a_failed_digest_is_retried_as_one_and_nothing_waits_in_memory(
    tmp_path: Path,
) -> None:
    with SmtpServer() as smtp:
        smtp.data_reply = "451 4.3.0 Try again later"
        async with EngineHarness(tmp_path, CONFIG % smtp.port) as h:
            ids = await h.add("support", n=2)
            await h.engine.start()
            await h.advance(300)
            for did in ids:
                await h.until(did, lambda r: r.attempts == 1)
            records = [(await h.get(did))[0] for did in ids]
            assert [r.state for r in records] == ["pending", "pending"]
            assert all(r.last_status == 451 for r in records)

            # A restart between tries: a new engine finds the same deliveries in the store.
            await h.engine.stop(0)
            h.engine = h.new_engine("test-2")
            smtp.data_reply = None
            await h.engine.start()
            await h.advance(max(r.next_attempt_at for r in records) - h.clock.now())
            for did in ids:
                _, attempts = await h.until(did, lambda r: r.state == "delivered")
                assert [a.outcome for a in attempts] == ["retry", "delivered"]
        assert len(smtp.messages) == 1
        assert smtp.messages[0].message["Subject"] == "2 callback events for support"
