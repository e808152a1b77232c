#!/usr/bin/env bash
# A Python 3.11 base image for the serving Dockerfile, for machines that reach Debian's package
# mirror but no container registry (the Dockerfile's default python:3.11-slim needs a registry).
#
#   docker/base-image.sh [TAG]          default TAG: local/python:3.11-bookworm
#   DOCKER_BUILDKIT=0 docker build --build-arg BASE_IMAGE=local/python:3.11-bookworm -t imgcls:cpu .
#
# What it does, each step only when needed: installs Debian's docker.io and debootstrap, starts a
# Docker daemon (and prints DOCKERD_PID=<pid> so the caller can stop the one it started), then
# debootstraps a minimal Debian bookworm with python3 + python3-venv from the machine's own apt
# mirror and imports it as TAG. An existing TAG is kept. Needs root.
set -euo pipefail
TAG=${1:-local/python:3.11-bookworm}
SUITE=bookworm
export DEBIAN_FRONTEND=noninteractive

log() { printf 'base-image: %s\n' "$*" >&2; }

need_packages() {
  command -v dockerd >/dev/null && command -v debootstrap >/dev/null && return 0
  log "installing docker.io and debootstrap from Debian"
  apt-get update -q >/dev/null
  apt-get install -y -q docker.io debootstrap >/dev/null
}

need_daemon() {
  docker info >/dev/null 2>&1 && return 0
  log "starting a Docker daemon"
  dockerd >/tmp/imgcls-dockerd.log 2>&1 &
  echo "DOCKERD_PID=$!"
  for _ in $(seq 1 120); do docker info >/dev/null 2>&1 && return 0; sleep 0.5; done
  log "the Docker daemon did not start; see /tmp/imgcls-dockerd.log"
  return 1
}

apt_mirror() {
  # deb822 sources first (Debian 12+), then the classic one-line format
  local mirror
  mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  [ -n "$mirror" ] || mirror=$(awk '$1=="deb"{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  echo "${mirror:-http://deb.debian.org/debian}"
}

build_rootfs() {
  local root=$1 mirror
  mirror=$(apt_mirror)
  log "debootstrap $SUITE from $mirror (a few minutes)"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates "$SUITE" "$root" "$mirror" >/dev/null
  # the same certificate authorities as this host, so pip inside a build trusts the same index
  cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/" 2>/dev/null || true
  chroot "$root" update-ca-certificates >/dev/null 2>&1 || true
  chroot "$root" apt-get clean
  rm -rf "$root"/var/lib/apt/lists/*
  : >"$root/etc/resolv.conf"
  echo localhost >"$root/etc/hostname"
}

need_packages
need_daemon
if docker image inspect "$TAG" >/dev/null 2>&1; then
  log "$TAG already exists"
  exit 0
fi
ROOTFS=$(mktemp -d)
trap 'rm -rf "$ROOTFS"' EXIT
build_rootfs "$ROOTFS"
tar -C "$ROOTFS" -c . | docker import -c 'ENV LANG=C.UTF-8 PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
  -c 'CMD ["bash"]' - "$TAG" >/dev/null
log "built $TAG"
