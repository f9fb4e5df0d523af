#!/usr/bin/env bash
# ARM64, the phones' CPU: run `python -m runtime.generate` on the demo package as an aarch64 process under
# qemu-user and check that its greedy output equals the x86-64 output, byte for byte.
#
#   bash benchmarks/arm64.sh ["prompt"]        # as root on Debian bookworm x86-64 (it installs with apt)
#
# What it sets up, once, in $PHIEDGE_ARM64_CACHE (default ~/.cache/phi-edge/arm64):
#   qemu-user      from Debian trixie (qemu 10): bookworm's qemu 7.2 crashes importing onnxruntime >= 1.28. A
#                  trixie apt source is added pinned at priority 100, so only what is asked for comes from it.
#   sysroot/       Debian bookworm's arm64 python3.11 and the libraries it links, unpacked with dpkg -x
#                  (after dpkg --add-architecture arm64; nothing arm64 is installed into the system).
#   site-*/        aarch64 wheels of onnxruntime, numpy and tokenizers from PyPI, the versions x86-64 has.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${PHIEDGE_ARM64_CACHE:-$HOME/.cache/phi-edge/arm64}
PROMPT=${1:-def fibonacci(n):}
PYTHON=${PYTHON:-python3}
GENERATE=(-m runtime.generate "$PROMPT" --package runtime/demo --temperature 0 --max-new-tokens 32 --seed 0)
DEBS=(python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libc6 libgcc-s1 libstdc++6 zlib1g libexpat1
      libffi8 libssl3 libbz2-1.0 liblzma5 libcrypt1 libuuid1 libsqlite3-0 libtinfo6 libncursesw6 libreadline8
      libdb5.3 libnsl2 libtirpc3)
start=$(date +%s)
mkdir -p "$CACHE"
need_root() { [ "$(id -u)" -eq 0 ] || { echo "error: $1 needs root (apt-get); run as root or do it by hand" >&2; exit 2; }; }

# 1. qemu-user >= 8 (trixie's).
QEMU=""
for q in qemu-aarch64 qemu-aarch64-static; do
    if command -v "$q" >/dev/null && [ "$("$q" --version | grep -oE 'version [0-9]+' | grep -oE '[0-9]+')" -ge 8 ]; then
        QEMU=$(command -v "$q"); break
    fi
done
if [ -z "$QEMU" ]; then
    need_root "installing qemu-user from trixie"
    if [ ! -f /etc/apt/sources.list.d/phi-edge-trixie.sources ]; then
        printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
            > /etc/apt/sources.list.d/phi-edge-trixie.sources
        printf 'Package: *\nPin: release n=trixie\nPin-Priority: 100\n' > /etc/apt/preferences.d/phi-edge-trixie
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends -t trixie qemu-user >/dev/null
    QEMU=$(command -v qemu-aarch64)
fi

# 2. arm64 python3.11 sysroot.
SYSROOT=$CACHE/sysroot
if [ ! -x "$SYSROOT/usr/bin/python3.11" ]; then
    need_root "fetching arm64 python3.11 with apt"
    if ! dpkg --print-foreign-architectures | grep -qx arm64; then dpkg --add-architecture arm64; apt-get update -qq; fi
    rm -rf "$CACHE/debs" "$SYSROOT" && mkdir -p "$CACHE/debs" "$SYSROOT"
    (cd "$CACHE/debs" && apt-get download -qq -t bookworm "${DEBS[@]/%/:arm64}" 2>/dev/null) \
        || { apt-get update -qq; (cd "$CACHE/debs" && apt-get download -qq -t bookworm "${DEBS[@]/%/:arm64}"); }
    for deb in "$CACHE"/debs/*.deb; do dpkg -x "$deb" "$SYSROOT"; done
fi

# 3. aarch64 wheels, the same versions as on x86-64 so that both run the same code.
read -r ORT NP TOK < <("$PYTHON" -c "import onnxruntime, numpy, tokenizers; print(onnxruntime.__version__, numpy.__version__, tokenizers.__version__)")
SITE=$CACHE/site-ort$ORT-np$NP-tok$TOK
if [ ! -f "$SITE/.ok" ]; then
    rm -rf "$SITE" "$CACHE/wheels" && mkdir -p "$SITE"
    "$PYTHON" -m pip download -q --only-binary=:all: --python-version 3.11 --implementation cp \
        --platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64 \
        -d "$CACHE/wheels" "onnxruntime==$ORT" "numpy==$NP" "tokenizers==$TOK"
    for whl in "$CACHE"/wheels/*.whl; do "$PYTHON" -m zipfile -e "$whl" "$SITE"; done
    touch "$SITE/.ok"
fi
setup=$(( $(date +%s) - start ))

# 4. The same command on both CPUs.
cd "$REPO"
t0=$(date +%s.%N)
x86=$("$PYTHON" "${GENERATE[@]}")
t1=$(date +%s.%N)
arm=$(PYTHONPATH="$SITE:$REPO" PYTHONNOUSERSITE=1 "$QEMU" -L "$SYSROOT" "$SYSROOT/usr/bin/python3.11" -c \
    'import platform, runpy, sys; assert platform.machine() == "aarch64", platform.machine(); sys.argv[0] = "runtime.generate"; runpy.run_module("runtime.generate", run_name="__main__")' \
    "${GENERATE[@]:2}" 2> "$CACHE/arm64-stderr.txt") \
    || { echo "error: the aarch64 run failed:" >&2; cat "$CACHE/arm64-stderr.txt" >&2; exit 1; }
t2=$(date +%s.%N)
printf 'x86-64  (%.1f s): %q\n' "$(echo "$t1 - $t0" | bc)" "$x86"
printf 'aarch64 (%.1f s under %s, onnxruntime %s): %q\n' "$(echo "$t2 - $t1" | bc)" "$("$QEMU" --version | head -1)" "$ORT" "$arm"
echo "setup ${setup} s, total $(( $(date +%s) - start )) s"
if [ "$x86" == "$arm" ]; then
    echo "arm64: greedy output equals x86-64"
else
    echo "arm64: greedy output DIFFERS from x86-64" >&2
    diff <(echo "$x86") <(echo "$arm") >&2 || true
    exit 1
fi
