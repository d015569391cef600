"""Independent pieces of work shared out among this process and forked copies of it (Linux).

Forked children inherit everything already in memory (features, tensors, imported modules), so starting one costs
milliseconds and nothing is sent to it; only its results come back, pickled through a file. Elsewhere (macOS,
Windows: no safe fork) `FORK` is False and callers run their work in one process.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any, Callable, Hashable, Iterator

FORK = sys.platform == "linux"


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def forked(function: Callable[[Any, bool], Any], items: list[Hashable], processes: int) -> dict[Hashable, Any]:
    """{item: function(item, here)} for every item, computed in `processes` processes: this one and
    `processes - 1` forked children. Each process takes the next item as soon as it has finished one, in the order
    given (list the largest first). `here` is True in this process only (e.g. to show a progress bar).

    An exception in a child is raised here (its traceback added as a note); the other children are stopped.
    """
    context = multiprocessing.get_context("fork")
    queue = context.SimpleQueue()
    for item in items:
        queue.put(item)
    for _ in range(processes):
        queue.put(_DONE)
    with tempfile.TemporaryDirectory(prefix="mmser-forked-") as scratch:
        children = [context.Process(target=_child, args=(function, queue, Path(scratch)))
                    for _ in range(processes - 1)]
        for child in children:
            child.start()
        try:
            results = _take(function, queue, here=True)
        except BaseException:
            for child in children:
                child.terminate()
            raise
        finally:
            for child in children:
                child.join()
        for child in children:
            results.update(_collected(child, Path(scratch)))
    return results


@contextlib.contextmanager
def beside(function: Callable[[], Any], *, fork: bool = FORK) -> Iterator[Callable[[], Any]]:
    """Yield `result`, which returns `function()`: with `fork`, computed in a forked child started now, while this
    process goes on (result() waits for it, and raises its exception); without, computed here when result() is
    called. Leaving the block stops a child whose result was never asked for.

    For work that needs nothing this process computes next, on a core it would leave idle (e.g. a baseline fitted
    while the heads train in one process). Fork before starting threads or CUDA in this process, as with `forked`.
    """
    if not fork:
        yield function
        return
    context = multiprocessing.get_context("fork")
    queue = context.SimpleQueue()
    queue.put(0)
    queue.put(_DONE)
    with tempfile.TemporaryDirectory(prefix="mmser-beside-") as scratch:
        child = context.Process(target=_child, args=(lambda _item, _here: function(), queue, Path(scratch)))
        child.start()

        def result() -> Any:
            child.join()
            return _collected(child, Path(scratch))[0]

        try:
            yield result
        finally:
            if child.is_alive():
                child.terminate()
            child.join()


_DONE = "mmser.parallel: no more items"


def _take(function: Callable[[Any, bool], Any], queue, *, here: bool) -> dict:
    results = {}
    while (item := queue.get()) != _DONE:
        results[item] = function(item, here)
    return results


def _child(function: Callable[[Any, bool], Any], queue, scratch: Path) -> None:
    try:
        payload = {"results": _take(function, queue, here=False)}
    except BaseException as error:  # noqa: BLE001 - sent to the parent, which raises it
        trace = traceback.format_exc()
        try:
            data = pickle.dumps({"error": error, "traceback": trace})
        except Exception:  # noqa: BLE001 - an exception that does not pickle: its message and traceback still go
            data = pickle.dumps({"error": RuntimeError(repr(error)), "traceback": trace})
    else:
        data = pickle.dumps(payload)
    (scratch / f"{os.getpid()}.pkl").write_bytes(data)


def _collected(child, scratch: Path) -> dict:
    path = scratch / f"{child.pid}.pkl"
    if not path.exists():
        raise RuntimeError(f"a forked worker (pid {child.pid}) ended with exit code {child.exitcode} and no result")
    with open(path, "rb") as f:
        payload = pickle.load(f)
    if "error" in payload:
        error = payload["error"]
        error.add_note(f"in a forked worker (pid {child.pid}):\n{payload['traceback']}")
        raise error
    return payload["results"]
