"""dvc.yaml's code deps are checked, not typed: each stage lists exactly the src/mmser modules its script imports."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from mmser import deps
from mmser.deps import closure

REPO = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _body(stage: dict) -> dict:
    """A stage's definition; foreach stages keep it under `do`, matrix stages at the top."""
    return stage.get("do", stage)


def _script(name: str) -> str:
    found = re.search(r"python\s+(stages/\S+\.py)", _body(STAGES[name])["cmd"])
    assert found, f"stage {name}: its cmd does not run a stages/*.py script"
    return found.group(1)


def _has_code(path: Path) -> bool:
    return path.name != "__init__.py" or deps._has_code(path)


def expected_code_deps(script: str) -> set[str]:
    """The script and the mmser files it imports, directly or not, as repository-relative paths."""
    return {script} | {p.relative_to(REPO).as_posix() for p in closure(REPO / script)}


def listed_code_deps(stage: dict) -> dict[str, str]:
    """Code files a stage lists (a folder expands to its files): file -> the entry that lists it."""
    listed: dict[str, str] = {}
    for entry in _body(stage).get("deps", []):
        if not entry.startswith(("src/", "stages/")):
            continue
        path = REPO / entry
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for f in files:
            if _has_code(f) if f.exists() else True:
                listed[f.relative_to(REPO).as_posix()] = entry
    return listed


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_lists_exactly_the_modules_its_script_imports(name: str) -> None:
    script = _script(name)
    expected = expected_code_deps(script)
    listed = listed_code_deps(STAGES[name])
    missing = sorted(expected - set(listed))
    extra = sorted(f"{f}" + (f" (through {listed[f]})" if listed[f] != f else "") for f in set(listed) - expected)
    problems = ([f"missing: {', '.join(missing)}"] if missing else []) + (
        [f"extra, not imported by {script}: {', '.join(extra)}"] if extra else [])
    assert not problems, f"dvc.yaml stage {name}: " + "; ".join(problems)


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "mmser"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_closure_follows_function_level_imports_and_skips_type_checking(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    root = _package(tmp_path, {
        "__init__.py": "",
        "a.py": "import os\nfrom mmser import b\nif TYPE_CHECKING:\n    from mmser.c import C\n",
        "b.py": "def f():\n    from mmser.pkg.d import g\n    return g\n",
        "c.py": "import numpy\n",
        "pkg/__init__.py": "X = 1\n",  # code: importing pkg.d runs it
        "pkg/d.py": "from . import e\nENTRY = 'entry.py'\n",
        "pkg/e.py": "",
        "pkg/entry.py": "import soxr\n",  # run by file name (as pyfunc.py hands MLflow pyfunc_entry.py)
        "unused.py": "",
    })
    monkeypatch.setattr(deps, "PACKAGE_DIR", root)
    found = {p.relative_to(root).as_posix() for p in closure(root / "a.py")}
    assert found == {"b.py", "pkg/__init__.py", "pkg/d.py", "pkg/e.py", "pkg/entry.py"}
    assert deps.third_party_imports({root / "a.py", root / "pkg" / "entry.py"}) == {"soxr"}  # os is stdlib
    # An edit changes the answer at once (no stale parse).
    (root / "pkg" / "e.py").write_text("from mmser import c\n")
    assert "c.py" in {p.relative_to(root).as_posix() for p in closure(root / "a.py")}


def _manifest_corpus(directory: Path) -> Path:
    """A tiny CSV-manifest corpus outside the demo: two clips and their rows."""
    from tiny_speech import write_wavs

    wavs = write_wavs(directory / "wav", [16000, 24000])
    manifest = directory / "manifest.csv"
    manifest.write_text("path,text,label,speaker\n" + "".join(
        f"wav/{Path(w).name},hello there,{label},s{i}\n" for i, (w, label) in enumerate(zip(wavs, ["ang", "sad"]))))
    return manifest


def test_own_corpus_does_not_build_the_demo(tmp_path: Path) -> None:
    """With data.source manifest and demo.build [], `dvc repro` has no generate_demo stage; the default has one."""
    from test_pipeline import _copy_repo, _ran, _run, _set_params

    repo = _copy_repo(tmp_path / "repo")
    # The default builds the demo corpus (a dry run cannot go further in a fresh clone: prepare reads it).
    assert "generate_demo@demo" in _run(["dvc", "stage", "list"], repo).stdout
    manifest = _manifest_corpus(tmp_path / "corpus")
    _set_params(repo, data={"source": "manifest", "root": str(manifest.parent), "manifest": str(manifest)},
                demo={"build": []})
    # prepare and what it needs: the user's corpus only (a fresh clone's dry run stops where outputs are missing).
    assert _ran(_run(["dvc", "repro", "--dry", "prepare"], repo).stdout) == {"prepare"}
    assert "generate_demo" not in _run(["dvc", "stage", "list"], repo).stdout  # nothing for `dvc repro` to build
    status = _run(["dvc", "status", "prepare"], repo).stdout
    assert "data/demo" not in status and str(manifest) in status  # prepare watches the user's manifest


def test_dvc_lock_records_only_the_stages_dvc_yaml_defines() -> None:
    """DVC keeps the lock entry of a stage that was renamed or removed, and parses the whole file several times in
    every command (stale entries were 61 % of dvc.lock and ~2.5 s of every `dvc exp run`): none may stay."""
    import subprocess
    import sys

    dvc = Path(sys.executable).with_name("dvc")
    defined = set(subprocess.run([str(dvc), "stage", "list", "--all", "--name-only"], cwd=REPO, capture_output=True,
                                 text=True, check=True).stdout.split())
    locked = set(yaml.safe_load((REPO / "dvc.lock").read_text())["stages"])
    assert defined and locked <= defined, f"dvc.lock records stages dvc.yaml does not define: {sorted(locked - defined)}"
