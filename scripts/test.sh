#!/usr/bin/env bash
# The whole test suite: lint, format check, types, tests. CI runs exactly this.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
source "$ROOT/scripts/services.sh"  # PostgreSQL and Redis for the tests (started if not up)

echo "== ruff check"; ruff check .
echo "== ruff format --check"; ruff format --check .
echo "== mypy"; mypy
echo "== pytest"; pytest -q -p no:cacheprovider "$@"
