"""Logging: plain or JSON lines, with ``action`` and ``job_id`` carried on every record."""

from __future__ import annotations

import json
import logging
import os
import queue
import sys
import threading
from datetime import UTC, datetime
from typing import Any, TextIO

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message", "asctime", "color_message"}
_SECRET_WORDS = ("secret", "password", "token", "signature")


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    extras = {k: v for k, v in record.__dict__.items() if k not in _STANDARD}
    for key in list(extras):
        if any(word in key.lower() for word in _SECRET_WORDS):
            extras[key] = "***"
    return extras


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_extras(record),
        }
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        return json.dumps(body, default=str)


class PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        return f"{line} {extras}" if extras else line


_Item = tuple[str, logging.LogRecord] | threading.Event | bool | None
"""A line and its record; a flush marker; ``False`` (the queue is empty); ``None`` (stop)."""


class BackgroundStreamHandler(logging.Handler):
    """Formats a record in the thread that logs it and writes it in a writer thread of its
    own: a thread that logs never waits for the stream, nor for a lock that another thread
    holds while it writes.

    A ``StreamHandler`` writes under its lock. On an overloaded capture node hundreds of
    reader threads share a core, so a reader descheduled while holding that lock stalled
    every other thread that logged, the event loop among them, for as long as the kernel took
    to come back to it (seconds at 360 streams on one core). Lines keep their order; ``flush``
    (and so ``logging.shutdown`` at exit) waits until those logged before it are written.
    """

    _FLUSH_WAIT_S = 5.0

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream
        self._start_writer()
        if hasattr(os, "register_at_fork"):  # a forked child has no writer thread: start its own
            os.register_at_fork(after_in_child=self._start_writer)

    def _start_writer(self) -> None:
        self._lines: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write, name="log-writer", daemon=True)
        self._writer.start()

    def handle(self, record: logging.LogRecord) -> bool:
        # No handler lock: formatting works on this record alone and the queue is
        # thread-safe (the lock is what the threads used to queue on).
        if not self.filter(record):
            return False
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
        except (TypeError, ValueError, KeyError, AttributeError):  # a bad message or extra
            self.handleError(record)  # the logging module's report ("--- Logging error ---")
            return
        self._lines.put((line, record))

    def flush(self) -> None:
        if self._writer.is_alive():
            written = threading.Event()
            self._lines.put(written)
            written.wait(self._FLUSH_WAIT_S)

    def close(self) -> None:
        if self._writer.is_alive():
            self._lines.put(None)
            self._writer.join(self._FLUSH_WAIT_S)
        super().close()

    def _write(self) -> None:
        while True:
            batch: list[tuple[str, logging.LogRecord]] = []
            item = self._lines.get()
            while isinstance(item, tuple):  # what queued meanwhile goes in one write
                batch.append(item)
                try:
                    item = self._lines.get_nowait()
                except queue.Empty:
                    item = False
            if batch:
                try:
                    self.stream.write("".join(line for line, _ in batch))
                    self.stream.flush()
                except (OSError, ValueError):  # closed or broken: reported as StreamHandler does
                    self.handleError(batch[0][1])
            if isinstance(item, threading.Event):
                item.set()
            elif item is None:
                return


def setup_logging(*, level: str = "INFO", json_lines: bool = False) -> None:
    handler = BackgroundStreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(PlainFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    replaced, root.handlers[:] = root.handlers[:], [handler]
    for old in replaced:
        if isinstance(old, BackgroundStreamHandler):  # ours: its writer thread stops
            old.close()
    root.setLevel(level.upper())
    # Alembic announces every plugin at INFO on each start; only its warnings matter here.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, root.level))
    # httpx logs every request at INFO: one line per callback attempt and object-store call.
    # livesnap logs the outcomes that matter itself (callbacks, uploads).
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
