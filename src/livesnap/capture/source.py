"""One connection lifetime of one live stream, read by one thread.

A :class:`StreamReader` owns a PyAV input container from ``av.open`` to
``close``, entirely inside its own daemon thread; nothing else touches the
container. It reports to its owner through ``emit`` (called in the reader
thread), which is expected to hand the event to asyncio
(``loop.call_soon_threadsafe``) and return at once. A reader may serve several
subscribers (:class:`Tap`: a selector, renderer, gate feedback and ``emit``
each): ``capture.shared`` attaches the jobs on the same stream to one reader.

The read path is shaped by the measurements in infra.md §2 and §2b, where
hundreds of streams share one process and two cores:

* FFmpeg's own ``rw_timeout`` bounds every blocking read. PyAV's read
  timeout would install a Python interrupt callback that FFmpeg calls, with
  the GIL, on every I/O step: the most expensive thing per stream. Only the
  open has a PyAV deadline (``open_timeout_s``): while reading, PyAV's
  callback returns at once in C, without the GIL.
* The demuxer discards non-key video packets and every other stream, so
  Python sees about one packet per GOP instead of one per frame.
* A keyframe is decoded only when a selector (or ``request_capture``)
  wants it, by a decoder created for that one packet and dropped right after,
  so an idle stream holds no decoder buffers (~7 MiB at 1080p). It is decoded
  once for all subscribers that want it, and encoded once per distinct set of
  picture options (the quality gate's subscribers each render their own).
* After the keyframe the decoder is drained with ``decode(None)``: with
  B-frames, an undrained decoder holds the keyframe back for two GOPs.

Events, in order: at most one :class:`Connected` (on the first video packet,
which proves the stream is live, not only that the socket opened), then any
number of :class:`Captured` / :class:`CaptureFailed`, then exactly one
:class:`Disconnected`, always last, also after :meth:`StreamReader.stop`.

Timing (measured with nginx-rtmp, see tests/integration/test_capture_source.py):
``av.open`` returns with the first keyframe (up to one GOP); a refused
connection fails at once; an origin that accepts but never answers fails after
``rw_timeout``; a publisher that stops or dies mid-stream is noticed after
about twice ``rw_timeout`` (the RTMP layer times out once in the TCP read and
once more above it); a source that keeps sending bytes that never make a
stream (an FLV header followed by garbage) fails after ``open_timeout_s``.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import logging
import os
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NoReturn, Protocol

import av
import av.error

from livesnap.capture import address
from livesnap.capture import tls as tls_module
from livesnap.capture.encode import EncodedImage
from livesnap.capture.fetch import CheckedFetcher, is_hls_url
from livesnap.capture.render import Rendered, Renderer
from livesnap.config import usable_cores
from livesnap.jobs import urls
from livesnap.jobs.models import ImageOptions, Verdict

if TYPE_CHECKING:
    from av.container import InputContainer
    from av.packet import Packet
    from av.video.stream import VideoStream

__all__ = [
    "CaptureFailed",
    "Captured",
    "CapturedFrame",
    "Connected",
    "Disconnected",
    "FrameRejected",
    "GateFeedback",
    "KeyframeSelector",
    "ReaderEvent",
    "ReaderHandle",
    "ReaderStats",
    "SourceOptions",
    "StreamReader",
    "Tap",
    "TickMissed",
    "make_tap",
    "protocol_options",
    "tune_malloc",
]

logger = logging.getLogger(__name__)

_MICROSECONDS = 1_000_000
# A decoder list that names no decoder: the stream probe may open none (SourceOptions).
PROBE_DECODES_NOTHING = "none"
RTSP_TRANSPORTS = ("tcp", "udp")

# glibc mallopt() parameters (malloc.h) and the values tune_malloc sets.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
MALLOC_TUNING: dict[str, int] = {
    "arena_max": 2,
    "mmap_threshold": 32 * 1024 * 1024,  # glibc's maximum; fixing it also stops the auto-tuning
    "trim_threshold": 64 * 1024 * 1024,
}
_MALLOC_ENVIRONMENT = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
                       "GLIBC_TUNABLES")


def tune_malloc(environ: Mapping[str, str] | None = None) -> bool:
    """Set glibc's malloc up for hundreds of reader threads; True if it did.

    Call it once, early, before the reader threads exist. By default glibc gives
    each new thread that meets contention an arena of its own (up to 8 per core)
    and every arena keeps the decoder and JPEG buffers its captures freed: about
    8 MiB per 1080p stream. Two shared arenas let any capture reuse what another
    freed. Two arenas alone make glibc hand memory back to the kernel after
    every capture and fault it in again for the next (+20 % CPU per capture,
    measured), so buffers up to 32 MiB stay in the arenas (no per-capture mmap)
    and up to 64 MiB of free heap top is kept. Measured with 20 1080p readers:
    RSS 335 -> 175 MiB at the same CPU (docs/performance.md).

    Does nothing if the environment already chose (``MALLOC_ARENA_MAX``,
    ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` or ``GLIBC_TUNABLES``),
    or when the C library is not glibc.
    """
    env = os.environ if environ is None else environ
    if any(name in env for name in _MALLOC_ENVIRONMENT):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018  (raises AttributeError unless glibc)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    done = all(
        mallopt(param, MALLOC_TUNING[name]) == 1
        for param, name in (
            (_M_ARENA_MAX, "arena_max"),
            (_M_MMAP_THRESHOLD, "mmap_threshold"),
            (_M_TRIM_THRESHOLD, "trim_threshold"),
        )
    )
    logger.info("malloc tuned" if done else "malloc tuning refused",
                extra={"action": "capture.tune_malloc", **MALLOC_TUNING})
    return done


@dataclass(frozen=True, kw_only=True)
class SourceOptions:
    """How a reader opens and reads its stream.

    Attributes:
        rw_timeout_s: FFmpeg ``rw_timeout`` (sent in microseconds). Bounds every
            blocking network read, including the open; a stall in an
            established RTMP session ends after up to about twice this.
        open_timeout_s: deadline for ``av.open`` as a whole (connect, probe,
            the first keyframe). ``rw_timeout`` only ends *silent* reads: a
            source that keeps sending bytes FFmpeg cannot make a stream of
            would otherwise hold the reader in the open forever.
        probesize: bytes FFmpeg may read to find the streams.
        analyzeduration_us: how much stream time FFmpeg may analyse; 0 means
            "stop as soon as the codec parameters are known".
        jpeg_quality: libjpeg quality, 1..100.
        skip_loop_filter: decode the keyframe without H.264's deblocking
            filter. About 10 % less decode CPU, but a measurable loss on
            low-bitrate streams (docs/performance.md: JPEG PSNR -0.3 dB on the
            benchmark clip, -1.5 dB on a noisy 2 Mb/s 1080p stream), so off
            unless asked for.
        probe_decode: let FFmpeg decode while it probes the stream
            (``avformat_find_stream_info``). It decodes the first keyframe
            there only to learn the pixel format, which livesnap never uses:
            every capture decodes its keyframe with a decoder of its own. Off,
            the probe may open no decoder (``codec_whitelist`` names none):
            an open costs ~1.9 instead of ~6.7 ms of CPU at 1080p, as long in
            wall time (docs/performance.md). What it loses: ``Connected`` may
            carry width and height 0 when the container does not state them.
        rtsp_transport: how RTSP media travels: ``tcp`` (interleaved in the
            RTSP connection: one TCP connection, works through NAT and
            firewalls) or ``udp`` (RTP over UDP ports the server is told).
        tls_verify: verify the certificate of ``rtmps://`` and ``https://``
            sources (FFmpeg does not unless told to).
        tls_ca_file: the PEM bundle of certificate authorities trusted for
            them; "" = the system's bundle (``capture.tls.system_ca_bundle``).
        blocked_networks: where no URL an HLS playlist names may lead
            (``capture.fetch``; the stream URL itself is checked before the open).
    """

    rw_timeout_s: float = 5.0
    open_timeout_s: float = 20.0
    probesize: int = 32768
    analyzeduration_us: int = 0
    jpeg_quality: int = 85
    skip_loop_filter: bool = False
    probe_decode: bool = False
    rtsp_transport: str = "tcp"
    tls_verify: bool = True
    tls_ca_file: str = ""
    blocked_networks: tuple[urls.Network, ...] = ()
    # how a reader resolves the stream's host name, once per connection (capture.address)
    resolve: address.Resolver = field(default=address.system_addresses, compare=False,
                                      repr=False)

    def __post_init__(self) -> None:
        if self.rw_timeout_s <= 0:
            raise ValueError(f"rw_timeout_s must be positive, got {self.rw_timeout_s}")
        if self.open_timeout_s <= 0:
            raise ValueError(f"open_timeout_s must be positive, got {self.open_timeout_s}")
        if self.probesize < 32:
            raise ValueError(f"probesize must be at least 32, got {self.probesize}")
        if self.analyzeduration_us < 0:
            raise ValueError(f"analyzeduration_us must be >= 0, got {self.analyzeduration_us}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be within 1..100, got {self.jpeg_quality}")
        if self.rtsp_transport not in RTSP_TRANSPORTS:
            raise ValueError(f"rtsp_transport must be tcp or udp, got {self.rtsp_transport!r}")

    def container_options(self) -> dict[str, str]:
        """The FFmpeg format/protocol options for ``av.open``.

        ``fflags=nobuffer`` is deliberately absent: it makes the demuxer drop the
        packets read while probing, which include the first keyframe, so the
        first capture came one GOP later (measured: 3.8 s instead of 2.2 s).
        """
        options = {
            "rw_timeout": str(round(self.rw_timeout_s * _MICROSECONDS)),
            "probesize": str(self.probesize),
            "analyzeduration": str(self.analyzeduration_us),
        }
        if not self.probe_decode:
            options["codec_whitelist"] = PROBE_DECODES_NOTHING
        return options


def protocol_options(url: str, options: SourceOptions) -> dict[str, str]:
    """Options that depend on the URL's protocol (added to ``container_options``).

    HTTP(S): ``max_redirects=0``. FFmpeg follows up to 8 redirects by default, and the
    blocked-network check (LIVESNAP_BLOCKED_NETWORKS) only ever sees the submitted host, so
    a redirect to ``169.254.169.254`` or any other blocked address would be followed
    unchecked. A refused redirect fails the open with ``I/O error``, like the callback
    dispatcher, which does not follow redirects either.

    RTSP(S): the transport (FFmpeg's default tries UDP first, which fails behind NAT after
    a wait), and RTSP's own I/O ``timeout``: the RTSP demuxer opens its connection itself,
    so ``rw_timeout`` never reaches it, and a server that stops sending without closing the
    connection (a frozen camera) would hold the reader for ever. With it, a stall ends
    after about twice ``rw_timeout`` (measured), as for RTMP.

    RTMPS and HTTPS: ``tls_verify`` and the CA bundle (``SourceOptions.tls_verify``). FFmpeg
    accepts any certificate unless asked to verify, so a man in the middle would go unseen.
    """
    scheme = url.split(":", 1)[0].lower()
    if is_hls_url(url):
        # every request goes through capture.fetch; segments are MPEG-TS or fragmented MP4.
        # http_persistent off: FFmpeg's keep-alive reuse assumes its own HTTP connections
        # (with ours it aborts the process: an assertion in hls.c)
        return {"format_whitelist": HLS_FORMATS, "http_persistent": "0"}
    tls = (tls_module.ffmpeg_options(verify=options.tls_verify, ca_file=options.tls_ca_file)
           if scheme in tls_module.VERIFIED_SCHEMES else {})
    if scheme in ("http", "https"):
        # HTTP-FLV or MPEG-TS: not HLS, whose playlists would name URLs FFmpeg fetches unchecked
        return {"max_redirects": "0", "format_whitelist": HTTP_STREAM_FORMATS, **tls}
    if tls:
        return tls
    if scheme in ("rtsp", "rtsps"):
        return {"rtsp_transport": options.rtsp_transport,
                "timeout": str(round(options.rw_timeout_s * _MICROSECONDS))}
    return {}


# the demuxers a non-HLS http(s):// source may use: HTTP-FLV, MPEG-TS, a camera's MJPEG
# (multipart), Matroska/WebM, MP4, raw H.264/H.265. Not hls or dash, whose manifests name
# other URLs FFmpeg would fetch unchecked.
HTTP_STREAM_FORMATS = "flv,live_flv,mpegts,mpjpeg,matroska,webm,mov,mp4,h264,hevc"
# the demuxers of an HLS source: the playlist and its segments
HLS_FORMATS = "hls,mpegts,mov,mp4"
@dataclass(frozen=True, kw_only=True)
class CapturedFrame:
    """One keyframe as a JPEG, with its timing.

    Attributes:
        image: the JPEG.
        stream_time: the keyframe's pts in seconds, or None without a pts.
        arrival_wall: ``time.time()`` when the packet came out of the demuxer.
        encoded_wall: ``time.time()`` when the JPEG was ready.
        verdict: the quality gate's verdict (``unchecked`` with the gate off).
        skipped: keyframes of the same tick the gate rejected before this one.
    """

    image: EncodedImage
    stream_time: float | None
    arrival_wall: float
    encoded_wall: float
    verdict: Verdict = Verdict.UNCHECKED
    skipped: int = 0


@dataclass(frozen=True)
class Connected:
    """The first video packet arrived: the stream is live.

    ``width``/``height`` as the container states them (0 when it does not: the probe
    decodes nothing). ``opened_s``: seconds from the reader's start (before connecting)
    to that packet. ``joined``: the subscriber joined a connection that was live already
    (``opened_s`` is then 0 and says nothing about how long an open takes).
    """

    codec: str
    width: int
    height: int
    opened_s: float = 0.0
    joined: bool = False


@dataclass(frozen=True)
class Captured:
    """A keyframe was captured."""

    frame: CapturedFrame


@dataclass(frozen=True)
class CaptureFailed:
    """One keyframe could not be decoded or encoded; reading goes on."""

    reason: str


@dataclass(frozen=True)
class FrameRejected:
    """The quality gate rejected a keyframe; the tick's next keyframe is tried."""

    verdict: Verdict


@dataclass(frozen=True)
class TickMissed:
    """A whole tick passed without a keyframe the gate accepted (the last verdict)."""

    verdict: Verdict


@dataclass(frozen=True)
class Disconnected:
    """The reader ended. Always its last event, exactly once.

    Attributes:
        reason: short human text ("stopped", "stream ended", "connection refused", ...).
        was_live: whether a video packet had arrived on this connection.
    """

    reason: str
    was_live: bool


ReaderEvent = Connected | Captured | CaptureFailed | FrameRejected | TickMissed | Disconnected


class KeyframeSelector(Protocol):
    """Decides which keyframes to capture; called in the reader thread."""

    def on_keyframe(self, wall_time: float) -> bool:
        """Return True to capture the keyframe that arrived at ``wall_time``."""
        ...


class GateFeedback(Protocol):
    """What the selector hears of the quality gate (``TickSchedule``); called in the reader."""

    def rejected(self, verdict: Verdict) -> None:
        """The selected keyframe was rejected: select the tick's next one too."""

    def accepted(self) -> int:
        """The selected keyframe was kept; how many the tick rejected before it."""

    def take_missed(self) -> list[Verdict]:
        """Ticks that ended without a kept keyframe since the last call."""


@dataclass(frozen=True, kw_only=True)
class ReaderStats:
    """Counters of one reader, for metrics and tests.

    Attributes:
        packets: video packets that reached Python.
        keyframes: of those, keyframes.
        decoded: keyframes handed to a decoder.
        captured: JPEGs emitted.
        failed: captures that failed.
        rejected: keyframes the quality gate rejected.
    """

    packets: int = 0
    keyframes: int = 0
    decoded: int = 0
    captured: int = 0
    failed: int = 0
    rejected: int = 0


class ReaderHandle(Protocol):
    """What a session holds of its connection: a ``StreamReader`` of its own, or its share
    of one (``capture.shared.SharedReader``)."""

    @property
    def stats(self) -> ReaderStats: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def restart(self, reason: str) -> None:
        """End the connection for everyone on it (each reconnects): a broken one; ``reason``
        is what their ``Disconnected`` says."""

    def join(self, timeout: float | None = None) -> bool: ...

    def request_capture(self) -> None: ...


class _NoFrameError(Exception):
    """The keyframe gave no picture (no frame out of the decoder, or no video decoder)."""


class _OpenDeadlineError(Exception):
    """``av.open`` ran out of ``open_timeout_s`` (the message says what FFmpeg was at)."""


class _OpenRefusedError(Exception):
    """``av.open`` failed for a reason livesnap found out itself (the message says it)."""


class Tap:
    """One subscriber of a reader: a job's keyframe selection, rendering and events.

    A reader starts with one tap (its owner's); a shared reader (``capture.shared``) takes
    more with :meth:`StreamReader.attach`. Everything but ``requested`` is used only by the
    reader thread.
    """

    def __init__(
        self,
        *,
        selector: KeyframeSelector,
        emit: Callable[[ReaderEvent], None],
        renderer: Renderer,
        feedback: GateFeedback | None,
        log_ids: dict[str, str],
    ) -> None:
        self.selector = selector
        self.emit = emit
        self.renderer = renderer
        self.feedback = feedback
        self.log_ids = log_ids
        self.requested = threading.Event()  # capture the next keyframe whatever the selector says

    def send(self, event: ReaderEvent) -> None:
        try:
            self.emit(event)
        except Exception:
            # A broken owner callback must not kill the reader (or skip the
            # final Disconnected); it is the owner's bug, so log it loudly.
            logger.exception(
                "reader event callback failed",
                extra={"action": "capture.emit_failed", **self.log_ids},
            )

    def share_key(self) -> tuple[ImageOptions, int] | None:
        """Taps with the same key get the same picture from the same keyframe; None: this
        tap's picture depends on its own past (the quality gate compares with it)."""
        if self.renderer.options.quality_gate:
            return None
        return self.renderer.options, self.renderer.quality


def make_tap(
    *,
    options: SourceOptions,
    selector: KeyframeSelector,
    emit: Callable[[ReaderEvent], None],
    name: str,
    job_id: str | None = None,
    renderer: Renderer | None = None,
    feedback: GateFeedback | None = None,
) -> Tap:
    """A tap; without a renderer: JPEG at the source size, no gate (ICE's behaviour)."""
    return Tap(
        selector=selector,
        emit=emit,
        renderer=renderer or Renderer(
            ImageOptions(quality_gate=False), default_quality=options.jpeg_quality),
        feedback=feedback,
        # carried on every log line of this tap (``job_id`` when the owner has one)
        log_ids={"reader": name, **({"job_id": job_id} if job_id else {})},
    )


class StreamReader:
    """Reads one stream in a daemon thread and emits :data:`ReaderEvent` s.

    A reader serves one connection: once it has emitted :class:`Disconnected`
    it is finished, and the owner creates a new one to reconnect. It may serve
    several subscribers (:meth:`attach`): the keyframe is decoded once for all
    that want it, and taps with the same picture options share the picture.
    """

    def __init__(
        self,
        url: str,
        *,
        options: SourceOptions,
        name: str,
        selector: KeyframeSelector | None = None,
        emit: Callable[[ReaderEvent], None] | None = None,
        job_id: str | None = None,
        renderer: Renderer | None = None,
        feedback: GateFeedback | None = None,
        tap: Tap | None = None,
        on_closed: Callable[[StreamReader], None] | None = None,
    ) -> None:
        """The first subscriber is ``tap``, or one made from ``selector``, ``emit``,
        ``renderer`` and ``feedback``. ``on_closed`` is called in the reader thread as the
        connection ends, before the subscribers hear ``Disconnected``."""
        if tap is None:
            if selector is None or emit is None:
                raise TypeError("a reader needs a tap, or a selector and emit")
            tap = make_tap(options=options, selector=selector, emit=emit, name=name,
                           job_id=job_id, renderer=renderer, feedback=feedback)
        self._url = url
        self._options = options
        self.tap = tap
        # Replaced, never changed in place: the reader thread iterates over the tuple it
        # read. The lock orders attach/detach against the connection's first and last events.
        self._taps: tuple[Tap, ...] = (self.tap,)
        self._taps_lock = threading.Lock()
        self._connected: Connected | None = None
        self._closing = False
        self._restart_reason = ""  # why `restart` ended the connection
        self._on_closed = on_closed
        self._fetch = self._fetcher()  # HLS: fetches every URL FFmpeg asks for (else None)
        self._name = name
        self._log_ids = self.tap.log_ids
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"livesnap-reader-{name}", daemon=True
        )
        self._live = False
        self._started = 0.0  # time.monotonic() when the thread began to connect
        # The open container's video stream, for `stop` (see there); None while
        # there is none. The lock keeps `stop` from touching a closed container.
        self._video: VideoStream | None = None
        self._video_lock = threading.Lock()
        # Written only by the reader thread; a reader of these from another
        # thread sees a consistent-enough snapshot (plain ints under the GIL).
        self._packets = 0
        self._keyframes = 0
        self._decoded = 0
        self._captured = 0
        self._failed = 0
        self._rejected = 0

    @property
    def name(self) -> str:
        """The name given at construction (used in the thread name and logs)."""
        return self._name

    @property
    def subscribers(self) -> int:
        """Taps attached now (the owner's included while it is)."""
        return len(self._taps)

    @property
    def stats(self) -> ReaderStats:
        """A snapshot of the counters."""
        return ReaderStats(
            packets=self._packets,
            keyframes=self._keyframes,
            decoded=self._decoded,
            captured=self._captured,
            failed=self._failed,
            rejected=self._rejected,
        )

    def start(self) -> None:
        """Start the reader thread. A reader can be started once."""
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end; returns at once.

        The thread notices at the next packet reaching Python or when
        ``rw_timeout`` ends a stalled read, then closes the container and
        emits ``Disconnected("stopped")``. Non-key packets are let through from
        here on: the demuxer drops them without returning to Python, so with a
        long GOP (or none) the thread would otherwise hold the connection until
        the next keyframe, however far away.
        """
        self._stop.set()
        with self._video_lock:
            # A plain int store into the demuxer's stream settings, read by the
            # reader thread at its next packet; the lock guarantees the
            # container is still open.
            if self._video is not None:
                self._video.discard = av.stream.Discard.default

    def restart(self, reason: str) -> None:
        """End the connection; its subscribers hear ``Disconnected(reason)`` and reconnect."""
        self._restart_reason = reason
        self.stop()

    def attach(self, tap: Tap) -> bool:
        """Add a subscriber; False if this connection is ending (open a new one then).

        A tap joining a live connection gets ``Connected(joined=True)`` at once, then the
        same events as the others from the next keyframe on.
        """
        with self._taps_lock:
            if self._closing or self._stop.is_set():
                return False
            self._taps = (*self._taps, tap)
            if self._connected is not None:  # in the lock: before any capture for this tap
                tap.send(dataclasses.replace(self._connected, opened_s=0.0, joined=True))
        return True

    def detach(self, tap: Tap) -> bool:
        """Remove a subscriber; True if it left while others keep the connection.

        A tap that leaves others behind gets ``Disconnected("stopped")`` at once. The last
        tap stops the reader instead (:meth:`stop`), and hears its ``Disconnected`` as
        an owner does.
        """
        with self._taps_lock:
            if tap not in self._taps:
                return True
            if len(self._taps) == 1:
                self.stop()  # in the lock: no tap may attach to a stopping reader
                return False
            self._taps = tuple(t for t in self._taps if t is not tap)
            tap.send(Disconnected(reason="stopped", was_live=self._live))
        return True

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread; True if it has ended (or was never started)."""
        if self._thread.ident is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def request_capture(self) -> None:
        """Capture the next keyframe whatever the selector says. Thread-safe."""
        self.tap.requested.set()

    # -- reader thread ------------------------------------------------------

    def _run(self) -> None:
        # Nothing may escape this function: the owner learns about the end of
        # the connection only from the Disconnected emitted in `finally`.
        reason = "internal error"
        self._started = time.monotonic()
        try:
            reason = self._read()
        except (_OpenDeadlineError, _OpenRefusedError) as exc:
            reason = str(exc)
        except av.error.FFmpegError as exc:
            reason = _describe_error(exc)
        except OSError as exc:  # from the HLS fetcher (capture.fetch): refused, or HTTP failed
            reason = _describe_fetch_error(exc)
        except Exception:
            logger.exception(
                "reader crashed",
                extra={"action": "capture.reader_crashed", **self._log_ids},
            )
        finally:
            if self._fetch is not None and self._fetch.refused:
                reason = self._fetch.refused  # FFmpeg only saw its requests fail
            if self._stop.is_set():
                reason = self._restart_reason or "stopped"
            # A stop its owner asked for is routine (a per-tick job does it every tick) and the
            # owner logs what matters about it; an end by itself is news.
            logger.log(
                logging.DEBUG if reason == "stopped" else logging.INFO,
                "reader disconnected: %s",
                reason,
                extra={"action": "capture.disconnected", **self._log_ids},
            )
            with self._taps_lock:
                self._closing = True
                taps = self._taps
            if self._on_closed is not None:
                self._on_closed(self)  # before the taps hear it: they may reconnect at once
            for tap in taps:
                tap.send(Disconnected(reason=reason, was_live=self._live))

    def _read(self) -> str:
        if self._stop.is_set():
            return "stopped"
        container = self._open()
        try:
            video = _select_video(container)
            if video is None:
                return "no video stream"
            with self._video_lock:
                self._video = video
            if self._stop.is_set():  # `stop` ran before `_video` was set
                return "stopped"
            extradata = video.codec_context.extradata
            for packet in container.demux(video):
                if self._stop.is_set():
                    return "stopped"
                if packet.size == 0:
                    continue  # the flush packets PyAV appends at end of input
                extradata = self._on_packet(video, packet, extradata)
            return "stream ended"
        finally:
            with self._video_lock:
                self._video = None
            container.close()

    def _open(self) -> InputContainer:
        deadline = self._options.open_timeout_s
        started = time.monotonic()
        self._check_certificate_first()
        targets = self._pinned()
        for number, target in enumerate(targets, 1):
            left = deadline - (time.monotonic() - started)
            try:
                return av.open(
                    target.url,
                    container_options={**self._options.container_options(),
                                       **protocol_options(self._url, self._options),
                                       **target.options},
                    timeout=(max(left, 0.001), None),
                    io_open=self._fetch,
                )
            except av.error.FFmpegError as exc:
                if number < len(targets) and _unreachable(exc):
                    continue  # the name's next address, as FFmpeg would have tried it
                self._open_failed(exc, started)
        raise AssertionError("unreachable: every open either returns or raises")

    def _open_failed(self, exc: av.error.FFmpegError, started: float) -> NoReturn:
        """Raise what went wrong with an open, in words that say what really happened."""
        deadline = self._options.open_timeout_s
        # Interrupted by the deadline, FFmpeg reports whatever it was doing
        # ("invalid data", "exit requested"); say what really happened.
        if time.monotonic() - started >= deadline:
            raise _OpenDeadlineError(
                f"no playable stream within {deadline:g} s ({_describe_error(exc)})"
            ) from exc
        problem = self._certificate_problem()
        if problem is not None:
            raise _OpenRefusedError(problem) from exc
        if isinstance(exc, av.error.EOFError | av.error.ConnectionResetError):
            # nothing was read yet: no stream ended, the server never sent one (an
            # unreachable host, or an origin that closes players of unknown streams)
            raise _OpenRefusedError(
                "the server sent no stream: unreachable, or it closed the connection at "
                "once (no such stream?)") from exc
        raise exc

    def _pinned(self) -> list[address.Pinned]:
        """The URLs FFmpeg may open, in order: the host name resolved once, every address
        checked, one URL per address in the name's place (``capture.address``); HLS pins
        each request itself."""
        url = _lower_scheme(self._url)
        if is_hls_url(url):
            return [address.Pinned(url)]
        try:
            return address.pin(url, self._options.blocked_networks,
                               resolve=self._options.resolve)
        except OSError as exc:
            raise _OpenRefusedError(str(exc)) from None

    def _check_certificate_first(self) -> None:
        """``rtsps://``: FFmpeg's RTSP demuxer cannot verify the certificate, so a handshake of
        livesnap's own does, just before FFmpeg connects; a refused one ends the open."""
        if self._url.split(":", 1)[0].lower() not in tls_module.CHECKED_FIRST_SCHEMES:
            return
        problem = self._certificate_problem()
        if problem is not None:
            raise _OpenRefusedError(problem)

    def _certificate_problem(self) -> str | None:
        """Why the source's certificate is refused (a handshake of livesnap's own), or None."""
        options = self._options
        return tls_module.certificate_problem(
            self._url, verify=options.tls_verify, ca_file=options.tls_ca_file,
            timeout_s=options.rw_timeout_s)

    def _fetcher(self) -> CheckedFetcher | None:
        """HLS: FFmpeg fetches every URL through a checked fetcher (``capture.fetch``)."""
        if not is_hls_url(self._url):
            return None
        options = self._options
        return CheckedFetcher(blocked=options.blocked_networks, timeout_s=options.rw_timeout_s,
                              tls_verify=options.tls_verify, ca_file=options.tls_ca_file)

    def _on_packet(
        self, video: VideoStream, packet: Packet[VideoStream], extradata: bytes | None
    ) -> bytes | None:
        """Handle one demuxed video packet; returns the extradata now in force."""
        arrival = time.time()
        self._packets += 1
        if not self._live:
            self._live = True
            ctx = video.codec_context
            connected = Connected(codec=ctx.name, width=ctx.width, height=ctx.height,
                                  opened_s=time.monotonic() - self._started)
            with self._taps_lock:
                self._connected = connected
                for tap in self._taps:
                    tap.send(connected)
        if packet.has_sidedata("new_extradata"):
            extradata = self._new_extradata(packet, extradata)
        # Packets buffered while probing are not filtered by the demuxer's
        # discard setting, so the first few may be non-key.
        if not packet.is_keyframe:
            return extradata
        self._keyframes += 1
        wanting: list[tuple[Tap, bool]] = []  # (tap, gated): who captures this keyframe
        for tap in self._taps:
            wanted = tap.selector.on_keyframe(arrival)
            if tap.feedback is not None:
                for verdict in tap.feedback.take_missed():
                    tap.send(TickMissed(verdict=verdict))
            requested = tap.requested.is_set()
            if requested:
                # A request that lands between is_set and clear is served by this
                # same capture, which is what "the next keyframe" means anyway.
                tap.requested.clear()
            if wanted or requested:
                # A capture the user asked for is kept whatever the gate says.
                wanting.append((tap, not requested))
        if wanting:
            with RENDER_SLOTS:  # one of the process's slots (see RenderSlots)
                if not self._stop.is_set():  # told to stop while it waited for a slot
                    self._capture(video, packet, extradata, arrival, wanting)
        return extradata

    def _new_extradata(self, packet: Packet[VideoStream], extradata: bytes | None
                       ) -> bytes | None:
        """New SPS/PPS (e.g. the publisher restarted its encoder with another size), attached
        to this packet only. Kept even if this keyframe is not captured: every capture starts
        a fresh decoder from ``extradata``, and that is all it takes to follow the change.
        nginx-rtmp sends the same parameters again to a reader that fell behind: only a
        change is news."""
        fresh = bytes(packet.get_sidedata("new_extradata"))
        if fresh != extradata:
            logger.info("stream parameters changed",
                        extra={"action": "capture.new_extradata", **self._log_ids})
        return fresh

    def _capture(
        self,
        video: VideoStream,
        packet: Packet[VideoStream],
        extradata: bytes | None,
        arrival: float,
        wanting: list[tuple[Tap, bool]],
    ) -> None:
        """Decode the keyframe once and render it for every tap that wants it."""
        try:
            frame = self._decode(video.codec_context.name, packet, extradata)
        except (av.error.FFmpegError, ValueError, _NoFrameError) as exc:
            for tap, gated in wanting:
                self._capture_failed(tap, gated, exc)
            return
        shared: dict[tuple[ImageOptions, int], Rendered] = {}
        stream_time = _seconds(packet, video)
        for tap, gated in wanting:
            key = tap.share_key()
            try:
                rendered = shared.get(key) if key is not None else None
                if rendered is None:
                    rendered = tap.renderer.render(frame, gate=gated)
                    if key is not None:
                        shared[key] = rendered
            except (av.error.FFmpegError, ValueError) as exc:
                self._capture_failed(tap, gated, exc)
                continue
            self._deliver(tap, gated, rendered, stream_time, arrival)

    def _capture_failed(self, tap: Tap, gated: bool, exc: Exception) -> None:
        self._failed += 1
        logger.warning(
            "keyframe capture failed: %r",
            exc,
            extra={"action": "capture.failed", **tap.log_ids},
        )
        if gated and tap.feedback is not None:
            # with or without the gate: the tick's next keyframe may decode
            tap.feedback.rejected(Verdict.DECODE_ERROR)
        tap.send(CaptureFailed(reason=_describe_error(exc)))

    def _deliver(
        self, tap: Tap, gated: bool, rendered: Rendered, stream_time: float | None,
        arrival: float,
    ) -> None:
        feedback = tap.feedback if gated else None
        if rendered.image is None:
            self._rejected += 1
            if feedback is not None:
                feedback.rejected(rendered.verdict)
            tap.send(FrameRejected(verdict=rendered.verdict))
            return
        self._captured += 1
        frame = CapturedFrame(
            image=rendered.image,
            stream_time=stream_time,
            arrival_wall=arrival,
            encoded_wall=time.time(),
            verdict=rendered.verdict,
            skipped=feedback.accepted() if feedback is not None else 0,
        )
        tap.send(Captured(frame=frame))

    def _decode(
        self, codec_name: str, packet: Packet[VideoStream], extradata: bytes | None
    ) -> av.VideoFrame:
        self._decoded += 1
        # A decoder per capture, dropped on return: an idle stream then holds
        # no frame buffers, and a change of SPS/PPS needs no reset logic.
        decoder = av.CodecContext.create(codec_name, "r")
        if not isinstance(decoder, av.VideoCodecContext):
            raise _NoFrameError(f"{codec_name} is not a video decoder")
        decoder.extradata = extradata
        decoder.thread_type = "NONE"
        decoder.thread_count = 1  # hundreds of readers share the cores already
        if self._options.skip_loop_filter:
            decoder.options = {"skip_loop_filter": "all"}
        frames = decoder.decode(packet)
        # Drain: with B-frames the keyframe would otherwise wait in the
        # reorder buffer for frames this decoder will never be given.
        frames += decoder.decode(None)
        if not frames:
            raise _NoFrameError("decoder returned no picture for the keyframe")
        # The frame (and with it the decoder's buffer pool) is released once the
        # callers have rendered it; only the encoded bytes leave the reader.
        return frames[-1]


class RenderSlots:
    """How many reader threads of this process decode and render a keyframe at once: as many
    as the process may use cores (at least two). A reader that finds them taken waits.

    Decoding and encoding release the GIL, but the Python around them needs it. With a slot
    per reader, an overloaded node had hundreds of threads asking for the GIL at each keyframe,
    and the event loop that stores and records every capture got it once in hundreds of
    hand-offs: at 360 streams on one core it stopped for tens of seconds and recorded nothing.
    More decodes at once than cores would not finish sooner anyway; fewer at once also hold
    fewer decoders' frame buffers. Counted at the first capture (a process pinned to its cores
    after it started gets its share).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slots: threading.BoundedSemaphore | None = None
        self.count = 0

    def __enter__(self) -> None:
        slots = self._slots
        if slots is None:
            with self._lock:
                if self._slots is None:
                    self.count = max(2, usable_cores())
                    self._slots = threading.BoundedSemaphore(self.count)
                slots = self._slots
        slots.acquire()

    def __exit__(self, *exc: object) -> None:
        assert self._slots is not None
        self._slots.release()


RENDER_SLOTS = RenderSlots()


_UNREACHABLE = frozenset({errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH,
                          errno.EADDRNOTAVAIL})


def _unreachable(exc: av.error.FFmpegError) -> bool:
    """The address could not be connected to (another address of the name may be)."""
    return exc.errno in _UNREACHABLE


def _lower_scheme(url: str) -> str:
    """FFmpeg knows its protocols by lower-case name only (``RTMP://`` finds none)."""
    scheme, sep, rest = url.partition("://")
    return scheme.lower() + sep + rest


def _select_video(container: InputContainer) -> VideoStream | None:
    """Pick the first video stream and make the demuxer drop everything else."""
    videos = container.streams.video
    video = videos[0] if videos else None
    for stream in container.streams:
        if stream is not video:
            stream.discard = av.stream.Discard.all
    if video is not None:
        # Done inside libavformat, before Python sees a packet: the biggest
        # CPU lever per stream after dropping PyAV's timeout callback.
        video.discard = av.stream.Discard.nonkey
    return video


def _seconds(packet: Packet[VideoStream], video: VideoStream) -> float | None:
    time_base = packet.time_base or video.time_base
    if packet.pts is None or time_base is None:
        return None
    return float(packet.pts * time_base)


_REASONS: dict[type[BaseException], str] = {
    av.error.ConnectionRefusedError: "connection refused",
    av.error.TimeoutError: "timed out",
    av.error.EOFError: "stream ended",
    av.error.InvalidDataError: "invalid data",
    av.error.HTTPNotFoundError: "not found",
    av.error.ProtocolNotFoundError: "unsupported protocol",
    av.error.PermissionError: "permission denied",
}


def _describe_fetch_error(exc: OSError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return tls_module.certificate_reason(exc)
    return str(exc) or type(exc).__name__


def _describe_error(exc: BaseException) -> str:
    """A short human reason for an error from PyAV or the encoder."""
    for error_type, text in _REASONS.items():
        if isinstance(exc, error_type):
            return text
    if isinstance(exc, av.error.OSError) and exc.errno == 5:
        # What FFmpeg reports when rw_timeout expires, and for a lost session.
        return "no data (I/O error or read timeout)"
    if isinstance(exc, av.error.FFmpegError):
        return exc.strerror or type(exc).__name__
    return str(exc) or type(exc).__name__
