#!/bin/sh
# The systemd unit passes `systemd-analyze verify` (pointed at the moed
# just built). Skips (77) where systemd-analyze is not installed.
set -u
bin=${MOE_BIN:-build/bin}
command -v systemd-analyze >/dev/null || { echo "SKIP: no systemd-analyze"; exit 77; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sed "s|/usr/local/sbin/moed|$(cd "$bin" && pwd)/moed|" systemd/moed.service > "$tmp/moed.service"
if out=$(systemd-analyze verify "$tmp/moed.service" 2>&1) && [ -z "$out" ]; then
	echo "ok: systemd-analyze verify found nothing"
else
	echo "FAIL: systemd-analyze verify:"; echo "$out"; exit 1
fi
