#!/bin/sh
# make install into a DESTDIR, then build and run a small program against
# the installed moeclient.pc, as an application would. In a sanitizer
# build ($SAN) the library needs the program built with the same runtime.
set -u
O=${O:-build}
bin=${MOE_BIN:-$O/bin}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
make -s O="$O" install DESTDIR="$tmp/root" PREFIX=/usr/local > "$tmp/log" 2>&1 ||
	{ echo "FAIL: make install"; cat "$tmp/log"; exit 1; }
for f in usr/local/sbin/moed usr/local/bin/moectl usr/local/bin/moe-gen \
	usr/local/lib/libmoeclient.so.1 usr/local/include/moe/moeclient.h \
	usr/local/lib/pkgconfig/moeclient.pc etc/moed/moed.conf.example; do
	[ -e "$tmp/root/$f" ] || { echo "FAIL: $f not installed"; exit 1; }
done
# The config file the unit names: installed (every setting commented, so
# moed says what is missing) where there is none, an admin's kept on
# every later install; an explicitly given file that is missing is still
# an error.
conf=$tmp/root/etc/moed/moed.conf
grep -q -- "--config /etc/moed/moed.conf" "$tmp"/root/*/systemd/system/moed.service "$tmp"/root/lib/systemd/system/moed.service 2>/dev/null ||
	{ echo "FAIL: the unit does not read /etc/moed/moed.conf"; exit 1; }
[ -f "$conf" ] || { echo "FAIL: etc/moed/moed.conf not installed"; exit 1; }
if grep -q '^[a-z]' "$conf"; then echo "FAIL: moed.conf sets something:"; grep '^[a-z]' "$conf"; exit 1; fi
grep -q '^# model = ' "$conf" || { echo "FAIL: moed.conf does not show model ="; exit 1; }
"$tmp/root/usr/local/sbin/moed" --config "$conf" > "$tmp/out" 2>&1; rc=$?
[ $rc -eq 2 ] && grep -q "no model: set model = in $conf" "$tmp/out" ||
	{ echo "FAIL: moed on the fresh moed.conf (exit $rc):"; cat "$tmp/out"; exit 1; }
"$bin/moe-gen" "$tmp/m.gguf" -q --arch olmoe --layers 2 --experts 8 --top-k 2 --embd 256 --ff 256 || exit 1
printf 'model = %s\nsocket = %s\ncache-mb = 16\n' "$tmp/m.gguf" "$tmp/moed.sock" >> "$conf"
cp "$conf" "$tmp/admin.conf"
"$tmp/root/usr/local/sbin/moed" --config "$conf" 2> "$tmp/moed.log" &
moed=$!
for i in $(seq 100); do [ -S "$tmp/moed.sock" ] && break; sleep 0.05; done
"$tmp/root/usr/local/bin/moectl" --socket "$tmp/moed.sock" status > "$tmp/out" 2>&1; st=$?
kill $moed; wait $moed
[ $st -eq 0 ] && grep -q "$tmp/m.gguf" "$tmp/out" ||
	{ echo "FAIL: moed with the edited moed.conf:"; cat "$tmp/out" "$tmp/moed.log"; exit 1; }
make -s O="$O" install DESTDIR="$tmp/root" PREFIX=/usr/local > "$tmp/log" 2>&1 ||
	{ echo "FAIL: make install, again"; cat "$tmp/log"; exit 1; }
cmp -s "$conf" "$tmp/admin.conf" && grep -q "moed.conf exists: left as it is" "$tmp/log" ||
	{ echo "FAIL: a second install changed the admin's moed.conf"; diff "$tmp/admin.conf" "$conf"; exit 1; }
"$tmp/root/usr/local/sbin/moed" --config "$tmp/nonexistent.conf" > "$tmp/out" 2>&1; rc=$?
[ $rc -eq 2 ] && grep -q "nonexistent.conf: No such file or directory" "$tmp/out" ||
	{ echo "FAIL: a missing --config file is not an error (exit $rc)"; cat "$tmp/out"; exit 1; }
echo "ok: moed.conf installed commented, an admin's kept, a missing --config an error"
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
