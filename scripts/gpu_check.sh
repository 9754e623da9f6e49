#!/usr/bin/env bash
# GPU validation on the device machine (see docs/architecture.md, "GPU testing"):
#   scripts/gpu_check.sh [tests|nn|opdb|bench|host|demo]...   (default: all), logs under $OUT.
# Run from a clean snapshot of HEAD. Optional library wheels in .whl/ are installed first.
set -u
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
cd "${SNAP:-.}" && export PYTHONPATH=.:${PYTHONPATH:-}
parts=${*:-tests nn opdb bench host demo}
for p in $parts; do
  case $p in
    tests) python3 -m pytest -m cuda -n 8 -p no:cacheprovider tests \
             --ignore=tests/test_opdb.py > "$OUT/$p.log" 2>&1 ;;
    nn)    EMBER_TEST_DEVICE=cuda python3 -m pytest -n 8 -p no:cacheprovider \
             tests/test_nn_*.py > "$OUT/$p.log" 2>&1 ;;
    opdb)  python3 -m pytest tests/test_opdb.py -m cuda -n 8 -p no:cacheprovider \
             > "$OUT/$p.log" 2>&1 ;;
    bench) python3 -m bench.gpu > "$OUT/$p.log" 2>&1 ;;
    host)  python3 -m bench.host_step > "$OUT/$p.log" 2>&1 ;;
    demo)  python3 -m ember.examples.digits --device cuda --out "$OUT/digits" \
             > "$OUT/$p.log" 2>&1 ;;
  esac
  echo "== $p: $(tail -1 "$OUT/$p.log")"
done
