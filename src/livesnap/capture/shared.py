"""One connection per stream on a node, however many jobs capture it.

Several jobs often watch one stream (a 5 s thumbnail and a 60 s archive of the same camera).
A :class:`StreamHub` keeps at most one live :class:`StreamReader` per stream URL; each job's
session gets a :class:`SharedReader`, which behaves like a reader of its own (start, stop,
join, capture now, the same events) but joins the URL's connection when there is one. The
reader decodes a keyframe once for every job that wants it, and jobs with the same picture
options get the same picture; selection, quality gate, storage and records stay per job.

A job that stops leaves the connection to the others (its session hears
``Disconnected("stopped")`` at once); the last one stops the connection. When the connection
ends by itself (the stream ended, a timeout), every job hears it and reconnects on its own
schedule: the first opens a new connection, the others join it.

URLs are compared exactly as submitted (credentials included), so jobs share a connection
only when they name the same stream the same way.
"""

from __future__ import annotations

import threading

from livesnap.capture.source import ReaderStats, SourceOptions, StreamReader, Tap

__all__ = ["SharedReader", "StreamHub"]


class StreamHub:
    """The node's stream connections, one per URL. Thread-safe."""

    def __init__(self) -> None:
        self._readers: dict[str, StreamReader] = {}
        self._lock = threading.Lock()

    @property
    def connections(self) -> int:
        """Stream connections open or opening now."""
        return len(self._readers)

    def reader(self, url: str, *, options: SourceOptions, name: str, tap: Tap) -> SharedReader:
        """A reader of ``url`` for the subscriber ``tap`` (``source.make_tap``), called as a
        ``StreamReader`` is; not connected until ``start``."""
        return SharedReader(self, url, tap, options=options, name=name)

    def _join(self, url: str, tap: Tap, options: SourceOptions, name: str) -> StreamReader:
        """Attach ``tap`` to the URL's connection, opening one if there is none."""
        with self._lock:
            current = self._readers.get(url)
            if current is not None and current.attach(tap):
                return current
            reader = StreamReader(url, options=options, name=name, tap=tap,
                                  on_closed=self._closed)
            reader.start()
            self._readers[url] = reader
            return reader

    def _closed(self, reader: StreamReader) -> None:
        """Called by a reader as its connection ends (in its thread)."""
        with self._lock:
            for url, current in list(self._readers.items()):
                if current is reader:
                    del self._readers[url]


class SharedReader:
    """One subscriber's view of a shared connection; used like a ``StreamReader``."""

    def __init__(
        self, hub: StreamHub, url: str, tap: Tap, *, options: SourceOptions, name: str,
    ) -> None:
        self._hub = hub
        self._url = url
        self._tap = tap
        self._options = options
        self._name = name
        self._reader: StreamReader | None = None
        self._left = False  # detached while others kept the connection

    @property
    def stats(self) -> ReaderStats:
        """The connection's counters (shared with its other subscribers)."""
        return self._reader.stats if self._reader is not None else ReaderStats()

    def start(self) -> None:
        """Join the URL's connection, or open it."""
        self._reader = self._hub._join(self._url, self._tap, self._options, self._name)

    def stop(self) -> None:
        """Leave the connection (see ``StreamReader.detach``); returns at once."""
        if self._reader is not None:
            self._left = self._reader.detach(self._tap)

    def restart(self, reason: str) -> None:
        """End the shared connection for every job on it (its captures keep failing, so
        theirs do too); each reconnects, and the first opens a fresh one."""
        if self._reader is not None:
            self._reader.restart(reason)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the connection's thread, unless this subscriber left it to others."""
        if self._reader is None or self._left:
            return True
        return self._reader.join(timeout)

    def request_capture(self) -> None:
        """Capture the next keyframe for this subscriber. Thread-safe."""
        self._tap.requested.set()
