/* Writes the seed files for fuzz_gguf: small, whole GGUF files (header
 * and zeroed data) covering every value type, v2 and v3, a non-default
 * alignment, and tensors of several types and ranks. Run by hand:
 *   cc -std=c11 -D_GNU_SOURCE -Iinclude -Idaemon -o /tmp/gen \
 *      tests/fuzz/gen_gguf_seeds.c daemon/gguf_write.c daemon/gguf.c \
 *      daemon/dtype.c daemon/diag.c -lm && /tmp/gen tests/fuzz/seeds */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "dtype.h"
#include "gguf.h"
#include "gguf_write.h"

static int save(struct gguf_writer *w, const char *dir, const char *name)
{
	char path[512];
	int fd, rc;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (fd < 0) {
		perror(path);
		return 1;
	}
	rc = gguf_writer_write_header(w, fd);
	close(fd);
	gguf_writer_free(w);
	if (rc)
		fprintf(stderr, "%s: write failed (%d)\n", path, rc);
	return rc != 0;
}

static struct gguf_writer *minimal(void)
{
	return gguf_writer_new(3, 32);
}

/* Shaped like a MoE model: router, expert tensors, tokenizer arrays. */
static struct gguf_writer *moe(void)
{
	static const char *const toks[] = { "<s>", "</s>", "a", "" };
	static const int32_t tt[] = { 3, 3, 1, 1 };
	struct gguf_writer *w = gguf_writer_new(3, 32);

	gguf_w_str(w, "general.architecture", "qwen3moe");
	gguf_w_u32(w, "qwen3moe.expert_count", 2);
	gguf_w_u32(w, "qwen3moe.expert_used_count", 1);
	gguf_w_f32(w, "qwen3moe.expert_weights_scale", 2.5f);
	gguf_w_bool(w, "qwen3moe.expert_weights_norm", true);
	gguf_w_arr_str(w, "tokenizer.ggml.tokens", toks, 4);
	gguf_w_arr(w, "tokenizer.ggml.token_type", GGUF_T_I32, tt, 4);
	gguf_w_tensor(w, "blk.0.ffn_gate_inp.weight", 2, (uint64_t[]){ 8, 2 },
		      MOE_F32);
	gguf_w_tensor(w, "blk.0.ffn_up_exps.weight", 3,
		      (uint64_t[]){ 32, 1, 2 }, MOE_Q8_0);
	gguf_w_tensor(w, "blk.0.ffn_down_exps.weight", 3,
		      (uint64_t[]){ 256, 1, 1 }, MOE_Q4_K);
	return w;
}

/* v2, alignment 64, every scalar type and numeric arrays. */
static struct gguf_writer *scalars(void)
{
	struct gguf_writer *w = gguf_writer_new(2, 64);
	static const double f64[] = { 1.5, -2.25 };
	static const uint8_t bools[] = { 1, 0, 1 };
	int64_t i64 = -7;
	uint16_t u16 = 65535;
	int8_t i8 = -1;
	double d = 0.125;

	gguf_w_scalar(w, "s.u8", GGUF_T_U8, &(uint8_t){ 200 });
	gguf_w_scalar(w, "s.i8", GGUF_T_I8, &i8);
	gguf_w_scalar(w, "s.u16", GGUF_T_U16, &u16);
	gguf_w_scalar(w, "s.i16", GGUF_T_I16, &(int16_t){ -300 });
	gguf_w_i32(w, "s.i32", -70000);
	gguf_w_u64(w, "s.u64", 1ull << 40);
	gguf_w_scalar(w, "s.i64", GGUF_T_I64, &i64);
	gguf_w_scalar(w, "s.f64", GGUF_T_F64, &d);
	gguf_w_arr(w, "a.f64", GGUF_T_F64, f64, 2);
	gguf_w_arr(w, "a.bool", GGUF_T_BOOL, bools, 3);
	gguf_w_tensor(w, "t.bf16", 1, (uint64_t[]){ 4 }, MOE_BF16);
	return w;
}

/* Several types, ranks 1..4. */
static struct gguf_writer *types(void)
{
	struct gguf_writer *w = gguf_writer_new(3, 32);

	gguf_w_tensor(w, "t.f16", 4, (uint64_t[]){ 2, 2, 2, 2 }, MOE_F16);
	gguf_w_tensor(w, "t.q4_0", 2, (uint64_t[]){ 32, 3 }, MOE_Q4_0);
	gguf_w_tensor(w, "t.q6_k", 1, (uint64_t[]){ 256 }, MOE_Q6_K);
	gguf_w_tensor(w, "t.i8", 3, (uint64_t[]){ 5, 3, 1 }, 24);
	return w;
}

int main(int argc, char **argv)
{
	const char *dir = argc > 1 ? argv[1] : "tests/fuzz/seeds";

	return save(minimal(), dir, "gguf-minimal.gguf") |
	       save(moe(), dir, "gguf-moe.gguf") |
	       save(scalars(), dir, "gguf-v2-scalars-align64.gguf") |
	       save(types(), dir, "gguf-types.gguf");
}
