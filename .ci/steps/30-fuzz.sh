#!/usr/bin/env bash
# Fuzz the Caffe readers (prototxt, caffemodel, binaryproto) with atheris for a short fixed
# number of executions each, from the seed corpus in tests/fuzz/corpus (copied to a scratch
# folder, so the repository is not touched). Any exception other than the readers' documented
# errors, a crash, a hang over 10 s or memory over 2 GiB fails the step. ~35 s on 2 cores.
set -euo pipefail
RUNS=${LRPFAST_FUZZ_RUNS:-3000}
# atheris ships manylinux wheels for CPython 3.8-3.11 (x86-64); elsewhere it would compile
# libFuzzer with clang, which CI does not budget: skip the step with a message instead.
if ! python -m pip install --quiet --only-binary=:all: "atheris>=2.3,<3"; then
  echo "30-fuzz: no atheris wheel for $(python -V) on this platform; fuzzing skipped"
  exit 0
fi
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in prototxt caffemodel binaryproto; do
  mkdir -p "$scratch/$target"
  echo "--- fuzz $target: $RUNS executions"
  if ! python tests/fuzz/fuzz_readers.py "$target" -runs="$RUNS" -seed=14 -timeout=10 \
      -rss_limit_mb=2048 -artifact_prefix="$scratch/$target-" -print_final_stats=1 \
      "$scratch/$target" "tests/fuzz/corpus/$target" > "$scratch/$target.log" 2>&1; then
    tail -n 60 "$scratch/$target.log"
    mkdir -p fuzz-findings && cp "$scratch/$target-"* fuzz-findings/ 2>/dev/null || true
    echo "30-fuzz: $target: a finding, saved in fuzz-findings/ (reproduce with"
    echo "  python tests/fuzz/fuzz_readers.py $target fuzz-findings/FILE)"
    exit 1
  fi
  grep -E "^#[0-9]+[[:space:]]+DONE|stat::number_of_executed_units" "$scratch/$target.log"
done
