# koch-explore: `make demo` runs the quickstart, `make test` runs the tests. Both set up .venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch. A bare `torch` requirement resolves to a multi-GB CUDA build on Linux;
# pinning it first keeps the project's `torch>=2.6,<2.14` range satisfied without pulling CUDA.
# On a CUDA machine: make TORCH_SPEC='torch==2.13.0' TORCH_INDEX='--index-url https://download.pytorch.org/whl/cu128'
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
STAMP  := $(VENV)/.koch-installed
REPORTS := reports

.PHONY: install demo test test-fast bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH_INDEX) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev,apps,teach]"
	touch $(STAMP)

install: $(STAMP)

# The main job: the quickstart notebook on the embedded default data, executed by papermill,
# kept as an executed notebook plus an HTML report a person can open offline. It runs from the
# checkout, so its relative report_dir lands in $(REPORTS)/koch_report.
demo: $(STAMP)
	mkdir -p $(REPORTS)
	$(BIN)/papermill --kernel python3 notebooks/00_quickstart.ipynb $(REPORTS)/00_quickstart.ipynb -p report_dir $(REPORTS)/koch_report
	$(BIN)/jupyter nbconvert --to html --log-level WARN $(REPORTS)/00_quickstart.ipynb --output-dir $(REPORTS)
	@echo "report: $(REPORTS)/00_quickstart.html"

# Two pytest workers, one per core of the CI machine, each given whole test files (module fixtures
# are built once); tests/conftest.py gives each one torch thread. The browser test needs Debian's
# Chromium; as root (CI) it is installed here, elsewhere the test
# skips and says so.
test: $(STAMP)
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian chromium for the browser test"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; } || \
	  echo "chromium could not be installed: the browser test will skip"; fi
	$(BIN)/python -m pytest -q -ra --durations=40 -n 2 --dist loadfile

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -ra -m "not slow"

# Speed and memory targets: each script prints its measurements and ratios side by side.
bench: $(STAMP)
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(REPORTS) .pytest_cache build *.egg-info
