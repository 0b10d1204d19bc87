#!/usr/bin/env bash
# Sourced by the other scripts: makes .venv with spendgate and its dev tools installed.
# Idempotent and quick when nothing changed (a stamp of pyproject.toml's hash).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

pick_python() {
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  return 1
}

PY="$(pick_python || true)"
if [ -z "$PY" ]; then
  echo "spendgate needs Python 3.11+; installing it from Debian's packages" >&2
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq python3 python3-venv >/dev/null
  PY="$(pick_python)" || { echo "no Python 3.11+ available" >&2; exit 1; }
fi

# The dashboard's browser tests (tests/gateway_ui) drive a real headless Chromium through
# Playwright with executable_path=/usr/bin/chromium: Debian's chromium (and chromium-driver,
# for Selenium) from apt, non-interactively, only when /usr/bin/chromium is missing; as root,
# else through sudo when there is one, else a note and no browser tests.
# `playwright install` is never run: nothing is downloaded besides Debian's packages.
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else SUDO="none"; fi
  if [ "$SUDO" = none ]; then
    echo "setup: /usr/bin/chromium is missing and neither root nor sudo: the browser tests will be skipped" >&2
  else
    echo "setup: installing Debian's chromium and chromium-driver (apt-get) for the browser tests" >&2
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
      $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null ||
      echo "setup: could not install chromium: the browser tests will be skipped" >&2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv || {
    # Debian ships venv apart from python3.
    if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null; fi
    "$PY" -m venv .venv
  }
fi

STAMP=.venv/.spendgate-installed
WANT="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check -U pip
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'
  echo "$WANT" > "$STAMP"
fi
export PATH="$ROOT/.venv/bin:$PATH"
