"""Extraction sharded over 2 CPU processes (Lightning DDP, gloo) equals one process bit for bit.

The real stage scripts run as subprocesses, once with `distributed.strategy: single` and once with
`ddp` (2 devices): same npz outputs (np.array_equal), one MLflow run per invocation, cache semantics kept.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from tiny_models import make_tiny_bert
from tiny_speech import write_wavs

from mmser.embeddings import load_embeddings

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["i am so angry today!", "okay.", "the weather is mild, is it not?", "we won", "fine", "this is great",
         "you did not call me back, that is terrible.", "we lost it", "that is okay", "i am happy", "so sad"]
LENGTHS = [8000 + 200 * i for i in range(40)]  # 0.5 to 1 s; 40 files: egemaps' batches of 16 are 16, 16, 8


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sharded")
    bert = make_tiny_bert(root / "bert")
    wavs = write_wavs(root / "wavs", LENGTHS)
    table = pd.DataFrame({"id": [f"u{i:02d}" for i in range(len(TEXTS))], "text": TEXTS, "path": wavs[:len(TEXTS)]})
    table.to_csv(root / "utterances.csv", index=False)
    table.iloc[:9].to_csv(root / "first9.csv", index=False)
    pd.DataFrame({"id": [f"a{i:02d}" for i in range(len(wavs))], "text": "okay", "path": wavs}).to_csv(
        root / "audio.csv", index=False)
    return {"root": root, "bert": bert, "table": root / "utterances.csv", "first9": root / "first9.csv",
            "audio": root / "audio.csv"}


def _params(root: Path, bert: Path, strategy: str) -> Path:
    """The repository's params.yaml with a tiny text model, small batches and the given launch."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    # 11 texts in batches of 3: 4 batches, rank 0 gets 2 and rank 1 gets 2; the last batch is short.
    params["extract_text"].update(model=str(bert), pooling="mean", batch_size=3, device="cpu", precision="fp32")
    params["extract_audio"].update(encoder="egemaps", workers=0, device="cpu")
    params["distributed"] = {"accelerator": "cpu", "devices": 1 if strategy == "single" else 2, "num_nodes": 1,
                             "strategy": strategy}
    path = root / f"params-{strategy}.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def _stage(name: str, table: Path, out: Path, params: Path, cache: Path, root: Path) -> dict:
    """Run stages/<name>.py as DVC would; return its info JSON."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}", "MMSER_CACHE_DIR": str(cache),
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src")}
    env.pop("LOCAL_RANK", None)
    info = out.with_suffix(".json")
    inputs = ["--table", str(table)]
    if name == "extract_text":  # its texts come from the transcribe stage: here the table's own (no ASR)
        (root / "texts.json").write_text(json.dumps({"asr": None}))
        inputs = ["--texts", str(table), "--texts-report", str(root / "texts.json")]
    result = subprocess.run([sys.executable, str(ROOT / "stages" / f"{name}.py"), *inputs,
                             "--out", str(out), "--info", str(info), "--params", str(params)],
                            cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert not list(out.parent.glob(".shards-*")), "the ranks' batch files are removed after the merge"
    return json.loads(info.read_text())


def _stage_runs(root: Path, stage: str) -> list[str]:
    """Statuses of the MLflow runs tagged with `stage`."""
    with sqlite3.connect(root / "mlflow.db") as db:
        return [s for (s,) in db.execute("SELECT r.status FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                                         "WHERE t.key = 'mmser.stage' AND t.value = ?", (stage,))]


def _assert_bitwise_equal(a: Path, b: Path) -> None:
    ids_a, frames_a, identity_a = load_embeddings(a)
    ids_b, frames_b, identity_b = load_embeddings(b)
    assert ids_a == ids_b and identity_a == identity_b
    for i, (x, y) in enumerate(zip(frames_a, frames_b)):
        assert x.dtype == y.dtype == np.float32
        assert np.array_equal(x, y), f"utterance {ids_a[i]} differs"


@pytest.mark.slow
def test_text_ddp_two_processes_equals_one_process_bitwise(corpus: dict[str, Path]) -> None:
    root, out = corpus["root"], corpus["root"] / "text"
    single_params, ddp_params = _params(root, corpus["bert"], "single"), _params(root, corpus["bert"], "ddp")
    single = _stage("extract_text", corpus["table"], out / "single.npz", single_params, root / "cache-single", root)
    assert single["processes"] == 1 and single["cache_misses"] == len(TEXTS)
    # Empty cache: 11 texts in batches of 3 (3, 3, 3, 2); rank 0 encodes batches 0 and 2, rank 1 batches 1 and 3.
    ddp = _stage("extract_text", corpus["table"], out / "ddp.npz", ddp_params, root / "cache-ddp", root)
    assert (ddp["processes"], ddp["cache_misses"]) == (2, len(TEXTS))
    _assert_bitwise_equal(out / "single.npz", out / "ddp.npz")
    # A cache that holds part of the corpus: only the 2 texts it lacks are computed, one batch, so rank 1 has none.
    # (Batches differ from the full run's, and so may the last bits: compare with one process from the same cache.)
    for cache in ("cache-part-single", "cache-part-ddp"):
        _stage("extract_text", corpus["first9"], out / f"{cache}.npz", single_params, root / cache, root)
    rest_single = _stage("extract_text", corpus["table"], out / "rest-single.npz", single_params,
                         root / "cache-part-single", root)
    rest = _stage("extract_text", corpus["table"], out / "rest.npz", ddp_params, root / "cache-part-ddp", root)
    counts = [(info["cache_hits"], info["cache_misses"]) for info in (rest_single, rest)]
    assert counts == [(9, 2), (9, 2)]
    _assert_bitwise_equal(out / "rest-single.npz", out / "rest.npz")
    # A rerun with everything cached computes nothing; the other rank is started and stops at once.
    again = _stage("extract_text", corpus["table"], out / "again.npz", ddp_params, root / "cache-part-ddp", root)
    assert (again["cache_hits"], again["cache_misses"]) == (len(TEXTS), 0)
    _assert_bitwise_equal(out / "rest.npz", out / "again.npz")
    _, frames, _ = load_embeddings(out / "ddp.npz")
    assert len({f.tobytes() for f in frames}) > 1  # real rows, not one repeated vector
    # One finished MLflow run per invocation (7), made by launch rank 0 only.
    assert _stage_runs(root, "extract_text") == ["FINISHED"] * 7


@pytest.fixture(scope="module")
def audio_single(corpus: dict[str, Path]) -> Path:
    """eGeMAPS embeddings of 20 WAVs computed in one process."""
    root = corpus["root"]
    out = root / "audio" / "single.npz"
    single = _stage("extract_audio", corpus["audio"], out, _params(root, corpus["bert"], "single"),
                    root / "cache-audio-single", root)
    assert (single["processes"], single["cache_misses"]) == (1, len(LENGTHS))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "ddp_spawn"])
def test_audio_two_processes_equal_one_process_bitwise(corpus: dict[str, Path], audio_single: Path,
                                                       strategy: str) -> None:
    root = corpus["root"]
    out = root / "audio" / f"{strategy}.npz"
    runs_before = len(_stage_runs(root, "extract_audio"))
    info = _stage("extract_audio", corpus["audio"], out, _params(root, corpus["bert"], strategy),
                  root / f"cache-audio-{strategy}", root)
    assert (info["processes"], info["cache_misses"]) == (2, len(LENGTHS))
    _assert_bitwise_equal(audio_single, out)
    assert _stage_runs(root, "extract_audio")[runs_before:] == ["FINISHED"]  # ddp_spawn's parent makes the one run
