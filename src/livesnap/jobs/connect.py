"""How a job holds its stream, and when a per-tick job connects (pure; times are passed in).

A persistent connection reads every byte of the stream whatever the interval; its cost per
minute is fixed. A per-tick job opens the stream shortly before each tick, keeps the first
keyframe at or after the tick (the same selection as a persistent reader) and disconnects:
its cost is one open and one GOP or less of reading per tick, so it falls as the interval
grows. ``resolve`` picks between them; ``LeadTime`` learns how early to connect.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from livesnap.jobs.models import ConnectMode

# Intervals at or above this use per-tick connections under ``auto`` (LIVESNAP_PER_TICK_MIN_
# INTERVAL_S). Measured on 1080p25, GOP 2 s (docs/performance.md, "Cost that falls with the
# interval"): at 5 s a per-tick job costs more than a persistent reader, from 10 s on less.
DEFAULT_PER_TICK_MIN_INTERVAL_S = 10


def resolve(mode: ConnectMode, *, interval_s: float, per_tick_min_interval_s: float) -> ConnectMode:
    """The mode a job runs in: ``persistent`` or ``per-tick`` (never ``auto``)."""
    if mode is not ConnectMode.AUTO:
        return mode
    if interval_s >= per_tick_min_interval_s:
        return ConnectMode.PER_TICK
    return ConnectMode.PERSISTENT


@dataclass(frozen=True, kw_only=True)
class LeadOptions:
    """How ``LeadTime`` turns measurements into a lead.

    ``initial_s``: the lead before anything was measured. ``margin_s``: added to the shortest
    measured open, for the variation between opens. ``min_s``/``max_s`` bound the result.
    ``kept``: how many recent measurements count.
    """

    initial_s: float = 2.0
    margin_s: float = 0.3
    min_s: float = 0.2
    max_s: float = 10.0
    kept: int = 8


class LeadTime:
    """How long before a tick a per-tick job connects, learned from its own opens.

    Each measurement is the time from starting to connect to the first keyframe arriving.
    It is the origin's set-up time (TCP, handshake, probing) plus, on origins that send
    nothing until the next keyframe (nginx-rtmp), a wait of up to one GOP that no lead can
    shorten: connecting earlier only means reading more of the stream. Origins that keep a
    GOP cache send the cached keyframe at once. Either way the *shortest* recent open is the
    set-up time alone, and connecting that much (plus a margin) before the tick makes the
    first keyframe after the tick the one kept, as a persistent reader would keep it.

    The lead is capped at half the interval, so that the window of one tick never reaches
    into the previous one.
    """

    def __init__(self, options: LeadOptions | None = None) -> None:
        self._options = options or LeadOptions()
        self._samples: deque[float] = deque(maxlen=self._options.kept)

    def observe(self, open_s: float) -> None:
        """One open took ``open_s`` seconds from connecting to its first keyframe."""
        if open_s >= 0:
            self._samples.append(open_s)

    @property
    def samples(self) -> list[float]:
        return list(self._samples)

    def lead_s(self, interval_s: float) -> float:
        opts = self._options
        if self._samples:
            lead = min(self._samples) + opts.margin_s
        else:
            lead = opts.initial_s
        return max(opts.min_s, min(lead, opts.max_s, interval_s / 2))


def connect_at_ms(*, tick_ms: int, lead_s: float, now_ms: int) -> int:
    """When to connect for the tick at ``tick_ms``: ``lead_s`` before it, or now if late."""
    return max(now_ms, tick_ms - round(lead_s * 1000))
