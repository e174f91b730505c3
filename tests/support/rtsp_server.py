"""A live RTSP server for tests: Debian's GStreamer RTSP server serving a test picture.

Run with the system Python, which has GStreamer's introspection bindings (``python3-gi``,
``gir1.2-gst-rtsp-server-1.0``); the project's virtual environment does not::

    /usr/bin/python3 tests/support/rtsp_server.py --port 8554 --path /cam --codec h265 \
        --user cam --password secret

It prints ``ready`` on stdout once it listens, and stops on SIGTERM or SIGINT. Every client of
one path shares one encoder (a live source, as a camera is): moving colour bars, 640x360 at
25 fps with a keyframe every 2 s. ``--user``/``--password`` require that account, by digest
authentication (``--auth basic`` for basic).
"""

from __future__ import annotations

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402

ENCODERS = {
    "h264": "x264enc tune=zerolatency speed-preset=ultrafast key-int-max=50 bitrate=800 "
            "! h264parse ! rtph264pay name=pay0 pt=96 config-interval=1",
    "h265": "x265enc tune=zerolatency speed-preset=ultrafast key-int-max=50 bitrate=800 "
            "! h265parse ! rtph265pay name=pay0 pt=96 config-interval=1",
}


def launch_line(codec: str) -> str:
    # moving colour bars: neither black, uniform nor frozen, so every tick has a picture
    source = ("videotestsrc is-live=true pattern=smpte horizontal-speed=8 "
              "! video/x-raw,width=640,height=360,framerate=25/1 ! videoconvert")
    return f"( {source} ! {ENCODERS[codec]} )"


def protect(server: GstRtspServer.RTSPServer, factory: GstRtspServer.RTSPMediaFactory,
            user: str, password: str, method: str) -> None:
    auth = GstRtspServer.RTSPAuth()
    # one method at a time: PyGObject cannot combine the flags of this enum
    auth.set_supported_methods(getattr(GstRtsp.RTSPAuthMethod, method.upper()))
    token = GstRtspServer.RTSPToken()
    token.set_string("media.factory.role", "user")
    if method == "basic":
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
    else:
        auth.add_digest(user, password, token)
    server.set_auth(auth)
    permissions = GstRtspServer.RTSPPermissions()
    permissions.add_permission_for_role("user", "media.factory.access", True)
    permissions.add_permission_for_role("user", "media.factory.construct", True)
    factory.set_permissions(permissions)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/cam")
    parser.add_argument("--codec", choices=sorted(ENCODERS), default="h264")
    parser.add_argument("--user", default="")
    parser.add_argument("--password", default="")
    parser.add_argument("--auth", choices=["digest", "basic"], default="digest")
    args = parser.parse_args()

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch_line(args.codec))
    factory.set_shared(True)
    if args.user:
        protect(server, factory, args.user, args.password, args.auth)
    server.get_mount_points().add_factory(args.path, factory)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{args.port}", file=sys.stderr)
        return 1

    loop = GLib.MainLoop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, signum, lambda *_: loop.quit() or False)
    print("ready", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
