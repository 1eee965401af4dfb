# The two commands of the README:
#   make demo   one batch of 16 emulated chips, end to end, on embedded defaults
#   make test   lint + type check + the whole test suite (what CI runs)
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: install demo test test-fast lint services clean

install: $(STAMP)

$(STAMP): pyproject.toml deploy/install.sh deploy/mosquitto/provisioner_plugin.c
	VENV=$(VENV) bash deploy/install.sh
	touch $(STAMP)

# The demo makes the first admin on a fresh install (token in var/admin.token); a second
# demo signs in with it.
demo: install
	@if [ -z "$$PROVISIONER_TOKEN_FILE" ] && [ -f var/admin.token ]; then \
	  export PROVISIONER_TOKEN_FILE=var/admin.token; fi; \
	$(BIN)/provisioner demo --count 16

services: install
	$(BIN)/provisioner services run

lint: install
	$(BIN)/ruff check --no-cache .
	$(BIN)/ruff format --no-cache --check .
	$(BIN)/mypy

# Two lanes (pytest-xdist): the tests that start a whole line (tests/e2e, tests/web) run one
# after another in one lane, because each already keeps several processes busy; everything
# else shares both lanes. A line test leaves most of a core idle while its workers wait.
test: lint
	$(BIN)/pytest -n 2 --dist loadgroup

# Everything except the slow fault/load tests.
test-fast: install
	$(BIN)/pytest -n 2 --dist loadgroup -m 'not slow'

clean:
	rm -rf var .pytest_cache .mypy_cache
