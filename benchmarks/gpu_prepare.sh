#!/usr/bin/env bash
# Run HERE (not on the GPU machine), before a GPU session's one call of benchmarks/gpu_session.sh.
#
# Fills .gpu-carry/ (git-excluded through .git/info/exclude), which the call names in `carry`:
#   .gpu-carry/ccp-figures  a copy of ../shared/data/ccp-figures (../shared does not travel)
#   .gpu-carry/whl          Python 3.12 manylinux wheels of every third-party package that
#                           benchmarks/gpu_throughput.py imports (through vaelab) and that the GPU
#                           machine's image lacks, at the versions this venv uses; plus
#                           typing-extensions, which the image has at an unknown version while
#                           pydantic-core needs a recent one.
# The set of packages is found by running gpu_throughput.py here on the CPU, on 16 px images,
# every setup including torch.compile, and reading sys.modules; each is then either on the
# image's package list (/work/.library/device/KINDS.md, else a built-in fallback) or gets a
# wheel, and so does every requirement of every wheel. Ends by printing the size of all that
# travels (tracked and untracked-not-ignored files + .gpu-carry) and fails over 60 MiB.
# Idempotent: run it again at will (nothing is fetched twice).
#
#   bash benchmarks/gpu_prepare.sh          # env: GPU_DATA (photos), PYTHON (default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=.gpu-carry
DATA=${GPU_DATA:-../shared/data/ccp-figures}
PY=${PYTHON:-.venv/bin/python}
LIMIT_MIB=${GPU_CARRY_LIMIT_MIB:-60}
KINDS=${GPU_KINDS_MD:-/work/.library/device/KINDS.md}

# 1. keep .gpu-carry (and the session's local output folder) out of git
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
touch "$exclude"
for line in /.gpu-carry/ /out-gpu/; do
    grep -qxF "$line" "$exclude" || echo "$line" >>"$exclude"
done
git check-ignore -q "$CARRY/x" || { echo "gpu_prepare: $CARRY is not ignored by git; check $exclude" >&2; exit 1; }

# 2. the photos
[ -f "$DATA/metadata.json" ] && [ -d "$DATA/images" ] || { echo "gpu_prepare: no photos at $DATA (set GPU_DATA)" >&2; exit 1; }
mkdir -p "$CARRY"
if [ -d "$CARRY/ccp-figures" ] && diff -rq "$DATA" "$CARRY/ccp-figures" >/dev/null 2>&1; then
    echo "gpu_prepare: $CARRY/ccp-figures is up to date"
else
    rm -rf "$CARRY/ccp-figures"
    cp -r "$DATA" "$CARRY/ccp-figures"
    chmod -R u+w "$CARRY/ccp-figures"
    echo "gpu_prepare: copied $DATA to $CARRY/ccp-figures"
fi

# 3. which packages the benchmark imports, and which of them the GPU machine lacks
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
echo "gpu_prepare: running gpu_throughput.py on the CPU (16 px, every setup) to see what it imports..."
PYTHONPATH=src VAELAB_CACHE_DIR="$probe/cache" KINDS="$KINDS" "$PY" - "$CARRY" "$probe" <<'PYEOF'
import contextlib, importlib.metadata as md, importlib.util, io, re, sys
from pathlib import Path

carry, probe = Path(sys.argv[1]), Path(sys.argv[2])
import os
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()  # noqa: E731
FALLBACK = ("torch numpy pillow pyyaml typing-extensions filelock jinja2 markupsafe sympy mpmath networkx fsspec "
            "setuptools packaging tqdm triton")  # what the benchmark was seen to use that the image has
kinds = Path(os.environ["KINDS"])
text = kinds.read_text() if kinds.is_file() else ""
found = re.search(r"## Python packages already there.*?Packages: (.*?)\.\s*$", text, re.S | re.M)
device = {norm(n) for n in (found.group(1) if found else FALLBACK).replace("\n", " ").split(", ")} if found else set(FALLBACK.split())
print(f"  device package list: {kinds if found else 'built-in fallback (' + str(kinds) + ' not found)'}, {len(device)} names")

spec = importlib.util.spec_from_file_location("gpu_throughput", "benchmarks/gpu_throughput.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)
out = io.StringIO()
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
    rc = bench.main(["--allow-cpu", "--images", str(carry / "ccp-figures"), "--sizes", "16", "--batches", "16:8",
                     "--warmup", "1", "--steps", "1", "--workers", "0"])
result = [l for l in out.getvalue().splitlines() if l.startswith('{"benchmark"')]
measured = [r["setup"] for r in __import__("json").loads(result[-1])["rows"] if r["status"] == "measured"] if result else []
if rc != 0 or len(measured) != len(bench.SETUPS):
    print(out.getvalue()[-3000:])
    sys.exit(f"gpu_prepare: the CPU check of gpu_throughput.py failed (exit {rc}, measured {measured})")
print(f"  CPU check: every setup ran ({', '.join(measured)})")

vendored = set()  # setuptools' vendored packages: the image's setuptools brings its own
for module in ("setuptools",):
    spec = importlib.util.find_spec(module)
    if spec and spec.submodule_search_locations:
        vendor = Path(list(spec.submodule_search_locations)[0]) / "_vendor"
        vendored = {p.name for p in vendor.iterdir()} if vendor.is_dir() else set()
owners = md.packages_distributions()
needed = set()
for name in sorted({m.split(".")[0] for m in sys.modules}):
    if name in sys.stdlib_module_names or name in ("vaelab", "gpu_throughput") or name in vendored:
        continue
    for dist in owners.get(name, []):
        needed.add(norm(dist))
missing = sorted(d for d in needed if d not in device)
print(f"  imported third-party packages: {', '.join(sorted(needed))}")
print(f"  not on the GPU machine: {', '.join(missing) or 'none'}")
wheels = sorted(set(missing) | {"typing-extensions"})
(probe / "wheels.txt").write_text("".join(f"{d}=={md.version(d)}\n" for d in wheels))
PYEOF

# 4. the wheels, at this venv's versions (pip skips files it already has)
mkdir -p "$CARRY/whl"
mapfile -t pins <"$probe/wheels.txt"
echo "gpu_prepare: wheels for python 3.12: ${pins[*]}"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$CARRY/whl" "${pins[@]}"

# 5. one version of each, nothing stale, and every requirement of every wheel is there too
"$PY" - "$CARRY/whl" "$probe/wheels.txt" "$KINDS" <<'PYEOF'
import re, sys, zipfile
from pathlib import Path

folder, pins, kinds = Path(sys.argv[1]), Path(sys.argv[2]).read_text().split(), Path(sys.argv[3])
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()  # noqa: E731
wanted = {norm(p.split("==")[0]): p.split("==")[1] for p in pins}
have = {}
for wheel in sorted(folder.glob("*.whl")):
    name, version = wheel.name.split("-")[:2]
    if wanted.get(norm(name)) != version:
        wheel.unlink()
        print(f"  removed stale {wheel.name}")
    else:
        have[norm(name)] = wheel
lacking = sorted(set(wanted) - set(have))
if lacking:
    sys.exit(f"gpu_prepare: no wheel for {lacking}")
text = kinds.read_text() if kinds.is_file() else ""
found = re.search(r"## Python packages already there.*?Packages: (.*?)\.\s*$", text, re.S | re.M)
device = {norm(n) for n in found.group(1).replace("\n", " ").split(", ")} if found else None
for name, wheel in sorted(have.items()):
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    needs = [re.split(r"[ ;<>=!~\[(]", line.split(":", 1)[1].strip())[0]
             for line in meta.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line]
    absent = [n for n in needs if norm(n) not in have and (device is None or norm(n) not in device)]
    print(f"  {wheel.name}: needs {', '.join(needs) or 'nothing'}" + (f"  MISSING {absent}" if absent else ""))
    if absent:
        sys.exit(f"gpu_prepare: {wheel.name} needs {absent}, neither carried nor on the GPU machine")
print(f"  wheel set complete: {len(have)} wheels")
PYEOF

# 6. what travels: tracked + untracked-not-ignored files, and the carried folder
tree=$(git ls-files -z -co --exclude-standard | xargs -0 -r stat -c %s -- 2>/dev/null | awk '{s+=$1} END {print s+0}')
carried=$(du -sb "$CARRY" | cut -f1)
total=$((tree + carried))
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }
echo "gpu_prepare: travels $(mib "$total") (working tree $(mib "$tree"), $CARRY $(mib "$carried"): photos $(du -sh "$CARRY/ccp-figures" | cut -f1), wheels $(du -sh "$CARRY/whl" | cut -f1)); limit 64 MiB, this check $LIMIT_MIB MiB"
if [ "$total" -gt $((LIMIT_MIB * 1048576)) ]; then
    echo "gpu_prepare: too much would travel (over $LIMIT_MIB MiB)" >&2
    exit 1
fi
echo "gpu_prepare: ready. Now the device call: run(command='bash benchmarks/gpu_session.sh', carry=['.gpu-carry'], timeout_s=450)"
