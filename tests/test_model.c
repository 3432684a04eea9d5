/* Model index: the MoE shape and expert byte ranges of moe-gen's files
 * for every architecture, and one clear error for each way a file can
 * fail to be a model moed serves (forged with the GGUF writer). */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include <moe/moeclient.h>

#include "dtype.h"
#include "gguf_write.h"
#include "model.h"
#include "testutil.h"

static struct moe_model *gen(char *path, size_t len, const char *args)
{
	struct moe_msg err = { "" };
	struct moe_model *m = NULL;

	tmp_path(path, len, "model");
	assert_int_equal(run_cmd("%s/moe-gen %s -q %s", bin_dir(), path, args), 0);
	if (moe_model_open(&m, path, &err))
		fail_msg("%s", err.text);
	return m;
}

/* Every expert's three ranges lie inside its tensor, one after another. */
static void check_ranges(const struct moe_model *m)
{
	uint64_t fsize = gguf_file_size(m->gguf);

	for (uint32_t l = 0; l < m->n_layer; l++) {
		const struct moe_layer *L = &m->layers[l];

		for (uint32_t e = 0; L->moe && e < L->n_expert; e++) {
			const struct moe_ffn_mats *f = &L->experts[e];

			assert_true(f->gate.off + f->gate.size <= fsize);
			assert_true(f->down.off + f->down.size <= fsize);
			assert_int_equal(f->gate.rows, L->n_ff);
			assert_int_equal(f->gate.cols, m->n_embd);
			assert_int_equal(f->down.rows, m->n_embd);
			assert_int_equal(f->down.cols, L->n_ff);
			assert_int_equal(f->gate.size + f->up.size + f->down.size,
					 L->expert_bytes);
			if (e > 0)
				assert_int_equal(f->gate.off,
						 L->experts[e - 1].gate.off + f->gate.size);
		}
	}
}

static void shapes_per_arch(void **s)
{
	static const struct {
		const char *arch;
		bool norm, shared, shgate;
	} want[] = {
		{ "llama", true, false, false },
		{ "qwen2moe", false, true, true },
		{ "qwen3moe", true, false, false },
		{ "olmoe", false, false, false },
	};
	char path[256], args[256];

	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
		struct moe_model *m;
		const struct moe_layer *L;

		snprintf(args, sizeof(args),
			 "--arch %s --layers 3 --experts 8 --top-k 2 --embd 256 --ff 512",
			 want[i].arch);
		m = gen(path, sizeof(path), args);
		L = &m->layers[2];
		assert_string_equal(moe_arch_name(m->arch), want[i].arch);
		assert_int_equal(m->n_layer, 3);
		assert_int_equal(m->n_moe_layers, 3);
		assert_int_equal(m->n_embd, 256);
		assert_int_equal(L->n_expert, 8);
		assert_int_equal(L->n_used, 2);
		assert_int_equal(L->n_ff, 512);
		assert_int_equal(L->gating, MOE_GATING_SOFTMAX);
		assert_int_equal(L->norm_w, want[i].norm);
		assert_int_equal(L->has_shared, want[i].shared);
		assert_int_equal(L->has_shared_gate, want[i].shgate);
		assert_int_equal(L->experts[0].gate.type, MOE_Q4_K);
		assert_int_equal(L->experts[0].down.type, MOE_Q6_K);
		check_ranges(m);
		moe_model_close(m);
	}
}

static void deepseek2_shape(void **s)
{
	char path[256];
	struct moe_model *m = gen(path, sizeof(path),
		"--arch deepseek2 --layers 3 --experts 16 --top-k 4 --embd 256 --ff 256");
	const struct moe_layer *L = &m->layers[1];

	assert_false(m->layers[0].moe); /* leading dense layer */
	assert_int_equal(m->first_moe_layer, 1);
	assert_int_equal(m->n_moe_layers, 2);
	assert_int_equal(L->gating, MOE_GATING_SIGMOID);
	assert_true(L->has_bias);
	assert_int_equal(L->n_group, 4);
	assert_int_equal(L->n_group_used, 2);
	assert_true(L->norm_w);
	assert_float_equal(L->w_scale, 2.5f, 0);
	assert_true(L->has_shared);
	assert_false(L->has_shared_gate);
	assert_int_equal(L->n_ff_shared, 256);
	check_ranges(m);
	moe_model_close(m);
}

/* Old files keep each expert in tensors of its own. */
static void legacy_names(void **s)
{
	char path[256];
	struct moe_model *m = gen(path, sizeof(path),
		"--arch llama --legacy-names --layers 2 --experts 4 --top-k 2 --embd 256 --ff 256");
	const struct gguf_tensor *t = gguf_find_tensor(m->gguf, "blk.1.ffn_down.3.weight");

	assert_non_null(t);
	assert_int_equal(m->layers[1].experts[3].down.off, t->file_off);
	assert_int_equal(m->layers[1].n_expert, 4);
	moe_model_close(m);
}

static void expert_bytes_total(void **s)
{
	char path[256];
	struct moe_model *m = gen(path, sizeof(path),
		"--layers 2 --experts 4 --top-k 2 --embd 256 --ff 256 --type Q8_0");
	/* Q8_0: 34 bytes per 32 values; three 256x256 matrices an expert */
	uint64_t per = 3ull * 256 * 256 / 32 * 34;

	assert_int_equal(m->layers[0].expert_bytes, per);
	assert_int_equal(moe_model_expert_bytes(m), 2 * 4 * per);
	moe_model_close(m);
}

/* A forged llama file: keys and tensor infos only (the data is sparse). */
struct forge {
	const char *arch;
	bool no_expert_count;
	uint32_t used;
	uint32_t gating;
	uint32_t down_type;
	bool swap_down;
	const char *skip[4]; /* tensors to leave out */
};

static bool skipped(const struct forge *f, const char *name)
{
	for (int i = 0; i < 4 && f->skip[i]; i++)
		if (strcmp(f->skip[i], name) == 0)
			return true;
	return false;
}

static void forge_tensor(struct gguf_writer *w, const struct forge *f,
			 const char *name, uint32_t nd, uint64_t a, uint64_t b,
			 uint64_t c, uint32_t type)
{
	const uint64_t ne[3] = { a, b, c };

	if (!skipped(f, name))
		assert_int_equal(gguf_w_tensor(w, name, nd, ne, type), 0);
}

static int open_forged(const struct forge *f, struct moe_msg *err)
{
	struct gguf_writer *w = gguf_writer_new(3, 32);
	struct moe_model *m = NULL;
	char path[256], name[64], key[64];
	const char *a = f->arch ? f->arch : "llama";
	int fd, rc;

	assert_non_null(w);
	if (strcmp(a, "-"))
		gguf_w_str(w, "general.architecture", a);
#define K(k, v) (snprintf(key, sizeof(key), "%s.%s", a, k), gguf_w_u32(w, key, v))
	K("block_count", 2);
	K("embedding_length", 64);
	K("feed_forward_length", 32);
	if (!f->no_expert_count)
		K("expert_count", 4);
	K("expert_used_count", f->used ? f->used : 2);
	if (f->gating)
		K("expert_gating_func", f->gating);
#undef K
	for (uint32_t l = 0; l < 2; l++) {
		snprintf(name, sizeof(name), "blk.%u.ffn_gate_inp.weight", l);
		forge_tensor(w, f, name, 2, 64, 4, 1, MOE_F32);
		snprintf(name, sizeof(name), "blk.%u.ffn_gate_exps.weight", l);
		forge_tensor(w, f, name, 3, 64, 32, 4, MOE_Q8_0);
		snprintf(name, sizeof(name), "blk.%u.ffn_up_exps.weight", l);
		forge_tensor(w, f, name, 3, 64, 32, 4, MOE_Q8_0);
		snprintf(name, sizeof(name), "blk.%u.ffn_down_exps.weight", l);
		if (f->swap_down)
			forge_tensor(w, f, name, 3, 64, 32, 4, MOE_Q8_0);
		else
			forge_tensor(w, f, name, 3, 32, 64, 4,
				     f->down_type ? f->down_type : MOE_Q8_0);
	}
	tmp_path(path, sizeof(path), "forged");
	fd = open(path, O_RDWR | O_TRUNC);
	assert_true(fd >= 0);
	assert_int_equal(gguf_writer_write_header(w, fd), 0);
	close(fd);
	gguf_writer_free(w);
	rc = moe_model_open(&m, path, err);
	moe_model_close(m);
	return rc;
}

static void forged_ok(void **s)
{
	struct forge f = { 0 };
	struct moe_msg err = { "" };

	if (open_forged(&f, &err))
		fail_msg("%s", err.text);
}

static void missing_tensors_listed(void **s)
{
	struct forge f = { .skip = { "blk.1.ffn_up_exps.weight",
				     "blk.0.ffn_gate_inp.weight" } };
	struct moe_msg err = { "" };

	assert_int_equal(open_forged(&f, &err), -MOE_EMISSING);
	assert_non_null(strstr(err.text, "2 missing"));
	assert_non_null(strstr(err.text, "blk.1.ffn_up_exps.weight"));
	assert_non_null(strstr(err.text, "blk.0.ffn_gate_inp.weight"));
}

static void missing_key_listed(void **s)
{
	struct forge f = { .no_expert_count = true };
	struct moe_msg err = { "" };

	assert_int_equal(open_forged(&f, &err), -MOE_EMISSING);
	assert_non_null(strstr(err.text, "llama.expert_count"));
}

static void unknown_arch(void **s)
{
	struct forge f = { .arch = "gpt2" };
	struct forge none = { .arch = "-" };
	struct moe_msg err = { "" };

	assert_int_equal(open_forged(&f, &err), -MOE_EARCH);
	assert_non_null(strstr(err.text, "'gpt2'"));
	assert_int_equal(open_forged(&none, &err), -MOE_EMISSING);
	assert_non_null(strstr(err.text, "general.architecture"));
}

static void wrong_shape(void **s)
{
	struct forge f = { .swap_down = true };
	struct moe_msg err = { "" };

	assert_int_equal(open_forged(&f, &err), -MOE_EFORMAT);
	assert_non_null(strstr(err.text, "blk.0.ffn_down_exps.weight"));
	assert_non_null(strstr(err.text, "ne[0] is 64, expected 32"));
}

static void uncomputable_type(void **s)
{
	struct forge f = { .down_type = 6 /* Q5_0 */ };
	struct moe_msg err = { "" };

	assert_int_equal(open_forged(&f, &err), -MOE_ETYPE);
	assert_non_null(strstr(err.text, "Q5_0"));
	assert_non_null(strstr(err.text, "ffn_down_exps"));
}

static void bad_values(void **s)
{
	struct forge used = { .used = 5 };
	struct forge gating = { .gating = 3 };
	struct moe_msg err = { "" };

	assert_int_equal(open_forged(&used, &err), -MOE_EFORMAT);
	assert_non_null(strstr(err.text, "expert_used_count 5"));
	assert_int_equal(open_forged(&gating, &err), -MOE_EFORMAT);
	assert_non_null(strstr(err.text, "expert_gating_func 3"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(shapes_per_arch),
		cmocka_unit_test(deepseek2_shape),
		cmocka_unit_test(legacy_names),
		cmocka_unit_test(expert_bytes_total),
		cmocka_unit_test(forged_ok),
		cmocka_unit_test(missing_tensors_listed),
		cmocka_unit_test(missing_key_listed),
		cmocka_unit_test(unknown_arch),
		cmocka_unit_test(wrong_shape),
		cmocka_unit_test(uncomputable_type),
		cmocka_unit_test(bad_values),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
