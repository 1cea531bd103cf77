#!/usr/bin/env bash
# Tests start their own redis-server on a free port. If the binary is missing, install it (Debian) when we can;
# otherwise fall back to a Redis already answering on 127.0.0.1:6379 via GUARDQ_TEST_REDIS_URL.
set -euo pipefail
if command -v redis-server >/dev/null 2>&1; then
  exit 0
fi
if [ -n "${GUARDQ_TEST_REDIS_URL:-}" ]; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "redis-server missing: installing it with apt-get" >&2
  (apt-get install -y -q redis-server >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q redis-server >/dev/null 2>&1)) && exit 0
fi
echo "guardq: tests need redis-server on PATH or GUARDQ_TEST_REDIS_URL pointing at a Redis" >&2
exit 1
