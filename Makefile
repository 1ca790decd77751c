# Two commands do everything on a fresh machine:
#   make run    the main job: train the quick CPU profile on $(DATASET), then evaluate it
#   make test   the test suite
#   make lab    JupyterLab on notebooks/ (installs the notebook and 3-D viewer extras into .venv once)
# All create .venv (Python 3.11, CPU build of torch) when it is missing.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
DATASET ?= perov_5

.PHONY: run test lint lab

LAB_ARGS ?=

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m ipykernel install --prefix $(VENV) --name python3 > /dev/null
	touch $@

run: $(BIN)/.installed
	mkdir -p runs
	$(BIN)/papermill notebooks/03_train.ipynb runs/03_train_$(DATASET).ipynb -k python3 \
		-p dataset $(DATASET) -p profile quick -p resume True
	$(BIN)/papermill notebooks/05_reconstruction.ipynb runs/05_reconstruction_$(DATASET).ipynb -k python3 \
		-p dataset $(DATASET) -p checkpoint runs/$(DATASET)_quick_seed0/model.pt -p curve_limit 0
	$(BIN)/papermill notebooks/06_generation.ipynb runs/06_generation_$(DATASET).ipynb -k python3 \
		-p dataset $(DATASET) -p checkpoint runs/$(DATASET)_quick_seed0/model.pt
	# the shipped model (models/$(DATASET).pt), when there is one
	if [ -f models/$(DATASET).pt ]; then \
		$(BIN)/papermill notebooks/05_reconstruction.ipynb runs/05_reconstruction_$(DATASET)_shipped.ipynb \
			-k python3 -p dataset $(DATASET) -p limit 100 && \
		$(BIN)/papermill notebooks/06_generation.ipynb runs/06_generation_$(DATASET)_shipped.ipynb \
			-k python3 -p dataset $(DATASET) -p n_generate 100 -p reference_limit 200; fi

$(BIN)/.lab-installed: $(BIN)/.installed
	$(BIN)/python -m pip install -q -e '.[dev,notebooks,viz3d]'
	touch $@

# prints the URL with its token; LAB_ARGS passes options, e.g. LAB_ARGS="--no-browser --port 8890"
lab: $(BIN)/.lab-installed
	$(BIN)/jupyter lab --notebook-dir=notebooks $(LAB_ARGS)

test: $(BIN)/.installed
	$(BIN)/ruff check tvcsp tests benchmarks tools notebooks
	$(BIN)/python -m pytest -q

lint: $(BIN)/.installed
	$(BIN)/ruff check --fix tvcsp tests benchmarks tools notebooks
