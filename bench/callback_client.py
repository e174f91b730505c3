"""CPU of one callback POST on the client side, as the dispatcher sends it (httpx AsyncClient,
kept-alive connection to a local receiver that answers 200 at once).

Measures the thread CPU time of the event loop thread only (the receiver runs in another
thread of this process and is not counted), over ``--requests`` sequential POSTs after a
warm-up, and prints ms of CPU per request. Used to find what the HTTP client adds per
snapshot; compare figures of runs on the same machine only.

    .venv/bin/python bench/callback_client.py --requests 2000
"""

from __future__ import annotations

import argparse
import asyncio
import http.server
import json
import sys
import threading
import time

import httpx


class _Ok(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return


async def measure(url: str, requests: int, warmup: int) -> float:
    body = json.dumps({"EventType": "LiveSnapshotCaptured", "JobId": "x" * 36}).encode()
    async with httpx.AsyncClient(timeout=5.0) as client:
        for _ in range(warmup):
            (await client.post(url, content=body)).raise_for_status()
        started = time.thread_time()
        for _ in range(requests):
            (await client.post(url, content=body)).raise_for_status()
        return (time.thread_time() - started) * 1000 / requests


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    args = parser.parse_args(argv)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        ms = asyncio.run(measure(url, args.requests, args.warmup))
    finally:
        server.shutdown()
    sniffio = "sniffio" in sys.modules
    print(json.dumps({"cpu_ms_per_request": round(ms, 3), "requests": args.requests,
                      "sniffio_installed": sniffio}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
