#!/usr/bin/env bash
# Installs the Debian packages mapo builds and tests with (skips what is installed).
set -euo pipefail
pkgs=(gcc make libopenblas-openmp-dev libjansson-dev libcmocka-dev libpng-dev
      libjpeg62-turbo-dev libdnnl-dev libsnappy-dev libzstd-dev zlib1g-dev dataset-fashion-mnist)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
