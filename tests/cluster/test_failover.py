"""Capture shards on a real multi-node Ray cluster (``ray.cluster_utils.Cluster``, loopback
only) with a real PostgreSQL, a real nginx-rtmp origin and looped H.264 publishers, driven
through ``livesnap serve --engine ray`` with the official SDK.

One scenario, in order (docs/cluster.md): 20 jobs spread over 6 shards on 3 nodes; a node is
killed hard and its jobs capture again on other nodes within 15 s; another node's raylet is
frozen (SIGSTOP) past the detection time, its shards restart elsewhere and the stale
instances, still running, stop themselves (no player left on the origin, no record written
with their epoch); the raylet is resumed. Throughout, the API answers, and no job's overwrite
object (in a real S3 bucket, SeaweedFS) goes back in time. At the end no job has a duplicate
record, every overwrite object holds at least its job's newest record, no sequence object is
without a record, the ticks missed are at most those the shards reported, and no Ray process
is left. (A stale instance writing late is rare here: its first refused record stops it. The
late write itself is made to happen, and refused, in tests/integration/test_fenced_objects.py.) Marked ``cluster``: the quick suite skips it (``-m "not cluster"``).

Before it, in this module so that the two never run Ray side by side (a file runs whole on one
xdist worker): ``scripts/staging-cluster.sh`` starts a head and 2 workers, all on loopback
with Ray's token authentication, ``livesnap cluster status`` sees the 3 nodes with the token
and is refused without it, and ``stop`` leaves none of its processes behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psutil
import pytest
from alibabacloud_ice20201109 import models as m

from tests.support.seaweed import BUCKET, SeaweedServer
from tests.support.servers import REPO_ROOT, Publisher, RedisServer, RtmpOrigin
from tests.support.service import LivesnapServer, core_client, core_request, ice_client
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.integration, pytest.mark.timeout(400)]

# Ray reads this once, when it is imported: at 0 the nodes of ray.cluster_utils.Cluster get
# 127.0.0.1 and listen on loopback only; at Linux's default, 1, they took this machine's
# network address and listened on every interface
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
import ray  # noqa: E402  (livesnap[ray]: scripts/test.sh installs it)

SHARDS = 6
JOBS = 20
STREAMS = 4
INTERVAL_S = 5
NAMESPACE = "livesnap-test"
# the fast health checks of docs/cluster.md: 2-3 s detection on loopback
FAST_CHECKS = {"health_check_initial_delay_ms": 1000, "health_check_period_ms": 500,
               "health_check_timeout_ms": 500, "health_check_failure_threshold": 3}
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "disabled"}
RESUME_WITHIN_S = 15.0
OVERWRITE = "{JobId}/latest.jpg"  # the failover test's jobs write it to a real S3 bucket


def ray_pids() -> set[int]:
    """Every process of Ray on this machine (raylet, gcs, workers, agents)."""
    found = set()
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if ("ray" in cmd and ("raylet" in cmd or "gcs_server" in cmd or "default_worker" in cmd
                              or "dashboard" in cmd or "runtime_env" in cmd or "log_monitor"
                              in cmd or "ray/_private" in cmd)):
            found.add(proc.info["pid"])
    return found


STAGING = REPO_ROOT / "scripts" / "staging-cluster.sh"


def staging(action: str, directory: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(STAGING), action, "--dir", directory, *args],
                          env={**os.environ, "PYTHON": sys.executable}, capture_output=True,
                          text=True, timeout=120)


def processes_under(directory: str) -> list[str]:
    """Live processes with ``directory`` in their command line or a file open under it."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        with contextlib.suppress(psutil.Error):
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if (directory in " ".join(proc.info["cmdline"] or [])
                    or any(f.path.startswith(directory) for f in proc.open_files())):
                found.append(f"{proc.pid} {proc.name()}")
    return found


def test_staging_script_starts_a_loopback_cluster_with_tokens_and_stops_only_it() -> None:
    directory = tempfile.mkdtemp(prefix="ls")  # Ray's socket paths under it must stay short
    started = False
    redis = RedisServer().start()
    try:
        up = staging("start", directory, "--workers", "2", "--shards", "4",
                     "--redis", redis.address)
        started = True
        assert up.returncode == 0, up.stderr[-3000:]
        assert "a head and 2 worker node(s)" in up.stdout, up.stdout
        assert "every listener on loopback" in up.stdout, up.stdout
        assert "cluster up --shards 4 --resource shard --ray-address 127.0.0.1:" in up.stdout
        env_file = Path(directory, "env.sh").read_text()
        address = env_file.split("LIVESNAP_RAY_ADDRESS=")[1].split()[0]
        assert address.startswith("127.0.0.1:")

        # `ray status` has nothing to show until the autoscaler's first report, a few s in,
        # and that report may come before the workers registered: wait for all three
        shown = wait_until(lambda: (s := staging("status", directory)).returncode == 0
                           and len(active_nodes(s.stdout)) == 3 and s, 60,
                           "ray status lists the head and both workers")
        assert len(active_nodes(shown.stdout)) == 3, shown.stdout
        assert "every listener on loopback" in shown.stdout

        token = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": f"{directory}/auth_token"}
        status = livesnap("cluster", "status", "--shards", "4", "--ray-address", address,
                          "--json", env=token)
        assert status.returncode == 0, status.stderr[-3000:]
        *shards, last = [json.loads(line) for line in status.stdout.splitlines()]
        assert [r["state"] for r in shards] == ["missing"] * 4  # no `cluster up` here
        nodes = last["nodes"]
        assert [(n["alive"], n["address"], n["resource_total"]) for n in nodes] == [
            (True, "127.0.0.1", 4)] * 3
        assert [n["head"] for n in nodes] == [True, False, False]

        # no address: the cluster this machine's node recorded, never just any GCS around
        elsewhere = tempfile.mkdtemp(prefix="ls")
        try:
            alone = livesnap("cluster", "status", "--shards", "4",
                             env={**token, "RAY_TMPDIR": elsewhere, "RAY_ADDRESS": ""})
        finally:
            shutil.rmtree(elsewhere, ignore_errors=True)
        assert alone.returncode == 2 and "no Ray node was started on this machine" in (
            alone.stderr), alone.stderr[-2000:]
        # ... and, as Ray's "auto" would, token mode when RAY_AUTH_MODE is unset and the
        # token is in ~/.ray/auth_token
        home = Path(directory, "home")
        (home / ".ray").mkdir(parents=True)
        shutil.copy(Path(directory, "auth_token"), home / ".ray" / "auth_token")
        assert "RAY_AUTH_MODE" not in os.environ
        local = livesnap("cluster", "status", "--shards", "4", "--json",
                         env={"HOME": str(home), "RAY_TMPDIR": directory, "RAY_ADDRESS": ""})
        assert local.returncode == 0, local.stderr[-2000:]
        assert len(json.loads(local.stdout.splitlines()[-1])["nodes"]) == 3

        # without the token the GCS refuses the driver: Ray gives up after ~20 s
        refused = livesnap("cluster", "status", "--ray-address", address,
                           env={"RAY_AUTH_MODE": "disabled"})
        assert refused.returncode == 2
        assert "cannot join the Ray cluster: Failed to connect" in refused.stderr
        assert "RAY_AUTH_MODE=token" in refused.stderr.splitlines()[-1]

        # --redis: the head can be killed and a new one started in its place
        assert json.loads(status.stdout.splitlines()[-1])["gcs_storage"] == "redis"
        killed = staging("kill-head", directory)
        assert killed.returncode == 0 and "killed the head's" in killed.stdout, killed.stderr
        assert "the head is down" in staging("status", directory).stdout
        again = staging("start-head", directory)
        assert again.returncode == 0, again.stderr[-3000:]
        assert f"a new head at {address}" in again.stdout
        status = livesnap("cluster", "status", "--shards", "4", "--ray-address", address,
                          "--json", env=token)
        assert status.returncode == 0, status.stderr[-3000:]
        nodes = json.loads(status.stdout.splitlines()[-1])["nodes"]
        assert [(n["alive"], n["head"]) for n in nodes] == [
            (True, True), (True, False), (True, False), (False, False)], nodes
    finally:
        if started:
            down = staging("stop", directory)
            keys_left = redis.keys()
        redis.stop()
        shutil.rmtree(directory, ignore_errors=True)
    assert keys_left == 0  # stop removed the cluster's state from Redis
    assert down.returncode == 0 and "stopped" in down.stdout, down.stderr
    assert wait_until(lambda: not processes_under(directory), 10, "staging processes gone")
    assert not Path(directory, "ray").exists()


NODE_ARGS = {"num_cpus": 1, "resources": {"shard": 10}, "object_store_memory": 80 << 20}


def active_nodes(status: str) -> list[str]:
    """The node lines under "Active:" in `ray status` output (none before its first report)."""
    if "Active:" not in status:
        return []
    active = status.split("Active:")[1].split("Pending:")[0]
    return [line for line in active.splitlines() if "node_" in line]


def head_args(short: str) -> dict[str, object]:
    return {**NODE_ARGS, "include_dashboard": False, "temp_dir": f"{short}/ray",
            "_system_config": FAST_CHECKS}


@contextlib.contextmanager
def redis_backed(redis: RedisServer | None) -> Iterator[None]:
    """Ray's GCS fault tolerance for a head started inside: its state in ``redis`` (the
    head's process reads ``RAY_REDIS_ADDRESS`` as it starts; the namespace keeps the keys of
    this cluster apart from any other's in the same Redis)."""
    if redis is None:
        yield
        return
    keys = {"RAY_REDIS_ADDRESS": redis.address,
            "RAY_external_storage_namespace": "livesnap-test"}
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(keys)
    try:
        yield
    finally:
        restore(saved)


def restore(saved: dict[str, str | None]) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@contextlib.contextmanager
def loopback_cluster(redis: RedisServer | None = None) -> Iterator[tuple[object, list[object], str]]:
    """A head and 2 workers on loopback (the fast health checks), this process a driver.

    With ``redis``, the head is fault tolerant, and the first worker has a temp directory of
    its own, for every driver to attach to it (``LIVESNAP_RAY_TEMP_DIR``) instead of to the
    head: a driver dies with the node it is attached to, and the head is to be killed."""
    from ray.cluster_utils import Cluster

    before = ray_pids()
    short = tempfile.mkdtemp(prefix="lr")  # AF_UNIX paths under it must stay short
    saved = {k: os.environ.get(k) for k in [*RAY_ENV, "RAY_TMPDIR"]}
    os.environ.update(RAY_ENV, RAY_TMPDIR=short)
    with redis_backed(redis):
        cluster = Cluster(initialize_head=True, head_node_args=head_args(short))
    workers = [cluster.add_node(**NODE_ARGS, **(
        {"temp_dir": f"{short}/w0"} if redis is not None and i == 0 else {})) for i in range(2)]
    cluster.wait_for_nodes()
    nodes = [cluster.head_node, *workers]
    assert {node.node_ip_address for node in nodes} == {"127.0.0.1"}
    open_ports = listening(nodes)
    assert open_ports and all(ip in LOOPBACK for ip, _ in open_ports), open_ports
    ray.init(address=cluster.address, namespace=NAMESPACE, log_to_driver=False,
             _temp_dir=f"{short}/w0" if redis is not None else None)
    try:
        yield cluster, workers, short
    finally:
        ray.shutdown()
        cluster.shutdown()
        leftovers = ray_pids() - before
        for pid in leftovers:  # agents reparented to init survive shutdown
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(pid).kill()
        restore(saved)
        alive = wait_pids_alive(leftovers) if leftovers else set()
        shutil.rmtree(short, ignore_errors=True)
        RAY_DIRS.append(short)
        assert not alive, alive


# A second Ray session in this process made the first one's session directory again, a
# minute after it was removed (Ray's in-process logging); removed again at the module's end
RAY_DIRS: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def _remove_ray_dirs() -> Iterator[None]:
    yield
    for directory in RAY_DIRS:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def ray_cluster() -> Iterator[tuple[object, list[object], str]]:
    """Per test, so that no two Ray clusters ever run side by side."""
    with loopback_cluster() as made:
        yield made


@pytest.fixture
def ft_cluster() -> Iterator[tuple[object, list[object], str, RedisServer]]:
    """A cluster whose head is fault tolerant (GCS state in a Redis of its own)."""
    with RedisServer() as redis, loopback_cluster(redis) as (cluster, workers, short):
        yield cluster, workers, short, redis


LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}


def listening(nodes: list[object]) -> list[tuple[str, int]]:
    """The TCP addresses the nodes' own processes (GCS, raylets, agents) listen on."""
    found = []
    for node in nodes:
        for infos in node.all_processes.values():  # type: ignore[attr-defined]
            for info in infos:
                with contextlib.suppress(psutil.Error):
                    found += [(c.laddr.ip, c.laddr.port) for c in psutil.Process(
                        info.process.pid).net_connections(kind="tcp")
                        if c.status == psutil.CONN_LISTEN]
    return found


def wait_pids_alive(pids: set[int]) -> set[int]:
    deadline = time.monotonic() + 10
    alive = set(pids)
    while alive and time.monotonic() < deadline:
        alive = {p for p in alive if psutil.pid_exists(p)
                 and psutil.Process(p).status() != psutil.STATUS_ZOMBIE}
        time.sleep(0.2)
    return alive


@pytest.fixture(scope="module")
def streams(make_test_clip) -> Iterator[tuple[RtmpOrigin, list[Publisher]]]:
    clip = make_test_clip("360p")
    with RtmpOrigin() as origin:
        publishers = [Publisher(clip, origin.url(f"cl-{i}")).start() for i in range(STREAMS)]
        try:
            for i in range(STREAMS):
                wait_until(lambda i=i: (s := origin.stream_status(f"cl-{i}")) and s.publishing,
                           20, f"stream cl-{i} live")
            yield origin, publishers
        finally:
            for publisher in publishers:
                publisher.stop()


class PgReader:
    """Reads the shared PostgreSQL database from the side, as an operator would."""

    def __init__(self, url: str) -> None:
        self.dsn = url.replace("postgresql+asyncpg://", "postgresql://")

    def _rows(self, sql: str, *args: object) -> list[asyncpg.Record]:
        async def run() -> list[asyncpg.Record]:
            conn = await asyncpg.connect(self.dsn)
            try:
                return await conn.fetch(sql, *args)
            finally:
                await conn.close()

        return asyncio.run(run())

    def jobs_with_files(self) -> set[str]:
        return {r[0] for r in self._rows("SELECT DISTINCT job_id FROM files")}

    def newest_by_job(self) -> dict[str, int]:
        return {r[0]: int(r[1]) for r in self._rows(
            "SELECT job_id, max(create_ms) FROM files GROUP BY job_id")}

    def object_keys(self) -> set[str]:
        return {r[0] for r in self._rows("SELECT object_key FROM files")}

    def newest_ms(self, job_id: str) -> int:
        rows = self._rows("SELECT max(create_ms) FROM files WHERE job_id = $1", job_id)
        return int(rows[0][0] or 0)

    def records_after(self, job_id: str, after_ms: float) -> int:
        rows = self._rows("SELECT count(*) FROM files WHERE job_id = $1 AND create_ms > $2",
                          job_id, int(after_ms))
        return int(rows[0][0])

    def first_after_ms(self, job_id: str, after_ms: float) -> int:
        rows = self._rows("SELECT min(create_ms) FROM files WHERE job_id = $1 AND create_ms > $2",
                          job_id, int(after_ms))
        return int(rows[0][0] or 0)

    def epochs(self) -> dict[str, tuple[int, int]]:
        return {r[0]: (int(r[1]), int(r[2]))
                for r in self._rows("SELECT shard, epoch, taken_ms FROM shard_epochs")}

    def records_by(self, writers: list[str], after_ms: int) -> list[tuple[str, int, str]]:
        rows = self._rows("SELECT job_id, create_ms, writer FROM files "
                          "WHERE writer = ANY($1::text[]) AND create_ms > $2", writers, after_ms)
        return [(r[0], int(r[1]), r[2]) for r in rows]

    def duplicate_keys(self) -> list[tuple[str, str, int]]:
        rows = self._rows("SELECT job_id, object_key, count(*) FROM files "
                          "GROUP BY job_id, object_key HAVING count(*) > 1")
        rows += self._rows("SELECT job_id, sequence::text, count(*) FROM files "
                           "GROUP BY job_id, sequence HAVING count(*) > 1")
        return [(r[0], r[1], int(r[2])) for r in rows]

    def missed_ticks(self, interval_ms: int) -> dict[str, int]:
        """Per job: the ticks between consecutive records that have no record."""
        missed: Counter[str] = Counter()
        last: dict[str, int] = {}
        for job_id, create_ms in self._rows(
                "SELECT job_id, create_ms FROM files ORDER BY job_id, create_ms"):
            if job_id in last:
                missed[job_id] += max(0, round((create_ms - last[job_id]) / interval_ms) - 1)
            last[job_id] = create_ms
        return dict(missed)


class ApiWatch:
    """Calls GetLiveSnapshotJob every 0.5 s in the background and counts failures."""

    def __init__(self, client, job_id: str) -> None:
        self.client, self.job_id = client, job_id
        self.calls = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self.client.get_live_snapshot_job(m.GetLiveSnapshotJobRequest(job_id=self.job_id))
                self.calls += 1
            except Exception as exc:
                self.failures.append(repr(exc)[:200])

    def __enter__(self) -> ApiWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


class Bucket:
    """The test's S3 bucket, read from the side: each job's overwrite object and its keys."""

    def __init__(self, seaweed: SeaweedServer) -> None:
        from livesnap.config import StorageCredential
        from livesnap.outputs.objectstore import ObjectStoreSink
        cred = StorageCredential(**seaweed.credential())
        self.sink = ObjectStoreSink.for_target(cred, cred.endpoint, BUCKET)

    def overwrite_ms(self, job_id: str) -> int | None:
        """The capture time the job's overwrite object carries (None: not there yet)."""
        from livesnap.errors import OutputError
        try:
            _, attributes = asyncio.run(self.sink.read(OVERWRITE.format(JobId=job_id)))
        except OutputError:
            return None
        return int(attributes["capture-time-ms"])

    def sequence_objects(self, jobs: list[str], older_than_s: float) -> set[str]:
        """The objects of ``jobs`` but their overwrite objects, last written over
        ``older_than_s`` ago (the bucket is the test session's: other tests write to it)."""
        import obstore
        cutoff = time.time() - older_than_s
        return {o["path"] for job_id in jobs
                for batch in obstore.list(self.sink.store, prefix=f"{job_id}/") for o in batch
                if o["path"] != OVERWRITE.format(JobId=job_id)
                and o["last_modified"].timestamp() < cutoff}


class OverwriteWatch:
    """Reads every job's overwrite object in the background, again and again: the capture
    time it carries may never go back (a replaced shard instance writing late)."""

    def __init__(self, bucket: Bucket, jobs: list[str]) -> None:
        self.bucket, self.jobs = bucket, jobs
        self.rounds = 0
        self.went_back: list[tuple[str, int, int]] = []
        self._seen: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            for job_id in self.jobs:
                shown = self.bucket.overwrite_ms(job_id)
                if shown is None:
                    continue
                if shown < self._seen.get(job_id, 0):
                    self.went_back.append((job_id, self._seen[job_id], shown))
                self._seen[job_id] = max(shown, self._seen.get(job_id, 0))
            self.rounds += 1

    def __enter__(self) -> OverwriteWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def test_failover_moves_jobs_fences_the_stale_shard_and_loses_nothing(
    ray_cluster, streams, postgres_url, seaweed, tmp_path
):
    cluster, workers, short = ray_cluster
    origin, _ = streams
    from livesnap.cluster.rayengine import cluster_status
    from livesnap.shards.assign import owner, shard_names

    names = shard_names(SHARDS)
    data_dir = tmp_path / "data"
    env = {"LIVESNAP_ENGINE": "ray", "LIVESNAP_RAY_ADDRESS": cluster.address,
           "LIVESNAP_RAY_NAMESPACE": NAMESPACE, "LIVESNAP_SHARDS": str(SHARDS),
           "LIVESNAP_DATABASE_URL": postgres_url, "LIVESNAP_RW_TIMEOUT_S": "2",
           "LIVESNAP_RECONNECT_MAX_S": "2", "LIVESNAP_SHARD_RECONCILE_S": "1",
           "LIVESNAP_STORAGE_CONFIG": json.dumps([seaweed.credential()]),
           "LIVESNAP_REBALANCE_S": "0", "RAY_TMPDIR": short, **RAY_ENV}
    s3_output = m.SubmitLiveSnapshotJobRequestSnapshotOutput(
        storage_type="s3", endpoint=seaweed.endpoint, bucket=BUCKET)
    bucket = Bucket(seaweed)
    up = livesnap("cluster", "up", "--resource", "shard", env=env, data_dir=data_dir)
    assert up.returncode == 0, up.stderr
    assert up.stdout.count(" running ") == SHARDS, up.stdout
    with LivesnapServer(data_dir, env=env) as server:
        before = {r["name"]: r for r in cluster_status(names, NAMESPACE)}
        assert len({r["node"] for r in before.values()}) == 3, before  # SPREAD: every node

        client = ice_client(server.endpoint)
        template = client.create_live_snapshot_template(m.CreateLiveSnapshotTemplateRequest(
            template_name="cluster", time_interval=INTERVAL_S, overwrite_format=OVERWRITE,
            sequence_format="{JobId}/{Sequence}.jpg")).body.template_id
        jobs = {}
        for i in range(JOBS):
            job_id = submit_job(client, template, f"c{i}", origin.url(f"cl-{i % STREAMS}"),
                                output=s3_output)
            jobs[job_id] = owner(job_id, names)
        pg = PgReader(postgres_url)
        wait_until(lambda: len(pg.jobs_with_files()) == JOBS, 60, "every job has a snapshot")

        with ApiWatch(client, next(iter(jobs))) as watch, OverwriteWatch(
                bucket, list(jobs)) as pictures:
            # 1. a node dies: its shards restart elsewhere and their jobs capture again
            victim = next(w for w in workers if any(
                r["node"] == w.node_id for r in before.values()))
            moved = {n for n, r in before.items() if r["node"] == victim.node_id}
            moved_jobs = [j for j, s in jobs.items() if s in moved]
            assert moved_jobs, "no job on the victim's shards"
            killed_at = time.time()
            cluster.remove_node(victim, allow_graceful=False)
            resumed = wait_until(
                lambda: all(pg.newest_ms(j) > killed_at * 1000 for j in moved_jobs) and
                max(pg.first_after_ms(j, killed_at * 1000) for j in moved_jobs),
                60, "moved jobs capture again")
            took_s = resumed / 1000 - killed_at
            assert took_s < RESUME_WITHIN_S, f"jobs resumed after {took_s:.1f} s"
            after_kill = {r["name"]: r for r in cluster_status(names, NAMESPACE)}
            for name in moved:
                assert after_kill[name]["node"] != victim.node_id
                assert after_kill[name]["restarted"] and after_kill[name]["epoch"] == 2

            # 2. a node hangs: its raylet is frozen; Ray restarts its shards elsewhere while the
            # old instances keep running; they must notice the newer epoch and stop
            frozen_node = next(w for w in workers if w is not victim)
            frozen = {n for n, r in after_kill.items() if r["node"] == frozen_node.node_id}
            assert frozen, after_kill
            old_epochs = {n: after_kill[n]["epoch"] for n in frozen}
            raylet = frozen_node.all_processes["raylet"][0].process
            os.kill(raylet.pid, signal.SIGSTOP)
            try:
                wait_until(lambda: (e := pg.epochs()) and all(
                    e[n][0] > old_epochs[n] for n in frozen) and e, 60, "new epochs taken")
                # The takeovers have committed by now. A stale record's create_ms is its
                # capture time, before its commit, so one captured after this instant
                # committed after a takeover: fencing failed. (The epoch rows' taken_ms is
                # no such bound: it is read before the takeover waits for a stale write's
                # FOR SHARE lock, so a write may legitimately commit after it.)
                fenced_at_ms = int(time.time() * 1000)
                # the stale instances stop reading: every stream has its publisher plus one
                # player per shard with jobs on it again (the new instances' players; the jobs
                # of one shard share their stream's connection)
                per_stream = {s: len({shard for i, shard in enumerate(jobs.values())
                                      if i % STREAMS == s}) for s in range(STREAMS)}
                wait_until(lambda: all(
                    origin.stream_status(f"cl-{i}").nclients == per_stream[i] + 1
                    for i in range(STREAMS)), 30, "stale shards let go of their streams")
                stale = pg.records_by(
                    [f"{n}:{old_epochs[n]}" for n in frozen], after_ms=fenced_at_ms + 1)
                assert stale == [], f"records written by fenced instances: {stale}"
            finally:
                os.kill(raylet.pid, signal.SIGCONT)
                raylet.poll()  # reap it: workers take a zombie raylet for alive
            time.sleep(INTERVAL_S + 1)

        assert watch.failures == [] and watch.calls > 20, (watch.calls, watch.failures[:5])
        # 3. no overwrite object went back in time, each holds at least its job's newest
        # record (read first: an object is written before its record), and no object was
        # left without a record (those of the last 5 s may still be on their way to one)
        assert pictures.went_back == [] and pictures.rounds > 20, (
            pictures.rounds, pictures.went_back[:5])
        newest = pg.newest_by_job()
        older = {j: (bucket.overwrite_ms(j), newest[j]) for j in jobs}
        assert all(shown is not None and shown >= record for shown, record in older.values()
                   ), older
        objects = bucket.sequence_objects(list(jobs), older_than_s=5)
        orphans = objects - pg.object_keys()
        assert objects and orphans == set(), sorted(orphans)[:5]
        # 4. nothing recorded twice; the ticks missed are those the shards reported
        shown = livesnap("cluster", "status", "--json", env=env)
        assert shown.returncode == 0, shown.stderr
        *status, last = [json.loads(line) for line in shown.stdout.splitlines()]
        assert sorted(r["name"] for r in status) == names
        # the nodes line: the killed and the frozen node shown dead, every shard on a live one
        nodes = {n["node_id"]: n for n in last["nodes"]}
        assert not nodes[victim.node_id]["alive"] and not nodes[frozen_node.node_id]["alive"]
        assert sorted(s for n in nodes.values() if n["alive"] for s in n["shards"]) == names
        assert all(r["state"] == "running" for r in status), status
        assert sum(r["takeovers"] for r in status) >= 1  # the last takeovers, in memory
        frozen_jobs = [j for j, s in jobs.items() if s in frozen]
        duplicates = pg.duplicate_keys()
        assert duplicates == [], duplicates
        # every tick without a record is in the job's MissedTicks (persisted, in the API)
        actual = pg.missed_ticks(INTERVAL_S * 1000)
        acs = core_client(server.endpoint)  # raw JSON: the ICE SDK drops extension fields
        reported = {j: json.loads(acs.do_action_with_exception(core_request(
            "GetLiveSnapshotJob", "GET", {"JobId": j})))["MissedTicks"] for j in jobs}
        unreported = {j: (n, reported[j]) for j, n in actual.items() if n > reported[j]}
        assert unreported == {}, f"missed ticks beyond the reported ones: {unreported}"
        # a takeover usually costs the moved jobs a tick or two, counted above; how many
        # depends on how fast this machine's Ray restarts the shards (none at all is fine)
        taken_over = set(moved_jobs) | set(frozen_jobs)
        assert all(reported[j] >= actual.get(j, 0) for j in taken_over)
        print(json.dumps({"resume_s": round(took_s, 1), "missed_actual": sum(actual.values()),
                          "missed_reported": sum(reported.values()),
                          "api_calls": watch.calls}))

    down = livesnap("cluster", "down", env=env)
    assert down.returncode == 0 and f"removed {SHARDS} shard(s)" in down.stdout, down.stderr
    assert all(r["state"] == "missing" for r in cluster_status(names, NAMESPACE))
    # the jobs stay started (the next cluster up resumes them) and say why nothing captures
    states = pg._rows("SELECT status, last_error FROM jobs")
    assert states and all(status == "started" and "cluster down" in error
                          for status, error in states), states
    assert f"{len(states)} started job(s) wait for the next" in down.stdout


def submit_job(client: object, template: str, name: str, url: str, *,
               output: m.SubmitLiveSnapshotJobRequestSnapshotOutput | None = None) -> str:
    """Submit a job on ``url`` to ``output`` (default: an OSS bucket the local fallback
    stands in for); its id."""
    return client.submit_live_snapshot_job(m.SubmitLiveSnapshotJobRequest(  # type: ignore[attr-defined]
        job_name=name, template_id=template,
        stream_input=m.SubmitLiveSnapshotJobRequestStreamInput(type="rtmp", url=url),
        snapshot_output=output or m.SubmitLiveSnapshotJobRequestSnapshotOutput(
            storage_type="oss", endpoint="oss-cn-shanghai.aliyuncs.com", bucket="bucket-1"),
    )).body.job_id


def livesnap(*args: str, env: dict[str, str], data_dir: Path | None = None
             ) -> subprocess.CompletedProcess[str]:
    """The ``livesnap`` CLI as a user runs it, with the test cluster's settings."""
    extra = ["--data-dir", str(data_dir)] if data_dir is not None else []
    return subprocess.run([sys.executable, "-m", "livesnap", *args, *extra],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=120)


# without a head for longer than a tick and its keyframe (5 s + a GOP of 2 s): a record of
# every job on the other nodes in that time shows that they kept capturing
HEAD_DOWN_S = 8


def shards_on(rows: dict[str, dict[str, object]]) -> dict[str, list[str]]:
    """node id → the shards running on it."""
    placed: dict[str, list[str]] = {}
    for name, row in rows.items():
        placed.setdefault(str(row.get("node", "")), []).append(name)
    return placed


def test_the_head_fails_capture_goes_on_a_new_head_takes_over_and_shards_rebalance(
    ft_cluster, streams, postgres_url, tmp_path
):
    """The head (GCS and raylet) is killed hard; the shards on the other nodes keep capturing;
    a new head started with the same Redis finds the cluster again, the head's shards restart
    on live nodes, new jobs start. Then a worker dies and a new one joins: an API node's
    automatic rebalance moves shards onto it until every node holds two, each moved shard's
    old instance stopped before its new one writes. No record twice."""
    cluster, workers, short, redis = ft_cluster
    origin, _ = streams
    from livesnap.cluster.rayengine import cluster_status
    from livesnap.shards.assign import owner, shard_names

    names = shard_names(SHARDS)
    data_dir = tmp_path / "data"
    env = {"LIVESNAP_ENGINE": "ray", "LIVESNAP_RAY_ADDRESS": cluster.address,
           "LIVESNAP_RAY_NAMESPACE": NAMESPACE, "LIVESNAP_SHARDS": str(SHARDS),
           "LIVESNAP_RAY_TEMP_DIR": f"{short}/w0",  # every driver on a worker, none on the head
           "LIVESNAP_DATABASE_URL": postgres_url, "LIVESNAP_RW_TIMEOUT_S": "2",
           "LIVESNAP_RECONNECT_MAX_S": "2", "LIVESNAP_SHARD_RECONCILE_S": "1",
           "LIVESNAP_STORAGE_FALLBACK": "true", "LIVESNAP_REBALANCE_S": "0",
           "RAY_TMPDIR": short, **RAY_ENV}
    figures: dict[str, float] = {}
    up = livesnap("cluster", "up", "--resource", "shard", env=env, data_dir=data_dir)
    assert up.returncode == 0, up.stderr
    pg = PgReader(postgres_url)
    with LivesnapServer(data_dir, env=env) as server:
        rows = {r["name"]: r for r in cluster_status(names, NAMESPACE)}
        head_id = cluster.head_node.node_id
        on_head = set(shards_on(rows).get(head_id, []))
        assert on_head and len(shards_on(rows)) == 3, rows  # SPREAD: 2 on each node
        client = ice_client(server.endpoint)
        template = client.create_live_snapshot_template(m.CreateLiveSnapshotTemplateRequest(
            template_name="ft", time_interval=INTERVAL_S,
            sequence_format="{JobId}/{Sequence}.jpg")).body.template_id

        def submit(i: int) -> str:
            return submit_job(client, template, f"ft{i}", origin.url(f"cl-{i % STREAMS}"))

        jobs = {job_id: owner(job_id, names) for job_id in map(submit, range(12))}
        # Job ids are random: about once in 130 runs none of the 12 hashes to the head's two
        # shards. More jobs until both sides have one (the test needs both).
        for extra in range(100, 124):
            if {*jobs.values()} & on_head and {*jobs.values()} - on_head:
                break
            job_id = submit(extra)
            jobs[job_id] = owner(job_id, names)
        wait_until(lambda: len(pg.jobs_with_files()) == len(jobs), 60, "every job has a snapshot")
        head_jobs = [j for j, s in jobs.items() if s in on_head]
        other_jobs = [j for j, s in jobs.items() if s not in on_head]
        assert head_jobs and other_jobs, jobs

        with ApiWatch(client, other_jobs[0]) as watch:
            # 1. the head dies: GCS, raylet and its shards, at once
            gcs_port = cluster.head_node._ray_params.gcs_server_port
            killed_at = time.time()
            cluster.remove_node(cluster.head_node, allow_graceful=False)
            # a command to a shard on another node goes straight to its process
            acs = core_client(server.endpoint)
            shot = json.loads(acs.do_action_with_exception(core_request(
                "SendLiveSnapshotJobCommand", "POST",
                body={"JobId": other_jobs[0], "Command": "capture"})))
            assert shot["Snapshot"]["OssObject"], shot
            figures["capture_now_headless_s"] = time.time() - killed_at
            time.sleep(max(0.0, killed_at + HEAD_DOWN_S - time.time()))
            # the shards on the other nodes kept capturing, every job of theirs
            counts = {j: pg.records_after(j, killed_at * 1000) for j in other_jobs}
            assert all(n >= 1 for n in counts.values()), counts
            figures["records_while_headless"] = sum(counts.values())

            # 2. a new head on the same address with the same Redis
            restarted_at = time.time()
            with redis_backed(redis):
                cluster.add_node(**head_args(short), gcs_server_port=gcs_port)
            figures["new_head_start_s"] = time.time() - restarted_at
            shown = livesnap("cluster", "status", "--json", env=env)
            assert shown.returncode == 0, shown.stderr[-3000:]
            figures["status_answers_s"] = time.time() - restarted_at
            *status, last = [json.loads(line) for line in shown.stdout.splitlines()]
            assert [r["name"] for r in status] == names and last["gcs_storage"] == "redis"
            nodes = {n["node_id"]: n for n in last["nodes"]}
            assert not nodes[head_id]["alive"], nodes[head_id]
            assert [n["head"] for n in last["nodes"] if n["alive"]] == [True, False, False]
            # the old head's shards restart on live nodes and their jobs capture again
            resumed = wait_until(
                lambda: all(pg.first_after_ms(j, restarted_at * 1000) for j in head_jobs) and
                max(pg.first_after_ms(j, restarted_at * 1000) for j in head_jobs),
                60, "the head's jobs capture again")
            figures["head_jobs_capture_again_s"] = resumed / 1000 - restarted_at
            rows = {r["name"]: r for r in cluster_status(names, NAMESPACE)}
            assert all(r["state"] == "running" for r in rows.values()), rows
            assert all(rows[n]["restarted"] for n in on_head)
            # ... the other shards were never interrupted: the same instances
            assert all(not rows[n]["restarted"] and rows[n]["epoch"] == 1
                       for n in names if n not in on_head), rows
            # ... and a new job starts and captures
            started = time.time()
            new_job = submit(12)
            jobs[new_job] = owner(new_job, names)
            wait_until(lambda: pg.newest_ms(new_job), 30, "the new job captures")
            figures["new_job_first_snapshot_s"] = time.time() - started

            # 3. a worker (not the drivers' own) dies: its shards pile onto the others; a new
            # node joins, empty, and an API node's automatic rebalance moves shards onto it
            victim = workers[1]
            cluster.remove_node(victim, allow_graceful=False)
            wait_until(lambda: all(r["state"] == "running" and r["node"] != victim.node_id
                                   for r in cluster_status(names, NAMESPACE)),
                       30, "the victim's shards run elsewhere")
            joined_at = time.time()
            joined = cluster.add_node(**NODE_ARGS)
            before = {r["name"]: r for r in cluster_status(names, NAMESPACE)}
            assert joined.node_id not in shards_on(before)
            balancing = {**env, "LIVESNAP_REBALANCE_S": "1"}  # this API node checks each second
            with LivesnapServer(tmp_path / "data2", env=balancing) as balancer:
                after = wait_until(lambda: (rows := {r["name"]: r for r in cluster_status(
                    names, NAMESPACE)}) and all(r["state"] == "running" for r in rows.values())
                    and sorted(map(len, shards_on(rows).values())) == [2, 2, 2] and rows,
                    60, "every node holds two shards")
                figures["rebalanced_after_join_s"] = time.time() - joined_at
                log = balancer.log()
            placed = shards_on(after)
            assert len(placed[joined.node_id]) == 2, placed
            moved = {n for n in names if after[n]["node"] != before[n]["node"]}
            fewest = sum(max(0, len(held) - 2) for held in shards_on(before).values())
            assert len(moved) == fewest, (shards_on(before), placed, log[-3000:])
            for name in moved:  # a new instance, a new epoch; the old one writes no more
                assert after[name]["epoch"] == before[name]["epoch"] + 1
            balanced_at = time.time()
            moved_jobs = [j for j, s in jobs.items() if s in moved]
            resumed = wait_until(
                lambda: all(pg.first_after_ms(j, balanced_at * 1000) for j in moved_jobs) and
                max(pg.first_after_ms(j, balanced_at * 1000) for j in moved_jobs),
                60, "the moved jobs capture again")
            figures["moved_jobs_capture_again_s"] = resumed / 1000 - balanced_at
            stale = pg.records_by([f"{n}:{before[n]['epoch']}" for n in moved],
                                  after_ms=int(balanced_at * 1000))
            assert stale == [], f"records written by moved shards' old instances: {stale}"
            # the first API node holds handles of the moved shards' old instances: its
            # commands look the shards up again
            for command in ("stop", "start"):
                client.send_live_snapshot_job_command(m.SendLiveSnapshotJobCommandRequest(
                    job_id=moved_jobs[0], command=command))
            restarted_ms = time.time() * 1000
            wait_until(lambda: pg.first_after_ms(moved_jobs[0], restarted_ms), 30,
                       "the job restarted through the moved shard captures")
            # the command finds nothing left to do
            again = livesnap("cluster", "rebalance", "--dry-run", env=env)
            assert again.returncode == 0, again.stderr[-3000:]
            assert "nothing to move" in again.stdout, again.stdout

        assert watch.failures == [] and watch.calls > 20, (watch.calls, watch.failures[:5])
        assert pg.duplicate_keys() == []
        print(json.dumps({k: round(v, 1) for k, v in figures.items()}))
    down = livesnap("cluster", "down", env=env)
    assert down.returncode == 0, down.stderr
