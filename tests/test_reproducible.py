"""The same params.yaml gives the same numbers on any CPU: fp32 by default, bf16 only when asked for."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from test_pipeline import _copy_repo, _run
from tiny_models import make_tiny_bert
from tiny_speech import write_wavs

from mmser.data.audio import load_audio
from mmser.encoders.device import NO_NATIVE_BF16_ENV, native_bf16_cpu
from mmser.encoders.identity import embedding_identity
from mmser.encoders.text import TextEncoder
from mmser.encoders.vggish import VGGishEncoder
from mmser.params import load_params

REPO = Path(__file__).resolve().parents[1]
TEXTS = ["i am so angry today!", "okay.", "the weather is mild", "we won", "you did not call me back"]


def _cpu(monkeypatch: pytest.MonkeyPatch, *, native_bf16: bool) -> None:
    """Make this CPU report native bf16 (AVX-512 BF16), or not, whatever it really has."""
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": native_bf16, "amx_bf16": False})


def test_environment_variable_forces_a_cpu_without_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    _cpu(monkeypatch, native_bf16=True)
    monkeypatch.delenv(NO_NATIVE_BF16_ENV, raising=False)
    assert native_bf16_cpu()
    monkeypatch.setenv(NO_NATIVE_BF16_ENV, "1")
    assert not native_bf16_cpu()
    monkeypatch.setenv(NO_NATIVE_BF16_ENV, "0")
    assert native_bf16_cpu()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("repro")
    return {"bert": make_tiny_bert(root / "bert"),
            "waves": [load_audio(p, 16000) for p in write_wavs(root / "wavs", [12000, 24000, 40000])]}


def _embed(inputs: dict, tiny_vggish_weights: Path, *, text_precision: str, audio_precision: str):
    text = TextEncoder(model=str(inputs["bert"]), pooling="mean", max_length=16, device="cpu",
                       precision=text_precision)
    vggish = VGGishEncoder(weights_dir=str(tiny_vggish_weights), postprocess=False, device="cpu",
                           precision=audio_precision)
    return ((text.encode(TEXTS, progress=False), embedding_identity(text)),
            (vggish.encode(inputs["waves"]), embedding_identity(vggish, sample_rate=16000)))


def test_default_params_give_the_same_embeddings_with_or_without_native_bf16(
        inputs: dict, tiny_vggish_weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    params = load_params(REPO / "params.yaml")
    default = {"text_precision": params["extract_text"].precision,
               "audio_precision": params["extract_audio"].precision}
    monkeypatch.delenv(NO_NATIVE_BF16_ENV, raising=False)
    _cpu(monkeypatch, native_bf16=True)
    (text_a, ident_text_a), (audio_a, ident_audio_a) = _embed(inputs, tiny_vggish_weights, **default)
    (_, auto_text), (_, auto_audio) = _embed(inputs, tiny_vggish_weights, text_precision="auto",
                                             audio_precision="auto")
    assert auto_text["precision"] == auto_audio["precision"] == "bf16"  # the opt-in fast path on such a CPU
    monkeypatch.setenv(NO_NATIVE_BF16_ENV, "1")
    (text_b, ident_text_b), (audio_b, ident_audio_b) = _embed(inputs, tiny_vggish_weights, **default)
    assert ident_text_a == ident_text_b and ident_audio_a == ident_audio_b
    assert ident_text_a["precision"] == ident_audio_a["precision"] == "fp32"
    np.testing.assert_array_equal(text_a, text_b)
    for a, b in zip(audio_a, audio_b, strict=True):
        np.testing.assert_array_equal(a, b)


def _committed_summary() -> dict:
    """metrics/summary.json as committed in this checkout (HEAD), not as a local run may have left it."""
    text = subprocess.run(["git", "show", "HEAD:metrics/summary.json"], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout
    return json.loads(text)


def _scores(summary: dict) -> dict[str, dict[str, float]]:
    """ua / wa / macro_f1 per modality (every section that carries them), nothing run-specific."""
    return {name: {k: section[k] for k in ("ua", "wa", "macro_f1")}
            for name, section in summary.items() if isinstance(section, dict) and "ua" in section}


@pytest.mark.slow
def test_default_pipeline_on_a_cpu_without_bf16_reproduces_the_committed_metrics(tmp_path: Path,
                                                                                 monkeypatch: pytest.MonkeyPatch
                                                                                 ) -> None:
    """A clone with the committed params.yaml, on a CPU that reports no native bf16, gives metrics/summary.json
    exactly (about 10 minutes on 2 cores: the whole default pipeline)."""
    expected = _scores(_committed_summary())
    assert {"text", "audio", "fusion"} <= set(expected)
    repo = _copy_repo(tmp_path / "repo")
    monkeypatch.setenv(NO_NATIVE_BF16_ENV, "1")  # _run passes os.environ on to dvc and the stages
    monkeypatch.setenv("MMSER_CACHE_DIR", str(tmp_path / "cache"))  # a fresh clone's empty cache
    assert os.environ[NO_NATIVE_BF16_ENV] == "1"
    _run(["dvc", "repro"], repo)
    got = _scores(json.loads((repo / "metrics" / "summary.json").read_text()))
    assert got == expected
