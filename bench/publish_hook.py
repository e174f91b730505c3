"""Time from publish to the first snapshot, with and without a publish hook, in the same run.

One ``livesnap serve`` (SQLite, local disk, ``LIVESNAP_HOOK_TOKEN`` set) and two nginx-rtmp
origins alike but for one thing: origin H calls livesnap's ``/hooks/streams`` from
``on_publish``/``on_publish_done``, origin P calls nothing. ``--pairs`` jobs are submitted on
each origin before anything is published, so every job waits for its stream; pair ``i`` is
published on both origins at once after its own wait (spread evenly over ``--min-wait`` …
``--max-wait`` seconds, as broadcasts start whenever they start). Reported per origin: the
seconds from starting the publisher to the job's first snapshot being listed (median, max,
each value), and the settings that decide the hook-less case (the waiting backoff cap).

    .venv/bin/python bench/publish_hook.py                    # 6 pairs, waits 5-60 s
    .venv/bin/python bench/publish_hook.py --pairs 2 --max-wait 12 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alibabacloud_ice20201109 import models as m
from tests.support.servers import Publisher, RtmpOrigin, make_clip, wait_stream_live
from tests.support.service import LivesnapServer, ice_client, recent_files

TOKEN = "bench-hook-token-0123456789"
OUTPUT = m.SubmitLiveSnapshotJobRequestSnapshotOutput(
    storage_type="local", endpoint="bench", bucket="hooks")


def origin(hook: str | None) -> RtmpOrigin:
    extra = "      idle_streams off;"
    if hook:
        extra += f"\n      on_publish {hook};\n      on_publish_done {hook};"
    return RtmpOrigin(app_extra=extra).start()


def submit(endpoint: str, url: str, name: str) -> str:
    return str(ice_client(endpoint).submit_live_snapshot_job(m.SubmitLiveSnapshotJobRequest(
        job_name=name, template_id="system", snapshot_output=OUTPUT,
        stream_input=m.SubmitLiveSnapshotJobRequestStreamInput(type="rtmp", url=url)
    )).body.job_id)


def first_snapshot_s(endpoint: str, job_id: str, since: float, limit_s: float) -> float | None:
    client = ice_client(endpoint)
    while time.monotonic() - since < limit_s:
        if recent_files(client, job_id):
            return time.monotonic() - since
        time.sleep(0.1)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--min-wait", type=float, default=5.0)
    parser.add_argument("--max-wait", type=float, default=60.0)
    parser.add_argument("--limit", type=float, default=90.0, help="give up on a job after this")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    clip = make_clip("720p")
    results: dict[str, list[float | None]] = {"hook": [], "no_hook": []}
    lock = threading.Lock()
    with tempfile.TemporaryDirectory() as folder, LivesnapServer(
        Path(folder) / "data", env={"LIVESNAP_HOOK_TOKEN": TOKEN}
    ) as server:
        hooked = origin(f"http://{server.endpoint}/hooks/streams?token={TOKEN}")
        plain = origin(None)
        publishers: list[Publisher] = []
        try:
            jobs = [(submit(server.endpoint, o.url(f"s{i}"), f"{kind}-{i}"), o, f"s{i}", kind)
                    for i in range(args.pairs)
                    for o, kind in ((hooked, "hook"), (plain, "no_hook"))]
            start = time.monotonic()
            step = (args.max_wait - args.min_wait) / max(1, args.pairs - 1)

            def run(pair: int) -> None:
                time.sleep(max(0.0, start + args.min_wait + pair * step - time.monotonic()))
                mine = [j for j in jobs if j[2] == f"s{pair}"]
                began: dict[str, float] = {}
                for job_id, where, key, _ in mine:
                    publisher = Publisher(clip, where.url(key))
                    with lock:
                        publishers.append(publisher)
                    began[job_id] = time.monotonic()
                    publisher.start()
                for _, where, key, _ in mine:
                    wait_stream_live(where, key, timeout=30)
                for job_id, _, _, kind in mine:
                    took = first_snapshot_s(server.endpoint, job_id, began[job_id], args.limit)
                    with lock:
                        results[kind].append(took)

            threads = [threading.Thread(target=run, args=(i,)) for i in range(args.pairs)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        finally:
            for publisher in publishers:
                publisher.stop()
            hooked.stop()
            plain.stop()

    summary: dict[str, object] = {"pairs": args.pairs, "waits_s": [args.min_wait, args.max_wait],
                                  "reconnect_max_s": 30}
    for kind, values in results.items():
        got = sorted(v for v in values if v is not None)
        summary[kind] = {"median_s": round(statistics.median(got), 2) if got else None,
                         "max_s": round(max(got), 2) if got else None,
                         "missing": len(values) - len(got),
                         "each_s": [None if v is None else round(v, 2) for v in values]}
    if args.json:
        print(json.dumps(summary))
        return
    print(f"publish -> first snapshot, {args.pairs} streams per origin, published after "
          f"{args.min_wait:.0f}-{args.max_wait:.0f} s of waiting")
    for kind in ("hook", "no_hook"):
        row = summary[kind]
        assert isinstance(row, dict)
        print(f"  {kind:8} median {row['median_s']} s  max {row['max_s']} s  "
              f"missing {row['missing']}  each {row['each_s']}")


if __name__ == "__main__":
    main()
