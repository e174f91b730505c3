"""livesnap.capture.source.tune_malloc: glibc malloc set up for many reader threads."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from livesnap.capture.source import MALLOC_TUNING, tune_malloc


def run_python(code: str, env: dict[str, str]) -> str:
    """Run ``code`` in a fresh interpreter (malloc settings are per process)."""
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


CODE = "from livesnap.capture.source import tune_malloc; print(tune_malloc())"


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="tunes glibc only")
def test_tunes_glibc_when_the_environment_says_nothing() -> None:
    assert run_python(CODE, {"PATH": os.defpath}) == "True"


def test_leaves_malloc_alone_when_the_operator_chose() -> None:
    for name in ("MALLOC_ARENA_MAX", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"):
        value = "glibc.malloc.arena_max=4" if name == "GLIBC_TUNABLES" else "4"
        assert run_python(CODE, {"PATH": os.defpath, name: value}) == "False"
    assert tune_malloc({"MALLOC_ARENA_MAX": "8"}) is False


def test_the_values_are_within_glibc_limits() -> None:
    assert MALLOC_TUNING["arena_max"] >= 1
    assert MALLOC_TUNING["mmap_threshold"] <= 32 * 1024 * 1024  # glibc's maximum on 64-bit
    assert MALLOC_TUNING["trim_threshold"] >= MALLOC_TUNING["mmap_threshold"]

