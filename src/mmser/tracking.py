"""MLflow tracking shared by every stage: one store at the repository root, runs tagged back to code and data."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import subprocess
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

_EXP_TMP = f"{os.sep}.dvc{os.sep}tmp{os.sep}exps{os.sep}"


def repo_root() -> Path:
    """The repository root; inside a `dvc exp --queue/--temp` copy (under .dvc/tmp/exps), the original one."""
    root = Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()
    text = str(root)
    # Queued and temp experiments run in a copy that is deleted afterwards: write to the real repository.
    return Path(text.split(_EXP_TMP)[0]) if _EXP_TMP in text else root


# MLflow's HTTP client retries a dead server for about 4 minutes per call (7 retries, backoff factor 2, 120 s
# timeout), and a stage makes several calls. These fail a stage within ~10-30 s instead; a user's own settings win.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}

# MLflow 3's UI opens an experiment without this tag on its GenAI overview (traces, prompts); this kind opens it
# on the runs table with their params, metrics and charts ("model training").
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

# Databases MLflow opens itself: their default artifact root is ./mlruns under the working directory, which
# `dvc exp --temp` deletes, so mmser gives them a folder at the repository root.
_LOCAL_STORES = ("sqlite", "postgresql", "mysql", "mssql")


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else the embedded `sqlite:///<repo root>/mlflow.db` (absolute).

    Also sets mmser's HTTP_DEFAULTS for whichever of MLflow's retry settings the user has not set.
    """
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'mlflow.db'}"


def is_server(uri: str) -> bool:
    """Whether the tracking URI names an MLflow tracking server (reached over HTTP), not a store on disk."""
    return uri.startswith(("http://", "https://"))


def server_unreachable(uri: str, timeout: float = 5.0) -> str | None:
    """Why the tracking server at `uri` cannot be reached (its /health endpoint), or None when it answers."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None  # it answered, if only with an error status: the server is up
    except (urllib.error.URLError, OSError) as err:
        return str(getattr(err, "reason", None) or err)


def setup_experiment(name: str) -> str:
    """Point MLflow at the store and return the experiment id, creating the experiment if needed.

    On a tracking server the server chooses the artifact location (`mlflow-artifacts:/` when it proxies
    artifacts, so clients never need the artifact store's credentials); on a database MLflow opens itself
    (SQLite, PostgreSQL, ...), `<repo root>/mlartifacts`. The experiment is tagged to open on its training
    runs in MLflow 3's UI (EXPERIMENT_KIND), also when an earlier version made it without the tag; a kind
    someone set by hand is kept.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        if EXPERIMENT_KIND_TAG not in experiment.tags:
            mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return experiment.experiment_id
    scheme = uri.split(":", 1)[0].split("+", 1)[0]
    location = (repo_root() / "mlartifacts").as_uri() if scheme in _LOCAL_STORES else None
    try:
        return mlflow.create_experiment(name, artifact_location=location,
                                        tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    except MlflowException as err:  # a parallel experiment (`dvc queue start -j N`) created it first
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return mlflow.get_experiment_by_name(name).experiment_id


def file_md5(path: str | Path) -> str:
    """MD5 of a file's bytes: the hash `dvc.lock` records for a file dependency."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def _git_commit() -> str:
    """HEAD commit, with `-dirty` when tracked files differ from it; `unknown` outside git."""
    try:
        root = repo_root()
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_tags(stage: str, inputs: dict[str, str | Path]) -> dict[str, str]:
    """Tags that lead back to the exact code and data: git commit, DVC experiment and stage, input hashes."""
    tags = {"mmser.stage": stage, "git_commit": _git_commit()}
    for env, tag in (("DVC_EXP_NAME", "dvc_exp_name"), ("DVC_EXP_BASELINE_REV", "dvc_exp_baseline_rev"),
                     ("DVC_STAGE", "dvc_stage")):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    for name, path in inputs.items():
        if Path(path).is_file():
            tags[f"input.{name}.md5"] = file_md5(path)
    return tags


def pipeline_key(params_path: str | Path = "params.yaml") -> str:
    """Identity of one pipeline run: the params file, the code commit and the DVC experiment name."""
    digest = hashlib.md5(Path(params_path).read_bytes())
    digest.update(_git_commit().split("-")[0].encode())  # not the dirty flag: DVC edits dvc.lock mid-pipeline
    digest.update(os.environ.get("DVC_EXP_NAME", "").encode())
    return digest.hexdigest()


def parent_run(experiment: str, params: dict[str, str], params_path: str | Path = "params.yaml") -> str:
    """Id of this pipeline run's parent MLflow run (every stage's runs nest under it); created on first use."""
    from mlflow.tracking import MlflowClient

    experiment_id = setup_experiment(experiment)
    key = pipeline_key(params_path)
    client = MlflowClient()
    found = client.search_runs([experiment_id], filter_string=f"tags.`mmser.pipeline_key` = '{key}'", max_results=1)
    if found:
        return found[0].info.run_id
    name = os.environ.get("DVC_EXP_NAME") or f"pipeline {_git_commit()[:12]}"
    run = client.create_run(experiment_id, run_name=name, tags={**run_tags("pipeline", {}), "mmser.pipeline_key": key})
    for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
        from mlflow.entities import Param

        client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in list(params.items())[start:start + 100]])
    client.set_terminated(run.info.run_id)
    return run.info.run_id


@contextlib.contextmanager
def stage_run(stage: str, *, experiment: str, params: dict[str, str], inputs: dict[str, str | Path],
              parent: str | None = None, run_name: str | None = None) -> Iterator["mlflow.ActiveRun"]:
    """An MLflow run for one stage (or one unit of it), nested under `parent`: flat params, tags, the run."""
    import mlflow

    experiment_id = setup_experiment(experiment)
    tags = {**run_tags(stage, inputs), **({"mlflow.parentRunId": parent} if parent else {})}
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name or stage, tags=tags) as run:
        mlflow.log_params(params)
        log.info("MLflow run %s (%s) in %s", run.info.run_id, run_name or stage, tracking_uri())
        yield run


def dir_md5(path: str | Path) -> str:
    """MD5 over a folder's files (sorted relative paths and their MD5s): changes when any file does.

    mmser's own listing hash, not the `.dir` hash `dvc.lock` records (DVC's JSON listing format is its own).
    """
    root = Path(path)
    digest = hashlib.md5()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(f"{f.relative_to(root).as_posix()}\0{file_md5(f)}\n".encode())
    return digest.hexdigest()


def log_outputs(outputs: dict[str, str | Path]) -> None:
    """Log each output's MD5 (a file's, or dir_md5 of a folder) on the active run: a run names what it produced."""
    import mlflow

    mlflow.set_tags({f"output.{name}.md5": file_md5(p) if Path(p).is_file() else dir_md5(p)
                     for name, p in outputs.items() if Path(p).exists()})
