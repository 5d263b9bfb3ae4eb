"""gateway.ops.logs: records are written by the logging thread, scrubbed, tracebacks included."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

from gateway.ops import logs

SECRET = "s3cret-token-value"


@pytest.fixture(autouse=True)
def restore_root():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    logs._flush()
    logs._listener = None
    root.handlers[:], root.level = handlers, level


def written(capsys: pytest.CaptureFixture[str]) -> str:
    logs._flush()  # stop the listener: everything queued is written
    return capsys.readouterr().err


def untimed(capsys: pytest.CaptureFixture[str]) -> list[str]:
    """The text lines written, without their leading time."""
    return [line.split(" ", 1)[1] for line in written(capsys).splitlines()]


def test_a_traceback_holding_a_secret_is_scrubbed(capsys: pytest.CaptureFixture[str]) -> None:
    logs.setup_logging("text", {SECRET})
    try:
        raise RuntimeError(f"POST https://u:pw123@crm.example.com failed with token {SECRET}")
    except RuntimeError:
        logging.getLogger("gateway.test").exception("delivery failed for %s", SECRET)
    out = written(capsys)
    assert "delivery failed for ***" in out
    assert "RuntimeError: POST https://u:***@crm.example.com failed with token ***" in out
    assert SECRET not in out and "pw123" not in out


def test_json_lines_keep_the_exception_apart_and_scrubbed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.setup_logging("json", {SECRET})
    try:
        raise ValueError(SECRET)
    except ValueError:
        logging.getLogger("gateway.test").exception("failed")
    (line,) = written(capsys).splitlines()
    record = json.loads(line)
    assert record["message"] == "failed" and record["level"] == "error"
    assert record["exception"].endswith("ValueError: ***")


def test_level_filters_before_anything_is_queued(capsys: pytest.CaptureFixture[str]) -> None:
    logs.setup_logging("text", set(), "warning")
    logging.getLogger("gateway.test").info("not shown")
    logging.getLogger("gateway.test").warning("shown %d", 1)
    out = written(capsys)
    assert "not shown" not in out and "WARNING gateway.test: shown 1" in out


def test_hot_path_lines_keep_level_format_order_and_scrubbing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.setup_logging("text", {SECRET}, "info")
    log = logging.getLogger("gateway.intake.endpoint")
    logs.line(log, logging.DEBUG, "not shown")
    logs.line(log, logging.INFO, "source=%s status=%d", "revicom", 200)
    log.warning("ordinary record in between")
    logs.line(log, logging.WARNING, "error=%s", f"token {SECRET} refused")
    out = written(capsys).splitlines()
    assert "not shown" not in "\n".join(out)
    assert [line.split(" ", 1)[1] for line in out] == [
        "INFO gateway.intake.endpoint: source=revicom status=200",
        "WARNING gateway.intake.endpoint: ordinary record in between",
        "WARNING gateway.intake.endpoint: error=token *** refused",
    ]


def test_hot_path_lines_as_json_carry_the_time_they_were_logged(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.setup_logging("json", set(), "info")
    logs.line(logging.getLogger("gateway.delivery"), logging.INFO, "delivery=%s", "msg_1")
    (line,) = written(capsys).splitlines()
    record = json.loads(line)
    assert record["message"] == "delivery=msg_1" and record["logger"] == "gateway.delivery"
    assert record["level"] == "info" and record["time"].endswith("Z")


def test_hot_path_lines_without_setup_are_ordinary_records(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO):
        logs.line(logging.getLogger("gateway.intake.endpoint"), logging.INFO, "x=%d", 1)
    assert [r.getMessage() for r in caplog.records] == ["x=1"]


def test_hot_path_lines_on_an_event_loop_are_held_back_then_handed_over_together(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    logs.setup_logging("text", {SECRET}, "info")
    log = logging.getLogger("gateway.delivery")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        later: list[tuple[Any, ...]] = []
        # The hand-off timer, caught instead of waited for: no sleeping in tests.
        monkeypatch.setattr(loop, "call_later", lambda d, fn, *a: later.append((d, fn, *a)))
        for i in range(3):
            logs.line(log, logging.INFO, "delivery=%d", i)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert len(logs._turn) == 3  # still held: several loop turns later
        assert [d for d, *_ in later] == [logs.HANDOFF_DELAY]  # one timer for the three
        _, fn, *args = later[0]
        fn(*args)  # the timer fires
        assert logs._turn == []  # handed to the logging thread together
        logs.line(log, logging.INFO, "token %s", SECRET)  # pending when logging stops

    asyncio.run(main())
    assert untimed(capsys) == [
        "INFO gateway.delivery: delivery=0",
        "INFO gateway.delivery: delivery=1",
        "INFO gateway.delivery: delivery=2",
        "INFO gateway.delivery: token ***",
    ]


def test_an_ordinary_record_on_the_loop_is_written_after_the_lines_held_before_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.setup_logging("text", set(), "info")
    log = logging.getLogger("gateway.delivery")

    async def main() -> None:
        logs.line(log, logging.INFO, "first")
        log.warning("second")  # an ordinary record: goes straight to the queue
        logs.line(log, logging.INFO, "third")

    asyncio.run(main())
    assert untimed(capsys) == [
        "INFO gateway.delivery: first",
        "WARNING gateway.delivery: second",
        "INFO gateway.delivery: third",
    ]


def test_lines_held_by_a_loop_that_ended_go_out_before_the_next_loops(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.setup_logging("text", set(), "info")
    log = logging.getLogger("gateway.delivery")

    async def say(text: str) -> None:
        logs.line(log, logging.INFO, text)

    asyncio.run(say("from the first loop"))  # ended before its hand-off timer fired
    asyncio.run(say("from the second loop"))
    assert untimed(capsys) == [
        "INFO gateway.delivery: from the first loop",
        "INFO gateway.delivery: from the second loop",
    ]


@pytest.mark.parametrize("inner", [logs.TextFormatter, logs.JsonFormatter])
@pytest.mark.parametrize("created", [1764970000.0, 1764970000.0999, 1764970000.999999])
def test_a_hot_path_line_reads_as_the_same_record_would(inner: type, created: float) -> None:
    # Hot-path lines are formatted from their parts, without a LogRecord: the text must be
    # what the formatter makes of the record, secrets scrubbed the same way.
    formatter = logs.ScrubbingFormatter(inner(), {SECRET})
    message = f"source=revicom status=401 token={SECRET} client=203.0.113.9"
    record = logging.LogRecord(
        "gateway.intake.endpoint", logging.WARNING, "", 0, message, None, None
    )
    record.created, record.msecs = created, (created - int(created)) * 1000
    line = formatter.line(created, logging.WARNING, "gateway.intake.endpoint", message)
    assert line == formatter.format(record)
    assert SECRET not in line
