#!/bin/sh
# moe-gen and moe-layer as a user runs them: info, a layer run, routing
# written out and fed back in (same output), determinism for a seed, and
# clear errors for bad input files.
set -u
bin=${MOE_BIN:-build/bin}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
check() { # description, then a command that must succeed
	d=$1; shift
	if "$@" > "$tmp/out" 2>&1; then echo "ok: $d"; else echo "FAIL: $d"; cat "$tmp/out"; fail=1; fi
}
refuse() { # description, expected text, then a command that must fail saying it
	d=$1; want=$2; shift 2
	if "$@" > "$tmp/out" 2>&1; then echo "FAIL: $d: succeeded"; fail=1
	elif grep -q -- "$want" "$tmp/out"; then echo "ok: $d"
	else echo "FAIL: $d: message lacks '$want':"; cat "$tmp/out"; fail=1; fi
}
m=$tmp/m.gguf
check "moe-gen writes a model" "$bin/moe-gen" "$m" -q --arch qwen2moe --layers 3 --embd 256 --ff 256 --seed 5
check "moe-gen is deterministic for a seed" sh -c "'$bin/moe-gen' '$tmp/m2.gguf' -q --arch qwen2moe --layers 3 --embd 256 --ff 256 --seed 5 --threads 1 && cmp '$m' '$tmp/m2.gguf'"
check "--info" sh -c "'$bin/moe-layer' '$m' --info | grep -q 'experts *16, 4 used'"
# 7 tokens of floats +-0.0078125 (bytes 00 00 00 3c / bc)
awk 'BEGIN { for (i = 0; i < 7 * 256; i++) printf "%c%c%c%c", 0, 0, 0, (i % 3 ? 60 : 188) }' > "$tmp/x.f32"
check "a layer run" "$bin/moe-layer" "$m" --layer 1 --input "$tmp/x.f32" --tokens 7 --output "$tmp/y.f32" --routing-out "$tmp/r.txt"
check "output has 7 rows" test "$(wc -c < "$tmp/y.f32")" -eq $((7 * 256 * 4))
check "routing has 7 lines of 4 picks" sh -c "test \$(awk 'NF == 9' '$tmp/r.txt' | wc -l) -eq 7"
check "given routing reproduces the output" sh -c "'$bin/moe-layer' '$m' --layer 1 --input '$tmp/x.f32' --output '$tmp/y2.f32' --routing-in '$tmp/r.txt' && cmp '$tmp/y.f32' '$tmp/y2.f32'"
check "dynamic K: top-p 0.3 picks 1..4 experts" sh -c "'$bin/moe-layer' '$m' --layer 1 --input '$tmp/x.f32' --output '$tmp/y3.f32' --top-p 0.3 --max-k 4 --routing-out '$tmp/r3.txt' && awk '\$1 < 1 || \$1 > 4 { exit 1 }' '$tmp/r3.txt'"
head -c 1000 "$tmp/x.f32" > "$tmp/short.f32"
refuse "input of the wrong size" "1000 bytes" "$bin/moe-layer" "$m" --layer 1 --input "$tmp/short.f32" --output "$tmp/y.f32"
refuse "a layer past the end" "layer 9" "$bin/moe-layer" "$m" --layer 9 --input "$tmp/x.f32" --output "$tmp/y.f32"
head -c 3000 "$m" > "$tmp/cut.gguf"
refuse "a truncated model" "cut.gguf" "$bin/moe-layer" "$tmp/cut.gguf" --info
printf 'GGUF\003\000\000\000' > "$tmp/tiny.gguf"
refuse "a header cut after the version" "tiny.gguf" "$bin/moe-layer" "$tmp/tiny.gguf" --info
refuse "not a GGUF file" "magic" "$bin/moe-layer" "$tmp/x.f32" --info
refuse "moe-gen rejects a bad type" "Q5_K" "$bin/moe-gen" "$tmp/z.gguf" --type Q5_K
refuse "moe-gen rejects embd not a multiple of the block" "--embd 100" "$bin/moe-gen" "$tmp/z.gguf" --embd 100
exit $fail
