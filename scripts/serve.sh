#!/usr/bin/env bash
# Install livesnap into .venv (if needed) and start it on its embedded defaults:
# SQLite and local-disk storage under ./livesnap-data, API on http://127.0.0.1:8080.
# Extra arguments go to `livesnap serve` (see `livesnap serve --help`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ ! -x .venv/bin/python ]]; then
  "$(command -v python3.11 || command -v python3)" -m venv .venv
fi
stamp=.venv/.livesnap-installed
if [[ ! -f $stamp || pyproject.toml -nt $stamp || requirements.lock -nt $stamp ]]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -c requirements.lock -e .
  touch "$stamp"
fi

exec .venv/bin/livesnap serve "$@"
