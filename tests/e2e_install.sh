#!/bin/sh
# make install into a DESTDIR, then build and run a small program against
# the installed moeclient.pc, as an application would. In a sanitizer
# build ($SAN) the library needs the program built with the same runtime.
set -u
O=${O:-build}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
make -s O="$O" install DESTDIR="$tmp/root" PREFIX=/usr/local > "$tmp/log" 2>&1 ||
	{ echo "FAIL: make install"; cat "$tmp/log"; exit 1; }
for f in usr/local/sbin/moed usr/local/bin/moectl usr/local/bin/moe-gen \
	usr/local/lib/libmoeclient.so.1 usr/local/include/moe/moeclient.h \
	usr/local/lib/pkgconfig/moeclient.pc etc/moed/moed.conf.example; do
	[ -e "$tmp/root/$f" ] || { echo "FAIL: $f not installed"; exit 1; }
done
# The moed account the unit runs as: the sysusers.d entry creates it (in a
# scratch root here), a system user with no login shell.
sysusers=$tmp/root/usr/lib/sysusers.d/moed.conf
[ -e "$sysusers" ] || { echo "FAIL: sysusers.d/moed.conf not installed"; exit 1; }
if command -v systemd-sysusers >/dev/null; then
	mkdir -p "$tmp/sysroot/etc"
	systemd-sysusers --root="$tmp/sysroot" "$sysusers" > "$tmp/log" 2>&1 ||
		{ echo "FAIL: systemd-sysusers"; cat "$tmp/log"; exit 1; }
	grep -q '^moed:x:[0-9]*:[0-9]*:.*:/usr/sbin/nologin$' "$tmp/sysroot/etc/passwd" ||
		{ echo "FAIL: no moed system user"; cat "$tmp/sysroot/etc/passwd"; exit 1; }
	echo "ok: sysusers.d creates the moed user"
else
	echo "note: no systemd-sysusers: the moed user entry is not tried"
fi
# Man pages: installed, and rendered without a warning by groff (or
# mandoc where groff is missing). The per-call pages of libmoeclient.3
# point to it.
man=$tmp/root/usr/local/share/man
for f in man8/moed.8 man1/moectl.1 man1/moe-gen.1 man1/moe-bench.1 \
	man3/libmoeclient.3 man3/moe_forward.3; do
	[ -e "$man/$f" ] || { echo "FAIL: $f not installed"; exit 1; }
done
grep -qx '.so man3/libmoeclient.3' "$man/man3/moe_forward.3" ||
	{ echo "FAIL: moe_forward.3 does not point to libmoeclient.3"; exit 1; }
render() { # page: its text on stdout, warnings on stderr
	if command -v groff >/dev/null; then
		groff -man -Tutf8 -ww "$1"
	else
		mandoc -T lint -W warning "$1" >&2 && mandoc -T utf8 "$1"
	fi
}
if command -v groff >/dev/null || command -v mandoc >/dev/null; then
	for f in man8/moed.8 man1/moectl.1 man1/moe-gen.1 man1/moe-bench.1 \
		man3/libmoeclient.3; do
		if [ ! -s "$man/$f" ]; then
			echo "note: $f is empty: not rendered"
			continue
		fi
		render "$man/$f" > "$tmp/page" 2> "$tmp/warn"
		if [ -s "$tmp/warn" ] ||
			! LC_ALL=C sed "s/.$(printf '\b')//g" "$tmp/page" | grep -q '^NAME'; then
			echo "FAIL: $f does not render cleanly:"; cat "$tmp/warn"; exit 1
		fi
	done
	echo "ok: man pages installed and rendered without warnings"
else
	echo "note: neither groff nor mandoc is installed: man pages not rendered"
fi
ls "$tmp"/root/*/systemd/system/moed.service "$tmp"/root/lib/systemd/system/moed.service 2>/dev/null | grep -q . ||
	{ echo "FAIL: moed.service not installed"; exit 1; }
cat > "$tmp/app.c" <<'C'
#include <moe/moeclient.h>
#include <stdio.h>
#include <string.h>
int main(void)
{
	moe_client *c;
	int rc = moe_connect(&c, "/nonexistent/moed.sock", NULL);

	printf("%s\n", moe_strerror(rc));
	return rc == -ENOENT && strcmp(MOE_VERSION_STRING, "") ? 0 : 1;
}
C
export PKG_CONFIG_PATH="$tmp/root/usr/local/lib/pkgconfig" PKG_CONFIG_SYSROOT_DIR="$tmp/root"
cc -std=c99 -Wall -Werror ${SAN:-} -include errno.h "$tmp/app.c" -o "$tmp/app" \
	$(pkg-config --cflags --libs moeclient) > "$tmp/log" 2>&1 ||
	{ echo "FAIL: building against the installed moeclient.pc"; cat "$tmp/log"; exit 1; }
LD_LIBRARY_PATH="$tmp/root/usr/local/lib" "$tmp/app" > "$tmp/out" ||
	{ echo "FAIL: the program did not run as expected"; cat "$tmp/out"; exit 1; }
echo "ok: installed; a program built with pkg-config moeclient runs ($(cat "$tmp/out"))"
