"""Text encoder on a tiny random BERT saved like a real checkpoint, and on the packaged MiniLM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import make_tiny_bert

from mmser.encoders.errors import InvalidWeightsError, MissingWeightsError
from mmser.encoders import device as device_module
from mmser.encoders import text as text_module
from mmser.encoders.text import TextEncoder, token_batches

TEXTS = [
    "i am so angry today!",
    "okay.",
    "the weather is mild, is it not?",
    "we won",
    "you did not call me back, that is terrible.",
    "fine",
    "this is great",
]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="module")
def tiny_bert_no_pooler(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert-nopool"), pooler=False)


def _encoder(path: Path, pooling: str, batch_size: int = 3) -> TextEncoder:
    """fp32 whatever the CPU (auto may pick bf16): these tests compare with the model's own fp32 outputs."""
    return TextEncoder(model=str(path), pooling=pooling, max_length=16, device="cpu", batch_size=batch_size,
                       precision="fp32")


@pytest.mark.parametrize("pooling", ["mean", "cls", "pooler"])
def test_shape_and_order_preserved_across_length_buckets(tiny_bert: Path, pooling: str) -> None:
    encoder = _encoder(tiny_bert, pooling)
    assert encoder.dim == 32
    together = encoder.encode(TEXTS, progress=False)
    assert together.shape == (len(TEXTS), 32)
    assert together.dtype == np.float32
    assert np.isfinite(together).all()
    for i, text in enumerate(TEXTS):
        alone = encoder.encode([text], progress=False)[0]
        np.testing.assert_allclose(together[i], alone, atol=1e-5, err_msg=f"row {i} ({text!r})")
    # Rows are distinct texts, so they must not all be the same vector.
    assert not np.allclose(together[0], together[1])


def test_batch_size_does_not_change_embeddings(tiny_bert: Path) -> None:
    one = _encoder(tiny_bert, "mean", batch_size=1).encode(TEXTS, progress=False)
    many = _encoder(tiny_bert, "mean", batch_size=64).encode(TEXTS, progress=False)
    np.testing.assert_allclose(one, many, atol=1e-5)


def test_token_batches_cover_every_text_once_within_the_caps() -> None:
    lengths = [5, 3, 9, 3, 200, 7, 5, 5]
    groups = token_batches(lengths, max_texts=3, max_tokens=16)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    flat = [lengths[i] for g in groups for i in g]
    assert flat == sorted(lengths)  # shortest first: neighbours in a group have similar lengths
    for g in groups:
        assert len(g) <= 3
        assert len(g) == 1 or len(g) * max(lengths[i] for i in g) <= 16
    assert [list(g) for g in groups if 4 in g] == [[4]]  # longer than the budget: alone
    assert [list(g) for g in token_batches(lengths, max_texts=64)] == [list(np.argsort(lengths, kind="stable"))]
    assert token_batches([], max_texts=4) == []


def test_token_budget_and_cores_do_not_change_embeddings(tiny_bert: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Small token budgets (many batches, spread over the cores) give each text its embedding alone."""
    encoder = _encoder(tiny_bert, "mean", batch_size=64)
    alone = np.stack([encoder.encode([t], progress=False)[0] for t in TEXTS])
    monkeypatch.setattr(text_module, "CPU_TOKENS_PER_FORWARD", 12)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # two workers even on a one-core runner
        spread = encoder.encode(TEXTS * 3, progress=False)
        # A worker's set_num_threads(1) lowers MKL's count for the whole process: it must be put back.
        assert torch.get_num_threads() == 2
        assert "mkl_get_max_threads() : 1" not in torch.__config__.parallel_info()
        torch.set_num_threads(1)
        one_core = encoder.encode(TEXTS * 3, progress=False)
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_allclose(spread, np.tile(alone, (3, 1)), atol=1e-5)
    np.testing.assert_array_equal(spread, one_core)  # same batches, so bitwise the same whatever the cores


def test_empty_input(tiny_bert: Path) -> None:
    assert _encoder(tiny_bert, "mean").encode([], progress=False).shape == (0, 32)


def test_poolings_differ(tiny_bert: Path) -> None:
    out = {p: _encoder(tiny_bert, p).encode(TEXTS, progress=False) for p in ("mean", "cls", "pooler")}
    assert not np.allclose(out["mean"], out["cls"], atol=1e-3)
    assert not np.allclose(out["mean"], out["pooler"], atol=1e-3)
    assert not np.allclose(out["cls"], out["pooler"], atol=1e-3)
    # The pooler is tanh(dense(cls)): bounded, unlike the raw hidden states.
    assert np.abs(out["pooler"]).max() <= 1.0


def test_pooling_matches_the_model_outputs(tiny_bert: Path) -> None:
    encoder = _encoder(tiny_bert, "pooler")
    texts = TEXTS[:3]
    batch = encoder.tokenizer(texts, padding=True, truncation=True, max_length=16, return_tensors="pt")
    with torch.inference_mode():
        out = encoder.model(**batch)
    np.testing.assert_allclose(encoder.encode(texts, progress=False), out.pooler_output.numpy(), atol=1e-5)
    np.testing.assert_allclose(_encoder(tiny_bert, "cls").encode(texts, progress=False),
                               out.last_hidden_state[:, 0].numpy(), atol=1e-5)
    mask = batch["attention_mask"].unsqueeze(-1).float()
    mean = (out.last_hidden_state * mask).sum(1) / mask.sum(1)
    np.testing.assert_allclose(_encoder(tiny_bert, "mean").encode(texts, progress=False), mean.numpy(), atol=1e-5)


def test_long_text_is_truncated_to_max_length(tiny_bert: Path) -> None:
    encoder = _encoder(tiny_bert, "mean")
    long_text = " ".join(["we won"] * 40)
    out = encoder.encode([long_text, "okay"], progress=False)
    assert out.shape == (2, 32) and np.isfinite(out).all()


def test_identity_describes_the_embeddings(tiny_bert: Path, tmp_path: Path) -> None:
    ident = _encoder(tiny_bert, "cls").identity()
    weights = ident.pop("weights_sha256")
    assert ident == {"encoder": "text", "model": str(tiny_bert), "pooling": "cls", "max_length": 16,
                     "precision": "fp32", "dim": 32}
    # The same name with other weights is another identity (a cache key must not reuse stale embeddings).
    other = make_tiny_bert(tmp_path / "other", seed=1)
    assert _encoder(other, "cls").identity()["weights_sha256"] != weights
    assert make_tiny_bert(tmp_path / "same", seed=0) and _encoder(tmp_path / "same", "cls").identity()[
        "weights_sha256"] == weights


def make_tiny_roberta(directory: Path) -> Path:
    """A 2-layer random RoBERTa with a byte-level BPE tokenizer (every byte a token), saved with save_pretrained."""
    import json

    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    vocab = {t: i for i, t in enumerate(["<s>", "<pad>", "</s>", "<unk>", "<mask>",
                                         *sorted(ByteLevel.alphabet())])}
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = RobertaTokenizerFast(vocab_file=str(directory / "vocab.json"),
                                     merges_file=str(directory / "merges.txt"))
    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=130, pad_token_id=1)
    RobertaModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.mark.parametrize("pooling", ["mean", "cls", "pooler"])
def test_roberta_family_loads_and_pools(tmp_path: Path, pooling: str) -> None:
    path = make_tiny_roberta(tmp_path / "roberta")
    encoder = TextEncoder(model=str(path), pooling=pooling, max_length=128, device="cpu", batch_size=3)
    together = encoder.encode(TEXTS, progress=False)
    assert together.shape == (len(TEXTS), 32) and np.isfinite(together).all()
    for i, text in enumerate(TEXTS):  # padding (RoBERTa pads with id 1, positions from 2) changes nothing
        np.testing.assert_allclose(together[i], encoder.encode([text], progress=False)[0], atol=1e-5)
    long_text = " ".join(["we won"] * 100)  # 600 byte tokens: truncated to max_length
    assert np.isfinite(encoder.encode([long_text], progress=False)).all()


def test_bf16_autocast_stays_close_to_fp32(tiny_bert: Path) -> None:
    fp32 = _encoder(tiny_bert, "mean").encode(TEXTS, progress=False)
    bf16 = TextEncoder(model=str(tiny_bert), pooling="mean", max_length=16, device="cpu", precision="bf16")
    assert bf16.identity()["precision"] == "bf16"
    got = bf16.encode(TEXTS, progress=False)
    cosine = (got * fp32).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(fp32, axis=1))
    assert cosine.min() > 0.999


@pytest.mark.parametrize("name", ["no-such-org/no-such-model", "/nonexistent/bert-dir"])
def test_missing_model_points_to_the_offline_default(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingWeightsError) as err:
        TextEncoder(model=name, pooling="mean", max_length=16, device="cpu")
    assert "all-MiniLM-L6-v2" in str(err.value)
    assert name in str(err.value)


def test_checkpoint_without_pooler(tiny_bert_no_pooler: Path) -> None:
    with pytest.raises(InvalidWeightsError, match="pooler"):
        _encoder(tiny_bert_no_pooler, "pooler")
    # The other poolings do not use the pooler, so its absence is harmless there.
    out = _encoder(tiny_bert_no_pooler, "mean").encode(TEXTS[:2], progress=False)
    assert out.shape == (2, 32)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_packaged_minilm_loads_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    encoder = TextEncoder(model="all-MiniLM-L6-v2", pooling="mean", max_length=32, device="cpu")
    furious, angry, weather = encoder.encode(["I am furious", "I am angry", "the weather is mild"], progress=False)
    assert furious.shape == (384,)
    assert _cosine(furious, angry) > _cosine(furious, weather) + 0.2


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_only_on_a_cpu_with_native_bf16(tiny_bert: Path, native: bool,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device_module, "native_bf16_cpu", lambda: native)
    encoder = TextEncoder(model=str(tiny_bert), pooling="mean", max_length=16, device="cpu", precision="auto")
    assert encoder.identity()["precision"] == ("bf16" if native else "fp32")
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert device_module.autocast_dtype("auto", cuda) == torch.float16
    assert device_module.autocast_dtype("auto", cpu, bf16_on_cpu=False) is None  # an encoder not measured in bf16
    assert device_module.autocast_dtype("fp32", cpu) is None
    assert device_module.autocast_dtype("bf16", cpu) == torch.bfloat16


def test_native_bf16_follows_the_cpu_capabilities(monkeypatch: pytest.MonkeyPatch) -> None:
    for caps, expected in [({"avx512_bf16": True}, True), ({"amx_bf16": True, "avx512_bf16": False}, True),
                           ({"avx512_f": True, "avx512_bf16": False}, False), ({}, False)]:
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda caps=caps: caps)
        assert device_module.native_bf16_cpu() is expected


def test_weights_stored_in_bf16_give_what_autocast_gives_on_fp32_weights(tiny_bert: Path) -> None:
    """Linear weights are rounded to bf16 once at load; autocast over the fp32 weights rounds them every batch."""
    stored = TextEncoder(model=str(tiny_bert), pooling="pooler", max_length=16, device="cpu", precision="bf16")
    per_batch = _encoder(tiny_bert, "pooler")
    per_batch._autocast = torch.bfloat16  # autocast as before, the model's weights left in fp32
    assert stored.model.encoder.layer[0].attention.self.query.weight.dtype == torch.bfloat16
    assert stored.model.embeddings.word_embeddings.weight.dtype == torch.float32  # not a matmul: left to autocast
    assert stored.model.embeddings.LayerNorm.weight.dtype == torch.float32
    np.testing.assert_array_equal(stored.encode(TEXTS, progress=False), per_batch.encode(TEXTS, progress=False))


def test_packaged_minilm_in_bf16_stays_within_the_stated_tolerance() -> None:
    """What `auto` gives on a CPU with native bf16: per-text cosine >= 0.999 and relative error <= 2 % of fp32,
    on the real model's weights (the README states this tolerance)."""
    rng = np.random.default_rng(0)
    words = "i you we not so very really what why okay yeah well know think angry happy sad great terrible".split()
    texts = TEXTS + [" ".join(rng.choice(words, size=k)) for k in rng.integers(2, 40, size=60)]
    fp32, bf16 = (TextEncoder(model="all-MiniLM-L6-v2", pooling="mean", max_length=128, device="cpu",
                              precision=precision).encode(texts, progress=False) for precision in ("fp32", "bf16"))
    cosine = (fp32 * bf16).sum(1) / (np.linalg.norm(fp32, axis=1) * np.linalg.norm(bf16, axis=1))
    assert cosine.min() >= 0.999
    assert np.linalg.norm(fp32 - bf16) / np.linalg.norm(fp32) <= 0.02
    assert not np.array_equal(fp32, bf16)  # bf16 did run: it rounds
