"""Tiny random models built on the fly and saved like real checkpoints (nothing downloads)."""

from __future__ import annotations

from pathlib import Path

WORDS = ["i", "am", "so", "angry", "happy", "sad", "the", "weather", "is", "mild", "we", "lost", "won", "it",
         "this", "that", "today", "great", "terrible", "okay", "fine", "you", "me", "did", "not", "call", "back"]


def make_tiny_bert(directory: Path, *, pooler: bool = True, hidden: int = 32, seed: int = 0) -> Path:
    """Save a 2-layer random BERT and its WordPiece tokenizer to `directory` with save_pretrained."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, ".", ",", "'", "?", "!"]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # transformers 5 ignores vocab_file= here (every word became [UNK]): the vocabulary is passed as a mapping.
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=64)
    BertModel(config, add_pooling_layer=pooler).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
