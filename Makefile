# The two commands of the README: `make demo` and `make test`. Each creates .venv when missing.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
BOOTSTRAP_PYTHON ?= python3
STAMP := $(VENV)/.imgcls-installed
EXTRAS ?= train,serve-cpu,dev,ray,docs

.PHONY: venv system-tools test test-fast demo stock-demo bench bench-peers soak clean

$(STAMP): pyproject.toml
	test -x $(PYTHON) || $(BOOTSTRAP_PYTHON) -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q -e '.[$(EXTRAS)]'
	touch $(STAMP)

venv: $(STAMP)

# The Debian packages some tests drive (chromium, prometheus, qemu-user): installed when missing and
# possible (root or sudo on Debian/Ubuntu); otherwise their tests are skipped, naming the package.
# With CI=true a missing one fails instead.
system-tools:
	bash .ci/system-tools

test: venv system-tools
	$(PYTHON) -m pytest

test-fast: venv
	$(PYTHON) -m pytest -m "not slow and not docker"

demo: venv
	$(VENV)/bin/imgcls demo

# A stock ImageNet classifier (efficientnet_lite0, offline weights) exported, served and asked about real photos.
stock-demo: venv
	$(PYTHON) -m imgcls.stock_demo

bench: venv
	$(PYTHON) -m pip install -q -e '.[$(EXTRAS),bench]'
	$(PYTHON) -m benchmarks.run_all

# The peers benchmark: imgcls vs Triton (PyTriton), LitServe and mosec. Builds each peer's own venv under
# .bench-out/peers on first use (PyPI, 1-3 min each), then about 10 minutes on 2 cores; renders RESULTS.md again.
bench-peers: venv
	$(PYTHON) -m benchmarks.peers --out benchmarks/results/peers.json
	$(PYTHON) -m benchmarks.run_all --render-only --markdown benchmarks/RESULTS.md

soak: venv
	IMGCLS_SOAK=1 $(PYTHON) -m pytest tests/robustness -m "slow"

clean:
	rm -rf runs bundles demo-data stock-photos stock-photos.csv .pytest_cache
