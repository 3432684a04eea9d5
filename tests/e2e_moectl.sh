#!/bin/sh
# moed and moectl as a user runs them: layers sent through moed by several
# moectl processes at once, each answer identical to moe-layer's; status
# and counters in every format, per-layer figures that add up, valid
# Prometheus text; a policy changed by SIGHUP; clear failures when moed
# is gone.
set -u
bin=${MOE_BIN:-build/bin}
tmp=$(mktemp -d)
moed=
trap '[ -n "$moed" ] && kill $moed 2>/dev/null; rm -rf "$tmp"' EXIT
fail=0
check() { d=$1; shift; if "$@" > "$tmp/out" 2>&1; then echo "ok: $d"; else echo "FAIL: $d"; cat "$tmp/out"; fail=1; fi; }
m=$tmp/m.gguf sock=$tmp/moed.sock
"$bin/moe-gen" "$m" -q --arch olmoe --layers 4 --experts 16 --top-k 4 --embd 256 --ff 256 || exit 1
printf 'policy = predict\n' > "$tmp/moed.conf"
"$bin/moed" --config "$tmp/moed.conf" --model "$m" --socket "$sock" --cache-mb 16 --max-tokens 16 2> "$tmp/moed.log" &
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
check "stats --prometheus" sh -c "'$bin/moectl' --socket '$sock' stats --prometheus | grep -q '^# TYPE moed_requests_total counter'"
# Layer 2 ran 1 + 2 + 4 requests of 7 + 20 + 4 * 7 tokens (the 20 split
# in two); olmoe here routes each token to 4 experts.
"$bin/moectl" --socket "$sock" stats > "$tmp/table"
"$bin/moectl" --socket "$sock" stats --prometheus > "$tmp/prom"
"$bin/moectl" --socket "$sock" stats --json > "$tmp/json"
check "stats: layer 2's row" awk '$1 == "2" && $2 == 7 && $3 == 55 { f = 1 } END { exit !f }' "$tmp/table"
check "stats: layer 2's experts got 4 tokens each of its 55" awk '
	/^moed_expert_tokens_total\{layer="2",/ { e += $2 }
	/^moed_layer_tokens_total\{layer="2"\}/ { t = $2 }
	END { exit !(t == 55 && e == 4 * t) }' "$tmp/prom"
check "stats: request time percentiles" awk '
	/^moed_request_duration_seconds\{quantile="0.5"\}/ { p50 = $2 }
	/^moed_request_duration_seconds\{quantile="0.99"\}/ { p99 = $2 }
	/^moed_request_duration_seconds_count / { n = $2 }
	END { exit !(n >= 7 && p50 > 0 && p50 <= p99) }' "$tmp/prom"
# The text format: every sample belongs to the family whose HELP and TYPE
# came last (a summary's also as _sum and _count, its quantiles
# labelled), no family twice, labels and values well formed.
check "stats --prometheus is valid text format" awk '
	function bad(why) { print "line " NR ": " why ": " $0; err = 1 }
	/^# HELP / { if ($3 in seen) bad("family again"); seen[$3] = 1; help = $3; next }
	/^# TYPE / { if ($3 != help) bad("TYPE without HELP"); fam = $3; type = $4
		if (type !~ /^(counter|gauge|summary|histogram|untyped)$/) bad("type"); next }
	/^#/ { bad("comment"); next }
	{
		if ($0 !~ /^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-zA-Z_][a-zA-Z0-9_]*="[^"]*"(,[a-zA-Z_][a-zA-Z0-9_]*="[^"]*")*\})? (NaN|[-+]?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?)$/)
			bad("sample syntax")
		name = $1; sub(/\{.*/, "", name)
		if (type == "summary" && (name == fam "_sum" || name == fam "_count")) next
		if (name != fam) bad("not in family " fam)
		if (type == "summary" && $1 !~ /quantile="/) bad("summary sample without quantile")
		n++
	}
	END { exit err || n < 50 }' "$tmp/prom"
# Prometheus's naming conventions: a counter's name ends in _total, and
# nothing but a counter's does.
check "stats --prometheus: counters end in _total, only counters" awk '
	/^# TYPE / { n++
		if (($4 == "counter") != ($3 ~ /_total$/)) { print "misnamed: " $0; err = 1 } }
	END { exit err || n < 20 }' "$tmp/prom"
check "stats --prometheus: the counters since start, by their names" sh -c "
	for f in requests tokens refused failed expert_hits expert_misses read_bytes prefetch_issued prefetch_used evictions busy_seconds; do
		grep -q \"^moed_\${f}_total [0-9]\" '$tmp/prom' || { echo \"no moed_\${f}_total\"; exit 1; }
	done"
if command -v python3 > /dev/null; then
	check "stats --json is valid JSON with every layer" python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
assert [l["layer"] for l in d["layers"]] == [0, 1, 2, 3], d["layers"]
l2 = d["layers"][2]
assert l2["requests"] == 7 and sum(l2["expert_tokens"]) == 4 * 55
assert len(l2["expert_tokens"]) == 16 and d["latency_usec"]["count"] >= 7
' "$tmp/json"
else
	echo "note: no python3: the JSON output is not parsed"
fi
check "stats: policy predict" awk '$1 == "policy" && $2 == "predict" { f = 1 } END { exit !f }' "$tmp/table"
printf 'policy = lfu\n' > "$tmp/moed.conf"
kill -HUP $moed
for i in $(seq 100); do grep -q 're-read' "$tmp/moed.log" && break; sleep 0.05; done
check "SIGHUP: policy lfu in force and logged" sh -c "'$bin/moectl' --socket '$sock' stats | awk '\$1 == \"policy\" && \$2 == \"lfu\" { f = 1 } END { exit !f }' && grep -q 'SIGHUP: policy predict -> lfu' '$tmp/moed.log'"
check "a missing layer is refused" sh -c "! '$bin/moectl' --socket '$sock' forward --layer 9 --input '$tmp/x7.f32' --output '$tmp/z.f32' 2> '$tmp/err' && grep -q 'not a MoE layer\|Invalid argument' '$tmp/err'"
kill $moed; wait $moed; rc=$?; moed=
check "SIGTERM: moed exits 0" test $rc -eq 0
check "moed gone: a clear error" sh -c "! '$bin/moectl' --socket '$sock' status 2> '$tmp/err' && grep -q 'cannot reach moed' '$tmp/err'"
exit $fail
