#!/usr/bin/env bash
# The CPU wheel: build it, repair it (auditwheel, nothing vendored), check it is <= 15 MB, install
# it into a fresh virtual environment without a compiler on PATH and there run `lrpfast demo`,
# `lrpfast info` and a relevance map compared with the source build's (scripts/build_wheel.sh).
# Budget: ~2 min on 2 cores (about 40 s of it the build).
set -euo pipefail
bash scripts/build_wheel.sh cpu --check --out "$(mktemp -d)"
