"""End to end: the real `dvc repro` in a temporary copy of the repository, on a tiny demo corpus."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tiny_models import make_tiny_bert

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                             f"{result.stderr[-5000:]}")
    return result


def _copy_repo(dest: Path) -> Path:
    """The tracked files of this checkout, as a fresh git repository (what a clone would hold)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    for name in files:
        if name.startswith(("tests/", "metrics/")) or not (REPO / name).is_file():
            continue
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, dest / name)
    _run(["git", "init", "-q"], dest)
    _commit(dest, "copy")
    return dest


def _commit(repo: Path, message: str) -> None:
    _run(["git", "add", "-A"], repo)
    _run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", message], repo)


def _set_params(repo: Path, **sections: dict) -> None:
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for section, values in sections.items():
        params[section].update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def _would_run(repo: Path) -> set[str]:
    """Stages whose own dependencies changed (what `dvc repro --dry` starts with)."""
    return _ran(_run(["dvc", "repro", "--dry"], repo).stdout)


def _ran(stdout: str) -> set[str]:
    return {line.split("'")[1] for line in stdout.splitlines() if line.startswith("Running stage")}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Path:
    """A repository copy on which the tiny pipeline has run once."""
    root = tmp_path_factory.mktemp("pipeline")
    repo = _copy_repo(root / "repo")
    bert = make_tiny_bert(root / "tiny-bert")
    _set_params(repo, demo={"utterances_per_speaker": 10},
                extract_text={"model": str(bert), "pooling": "mean"},
                train={"epochs": 12, "batch_size": 8, "folds": [1, 2], "heads": ["linear", "gated"],
                       "weight_decay": [0.0, 0.01]}, evaluate={"bootstrap_resamples": 200})
    _commit(repo, "tiny params")
    _run(["dvc", "repro"], repo)
    return repo


@pytest.mark.slow
def test_repro_fills_metrics_for_every_modality(pipeline: Path) -> None:
    summary = json.loads((pipeline / "metrics" / "summary.json").read_text())
    assert summary["protocol"] == "loso" and summary["corpus"] == "demo"
    for modality in ("text", "audio", "fusion"):
        s = summary[modality]
        assert set(s["per_fold"]) == {"fold1", "fold2"}
        for key in ("ua", "wa", "macro_f1"):
            assert 0.0 <= s[key] <= 1.0
        assert s["ua_ci95"][0] <= s["ua"] <= s["ua_ci95"][1]
        folds = [s["per_fold"][f]["ua"] for f in s["per_fold"]]
        assert s["ua"] == pytest.approx(sum(folds) / len(folds))
    # Four balanced-ish classes: chance UA is 0.25; eGeMAPS on the demo is far above it.
    assert summary["fusion"]["ua"] > 0.4
    assert summary["audio"]["ua"] > 0.4
    assert "p_value" in summary["fusion_vs_best_unimodal"]
    for name in ("confusion_fusion.png", "curves_text.png"):
        assert (pipeline / "reports" / "plots" / name).stat().st_size > 1000
    predictions = (pipeline / "reports" / "predictions" / "fusion.csv").read_text().splitlines()
    assert predictions[0].startswith("id,fold,p_ang") and len(predictions) - 1 == summary["fusion"]["n_test"]


@pytest.mark.slow
def test_candidates_are_chosen_on_validation_beside_the_baseline_and_the_refit_registered(pipeline: Path) -> None:
    table = json.loads((pipeline / "metrics" / "candidates.json").read_text())
    summary = json.loads((pipeline / "metrics" / "summary.json").read_text())
    rows = table["candidates"]
    assert {r["candidate"] for r in rows} == {"linear/wd=0", "linear/wd=0.01", "gated/wd=0", "gated/wd=0.01", "logreg"}
    for modality in ("text", "audio", "fusion"):
        mine = [r for r in rows if r["modality"] == modality and r["candidate"] != "logreg"]
        (chosen,) = [r for r in mine if r["selected"]]
        assert chosen["val_ua"] == max(r["val_ua"] for r in mine)  # chosen on validation, never on test
        assert summary[modality]["candidate"] == chosen["candidate"]
        assert summary[modality]["ua"] == pytest.approx(chosen["ua"])  # the reported row is the chosen one's
        baseline = summary[f"{modality}_baseline"]
        assert baseline["C"] in (0.01, 0.1, 1.0) and 0.0 <= baseline["vs_chosen"]["p_value"] <= 1.0
        assert baseline["vs_chosen"]["ua_diff"] == pytest.approx(summary[modality]["ua"] - baseline["ua"])
        record = json.loads((pipeline / "models" / modality / "candidates.json").read_text())
        # Nothing trained twice: one fit per (candidate, fold), all from the one train stage of this modality.
        assert len(record["fits"]) == 4 * 2
        card = json.loads((pipeline / "models" / modality / "final" / "model.json").read_text())
        assert card["selection"]["candidate"] == chosen["candidate"] and card["trained_on"].startswith("every")
    registered = summary["mlflow"]["registered"]
    best = max(("text", "audio", "fusion"), key=lambda m: summary[m]["val_ua"])
    assert registered["modality"] == best and registered["candidate"] == summary[best]["candidate"]
    db = sqlite3.connect(pipeline / "mlflow.db")
    versions = db.execute("select name, version from model_versions").fetchall()
    assert (registered["name"], int(registered["version"])) in [(n, int(v)) for n, v in versions]
    splits = json.loads((pipeline / "data" / "splits.json").read_text())
    assert splits["validation"].startswith("speakers") and all(f["val_speakers"] for f in splits["folds"])


@pytest.mark.slow
def test_folds_are_sessions_and_each_test_utterance_counts_once(pipeline: Path) -> None:
    report = json.loads((pipeline / "data" / "prepared" / "report.json").read_text())
    summary = json.loads((pipeline / "metrics" / "summary.json").read_text())
    assert report["kept"] + report["dropped"] == report["input_utterances"]
    # loso: fold k tests session k; train.folds [1, 2] evaluates sessions 1 and 2, each utterance once.
    expected = report["by_session"]["Session1"] + report["by_session"]["Session2"]
    assert summary["text"]["n_test"] == summary["fusion"]["n_test"] == expected


@pytest.mark.slow
def test_mlflow_has_one_run_per_stage_with_the_chosen_curves(pipeline: Path) -> None:
    db = sqlite3.connect(pipeline / "mlflow.db")
    runs = db.execute("select r.run_uuid, r.name from runs r join tags t on t.run_uuid = r.run_uuid "
                      "where t.key = 'mmser.stage' and t.value = 'train'").fetchall()
    assert sorted(name for _, name in runs) == ["train audio", "train fusion", "train text"]
    run_id = dict((n, r) for r, n in runs)["train fusion"]
    epochs = db.execute("select count(*) from metrics where run_uuid = ? and key = 'fold1.val_ua'",
                        (run_id,)).fetchone()
    assert epochs[0] == 12
    keys = {k for (k,) in db.execute("select key from metrics where run_uuid = ?", (run_id,))}
    assert {"fold1.train_loss", "fold2.val_loss", "val_ua.linear/wd_0", "test_ua"} <= keys
    tags = dict(db.execute("select key, value from tags where run_uuid = ?", (run_id,)).fetchall())
    assert len(tags["git_commit"].split("-")[0]) == 40 and "input.text.md5" in tags
    stages = {v for (v,) in db.execute("select value from tags where key = 'mmser.stage'")}
    assert stages == {"pipeline", "generate_demo", "prepare", "split", "transcribe", "extract_text", "extract_audio",
                      "train", "evaluate"}
    summary = json.loads((pipeline / "metrics" / "summary.json").read_text())
    assert set(summary["mlflow"]["train_run_ids"].values()) == {r for r, _ in runs}
    # Every stage's run nests under the pipeline's parent run, which carries the aggregate metrics.
    parent = summary["mlflow"]["parent_run_id"]
    children = {r for (r,) in db.execute("select run_uuid from tags where key = 'mlflow.parentRunId' and value = ?",
                                         (parent,))}
    # 3 training runs + generate_demo, prepare, split, transcribe, extract_text, extract_audio, evaluate
    assert {r for r, _ in runs} <= children and len(children) == 3 + 7
    parent_metrics = {k for (k,) in db.execute("select key from metrics where run_uuid = ?", (parent,))}
    assert {"fusion_ua", "text_wa", "audio_macro_f1", "fusion_baseline_ua"} <= parent_metrics


@pytest.mark.slow
def test_rerun_is_noop_and_edits_rerun_only_what_they_feed(pipeline: Path) -> None:
    assert _would_run(pipeline) == set()
    original = (pipeline / "params.yaml").read_text()
    try:
        _set_params(pipeline, train={"lr": 0.002})
        assert _would_run(pipeline) == {"train@text", "train@audio", "train@fusion"}
        (pipeline / "params.yaml").write_text(original)
        _set_params(pipeline, split={"val_speakers": 0.3})
        assert _would_run(pipeline) == {"split"}
        (pipeline / "params.yaml").write_text(original)
        _set_params(pipeline, evaluate={"bootstrap_resamples": 300})
        assert _would_run(pipeline) == {"evaluate"}  # no train@ stage
        (pipeline / "params.yaml").write_text(original)
        # A text-encoder change re-extracts text and retrains what text feeds; audio and the corpus are left alone.
        _set_params(pipeline, extract_text={"pooling": "cls"})
        assert _ran(_run(["dvc", "repro"], pipeline).stdout) == {"extract_text", "train@text", "train@fusion",
                                                                 "evaluate"}
    finally:
        (pipeline / "params.yaml").write_text(original)
    _run(["dvc", "repro"], pipeline)  # back to the original outputs (from DVC's run cache)
    assert _would_run(pipeline) == set()


@pytest.mark.slow
@pytest.mark.parametrize("edit, expected", [
    ({"data": {"root": "no/such/dir"}}, "no/such/dir"),
    ({"train": {"epoch": 3}}, "train.epoch"),
    ({"train": {"epochs": "ten"}}, "train.epochs"),
    ({"extract_audio": {"encoder": "wav2vec"}}, "extract_audio.encoder"),
])
def test_bad_input_fails_in_one_line_and_leaves_no_output(pipeline: Path, tmp_path: Path, edit, expected) -> None:
    params = yaml.safe_load((pipeline / "params.yaml").read_text())
    for section, values in edit.items():
        params[section].update(values)
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(params))
    table, report = tmp_path / "utterances.csv", tmp_path / "report.json"
    result = _run([sys.executable, "stages/prepare.py", "--root", params["data"]["root"], "--manifest",
                   params["data"]["manifest"], "--table", str(table), "--report", str(report),
                   "--params", str(bad)], pipeline, check=False)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not table.exists() and not report.exists()
