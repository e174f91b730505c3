"""Real servers for integration tests: nginx-rtmp origin, ffmpeg publishers, test clips, PostgreSQL.

Plain Python on purpose (no pytest import): benchmarks and ad-hoc scripts use the same helpers.
Recipes follow ``/work/shared/infra.md`` (sections 1 and 4). Everything listens on 127.0.0.1 only,
keeps its files in a private temp directory, and works both as root and as an ordinary user.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import re
import shutil
import signal
import socket
import string
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Self

REPO_ROOT = Path(__file__).resolve().parents[2]
FFMPEG = "/usr/bin/ffmpeg"  # Debian's build: has libx264 and the rtmp protocol
RTMP_MODULE = Path("/usr/lib/nginx/modules/ngx_rtmp_module.so")
PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"

CLIP_FPS = 25
CLIP_GOP = 50  # frames: one keyframe every 2 s at 25 fps
CLIP_BLACK_SECONDS = 4  # the black lead-in of the "black_then_picture" clip
# black lead-in per clip kind: "long_black_then_picture" is black for longer than a 5 s tick
CLIP_BLACK_LEAD = {"black_then_picture": CLIP_BLACK_SECONDS, "long_black_then_picture": 12}
# clips whose keyframes stop: keyframes every GOP up to this second, then none until the clip
# ends (so a looping publisher sends no keyframe for ``seconds - lead`` seconds)
CLIP_KEYFRAMES_UNTIL = {"keyframe_gap": 4}
CLIP_RECIPE = "v1"  # bump when the encode recipe changes so cached clips are regenerated
CLIP_SIZES: dict[str, tuple[int, int]] = {
    "360p": (640, 360),
    "720p": (1280, 720),
    "1080p": (1920, 1080),
    "portrait": (720, 1280),
    "black_then_picture": (1280, 720),
    "long_black_then_picture": (640, 360),
    "keyframe_gap": (320, 180),
    "still": (640, 360),
}
# clips whose picture never changes (a test card): every keyframe decodes to the same picture
CLIP_STILL = {"still": "smptebars"}


# --------------------------------------------------------------------------------------------
# small process / network helpers
# --------------------------------------------------------------------------------------------


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_binary(path_or_name: str, package: str) -> str:
    """Return the binary's path, or raise RuntimeError naming the Debian package to install."""
    found = path_or_name if os.path.isabs(path_or_name) else shutil.which(path_or_name)
    if not found or not os.access(found, os.X_OK):
        found = shutil.which(path_or_name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if not found:
        raise RuntimeError(
            f"{path_or_name!r} not found: install the Debian package {package!r}"
            " (scripts/test.sh does)"
        )
    return found


def pid_alive(pid: int) -> bool:
    """True if the process exists and is not a zombie.

    Daemons re-parented to PID 1 may never be reaped in a container, so a zombie counts as gone.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        return _signal_zero(pid)
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def _signal_zero(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def child_pids(pid: int) -> list[int]:
    """PIDs whose parent is ``pid`` (e.g. the nginx workers of a master)."""
    children = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat_file.parent.name))
    return children


def wait_pids_gone(pids: list[int], timeout: float) -> bool:
    """Poll until none of ``pids`` is alive; return False if some still are after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while any(pid_alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _send(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def stop_group(proc: subprocess.Popen[bytes], sig: signal.Signals, timeout: float) -> None:
    """Send ``sig`` to the process group ``proc`` leads (started with a session of its own),
    SIGKILL it if it is still there after ``timeout`` s, and reap it."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return f"(no {path.name})"


def http_get(url: str, timeout: float = 2.0) -> bytes:
    """GET a loopback URL and return the body (raises on HTTP errors)."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # loopback http only
        return bytes(resp.read())


class _Managed:
    """Context-manager plumbing: ``with X() as x`` calls ``start()`` and always ``stop()``."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------
# nginx-rtmp origin
# --------------------------------------------------------------------------------------------

_NGINX_CONF = string.Template("""\
load_module $module;
$extra_modules
daemon on;
worker_processes 1;
pid logs/nginx.pid;
error_log logs/error.log info;
events { worker_connections 1024; }  # the benchmarks play hundreds of streams
rtmp {
  access_log logs/rtmp-access.log;
  server {
    listen 127.0.0.1:$rtmp_port;
    chunk_size 4096;
    application $app {
      live on;
      record off;
      allow publish 127.0.0.1;
      deny publish all;
      allow play all;
$app_extra
    }
$hls_application
  }
}
http {
  access_log off;
  client_body_temp_path tmp/body; proxy_temp_path tmp/proxy; fastcgi_temp_path tmp/fcgi;
  uwsgi_temp_path tmp/uwsgi; scgi_temp_path tmp/scgi;
  server {
    listen 127.0.0.1:$http_port;
    location /stat    { rtmp_stat all; }
    location /healthz { return 200 "ok\\n"; }
$hls_location
  }
}
$stream_block
""")
# HLS: nginx-rtmp writes playlists and segments of application "hls" under hls/, and the
# HTTP server serves them (each request logged, to see who fetched what)
_HLS_APPLICATION = """\
    application hls {
      live on;
      hls on;
      hls_path $directory/hls;
      hls_fragment 2s;
      hls_playlist_length 12s;
      allow publish 127.0.0.1;
      deny publish all;
    }"""
_HLS_LOCATION = """\
    location /hls {
      types { application/vnd.apple.mpegurl m3u8; video/mp2t ts; }
      root $directory;
      add_header Cache-Control no-cache;
      access_log logs/hls-access.log;
    }"""
STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")
# RTMPS: nginx's stream module ends TLS on its own port and passes the bytes to the RTMP port
_TLS_TERMINATOR = string.Template("""\
stream {
  server {
    listen 127.0.0.1:$tls_port ssl;
    ssl_certificate $cert;
    ssl_certificate_key $key;
    proxy_pass 127.0.0.1:$rtmp_port;
  }
}
""")


@dataclass(frozen=True)
class StreamStatus:
    """One stream as reported by nginx-rtmp's ``/stat`` page."""

    name: str
    publishing: bool
    active: bool
    nclients: int
    width: int | None
    height: int | None


class RtmpOrigin(_Managed):
    """A private nginx + nginx-rtmp server on free loopback ports (application ``live``)."""

    def __init__(
        self, *, app: str = "live", start_timeout: float = 10.0, app_extra: str = "",
        tls: tuple[Path, Path] | None = None, hls: bool = False,
    ) -> None:
        self.app = app
        self.app_extra = app_extra  # more directives for the application (hooks, …)
        self.tls = tls  # (certificate, key): also serve RTMPS on ``tls_port``
        self.tls_port = 0
        self.hls = hls  # also an application "hls" whose streams play as HLS over HTTP
        self.start_timeout = start_timeout
        self.rtmp_port = 0
        self.http_port = 0
        self.pid: int | None = None
        self.directory: Path | None = None

    # -- addresses ----------------------------------------------------------------------------
    @property
    def rtmp_base(self) -> str:
        """``rtmp://127.0.0.1:PORT/live``."""
        return f"rtmp://127.0.0.1:{self.rtmp_port}/{self.app}"

    @property
    def http_base(self) -> str:
        """Base URL of the health/stat HTTP server."""
        return f"http://127.0.0.1:{self.http_port}"

    def url(self, stream_key: str) -> str:
        """Publish/play URL of one stream."""
        return f"{self.rtmp_base}/{stream_key}"

    def hls_publish_url(self, stream_key: str) -> str:
        """Where to publish a stream that plays as HLS (``hls`` given)."""
        return f"rtmp://127.0.0.1:{self.rtmp_port}/hls/{stream_key}"

    def hls_url(self, stream_key: str) -> str:
        """The HLS playlist of a stream published to :meth:`hls_publish_url`."""
        return f"{self.http_base}/hls/{stream_key}.m3u8"

    def hls_requests(self) -> list[str]:
        """The paths the HTTP server was asked for under /hls, in order."""
        assert self.directory is not None
        log = self.directory / "logs" / "hls-access.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        return re.findall(r'"GET (\S+) HTTP', text)

    def rtmps_url(self, stream_key: str, host: str = "127.0.0.1") -> str:
        """Play URL of one stream through the TLS terminator (``tls`` given)."""
        return f"rtmps://{host}:{self.tls_port}/{self.app}/{stream_key}"

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self, attempts: int = 3) -> Self:
        """Config-test and start nginx, wait for ``/healthz``; retries on a lost port race."""
        nginx = require_binary("nginx", "nginx")
        if not RTMP_MODULE.exists():
            raise RuntimeError(f"{RTMP_MODULE} missing: install Debian's 'libnginx-mod-rtmp'")
        for attempt in range(attempts):
            self._prepare_dir()
            try:
                self._launch(nginx)
                return self
            except RuntimeError as exc:
                self.stop()
                if "Address already in use" not in str(exc) or attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def _prepare_dir(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="livesnap-rtmp-"))
        for sub in ("logs", "tmp"):
            (self.directory / sub).mkdir()
        # As root the worker runs as nobody and must be able to traverse into the temp paths.
        for path in (self.directory, self.directory / "tmp"):
            path.chmod(0o755)
        self.rtmp_port = free_port()
        self.http_port = free_port()
        while self.http_port == self.rtmp_port:
            self.http_port = free_port()
        extra_modules, stream_block = "", ""
        if self.tls is not None:
            if not STREAM_MODULE.exists():
                raise RuntimeError(f"{STREAM_MODULE} missing: install 'libnginx-mod-stream'")
            self.tls_port = free_port()
            extra_modules = f"load_module {STREAM_MODULE};"
            stream_block = _TLS_TERMINATOR.substitute(
                tls_port=self.tls_port, cert=self.tls[0], key=self.tls[1],
                rtmp_port=self.rtmp_port)
        hls_application = hls_location = ""
        if self.hls:
            (self.directory / "hls").mkdir()
            (self.directory / "hls").chmod(0o777)  # the worker (nobody) writes there
            hls_application = string.Template(_HLS_APPLICATION).substitute(
                directory=self.directory)
            hls_location = string.Template(_HLS_LOCATION).substitute(directory=self.directory)
        conf = _NGINX_CONF.substitute(
            module=RTMP_MODULE, rtmp_port=self.rtmp_port, http_port=self.http_port, app=self.app,
            app_extra=self.app_extra, extra_modules=extra_modules, stream_block=stream_block,
            hls_application=hls_application, hls_location=hls_location,
        )
        (self.directory / "nginx.conf").write_text(conf)

    def _nginx_cmd(self, nginx: str, *extra: str) -> list[str]:
        assert self.directory is not None
        prefix = f"{self.directory}/"
        return [nginx, "-p", prefix, "-c", prefix + "nginx.conf", "-e", "logs/error.log", *extra]

    def _launch(self, nginx: str) -> None:
        test = subprocess.run(self._nginx_cmd(nginx, "-t"), capture_output=True, text=True)
        if test.returncode != 0:
            raise RuntimeError(f"nginx config test failed:\n{test.stderr}")
        run = subprocess.run(self._nginx_cmd(nginx), capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError(f"nginx failed to start:\n{run.stderr}\n{self.error_log()}")
        self._wait_healthy()

    def _wait_healthy(self) -> None:
        assert self.directory is not None
        pid_file = self.directory / "logs" / "nginx.pid"
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.pid is None and pid_file.exists():
                with contextlib.suppress(ValueError):
                    self.pid = int(pid_file.read_text().strip())
            with contextlib.suppress(OSError):
                if http_get(f"{self.http_base}/healthz") == b"ok\n":
                    return
            time.sleep(0.02)
        raise RuntimeError(f"no /healthz answer in {self.start_timeout}s:\n{self.error_log()}")

    def error_log(self) -> str:
        """The tail of nginx's error log (for failure messages)."""
        if self.directory is None:
            return "(not started)"
        return _tail(self.directory / "logs" / "error.log")

    def stop(self, quit_timeout: float = 1.0) -> None:
        """Graceful quit; SIGTERM then SIGKILL if connections keep it up. Removes the temp dir."""
        if self.pid is not None:
            pids = [self.pid, *child_pids(self.pid)]
            _send(self.pid, signal.SIGQUIT)
            if not wait_pids_gone(pids, quit_timeout):
                _send(self.pid, signal.SIGTERM)
                if not wait_pids_gone(pids, 2.0):
                    for pid in pids:
                        _send(pid, signal.SIGKILL)
                    wait_pids_gone(pids, 2.0)
            self.pid = None
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    # -- /stat ---------------------------------------------------------------------------------
    def stat_xml(self) -> str:
        """Raw XML of nginx-rtmp's ``/stat`` page."""
        return http_get(f"{self.http_base}/stat").decode()

    def stream_status(self, stream_key: str) -> StreamStatus | None:
        """Status of one stream of this origin's application, or None if nginx doesn't know it."""
        root = ET.fromstring(self.stat_xml())
        for app in root.iter("application"):
            if app.findtext("name") != self.app:
                continue
            for stream in app.iter("stream"):
                if stream.findtext("name") == stream_key:
                    return _parse_stream(stream)
        return None


def _int_or_none(text: str | None) -> int | None:
    return int(text) if text and text.strip().isdigit() else None


def _parse_stream(stream: ET.Element) -> StreamStatus:
    return StreamStatus(
        name=stream.findtext("name", ""),
        publishing=stream.find("publishing") is not None,
        active=stream.find("active") is not None,
        nclients=int(stream.findtext("nclients", "0")),
        width=_int_or_none(stream.findtext("meta/video/width")),
        height=_int_or_none(stream.findtext("meta/video/height")),
    )


def wait_stream_live(
    origin: RtmpOrigin, key: str, timeout: float = 10.0, *, publisher: Publisher | None = None
) -> StreamStatus:
    """Poll ``/stat`` until ``key`` has a publisher sending data; raise TimeoutError if not.

    With ``publisher``, fail at once (RuntimeError with ffmpeg's stderr) if that process dies.
    """
    deadline = time.monotonic() + timeout
    status: StreamStatus | None = None
    while time.monotonic() < deadline:
        if publisher is not None and not publisher.alive:
            raise RuntimeError(f"publisher to {publisher.url} exited: {publisher.errors}")
        with contextlib.suppress(OSError):
            status = origin.stream_status(key)
            if status is not None and status.publishing and status.active:
                return status
        time.sleep(0.05)
    raise TimeoutError(f"stream {key!r} not live on {origin.rtmp_base} after {timeout}s: {status}")


def wait_stream_gone(origin: RtmpOrigin, key: str, timeout: float = 10.0) -> None:
    """Poll ``/stat`` until ``key`` has no publisher any more; raise TimeoutError if it has."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = origin.stream_status(key)
        if status is None or not status.publishing:
            return
        time.sleep(0.05)
    raise TimeoutError(f"stream {key!r} still published on {origin.rtmp_base} after {timeout}s")


# --------------------------------------------------------------------------------------------
# test clips
# --------------------------------------------------------------------------------------------


def default_clip_cache() -> Path:
    """``$LIVESNAP_TEST_CACHE`` or ``<repo>/.cache/clips``."""
    env = os.environ.get("LIVESNAP_TEST_CACHE")
    return Path(env) if env else REPO_ROOT / ".cache" / "clips"


def clip_source(kind: str, seconds: int) -> str:
    """The lavfi graph that renders ``seconds`` of clip ``kind`` (its output pad is ``out0``)."""
    if kind not in CLIP_SIZES:
        raise ValueError(f"unknown clip kind {kind!r}; known: {', '.join(CLIP_SIZES)}")
    if seconds <= 0:
        raise ValueError("seconds must be positive")
    width, height = CLIP_SIZES[kind]
    size = f"size={width}x{height}:rate={CLIP_FPS}"
    if kind in CLIP_STILL:
        return f"{CLIP_STILL[kind]}={size}:duration={seconds}"
    black = CLIP_BLACK_LEAD.get(kind)
    if black is None:
        return f"testsrc2={size}:duration={seconds}"
    if seconds <= black:
        raise ValueError(f"{kind} needs more than {black} seconds")
    return (
        f"color=c=black:{size}:duration={black}[black];"
        f"testsrc2={size}:duration={seconds - black}[pic];"
        "[black][pic]concat=n=2:v=1:a=0[out0]"
    )


def make_clip(kind: str = "720p", *, seconds: int = 10, cache_dir: Path | None = None) -> Path:
    """A cached, pre-encoded H.264 FLV clip (x264 defaults, so High profile with B-frames; GOP 2 s,
    except that the ``CLIP_KEYFRAMES_UNTIL`` kinds stop having keyframes part way).

    Encoded once with Debian's ffmpeg into a temp name and renamed into place, so parallel or
    aborted runs never leave a half-written clip behind.
    """
    source = clip_source(kind, seconds)
    cache = cache_dir if cache_dir is not None else default_clip_cache()
    target = cache / f"{kind}-{seconds}s-{CLIP_RECIPE}.flv"
    if target.exists():
        return target
    ffmpeg = require_binary(FFMPEG, "ffmpeg")
    keyframes = ["-g", str(CLIP_GOP)]
    until = CLIP_KEYFRAMES_UNTIL.get(kind)
    if until is not None:
        if seconds <= until:
            raise ValueError(f"{kind} needs more than {until} seconds")
        forced = ",".join(str(t) for t in range(0, until + 1, CLIP_GOP // CLIP_FPS))
        keyframes = ["-g", str(seconds * CLIP_FPS + 1), "-force_key_frames", forced]
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=cache, prefix=f".{target.stem}.", suffix=".part")
    os.close(fd)
    cmd = [
        ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
        "-f", "lavfi", "-i", source,
        "-c:v", "libx264", *keyframes, "-sc_threshold", "0", "-pix_fmt", "yuv420p",
        "-f", "flv", tmp_name,
    ]  # fmt: skip
    try:
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"encoding clip {kind!r} failed:\n{result.stderr}")
        os.chmod(tmp_name, 0o644)  # mkstemp makes it 0600; the clip is not a secret
        os.replace(tmp_name, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
    return target


# --------------------------------------------------------------------------------------------
# ffmpeg publisher
# --------------------------------------------------------------------------------------------


class Publisher(_Managed):
    """Loops a clip into an RTMP URL in real time with ``ffmpeg -re -stream_loop -1 -c copy``."""

    def __init__(self, clip: Path, url: str) -> None:
        self.clip = Path(clip)
        self.url = url
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._old_errors = ""

    def command(self) -> list[str]:
        """The ffmpeg command line."""
        return [
            require_binary(FFMPEG, "ffmpeg"), "-hide_banner", "-loglevel", "error", "-nostdin",
            "-re", "-stream_loop", "-1", "-i", str(self.clip), "-c", "copy", "-f", "flv", self.url,
        ]  # fmt: skip

    @property
    def pid(self) -> int | None:
        """PID (and process group id) of the running ffmpeg, if started."""
        return self._proc.pid if self._proc is not None else None

    @property
    def alive(self) -> bool:
        """True while ffmpeg is running."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def errors(self) -> str:
        """Everything ffmpeg wrote to stderr so far (across restarts)."""
        current = ""
        if self._log is not None:  # pread: ffmpeg shares this file offset, so never move it
            fd = self._log.fileno()
            current = os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")
        return self._old_errors + current

    def start(self) -> Self:
        """Start ffmpeg in its own process group (no-op if already running)."""
        if self.alive:
            return self
        self._close()
        self._log = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            start_new_session=True,
        )
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the process group, SIGKILL it if still there after ``timeout`` s; reap it."""
        self._signal_and_reap(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL the process group at once (a crashing source); reap it."""
        self._signal_and_reap(signal.SIGKILL, 5.0)

    def restart(self) -> Self:
        """Stop and start again (a source that reconnects)."""
        self.stop()
        return self.start()

    def _signal_and_reap(self, sig: signal.Signals, timeout: float) -> None:
        if self._proc is None:
            return
        stop_group(self._proc, sig, timeout)
        self._close()

    def _close(self) -> None:
        if self._log is not None:
            self._old_errors = self.errors
            self._log.close()
            self._log = None


# --------------------------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------------------------

_DB_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _version_key(path: str) -> tuple[int, ...]:
    version = Path(path).parent.name
    return tuple(int(part) for part in re.findall(r"\d+", version))


def pg_bin_dir() -> Path:
    """Newest ``/usr/lib/postgresql/<version>/bin`` that has ``initdb``."""
    candidates = [p for p in glob.glob(PG_BIN_GLOB) if os.access(f"{p}/initdb", os.X_OK)]
    if not candidates:
        raise RuntimeError(
            f"no PostgreSQL server binaries under {PG_BIN_GLOB}:"
            " install the Debian package 'postgresql'"
        )
    return Path(max(candidates, key=_version_key))


class PostgresServer(_Managed):
    """A throw-away PostgreSQL cluster (trust auth, fsync off) on a free loopback port."""

    def __init__(self, *, start_timeout: float = 30.0) -> None:
        self.start_timeout = start_timeout
        self.port = 0
        self.directory: Path | None = None
        self.pid: int | None = None
        self._bin: Path | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self, attempts: int = 3) -> Self:
        """initdb + ``pg_ctl start -w`` (via ``runuser -u postgres`` when root)."""
        self._bin = pg_bin_dir()
        for attempt in range(attempts):
            self._init_cluster()
            try:
                self._pg_ctl_start()
                return self
            except RuntimeError as exc:
                self.stop()
                if "could not bind" not in str(exc) or attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def _as_pg_user(self, *cmd: str) -> list[str]:
        if os.geteuid() != 0:
            return list(cmd)
        return [require_binary("runuser", "util-linux"), "-u", "postgres", "--", *cmd]

    def _run(self, *cmd: str, what: str) -> None:
        assert self.directory is not None
        result = subprocess.run(
            self._as_pg_user(*cmd), capture_output=True, text=True, cwd=self.directory
        )
        if result.returncode != 0:
            log = _tail(self.directory / "server.log")
            raise RuntimeError(f"{what} failed:\n{result.stdout}{result.stderr}\n{log}")

    def _init_cluster(self) -> None:
        assert self._bin is not None
        self.directory = Path(tempfile.mkdtemp(prefix="livesnap-pg-"))
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("no 'postgres' user: install Debian's 'postgresql'") from None
            os.chown(self.directory, user.pw_uid, user.pw_gid)
        self._run(
            str(self._bin / "initdb"), "-D", str(self.directory / "data"), "-U", "postgres",
            "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync",
            what="initdb",
        )  # fmt: skip

    def _pg_ctl_start(self) -> None:
        assert self._bin is not None and self.directory is not None
        self.port = free_port()
        options = (
            f"-k {self.directory} -c listen_addresses=127.0.0.1 -p {self.port} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run(
            str(self._bin / "pg_ctl"), "-D", str(self.directory / "data"),
            "-l", str(self.directory / "server.log"), "-w", "-t", str(int(self.start_timeout)),
            "start", "-o", options,
            what="pg_ctl start",
        )  # fmt: skip
        pid_line = (self.directory / "data" / "postmaster.pid").read_text().split("\n", 1)[0]
        self.pid = int(pid_line)

    def stop(self) -> None:
        """``pg_ctl stop -m fast``; SIGKILL the postmaster if that fails. Removes the temp dir."""
        if self.pid is not None and self._bin is not None and self.directory is not None:
            with contextlib.suppress(RuntimeError):
                self._run(
                    str(self._bin / "pg_ctl"), "-D", str(self.directory / "data"),
                    "-m", "fast", "-w", "-t", "10", "stop",
                    what="pg_ctl stop",
                )  # fmt: skip
            if not wait_pids_gone([self.pid], 5.0):
                _send(self.pid, signal.SIGKILL)
                wait_pids_gone([self.pid], 5.0)
            self.pid = None
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    # -- databases ------------------------------------------------------------------------------
    def dsn(self, name: str = "postgres") -> str:
        """libpq/asyncpg DSN of database ``name``."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def url(self, name: str = "postgres") -> str:
        """SQLAlchemy async URL of database ``name``."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{name}"

    def create_database(self, name: str) -> str:
        """CREATE DATABASE ``name`` (via psql over TCP) and return its SQLAlchemy async URL."""
        if not _DB_NAME.match(name):
            raise ValueError(f"database name {name!r} must match {_DB_NAME.pattern}")
        if self.pid is None or self._bin is None:
            raise RuntimeError("PostgresServer is not started")
        psql = str(self._bin / "psql")
        cmd = [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", self.dsn(),
               "-c", f'CREATE DATABASE "{name}"']  # fmt: skip
        result = subprocess.run(
            cmd, capture_output=True, text=True, env={**os.environ, "PGCONNECT_TIMEOUT": "10"}
        )
        if result.returncode != 0:
            raise RuntimeError(f"CREATE DATABASE {name} failed:\n{result.stderr}")
        return self.url(name)


# --------------------------------------------------------------------------------------------
# RTSP server (Debian's GStreamer RTSP server, driven by tests/support/rtsp_server.py)
# --------------------------------------------------------------------------------------------

SYSTEM_PYTHON = "/usr/bin/python3"  # has python3-gi and GStreamer's typelibs; the venv does not
RTSP_SCRIPT = REPO_ROOT / "tests" / "support" / "rtsp_server.py"
RTSP_PACKAGES = ("gstreamer1.0-rtsp gir1.2-gst-rtsp-server-1.0 python3-gi "
                 "gstreamer1.0-plugins-ugly gstreamer1.0-plugins-bad")


class RtspServer(_Managed):
    """A live 640x360 test picture (moving colour bars) at ``rtsp://127.0.0.1:<port>/cam``,
    H.264 or H.265.

    ``user``/``password`` require that account (basic or digest authentication). The port
    stays the same across :meth:`restart`, as a camera's does.
    """

    def __init__(self, *, codec: str = "h264", user: str = "", password: str = "") -> None:
        self.codec, self.user, self.password = codec, user, password
        self.port = free_port()
        self._proc: subprocess.Popen[str] | None = None
        self._log: IO[str] | None = None

    def url(self, *, user: str | None = None, password: str | None = None) -> str:
        """The stream URL, with the server's account (or the one given) in it."""
        user = self.user if user is None else user
        password = self.password if password is None else password
        credentials = f"{user}:{password}@" if user else ""
        return f"rtsp://{credentials}127.0.0.1:{self.port}/cam"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout: float = 15.0) -> Self:
        if not Path(SYSTEM_PYTHON).exists():
            raise RuntimeError(f"{SYSTEM_PYTHON} is missing: apt-get install {RTSP_PACKAGES}")
        self._log = tempfile.TemporaryFile("w+")
        command = [SYSTEM_PYTHON, str(RTSP_SCRIPT), "--port", str(self.port),
                   "--codec", self.codec]
        if self.user:
            command += ["--user", self.user, "--password", self.password]
        self._proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=self._log, text=True, start_new_session=True)
        assert self._proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = self._proc.stdout.readline()  # "ready", or "" when it exited
        if line.strip() != "ready" or time.monotonic() > deadline:
            errors = self._errors()
            self.stop()
            raise RuntimeError(f"the RTSP server did not start ({errors}); "
                               f"it needs: apt-get install {RTSP_PACKAGES}")
        return self

    def _errors(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read()[-2000:]

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, SIGKILL after ``timeout``; the port is free afterwards."""
        if self._proc is not None:
            stop_group(self._proc, signal.SIGTERM, timeout)
        if self._proc is not None and self._proc.stdout is not None:
            self._proc.stdout.close()
        if self._log is not None:
            self._log.close()
        self._proc, self._log = None, None

    def freeze(self) -> None:
        """SIGSTOP: the connections stay open and nothing is sent (a camera that hangs)."""
        assert self._proc is not None
        os.killpg(self._proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self._proc is not None
        os.killpg(self._proc.pid, signal.SIGCONT)

    def restart(self) -> Self:
        self.stop()
        return self.start()

    def client_connections(self) -> int:
        """Established TCP connections to the server's port from any local process."""
        return established_to(self.port)


def established_to(port: int) -> int:
    """Established IPv4 TCP connections whose remote end is 127.0.0.1:``port``."""
    remote = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as table:
        next(table)
        return sum(1 for row in table
                   if (fields := row.split()) and fields[2] == remote and fields[3] == "01")


# --------------------------------------------------------------------------------------------
# node-media-server: an RTMP server that also plays its streams as HTTP-FLV
# --------------------------------------------------------------------------------------------

NMS_VERSION = "4.4.3"
# where scripts/test.sh installs it (npm install --prefix); LIVESNAP_TEST_NMS_DIR overrides
NMS_PREFIX = REPO_ROOT / ".cache" / f"node-media-server-{NMS_VERSION}"
_NMS_SCRIPT = """
const NodeMediaServer = require(process.argv[1]);
const config = JSON.parse(process.argv[2]);
new NodeMediaServer(config).run();
"""


def nms_module() -> Path:
    """The installed node-media-server package, or RuntimeError saying how to install it."""
    prefix = Path(os.environ.get("LIVESNAP_TEST_NMS_DIR", NMS_PREFIX))
    module = prefix / "node_modules" / "node-media-server"
    if not (module / "package.json").exists():
        raise RuntimeError(
            f"node-media-server missing in {prefix}: scripts/test.sh installs it "
            f"(npm install --prefix {prefix} node-media-server@{NMS_VERSION})")
    return module


class NodeMediaServer(_Managed):
    """node-media-server on free loopback ports: publish RTMP to :meth:`rtmp_url`, play
    :meth:`flv_url` (``http://127.0.0.1:PORT/live/KEY.flv``)."""

    def __init__(self, *, start_timeout: float = 15.0) -> None:
        self.start_timeout = start_timeout
        self.rtmp_port = 0
        self.http_port = 0
        self.directory: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def rtmp_url(self, key: str) -> str:
        return f"rtmp://127.0.0.1:{self.rtmp_port}/live/{key}"

    def flv_url(self, key: str) -> str:
        return f"http://127.0.0.1:{self.http_port}/live/{key}.flv"

    def start(self) -> Self:
        node = require_binary("node", "nodejs")
        module = nms_module()
        self.directory = Path(tempfile.mkdtemp(prefix="livesnap-nms-"))
        self.rtmp_port, self.http_port = free_port(), free_port()
        while self.http_port == self.rtmp_port:
            self.http_port = free_port()
        config = {
            "bind": "127.0.0.1", "rtmp": {"port": self.rtmp_port},
            "http": {"port": self.http_port}, "webadmin": {"enable": False},
            "store": {"path": str(self.directory / "data")},
            "auth": {"play": False, "publish": False}, "record": {"auto": False},
            "notify": {"url": ""},
        }
        self._log = (self.directory / "nms.log").open("wb")
        self._proc = subprocess.Popen(
            [node, "-e", _NMS_SCRIPT, str(module), json.dumps(config)],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            cwd=self.directory, start_new_session=True)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"node-media-server exited:\n{self.log()}")
            if _listening(self.rtmp_port) and _listening(self.http_port):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"node-media-server did not listen in {self.start_timeout}s")

    def log(self) -> str:
        return _tail(self.directory / "nms.log") if self.directory else "(not started)"

    def stop(self) -> None:
        if self._proc is not None:
            stop_group(self._proc, signal.SIGTERM, 5.0)
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


# --------------------------------------------------------------------------------------------
# Redis (Debian's redis-server): the store of Ray's GCS fault tolerance in the cluster test
# --------------------------------------------------------------------------------------------


class RedisServer(_Managed):
    """A throw-away Redis on a free loopback port, nothing persisted (``--save ''``)."""

    def __init__(self, *, start_timeout: float = 10.0) -> None:
        self.start_timeout = start_timeout
        self.port = 0
        self.directory: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>``, as ``RAY_REDIS_ADDRESS`` takes it."""
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, attempts: int = 3) -> Self:
        binary = require_binary("redis-server", "redis-server")
        self.directory = Path(tempfile.mkdtemp(prefix="livesnap-redis-"))
        for attempt in range(attempts):
            self.port = free_port()
            log = self.directory / "redis.log"
            self._proc = subprocess.Popen(
                [binary, "--bind", "127.0.0.1", "--port", str(self.port),
                 "--dir", str(self.directory), "--save", "", "--appendonly", "no",
                 "--logfile", str(log)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            deadline = time.monotonic() + self.start_timeout
            while time.monotonic() < deadline and self._proc.poll() is None:
                if self.ping():
                    return self
                time.sleep(0.05)
            failed = _tail(log)
            self.stop(keep_directory=True)
            if "in use" not in failed or attempt == attempts - 1:
                raise RuntimeError(f"redis-server did not start:\n{failed}")
        raise AssertionError("unreachable")

    def ping(self) -> bool:
        """True if Redis answers ``PING`` (spoken by hand: no client library needed)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def keys(self) -> int:
        """How many keys Redis holds (``DBSIZE``)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall(b"DBSIZE\r\n")
            return int(sock.recv(64).strip().lstrip(b":"))

    def stop(self, *, keep_directory: bool = False) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(5)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(5)
            self._proc = None
        if self.directory is not None and not keep_directory:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None
