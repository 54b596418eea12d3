#!/usr/bin/env bash
# Documentation site (Sphinx, warnings are errors so it cannot rot) and the type checker (mypy,
# configured in mypy.ini) on the package. Budget: 2.5 minutes including the installs.
set -euo pipefail
python -m pip install --quiet "sphinx>=7" "myst-parser>=2" "mypy>=1.8"
out=$(mktemp -d)
python -m sphinx -W --keep-going -q -b html docs "$out/html"
test -s "$out/html/api.html" && grep -q "relevance_overlay" "$out/html/api.html"
python -m mypy --config-file mypy.ini
