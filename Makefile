# `make test` and `make demo` both work on a fresh clone: they create .venv
# when it is missing and install the project into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# XLA's CPU runtime maps each step's temporary buffers afresh; with this glibc
# (2.35+) tunable malloc asks for transparent huge pages for them, which cuts
# an NFNet step's page faults about 300-fold on kernels whose THP setting is
# 'madvise' (README: "Host memory"). Older glibc ignores it.
export GLIBC_TUNABLES ?= glibc.malloc.hugetlb=1

.PHONY: test test-fast demo install clean

$(STAMP): setup.py requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n 2 tests

# The everyday loop: everything not marked slow (CI runs `make test`).
test-fast: $(STAMP)
	$(PY) -m pytest -q -n 2 -m "not slow" tests

demo: $(STAMP)
	$(PY) -m nfnets.experiment --workdir=runs/digits

clean:
	rm -rf $(VENV) runs
