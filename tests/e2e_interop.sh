#!/bin/sh
# moe-gen's files read by an independent GGUF reader (@huggingface/gguf):
# every tensor's name, type, shape and offset must match moed's reader.
# Skips (77) when node or the package is not installed.
set -u
bin=${MOE_BIN:-build/bin}
here=$(dirname "$0")/interop
if ! command -v node >/dev/null || [ ! -d "$here/node_modules/@huggingface/gguf" ]; then
	echo "SKIP: node or @huggingface/gguf not installed (npm install --prefix tests/interop)"
	exit 77
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
for args in "--arch llama" "--arch qwen2moe" "--arch deepseek2 --experts 16" \
	"--arch olmoe --gguf-version 2" "--arch llama --legacy-names" \
	"--alignment 4096 --type gate=Q4_0,up=Q8_0,down=BF16 --router-type F16"; do
	"$bin/moe-gen" "$tmp/m.gguf" -q --layers 2 --embd 256 --ff 256 $args || { fail=1; continue; }
	"$bin/moe-layer" "$tmp/m.gguf" --tensors > "$tmp/ours" || fail=1
	node "$here/gguf_list.mjs" "$tmp/m.gguf" > "$tmp/theirs" 2> "$tmp/keys" || fail=1
	if ! diff -u "$tmp/theirs" "$tmp/ours" > "$tmp/diff"; then
		echo "FAIL: $args"; head -20 "$tmp/diff"; fail=1
	elif grep -q undefined "$tmp/keys"; then
		echo "FAIL: $args: keys missing for the other reader"; cat "$tmp/keys"; fail=1
	else
		echo "ok: $args ($(wc -l < "$tmp/ours") lines agree)"
	fi
done
exit $fail
