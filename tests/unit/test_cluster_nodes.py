"""``livesnap cluster status``'s node table and JSON from ``ray.nodes()``-shaped records, without
a Ray cluster: live and dead nodes, free and total resources, the shards on each node."""

from __future__ import annotations

import io
import json
import logging
import sys
import types

import pytest
from rich.console import Console
from typer.testing import CliRunner

from livesnap import cli
from livesnap.cluster.nodes import node_rows, plan_rebalance
from livesnap.errors import RebalanceRefused


@pytest.fixture(autouse=True)
def _root_logging_restored():
    """The CLI sets up logging on the runner's stderr, which the runner closes: the root
    logger's handlers go back to what they were, so later tests do not log into it."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    added = [h for h in root.handlers if h not in handlers]
    root.handlers[:], root.level = handlers, level
    for handler in added:
        handler.close()


HEAD, WORKER, GONE, NEW = ("a1" * 28, "b2" * 28, "c3" * 28, "d4" * 28)
# what ray.nodes() gives (Ray 2.60), trimmed to the fields that matter plus a few that do not
NODES = [
    {"NodeID": GONE, "Alive": False, "NodeManagerAddress": "10.0.0.7", "NodeManagerPort": 41077,
     "Resources": {}, "DeathReason": 1,
     "DeathReasonMessage": "health check failed due to missing too many heartbeats"},
    {"NodeID": WORKER, "Alive": True, "NodeManagerAddress": "10.0.0.6", "NodeManagerPort": 41078,
     "Resources": {"CPU": 4.0, "shard": 8.0, "memory": 1e9, "node:10.0.0.6": 1.0},
     "DeathReason": 0, "DeathReasonMessage": ""},
    {"NodeID": NEW, "Alive": True, "NodeManagerAddress": "10.0.0.8",
     "Resources": {"CPU": 2.0, "node:10.0.0.8": 1.0}},
    {"NodeID": HEAD, "Alive": True, "NodeManagerAddress": "10.0.0.5", "NodeManagerPort": 41079,
     "Resources": {"CPU": 4.0, "shard": 8.0, "node:__internal_head__": 1.0,
                   "node:10.0.0.5": 1.0}},
]
# available_resources_per_node(): live nodes only; a resource with nothing free is left out,
# and a node that joined a moment ago may not be there yet
FREE = {HEAD: {"CPU": 3.5, "shard": 6.0, "memory": 1e9}, WORKER: {"CPU": 4.0}}
SHARD_ROWS = [
    {"name": "shard-10", "state": "running", "node": WORKER, "pid": 11, "epoch": 2},
    {"name": "shard-2", "state": "running", "node": WORKER, "pid": 12, "epoch": 1},
    {"name": "shard-1", "state": "running", "node": HEAD, "pid": 13, "epoch": 1},
    {"name": "shard-3", "state": "no answer (GetTimeoutError)"},
    {"name": "shard-4", "state": "missing"},
]


def test_a_row_per_node_live_first_head_first_dead_ones_kept() -> None:
    rows = node_rows(NODES, FREE, SHARD_ROWS)
    assert [r["node_id"] for r in rows] == [HEAD, WORKER, NEW, GONE]
    head, worker, new, gone = rows
    assert head == {
        "node_id": HEAD, "address": "10.0.0.5", "alive": True, "head": True,
        "cpu_total": 4, "cpu_free": 3.5, "resource": "shard", "resource_total": 8,
        "resource_free": 6, "shards": ["shard-1"], "death_reason": ""}
    # every shard unit taken: Ray leaves "shard" out of the free ones, so 0 free, not unknown
    assert (worker["resource_free"], worker["resource_total"]) == (0, 8)
    assert worker["shards"] == ["shard-2", "shard-10"]  # in number order
    # a node without the resource, and not in the free map yet: free unknown
    assert (new["resource_total"], new["resource_free"], new["cpu_free"]) == (None, None, None)
    assert new["shards"] == [] and not new["head"]
    assert gone["alive"] is False and gone["cpu_free"] is None and gone["shards"] == []
    assert gone["death_reason"] == "health check failed due to missing too many heartbeats"


def test_another_resource_name_and_no_resource() -> None:
    nodes = [{"NodeID": HEAD, "Alive": True, "NodeManagerAddress": "h",
              "Resources": {"CPU": 1.0, "capture": 3.0}}]
    (row,) = node_rows(nodes, {HEAD: {"CPU": 1.0, "capture": 1.0}}, [], resource="capture")
    assert (row["resource"], row["resource_free"], row["resource_total"]) == ("capture", 1, 3)
    (row,) = node_rows(nodes, {}, [], resource="")
    assert row["resource_total"] is None and row["resource_free"] is None


def rendered(table, width: int = 80) -> list[str]:
    out = Console(file=io.StringIO(), width=width, color_system=None, soft_wrap=False)
    out.print(table)
    return out.file.getvalue().splitlines()


def test_the_node_table_fits_80_columns_with_ids_states_and_shard_names_whole() -> None:
    many = [{"name": f"shard-{i}", "state": "running", "node": WORKER} for i in range(40)]
    rows = node_rows([*NODES, {**NODES[0], "NodeManagerAddress": "fd00:1234:5678::1:2"}],
                     FREE, many)
    lines = rendered(cli.node_table(rows))
    assert max(len(line) for line in lines) <= 80
    text = "\n".join(lines)
    for value in (f"{HEAD[:8]} head", WORKER[:8], GONE[:8], "10.0.0.5", "fd00:1234:5678::1:2",
                  "dead", "6/8", "0/8", "3.5/4", "-/2"):
        assert value in text, value
    shown = " ".join(text.replace("│", " ").split())
    for i in range(40):  # no name broken over two lines
        assert f"shard-{i}" in shown.split(), i


@pytest.fixture
def fake_ray(monkeypatch):
    """``livesnap.cluster.rayengine`` replaced: no Ray, the records above."""
    engine = types.ModuleType("livesnap.cluster.rayengine")
    engine.connect = lambda address, namespace, temp_dir="": None
    engine.gcs_storage = lambda: "memory"
    engine.cluster_status = lambda names, namespace: [dict(r) for r in SHARD_ROWS]
    engine.node_status = lambda shards, resource: node_rows(NODES, FREE, shards,
                                                             resource=resource)
    monkeypatch.setitem(sys.modules, "livesnap.cluster.rayengine", engine)
    return engine


def test_status_json_keeps_a_line_per_shard_and_adds_one_nodes_line(fake_ray) -> None:
    done = CliRunner().invoke(cli.app, ["cluster", "status", "--json"])
    assert done.exit_code == 0, done.output
    lines = [json.loads(line) for line in done.output.splitlines()]
    *shards, last = lines
    assert shards == SHARD_ROWS  # the shard rows as before, every key kept
    assert list(last) == ["nodes", "gcs_storage"]
    assert last["gcs_storage"] == "memory"
    assert [(n["node_id"], n["alive"], n["shards"]) for n in last["nodes"]] == [
        (HEAD, True, ["shard-1"]), (WORKER, True, ["shard-2", "shard-10"]), (NEW, True, []),
        (GONE, False, [])]


def test_ray_printing_on_stdout_goes_to_stderr_and_the_json_stays_whole(fake_ray) -> None:
    # Ray's driver prints the cluster's error messages (a raylet that died: the head was
    # replaced while the command joined) on sys.stdout, whenever they come
    def status(names, namespace):
        print("(raylet) Raylet is terminated. Termination is unexpected.")
        return [dict(r) for r in SHARD_ROWS]

    fake_ray.cluster_status = status
    done = CliRunner().invoke(cli.app, ["cluster", "status", "--json"])
    assert done.exit_code == 0, done.output
    *shards, last = [json.loads(line) for line in done.stdout.splitlines()]
    assert shards == SHARD_ROWS and "nodes" in last
    assert "Raylet is terminated" in done.stderr
    table = CliRunner().invoke(cli.app, ["cluster", "status"])
    assert table.exit_code == 0, table.output
    assert "Raylet" not in table.stdout and "Ray nodes" in table.stdout
    assert "Raylet is terminated" in table.stderr


def test_status_prints_the_shard_table_then_the_node_table(fake_ray) -> None:
    done = CliRunner().invoke(cli.app, ["cluster", "status", "--resource", "shard"])
    assert done.exit_code == 0, done.output
    shard_table, node_table = done.output.split("Ray nodes")
    assert "shard-3    no answer" in shard_table
    assert f"{GONE[:8]}" in node_table and "dead" in node_table
    # the last line says whether the cluster survives losing its head
    assert "GCS: in memory, NOT fault tolerant" in done.output.splitlines()[-1]


def test_the_gcs_line_says_what_losing_the_head_costs() -> None:
    assert cli.gcs_line("redis").startswith("GCS: fault tolerant (Redis)")
    assert "every shard stops" in cli.gcs_line("memory")
    assert cli.gcs_line("rocksdb") == "GCS: rocksdb"
    assert cli.gcs_line("") == "GCS: storage unknown"


def placed(node: str, shards: list[str], *, alive: bool = True, total: float | None = 10
           ) -> dict[str, object]:
    return {"node_id": node, "alive": alive, "resource_total": total, "shards": shards}


def names(first: int, last: int) -> list[str]:
    return [f"shard-{i}" for i in range(first, last + 1)]


def test_a_rejoined_node_gets_its_fair_share_back_in_the_fewest_moves() -> None:
    # after failovers: 3 + 3 on two nodes, the rejoined (or replaced) head empty
    moves = plan_rebalance([placed(HEAD, []), placed(WORKER, names(0, 2)),
                            placed(NEW, names(3, 5))], resource="shard")
    assert [(m.source, m.target) for m in moves] == [(NEW, HEAD), (WORKER, HEAD)]
    assert [m.shard for m in moves] == ["shard-5", "shard-2"]  # the last of each source


def test_every_live_node_ends_with_the_floor_or_the_ceiling_and_dead_ones_get_none() -> None:
    moves = plan_rebalance([placed(HEAD, names(0, 6)), placed(WORKER, []), placed(NEW, []),
                            placed(GONE, [], alive=False)])
    held = {HEAD: 7 - len(moves), WORKER: 0, NEW: 0}
    for move in moves:
        held[move.target] += 1
    assert sorted(held.values()) == [2, 2, 3] and GONE not in held


def test_balanced_enough_means_no_move() -> None:
    assert plan_rebalance([placed(HEAD, names(0, 2)), placed(WORKER, names(3, 4)),
                           placed(NEW, names(5, 6))]) == []
    assert plan_rebalance([placed(HEAD, names(0, 5))]) == []  # one node: nowhere to go


def test_a_node_without_the_resource_or_room_takes_no_shard() -> None:
    moves = plan_rebalance([placed(HEAD, names(0, 3)), placed(WORKER, [], total=1),
                            placed(NEW, [], total=None)], resource="shard")
    assert [(m.shard, m.target) for m in moves] == [("shard-3", WORKER)]


def test_rebalance_prints_each_move_and_refuses_while_a_shard_is_not_running(
    fake_ray, monkeypatch
) -> None:
    from livesnap.cluster.nodes import Move

    calls = []

    def rebalance(host, shard_names, namespace, *, resource, dry_run, report):
        calls.append((len(shard_names), namespace, resource, dry_run))
        report("would move shard-5: node aaaa -> node bbbb")
        return [Move("shard-5", "a", "b")]

    fake_ray.rebalance = rebalance
    done = CliRunner().invoke(cli.app, ["cluster", "rebalance", "--dry-run", "--shards", "6"])
    assert done.exit_code == 0, done.output
    assert "would move shard-5" in done.output and "moved" not in done.output
    assert calls == [(6, "livesnap", "", True)]

    def refused(*args, **kwargs):
        raise RebalanceRefused("not every shard is running: shard-3 (no answer)")

    fake_ray.rebalance = refused
    done = CliRunner().invoke(cli.app, ["cluster", "rebalance"])
    assert done.exit_code == 2
    assert "not every shard is running: shard-3" in done.output
