#!/usr/bin/env bash
# The main job, on a fresh machine: set up, then show spendgate pricing requests
# exactly and enforcing a budget on the embedded SQLite ledger.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"

say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
run() { say "$*"; "$@" || echo "(exit code $?)"; }

run spendgate price gpt-4o
run spendgate price anthropic/claude-sonnet-4-5
run spendgate cost --model gpt-4o --input 12000 --output 800 --cached 8000
run spendgate cost --model gpt-5.4 --input 300000 --output 2000
run spendgate cost --model gpt-4q --input 1000
say "spendgate models --provider anthropic | head -5"
spendgate models --provider anthropic > "${TMPDIR:-/tmp}/spendgate-models.txt"
head -5 "${TMPDIR:-/tmp}/spendgate-models.txt"
# A $0.05 daily budget on the embedded SQLite ledger, gpt-4o calls to a local
# fake OpenAI-compatible upstream until the budget refuses.
run spendgate demo --ledger "sqlite:///$(mktemp -d)/spend.db" --limit 0.05
