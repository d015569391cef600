"""What an embedding depends on beyond the encoder's settings: the code that computes it and the libraries' versions.

An encoder's own `identity()` names its model, weights hash, pooling and precision. `embedding_identity` adds:
- `code_sha256`: a hash of the source of the encoder's module and of every mmser module it imports
  (mmser.deps, function-level imports included), and for audio of the decoding and resampling code
  (mmser.data.audio). It is derived from the encoder's type, so a new encoder is covered without listing
  anything. The syntax tree is hashed, not the bytes: comments and formatting do not count, code does.
- `libraries`: the installed versions of the third-party packages those modules import (torch, numpy,
  transformers, opensmile, soundfile, soxr, ctranslate2, ...), read from the modules' imports too.
This identity is the cache key's and the one recorded in the embeddings file and the model card, so a fix in
the pooling or the front end, or a library upgrade, computes new embeddings instead of reading old ones.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.metadata
import inspect
import logging
from pathlib import Path

from mmser.deps import PACKAGE_DIR, closure, module_file, module_source_file, third_party_imports

log = logging.getLogger(__name__)

# Decoding (soundfile) and resampling (soxr) that every audio encoder's input goes through (mmser.extract).
AUDIO_FRONT_END = "mmser.data.audio"
# Work done inside a package that the modules call only through another: tokenization runs in tokenizers.
_INDIRECT = {"transformers": ("tokenizers",)}
# Imported by encoder code but without effect on the numbers.
_NO_EFFECT = {"tqdm"}
# Keys of the identity that describe the environment rather than the encoder (predict warns on a difference).
ENVIRONMENT_KEYS = ("code_sha256", "libraries")


def code_files(encoder: object, *, audio: bool) -> list[Path]:
    """The source files whose code computes `encoder`'s embeddings: its module, the mmser modules it imports,
    and for audio the front end (decoding, resampling) with its imports.

    A wrapper that only delegates (e.g. one that counts calls) says so with `__wrapped__`, as functools.wraps
    does: the wrapped encoder's code is what computes the embeddings.
    """
    module = type(inspect.unwrap(encoder)).__module__
    try:
        roots = [module_source_file(module)]
    except ValueError:  # defined where no file holds it (python -c, a notebook): nothing of it can be hashed
        log.warning("encoder %s is defined in %s, which has no source file: its code is not part of the cache key",
                    type(encoder).__name__, module)
        roots = []
    if audio:
        roots.append(module_file(AUDIO_FRONT_END))
    files = set(roots)
    for root in roots:
        files |= closure(root)
    return sorted(files, key=_label)


def _label(path: Path) -> str:
    """A file's name in the hash: relative to src/mmser for mmser's own files, else its file name."""
    try:
        return path.relative_to(PACKAGE_DIR).as_posix()
    except ValueError:
        return path.name


def code_sha256(files: list[Path]) -> str:
    """sha256 over the files' syntax trees (labelled by name), so comments and layout do not change it."""
    digest = hashlib.sha256()
    for path in files:
        tree = ast.dump(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        digest.update(f"{_label(path)}\0{tree}\n".encode())
    return digest.hexdigest()


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.cache
def _providers() -> dict[str, list[str]]:
    """Import name -> distributions providing it (a walk over every installed distribution: ~0.5 s, once)."""
    return importlib.metadata.packages_distributions()


def library_versions(files: list[Path]) -> dict[str, str]:
    """Distribution -> installed version for the third-party packages `files` import (and _INDIRECT ones)."""
    names = third_party_imports(set(files)) - _NO_EFFECT
    names |= {extra for name in list(names) for extra in _INDIRECT.get(name, ())}
    providers = _providers()
    versions: dict[str, str] = {}
    for name in names:
        for distribution in providers.get(name, [name]):
            version = _version(distribution)
            if version is not None:
                versions[distribution.lower()] = version
    return dict(sorted(versions.items()))


def embedding_identity(encoder: object, *, sample_rate: int | None = None) -> dict:
    """The identity embeddings are cached and recorded under: `encoder.identity()`, `code_sha256`, `libraries`;
    for audio (`sample_rate` given) also the rate, and the front end's code and libraries."""
    files = code_files(encoder, audio=sample_rate is not None)
    identity = {**encoder.identity(), "code_sha256": code_sha256(files)[:16], "libraries": library_versions(files)}
    if sample_rate is not None:
        identity["sample_rate"] = int(sample_rate)
    return identity
