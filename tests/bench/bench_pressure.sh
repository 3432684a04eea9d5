#!/bin/sh
# A model three times the memory cap: tokens/s of a residual-stream trace
# with the expert store (io_uring, O_DIRECT) and with mmap and the page
# cache (what llama.cpp does), each run inside a memory cgroup of its own
# with the same cap; then hit rate and prefetch accuracy per policy.
# Where no cgroup can be made it says so and relies on the store's budget.
set -u
bin=${MOE_BIN:-build/bin}
dir=${TMPDIR:-/tmp}
cap_mb=${CAP_MB:-320}
tokens=${TOKENS:-128}
model=$dir/moebench-pressure.gguf
cg=""
cleanup() {
	[ -n "$cg" ] && rmdir "$cg" 2>/dev/null
	rm -f "$model"
}
trap cleanup EXIT

# --size-gb picks a whole number of layers at or below the size asked
# for: ask for a little more than three times the cap.
"$bin/moe-gen" "$model" -q --arch qwen3moe --experts 64 --top-k 4 \
	--embd 1024 --ff 1024 --type Q4_K \
	--size-gb "$(echo "$cap_mb * 3.15 * 1.048576 / 1000" | bc -l)" || exit 1
size_mb=$(( $(stat -c %s "$model") / 1048576 ))

# A v1 memory cgroup (v2: memory.max) holding the run and its page cache.
# A group made but refused its limit is removed again.
make_cgroup() {
	if [ -d /sys/fs/cgroup/memory ] && mkdir "/sys/fs/cgroup/memory/moebench-$$" 2>/dev/null; then
		cg=/sys/fs/cgroup/memory/moebench-$$
		limit=memory.limit_in_bytes
	elif [ -f /sys/fs/cgroup/cgroup.controllers ] && mkdir "/sys/fs/cgroup/moebench-$$" 2>/dev/null; then
		cg=/sys/fs/cgroup/moebench-$$
		limit=memory.max
	else
		return 1
	fi
	echo $((cap_mb * 1048576)) > "$cg/$limit" 2>/dev/null && return 0
	echo "(cgroup $cg refused $limit)"
	rmdir "$cg"
	cg=""
	return 1
}
drop_cache() {
	sync
	echo 1 > /proc/sys/vm/drop_caches 2>/dev/null || echo "(page cache not dropped: not allowed here)"
}
run() { # label, then moe-layer arguments
	label=$1; shift
	drop_cache
	if [ -n "$cg" ]; then
		sh -c 'echo $$ > "$1/cgroup.procs" && shift && exec "$@"' sh "$cg" \
			"$bin/moe-layer" "$model" --trace --tokens "$tokens" --batch 4 "$@" > "$dir/moebench-$label.out" 2>&1
	else
		"$bin/moe-layer" "$model" --trace --tokens "$tokens" --batch 4 "$@" > "$dir/moebench-$label.out" 2>&1
	fi
	rc=$?
	[ $rc -eq 0 ] || { echo "$label: failed (exit $rc)"; cat "$dir/moebench-$label.out"; }
	sed "s/^/  $label: /" "$dir/moebench-$label.out"
	tps=$(sed -n 's/^trace: .*: \([0-9.]*\) tokens\/s.*/\1/p' "$dir/moebench-$label.out")
	eval "tps_$(echo "$label" | tr - _)=\${tps:-0}"
	rm -f "$dir/moebench-$label.out"
}

ratio=$(echo "scale=2; $size_mb / $cap_mb" | bc)
if make_cgroup; then
	echo "model $size_mb MiB, $ratio times the memory cap of $cap_mb MiB (cgroup $cg)"
else
	cg=""
	echo "model $size_mb MiB; no memory cgroup could be made: the store's budget is the only cap, mmap is uncapped"
fi
cache=$((cap_mb * 6 / 10))
run store --io uring --cache-mb "$cache" --policy predict
run mmap --io mmap
if [ "$(echo "$tps_mmap > 0" | bc)" = 1 ]; then
	x=$(echo "scale=1; $tps_store / $tps_mmap" | bc)
	met=$(echo "$x >= 2" | bc)
	echo "store $tps_store tokens/s, mmap $tps_mmap: $x times mmap (target 2x: $([ "$met" = 1 ] && echo met || echo NOT met))"
fi
for p in lru lfu; do
	run "store-$p" --io uring --cache-mb "$cache" --policy "$p"
done
