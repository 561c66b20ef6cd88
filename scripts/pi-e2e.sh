#!/usr/bin/env bash
# End-to-end check of the Raspberry Pi path without a Pi: a Debian bookworm arm64 userland (what
# 64-bit Raspberry Pi OS is) run under qemu-user, the project's wheel installed with the `pi`
# extra offline in a venv (no torch), `predict` and `audit --reference` on .tflite files built on
# this host, and the results compared with the host's.
#
#   sudo bash scripts/pi-e2e.sh              # the whole run (root: apt-get, debootstrap, chroot)
#   bash scripts/pi-e2e.sh --dry-run         # host half only: wheel, aarch64 wheels, artifacts,
#                                            # host reference runs; no root, no emulation
#   bash scripts/pi-e2e.sh --check           # syntax + tool check only (what CI runs: seconds)
#   sudo bash scripts/pi-e2e.sh --pte        # also the cost of running a .pte on a Pi: ExecuTorch
#                                            # and torch (aarch64, resolved inside the root, so
#                                            # needs network there) in their own venv, its size,
#                                            # install time and a .pte predict against the host's
#                                            # (PyPI's aarch64 torch is a CUDA build: ~2.9 GB of
#                                            # wheels, cached; ~8 min more per run)
#
# Caches (never in the repo): $EDGE_CONVNEXT_PI_CACHE (default /var/cache/edge-convnext-pi)
# holds the finished root (debootstrap: 4-7 min cold), the aarch64 wheels and the full-size
# ConvNeXt-T int8 .tflite (its export takes ~4.5 min on 2 cores; EDGE_CONVNEXT_PI_REBUILD=1
# rebuilds it). Each run's outputs go to $CACHE/run/.
# Emulation shows correctness, not speed: qemu's timings say nothing about a Pi's.
set -euo pipefail
{ # the whole script is parsed before it runs: editing it mid-run cannot derail a running check

MODE=full
PTE=0
for arg in "$@"; do
    case "$arg" in
    --dry-run) MODE=host ;;
    --check) MODE=check ;;
    --pte) PTE=1 ;;
    *) echo "usage: $0 [--dry-run | --check] [--pte]" >&2; exit 2 ;;
    esac
done

REPO="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${EDGE_CONVNEXT_PI_CACHE:-/var/cache/edge-convnext-pi}"
ROOT="$CACHE/root-bookworm-arm64"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
RUN="$CACHE/run"
PHOTOS="$REPO/tests/fixtures/photos"
PY="${PYTHON:-python}"
PLATFORM=(--platform manylinux_2_36_aarch64 --platform manylinux_2_35_aarch64
    --platform manylinux_2_34_aarch64 --platform manylinux_2_28_aarch64
    --platform manylinux_2_27_aarch64 --platform manylinux_2_17_aarch64
    --platform manylinux2014_aarch64 --python-version 3.11 --implementation cp)
# The `pi` extra, plus the tflite-runtime alternative (2.14 needs numpy < 2), for a second venv.
ALT_RUNTIME=(tflite-runtime==2.14.0 "numpy<2")

say() { printf '\n== %s\n' "$*"; }
stamp() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(stamp)" 'BEGIN { printf "%.1f", b - a }'; }
quiet() { # run a host command, its output to $RUN/host.log; shown only if it fails
    "$@" >>"$RUN/host.log" 2>&1 || { tail -30 "$RUN/host.log" >&2; return 1; }
}

if [[ $MODE == check ]]; then
    bash -n "$0"
    "$PY" -c "import edge_convnext.predict, edge_convnext.cli" # the host half's imports
    "$PY" - "$0" <<'PY' # the embedded Python compiles (it otherwise runs only after minutes)
import re
import sys

blocks = re.findall(r"<<'PY'\n(.*?)\nPY\n", open(sys.argv[1]).read(), re.S)
for number, block in enumerate(blocks, 1):
    compile(block, f"{sys.argv[1]} (embedded Python {number})", "exec")
print(f"{len(blocks)} embedded Python blocks compile")
PY
    echo "pi-e2e.sh: syntax ok; run 'sudo bash $0' for the emulated aarch64 check"
    exit 0
fi

T0=$(stamp)
mkdir -p "$CACHE" "$RUN"
rm -rf "${RUN:?}"/*

# --- host half ----------------------------------------------------------------------------------
say "host: the project's wheel"
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$RUN/wheels" "$REPO"
WHEEL="$(ls "$RUN"/wheels/edge_convnext-*.whl)"
echo "$WHEEL"
# The code before the Pi CLI work, for the start-up comparison (skipped outside a git checkout).
BEFORE="${EDGE_CONVNEXT_PI_BEFORE:-c5f4b71}"
mkdir -p "$RUN/before-src"
if git -C "$REPO" archive "$BEFORE" 2>/dev/null | tar -x -C "$RUN/before-src" 2>/dev/null; then
    quiet "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$RUN/wheels-before" "$RUN/before-src"
    echo "before ($BEFORE): $(ls "$RUN"/wheels-before/*.whl)"
fi

say "host: aarch64 wheels for the pi extra (pip download, cached)"
T=$(stamp)
mkdir -p "$CACHE/wheels-aarch64" "$CACHE/wheels-aarch64-alt"
"$PY" -m pip download -q --only-binary=:all: "${PLATFORM[@]}" -d "$CACHE/wheels-aarch64" \
    "$WHEEL[pi]" pip
"$PY" -m pip download -q --only-binary=:all: "${PLATFORM[@]}" -d "$CACHE/wheels-aarch64-alt" \
    "${ALT_RUNTIME[@]}" "pillow>=10" || echo "tflite-runtime wheels unavailable: skipping that venv"
rm -f "$CACHE"/wheels-aarch64/edge_convnext-*.whl
du -sh "$CACHE/wheels-aarch64"
echo "download: $(since "$T") s"

say "host: artifacts (tiny ConvNeXt fp32 + w8a8 each run; full-size ConvNeXt-T w8a8 cached)"
T=$(stamp)
FULL="$CACHE/full" # the full-size file is cached: its host and emulated runs are compared anew
[[ ${EDGE_CONVNEXT_PI_REBUILD:-0} == 1 ]] && rm -rf "$FULL"
# An imagefolder audit set (wnid folders): the two photos + two textured images.
mkdir -p "$RUN/host/art" "$RUN/host/val"/{n02123159,n03063599,n01440764,n01443537}
cp "$PHOTOS/chelsea.jpg" "$RUN/host/val/n02123159/"
cp "$PHOTOS/coffee.jpg" "$RUN/host/val/n03063599/"
"$PY" - "$RUN/host" "$FULL" <<'PY'
import sys
from pathlib import Path

from edge_convnext.testing import nontrivial_model

import numpy as np
from PIL import Image

host, full = Path(sys.argv[1]), Path(sys.argv[2])


def textured(seed: int) -> Image.Image:  # photo-like: gradients and noise, seeded
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:240, 0:320] / 320
    channels = [
        np.sin(rng.uniform(1, 8) * x * 6 + rng.uniform(0, 6)) * np.cos(rng.uniform(1, 8) * y * 6)
        for _ in range(3)
    ]
    pixels = np.stack(channels, -1) * 90 + 128 + rng.normal(0, 12, (240, 320, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


# Calibration images are never scored, so they are not the photos predict and audit use.
for root in (host / "calib", full / "calib"):
    root.mkdir(parents=True, exist_ok=True)
    for seed in range(8):
        textured(100 + seed).save(root / f"calib_{seed}.jpg")
for seed, wnid in enumerate(("n01440764", "n01443537")):  # two more beside the two photos
    textured(seed).save(host / "val" / wnid / f"textured_{seed}.jpg")
tiny = {"depths": [1, 1, 2, 1], "hidden_sizes": [16, 32, 64, 128]}
nontrivial_model("convnext-tiny-224", 0, **tiny).hf_model.save_pretrained(host / "tiny")
if not (full / "ckpt").exists():
    nontrivial_model("convnext-tiny-224", 0).hf_model.save_pretrained(full / "ckpt")
PY
export TF_CPP_MIN_LOG_LEVEL=2
for recipe in fp32 w8a8; do
    quiet edge-convnext export "$RUN/host/tiny" --target tflite --recipe "$recipe" \
        --calib "$RUN/host/calib" -o "$RUN/host/art" --no-progress
done
if [[ ! -f "$FULL/art/ckpt.w8a8.app.tflite" ]]; then
    quiet edge-convnext export "$FULL/ckpt" --target tflite --recipe w8a8 --calib "$FULL/calib" \
        -o "$FULL/art.partial" --no-progress
    mv "$FULL/art.partial" "$FULL/art"
fi
cp "$FULL"/art/ckpt.w8a8.app.tflite* "$RUN/host/art/"
ls -l "$RUN/host/art"
echo "artifacts: $(since "$T") s"

say "host: reference runs (predict --json; audit -> manifest.json + predictions.npz)"
cd "$RUN/host"
for a in tiny.fp32 tiny.w8a8; do
    edge-convnext predict "art/$a.app.tflite" val/ --json >"predict.$a.jsonl" 2>/dev/null
done
edge-convnext predict art/ckpt.w8a8.app.tflite val/n02123159/chelsea.jpg val/n03063599/coffee.jpg --json \
    >predict.ckpt.w8a8.jsonl 2>/dev/null
# fp32 PyTorch logits of the tiny checkpoint + both tiny files, as a reference for the Pi.
edge-convnext audit tiny art/tiny.fp32.app.tflite art/tiny.w8a8.app.tflite --data val \
    --out audit-host --no-progress >audit-host.txt 2>&1
# The same for the full-size checkpoint and its int8 file (4 images: ~1 min emulated per audit).
edge-convnext audit "$FULL/ckpt" art/ckpt.w8a8.app.tflite --data val \
    --out audit-host-full --no-progress >audit-host-full.txt 2>&1
ls audit-host audit-host-full
cd "$REPO"
if [[ $PTE == 1 ]]; then
    say "host: .pte files (tiny ConvNeXt fp32 + w8a8) and the host's predictions"
    T=$(stamp)
    for recipe in fp32 w8a8; do
        quiet edge-convnext export "$RUN/host/tiny" --target executorch --recipe "$recipe" \
            --calib "$RUN/host/calib" -o "$RUN/host/art" --no-progress
        (cd "$RUN/host" && edge-convnext predict "art/tiny.$recipe.app.pte" val/ --json \
            >"predict.tiny.$recipe.pte.jsonl" 2>>"$RUN/host.log")
    done
    # What a .pte needs beside the pi extra: the project's own pins (pyproject.toml).
    PTE_PINS="$("$PY" - "$REPO/pyproject.toml" <<'PY'
import sys
import tomllib

extras = tomllib.load(open(sys.argv[1], "rb"))["project"]["optional-dependencies"]
pins = [r for r in extras["executorch"] + extras["torch"] if r.split("==")[0] in ("executorch", "torch")]
print(" ".join(pins))
PY
)"
    echo ".pte export + host predict: $(since "$T") s; a Pi needs [pi] + $PTE_PINS"
fi
echo "host half: $(since "$T0") s"
if [[ $MODE == host ]]; then
    echo "dry run: host half done; outputs in $RUN"
    exit 0
fi

# --- emulated aarch64 half ---------------------------------------------------------------------
[[ $(id -u) == 0 ]] || { echo "the emulated half needs root (chroot, mount)" >&2; exit 2; }
say "emulation: qemu-user-static, binfmt, debootstrap"
T=$(stamp)
if ! command -v qemu-aarch64-static >/dev/null || ! command -v debootstrap >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static binfmt-support debootstrap
fi
[[ -e /proc/sys/fs/binfmt_misc/register ]] ||
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
grep -q enabled /proc/sys/fs/binfmt_misc/qemu-aarch64
if [[ ! -x "$ROOT/usr/bin/python3" ]]; then
    rm -rf "$ROOT.partial"
    debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv bookworm \
        "$ROOT.partial" "$MIRROR"
    mv "$ROOT.partial" "$ROOT"
fi
echo "root ready: $(since "$T") s"

PI="$ROOT/opt/pi"
rm -rf "$PI" && mkdir -p "$PI"
cp -r "$CACHE/wheels-aarch64" "$PI/wheels"
cp -r "$CACHE/wheels-aarch64-alt" "$PI/wheels-alt"
cp "$WHEEL" "$PI/wheels/"
cp -r "$RUN/host/art" "$RUN/host/val" "$PI/"
cp "$REPO/bench/startup.py" "$PI/"
mkdir -p "$PI/host" "$PI/host-full"
cp "$RUN"/host/audit-host/{manifest.json,predictions.npz} "$PI/host/"
cp "$RUN"/host/audit-host-full/{manifest.json,predictions.npz} "$PI/host-full/"
# A Pi 5's CPU as LiteRT/XNNPACK's cpuinfo reads it: /proc/cpuinfo (4 Cortex-A76 cores) and the
# /sys/devices/system/cpu lists. The host's x86 /proc/cpuinfo can crash them; without the /sys
# lists cpuinfo fails to initialise and LiteRT silently skips XNNPACK, the delegate a Pi runs.
CPU="$CACHE/cpu-pi5"
rm -rf "$CPU" && mkdir -p "$CPU/sys/devices/system/cpu"
for n in 0 1 2 3; do
    printf 'processor\t: %s\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 %s\n' \
        "$n" "atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp"
    printf 'CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x4\nCPU part\t: 0xd0b\n'
    printf 'CPU revision\t: 1\n\n'
    cpu="$CPU/sys/devices/system/cpu/cpu$n"
    mkdir -p "$cpu/cpufreq" "$cpu/topology" "$cpu/regs/identification"
    echo 0x00000000414fd0b1 >"$cpu/regs/identification/midr_el1" # Cortex-A76 r4p1 (torch reads it)
    echo 2400000 >"$cpu/cpufreq/cpuinfo_max_freq"
    echo 0 >"$cpu/topology/physical_package_id"
    echo 0-3 >"$cpu/topology/core_siblings_list"
    echo "$n" >"$cpu/topology/thread_siblings_list"
done >"$CPU/cpuinfo"
for list in possible present online; do echo 0-3 >"$CPU/sys/devices/system/cpu/$list"; done
cleanup() {
    for mounted in proc/cpuinfo proc sys dev; do umount "$ROOT/$mounted" 2>/dev/null || true; done
}
trap cleanup EXIT
mount -t proc proc "$ROOT/proc"
mount --bind "$CPU/cpuinfo" "$ROOT/proc/cpuinfo"
mount --bind "$CPU/sys" "$ROOT/sys" # only the fake CPU lists: nothing else of the host's /sys
mount --bind /dev "$ROOT/dev"
CHROOT="$(command -v chroot)"
pi() { # run a command in the arm64 root, with nothing of the host's environment
    env -i PATH=/opt/pi/venv/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 QEMU_CPU=cortex-a76 \
        TF_CPP_MIN_LOG_LEVEL=2 "$CHROOT" "$ROOT" /bin/bash -c "cd /opt/pi && $1"
}
pi 'uname -m; python3 --version; grep PRETTY /etc/os-release'

say "pi: python3 -m venv + offline pip install edge-convnext[pi]"
T=$(stamp)
pi 'python3 -m venv venv && pip install -q --no-index --find-links wheels pip &&
    pip install -q --no-index --find-links wheels "$(ls wheels/edge_convnext-*.whl)[pi]"'
INSTALL_S=$(since "$T")
pi 'pip list --format=freeze' | tee "$RUN/pi-pip-list.txt"
pi 'du -sh venv | cut -f1' | sed 's/^/venv size: /'
pi '! python -c "import torch" 2>/dev/null && ! pip show torch transformers coremltools >/dev/null 2>&1' &&
    echo "no torch, transformers or coremltools: ok"
echo "install: $INSTALL_S s"

say "pi: start-up (emulated wall time: qemu's, not a Pi's)"
BEFORE_EXE=()
if compgen -G "$RUN/wheels-before/*.whl" >/dev/null; then
    cp -r "$RUN/wheels-before" "$PI/"
    pi 'python3 -m venv venv-before && venv-before/bin/pip install -q --no-index --find-links wheels pip &&
        venv-before/bin/pip install -q --no-index --find-links wheels "$(ls wheels-before/*.whl)[pi]"'
    BEFORE_EXE=(--before-exe venv-before/bin/edge-convnext)
fi
pi "python startup.py --installed ${BEFORE_EXE[*]} --model art/tiny.fp32.app.tflite \
    --photo val/n02123159/chelsea.jpg --runs ${EDGE_CONVNEXT_PI_STARTUP_RUNS:-5} --json startup.json"
cp "$PI/startup.json" "$RUN/pi-startup.json"

say "pi: predict (JSON lines) on the same files and photos as the host"
T=$(stamp)
for a in tiny.fp32 tiny.w8a8; do
    pi "edge-convnext predict art/$a.app.tflite val/ --json" >"$RUN/pi.predict.$a.jsonl"
done
T1=$(stamp) # full-size ConvNeXt-T int8: ~10-17 s per emulated invoke
pi 'edge-convnext predict art/ckpt.w8a8.app.tflite val/n02123159/chelsea.jpg val/n03063599/coffee.jpg --json' \
    >"$RUN/pi.predict.ckpt.w8a8.jsonl"
echo "full-size int8, 2 photos: $(since "$T1") s"
pi 'TF_CPP_MIN_LOG_LEVEL=0 edge-convnext predict art/tiny.fp32.app.tflite val/n02123159/chelsea.jpg \
    >/dev/null' 2>&1 | grep -E 'runtime|XNNPACK' | tee "$RUN/pi-delegate.txt"
grep -q 'XNNPACK delegate' "$RUN/pi-delegate.txt" ||
    { echo "LiteRT did not apply XNNPACK: this is not what a Pi runs" >&2; exit 1; }
pi 'ls val/*/*.jpg | edge-convnext predict art/tiny.fp32.app.tflite - --json --top-k 1'
pi 'edge-convnext predict art/tiny.fp32.app.tflite --bench 5 --warmup 1'
echo "predict: $(since "$T") s"

say "pi: usage errors without torch (expect exit 2, no traceback)"
set +e
pi 'edge-convnext predict art/tiny.fp32.app.tflit val/n02123159/chelsea.jpg'; echo "typo'd suffix: exit $?"
pi 'edge-convnext predict art/missing.tflite val/n02123159/chelsea.jpg'; echo "missing .tflite: exit $?"
set -e

say "pi: inspect + on-device audit against the host's references"
T=$(stamp)
pi 'edge-convnext inspect art/tiny.w8a8.app.tflite --json >/dev/null && echo inspect ok'
pi 'edge-convnext audit art/tiny.fp32.app.tflite art/tiny.w8a8.app.tflite --data val \
    --manifest host/manifest.json --reference host/predictions.npz --out audit-vs-fp32 --no-progress' |
    tee "$RUN/pi-audit-vs-fp32.txt"
pi 'edge-convnext audit art/tiny.w8a8.app.tflite --data val --manifest host/manifest.json \
    --reference "host/predictions.npz#art/tiny.w8a8.app.tflite" --out audit-vs-int8 --no-progress' |
    tee "$RUN/pi-audit-vs-int8.txt" || echo "audit against the host int8 run failed (see above)"
T1=$(stamp)
pi 'edge-convnext audit art/ckpt.w8a8.app.tflite --data val --manifest host-full/manifest.json \
    --reference host-full/predictions.npz --out audit-full-vs-fp32 --no-progress'
pi 'edge-convnext audit art/ckpt.w8a8.app.tflite --data val --manifest host-full/manifest.json \
    --reference "host-full/predictions.npz#art/ckpt.w8a8.app.tflite" --out audit-full-vs-int8 \
    --no-progress'
echo "full-size int8 audits, 4 images each: $(since "$T1") s"
cp -r "$PI"/audit-vs-* "$PI"/audit-full-vs-* "$RUN/"
echo "audit: $(since "$T") s"

ALT_OK=0
if compgen -G "$PI/wheels-alt/tflite_runtime-*.whl" >/dev/null; then
    say "pi: the alternative runtime, tflite-runtime 2.14 (numpy < 2), in its own venv"
    T=$(stamp)
    pi 'python3 -m venv venv-alt && venv-alt/bin/pip install -q --no-index --find-links wheels-alt \
        --find-links wheels tflite-runtime "numpy<2" pillow flatbuffers tqdm &&
        venv-alt/bin/pip install -q --no-index --no-deps wheels/edge_convnext-*.whl'
    pi 'venv-alt/bin/pip list --format=freeze' | grep -Ei '^(tflite|numpy|ai-edge|edge)' | tr '\n' ' '
    echo
    ALT_OK=1
    for a in tiny.fp32 tiny.w8a8; do
        pi "TF_CPP_MIN_LOG_LEVEL=0 venv-alt/bin/edge-convnext predict art/$a.app.tflite val/ --json" \
            >"$RUN/pi-alt.predict.$a.jsonl" 2>"$RUN/pi-alt.predict.$a.stderr" || ALT_OK=0
        echo "$a: $(grep -hE 'runtime|XNNPACK' "$RUN/pi-alt.predict.$a.stderr" | sort -u | tr '\n' ' ')"
    done
    grep -qh 'runtime tflite-runtime' "$RUN"/pi-alt.predict.*.stderr || ALT_OK=0
    grep -qh 'XNNPACK delegate' "$RUN"/pi-alt.predict.*.stderr || ALT_OK=0
    pi 'venv-alt/bin/edge-convnext audit art/tiny.fp32.app.tflite art/tiny.w8a8.app.tflite --data val \
        --manifest host/manifest.json --reference host/predictions.npz --out audit-alt-vs-fp32 \
        --no-progress' | tee "$RUN/pi-alt-audit-vs-fp32.txt" || ALT_OK=0
    cp -r "$PI"/audit-alt-vs-fp32 "$RUN/" 2>/dev/null || true
    echo "tflite-runtime venv: $(since "$T") s"
fi

if [[ $PTE == 1 ]]; then
    say "pi: what a .pte costs: [pi] + $PTE_PINS in their own venv"
    T=$(stamp)
    PTE_CACHE="$CACHE/wheels-aarch64-pte"
    pi 'python3 -m venv venv-pte && venv-pte/bin/pip install -q --no-index --find-links wheels pip'
    if [[ "$(cat "$PTE_CACHE/.pins" 2>/dev/null)" != "$PTE_PINS" ]]; then
        # Resolved inside the root, as `pip install` on a Pi would: pip evaluates executorch's
        # and torch's markers for aarch64 there, which `pip download --platform` here does not.
        # --prefer-binary: hydra-core's antlr4-python3-runtime 4.9 is an sdist only.
        [[ -s "$ROOT/etc/resolv.conf" ]] || cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
        # The host's CA bundle, so a TLS-inspecting proxy the host trusts is trusted in there.
        cp -L "${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}" "$PI/host-ca.crt"
        pi "PIP_CERT=host-ca.crt venv-pte/bin/pip download -q --prefer-binary -d wheels-pte \
            --find-links wheels \"\$(ls wheels/edge_convnext-*.whl)[pi]\" $PTE_PINS"
        rm -rf "$PTE_CACHE" && mkdir -p "$PTE_CACHE"
        find "$PI/wheels-pte" -maxdepth 1 -type f ! -name 'edge_convnext-*' -exec cp {} "$PTE_CACHE/" \;
        echo "$PTE_PINS" >"$PTE_CACHE/.pins"
        echo "download (inside the root; cached in $PTE_CACHE): $(since "$T") s"
    else
        cp -r "$PTE_CACHE" "$PI/wheels-pte"
    fi
    T=$(stamp)
    pi "venv-pte/bin/pip install -q --no-index --find-links wheels --find-links wheels-pte \
        \"\$(ls wheels/edge_convnext-*.whl)[pi]\" $PTE_PINS"
    echo "offline install: $(since "$T") s"
    pi 'venv-pte/bin/pip list --format=freeze' >"$RUN/pi-pte-pip-list.txt"
    echo "$(wc -l <"$RUN/pi-pte-pip-list.txt") packages ($(wc -l <"$RUN/pi-pip-list.txt") with [pi] alone)"
    (
        cd "$PI/wheels-pte"
        ls torch-*.whl executorch-*.whl | xargs stat -c '%n %s' | awk '{ printf "%s %.1f MB\n", $1, $2 / 1e6 }'
        ls | grep -vxFf <(ls ../wheels) | xargs stat -c %s |
            awk '{ t += $1 } END { printf "wheels beside the pi extra: %.1f MB\n", t / 1e6 }'
        cd "$PI" && du -sm venv venv-pte && du -sm venv-pte/lib/python3.11/site-packages/* | sort -n | tail -6
    )
    T=$(stamp)
    pi 'venv-pte/bin/python -c "import torch, executorch.runtime"'
    echo "import torch + executorch.runtime (emulated): $(since "$T") s"
    for recipe in fp32 w8a8; do
        T=$(stamp)
        pi "venv-pte/bin/edge-convnext predict art/tiny.$recipe.app.pte val/ --json" \
            >"$RUN/pi.predict.tiny.$recipe.pte.jsonl"
        echo "predict tiny.$recipe.app.pte, 4 images (emulated): $(since "$T") s"
    done
fi

say "compare with the host"
"$PY" - "$RUN" "$ALT_OK" <<'PY'
import json
import sys
from pathlib import Path

run, alt_ok = Path(sys.argv[1]), sys.argv[2] == "1"


def rows(path):
    return {r["image"].split("/")[-1]: r for r in map(json.loads, path.read_text().splitlines())}


def compare(reference, other):
    """Top-1 and top-5 order agreement and the worst score difference over shared classes."""
    same_top1 = same_top5 = 0
    worst = 0.0
    for image, h in reference.items():
        p = other[image]
        hi = [t["index"] for t in h["top_k"]]
        pii = [t["index"] for t in p["top_k"]]
        same_top1 += hi[0] == pii[0]
        same_top5 += hi == pii
        hs = {t["index"]: t["score"] for t in h["top_k"]}
        ps = {t["index"]: t["score"] for t in p["top_k"]}
        worst = max([worst] + [abs(hs[i] - ps[i]) for i in hs if i in ps])
    return {
        "photos": len(reference),
        "top1_same": same_top1,
        "top5_order_same": same_top5,
        "max_abs_score_diff": worst,
    }


summary = {}
for name in ("tiny.fp32", "tiny.w8a8", "ckpt.w8a8"):
    summary[name] = compare(rows(run / f"host/predict.{name}.jsonl"), rows(run / f"pi.predict.{name}.jsonl"))
    print(f"{name}, pi (ai-edge-litert) vs host: {summary[name]}")
for name in ("tiny.fp32.pte", "tiny.w8a8.pte"):
    if (run / f"pi.predict.{name}.jsonl").exists():
        summary[name] = compare(rows(run / f"host/predict.{name}.jsonl"), rows(run / f"pi.predict.{name}.jsonl"))
        print(f"{name}, pi (ExecuTorch) vs host: {summary[name]}")
for name in ("tiny.fp32", "tiny.w8a8"):
    alt = run / f"pi-alt.predict.{name}.jsonl"
    if alt.exists() and alt.stat().st_size:
        for against, path in (("host", f"host/predict.{name}.jsonl"), ("pi ai-edge-litert", f"pi.predict.{name}.jsonl")):
            key = f"{name} on tflite-runtime vs {against}"
            summary[key] = compare(rows(run / path), rows(alt))
            print(f"{key}: {summary[key]}")
audits = ("host/audit-host", "audit-vs-fp32", "audit-vs-int8", "audit-alt-vs-fp32")
for audit in audits + ("host/audit-host-full", "audit-full-vs-fp32", "audit-full-vs-int8"):
    report = run / audit / "report.json"
    if report.exists():
        for row in json.loads(report.read_text())["artifacts"]:
            if row["cosine_mean"] is not None:
                key = f"{audit}: {row['artifact']}"
                summary[key] = {k: row[k] for k in ("n", "agreement_top1", "cosine_mean", "snr_db")}
                print(f"{key}: {summary[key]}")
(run / "summary.json").write_text(json.dumps(summary, indent=2))
fp32 = summary["tiny.fp32"]
ok = fp32["top5_order_same"] == fp32["photos"] and fp32["max_abs_score_diff"] <= 1e-6
print("fp32 top-5 within 1e-6 of the host:", "yes" if ok else "NO")
alt = summary.get("tiny.fp32 on tflite-runtime vs host")
if alt is not None:
    alt_same = alt["top5_order_same"] == alt["photos"] and alt["max_abs_score_diff"] <= 1e-6
    print("tflite-runtime ran, said so, audited:", "yes" if alt_ok else "NO")
    print("tflite-runtime fp32 top-5 within 1e-6 of the host:", "yes" if alt_same else "NO")
    ok = ok and alt_ok and alt_same
pte = summary.get("tiny.fp32.pte")
if pte is not None:
    pte_same = pte["top5_order_same"] == pte["photos"] and pte["max_abs_score_diff"] <= 1e-6
    print(".pte fp32 top-5 within 1e-6 of the host:", "yes" if pte_same else "NO")
    ok = ok and pte_same
sys.exit(0 if ok else 1)
PY
echo "run: $(since "$T0") s in all; outputs in $RUN"
exit
}
