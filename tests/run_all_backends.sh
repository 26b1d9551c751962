#!/usr/bin/env bash
# Runs the whole test suite once per Keras backend; fails if any backend fails.
# Usage: bash tests/run_all_backends.sh [extra pytest args]
set -u
cd "$(dirname "$0")/.."
status=0
for backend in tensorflow jax torch; do
  echo "=== KERAS_BACKEND=$backend ==="
  start=$(date +%s)
  KERAS_BACKEND=$backend python -m pytest -q -p no:cacheprovider "$@"
  rc=$?
  echo "=== $backend: exit $rc in $(( $(date +%s) - start )) s ==="
  [ $rc -eq 0 ] || status=1
done
exit $status
