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
# method on the same truth and observations, logged to MLflow (sqlite:///mlflow.db), then
# its report (figures and report.html in outputs/report-<parent run id>/). The compare's
# table goes to stderr, its JSON (with the parent run id) to outputs/quickstart.json.
quickstart: venv
	@mkdir -p outputs
	$(BIN)/ensda compare experiments/configs/l96.yaml --methods letkf,etkf,enkf,3dvar,oi,climatology,none --set cycles=2000 --set burn_in=200 --json > outputs/quickstart.json
	$(BIN)/ensda report "$$($(BIN)/python -c 'import json, sys; print(json.loads(open(sys.argv[1]).read().splitlines()[-1])["mlflow_run_id"])' outputs/quickstart.json)"
	@echo "Browse the runs: $(BIN)/ensda ui   (MLflow UI on http://127.0.0.1:5000)"

# pytest exits 5 when it collects no test: that fails here as any other error.
test: venv
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: venv
	$(BIN)/python experiments/bench_baselines.py

clean:
	rm -rf $(VENV) build *.egg-info
