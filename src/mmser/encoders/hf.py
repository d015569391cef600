"""What the Hugging Face encoders (text and speech) share: where a model lives on disk, and its fingerprint."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Callable

# Files whose bytes determine what an encoder computes (weights, configs, vocabularies).
_SKIP = {".gitattributes", "README.md"}


def model_dir(path: str) -> Path:
    """The directory a model is loaded from: `path` itself, or its snapshot in the Hugging Face cache (no network)."""
    if Path(path).expanduser().is_dir():
        return Path(path).expanduser().resolve()
    from transformers.utils import cached_file

    return Path(cached_file(path, "config.json", local_files_only=True)).parent


def fingerprint(directory: Path) -> str:
    """sha256 over the model directory's files, so a changed checkpoint under the same name is a new identity.

    Files in the Hugging Face cache are links to blobs named by their content hash: that name is used
    instead of re-reading gigabytes; other files are hashed.
    """
    digest = hashlib.sha256()
    for f in sorted(p for p in directory.rglob("*") if p.is_file() and p.name not in _SKIP):
        real = Path(os.path.realpath(f))
        if real.parent.name == "blobs":
            content = real.name
        else:
            with open(real, "rb") as fh:
                content = hashlib.file_digest(fh, "sha256").hexdigest()
        digest.update(f"{f.relative_to(directory)}\0{content}\n".encode())
    return digest.hexdigest()


def load_local(path: str, preprocessor_cls: Any, on_missing: Callable[[Exception], Exception]
               ) -> tuple[Any, Any, dict, str]:
    """(preprocessor, model, loading info, fingerprint) from local files only; absent files raise on_missing(err)."""
    from transformers import AutoModel

    try:
        preprocessor = preprocessor_cls.from_pretrained(path, local_files_only=True)
        model, info = AutoModel.from_pretrained(path, local_files_only=True, output_loading_info=True)
        return preprocessor, model, info, fingerprint(model_dir(path))
    except (OSError, ValueError) as err:  # ValueError: an id that is neither on disk nor valid
        raise on_missing(err) from err

