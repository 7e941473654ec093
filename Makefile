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

# A small real experiment end to end (experiments/configs/quickstart.yaml, about ten
# minutes on 2 CPU cores): train a small ens-diffusion residual denoiser on randomised LETKF
# runs (skipped when its checkpoint exists; delete checkpoints/quickstart to retrain), sweep
# observation density × guidance strength with ens-diffusion next to LETKF, EnKF and 3D-Var
# on Lorenz-96 (2 workers, Optuna in sqlite:///optuna.db, MLflow in sqlite:///mlflow.db; the
# same command resumes an interrupted sweep), then the report (figures and report.html in
# outputs/quickstart/).
QUICKSTART := experiments/configs/quickstart.yaml
quickstart: venv
	@mkdir -p outputs
	@if $(BIN)/python -c "from ensda.diffusion.anchored import load; load('checkpoints/quickstart')" 2>/dev/null; \
	then echo "checkpoints/quickstart loads: training skipped"; \
	else $(BIN)/ensda train $(QUICKSTART); fi
	$(BIN)/ensda sweep $(QUICKSTART) --workers 2
	$(BIN)/ensda report study:quickstart --out outputs/quickstart
	@echo "Browse: $(BIN)/ensda ui            (MLflow UI on http://127.0.0.1:5000)"
	@echo "        $(BIN)/ensda ui --optuna   (and optuna-dashboard on http://127.0.0.1:8080)"
	@echo "Report: outputs/quickstart/report.html"

# Style first (ruff, configured in pyproject.toml: lint rules, format, lines <= 100), then the
# tests; pytest exits 5 when it collects no test: that fails here as any other error.
test: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -p no:cacheprovider

# Benchmarks: ETKF/LETKF throughput on Lorenz-96, the same side by side with DAPPER (its
# columns SKIP unless `pip install -e '.[bench]'`), then the sphere testbed (dycore speed, one
# LETKF/3D-Var cycle at N = 32), then diffusion DA on the sphere (one analysis at N = 32,
# denoiser training throughput); the sphere ones print a SKIP line without the nature-run
# store data/sphere/nature.zarr.
bench: venv
	$(BIN)/python experiments/bench_baselines.py
	$(BIN)/python experiments/bench_dapper.py
	$(BIN)/python experiments/bench_sphere.py
	$(BIN)/python experiments/bench_sphere_diffusion.py

clean:
	rm -rf $(VENV) build *.egg-info
