"""What every stage script shares: argument parsing, logging, params, and failing cleanly."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Callable

from mmser.errors import UserError, one_line
from mmser.params import load_params
from mmser.process import exit_now, started_as

log = logging.getLogger("mmser")


def parse_args(description: str, paths: list[str]) -> argparse.Namespace:
    """`--name PATH` for every path the stage reads or writes (dvc.yaml is their only source)."""
    parser = argparse.ArgumentParser(description=description)
    for name in paths:
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--params", default="params.yaml")
    return parser.parse_args()


def setup_logging() -> None:
    """One line per milestone on stderr; library chatter kept at warnings."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("lightning", "lightning.pytorch", "alembic", "mlflow", "urllib3", "httpx", "numba"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def write_json(path: str | Path, data: dict) -> None:
    """Write JSON atomically (a half-written file must never look valid)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def pipeline_parent(params: dict, args: argparse.Namespace) -> str:
    """The parent MLflow run of this pipeline run (created by the first stage that asks)."""
    from mmser.params import flatten_all
    from mmser.tracking import parent_run

    return parent_run(params["tracking"].experiment, flatten_all(params), args.params)


def _remove(paths: list[str]) -> None:
    for p in map(Path, paths):
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def run_stage(main: Callable[[argparse.Namespace, dict], None], *, description: str, inputs: list[str],
              outputs: list[str]) -> None:
    """Run a stage's main; on failure remove its outputs and exit non-zero.

    Bad input (a UserError: params, manifest, corpus, weights on disk) is one line naming what to fix; anything
    else is a bug and keeps its traceback, so that it never reads like a mistake of the user's.

    A stage that is the process's program (DVC's `python stages/<name>.py`) ends with exit_now: the interpreter's
    teardown of torch, pandas and MLflow would add about a second to every stage.

    The failing stage's outputs are removed even when the cause is a tracking-server outage: a stage's outputs
    and its MLflow run come as a pair, and DVC reruns a failed stage anyway (it records only finished ones).
    """
    setup_logging()
    args = parse_args(description, inputs + outputs)
    out_paths = [getattr(args, o.replace("-", "_")) for o in outputs]
    try:
        params = load_params(args.params)
        main(args, params)
    except UserError as err:
        _remove(out_paths)
        print(f"error: {one_line(err)}", file=sys.stderr)
        sys.exit(1)
    except Exception:
        _remove(out_paths)
        if (message := _server_outage()) is not None:
            print(f"error: {message}", file=sys.stderr)
            sys.exit(1)
        raise
    except BaseException:
        _remove(out_paths)
        raise
    if started_as(main.__code__.co_filename):  # DVC's `python stages/<name>.py`: its outputs are written
        exit_now(0)


def _server_outage() -> str | None:
    """The one-line explanation when the stage failed because the MLflow tracking server went away."""
    from mmser.tracking import is_server, server_unreachable, tracking_uri

    uri = tracking_uri()
    reason = server_unreachable(uri) if is_server(uri) else None
    if reason is None:
        return None
    return (f"MLflow tracking server {uri} is unreachable ({reason}); outputs already written are kept (earlier "
            "stages, finished train cells, the embedding cache) and this stage's partial outputs were removed; "
            "rerun `dvc repro` once the server is back")
