#!/usr/bin/env bash
# The Python client's suite: a virtualenv with the pinned test tools
# (clients/python/requirements-dev.txt), the client installed from
# clients/python as a user would (`pip install ./clients/python`), ruff, and
# pytest against the real daemon binary (KEYWARDEN_BIN, default
# target/debug/keywarden) and, for examples/postgres, a real PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${KEYWARDEN_PY_VENV:-target/python-venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
want="$(cat clients/python/requirements-dev.txt | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$venv/.requirements" 2>/dev/null || true)" != "$want" ]; then
  "$venv/bin/pip" install -q --disable-pip-version-check -r clients/python/requirements-dev.txt
  echo "$want" >"$venv/.requirements"
fi
# Not editable: the tests exercise the package as installed.
"$venv/bin/pip" install -q --disable-pip-version-check --force-reinstall --no-deps ./clients/python
export KEYWARDEN_BIN="${KEYWARDEN_BIN:-$PWD/target/debug/keywarden}"
[ -x "$KEYWARDEN_BIN" ] || cargo build --locked --bin keywarden

echo "== ruff (clients/python, examples/postgres)"
"$venv/bin/ruff" check clients/python examples/postgres
"$venv/bin/ruff" format --check clients/python examples/postgres

echo "== pytest clients/python"
# Run from outside the source tree so that the installed package is used.
(cd clients/python/tests && "$OLDPWD/$venv/bin/python" -m pytest -q -p no:cacheprovider .)
if [ -d examples/postgres/tests ]; then
  echo "== pytest examples/postgres (a real PostgreSQL server)"
  (cd examples/postgres && "$OLDPWD/$venv/bin/python" -m pytest -q -p no:cacheprovider tests)
fi
