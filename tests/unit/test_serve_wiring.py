"""The node's wiring choices that an operator never sees but pays for in idle CPU."""

from __future__ import annotations

import asyncio
import socket

from starlette.applications import Starlette

from livesnap.config import Settings
from livesnap.node.service import _Server, uvicorn_config
from livesnap.node.wiring import NODE_IDLE_POLL_S, callback_policy


def test_one_node_polls_its_quiet_outbox_rarely_and_a_cluster_as_often_as_ever(tmp_path):
    for engine in ("local", "process"):
        policy = callback_policy(Settings(data_dir=tmp_path, engine=engine))
        assert policy.idle_poll_s == NODE_IDLE_POLL_S > policy.poll_interval_s
    clustered = callback_policy(Settings(data_dir=tmp_path, engine="ray"))
    assert clustered.idle_poll_s == clustered.poll_interval_s  # shards' events are only polled


async def test_the_http_server_stops_when_asked(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = Settings(data_dir=tmp_path, host="127.0.0.1", port=port)
    server = _Server(uvicorn_config(Starlette(), settings))
    serving = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started:
            break
        await asyncio.sleep(0.01)
    assert server.started
    server.request_exit()
    await asyncio.wait_for(serving, 10)
    assert serving.done() and serving.exception() is None


def test_a_cluster_node_has_no_local_fallback_unless_asked_for(tmp_path, monkeypatch):
    assert Settings(data_dir=tmp_path).storage.storage_fallback  # one node: on by default
    assert not Settings(data_dir=tmp_path, engine="ray").storage.storage_fallback
    assert Settings(data_dir=tmp_path, engine="ray", storage_fallback=True).storage.storage_fallback
    monkeypatch.setenv("LIVESNAP_ENGINE", "ray")
    assert not Settings(data_dir=tmp_path).storage.storage_fallback
    monkeypatch.setenv("LIVESNAP_STORAGE_FALLBACK", "true")  # one-host staging, said so
    assert Settings(data_dir=tmp_path).storage.storage_fallback


def test_several_capture_processes_mean_the_process_engine_and_zero_one_per_core(tmp_path):
    import os

    one = Settings(data_dir=tmp_path).capture
    assert (one.engine, one.capture_process_count) == ("local", 1)
    two = Settings(data_dir=tmp_path, capture_processes=2).capture
    assert (two.engine, two.capture_process_count) == ("process", 2)
    per_core = Settings(data_dir=tmp_path, capture_processes=0).capture
    assert per_core.engine == "process"
    assert per_core.capture_process_count == len(os.sched_getaffinity(0))
    ray = Settings(data_dir=tmp_path, engine="ray", capture_processes=2).capture
    assert ray.engine == "ray"  # a cluster's API node captures nothing itself
