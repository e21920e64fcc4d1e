#!/usr/bin/env bash
# Installs what the tests need (a venv with relay and its test extras, and coturn and
# chromium as interop peers when we may install them), then runs lint, types and the whole
# test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the interop tests use, when we may install them: coturn (a reference TURN
# server and client), chromium (a real WebRTC client, driven by playwright without
# playwright's own browser downloads) and prometheus (promtool).
APT_NEED=()
command -v turnutils_uclient >/dev/null 2>&1 || APT_NEED+=(coturn)
command -v chromium >/dev/null 2>&1 || APT_NEED+=(chromium)
if [ ${#APT_NEED[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "== installing ${APT_NEED[*]} (interop peers for the tests)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${APT_NEED[@]}" >/dev/null
fi
# promtool checks the shipped Prometheus config and relay's /metrics output. Package
# `prometheus` without its recommends (node exporter, ipmitool...): about 19 MB to download,
# about 20 s to install; in a container its service is not started by the install.
if ! command -v promtool >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 \
    && [ "$(id -u)" = 0 ]; then
  echo "== installing prometheus (promtool)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus \
    >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
echo "== installing relay with its test and benchmark extras"
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test,benchmarks]'

echo "== ruff"
.venv/bin/ruff check relay tests benchmarks
echo "== mypy"
.venv/bin/mypy
echo "== import layers"
.venv/bin/lint-imports
echo "== pytest"
.venv/bin/python -m pytest -p no:cacheprovider "$@"
