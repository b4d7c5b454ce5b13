# Every target sets itself up: a virtualenv in .venv with the exact tested versions (constraints.txt).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install test pretrain clean

$(VENV)/.installed: setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	@echo "Setting up $(VENV) with the tested versions of torch, transformers and the rest (a few minutes the first time)"
	$(PY) -m pip install --disable-pip-version-check --constraint constraints.txt --editable ".[dev]"
	touch $@

# The tests also cover the TorchGeo and TerraTorch integrations (optional extras, not needed by the main job)
$(VENV)/.integrations: $(VENV)/.installed
	$(PY) -m pip install --disable-pip-version-check --constraint constraints.txt --editable ".[torchgeo,terratorch]"
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed $(VENV)/.integrations
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest tests

# The main job: pretrain a small PerA (ViT-Tiny/8 with 4 blocks: 1.6x the steps of 6 in the same time, the fourth and
# fifth sweeps of docs/benchmarks.md) on UC Merced (+ the GID-MTL images when present) on the CPU with the
# short-budget recipe (about 6 minutes of training on 2 idle cores), then UC Merced 20-NN and linear probe of its
# encoder next to a random-init encoder of the same architecture (about 1 minute each). SEED=1 for another seed.
DATA_DIR ?= ../shared/data
PRETRAIN_DIR ?= outputs/pera-ucmerced
SEED ?= 42
PRETRAIN_FLAGS ?= --model_size vit-tiny --recipe short-budget \
	--config_overrides image_size=64,patch_size=8,local_crop_size=32,num_hidden_layers=4 \
	--per_device_train_batch_size 32 --max_train_steps 500 \
	--checkpointing_steps 100 --logging_steps 10 --dataloader_num_workers 1 --with_tracking \
	--overwrite_output_dir --seed $(SEED)
EVAL_FLAGS ?= --k 20 --train_fraction 0.5 --image_size 64 --seed 0 --linear_probe

pretrain: $(VENV)/.installed
	@test -d $(DATA_DIR)/ucmerced || { echo "UC Merced not found at $(DATA_DIR)/ucmerced: set DATA_DIR=<folder holding ucmerced/<class>/*.jpg>, or run examples/run_pretraining.py --train_dir <your images>"; exit 1; }
	$(PY) examples/run_pretraining.py --train_dir $(DATA_DIR)/ucmerced $(wildcard $(DATA_DIR)/gid_mtl/GID-MTL*/image) --output_dir $(PRETRAIN_DIR) $(PRETRAIN_FLAGS)
	$(PY) examples/run_eval.py --model_name_or_path $(PRETRAIN_DIR)/encoder --data_dir $(DATA_DIR)/ucmerced $(EVAL_FLAGS) --random_init --output_json $(PRETRAIN_DIR)/knn_random_init.json
	$(PY) examples/run_eval.py --model_name_or_path $(PRETRAIN_DIR)/encoder --data_dir $(DATA_DIR)/ucmerced $(EVAL_FLAGS) --output_json $(PRETRAIN_DIR)/knn_pretrained.json --compare_to $(PRETRAIN_DIR)/knn_random_init.json

clean:
	rm -rf $(VENV) .cache .pytest_cache
