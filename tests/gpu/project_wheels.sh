#!/usr/bin/env bash
# Build the third carry for the GPU machine (Python 3.12, no network): the project's own runtime packages as
# wheels (the ones the lent image lacks; pydantic, fastapi, orjson... come with the SGLang kit) plus a
# redis-server binary from Debian's package. Run here, from the repository root:  bash tests/gpu/project_wheels.sh .whl3
set -euo pipefail
out=${1:?usage: $0 DIR}
mkdir -p "$out"
plats=()
for n in 39 38 35 34 31 28 27 24 17; do plats+=(--platform "manylinux_2_${n}_x86_64"); done
plats+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
pins=$(.venv/bin/pip list --format=freeze 2>/dev/null | grep -i -E '^(celery|tzlocal|kombu|billiard|vine|amqp|click-didyoumean|click-repl|click-plugins|prompt.toolkit|wcwidth|redis|pydantic-settings|python-dotenv|structlog|boto3|botocore|s3transfer|jmespath|typer|shellingham|tzdata|av)==')
# shellcheck disable=SC2086
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${plats[@]}" -d "$out" $pins tzdata
(cd "$out" && rm -f redis-server_*.deb redis-tools_*.deb && apt-get download -q redis-server redis-tools libjemalloc2 liblzf1 >/dev/null 2>&1 || true)
ls "$out" | wc -l; du -sh "$out"
