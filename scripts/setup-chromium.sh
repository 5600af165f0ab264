#!/usr/bin/env bash
# Makes sure headless Chromium is present for the dashboard tests (tests/dashboard.rs loads the
# pages of `prune-server --http` in it). Does nothing when `chromium` is on PATH; otherwise
# installs Debian's chromium (as root, or through sudo). Idempotent and quiet.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1; then
  SUDO=(sudo)
else
  echo "setup-chromium: chromium not found and not root: install it (Debian: apt-get install chromium)" >&2
  exit 1
fi
echo "setup-chromium: installing chromium (apt-get, once)" >&2
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq >/dev/null
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends chromium >/dev/null
if ! command -v chromium >/dev/null 2>&1; then
  echo "setup-chromium: chromium installed but not on PATH" >&2
  exit 1
fi
