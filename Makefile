# Two commands for a fresh clone: `make run` and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install run test bench clean ui

install: $(STAMP)

$(STAMP): requirements.txt requirements-benchmarks.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	# MONAI, for benchmarks/predict.py and its smoke test only (one small wheel, torch unchanged)
	$(PY) -m pip install --quiet -r requirements-benchmarks.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

run: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" dvc repro
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" melecole report metrics.json

test: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m pytest -q --durations=15

bench: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m pytest -q -m benchmark

clean:
	rm -rf $(VENV)

# Browse every tracked run (bound to this machine only; open http://127.0.0.1:5000).
ui: install
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port 5000 --workers 1
