# Two entry points for a fresh machine with Python 3.11: `make repro` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: env repro test test-e2e clean-env paper paper-loso

env: $(VENV)/.installed

# torch is installed first and pinned, so no dependency can pull a (multi-GB CUDA) newer build.
$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c requirements.lock torch==2.13.0
	$(BIN)/pip install -q -c requirements.lock -e '.[dev]'
	touch $@

# dvc repro rebuilds what changed; the README's results table is then regenerated from metrics/.
repro: env
	$(BIN)/dvc repro
	$(BIN)/python -m mmser.readme

# The README's test command: unit and stage tests (a few minutes). The end-to-end ones (whole `dvc repro`
# runs, servers, DDP, real models) carry the `slow` marker and run in test-e2e; CI runs both.
test: env
	$(BIN)/pytest -q -m "not slow"

test-e2e: env
	$(BIN)/pytest -q -m slow

clean-env:
	rm -rf $(VENV)

# The SERVER paper's configuration exactly, as a DVC experiment (needs IEMOCAP and the weights on disk):
#   make paper IEMOCAP=/data/IEMOCAP_full_release        (random 80/20, as the paper)
#   make paper-loso IEMOCAP=/data/IEMOCAP_full_release   (leave one session out: unseen speakers)
PAPER_PARAMS = -S data.source=iemocap -S data.root=$(IEMOCAP) -S data.manifest=$(IEMOCAP) -S 'demo.build=[]' \
	-S data.label_set=paper4 -S data.dialogs=both \
	-S data.short_clips=drop -S data.min_duration=1.92 \
	-S extract_text.model=bert-base-uncased -S extract_text.pooling=pooler -S extract_text.max_length=512 \
	-S extract_audio.encoder=vggish -S extract_audio.postprocess=true \
	-S 'train.heads=[server]' -S 'train.weight_decay=[0.0]' -S train.speaker_norm=false -S train.audio_pooling=sum -S train.standardize=false -S train.class_weights=false \
	-S train.early_stopping=0 -S train.lr=0.0001 -S train.step_size=30 -S train.gamma=0.1 -S train.epochs=101 \
	-S train.batch_size=1

paper: env
	@test -n "$(IEMOCAP)" || (echo "set IEMOCAP=/path/to/IEMOCAP_full_release" >&2; exit 2)
	$(BIN)/dvc exp run -n paper-random $(PAPER_PARAMS) -S split.protocol=random -S 'train.folds=[1]'

paper-loso: env
	@test -n "$(IEMOCAP)" || (echo "set IEMOCAP=/path/to/IEMOCAP_full_release" >&2; exit 2)
	$(BIN)/dvc exp run -n paper-loso $(PAPER_PARAMS) -S split.protocol=loso -S 'train.folds=[1,2,3,4,5]'

