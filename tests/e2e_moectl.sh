#!/bin/sh
# moed and moectl as a user runs them: layers sent through moed by several
# moectl processes at once, each answer identical to moe-layer's; status
# and counters in every format; clear failures when moed is gone.
set -u
bin=${MOE_BIN:-build/bin}
tmp=$(mktemp -d)
moed=
trap '[ -n "$moed" ] && kill $moed 2>/dev/null; rm -rf "$tmp"' EXIT
fail=0
check() { d=$1; shift; if "$@" > "$tmp/out" 2>&1; then echo "ok: $d"; else echo "FAIL: $d"; cat "$tmp/out"; fail=1; fi; }
m=$tmp/m.gguf sock=$tmp/moed.sock
"$bin/moe-gen" "$m" -q --arch olmoe --layers 4 --experts 16 --top-k 4 --embd 256 --ff 256 || exit 1
"$bin/moed" --model "$m" --socket "$sock" --cache-mb 16 --max-tokens 16 2> "$tmp/moed.log" &
moed=$!
for i in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
# Inputs of 7 and 20 tokens (20 > --max-tokens: moectl splits it; both
# stay below the 32 tokens per expert where sgemm would change the bits).
for n in 7 20; do
	head -c $((n * 256)) /dev/urandom | od -An -v -w1 -tu1 |
		awk '{ printf "%c%c%c%c", 0, 0, 0, ($1 % 2) ? 62 : 190 }' > "$tmp/x$n.f32"
	"$bin/moe-layer" "$m" --layer 2 --input "$tmp/x$n.f32" --output "$tmp/want$n.f32"
done
check "forward equals moe-layer" sh -c "'$bin/moectl' --socket '$sock' forward --layer 2 --input '$tmp/x7.f32' --output '$tmp/y.f32' && cmp '$tmp/y.f32' '$tmp/want7.f32'"
check "a request split in two equals moe-layer" sh -c "MOED_SOCKET='$sock' '$bin/moectl' forward --layer 2 --input '$tmp/x20.f32' --output '$tmp/y20.f32' && cmp '$tmp/y20.f32' '$tmp/want20.f32'"
pids=
for c in 1 2 3 4; do
	"$bin/moectl" --socket "$sock" forward --layer 2 --input "$tmp/x7.f32" --output "$tmp/p$c.f32" &
	pids="$pids $!"
done
ok=1
for p in $pids; do wait $p || ok=0; done
for c in 1 2 3 4; do cmp -s "$tmp/p$c.f32" "$tmp/want7.f32" || ok=0; done
check "4 clients at once, each identical to moe-layer" test $ok -eq 1
check "status names the model" sh -c "'$bin/moectl' --socket '$sock' status | grep -q 'olmoe, 4 layers'"
check "stats counts the requests" sh -c "'$bin/moectl' --socket '$sock' stats | awk '\$1 == \"requests\" && \$2 >= 7 { f = 1 } END { exit !f }'"
check "stats --json" sh -c "'$bin/moectl' --socket '$sock' stats --json | grep -q '\"tokens\": '"
check "stats --prometheus" sh -c "'$bin/moectl' --socket '$sock' stats --prometheus | grep -q '^# TYPE moed_requests counter'"
check "a missing layer is refused" sh -c "! '$bin/moectl' --socket '$sock' forward --layer 9 --input '$tmp/x7.f32' --output '$tmp/z.f32' 2> '$tmp/err' && grep -q 'not a MoE layer\|Invalid argument' '$tmp/err'"
kill $moed; wait $moed; rc=$?; moed=
check "SIGTERM: moed exits 0" test $rc -eq 0
check "moed gone: a clear error" sh -c "! '$bin/moectl' --socket '$sock' status 2> '$tmp/err' && grep -q 'cannot reach moed' '$tmp/err'"
exit $fail
