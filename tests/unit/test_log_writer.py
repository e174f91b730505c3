"""The log handler writes in a thread of its own: order kept, flush waits, callers never block."""

from __future__ import annotations

import io
import logging
import os
import threading

from livesnap.logs import BackgroundStreamHandler, JsonFormatter


def _logger(handler: logging.Handler, name: str) -> logging.Logger:
    log = logging.getLogger(name)
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.INFO)
    return log


class BlockingStream(io.StringIO):
    """A stream whose writes wait until ``opened`` is set (a pipe nobody reads)."""

    def __init__(self) -> None:
        super().__init__()
        self.opened = threading.Event()
        self.writing = threading.Event()

    def write(self, text: str) -> int:
        self.writing.set()
        self.opened.wait()
        return super().write(text)


def test_lines_are_written_whole_in_order_and_flush_waits_for_them():
    stream = io.StringIO()
    handler = BackgroundStreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log = _logger(handler, "test.logwriter.order")
    for n in range(500):
        log.info("line %d", n)
    handler.flush()
    assert stream.getvalue().splitlines() == [f"INFO line {n}" for n in range(500)]
    handler.close()


def test_json_lines_keep_the_exception_field():
    stream = io.StringIO()
    handler = BackgroundStreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    log = _logger(handler, "test.logwriter.json")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed", extra={"action": "x"})
    handler.flush()
    (line,) = stream.getvalue().splitlines()
    assert '"message": "failed"' in line and '"action": "x"' in line
    assert "RuntimeError: boom" in line and '"exception"' in line
    handler.close()


def test_a_thread_that_logs_does_not_wait_for_a_blocked_stream():
    # The writer is stuck in a write; other threads keep logging and go on at once.
    stream = BlockingStream()
    handler = BackgroundStreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = _logger(handler, "test.logwriter.blocked")
    log.info("first")
    assert stream.writing.wait(5), "the writer never started writing"
    done = threading.Event()

    def more() -> None:
        for n in range(100):
            log.info("more %d", n)
        done.set()

    worker = threading.Thread(target=more)
    worker.start()
    finished_while_blocked = done.wait(5)
    blocked_still = not stream.opened.is_set()
    stream.opened.set()
    worker.join()
    handler.flush()
    assert finished_while_blocked and blocked_still
    assert stream.getvalue().splitlines() == ["first"] + [f"more {n}" for n in range(100)]
    handler.close()


def test_a_broken_stream_is_reported_not_raised(capsys):
    stream = io.StringIO()
    stream.close()  # writes raise ValueError
    handler = BackgroundStreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = _logger(handler, "test.logwriter.broken")
    log.info("lost")  # must not raise here, nor kill the writer
    handler.flush()
    assert "--- Logging error ---" in capsys.readouterr().err
    log.info("also lost")
    handler.flush()
    assert "--- Logging error ---" in capsys.readouterr().err  # the writer lived on
    handler.close()


def test_a_forked_child_writes_its_own_lines(tmp_path):
    path = tmp_path / "log"
    with path.open("w") as stream:
        handler = BackgroundStreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log = _logger(handler, "test.logwriter.fork")
        log.info("parent")
        handler.flush()
        pid = os.fork()
        if pid == 0:  # the child: its writer thread was started again after the fork
            log.info("child")
            handler.flush()
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        handler.close()
    assert os.waitstatus_to_exitcode(status) == 0
    assert path.read_text().splitlines() == ["parent", "child"]
