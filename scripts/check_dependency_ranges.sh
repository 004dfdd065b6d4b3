#!/usr/bin/env bash
# Does the plugin install beside the torch a user already has? Builds the wheel, checks that its metadata
# pins nothing exactly (no "==" in Requires-Dist), then asks pip, in a fresh venv that holds torch
# TORCH_VERSION and torchvision TORCHVISION_VERSION, to install the wheel (--dry-run --report) and fails
# if pip would replace either of them or add another build of torch's CUDA stack.
#
#   bash scripts/check_dependency_ranges.sh            # CI runs it before the tests (.ci/run)
#
# Every failure ends with one line "check_dependency_ranges: FAILED: <what>" and exit code 1.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
TORCHVISION_VERSION="${TORCHVISION_VERSION:-0.28.0}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
fail() { echo "check_dependency_ranges: FAILED: $*" >&2; exit 1; }
step() { echo "check_dependency_ranges: [$(date +%T)] $*"; }

step "1/4 building the wheel"
# from a copy: pip builds in the source tree, and the check leaves the checkout as it found it
mkdir "$work/src"
tar --exclude=./.git --exclude=./.venv --exclude=./build --exclude=./dist --exclude='*.egg-info' -cf - . \
    | tar -xf - -C "$work/src"
"$PYTHON" -m pip wheel --no-deps -q -w "$work/dist" "$work/src" >"$work/build.log" 2>&1 \
    || { tail -30 "$work/build.log" >&2; fail "the wheel does not build (output above)"; }
wheel="$(ls "$work"/dist/nnunet_swin-*.whl)"

step "2/4 no exact pin in $(basename "$wheel")"
"$PYTHON" - "$wheel" <<'EOF' || fail "the wheel's metadata pins a dependency exactly (lines above)"
import sys, zipfile
wheel = zipfile.ZipFile(sys.argv[1])
metadata = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
requires = [line for line in wheel.read(metadata).decode().splitlines() if line.startswith("Requires-Dist:")]
if not requires:
    sys.exit("no Requires-Dist in the wheel's METADATA: the dependencies did not reach the wheel")
pinned = [line for line in requires if "==" in line.split(";")[0]]
for line in pinned:
    print("  exact pin:", line, file=sys.stderr)
sys.exit(1 if pinned else 0)
EOF

step "3/4 a fresh venv holding torch $TORCH_VERSION and torchvision $TORCHVISION_VERSION"
"$PYTHON" -m venv "$work/venv"
pip=("$work/venv/bin/python" -m pip)
"${pip[@]}" install -q "torch==$TORCH_VERSION" >"$work/torch.log" 2>&1 \
    || { tail -20 "$work/torch.log" >&2; fail "could not install torch==$TORCH_VERSION into the test venv"; }
# --no-deps: PyPI's torchvision asks for the exact torch release, which the local build above already is
"${pip[@]}" install -q --no-deps "torchvision==$TORCHVISION_VERSION" >"$work/tv.log" 2>&1 \
    || { tail -20 "$work/tv.log" >&2; fail "could not install torchvision==$TORCHVISION_VERSION into the test venv"; }

step "4/4 pip install --dry-run of the wheel into that venv"
"${pip[@]}" install -q --dry-run --report "$work/report.json" "$wheel" >"$work/dry.log" 2>&1 \
    || { tail -30 "$work/dry.log" >&2; fail "pip cannot install the wheel beside torch $TORCH_VERSION and torchvision $TORCHVISION_VERSION (output above)"; }
"$PYTHON" - "$work/report.json" <<'EOF' || fail "pip would replace the venv's torch stack (lines above)"
import json, re, sys
install = [(i["metadata"]["name"], i["metadata"]["version"]) for i in json.load(open(sys.argv[1]))["install"]]
stack = re.compile(r"^(torch|torchvision|triton|nvidia-.*)$", re.IGNORECASE)
replaced = [f"{name} {version}" for name, version in install if stack.match(name)]
for item in replaced:
    print("  would install:", item, file=sys.stderr)
if not any(name.lower().replace("_", "-") == "nnunet-swin" for name, _ in install):
    sys.exit("  the dry run does not install nnunet-swin itself")
if replaced:
    sys.exit(1)
print(f"  pip would install {len(install)} distributions, none of the torch stack")
EOF
step "OK: no exact pin; torch $TORCH_VERSION and torchvision $TORCHVISION_VERSION are kept"
