"""The README's results table is the one generated from the committed metrics, never typed by hand."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from mmser.evaluation import candidates_markdown
from mmser.readme import (CANDIDATES_END, CANDIDATES_START, CORPORA_END, CORPORA_START, END, START, render,
                          render_corpora, update_readme)

REPO = Path(__file__).resolve().parents[1]


def test_readme_table_matches_committed_metrics() -> None:
    summary = json.loads((REPO / "metrics" / "summary.json").read_text())
    text = (REPO / "README.md").read_text()
    block = text[text.index(START) + len(START):text.index(END)].strip()
    assert block == render(summary).strip(), "run `python -m mmser.readme` after `dvc repro`"
    candidates = json.loads((REPO / "metrics" / "candidates.json").read_text())
    block = text[text.index(CANDIDATES_START) + len(CANDIDATES_START):text.index(CANDIDATES_END)].strip()
    assert block == candidates_markdown(candidates).strip(), "run `python -m mmser.readme` after `dvc repro`"
    runs = [json.loads(p.read_text()) for p in sorted((REPO / "metrics" / "corpora").glob("*.json"))]
    block = text[text.index(CORPORA_START) + len(CORPORA_START):text.index(CORPORA_END)].strip()
    assert runs and block == render_corpora(runs).strip(), "run `python -m mmser.readme` after adding a corpus run"


def test_update_readme_rewrites_only_the_block(tmp_path: Path) -> None:
    shutil.copy(REPO / "metrics" / "summary.json", tmp_path / "summary.json")
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{START}\nold table\n{END}\noutro\n")
    assert update_readme(readme, tmp_path / "summary.json")
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old table" not in text
    assert "| fusion |" in text
    assert not update_readme(readme, tmp_path / "summary.json")  # idempotent
