#!/usr/bin/env bash
# A screenshot of a case report as a browser shows it, to look at a report without opening
# it or to check that it renders (docs/sample_report/ keeps one):
#
#   scripts/report-screenshot.sh REPORT.html OUT.png [WIDTHxHEIGHT]
#
# Headless Chromium, installed from Debian's packages (apt-get) when missing: for a
# developer's machine, never for CI. The window is 1280 x 2400 pixels unless given.
set -euo pipefail

if [ $# -lt 2 ] || [ $# -gt 3 ]; then
  echo "usage: $0 REPORT.html OUT.png [WIDTHxHEIGHT]" >&2
  exit 2
fi
report="$(realpath "$1")"
out="$(realpath -m "$2")"
size="${3:-1280x2400}"
[ -f "$report" ] || { echo "$0: $1: no such file" >&2; exit 1; }

browser="$(command -v chromium || command -v chromium-browser || true)"
if [ -z "$browser" ]; then
  echo "installing chromium (apt-get)" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium >/dev/null
  browser="$(command -v chromium)"
fi

# --virtual-time-budget: the page has no script, but give decoding the inline PNGs a moment.
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars \
  --virtual-time-budget=2000 --window-size="${size/x/,}" --screenshot="$out" "file://$report" 2>/dev/null
[ -s "$out" ] || { echo "$0: chromium wrote no $out" >&2; exit 1; }
echo "wrote $out"
