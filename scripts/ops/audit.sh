#!/usr/bin/env bash
# pip-audit of the serving dependencies: the installed versions of everything `pip install .`
# brings in, not the [dev]/[train] tools. See scripts/ops/audit.py for the exit codes.
#   bash scripts/ops/audit.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
python=${PYTHON:-python3}
if [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ]; then
    python=.venv/bin/python
fi
exec "$python" scripts/ops/audit.py "$@"
