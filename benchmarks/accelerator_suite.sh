#!/bin/sh
# The accelerator benchmark suite (benchmarks/accelerator_suite.py); flags pass through.
cd "$(dirname "$0")/.." && exec "${PYTHON:-python}" -m benchmarks.accelerator_suite "$@"
