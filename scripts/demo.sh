#!/usr/bin/env bash
# The main job, on a fresh machine: set up, then run the spendgate gateway on the
# embedded SQLite ledger in front of a local fake OpenAI-compatible upstream, and
# show a virtual key's budget being enforced with the official openai SDK.
# The gateway keeps serving afterwards (Ctrl-C stops it); DEMO_EXIT=1 stops it
# right after the demo, as does a run without a terminal.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"

say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
run() { say "$*"; "$@" || echo "(exit code $?)"; }

# Exact prices, from the shipped catalog.
run spendgate price gpt-4o
run spendgate cost --model gpt-4o --input 12000 --output 800 --cached 8000
run spendgate cost --model gpt-4q --input 1000

# The gateway: SQLite ledger (spendgate-demo.db), a demo key with a 1 USD daily budget.
WORK="$(mktemp -d)"
LOG="$WORK/gateway.log"
say "spendgate serve --demo --port 0   (in $WORK)"
(cd "$WORK" && exec spendgate serve --demo --port 0) >"$LOG" 2>&1 &
GATEWAY=$!
trap 'kill "$GATEWAY" 2>/dev/null || true; wait "$GATEWAY" 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do  # up to 30 s
  grep -q "spendgate gateway ready" "$LOG" 2>/dev/null && break
  kill -0 "$GATEWAY" 2>/dev/null || { cat "$LOG"; echo "the gateway did not start" >&2; exit 1; }
  sleep 0.1
done
cat "$LOG"
URL="$(sed -n 's/^OPENAI_BASE_URL=//p' "$LOG")"
KEY="$(sed -n 's/^demo key[^:]*: //p' "$LOG")"
[ -n "$URL" ] && [ -n "$KEY" ] || { echo "no URL or key in the gateway's output" >&2; exit 1; }

# gpt-4o requests through the gateway until the key's budget answers 429.
run spendgate demo --gateway "$URL" --key "$KEY"
run spendgate budgets list --ledger "sqlite:///$WORK/spendgate-demo.db"

if [ -t 0 ] && [ "${DEMO_EXIT:-0}" != 1 ]; then
  printf '\nThe gateway is serving at %s (virtual key %s). Ctrl-C to stop.\n' "$URL" "$KEY"
  wait "$GATEWAY"
fi
