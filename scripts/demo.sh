#!/usr/bin/env bash
# Quick start, part one: set up, then run the self-contained demo (two forwarders in namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/eoe_filter demo "$@"
