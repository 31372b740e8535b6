# `make demo` and `make test` set up .venv themselves; the venv is rebuilt only when requirements change.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE_STAMP := tests/browser/node_modules/.installed

.PHONY: demo test lint clean

$(STAMP): requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	# dev-only: a trained face detector's weights for the feature-visualisation test (tests/trained_nets.py);
	# --no-deps: its pins are for an old torch, and the test uses only the weights file it ships
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps facenet-pytorch==2.6.0
	touch $(STAMP)

# axe-core for the browser tests (needs npm; without it, or when npm cannot install it, those tests skip,
# except in CI where they fail); the run's last lines say whether they ran or why they were skipped
$(NODE_STAMP): tests/browser/package.json tests/browser/package-lock.json
	cd tests/browser && npm ci --no-audit --no-fund --silent
	touch $(NODE_STAMP)

demo: $(STAMP)
	$(BIN)/featviz-report -o report.html

test: $(STAMP)
	@if command -v npm >/dev/null 2>&1; then $(MAKE) --no-print-directory $(NODE_STAMP) \
		|| echo "make: npm could not install axe-core; the browser tests will skip"; fi
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check featviz_report tests scripts bench
	$(BIN)/ruff format --check featviz_report tests scripts bench
	$(BIN)/mypy featviz_report

clean:
	rm -rf $(VENV) report.html report build dist
