# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# Every Python package (the tool, the test server, the test and lint tools) comes from uv.lock,
# so a new release upstream never changes what a fresh checkout installs. `make lock` upgrades.
PYTHON     ?= python3
UV_VERSION := 0.13.9
TOOLS      := .tools
UV         := $(TOOLS)/bin/uv
VENV       := .venv
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.installed

.PHONY: demo test install redis s3 browser lint unit integration bench lock clean

# uv itself, pinned, in a venv of its own (pip is the only thing a fresh machine has).
$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check --only-binary :all: uv==$(UV_VERSION)

$(STAMP): pyproject.toml uv.lock | $(UV)
	$(UV) sync --quiet --frozen --extra test --compile-bytecode --python $(PYTHON)
	@# Bytecode up front: where PYTHONDONTWRITEBYTECODE is set, every process would otherwise
	@# compile its imports again (measured: 0.7 s of each mongoferry start, and of every server).
	$(PY) -m compileall -q src
	touch $(STAMP)

install: $(STAMP)

# Re-resolve every dependency to its newest allowed version and rewrite uv.lock; review, test, commit.
lock: | $(UV)
	$(UV) lock --upgrade --python $(PYTHON)

# redis-server from Debian's packages, only when it is missing.
redis:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing redis-server from Debian's packages"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server >/dev/null; }

# Chromium and ChromeDriver from Debian's packages, for the dashboard's browser test; only when missing.
browser:
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || { \
	  echo "installing chromium and chromium-driver from Debian's packages"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null; }

# The S3-compatible server the storage tests start (s3s-fs from crates.io, built once per machine,
# pinned; ~3.5 min cold). Needs cargo (rustup.rs) on the machine.
S3S_FS_VERSION := 0.14.1
S3S_FS_ROOT    := $(HOME)/.cache/mongoferry/s3s-fs-$(S3S_FS_VERSION)
S3S_FS         := $(S3S_FS_ROOT)/bin/s3s-fs
export MONGOFERRY_S3S_FS := $(S3S_FS)

$(S3S_FS):
	@command -v cargo >/dev/null 2>&1 || { echo "the S3 tests need cargo to build s3s-fs: install it from https://rustup.rs"; exit 2; }
	@echo "building s3s-fs $(S3S_FS_VERSION) from crates.io (once per machine)"
	cargo install s3s-fs --version $(S3S_FS_VERSION) --locked --features binary --root $(S3S_FS_ROOT) --quiet

s3: $(S3S_FS)

demo: install
	$(VENV)/bin/mongoferry demo

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test: install redis s3 browser lint
	$(PY) -m pytest -q

unit: install
	$(PY) -m pytest -q tests/unit

bench: install
	$(PY) bench/copy.py

clean:
	rm -rf $(VENV) $(TOOLS) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
