#!/usr/bin/env bash
# The test suite: bash tests/run.sh [pytest args]. Creates .venv first (tools/setup_env.sh).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
venv=$(bash tools/setup_env.sh)
export PATH="$venv/bin:$PATH"
exec python -m pytest tests "$@"
