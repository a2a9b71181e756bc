#!/usr/bin/env bash
# What `make test` runs before pytest, so that the browser tests (tests/browser.py) run rather than hide:
#
#   bash tests/install_chromium.sh
#
#   chromium on PATH                  nothing to do
#   PREFLOOP_SKIP_BROWSER_TESTS=1     nothing to do: pytest skips the browser tests and its summary names this variable
#   root, with apt-get                apt-get install chromium (Debian's package)
#   otherwise                         one line saying how to install it, exit 1
set -uo pipefail

if [[ "${PREFLOOP_SKIP_BROWSER_TESTS:-0}" != 0 ]]; then
    exit 0
fi
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
how="install it (sudo apt-get install chromium) or run without the browser tests: PREFLOOP_SKIP_BROWSER_TESTS=1 make test"
if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    echo "make test: chromium is not installed and cannot be installed here (needs root and apt-get); $how" >&2
    exit 1
fi
echo "make test: installing chromium for the browser tests (apt-get install chromium)"
export DEBIAN_FRONTEND=noninteractive
if ! log=$( { apt-get update -qq && apt-get install -y -qq chromium; } 2>&1 ) || ! command -v chromium >/dev/null 2>&1; then
    echo "make test: apt-get install chromium failed (${log##*$'\n'}); $how" >&2
    exit 1
fi
