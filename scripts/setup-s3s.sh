#!/usr/bin/env bash
# Installs (once) s3s-fs 0.14.1, a small S3-compatible server over a directory, into a cache;
# the S3 file-store tests start it on a loopback port (prune_store::s3s). Prints nothing when it
# is already there. The binary: $PRUNE_S3S_ROOT/bin/s3s-fs (default ~/.cache/prune/s3s-fs).
# Building it takes about 5 minutes on 2 cores (docs/architecture.md, "A new file store").
set -euo pipefail
ROOT="${PRUNE_S3S_ROOT:-$HOME/.cache/prune/s3s-fs}"
VERSION=0.14.1
BIN="$ROOT/bin/s3s-fs"
if [ -x "$BIN" ] && "$BIN" --version 2>/dev/null | grep -q "$VERSION"; then
  exit 0
fi
echo "installing s3s-fs $VERSION into $ROOT (a few minutes, once)" >&2
cargo install s3s-fs --version "$VERSION" --locked --features binary --root "$ROOT" --force --quiet >&2
"$BIN" --version >/dev/null
