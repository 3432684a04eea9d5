#!/bin/sh
# moe-bench as a user runs it, on a small moe-gen model a little larger
# than the memory cap: the --json report is consistent (moed's bytes read
# are its misses times the experts' read sizes, the hit rate is a rate,
# expert uses add up to tokens x layers x k, the baselines are there and
# the all-in-RAM one read nothing, the I/O ceiling read what its replay
# planned and the fraction is the ratio of the two speeds); the table has
# every row; and every refusal exits with its status and says why.
set -u
bin=${MOE_BIN:-build/bin}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
ok() { echo "ok: $1"; }
bad() { echo "FAIL: $1"; [ -f "$tmp/err" ] && sed 's/^/  /' "$tmp/err"; fail=1; }
check() { d=$1; shift; if "$@"; then ok "$d"; else bad "$d"; fi; }

# The value at a dotted path of moe-bench's JSON (one key per line).
jget() {
	awk -v want="$1" '
	/^ *"[^"]*": \{/ { k = $0; sub(/^ *"/, "", k); sub(/".*/, "", k); st[++d] = k; next }
	/^ *\}/ { d--; next }
	/^ *"[^"]*": / {
		k = $0; sub(/^ *"/, "", k); sub(/".*/, "", k)
		v = $0; sub(/^ *"[^"]*": /, "", v); sub(/,$/, "", v)
		p = ""; for (i = 1; i <= d; i++) p = p st[i] "."
		if (p k == want) { print v; found = 1 }
	}
	END { exit !found }' "$2"
}
# awk arithmetic as a test: true when the expression holds.
holds() { awk "BEGIN { exit !($1) }"; }

m=$tmp/m.gguf
"$bin/moe-gen" "$m" -q --arch qwen3moe --layers 4 --experts 24 --top-k 4 \
	--embd 512 --ff 512 || exit 1

# A cap of 40 MiB against 47 MiB of experts, in a cgroup where this
# machine allows one; else the run says so and goes on uncapped.
cap="--mem-cap 40"
case ${SAN:-} in *thread*)
	# ThreadSanitizer's shadow memory does not fit a 40 MiB cgroup.
	echo "under ThreadSanitizer: the run is not capped"
	cap="--mem-cap 40 --cgroup-root /nonexistent --no-cap-ok" ;;
esac
"$bin/moe-bench" "$m" $cap --cache-mb 16 --tokens 32 --no-prefetch --json \
	> "$tmp/r.json" 2> "$tmp/err"
rc=$?
if [ $rc -eq 3 ]; then
	echo "no memory cgroup here ($(head -1 "$tmp/err")): running on moed's budget alone"
	cap="--mem-cap 40 --no-cap-ok"
	"$bin/moe-bench" "$m" $cap --cache-mb 16 --tokens 32 --no-prefetch --json \
		> "$tmp/r.json" 2> "$tmp/err"
	rc=$?
fi
check "a capped run with every baseline exits 0" test $rc -eq 0
if command -v jq > /dev/null; then
	check "the report is valid JSON" jq -e . "$tmp/r.json" > /dev/null
fi
for k in tokens_per_s hit_rate prefetch_accuracy read_gbps io_ceiling_fraction \
	peak_rss_mb baselines.mmap.tokens_per_s baselines.ram.tokens_per_s \
	baselines.io_ceiling.tokens_per_s; do
	jget $k "$tmp/r.json" > /dev/null || bad "key $k present"
done
ok "every documented key is present"

j() { jget "$1" "$tmp/r.json"; }
hits=$(j expert_hits) miss=$(j expert_misses) br=$(j bytes_read)
rmin=$(j model.expert_read_bytes_min) rmax=$(j model.expert_read_bytes)
layers=$(j model.moe_layers) k=$(j workload.k) tokens=$(j tokens)
check "hit_rate is hits / (hits + misses), in [0, 1]" \
	holds "$(j hit_rate) >= 0 && $(j hit_rate) <= 1 && ($(j hit_rate) - $hits / ($hits + $miss))^2 < 1e-8"
check "expert uses: $hits + $miss = $tokens tokens x $layers layers x k $k" \
	holds "$hits + $miss == $tokens * $layers * $k"
# One client, one token per request, no prefetch: every miss is one read
# of one expert, of between the smallest and largest expert read.
check "bytes read $br = $miss misses x expert reads of $rmin..$rmax bytes" \
	holds "$miss > 0 && $br >= $miss * $rmin && $br <= $miss * $rmax"
check "read_gbps is bytes over seconds" \
	holds "($(j read_gbps) - $br / 1e9 / $(j seconds))^2 < 1e-6"
cr=$(j baselines.io_ceiling.reads) cb=$(j baselines.io_ceiling.bytes)
check "the I/O ceiling read $cb bytes in $cr expert reads" \
	holds "$cr > 0 && $cb >= $cr * $rmin && $cb <= $cr * $rmax"
check "io_ceiling_fraction = tokens/s over the ceiling's" \
	holds "($(j io_ceiling_fraction) - $(j tokens_per_s) / $(j baselines.io_ceiling.tokens_per_s))^2 < 1e-6 * $(j io_ceiling_fraction)^2"
check "all in RAM: every use a hit, nothing read" \
	holds "$(j baselines.ram.hit_rate) == 1 && $(j baselines.ram.bytes_read) == 0"
check "mmap ran the same trace" \
	holds "$(j baselines.mmap.tokens_per_s) > 0 && $(j baselines.mmap.tokens) == $tokens"
check "moed's peak RSS is known" holds "$(j peak_rss_mb) > 0"

# A synthetic trace from two client processes, two requests in flight
# each, with a prefill: uses add up with the trace's own k.
"$bin/moe-bench" "$m" --workload zipf:1.2 --k 2 --clients 2 --procs \
	--inflight 2 --prefill 8 --tokens 40 --cache-mb 16 --baselines io \
	--json > "$tmp/z.json" 2> "$tmp/err"
check "a Zipf trace from 2 client processes runs" test $? -eq 0
u=$(jget expert_hits "$tmp/z.json") v=$(jget expert_misses "$tmp/z.json")
check "its expert uses: (40 decode + 4 x 8 prompt tokens) x 4 layers x 2" \
	holds "$u + $v == (40 + 32) * 4 * 2"
check "baselines left out are marked skipped" \
	grep -q '"skipped"' "$tmp/z.json"

"$bin/moe-bench" "$m" --tokens 8 --cache-mb 16 > "$tmp/t.txt" 2> "$tmp/err"
check "the table has a row per run" sh -c "grep -q '^moed (store)' '$tmp/t.txt' && grep -q '^mmap (page cache)' '$tmp/t.txt' && grep -q '^all in RAM' '$tmp/t.txt' && grep -q '^I/O ceiling' '$tmp/t.txt'"

# Refusals: each with its status and a reason naming what was wrong.
"$bin/moe-bench" "$tmp/missing.gguf" > /dev/null 2> "$tmp/err"
check "a missing model: exit 1, named" sh -c "test $? -eq 1 && grep -q 'missing.gguf' '$tmp/err'"
mkdir "$tmp/notcg"
"$bin/moe-bench" "$m" --mem-cap 40 --cgroup-root "$tmp/notcg" > /dev/null 2> "$tmp/err"
check "a cap that cannot be set: exit 3, named" sh -c "test $? -eq 3 && grep -q 'notcg: not a memory cgroup' '$tmp/err'"
"$bin/moe-bench" "$m" --mem-cap 40 --cgroup-root "$tmp/notcg" --no-cap-ok --tokens 4 \
	--baselines none --json > "$tmp/n.json" 2> "$tmp/err"
check "--no-cap-ok: goes on, the report says the cap was not enforced" \
	sh -c "test $? -eq 0 && grep -q '\"cgroup\": \"not enforced' '$tmp/n.json'"
check "the refused cgroup root is left as it was" test -z "$(ls "$tmp/notcg")"
"$bin/moe-bench" "$m" --moed-arg --no-such-option --tokens 4 > /dev/null 2> "$tmp/err"
check "moed fails to start: exit 1 with moed's own words" \
	sh -c "test $? -eq 1 && grep -q 'moed exited with status 2' '$tmp/err' && grep -q 'no-such-option' '$tmp/err'"
"$bin/moe-bench" --socket "$tmp/none.sock" --tokens 4 > /dev/null 2> "$tmp/err"
check "no moed at --socket: exit 1, named" sh -c "test $? -eq 1 && grep -q 'none.sock' '$tmp/err'"
"$bin/moe-bench" "$m" --workload zipf:-1 > /dev/null 2> "$tmp/err"
check "a bad workload: exit 2" sh -c "test $? -eq 2 && grep -q 'zipf:-1' '$tmp/err'"

# Plots: without gnuplot on $PATH a clear refusal before any run; with
# it, two PNGs.
PATH=/nonexistent "$bin/moe-bench" "$m" --plot "$tmp/p" > /dev/null 2> "$tmp/err"
check "--plot without gnuplot: exit 1, says so" \
	sh -c "test $? -eq 1 && grep -q 'gnuplot' '$tmp/err' && test ! -e '$tmp/p'"
if command -v gnuplot > /dev/null; then
	"$bin/moe-bench" "$m" --tokens 8 --cache-mb 16 --baselines mmap --plot "$tmp/p" \
		> /dev/null 2> "$tmp/err"
	check "--plot writes latency.png and hitrate.png" sh -c "test $? -eq 0 && \
		head -c 4 '$tmp/p/latency.png' | grep -q PNG && head -c 4 '$tmp/p/hitrate.png' | grep -q PNG"
else
	echo "skipped: --plot's PNGs (gnuplot is not installed)"
fi
exit $fail
