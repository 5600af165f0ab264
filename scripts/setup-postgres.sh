#!/usr/bin/env bash
# Makes sure PostgreSQL's server binaries are present for the storage tests, which start a
# throwaway PostgreSQL server of their own (server/src/storage/pg_support.rs) and fail without
# one. Does nothing when `initdb` is found (in PATH or in Debian's /usr/lib/postgresql/15/bin);
# otherwise installs Debian's postgresql-15 (as root, or through sudo). Idempotent and quiet.
set -euo pipefail
if command -v initdb >/dev/null 2>&1 || [ -x /usr/lib/postgresql/15/bin/initdb ]; then
  exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1; then
  SUDO=(sudo)
else
  echo "setup-postgres: initdb not found and not root: install PostgreSQL 15 (Debian: apt-get install postgresql-15)" >&2
  exit 1
fi
echo "setup-postgres: installing postgresql-15 (apt-get, once)" >&2
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq >/dev/null
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends postgresql-15 >/dev/null
if [ ! -x /usr/lib/postgresql/15/bin/initdb ]; then
  echo "setup-postgres: postgresql-15 installed but /usr/lib/postgresql/15/bin/initdb is missing" >&2
  exit 1
fi
