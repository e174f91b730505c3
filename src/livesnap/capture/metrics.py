"""What a capture session reports for monitoring: a narrow protocol and a no-op default.

``livesnap.node.metrics.Metrics`` implements it with Prometheus counters and histograms; the
capture package only knows this protocol, so it does not depend on prometheus-client.
"""

from __future__ import annotations

from typing import Protocol


class CaptureMetrics(Protocol):
    def snapshot_stored(self, lag_s: float) -> None:
        """A snapshot was stored and recorded; ``lag_s`` from keyframe arrival to hand-off."""

    def capture_failed(self, stage: str) -> None:
        """A capture produced no stored snapshot: ``stage`` is ``decode`` or ``store``."""

    def reconnect(self) -> None:
        """A connection to the stream ended and the session will try again."""

    def frame_rejected(self, verdict: str) -> None:
        """The quality gate rejected a keyframe (``black``, ``uniform``, ``frozen``, …)."""


class NoCaptureMetrics:
    """Records nothing (sessions built without metrics, and tests)."""

    def snapshot_stored(self, lag_s: float) -> None:
        del lag_s

    def capture_failed(self, stage: str) -> None:
        del stage

    def reconnect(self) -> None:
        return None

    def frame_rejected(self, verdict: str) -> None:
        del verdict
