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
check "the I/O ceiling read moed's $br bytes (within one expert read: $cb)" \
	holds "$cb >= $br && $cb < $br + $rmax && $(j baselines.io_ceiling.moed_bytes_read) == $br"
check "io_ceiling_fraction = tokens/s over the ceiling's" \
	holds "($(j io_ceiling_fraction) - $(j tokens_per_s) / $(j baselines.io_ceiling.tokens_per_s))^2 < 1e-6 * $(j io_ceiling_fraction)^2"
check "all in RAM: every use a hit, nothing read" \
	holds "$(j baselines.ram.hit_rate) == 1 && $(j baselines.ram.bytes_read) == 0"
check "mmap ran the same trace" \
	holds "$(j baselines.mmap.tokens_per_s) > 0 && $(j baselines.mmap.tokens) == $tokens"
check "moed's peak RSS is known" holds "$(j peak_rss_mb) > 0"

# Each MoE layer's latency: one line per layer in the moed run's "layers"
# (the top level's, indented by four; the baselines' are deeper), its
# decode requests one per token, p50 <= p99, no prefill sent.
layer_lines() { grep '^    {"layer": ' "$1"; }
check "one latency entry per MoE layer" test "$(layer_lines "$tmp/r.json" | wc -l)" -eq "$layers"
check "each layer: $tokens decode requests, p50 <= p99, no prefill" sh -c "grep '^    {\"layer\": ' '$tmp/r.json' | awk -v n=$tokens '{
	if (!match(\$0, /\"decode\": \{\"requests\": [0-9]+, \"p50_us\": [0-9]+, \"p99_us\": [0-9]+/)) exit 1
	split(substr(\$0, RSTART, RLENGTH), f, /[:,] */)
	if (f[3] != n || f[5] + 0 > f[7] + 0) exit 1
	if (\$0 !~ /\"prefill\": \{\"requests\": 0, \"p50_us\": null/) exit 1
}'"
check "the overall p50 <= p99" holds "$(j layer_latency_us.p50) <= $(j layer_latency_us.p99)"

# Prefetch on, one client: the store reads an expert when a want finds it
# neither resident nor being read (a miss of the store) and when it
# issues a prefetch, less the prefetches cancelled before their read
# (counted as wasted). A request's misses also count wants that joined a
# read in flight, which only a prefetch can start here, and each such
# join uses a prefetch. So reads lie in [misses - used + issued - wasted,
# misses + issued], each read between rmin and rmax bytes.
"$bin/moe-bench" "$m" $cap --cache-mb 16 --tokens 32 --baselines io --json \
	> "$tmp/pf.json" 2> "$tmp/err"
check "a run with prefetch on exits 0" test $? -eq 0
p() { jget "$1" "$tmp/pf.json"; }
pm=$(p expert_misses) pi=$(p prefetch_issued) pu=$(p prefetch_used) pw=$(p prefetch_wasted) pb=$(p bytes_read)
check "the report says prefetch is on" test "$(p prefetch)" = true
check "prefetch_used $pu <= prefetch_issued $pi, and some were issued" holds "$pi > 0 && $pu <= $pi"
check "bytes read $pb = reads in [$pm - $pu + $pi - $pw, $pm + $pi] x $rmin..$rmax bytes" \
	holds "$pb >= ($pm - $pu + $pi - $pw) * $rmin && $pb <= ($pm + $pi) * $rmax"
check "prefetch on: the I/O ceiling read moed's $pb bytes" \
	holds "$(p baselines.io_ceiling.bytes) >= $pb && $(p baselines.io_ceiling.bytes) < $pb + $rmax"
check "prefetch on: p50 <= p99" holds "$(p layer_latency_us.p50) <= $(p layer_latency_us.p99)"

# Attached to a moed the test started (--socket): the run is the running
# moed's, with its own budget, and nothing of moe-bench's own is started.
sock=$tmp/moed.sock
"$bin/moed" --model "$m" --socket "$sock" --cache-mb 16 --max-tokens 64 2> "$tmp/moed.log" &
moed=$!
for i in $(seq 200); do [ -S "$sock" ] && break; sleep 0.05; done
"$bin/moe-bench" --socket "$sock" --tokens 16 --baselines io --json > "$tmp/a.json" 2> "$tmp/err"
check "--socket: a run against a running moed exits 0" test $? -eq 0
a() { jget "$1" "$tmp/a.json"; }
check "--socket: the report says attached" test "$(a attached)" = true
check "--socket: 16 tokens x $layers layers x $k uses, cache_mb 16" \
	holds "$(a tokens) == 16 && $(a expert_hits) + $(a expert_misses) == 16 * $layers * $k && $(a cache_mb) == 16"
check "--socket: the running moed still serves" sh -c "'$bin/moectl' --socket '$sock' status > /dev/null"
kill $moed; wait $moed; moed=

# Nothing of a run is left: its cgroups (moe-bench-PID-*), its temporary
# directory (under the TMPDIR it was given) or a moed started from it.
leftovers() {
	pid=$1 dir=$2
	if [ -n "$(ls -A "$dir")" ]; then echo "left in $dir: $(ls -A "$dir")"; return 1; fi
	cgs=$(find /sys/fs/cgroup -maxdepth 8 -type d -name "moe-bench-$pid-*" 2> /dev/null)
	if [ -n "$cgs" ]; then echo "cgroups left: $cgs"; return 1; fi
	for c in /proc/[0-9]*/cmdline; do
		if tr '\0' ' ' 2> /dev/null < "$c" | grep -q -- "--socket $dir/"; then
			echo "a moed is left: ${c%/cmdline}"; return 1
		fi
	done
	return 0
}
# Wait (up to 60 s) for the moed of a run in dir to be ready.
wait_moed() {
	for i in $(seq 600); do
		for s in "$1"/moe-bench.*/moed.sock; do [ -S "$s" ] && return 0; done
		sleep 0.1
	done
	return 1
}
mkdir "$tmp/t1" "$tmp/t2" "$tmp/t3"
TMPDIR=$tmp/t1 "$bin/moe-bench" "$m" $cap --cache-mb 16 --tokens 8 --baselines mmap \
	> /dev/null 2> "$tmp/err" &
b=$!
wait $b
check "a normal run exits 0" test $? -eq 0
check "after a normal run: no cgroup, temporary directory or moed left" leftovers $b "$tmp/t1"

TMPDIR=$tmp/t2 "$bin/moe-bench" "$m" $cap --cache-mb 16 --tokens 100000000 --baselines none \
	> /dev/null 2> "$tmp/err" &
b=$!
check "a long run's moed gets ready" wait_moed "$tmp/t2"
sleep 0.5
kill -TERM $b
wait $b
rc=$?
check "SIGTERM mid-run: exit 143, says it was interrupted and cleaned up" sh -c \
	"test $rc -eq 143 && grep -q 'interrupted by SIGTERM' '$tmp/err' && grep -q 'moed stopped, its cgroup and temporary directory removed' '$tmp/err'"
check "after SIGTERM mid-run: no cgroup, temporary directory or moed left" leftovers $b "$tmp/t2"

# SIGKILL leaves no time for cleanup, but moed dies with moe-bench.
TMPDIR=$tmp/t3 "$bin/moe-bench" "$m" --cache-mb 16 --tokens 100000000 --baselines none \
	> /dev/null 2> "$tmp/err" &
b=$!
check "another long run's moed gets ready" wait_moed "$tmp/t3"
kill -KILL $b
wait $b 2> /dev/null
gone=0
for i in $(seq 50); do
	leftovers $b "$tmp/t3" > /dev/null 2>&1 || rm -rf "$tmp"/t3/moe-bench.*
	if ! grep -qs -- "--socket $tmp/t3/" /proc/[0-9]*/cmdline; then gone=1; break; fi
	sleep 0.1
done
check "after SIGKILL: moed died with moe-bench" test $gone -eq 1

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
