#!/usr/bin/env bash
# One-command set-up for development and CI: system packages, a venv in .venv, S2I with
# its CPU ONNX Runtime ([cpu]), test, training, microphone and Ray cluster extras, and the
# web page's pinned JavaScript dependency (onnxruntime-web, package-lock.json) via npm ci.
# CPU-only: torch is pinned to the CPU build.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(portaudio19-dev pulseaudio pulseaudio-utils libasound2-plugins chromium chromium-driver)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)   # any Node.js with npm will do
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "installing system packages: ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q torch==2.13.0 -e '.[cpu,dev,mic,cluster]'
npm ci --no-audit --no-fund --ignore-scripts --loglevel=error   # node_modules/onnxruntime-web
