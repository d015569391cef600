"""Wall time of one train stage (fusion, fold 1, the params.yaml training settings) in one process vs under DDP.

Needs the default pipeline's outputs (`make repro`): data/prepared/utterances.csv, data/splits.json and
data/embeddings/{text,audio}.npz. Runs the real stage script, as `dvc repro` would, once per launch, into a
temporary folder (MLflow into a temporary SQLite store), and prints one JSON object as its last line.

    python bench/ddp.py [--devices 2] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
INPUTS = {"table": "data/prepared/utterances.csv", "splits": "data/splits.json", "text": "data/embeddings/text.npz",
          "audio": "data/embeddings/audio.npz"}


def run(tmp: Path, name: str, distributed: dict) -> float:
    """Seconds for one train stage under `distributed`, from command start to exit."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["distributed"].update(distributed)
    params_path = tmp / f"{name}.yaml"
    params_path.write_text(yaml.safe_dump(params))
    cmd = [sys.executable, "stages/train.py", "--modality", "fusion", "--fold", "1", "--out", str(tmp / name),
           "--params", str(params_path), *[x for k, v in INPUTS.items() for x in (f"--{k}", v)]]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}"}
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=2, help="CPU processes under DDP (gloo)")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    missing = [p for p in INPUTS.values() if not (REPO / p).is_file()]
    if missing:
        sys.exit(f"error: {missing[0]} is missing; run `make repro` first")
    launches = {"single": dict(strategy="single", devices=1, accelerator="cpu"),
                f"ddp{args.devices}": dict(strategy="ddp", devices=args.devices, accelerator="cpu")}
    seconds: dict[str, list[float]] = {name: [] for name in launches}
    with tempfile.TemporaryDirectory() as tmp:
        run(Path(tmp), "warmup", launches["single"])  # first imports fill the OS file cache
        for i in range(args.repeats):
            for name, launch in launches.items():
                seconds[name].append(run(Path(tmp), f"{name}-{i}", launch))
                print(f"{name}: {seconds[name][-1]:.1f} s", file=sys.stderr)
    best = {name: min(s) for name, s in seconds.items()}
    ddp = f"ddp{args.devices}"
    print(json.dumps({"cpu_count": os.cpu_count(), "epochs": yaml.safe_load((REPO / "params.yaml").read_text())
                      ["train"]["epochs"], "single_s": round(best["single"], 1), f"{ddp}_s": round(best[ddp], 1),
                      "ddp_over_single": round(best[ddp] / best["single"], 2)}))


if __name__ == "__main__":
    main()
