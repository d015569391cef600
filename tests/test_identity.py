"""The embeddings' identity names the code that computes them and the libraries' versions: no stale cache hits."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny_models import make_tiny_bert
from tiny_speech import write_wavs

from mmser.cache import EmbeddingCache
from mmser.deps import PACKAGE_DIR
from mmser.encoders import identity as identity_module
from mmser.encoders.identity import code_files, embedding_identity
from mmser.encoders.text import TextEncoder
from mmser.extract import build_audio_encoder, extract_audio, extract_texts
from mmser.predict import ModelMismatchError, _check_identity

TEXTS = ["i am so angry today!", "okay.", "the weather is mild", "we won"]

# A text encoder in its own module, as a new encoder would be; SCALE stands for its pooling code.
FAKE_ENCODER = '''
import numpy as np

from mmser.encoders.device import resolve_device

SCALE = 1.0


class LengthEncoder:
    name = "length"
    batch_size = 2

    def __init__(self):
        self.device = resolve_device("cpu")

    def identity(self):
        return {"encoder": "length", "dim": 1}

    def encode(self, texts, progress=False):
        return np.array([[len(t) * SCALE] for t in texts], dtype=np.float32)
'''


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMSER_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def text_encoder(tmp_path_factory: pytest.TempPathFactory) -> TextEncoder:
    return TextEncoder(model=str(make_tiny_bert(tmp_path_factory.mktemp("bert"))), pooling="mean", max_length=16,
                       device="cpu", batch_size=2)


def _load(path: Path, name: str):
    """A fresh instance of the encoder defined in the file at `path` (imported anew, as a new process would)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module.LengthEncoder()


def _labels(files: list[Path]) -> set[str]:
    return {f.relative_to(PACKAGE_DIR).as_posix() for f in files}


def test_code_and_libraries_cover_what_each_encoder_runs(text_encoder: TextEncoder) -> None:
    assert _labels(code_files(text_encoder, audio=False)) == {
        "encoders/text.py", "encoders/device.py", "encoders/errors.py", "encoders/hf.py", "errors.py"}
    egemaps = build_audio_encoder(encoder="egemaps", sample_rate=16000)
    assert _labels(code_files(egemaps, audio=True)) == {"encoders/egemaps.py", "data/audio.py"}

    text = embedding_identity(text_encoder)
    assert {"torch", "transformers", "tokenizers", "numpy"} <= set(text["libraries"])
    assert not {"opensmile", "soxr", "soundfile", "tqdm"} & set(text["libraries"])
    assert text["libraries"]["torch"] == importlib.metadata.version("torch")
    audio = embedding_identity(egemaps, sample_rate=16000)
    assert set(audio["libraries"]) == {"numpy", "opensmile", "soundfile", "soxr"}
    assert audio["sample_rate"] == 16000 and "sample_rate" not in text
    assert audio["code_sha256"] != text["code_sha256"] and len(text["code_sha256"]) == 16
    # The encoder's own identity is kept as it is, readable, with the two additions.
    assert {k: text[k] for k in text_encoder.identity()} == text_encoder.identity()


def test_a_change_in_the_encoding_code_misses_the_cache_and_an_unchanged_rerun_hits(tmp_path: Path) -> None:
    source = tmp_path / "length_encoder.py"
    source.write_text(FAKE_ENCODER)
    encoder = _load(source, "length_encoder")
    assert "encoders/device.py" in {f.name if f.parent == tmp_path else f.relative_to(PACKAGE_DIR).as_posix()
                                    for f in code_files(encoder, audio=False)}
    with EmbeddingCache() as cache:
        first, stats = extract_texts(TEXTS, encoder, cache)
        assert (stats.hits, stats.misses) == (0, 4)
        again, stats = extract_texts(TEXTS, _load(source, "length_encoder"), cache)
        assert (stats.hits, stats.misses) == (4, 0) and all(np.array_equal(a, b) for a, b in zip(first, again))

        source.write_text(FAKE_ENCODER.replace("SCALE = 1.0", "SCALE = 1.0  # a comment is not code"))
        _, stats = extract_texts(TEXTS, _load(source, "length_encoder"), cache)
        assert stats.misses == 0

        source.write_text(FAKE_ENCODER.replace("SCALE = 1.0", "SCALE = 2.0"))  # a fix in the pooling
        fixed, stats = extract_texts(TEXTS, _load(source, "length_encoder"), cache)
        assert (stats.hits, stats.misses) == (0, 4)
        assert [float(v[0, 0]) for v in fixed] == [2.0 * len(t) for t in TEXTS]  # new vectors, not the old ones


def test_a_library_upgrade_misses_the_cache(text_encoder: TextEncoder, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    wavs = write_wavs(tmp_path / "wavs", [16000, 24000])
    egemaps = build_audio_encoder(encoder="egemaps", sample_rate=16000)
    with EmbeddingCache() as cache:
        extract_texts(TEXTS, text_encoder, cache)
        extract_audio(wavs, egemaps, cache, sample_rate=16000, workers=0)
        real = identity_module._version
        monkeypatch.setattr(identity_module, "_version",
                            lambda dist: "99.0" if dist in ("torch", "soxr") else real(dist))
        _, stats = extract_texts(TEXTS, text_encoder, cache)
        assert stats.misses == 4  # another torch: recomputed
        _, stats = extract_audio(wavs, egemaps, cache, sample_rate=16000, workers=0)
        assert stats.misses == 2  # another resampler: recomputed
        monkeypatch.setattr(identity_module, "_version", real)
        _, stats = extract_texts(TEXTS, text_encoder, cache)
        assert (stats.hits, stats.misses) == (4, 0)


def test_predict_warns_on_code_or_library_drift_and_refuses_another_encoder(text_encoder: TextEncoder,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    card = embedding_identity(text_encoder)  # what the embeddings file (and so the model card) records
    with caplog.at_level(logging.WARNING, logger="mmser.predict"):
        _check_identity("text", card, embedding_identity(text_encoder))  # rebuilt as predict does: no warning
    assert caplog.records == []

    drifted = {**card, "code_sha256": "0" * 16, "libraries": {**card["libraries"], "torch": "1.0"}}
    with caplog.at_level(logging.WARNING, logger="mmser.predict"):
        _check_identity("text", drifted, embedding_identity(text_encoder))
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "code computing its embeddings changed" in messages and "0000000000000000" in messages
    assert "'torch': ('1.0', " in messages

    with pytest.raises(ModelMismatchError, match="pooling: card 'cls', here 'mean'"):
        _check_identity("text", {**card, "pooling": "cls"}, embedding_identity(text_encoder))
