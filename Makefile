# ensda — set-up, tests, benchmarks. `make quickstart` and `make test` are the two
# commands a fresh machine needs (see README.md).
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv quickstart test bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,postgres]'
	touch $(STAMP)

# A small real experiment end to end: Lorenz-96 (Sakov & Oke set-up), every classic
# method on the same truth and observations, logged to MLflow (sqlite:///mlflow.db).
quickstart: venv
	$(BIN)/ensda compare experiments/configs/l96.yaml --methods letkf,etkf,enkf,3dvar,oi,climatology,none --set cycles=2000 --set burn_in=200
	@echo "Browse the runs: $(BIN)/ensda ui   (MLflow UI on http://127.0.0.1:5000)"

# pytest exits 5 when it collects no test: that fails here as any other error.
test: venv
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: venv
	$(BIN)/python experiments/bench_baselines.py

clean:
	rm -rf $(VENV) build *.egg-info
