#!/usr/bin/env bash
# AddressSanitizer + UndefinedBehaviorSanitizer: builds the extension with -DFASTXENT_SANITIZE=ON (the
# bindings, the core and every per-ISA kernel object) into its own venv and build folder under
# build/sanitize/, then runs a reduced test suite with libasan preloaded into the (uninstrumented)
# Python interpreter. Any sanitizer report, in the test process or in a child it starts, fails the run.
#
#   bash .ci/sanitize.sh                 # the reduced suite
#   bash .ci/sanitize.sh tests/test_x.py # other pytest arguments instead
set -euo pipefail
cd "$(dirname "$0")/.."

work=build/sanitize
reports="$PWD/$work/reports"

python3 -m venv --clear "$work/venv"
# shellcheck disable=SC1091
. "$work/venv/bin/activate"
python -m pip install --quiet numpy pytest hypothesis threadpoolctl ml_dtypes pybind11 scikit-build-core
# Not editable: the instrumented build is installed into this venv only. No torch here: it is not
# instrumented and its own tests are not what is checked.
python -m pip install --quiet --no-build-isolation . \
  -Cbuild-dir="$work/cmake" \
  -Ccmake.build-type=RelWithDebInfo \
  -Ccmake.define.FASTXENT_SANITIZE=ON

libasan="$(gcc -print-file-name=libasan.so)"
# libstdc++ too: the interpreter does not link it, and ASan's __cxa_throw interceptor must find it
# at start-up, or the first C++ exception (IndexError, ValueError from the bindings) aborts.
libstdcxx="$(gcc -print-file-name=libstdc++.so)"
for library in "$libasan" "$libstdcxx"; do
  if [[ ! -e "$library" ]]; then
    echo "sanitize: $library not found (gcc -print-file-name)" >&2
    exit 1
  fi
done
# The extension must really be instrumented, or a clean run proves nothing.
extension="$(python -c 'import fastxent._core as c; print(c.__file__)' 2>/dev/null || true)"
if [[ -z "$extension" ]]; then
  extension="$(find "$work/venv" -name '_core*.so' | head -n 1)"
fi
if ! grep -q libasan <<< "$(ldd "$extension")" || ! grep -q __ubsan_handle <<< "$(nm -D "$extension")"; then
  echo "sanitize: $extension is not built with ASan and UBSan" >&2
  exit 1
fi
for isa_objects in "$work"/cmake/CMakeFiles/fastxent_kernels_*.dir; do
  if ! grep -q __asan_report <<< "$(find "$isa_objects" -name '*.o' -exec nm -u {} +)"; then
    echo "sanitize: $(basename "$isa_objects") was not compiled with the sanitizers" >&2
    exit 1
  fi
done

rm -rf "$reports"
mkdir -p "$reports"

if [[ $# -gt 0 ]]; then
  tests=("$@")
else
  # The reduced suite: what exists of the value, error and edge-case tests, the fuzzer (fewer
  # examples: everything runs slower), bad input, threads, fork and dispatch; no large arrays but
  # the 40 MiB ones of test_result_memory, whose kept block is what ASan should watch.
  tests=()
  for file in test_fuzz test_bad_input test_threads test_fork test_dispatch test_softmax test_cross_entropy \
    test_grad test_nll_loss test_errors test_edge_cases test_api test_low_precision test_softcap test_result_memory; do
    [[ -f "tests/$file.py" ]] && tests+=("tests/$file.py")
  done
  tests+=(-m "not slow")
fi

status=0
# detect_leaks=0: CPython keeps its allocations to the end by design. log_path: reports go to files,
# so that one written by a child process (fork, subprocess) is found too.
LD_PRELOAD="$libasan $libstdcxx" \
  ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=0:log_path=$reports/asan" \
  UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$reports/ubsan" \
  FASTXENT_FUZZ_EXAMPLES="${FASTXENT_FUZZ_EXAMPLES:-60}" \
  python -m pytest -q -p no:cacheprovider "${tests[@]}" || status=$?

if compgen -G "$reports/*" > /dev/null; then
  echo "sanitize: sanitizer reports:" >&2
  cat "$reports"/* >&2
  exit 1
fi
if [[ $status -ne 0 ]]; then
  echo "sanitize: the tests failed under the sanitizers (exit status $status)" >&2
  exit "$status"
fi
echo "sanitize: clean"
