#!/usr/bin/env bash
# Install the Debian packages the test suite drives for real (QGIS for the real-client check).
# Idempotent and quiet when everything is present; skipped without root or apt.
set -euo pipefail
need=()
/usr/bin/python3 -c "import qgis.core" >/dev/null 2>&1 || need+=(python3-qgis qgis-providers)
command -v xvfb-run >/dev/null 2>&1 || need+=(xvfb xauth)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "system-deps: cannot install ${need[*]} (needs root and apt-get); tests that need them will skip" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
