#!/usr/bin/env bash
# An arm64 Python with ONNX Runtime's aarch64 build, run under qemu-user (qemu-aarch64 -L ROOT):
# Debian's arm64 packages of python3.11 and the C/C++ runtime unpacked into a folder (no chroot, no
# debootstrap second stage) and PyPI's manylinux aarch64 wheels of onnxruntime + numpy unpacked into
# ROOT/site (put it on PYTHONPATH). Built once per version set under the imgcls cache folder and
# re-used; the folder it prints is complete (.complete written last).
#
#   benchmarks/arm64_rootfs.sh ORT_VERSION NUMPY_VERSION [PYTHON]   -> prints the root folder
#
# PYTHON (default python3) runs `pip download`, first, so a missing wheel fails fast. apt runs with a
# private state folder (its own package lists for arm64), so neither root nor `dpkg --add-architecture`
# is needed, only Debian's and PyPI's package indexes. Exit 3 when this machine cannot build it (no apt-get, an index unreachable), with
# the reason on stderr; 1 on anything else.
#
# ROOT/views/<qemu cpu>/ (neoverse-n1: dot product; cortex-a72: none) is the folder to pass to -L:
# qemu-user 7.2 passes the host's x86 /proc/cpuinfo through, and the CPU detection ONNX Runtime links
# (pytorch/cpuinfo) crashes on it (SIGSEGV at import). qemu looks up absolute paths in the -L folder
# first, so the view's proc/cpuinfo is what the guest reads; ORT picks its kernels from it (a
# cortex-a72 told it has asimddp dies on SIGILL), so each view describes its CPU model.
set -euo pipefail
ORT=${1:?usage: arm64_rootfs.sh ORT_VERSION NUMPY_VERSION [PYTHON]}
NUMPY=${2:?usage: arm64_rootfs.sh ORT_VERSION NUMPY_VERSION [PYTHON]}
PYTHON=${3:-python3}
CACHE=${IMGCLS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/imgcls}
ROOT="$CACHE/arm64-rootfs/py3.11-onnxruntime$ORT-numpy$NUMPY"
PACKAGES="python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libc6 libstdc++6 libgcc-s1 zlib1g
          libffi8 libexpat1 libssl3 libbz2-1.0 liblzma5 libcrypt1"
say() { printf 'arm64_rootfs: %s\n' "$*" >&2; }
cannot() { say "$*"; exit 3; }

if [ -f "$ROOT/.complete" ]; then echo "$ROOT"; exit 0; fi
command -v apt-get >/dev/null || cannot "no apt-get on this machine (needs Debian's arm64 packages)"
command -v dpkg-deb >/dev/null || cannot "no dpkg-deb on this machine"
mkdir -p "$CACHE/arm64-rootfs"
WORK=$(mktemp -d "$CACHE/arm64-rootfs/.build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/lists/partial" "$WORK/cache/archives/partial" "$WORK/debs" "$WORK/wheels" "$WORK/root/site"

say "PyPI aarch64 wheels: onnxruntime==$ORT numpy==$NUMPY"
"$PYTHON" -m pip download -q --disable-pip-version-check -d "$WORK/wheels" --only-binary=:all: \
    --implementation cp --python-version 3.11 --platform manylinux_2_28_aarch64 \
    --platform manylinux_2_27_aarch64 --platform manylinux2014_aarch64 \
    "onnxruntime==$ORT" "numpy==$NUMPY" >"$WORK/pip.log" 2>&1 ||
  cannot "pip download of the aarch64 wheels failed: $(grep -v '^WARNING' "$WORK/pip.log" | tail -2 | tr '\n' ' ')"
for wheel in "$WORK"/wheels/*.whl; do "$PYTHON" -m zipfile -e "$wheel" "$WORK/root/site"; done

APT=(apt-get -o APT::Architecture=arm64 -o "APT::Architectures::=arm64" -o "Dir::State::Lists=$WORK/lists"
     -o "Dir::Cache=$WORK/cache" -o Dir::State::status=/dev/null -o Debug::NoLocking=1
     -o "APT::Sandbox::User=$(id -un)")
say "Debian arm64 package lists (private apt state in $WORK)"
"${APT[@]}" -qq update >"$WORK/apt.log" 2>&1 || cannot "apt-get update for arm64 failed: $(tail -2 "$WORK/apt.log" | tr '\n' ' ')"
# shellcheck disable=SC2086  # the package list is meant to split
(cd "$WORK/debs" && "${APT[@]}" -qq download $(printf '%s:arm64 ' $PACKAGES)) >>"$WORK/apt.log" 2>&1 ||
  cannot "apt-get download of the arm64 packages failed: $(tail -2 "$WORK/apt.log" | tr '\n' ' ')"
for deb in "$WORK"/debs/*.deb; do dpkg-deb -x "$deb" "$WORK/root"; done

# One view per emulated CPU model (the -L folder): its own proc/cpuinfo, the rest linked to the root.
cpu_view() {  # NAME PART VARIANT FEATURES
  local view="$WORK/root/views/$1" entry cpu
  mkdir -p "$view/proc"
  for entry in etc lib usr; do ln -s "../../$entry" "$view/$entry"; done
  for cpu in 0 1; do
    printf 'processor\t: %s\nBogoMIPS\t: 50.00\nFeatures\t: %s\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: %s\nCPU part\t: %s\nCPU revision\t: 1\n\n' \
      "$cpu" "$4" "$3" "$2"
  done >"$view/proc/cpuinfo"
}
cpu_view neoverse-n1 0xd0c 0x3 "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs"
cpu_view cortex-a72 0xd08 0x0 "fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid"
printf 'onnxruntime %s\nnumpy %s\npackages %s\n' "$ORT" "$NUMPY" "$(ls "$WORK/debs" | tr '\n' ' ')" >"$WORK/root/.complete"
mv -T "$WORK/root" "$ROOT" 2>/dev/null || [ -f "$ROOT/.complete" ] ||  # a concurrent build may have won
  { say "$ROOT exists but is incomplete (not written by this script?): remove it and run again"; exit 1; }
say "ready: $ROOT"
echo "$ROOT"
