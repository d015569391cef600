#!/usr/bin/env bash
# The real pipeline against a team tracking server: `mlflow server` on PostgreSQL with proxied artifacts,
# an outage in the middle of a stage, and a rerun once the server is back.
#
#   bash ci/tracking_server_check.sh          (from the repository, after `make env`; .ci/run calls it)
#
# Everything lives in one temporary folder (database, artifacts, a copy of the repository, logs) and both
# servers are stopped on exit, whatever happens. Needs PostgreSQL's server binaries (initdb, pg_ctl): found
# on PATH, in $PG_BIN, or in /usr/lib/postgresql/*/bin. As root, PostgreSQL runs as the `postgres` user.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${VENV:-$ROOT/.venv}
PY=$VENV/bin/python
t0=$SECONDS

say() { printf '[%3ds] %s\n' "$((SECONDS - t0))" "$*"; }
fail() { echo "tracking server check: FAIL: $*" >&2; exit 1; }

# --- where things are -------------------------------------------------------------------------------------
PG_BIN=${PG_BIN:-$(dirname "$(command -v initdb 2>/dev/null || ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -1)")}
[ -x "$PG_BIN/initdb" ] && [ -x "$PG_BIN/pg_ctl" ] || fail "PostgreSQL's initdb/pg_ctl not found (set PG_BIN)"
"$PY" -c "import psycopg" 2>/dev/null || fail "psycopg is not installed in $VENV (make env installs it: .[dev])"
if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || fail "running as root, and there is no postgres user to run PostgreSQL as"
  as_pg() { runuser -u postgres -- "$@"; }
else
  as_pg() { "$@"; }
fi
free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/mmser-server-check.XXXXXX")
chmod 755 "$tmp"
mkdir "$tmp/pg" "$tmp/pgrun" "$tmp/artifacts"
[ "$(id -u)" = 0 ] && chown postgres: "$tmp/pg" "$tmp/pgrun"
pg_port=$(free_port)
port=$(free_port)
server=http://127.0.0.1:$port
mlflow_pid=

stop_mlflow() {  # the server and its workers: one process group (setsid below)
  [ -n "$mlflow_pid" ] || return 0
  kill -TERM -- "-$mlflow_pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 -- "-$mlflow_pid" 2>/dev/null || break; sleep 0.2; done
  kill -KILL -- "-$mlflow_pid" 2>/dev/null || true
  mlflow_pid=
}

cleanup() {
  local rc=$?
  [ -n "${watcher:-}" ] && kill "$watcher" 2>/dev/null
  [ -n "${repro_pid:-}" ] && kill -TERM -- "-$repro_pid" 2>/dev/null  # a dvc repro still running (interrupted)
  stop_mlflow
  [ -f "$tmp/pg/postmaster.pid" ] && as_pg "$PG_BIN/pg_ctl" -D "$tmp/pg" -m fast -w stop >/dev/null 2>&1
  if [ "$rc" = 0 ]; then
    rm -rf "$tmp"
  else
    echo "tracking server check failed (exit $rc) after $((SECONDS - t0)) s; logs kept in $tmp:" >&2
    for f in "$tmp"/*.log "$tmp"/pgrun/*.log; do [ -f "$f" ] && { echo "--- $f" >&2; tail -n 25 "$f" >&2; }; done
  fi
  return "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM  # through cleanup too

start_mlflow() {  # on the same database, artifact folder and port every time
  MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false setsid "$VENV/bin/mlflow" server \
    --backend-store-uri "postgresql+psycopg://mmser@127.0.0.1:$pg_port/mlflow" \
    --artifacts-destination "$tmp/artifacts" --host 127.0.0.1 --port "$port" --workers 1 \
    >>"$tmp/mlflow.log" 2>&1 &
  mlflow_pid=$!
  disown "$mlflow_pid"  # its death is the point of step 2: no job-control notice for it
  for _ in $(seq 240); do
    curl -fsS "$server/health" >/dev/null 2>&1 && return 0
    kill -0 "$mlflow_pid" 2>/dev/null || fail "mlflow server exited (see $tmp/mlflow.log)"
    sleep 0.5
  done
  fail "mlflow server did not answer $server/health within 120 s"
}

# --- PostgreSQL: a throwaway cluster on a loopback port, its socket in the temporary folder ---------------
as_pg "$PG_BIN/initdb" -D "$tmp/pg" -U mmser --auth=trust -E UTF8 --no-sync >"$tmp/initdb.log"
as_pg "$PG_BIN/pg_ctl" -D "$tmp/pg" -l "$tmp/pgrun/postgres.log" -w \
  -o "-c listen_addresses=127.0.0.1 -p $pg_port -k $tmp/pgrun -c fsync=off" start >/dev/null
"$PY" - "$pg_port" <<'EOF'
import sys, psycopg
with psycopg.connect(host="127.0.0.1", port=int(sys.argv[1]), user="mmser", dbname="postgres", autocommit=True) as c:
    c.execute("CREATE DATABASE mlflow")
EOF
say "PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$pg_port, database mlflow"

start_mlflow
say "mlflow server $("$VENV/bin/mlflow" --version | awk '{print $NF}') at $server (artifacts proxied to $tmp/artifacts)"

# --- a copy of the repository (what a clone of this checkout holds) with a reduced configuration ---------
repo=$tmp/repo
mkdir "$repo"
git ls-files -z -co --exclude-standard | while IFS= read -r -d '' f; do
  if [ -f "$f" ] && [ "${f#tests/}" = "$f" ]; then mkdir -p "$repo/$(dirname "$f")"; cp -p "$f" "$repo/$f"; fi
done
"$PY" - "$repo/params.yaml" <<'EOF'
import sys, yaml
path = sys.argv[1]
p = yaml.safe_load(open(path))
p["demo"]["utterances_per_speaker"] = 10         # 100 utterances
p["train"].update(folds=[1], epochs=4, batch_size=8, heads=["server"], weight_decay=[0.0])
p["evaluate"]["bootstrap_resamples"] = 100
yaml.safe_dump(p, open(path, "w"), sort_keys=False)
EOF
git -C "$repo" init -q
git -C "$repo" add -A
git -C "$repo" -c user.email=ci@mmser -c user.name=ci commit -qm "tracking server check"

# The copy's code (not the editable install's), the venv's tools, the server, nothing online.
export PATH="$VENV/bin:$PATH" PYTHONPATH="$repo/src" MLFLOW_TRACKING_URI="$server" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
unset MMSER_CACHE_DIR MLFLOW_HTTP_REQUEST_MAX_RETRIES MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR MLFLOW_HTTP_REQUEST_TIMEOUT
repro() {  # dvc repro in the copy, logged to $1; its own process group, so an interrupt stops it at once
  local log=$1; shift
  (cd "$repo" && exec setsid dvc repro "$@") >"$log" 2>&1 &
  repro_pid=$!
  local rc=0; wait "$repro_pid" || rc=$?
  repro_pid=
  return "$rc"
}
ran() { grep -o "^Running stage '[^']*'" "$1" | cut -d"'" -f2 | sort; }

# --- 1. the pipeline up to one finished train stage -------------------------------------------------------
repro "$tmp/repro1.log" train@text || fail "dvc repro train@text (see $tmp/repro1.log)"
say "repro 1 (up to train@text): ran $(ran "$tmp/repro1.log" | wc -l) stages: $(ran "$tmp/repro1.log" | tr '\n' ' ')"
(cd "$repo" && md5sum data/prepared/utterances.csv data/splits.json data/embeddings/*.npz models/text/fold1/*) \
  >"$tmp/before.md5"
cache_before=$(du -sk "$repo/.cache/mmser" | cut -f1)

# --- 2. the server dies while train@audio trains ---------------------------------------------------------
( until grep -q "^Running stage 'train@audio'" "$tmp/repro2.log" 2>/dev/null; do sleep 0.1; done
  kill -KILL -- "-$mlflow_pid"; date +%s.%N >"$tmp/killed" ) &
watcher=$!
if repro "$tmp/repro2.log"; then fail "dvc repro succeeded although the server was killed"; fi
wait "$watcher" 2>/dev/null || true; watcher=
[ -f "$tmp/killed" ] || fail "the server was never killed (see $tmp/repro2.log)"
stop_mlflow  # already dead: only forgets it
grep -F "error: MLflow tracking server $server is unreachable" "$tmp/repro2.log" >"$tmp/message" \
  || fail "no one-line outage message in $tmp/repro2.log"
failed_after=$("$PY" -c "import os, sys; print(round(os.path.getmtime(sys.argv[1]) - float(open(sys.argv[2]).read()), 1))" \
  "$tmp/repro2.log" "$tmp/killed")
say "repro 2: server killed during train@audio; the stage failed ${failed_after} s later with:"
sed 's/^/         /' "$tmp/message"
[ ! -e "$repo/models/audio" ] || fail "the failed stage's partial output models/audio was kept"
(cd "$repo" && md5sum --quiet -c "$tmp/before.md5") || fail "outputs of finished stages changed after the outage"
[ "$(du -sk "$repo/.cache/mmser" | cut -f1)" -ge "$cache_before" ] || fail "the embedding cache shrank"
(cd "$repo" && dvc status --json) | "$PY" -c "import json, sys; print('\n'.join(sorted(json.load(sys.stdin))))" \
  >"$tmp/unfinished"
say "kept: finished stages' outputs (md5 unchanged), the embedding cache ($(du -sh "$repo/.cache/mmser" | cut -f1)); unfinished: $(tr '\n' ' ' <"$tmp/unfinished")"

# --- 3. the server comes back; the rerun runs only what did not finish ------------------------------------
start_mlflow
say "mlflow server restarted on the same port and database"
repro "$tmp/repro3.log" || fail "dvc repro after the restart (see $tmp/repro3.log)"
ran "$tmp/repro3.log" >"$tmp/reran"
diff "$tmp/unfinished" "$tmp/reran" >/dev/null || fail "the rerun ran $(tr '\n' ' ' <"$tmp/reran"), expected $(tr '\n' ' ' <"$tmp/unfinished")"
grep -qx "train@audio" "$tmp/reran" || fail "train@audio was not rerun"
if grep -Eqx "prepare|split|extract_text|extract_audio|train@text" "$tmp/reran"; then fail "a finished stage was rerun"; fi
[ -z "$(cd "$repo" && dvc status --json | tr -d '{} \n')" ] || fail "dvc status is not clean after the rerun"
say "repro 3: reran only the $(wc -l <"$tmp/reran") unfinished stages: $(tr '\n' ' ' <"$tmp/reran")"

# --- 4. read everything back through the server's REST API (and the database behind it) -------------------
"$PY" - "$server" "$repo" "$tmp/artifacts" "$pg_port" <<'EOF'
import collections, hashlib, json, sys, urllib.parse, urllib.request
from pathlib import Path

import psycopg

server, repo, artifacts, pg_port = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])


def call(path, body=None, raw=False):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(server + path, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        content = r.read()
    return content if raw else json.loads(content)


def check(ok, what):
    if not ok:
        sys.exit(f"tracking server check: FAIL: {what}")


def proxied(uri, rel=""):  # mlflow-artifacts:/<path> -> bytes through the server's artifact proxy
    check(uri.startswith("mlflow-artifacts:"), f"artifact URI {uri} does not go through the proxy")
    path = uri.split(":", 1)[1].lstrip("/") + (f"/{rel}" if rel else "")
    return call("/api/2.0/mlflow-artifacts/artifacts/" + urllib.parse.quote(path), raw=True)


experiment = call("/api/2.0/mlflow/experiments/get-by-name?experiment_name=mmser")["experiment"]
check(experiment["artifact_location"].startswith("mlflow-artifacts:"), f"experiment artifact location "
      f"{experiment['artifact_location']} bypasses the proxy")
runs, token = [], None
while True:
    page = call("/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment["experiment_id"]], "max_results": 500,
                                                **({"page_token": token} if token else {})})
    runs += page.get("runs", [])
    token = page.get("next_page_token")
    if not token:
        break
tags = lambda r: {t["key"]: t["value"] for t in r["data"].get("tags", [])}
metrics = lambda r: {m["key"]: m["value"] for m in r["data"].get("metrics", [])}
finished = collections.Counter(tags(r).get("mmser.stage") for r in runs if r["info"]["status"] == "FINISHED")
other = collections.Counter(f"{tags(r).get('mmser.stage')}:{r['info']['status']}" for r in runs
                            if r["info"]["status"] != "FINISHED")
expected = {"pipeline": 1, "prepare": 1, "split": 1, "extract_text": 1, "extract_audio": 1, "train": 3,
            "evaluate": 1}
for stage, n in expected.items():
    check(finished[stage] == n, f"{finished[stage]} finished {stage} runs, expected {n}")
parents = {r["info"]["run_id"] for r in runs if tags(r).get("mmser.stage") == "pipeline"}
check(all(tags(r).get("mlflow.parentRunId") in parents for r in runs if tags(r).get("mmser.stage") != "pipeline"),
      "a stage run is not nested under the pipeline run")
train = {tags(r)["modality"]: r for r in runs if tags(r).get("mmser.stage") == "train" and r["info"]["status"] == "FINISHED"}
check(set(train) == {"text", "audio", "fusion"}, f"train runs for {sorted(train)}")
for modality, r in train.items():
    check({"fold1.val_ua", "test_ua"} <= set(metrics(r)), f"train run {modality} lacks fold1.val_ua/test_ua: "
          f"{sorted(metrics(r))}")
    history = call(f"/api/2.0/mlflow/metrics/get-history?run_id={r['info']['run_id']}&metric_key=fold1.val_ua")
    check(len(history["metrics"]) == 4, f"train run {modality} has {len(history['metrics'])} val_ua epochs, expected 4")

# the evaluate run's summary, downloaded through the proxy, is the file the stage wrote
evaluate = next(r for r in runs if tags(r).get("mmser.stage") == "evaluate" and r["info"]["status"] == "FINISHED")
listed = call(f"/api/2.0/mlflow/artifacts/list?run_id={evaluate['info']['run_id']}")["files"]
check({"summary.json", "candidates.json", "plots"} <= {f["path"] for f in listed}, f"evaluate artifacts {listed}")
check(proxied(evaluate["info"]["artifact_uri"], "summary.json") == (repo / "metrics/summary.json").read_bytes(),
      "summary.json through the proxy differs from metrics/summary.json")

# the registered model @best: its checkpoint, downloaded through the proxy, is the one training wrote
version = call("/api/2.0/mlflow/registered-models/alias?name=mmser&alias=best")["model_version"]
model_id = version["source"].removeprefix("models:/")
model = call(f"/api/2.0/mlflow/logged-models/{model_id}")["model"]
model_tags = {t["key"]: t["value"] for t in version.get("tags", [])}
ckpt = repo / "models" / model_tags["modality"] / "final" / "model.ckpt"
check(b"flavors" in proxied(model["info"]["artifact_uri"], "MLmodel"), "the registered model's MLmodel is not served")
check(proxied(model["info"]["artifact_uri"], "artifacts/model.ckpt") == ckpt.read_bytes(),
      f"the registered model's checkpoint differs from {ckpt}")

# where things were written: the database behind the server, the proxied folder, never the repository copy
with psycopg.connect(host="127.0.0.1", port=pg_port, user="mmser", dbname="mlflow") as db:
    n_db = db.execute("SELECT count(*) FROM runs").fetchone()[0]
check(n_db == len(runs), f"PostgreSQL holds {n_db} runs, the API lists {len(runs)}")
n_files = sum(1 for p in artifacts.rglob("*") if p.is_file())
check(not (repo / "mlartifacts").exists() and not (repo / "mlruns").exists() and not (repo / "mlflow.db").exists(),
      "the client wrote a local store or artifacts in the repository copy")
print(f"REST API: experiment {experiment['experiment_id']} ({experiment['artifact_location']}), {len(runs)} runs "
      f"(= {n_db} rows in PostgreSQL): finished {dict(finished)}; left by the outage {dict(other) or 'none'}")
print(f"REST API: val_ua/test_ua on {len(train)} train runs; evaluate's summary.json and registered model "
      f"mmser v{version['version']} ({model_tags['modality']} {model_tags['candidate']} refit) checkpoint downloaded through "
      f"the proxy, byte-identical; {n_files} files in the artifact destination")
EOF
say "tracking server check: OK"
