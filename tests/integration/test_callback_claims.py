"""Two dispatchers over one PostgreSQL outbox (a cluster's two API nodes) and a real HTTP
receiver: with claims, every event is POSTed once, not once per node."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest
from tests.contract.test_store_contract import event, job
from tests.integration.test_callbacks_real import Receiver

from livesnap.callbacks.dispatcher import CallbackDispatcher, callback_client
from livesnap.callbacks.keys import CallbackKeys
from livesnap.clock import SystemClock
from livesnap.config import Settings
from livesnap.node.wiring import callback_policy
from livesnap.store import open_sql_store

pytestmark = pytest.mark.integration

JOBS, EVENTS_PER_JOB = 20, 10


async def test_two_nodes_sharing_an_outbox_post_each_event_once(postgres_url, tmp_path):
    receiver = Receiver()
    receiver.thread.start()
    stores = [await open_sql_store(postgres_url), await open_sql_store(postgres_url,
                                                                        migrate=False)]
    now_ms = int(time.time() * 1000)
    written = []
    for j in range(JOBS):
        events = [event(f"job-{j}", now_ms - 1000 + i, url=receiver.url)
                  for i in range(EVENTS_PER_JOB)]
        written += [e.id for e in events]
        await stores[0].create_job(job(f"job-{j}"), events)
    policy = callback_policy(Settings(data_dir=tmp_path, engine="ray"))
    dispatchers, clients = [], []
    for name, store in zip(("node-a", "node-b"), stores, strict=True):
        client = callback_client(policy)
        clients.append(client)
        dispatchers.append(CallbackDispatcher(
            store=store, client=client, clock=SystemClock(), policy=policy,
            keys=CallbackKeys({"acct-a": "shared-key-0123456789"}), claimer=name))
    try:
        for dispatcher in dispatchers:
            dispatcher.start()
        deadline = time.monotonic() + 60
        while True:
            with receiver.lock:
                seen = {d.event["EventId"] for d in receiver.deliveries}
            if seen >= set(written) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # a late second POST of some event would show up by now
    finally:
        for dispatcher in dispatchers:
            await dispatcher.close(5)
        for client in clients:
            await client.aclose()
        for store in stores:
            await store.close()
        receiver.server.shutdown()
        receiver.server.server_close()
    with receiver.lock:
        posted = Counter(d.event["EventId"] for d in receiver.deliveries)
    assert set(posted) == set(written)  # every event delivered …
    assert [e for e, n in posted.items() if n > 1] == []  # … once
