#!/usr/bin/env bash
# Runs the Argo CD health check tests (tests/argocd/test_health.lua) under a real Lua 5.1
# interpreter: Argo CD evaluates health checks with gopher-lua, which implements Lua 5.1.
# Debian: apt-get install -y lua5.1. Set LUA=/path/to/lua5.1 to pick the interpreter.
# Prints "N passed, M failed" last and exits non-zero when a case fails.
set -euo pipefail
cd "$(dirname "$0")/../.."

lua="${LUA:-}"
if [ -z "$lua" ]; then
  for candidate in lua5.1 lua; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -v 2>&1 | grep -q '^Lua 5\.1'; then
      lua="$candidate"
      break
    fi
  done
fi
if [ -z "$lua" ]; then
  echo "tests/argocd/run.sh: no Lua 5.1 interpreter found (apt-get install -y lua5.1)" >&2
  exit 2
fi

echo "== Argo CD health check (deploy/argocd/health.lua) under $("$lua" -v 2>&1)"
exec "$lua" tests/argocd/test_health.lua .
