"""gateway.ops.logs: records are written by the logging thread, scrubbed, tracebacks included."""

from __future__ import annotations

import json
import logging

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


def test_hot_path_lines_on_an_event_loop_go_out_once_per_turn_in_order(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import asyncio

    logs.setup_logging("text", {SECRET}, "info")
    log = logging.getLogger("gateway.delivery")

    async def main() -> None:
        for i in range(3):
            logs.line(log, logging.INFO, "delivery=%d", i)
        assert len(logs._turn) == 3  # held until the end of this loop turn
        await asyncio.sleep(0)
        assert logs._turn == []  # handed to the logging thread together
        logs.line(log, logging.INFO, "token %s", SECRET)  # pending when logging stops

    asyncio.run(main())
    out = [line.split(" ", 1)[1] for line in written(capsys).splitlines()]
    assert out == [
        "INFO gateway.delivery: delivery=0",
        "INFO gateway.delivery: delivery=1",
        "INFO gateway.delivery: delivery=2",
        "INFO gateway.delivery: token ***",
    ]
