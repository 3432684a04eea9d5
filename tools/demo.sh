#!/bin/sh
# The main job: write a 1 GB model, serve it with moed on a cache a
# quarter of its size, send a layer through moed with moectl and check it
# against the same layer computed in-process by moe-layer, byte for byte,
# show moed's status and counters, run a residual-stream trace, and
# benchmark moed with moe-bench: two clients against this moed, then the
# model under a memory cap (about 2.5 times smaller than its experts)
# beside its baselines: mmap and the page cache, all in RAM, the I/O
# ceiling.
set -eu
bin=${MOE_BIN:-build/bin}
dir=${TMPDIR:-/tmp}/moed-demo
mkdir -p "$dir"
model=$dir/model.gguf
sock=$dir/moed.sock

[ -f "$model" ] || "$bin/moe-gen" "$model" --arch deepseek2 --experts 64 \
	--top-k 6 --embd 1024 --ff 512 --size-gb 1
"$bin/moed" --model "$model" --socket "$sock" --cache-mb 256 &
moed=$!
trap 'kill $moed 2>/dev/null; wait $moed 2>/dev/null' EXIT
for i in $(seq 50); do [ -S "$sock" ] && break; sleep 0.1; done

# 32 tokens of +-1.0 (float bytes 00 00 80 3f / bf).
head -c $((32 * 1024)) /dev/urandom | od -An -v -w1 -tu1 |
	awk '{ printf "%c%c%c%c", 0, 0, 128, ($1 % 2) ? 63 : 191 }' > "$dir/x.f32"
"$bin/moectl" --socket "$sock" forward --layer 3 --input "$dir/x.f32" \
	--output "$dir/y-moed.f32"
"$bin/moe-layer" "$model" --layer 3 --input "$dir/x.f32" --output "$dir/y-local.f32"
cmp "$dir/y-moed.f32" "$dir/y-local.f32"
echo "moectl forward through moed: identical to moe-layer ($(wc -c < "$dir/y-moed.f32") bytes)"
"$bin/moectl" --socket "$sock" status
"$bin/moectl" --socket "$sock" stats
echo "residual-stream trace, 256 MiB expert cache:"
"$bin/moe-layer" "$model" --trace --cache-mb 256 --tokens 256
echo "moe-bench against this moed, two clients:"
"$bin/moe-bench" --socket "$sock" "$model" --tokens 32 --clients 2 --baselines none
kill $moed; wait $moed || true
trap - EXIT
echo "moe-bench: the model in a 384 MiB memory cgroup, with the baselines:"
"$bin/moe-bench" "$model" --mem-cap 384 --tokens 64 --no-cap-ok
