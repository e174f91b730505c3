"""Joining a Ray cluster fails with one line that says why, and a hint about Ray's token
authentication when that may be the reason (a GCS that wants a token says so only in its log
lines; ``ray.init`` just fails to connect). Ray's ``init`` is faked: no cluster is started."""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys

import pytest

pytest.importorskip("ray")

from ray.exceptions import RayError

from livesnap.cluster import rayengine


@pytest.fixture
def failing_init(monkeypatch):
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.setattr(rayengine.ray, "is_initialized", lambda: False)

    def fail_with(exc: Exception) -> None:
        def init(**kwargs: object) -> None:
            raise exc

        monkeypatch.setattr(rayengine.ray, "init", init)

    return fail_with


def test_a_failed_connection_without_token_mode_hints_at_token_authentication(
        failing_init, monkeypatch) -> None:
    failing_init(ConnectionError("Failed to connect to Ray cluster at 127.0.0.1:6379"))
    with pytest.raises(ConnectionError) as raised:
        rayengine.connect("127.0.0.1:6379", "livesnap")
    assert str(raised.value) == ("Failed to connect to Ray cluster at 127.0.0.1:6379; "
                                 f"{rayengine.AUTH_HINT}")
    assert "RAY_AUTH_MODE=token" in rayengine.AUTH_HINT

    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # already on: nothing to suggest
    with pytest.raises(ConnectionError, match=r"^Failed to connect to Ray cluster at \S+$"):
        rayengine.connect("127.0.0.1:6379", "livesnap")


def test_no_cluster_found_is_not_blamed_on_tokens(failing_init) -> None:
    failing_init(ConnectionError("Could not find any running Ray instance. Please specify "
                                 "the one to connect to.\nmore"))
    with pytest.raises(ConnectionError) as raised:
        rayengine.connect("auto", "livesnap")
    assert str(raised.value) == ("Could not find any running Ray instance. Please specify the "
                                 "one to connect to.")


def test_a_ray_error_such_as_a_missing_token_becomes_one_line(failing_init) -> None:
    failing_init(RayError("Token authentication is enabled but no authentication token was "
                          "found\nsecond line"))
    with pytest.raises(ConnectionError, match=r"^Token authentication is enabled but no "
                                              r"authentication token was found$"):
        rayengine.connect("127.0.0.1:6379", "livesnap")


def test_a_loopback_address_stays_loopback_whatever_the_environment_says() -> None:
    """Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, at import, and with Linux's default
    rewrites 127.0.0.1 to this machine's network address: a driver then looked for a
    loopback-only cluster on eth0, for minutes. livesnap sets its default before Ray loads."""
    code = ("import livesnap.cluster.rayengine\n"
            "from ray._private.services import canonicalize_bootstrap_address as c\n"
            "print(c('127.0.0.1:6379'))\n")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["127.0.0.1:6379"]


@pytest.fixture
def recorded(monkeypatch, tmp_path):
    """No RAY_ADDRESS, and Ray's temp directory in ``tmp_path``: a ``ray start`` records the
    cluster's address in ``<it>/ray/ray_current_cluster``. The calls to ray.init are kept."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # no token look-up in this test's home
    monkeypatch.setattr(rayengine.ray, "is_initialized", lambda: False)
    calls: list[object] = []
    monkeypatch.setattr(rayengine.ray, "init", lambda **kwargs: calls.append(kwargs["address"]))
    return tmp_path, calls


def test_without_an_address_no_node_on_this_machine_is_refused_before_ray_looks(
        recorded) -> None:
    """Ray's "auto" would go on to join any GCS process it finds on the machine."""
    _, calls = recorded
    with pytest.raises(ConnectionError) as raised:
        rayengine.connect("", "livesnap")
    assert str(raised.value) == rayengine.NO_LOCAL_NODE and calls == []


def test_without_an_address_the_cluster_ray_start_recorded_is_joined(recorded,
                                                                     monkeypatch) -> None:
    directory, calls = recorded
    (directory / "ray").mkdir()
    (directory / "ray" / "ray_current_cluster").write_text("10.0.0.1:6379")
    rayengine.connect("", "livesnap")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.9:6379")  # Ray's own variable comes first
    rayengine.connect("", "livesnap")
    rayengine.connect("10.0.0.5:6379", "livesnap")  # and a given address before both
    assert calls == ["10.0.0.1:6379", "10.0.0.9:6379", "10.0.0.5:6379"]


def test_the_temp_dir_picks_the_local_node(monkeypatch) -> None:
    given: list[dict[str, object]] = []
    monkeypatch.setattr(rayengine.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(rayengine.ray, "init", lambda **kwargs: given.append(kwargs))
    rayengine.connect("127.0.0.1:6379", "livesnap", "/tmp/staging/w1")
    rayengine.connect("127.0.0.1:6379", "livesnap")
    assert [g["_temp_dir"] for g in given] == ["/tmp/staging/w1", None]  # None: Ray's choice


class _Ref:
    def __init__(self, result: object) -> None:
        self._result = result

    def future(self) -> concurrent.futures.Future[object]:
        done: concurrent.futures.Future[object] = concurrent.futures.Future()
        if isinstance(self._result, BaseException):
            done.set_exception(self._result)
        else:
            done.set_result(self._result)
        return done


class _Handle:
    def __init__(self, result: object) -> None:
        self.calls = 0
        self._result = result

    @property
    def stop(self) -> _Handle:
        return self

    def remote(self, *args: object) -> _Ref:
        self.calls += 1
        return _Ref(self._result)


async def test_an_api_node_looks_a_replaced_shard_up_again(monkeypatch) -> None:
    from ray.exceptions import ActorDiedError

    dead, new = _Handle(ActorDiedError()), _Handle({})
    lookups = iter([dead, new])
    monkeypatch.setattr(rayengine.ray, "get_actor", lambda name, namespace: next(lookups))
    engine = rayengine.RayEngine(shards=["shard-0"], namespace="livesnap", timeout_s=1)
    await engine.stop("job-1")  # the old instance is gone: the name is looked up again
    await engine.stop("job-2")  # ... and the new handle kept
    assert (dead.calls, new.calls) == (1, 2)
