#!/bin/sh
# Rewrites tests/fuzz/seeds-*: gen_seeds' hand-made inputs and the headers
# of small moe-gen models covering every architecture, per-expert and
# fused tensor names, shared experts, groups, dense leading layers, mixed
# K-quant types and GGUF v2. Usage: make_seeds.sh BUILD_DIR
set -eu
o=${1:-build}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
gen() {
	name=$1; shift
	"$o/bin/moe-gen" "$tmp/$name.gguf" -q --layers 3 --experts 4 --top-k 2 \
		--embd 32 --ff 32 --type Q8_0 "$@"
}
gen llama-per-expert --arch llama --legacy-names
gen qwen2moe-shared --arch qwen2moe --shared-experts 1
gen qwen3moe --arch qwen3moe
gen olmoe --arch olmoe
gen deepseek2-groups --arch deepseek2 --experts 8 --groups 2 --groups-used 1 \
	--dense-layers 1 --shared-experts 1
gen qwen3moe-kquants-v2 --arch qwen3moe --embd 256 --ff 256 --gguf-version 2 \
	--type gate=Q4_K,up=Q4_K,down=Q6_K
mkdir -p tests/fuzz/seeds-gguf tests/fuzz/seeds-hello tests/fuzz/seeds-desc
"$o/tests/fuzz/gen_seeds" tests/fuzz "$tmp"/*.gguf
echo "seeds: $(ls tests/fuzz/seeds-gguf | wc -l) gguf, $(ls tests/fuzz/seeds-hello | wc -l) hello, $(ls tests/fuzz/seeds-desc | wc -l) desc"
