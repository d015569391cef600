"""Work in forked processes (parallel.forked, parallel.beside) and ending a command quickly (process.py): a child's
error reaches the parent, what a normal exit does that matters still happens, and a stage run inside another
program (a test) returns to it."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mmser.parallel import FORK, beside, forked

pytestmark = pytest.mark.skipif(not FORK, reason="forked children exist on Linux only")


def _frame(seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"id": [f"u{i}" for i in range(50)], "p": rng.random(50)})


def test_a_forked_workers_error_is_raised_in_the_parent_with_its_traceback() -> None:
    parent = os.getpid()
    done = forked(lambda item, here: (os.getpid(), here), list(range(6)), 3)
    assert sorted(done) == list(range(6))
    assert all(here == (pid == parent) for pid, here in done.values())

    def work(item: int, here: bool) -> int:
        if here:  # the parent is slow, so the children take items (and fail on them)
            time.sleep(0.5)
            return item
        raise ValueError(f"item {item} failed in a child")

    with pytest.raises(ValueError, match="failed in a child") as raised:
        forked(work, list(range(6)), 3)
    assert any("forked worker" in note for note in raised.value.__notes__)


def test_beside_computes_in_a_child_what_this_process_would() -> None:
    with beside(lambda: (os.getpid(), _frame(4))) as result:
        pid, frame = result()
    assert pid != os.getpid()
    pd.testing.assert_frame_equal(frame, _frame(4))
    with beside(lambda: os.getpid(), fork=False) as result:
        assert result() == os.getpid()


def test_beside_raises_the_childs_error_with_its_traceback() -> None:
    def fails() -> None:
        raise ValueError("no baseline today")

    with beside(fails) as result, pytest.raises(ValueError, match="no baseline today") as raised:
        result()
    assert any("forked worker" in note and "fails" in note for note in raised.value.__notes__)


def test_leaving_beside_without_its_result_stops_the_child() -> None:
    start = time.perf_counter()
    with pytest.raises(KeyError), beside(lambda: time.sleep(60)):
        raise KeyError("the main line failed")
    assert time.perf_counter() - start < 10
    assert multiprocessing.active_children() == []


def _python(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=tmp_path, capture_output=True, text=True, timeout=60)


def test_exit_now_joins_threads_runs_exit_handlers_and_flushes(tmp_path: Path) -> None:
    (tmp_path / "ends.py").write_text(textwrap.dedent("""
        import atexit, pathlib, sys, threading, time
        from mmser.process import exit_now
        atexit.register(lambda: pathlib.Path("handler-ran").write_text("yes"))
        def late():
            time.sleep(0.5)
            pathlib.Path("thread-done").write_text("yes")
        threading.Thread(target=late).start()
        print("no newline, still buffered", end="")
        print("on stderr", end="", file=sys.stderr)
        exit_now(3)
        print("never")
    """))
    done = _python(tmp_path, "ends.py")
    assert done.returncode == 3
    assert done.stdout == "no newline, still buffered" and done.stderr == "on stderr"
    assert (tmp_path / "handler-ran").read_text() == "yes" and (tmp_path / "thread-done").read_text() == "yes"


def test_started_as_tells_the_program_from_a_script_run_inside_another(tmp_path: Path) -> None:
    (tmp_path / "stage.py").write_text("from mmser.process import started_as\nprint(started_as(__file__))\n")
    assert _python(tmp_path, "stage.py").stdout.strip() == "True"
    assert _python(tmp_path, "-X", "utf8", str(tmp_path / "stage.py")).stdout.strip() == "True"
    inside = "import runpy; runpy.run_path('stage.py', run_name='__main__'); print('went on')"
    assert _python(tmp_path, "-c", inside).stdout.splitlines() == ["False", "went on"]
