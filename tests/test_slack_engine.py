"""Slack through the real delivery engine: the type's default rate limit paces messages."""

from __future__ import annotations

from pathlib import Path

from delivery_harness import EngineHarness
from slack_server import SlackServer

CONFIG = """
store: sqlite:///gw.db
destinations:
  ops: {type: slack, webhook_url: "%s", text: "{{ event.message_uuid }} {{ event.status }}"%s}
routes:
  - {to: [ops]}
"""


async def test_slack_sends_about_one_message_per_second_by_default(tmp_path: Path) -> None:
    async with (
        SlackServer() as slack,
        EngineHarness(tmp_path, CONFIG % (slack.webhook_url, "")) as h,
    ):
        first, second, third = await h.add("ops", n=3)
        await h.engine.start()
        await h.until(first, lambda r: r.state == "delivered")
        await h.settle()
        assert len(slack.requests) == 1  # the bucket is empty until the clock moves

        await h.advance(1.0)
        await h.until(second, lambda r: r.state == "delivered")
        await h.settle()
        assert len(slack.requests) == 2

        await h.advance(1.0)
        await h.until(third, lambda r: r.state == "delivered")
        assert [r.json["text"].split()[1] for r in slack.requests] == ["delivered"] * 3


async def test_a_configured_rate_limit_overrides_slacks_default(tmp_path: Path) -> None:
    async with SlackServer() as slack:
        config = CONFIG % (slack.webhook_url, ", rate_limit: {rate: 1/s, burst: 3}")
        async with EngineHarness(tmp_path, config) as h:
            ids = await h.add("ops", n=3)
            await h.engine.start()
            for did in ids:  # all three fit the burst: no clock movement needed
                await h.until(did, lambda r: r.state == "delivered")
            assert len(slack.requests) == 3
