"""Embedding cache: content addressing, incremental reruns, resume after a crash, damaged entries."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
from tiny_models import make_tiny_bert
from tiny_speech import write_wavs

from mmser.cache import EmbeddingCache, cache_dir, entry_key, fetch_or_compute, file_hash, text_hash
from mmser.encoders.identity import embedding_identity
from mmser.encoders.text import TextEncoder
from mmser.encoders.vggish import VGGishEncoder
from mmser.extract import build_audio_encoder, extract_audio, extract_texts

TEXTS = ["i am so angry today!", "okay.", "the weather is mild", "we won", "you did not call me back",
         "fine", "this is great", "that is terrible", "we lost it"]
LENGTHS = [8000, 16000, 20000, 24000, 31200, 40000, 48000, 12000]


class Counting:
    """Wraps an encoder: counts what it encodes, and raises after `fail_after` batches (a crash mid-run)."""

    def __init__(self, inner, fail_after: int | None = None):
        self.inner, self.fail_after, self.batches, self.items = inner, fail_after, 0, 0
        self.__wrapped__ = inner  # only delegates: the inner encoder's code computes the embeddings

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode(self, inputs, **kwargs):
        if self.fail_after is not None and self.batches >= self.fail_after:
            raise RuntimeError("killed")
        self.batches += 1
        self.items += len(inputs)
        return self.inner.encode(inputs, **kwargs)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MMSER_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def text_encoder(tmp_path_factory: pytest.TempPathFactory) -> TextEncoder:
    return TextEncoder(model=str(make_tiny_bert(tmp_path_factory.mktemp("bert"))), pooling="mean", max_length=16,
                       device="cpu", batch_size=2)


@pytest.fixture(scope="module")
def vggish(tiny_vggish_weights: Path) -> VGGishEncoder:
    return VGGishEncoder(weights_dir=str(tiny_vggish_weights), postprocess=True, batch_size=4)


@pytest.fixture(scope="module")
def wavs(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return write_wavs(tmp_path_factory.mktemp("wavs"), LENGTHS)


def test_cache_dir_default_env_and_dvc_temp_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MMSER_CACHE_DIR")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpabc"))
    assert cache_dir() == (tmp_path / "repo").resolve() / ".cache" / "mmser"  # queued exps share the real one
    monkeypatch.setenv("MMSER_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert cache_dir() == tmp_path / "elsewhere"
    with EmbeddingCache() as cache:
        assert cache.path == tmp_path / "elsewhere" / "embeddings.sqlite"


def test_roundtrip_keys_and_damage_detection(tmp_path: Path) -> None:
    with EmbeddingCache(tmp_path / "c.sqlite") as cache:
        a, b = np.arange(6, dtype=np.float32).reshape(2, 3), np.ones((1, 4), np.float32)
        cache.put_many([("a", a), ("b", b)])
        found, damaged = cache.get_many(["a", "b", "absent"])
        np.testing.assert_array_equal(found["a"], a)
        assert set(found) == {"a", "b"} and damaged == [] and len(cache) == 2
        cache._db.execute("UPDATE embeddings SET data = ? WHERE key = 'a'", (b"\0" * 24,))
        cache._db.commit()
        found, damaged = cache.get_many(["a", "b"])
        assert set(found) == {"b"} and damaged == ["a"]
    assert entry_key({"m": 1}, text_hash("x")) != entry_key({"m": 2}, text_hash("x"))
    assert entry_key({"m": 1}, text_hash("x")) != entry_key({"m": 1}, text_hash("y"))
    assert entry_key({"m": 1, "n": 2}, "h") == entry_key({"n": 2, "m": 1}, "h")


def test_unreadable_cache_file_is_set_aside(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with EmbeddingCache(path) as cache:
        cache.put_many([("k", np.zeros((1, 2), np.float32))])
        assert len(cache) == 1
    assert len(list(tmp_path.glob("c.sqlite.damaged-*"))) == 1


def test_a_failed_batch_leaves_no_partial_entries(tmp_path: Path) -> None:
    def compute(keys):
        yield keys[:2], [np.zeros((1, 2))] * 2
        raise RuntimeError("killed")

    with EmbeddingCache(tmp_path / "c.sqlite") as cache:
        with pytest.raises(RuntimeError, match="killed"):
            fetch_or_compute(cache, ["a", "b", "c", "d"], compute)
        assert len(cache) == 2  # the finished batch is committed, nothing of the failed one


def test_text_rerun_computes_only_new_texts_and_duplicates_once(text_encoder: TextEncoder) -> None:
    enc = Counting(text_encoder)
    with EmbeddingCache() as cache:
        first, stats = extract_texts(TEXTS[:-1] + ["okay."], enc, cache)  # "okay." twice: one entry
        assert (stats.requested, stats.unique, stats.hits, stats.misses) == (len(TEXTS), len(TEXTS) - 1, 0,
                                                                             len(TEXTS) - 1)
        np.testing.assert_array_equal(first[1], first[-1])
        enc.items = 0
        second, stats = extract_texts(TEXTS, enc, cache)
        assert (stats.hits, stats.misses, enc.items) == (len(TEXTS) - 1, 1, 1)
    for a, b in zip(first[:-1], second[:-1]):
        np.testing.assert_array_equal(a, b)
    expected = text_encoder.encode(TEXTS, progress=False)
    np.testing.assert_allclose(np.concatenate(second), expected, atol=1e-5)


def test_audio_rerun_after_adding_one_utterance_computes_one_per_encoder(vggish: VGGishEncoder, wavs, tmp_path) -> None:
    egemaps = build_audio_encoder(encoder="egemaps", sample_rate=16000)
    for encoder in (vggish, egemaps):
        enc = Counting(encoder)
        with EmbeddingCache() as cache:
            first, stats = extract_audio(wavs[:-1], enc, cache, sample_rate=16000, workers=0)
            assert (stats.hits, stats.misses, enc.items) == (0, len(wavs) - 1, len(wavs) - 1)
            enc.items = 0
            second, stats = extract_audio(wavs, enc, cache, sample_rate=16000, workers=0)
            assert (stats.hits, stats.misses, enc.items) == (len(wavs) - 1, 1, 1), encoder.name
        for a, b in zip(first, second):
            np.testing.assert_array_equal(a, b)
        if encoder is vggish:
            assert [s.shape[0] for s in second] == [1, 1, 1, 1, 2, 2, 3, 1]


def test_content_addressed_renamed_file_is_a_hit_changed_file_a_miss(vggish: VGGishEncoder, wavs, tmp_path) -> None:
    renamed = tmp_path / "renamed.wav"
    renamed.write_bytes(Path(wavs[0]).read_bytes())
    changed = write_wavs(tmp_path / "changed", [LENGTHS[1]], first_seed=99)[0]
    with EmbeddingCache() as cache:
        extract_audio(wavs[:2], vggish, cache, sample_rate=16000, workers=0)
        _, stats = extract_audio([str(renamed), changed], vggish, cache, sample_rate=16000, workers=0)
    assert (stats.hits, stats.misses) == (1, 1)
    assert file_hash(renamed) == file_hash(wavs[0])


def test_interrupted_extraction_resumes_without_recomputing(vggish: VGGishEncoder, wavs) -> None:
    with EmbeddingCache() as cache:
        crashing = Counting(vggish, fail_after=2)
        with pytest.raises(RuntimeError, match="killed"):
            extract_audio(wavs, crashing, cache, sample_rate=16000, workers=1, utterances_per_batch=3)
        assert crashing.items == 6 and len(cache) == 6  # two batches of 3 finished and were committed
        resumed = Counting(vggish)
        out, stats = extract_audio(wavs, resumed, cache, sample_rate=16000, workers=1, utterances_per_batch=3)
        assert (stats.hits, stats.misses, resumed.items) == (6, 2, 2)
    reference = vggish.encode([np.asarray(w) for w in map(_read, wavs)])
    for a, b in zip(out, reference):
        np.testing.assert_allclose(a, b, atol=1e-3)  # quantised outputs; batch composition differs


def test_interrupted_text_extraction_resumes(text_encoder: TextEncoder) -> None:
    with EmbeddingCache() as cache:
        with pytest.raises(RuntimeError, match="killed"):
            extract_texts(TEXTS, Counting(text_encoder, fail_after=3), cache)  # batch_size 2: 6 texts done
        resumed = Counting(text_encoder)
        _, stats = extract_texts(TEXTS, resumed, cache)
        assert (stats.hits, stats.misses, resumed.items) == (6, len(TEXTS) - 6, len(TEXTS) - 6)


def test_damaged_entry_is_recomputed(vggish: VGGishEncoder, wavs) -> None:
    with EmbeddingCache() as cache:
        first, _ = extract_audio(wavs, vggish, cache, sample_rate=16000, workers=0)
        key = entry_key(embedding_identity(vggish, sample_rate=16000), file_hash(wavs[3]))
        cache._db.execute("UPDATE embeddings SET data = substr(data, 1, 100) WHERE key = ?", (key,))  # truncated
        cache._db.commit()
        enc = Counting(vggish)
        second, stats = extract_audio(wavs, enc, cache, sample_rate=16000, workers=0)
        assert (stats.damaged, stats.misses, stats.hits, enc.items) == (1, 1, len(wavs) - 1, 1)
        np.testing.assert_array_equal(second[3], first[3])
        _, stats = extract_audio(wavs, vggish, cache, sample_rate=16000, workers=0)
        assert (stats.damaged, stats.misses) == (0, 0)  # the recomputed entry replaced the damaged one
    with sqlite3.connect(cache.path) as db:
        assert db.execute("select count(*) from embeddings").fetchone()[0] == len(wavs)


def test_identity_change_is_a_new_key(tiny_vggish_weights: Path, vggish: VGGishEncoder, wavs) -> None:
    raw = VGGishEncoder(weights_dir=str(tiny_vggish_weights), postprocess=False)
    with EmbeddingCache() as cache:
        extract_audio(wavs[:2], vggish, cache, sample_rate=16000, workers=0)
        _, stats = extract_audio(wavs[:2], raw, cache, sample_rate=16000, workers=0)
    assert stats.misses == 2


def _read(path: str) -> np.ndarray:
    from mmser.data.audio import load_audio

    return load_audio(path, 16000)
