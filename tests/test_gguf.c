/* GGUF reader and writer: files written by the writer read back the same,
 * and every malformed header fails with -MOE_EFORMAT (or -MOE_EUNSUPPORTED)
 * and a message naming the field and the byte where it was read. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <setjmp.h>
#include <cmocka.h>

#include <moe/moeclient.h>

#include "dtype.h"
#include "gguf.h"
#include "gguf_write.h"
#include "testutil.h"

#define NAME "model.gguf"

/* A file in memory: the header alone, or the whole file. */
struct blob {
	uint8_t *p;
	size_t len;
	uint64_t file_size;
};

struct fixture {
	struct blob b;           /* patched by each test */
	struct gguf_file *good;  /* the unpatched file, to find fields */
};

/* ---- helpers ---- */

static void blob_free(struct blob *b)
{
	free(b->p);
	b->p = NULL;
}

/* The writer's header followed by its data section, which holds zeros. */
static void blob_whole(struct blob *b, struct gguf_writer *w)
{
	size_t n;

	assert_int_equal(gguf_writer_header_bytes(w, &b->p, &n), 0);
	b->file_size = gguf_writer_file_size(w);
	b->len = (size_t)b->file_size;
	b->p = realloc(b->p, b->len ? b->len : 1);
	assert_non_null(b->p);
	memset(b->p + n, 0, b->len - n);
}

static int parse(const struct blob *b, struct gguf_file **f,
		 struct moe_msg *m)
{
	m->text[0] = 0;
	return gguf_parse_mem(f, b->p, b->len, b->file_size, NAME, m);
}

static struct gguf_file *parse_ok(const struct blob *b)
{
	struct gguf_file *f;
	struct moe_msg m;
	int rc = parse(b, &f, &m);

	if (rc) {
		print_error("unexpected failure %d: %s\n", rc, m.text);
		fail();
	}
	return f;
}

/* Parsing must fail with code and a message holding the file's name and
 * every string given (a NULL-terminated list). */
static void expect_fail(const struct blob *b, int code, ...)
{
	struct gguf_file *f = (struct gguf_file *)1;
	struct moe_msg m;
	const char *want;
	va_list ap;
	int rc = parse(b, &f, &m);

	if (rc != code) {
		print_error("expected %d, got %d: %s\n", code, rc, m.text);
		fail();
	}
	assert_null(f);
	assert_non_null(strstr(m.text, NAME ": "));
	va_start(ap, code);
	while ((want = va_arg(ap, const char *))) {
		if (!strstr(m.text, want)) {
			print_error("message \"%s\"\n lacks \"%s\"\n", m.text,
				    want);
			fail();
		}
	}
	va_end(ap);
}

static const char *fmt(char *buf, const char *f, ...)
{
	va_list ap;

	va_start(ap, f);
	vsnprintf(buf, 160, f, ap);
	va_end(ap);
	return buf;
}

static void put_u32(struct blob *b, uint64_t off, uint32_t v)
{
	assert_true(off + 4 <= b->len);
	memcpy(b->p + off, &v, 4);
}

static void put_u64(struct blob *b, uint64_t off, uint64_t v)
{
	assert_true(off + 8 <= b->len);
	memcpy(b->p + off, &v, 8);
}

/* Where fields are, from an info or key the reader found. */
static uint64_t kv_type_at(const struct gguf_kv *kv)
{
	return kv->file_off + 8 + kv->key.len;
}

static uint64_t kv_value_at(const struct gguf_kv *kv)
{
	return kv_type_at(kv) + 4;
}

static uint64_t t_ndims_at(const struct gguf_tensor *t)
{
	return t->info_off + 8 + t->name.len;
}

static uint64_t t_ne_at(const struct gguf_tensor *t, unsigned j)
{
	return t_ndims_at(t) + 4 + 8 * j;
}

static uint64_t t_type_at(const struct gguf_tensor *t)
{
	return t_ne_at(t, t->n_dims);
}

static uint64_t t_offset_at(const struct gguf_tensor *t)
{
	return t_type_at(t) + 4;
}

static const struct gguf_kv *good_kv(struct fixture *fx, const char *key)
{
	const struct gguf_kv *kv = gguf_find_kv(fx->good, key);

	assert_non_null(kv);
	return kv;
}

static const struct gguf_tensor *good_t(struct fixture *fx, const char *name)
{
	const struct gguf_tensor *t = gguf_find_tensor(fx->good, name);

	assert_non_null(t);
	return t;
}

/* ---- the sample: a small file shaped like a MoE model ---- */

#define T_ROUTER "blk.0.ffn_gate_inp.weight"
#define T_UP0 "blk.0.ffn_up_exps.weight"
#define T_UP1 "blk.1.ffn_up_exps.weight" /* same length as T_UP0 */
#define T_DOWN "blk.0.ffn_down_exps.weight"

static struct gguf_writer *sample_writer(uint32_t version, uint32_t align)
{
	static const char *const toks[] = { "<s>", "</s>", "hello", "" };
	static const int32_t tt[] = { 3, 3, 1, 1 };
	struct gguf_writer *w = gguf_writer_new(version, align);

	assert_non_null(w);
	assert_int_equal(gguf_w_str(w, "general.architecture", "qwen3moe"), 0);
	assert_int_equal(gguf_w_u32(w, "qwen3moe.expert_count", 8), 0);
	assert_int_equal(gguf_w_u32(w, "test.a", 1), 0);
	assert_int_equal(gguf_w_u32(w, "test.b", 2), 0);
	assert_int_equal(gguf_w_f32(w, "qwen3moe.expert_weights_scale", 2.5f),
			 0);
	assert_int_equal(gguf_w_bool(w, "qwen3moe.expert_weights_norm", true),
			 0);
	assert_int_equal(gguf_w_arr_str(w, "tokenizer.ggml.tokens", toks, 4), 0);
	assert_int_equal(gguf_w_arr(w, "tokenizer.ggml.token_type", GGUF_T_I32,
				    tt, 4), 0);
	assert_int_equal(gguf_w_tensor(w, T_ROUTER, 2, (uint64_t[]){ 16, 8 },
				       MOE_F32), 0);
	assert_int_equal(gguf_w_tensor(w, T_UP0, 3, (uint64_t[]){ 256, 2, 2 },
				       MOE_Q4_K), 0);
	assert_int_equal(gguf_w_tensor(w, T_UP1, 3, (uint64_t[]){ 256, 2, 2 },
				       MOE_Q4_K), 0);
	assert_int_equal(gguf_w_tensor(w, T_DOWN, 3, (uint64_t[]){ 32, 4, 2 },
				       MOE_Q8_0), 0);
	return w;
}

static int fixture_up(void **state, uint32_t align)
{
	struct fixture *fx = calloc(1, sizeof(*fx));
	struct gguf_writer *w = sample_writer(3, align);

	blob_whole(&fx->b, w);
	gguf_writer_free(w);
	fx->good = parse_ok(&fx->b);
	*state = fx;
	return 0;
}

static int setup(void **state)
{
	return fixture_up(state, GGUF_DEFAULT_ALIGNMENT);
}

static int setup_align64(void **state)
{
	return fixture_up(state, 64);
}

static int teardown(void **state)
{
	struct fixture *fx = *state;

	gguf_close(fx->good);
	blob_free(&fx->b);
	free(fx);
	return 0;
}

/* ---- round trips ---- */

static void check_sample(const struct gguf_file *f, uint32_t version)
{
	const struct gguf_kv *kv;
	const struct gguf_str *s;
	const struct gguf_tensor *t;

	assert_int_equal(gguf_version(f), version);
	/* the writer adds general.alignment when it is not the default */
	assert_int_equal(gguf_n_kv(f),
			 8 + (gguf_alignment(f) != GGUF_DEFAULT_ALIGNMENT));
	assert_int_equal(gguf_n_tensors(f), 4);
	kv = gguf_find_kv(f, "tokenizer.ggml.tokens");
	assert_non_null(kv);
	assert_int_equal(kv->type, GGUF_T_ARRAY);
	assert_int_equal(kv->v.arr.type, GGUF_T_STRING);
	assert_int_equal(kv->v.arr.n, 4);
	s = kv->v.arr.data;
	assert_string_equal(s[2].ptr, "hello");
	assert_int_equal(s[3].len, 0);
	assert_string_equal(s[3].ptr, "");
	t = gguf_find_tensor(f, T_DOWN);
	assert_non_null(t);
	assert_int_equal(t->n_dims, 3);
	assert_int_equal(t->ne[0], 32);
	assert_int_equal(t->ne[3], 1);
	assert_int_equal(t->size, 8 * 34);
	assert_int_equal(t->type, MOE_Q8_0);
}

static void roundtrip_sample(uint32_t version)
{
	struct gguf_writer *w = sample_writer(version, 32);
	struct gguf_file *f;
	struct blob b;

	blob_whole(&b, w);
	f = parse_ok(&b);
	check_sample(f, version);
	for (size_t i = 0; i < gguf_n_tensors(f); i++) {
		const struct gguf_tensor *t = gguf_tensor_at(f, i);

		assert_int_equal(t->file_off, gguf_writer_tensor_off(w, i));
		assert_int_equal(t->size, gguf_writer_tensor_size(w, i));
		assert_int_equal(t->file_off,
				 gguf_data_offset(f) + t->offset);
	}
	assert_int_equal(gguf_data_offset(f), gguf_writer_data_offset(w));
	assert_int_equal(gguf_fd(f), -1);
	assert_string_equal(gguf_path(f), NAME);
	gguf_close(f);
	gguf_writer_free(w);
	blob_free(&b);
}

static void test_sample_v3(void **state)
{
	roundtrip_sample(3);
}

static void test_sample_v2(void **state)
{
	roundtrip_sample(2);
}

struct scalar_case {
	const char *key;
	uint32_t type;
	union {
		uint8_t u8; int8_t i8; uint16_t u16; int16_t i16;
		uint32_t u32; int32_t i32; float f32; uint64_t u64;
		int64_t i64; double f64;
	} in;
	uint64_t u;   /* expected v.u */
	int64_t i;    /* expected v.i */
	double f;     /* expected v.f */
};

static const struct scalar_case scalars[] = {
	{ "s.u8", GGUF_T_U8, { .u8 = 255 }, .u = 255 },
	{ "s.i8", GGUF_T_I8, { .i8 = -128 }, .i = -128 },
	{ "s.u16", GGUF_T_U16, { .u16 = 65535 }, .u = 65535 },
	{ "s.i16", GGUF_T_I16, { .i16 = -32768 }, .i = -32768 },
	{ "s.u32", GGUF_T_U32, { .u32 = UINT32_MAX }, .u = UINT32_MAX },
	{ "s.i32", GGUF_T_I32, { .i32 = INT32_MIN }, .i = INT32_MIN },
	{ "s.f32", GGUF_T_F32, { .f32 = -0.1f }, .f = (double)-0.1f },
	{ "s.u64", GGUF_T_U64, { .u64 = UINT64_MAX }, .u = UINT64_MAX },
	{ "s.i64", GGUF_T_I64, { .i64 = INT64_MIN }, .i = INT64_MIN },
	{ "s.f64", GGUF_T_F64, { .f64 = 1e300 }, .f = 1e300 },
	{ "s.bool1", GGUF_T_BOOL, { .u8 = 1 }, .u = 1 },
	{ "s.bool0", GGUF_T_BOOL, { .u8 = 0 }, .u = 0 },
};
#define N_SCALARS (sizeof(scalars) / sizeof(scalars[0]))

static void check_scalar(const struct gguf_kv *kv, const struct scalar_case *c)
{
	assert_string_equal(kv->key.ptr, c->key);
	assert_int_equal(kv->type, c->type);
	switch (c->type) {
	case GGUF_T_I8: case GGUF_T_I16: case GGUF_T_I32: case GGUF_T_I64:
		assert_true(kv->v.i == c->i);
		break;
	case GGUF_T_F32: case GGUF_T_F64:
		assert_true(kv->v.f == c->f);
		break;
	default:
		assert_true(kv->v.u == c->u);
	}
}

static void roundtrip_scalars(uint32_t version)
{
	struct gguf_writer *w = gguf_writer_new(version, 32);
	const char *utf8 = "h\xc3\xa9llo \xe2\x9c\x93";
	struct gguf_file *f;
	struct blob b;

	for (size_t i = 0; i < N_SCALARS; i++)
		assert_int_equal(gguf_w_scalar(w, scalars[i].key,
					       scalars[i].type,
					       &scalars[i].in), 0);
	assert_int_equal(gguf_w_str(w, "s.str", utf8), 0);
	assert_int_equal(gguf_w_str(w, "s.empty", ""), 0);
	blob_whole(&b, w);
	f = parse_ok(&b);
	assert_int_equal(gguf_version(f), version);
	assert_int_equal(gguf_n_kv(f), N_SCALARS + 2);
	for (size_t i = 0; i < N_SCALARS; i++) {
		check_scalar(gguf_kv_at(f, i), &scalars[i]);
		assert_ptr_equal(gguf_find_kv(f, scalars[i].key),
				 gguf_kv_at(f, i));
	}
	assert_int_equal(gguf_kv_at(f, N_SCALARS)->type, GGUF_T_STRING);
	assert_int_equal(gguf_kv_at(f, N_SCALARS)->v.s.len, strlen(utf8));
	assert_string_equal(gguf_kv_at(f, N_SCALARS)->v.s.ptr, utf8);
	assert_string_equal(gguf_kv_at(f, N_SCALARS + 1)->v.s.ptr, "");
	assert_int_equal(gguf_n_tensors(f), 0);
	gguf_close(f);
	gguf_writer_free(w);
	blob_free(&b);
}

static void test_scalars_v3(void **state)
{
	roundtrip_scalars(3);
}

static void test_scalars_v2(void **state)
{
	roundtrip_scalars(2);
}

/* Numeric arrays of every scalar type come back byte for byte, 8-byte
 * aligned; string arrays come back NUL-terminated, empty ones too. */
static void test_arrays(void **state)
{
	struct gguf_writer *w = gguf_writer_new(3, 32);
	static const char *const strs[] = { "a", "", "longer string", "z" };
	uint8_t raw[8 * 7];
	struct gguf_file *f;
	struct blob b;
	char key[32];
	uint32_t et;

	for (size_t i = 0; i < sizeof(raw); i++)
		raw[i] = (uint8_t)(i * 37 + 11);
	for (et = 0; et < GGUF_T_COUNT; et++) {
		if (!gguf_vtype_size(et))
			continue;
		snprintf(key, sizeof(key), "a.%s", gguf_vtype_name(et));
		if (et == GGUF_T_BOOL)
			assert_int_equal(gguf_w_arr(w, key, et, (uint8_t[]){ 1, 0,
					 1 }, 3), 0);
		else
			assert_int_equal(gguf_w_arr(w, key, et, raw,
					 sizeof(raw) / gguf_vtype_size(et)), 0);
	}
	assert_int_equal(gguf_w_arr(w, "a.empty", GGUF_T_F32, NULL, 0), 0);
	assert_int_equal(gguf_w_arr_str(w, "a.strs", strs, 4), 0);
	assert_int_equal(gguf_w_arr_str(w, "a.nostrs", NULL, 0), 0);
	blob_whole(&b, w);
	f = parse_ok(&b);
	for (et = 0; et < GGUF_T_COUNT; et++) {
		const struct gguf_kv *kv;

		if (!gguf_vtype_size(et))
			continue;
		snprintf(key, sizeof(key), "a.%s", gguf_vtype_name(et));
		kv = gguf_find_kv(f, key);
		assert_non_null(kv);
		assert_int_equal(kv->type, GGUF_T_ARRAY);
		assert_int_equal(kv->v.arr.type, et);
		assert_int_equal((uintptr_t)kv->v.arr.data % 8, 0);
		if (et == GGUF_T_BOOL) {
			assert_int_equal(kv->v.arr.n, 3);
			assert_memory_equal(kv->v.arr.data,
					    ((uint8_t[]){ 1, 0, 1 }), 3);
			continue;
		}
		assert_int_equal(kv->v.arr.n, sizeof(raw) / gguf_vtype_size(et));
		assert_memory_equal(kv->v.arr.data, raw, sizeof(raw));
	}
	assert_int_equal(gguf_find_kv(f, "a.empty")->v.arr.n, 0);
	assert_int_equal(gguf_find_kv(f, "a.nostrs")->v.arr.n, 0);
	{
		const struct gguf_kv *kv = gguf_find_kv(f, "a.strs");
		const struct gguf_str *s = kv->v.arr.data;

		assert_int_equal(kv->v.arr.type, GGUF_T_STRING);
		assert_int_equal(kv->v.arr.n, 4);
		for (int i = 0; i < 4; i++) {
			assert_int_equal(s[i].len, strlen(strs[i]));
			assert_string_equal(s[i].ptr, strs[i]);
		}
	}
	gguf_close(f);
	gguf_writer_free(w);
	blob_free(&b);
}

/* Alignments other than 32 are written as general.alignment and move
 * every tensor and the data section onto their multiples. */
static void test_alignments(void **state)
{
	static const uint32_t aligns[] = { 1, 8, 32, 64, 4096 };

	for (size_t a = 0; a < sizeof(aligns) / sizeof(aligns[0]); a++) {
		struct gguf_writer *w = sample_writer(3, aligns[a]);
		const struct gguf_kv *kv;
		struct gguf_file *f;
		struct blob b;

		blob_whole(&b, w);
		f = parse_ok(&b);
		assert_int_equal(gguf_alignment(f), aligns[a]);
		assert_int_equal(gguf_data_offset(f) % aligns[a], 0);
		kv = gguf_find_kv(f, "general.alignment");
		if (aligns[a] == GGUF_DEFAULT_ALIGNMENT) {
			assert_null(kv);
		} else {
			assert_non_null(kv);
			assert_int_equal(kv->type, GGUF_T_U32);
			assert_int_equal(kv->v.u, aligns[a]);
		}
		for (size_t i = 0; i < gguf_n_tensors(f); i++) {
			const struct gguf_tensor *t = gguf_tensor_at(f, i);

			assert_int_equal(t->offset % aligns[a], 0);
			assert_int_equal(t->file_off,
					 gguf_writer_tensor_off(w, i));
		}
		check_sample(f, 3);
		gguf_close(f);
		gguf_writer_free(w);
		blob_free(&b);
	}
}

/* Every type ggml defines, in 1..4 dimensions: shape, type, size and
 * place all survive. */
static void test_all_types(void **state)
{
	static const uint64_t dims[4] = { 2, 3, 2, 5 };
	struct gguf_writer *w = gguf_writer_new(3, 32);
	struct gguf_file *f;
	struct blob b;
	char name[64];
	size_t n = 0, n_types = 0;

	for (uint32_t type = 0; type < 64; type++) {
		const struct moe_dtype_info *ti = moe_dtype_info(type);

		if (!ti)
			continue;
		n_types++;
		for (uint32_t nd = 1; nd <= 4; nd++) {
			uint64_t ne[4] = { ti->block * dims[0], dims[1],
					   dims[2], dims[3] };

			snprintf(name, sizeof(name), "t.%s.%u", ti->name, nd);
			assert_int_equal(gguf_w_tensor(w, name, nd, ne, type),
					 0);
		}
	}
	assert_true(n_types >= 30);
	blob_whole(&b, w);
	f = parse_ok(&b);
	assert_int_equal(gguf_n_tensors(f), n_types * 4);
	for (uint32_t type = 0; type < 64; type++) {
		const struct moe_dtype_info *ti = moe_dtype_info(type);

		for (uint32_t nd = 1; ti && nd <= 4; nd++, n++) {
			const struct gguf_tensor *t;
			uint64_t rows = 1;

			snprintf(name, sizeof(name), "t.%s.%u", ti->name, nd);
			t = gguf_find_tensor(f, name);
			assert_ptr_equal(t, gguf_tensor_at(f, n));
			assert_int_equal(t->type, type);
			assert_int_equal(t->n_dims, nd);
			assert_int_equal(t->ne[0], ti->block * dims[0]);
			for (uint32_t j = 1; j < 4; j++) {
				assert_int_equal(t->ne[j], j < nd ? dims[j] : 1);
				rows *= t->ne[j];
			}
			assert_int_equal(t->size,
					 moe_row_size(type, t->ne[0]) * rows);
			assert_int_equal(t->file_off,
					 gguf_writer_tensor_off(w, n));
		}
	}
	gguf_close(f);
	gguf_writer_free(w);
	blob_free(&b);
}

/* DeepSeek-sized tensor tables: every name found, misses are NULL. */
static void test_many_tensors(void **state)
{
	enum { N = 3000 };
	struct gguf_writer *w = gguf_writer_new(3, 32);
	struct gguf_file *f;
	struct blob b;
	char name[64];

	for (int i = 0; i < N; i++) {
		snprintf(name, sizeof(name), "blk.%d.ffn_up_exps.weight", i);
		assert_int_equal(gguf_w_tensor(w, name, 1, (uint64_t[]){ 8 },
					       MOE_F32), 0);
		snprintf(name, sizeof(name), "k.%d", i);
		assert_int_equal(gguf_w_u32(w, name, (uint32_t)i), 0);
	}
	blob_whole(&b, w);
	f = parse_ok(&b);
	assert_int_equal(gguf_n_tensors(f), N);
	for (int i = 0; i < N; i++) {
		const struct gguf_tensor *t;
		uint32_t v;

		snprintf(name, sizeof(name), "blk.%d.ffn_up_exps.weight", i);
		t = gguf_find_tensor(f, name);
		assert_ptr_equal(t, gguf_tensor_at(f, (size_t)i));
		assert_int_equal(t->file_off, gguf_writer_tensor_off(w, i));
		snprintf(name, sizeof(name), "k.%d", i);
		assert_int_equal(gguf_get_u32(f, name, &v, NULL), 0);
		assert_int_equal(v, i);
	}
	assert_null(gguf_find_tensor(f, "blk.3000.ffn_up_exps.weight"));
	assert_null(gguf_find_tensor(f, "blk.1.ffn_up_exps.weigh"));
	assert_null(gguf_find_tensor(f, ""));
	assert_null(gguf_find_kv(f, "k.3000"));
	gguf_close(f);
	gguf_writer_free(w);
	blob_free(&b);
}

/* ---- through real files ---- */

static void write_file(const char *path, struct gguf_writer *w)
{
	int fd = open(path, O_RDWR | O_TRUNC);

	assert_true(fd >= 0);
	assert_int_equal(gguf_writer_write_header(w, fd), 0);
	for (size_t i = 0; gguf_writer_tensor_size(w, i); i++) {
		size_t n = gguf_writer_tensor_size(w, i);
		uint8_t *d = malloc(n);

		memset(d, (int)(i + 1), n);
		assert_int_equal(pwrite(fd, d, n,
				 (off_t)gguf_writer_tensor_off(w, i)), n);
		free(d);
	}
	close(fd);
}

static void test_open_file(void **state)
{
	struct gguf_writer *w = sample_writer(3, 64);
	struct gguf_file *f;
	struct moe_msg m;
	char path[128];
	uint8_t buf[8];

	tmp_path(path, sizeof(path), "gguf");
	write_file(path, w);
	assert_int_equal(gguf_open(&f, path, &m), 0);
	check_sample(f, 3);
	assert_string_equal(gguf_path(f), path);
	assert_true(gguf_fd(f) >= 0);
	assert_int_equal(gguf_file_size(f), gguf_writer_file_size(w));
	assert_int_equal(gguf_header_bytes_read(f), gguf_file_size(f));
	for (size_t i = 0; i < gguf_n_tensors(f); i++) {
		const struct gguf_tensor *t = gguf_tensor_at(f, i);

		assert_int_equal(pread(gguf_fd(f), buf, 8, (off_t)t->file_off),
				 8);
		assert_int_equal(buf[0], i + 1);
		assert_int_equal(buf[7], i + 1);
		assert_int_equal(pread(gguf_fd(f), buf, 1,
				 (off_t)(t->file_off + t->size - 1)), 1);
		assert_int_equal(buf[0], i + 1);
	}
	gguf_close(f);
	gguf_writer_free(w);
}

/* A header past the first 64 KiB read makes the reader read more, and
 * still not the data. */
static void test_open_large_header(void **state)
{
	enum { N = 40000 };
	struct gguf_writer *w = gguf_writer_new(3, 32);
	const char **toks = malloc(N * sizeof(*toks));
	char (*store)[16] = malloc(N * sizeof(*store));
	const struct gguf_kv *kv;
	const struct gguf_str *s;
	struct gguf_file *f;
	struct moe_msg m;
	char path[128];

	for (int i = 0; i < N; i++) {
		snprintf(store[i], sizeof(store[i]), "tok%d", i);
		toks[i] = store[i];
	}
	assert_int_equal(gguf_w_arr_str(w, "tokenizer.ggml.tokens", toks, N), 0);
	assert_int_equal(gguf_w_tensor(w, "big", 1, (uint64_t[]){ 1u << 20 },
				       MOE_F32), 0);
	tmp_path(path, sizeof(path), "gguf");
	write_file(path, w);
	assert_true(gguf_writer_data_offset(w) > 4 * 65536);
	assert_int_equal(gguf_open(&f, path, &m), 0);
	assert_true(gguf_header_bytes_read(f) >= gguf_data_offset(f) - 32);
	assert_true(gguf_header_bytes_read(f) <= 2 * gguf_data_offset(f));
	kv = gguf_find_kv(f, "tokenizer.ggml.tokens");
	s = kv->v.arr.data;
	assert_int_equal(kv->v.arr.n, N);
	for (int i = 0; i < N; i++)
		assert_string_equal(s[i].ptr, store[i]);
	gguf_close(f);
	gguf_writer_free(w);
	free(toks);
	free(store);
}

/* A 100 GiB model costs its header: one read of 64 KiB, no more. */
static void test_sparse_100g(void **state)
{
	struct gguf_writer *w = sample_writer(3, 32);
	uint64_t ne[3] = { 65536, 16384, 25 }; /* F32: 100 GiB */
	const struct gguf_tensor *t;
	struct gguf_file *f;
	struct moe_msg m;
	struct stat st;
	char path[128];
	int fd, rc;

	assert_int_equal(gguf_w_tensor(w, "blk.0.huge", 3, ne, MOE_F32), 0);
	tmp_path(path, sizeof(path), "sparse");
	fd = open(path, O_RDWR);
	assert_true(fd >= 0);
	rc = gguf_writer_write_header(w, fd);
	close(fd);
	if (rc == -EFBIG || rc == -ENOSPC) {
		gguf_writer_free(w);
		skip();
	}
	assert_int_equal(rc, 0);
	assert_int_equal(stat(path, &st), 0);
	assert_true(st.st_size > (100ll << 30));
	assert_true(st.st_blocks * 512 < (1 << 20)); /* sparse */
	assert_int_equal(gguf_open(&f, path, &m), 0);
	assert_int_equal(gguf_file_size(f), (uint64_t)st.st_size);
	assert_true(gguf_header_bytes_read(f) <= 65536);
	t = gguf_find_tensor(f, "blk.0.huge");
	assert_non_null(t);
	assert_int_equal(t->size, 100ull << 30);
	assert_int_equal(t->file_off + t->size, gguf_file_size(f));
	gguf_close(f);
	unlink(path);
	gguf_writer_free(w);
}

/* A string length that fits a 3 GiB sparse file is still refused before
 * gigabytes are read for it. */
static void test_open_header_cap(void **state)
{
	struct gguf_writer *w = sample_writer(3, 32);
	struct gguf_file *f;
	struct blob b;
	struct moe_msg m;
	uint64_t at;
	char path[128];
	int fd, rc;

	blob_whole(&b, w);
	f = parse_ok(&b);
	at = kv_value_at(gguf_find_kv(f, "general.architecture"));
	gguf_close(f);
	put_u64(&b, at, 2ull << 30);
	tmp_path(path, sizeof(path), "gguf");
	fd = open(path, O_RDWR);
	assert_true(fd >= 0);
	assert_int_equal(pwrite(fd, b.p, b.len, 0), b.len);
	rc = ftruncate(fd, 3ll << 30);
	close(fd);
	blob_free(&b);
	gguf_writer_free(w);
	if (rc)
		skip();
	assert_int_equal(gguf_open(&f, path, &m), -MOE_EUNSUPPORTED);
	assert_non_null(strstr(m.text, "key 'general.architecture'"));
	assert_non_null(strstr(m.text, "past the 1024 MiB"));
	unlink(path);
}

static void test_open_errors(void **state)
{
	struct gguf_file *f = (struct gguf_file *)1;
	struct moe_msg m;

	assert_int_equal(gguf_open(&f, "/nonexistent/x.gguf", &m), -ENOENT);
	assert_null(f);
	assert_non_null(strstr(m.text, "/nonexistent/x.gguf"));
	assert_int_equal(gguf_open(&f, "/", &m), -EINVAL);
	assert_non_null(strstr(m.text, "not a regular file"));
}

/* Real files cut short fail the same way as buffers do. */
static void test_open_truncated(void **state)
{
	struct gguf_writer *w = sample_writer(3, 32);
	uint64_t cuts[] = { 0, 3, 4, 23, 24, 100, 0, 0, 0 };
	struct gguf_file *f;
	struct moe_msg m;
	char path[128];

	cuts[6] = gguf_writer_data_offset(w) - 1;
	cuts[7] = gguf_writer_data_offset(w);
	cuts[8] = gguf_writer_file_size(w) - 1;
	tmp_path(path, sizeof(path), "gguf");
	for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++) {
		write_file(path, w);
		assert_int_equal(truncate(path, (off_t)cuts[i]), 0);
		assert_int_equal(gguf_open(&f, path, &m), -MOE_EFORMAT);
		assert_null(f);
		assert_non_null(strstr(m.text, path));
	}
	gguf_writer_free(w);
}

/* ---- malformed headers ---- */

static void test_bad_magic(void **state)
{
	struct fixture *fx = *state;

	memcpy(fx->b.p, "GGML", 4);
	expect_fail(&fx->b, -MOE_EFORMAT, "bad magic \"GGML\"", "at byte 0",
		    NULL);
}

static void test_version_1(void **state)
{
	struct fixture *fx = *state;

	put_u32(&fx->b, 4, 1);
	expect_fail(&fx->b, -MOE_EUNSUPPORTED, "version 1 at byte 4", "v1",
		    NULL);
}

static void test_big_endian(void **state)
{
	struct fixture *fx = *state;

	put_u32(&fx->b, 4, 0x03000000);
	expect_fail(&fx->b, -MOE_EUNSUPPORTED, "big-endian", "at byte 4",
		    NULL);
}

static void test_version_unknown(void **state)
{
	struct fixture *fx = *state;

	put_u32(&fx->b, 4, 4);
	expect_fail(&fx->b, -MOE_EUNSUPPORTED, "version 4 at byte 4", NULL);
}

/* Every prefix of a file, taken as the whole file, fails cleanly; so
 * does every prefix of its header given as the start of the full file. */
static void test_truncated_everywhere(void **state)
{
	struct fixture *fx = *state;
	const struct gguf_tensor *last = good_t(fx, T_DOWN);
	uint64_t infos_end = t_offset_at(last) + 8;
	struct gguf_file *f;
	struct moe_msg m;
	char want[160];

	for (size_t len = 0; len < fx->b.len; len++) {
		f = (struct gguf_file *)1;
		m.text[0] = 0;
		assert_int_equal(gguf_parse_mem(&f, fx->b.p, len, len, NAME, &m),
				 -MOE_EFORMAT);
		assert_null(f);
		assert_non_null(strstr(m.text, NAME ": "));
	}
	for (size_t len = 0; len < infos_end; len++) {
		m.text[0] = 0;
		assert_int_equal(gguf_parse_mem(&f, fx->b.p, len,
						fx->b.file_size, NAME, &m),
				 -MOE_EFORMAT);
		fmt(want, "only the first %zu bytes were given", len);
		if (!strstr(m.text, want) || !strstr(m.text, "truncated: ")) {
			print_error("len %zu: %s\n", len, m.text);
			fail();
		}
	}
}

static void test_truncated_message(void **state)
{
	struct fixture *fx = *state;
	const struct gguf_tensor *t = good_t(fx, T_UP0);
	char want[160];

	fx->b.len = fx->b.file_size = t_offset_at(t) + 3;
	expect_fail(&fx->b, -MOE_EFORMAT, "tensor '" T_UP0 "'",
		    fmt(want, "truncated: offset at byte %" PRIu64 " needs 8 "
			"bytes but the file ends at byte %" PRIu64,
			t_offset_at(t), t_offset_at(t) + 3), NULL);
}

static void test_n_kv_huge(void **state)
{
	struct fixture *fx = *state;

	put_u64(&fx->b, 16, 1ull << 60);
	expect_fail(&fx->b, -MOE_EFORMAT,
		    "n_kv 1152921504606846976 at byte 16 cannot fit", NULL);
}

static void test_n_tensors_huge(void **state)
{
	struct fixture *fx = *state;

	put_u64(&fx->b, 8, UINT64_MAX);
	expect_fail(&fx->b, -MOE_EFORMAT,
		    "n_tensors 18446744073709551615 at byte 8 cannot fit",
		    NULL);
}

static void test_key_length_huge(void **state)
{
	struct fixture *fx = *state;
	const struct gguf_kv *kv = good_kv(fx, "test.a");
	char want[2][160];

	put_u64(&fx->b, kv->file_off, 1ull << 40);
	expect_fail(&fx->b, -MOE_EFORMAT,
		    fmt(want[0], "key #2 (at byte %" PRIu64 ")", kv->file_off),
		    fmt(want[1], "key length 1099511627776 at byte %" PRIu64
			" exceeds the limit", kv->file_off), NULL);
}

static void test_string_length_huge(void **state)
{
	struct fixture *fx = *state;
	const struct gguf_kv *kv = good_kv(fx, "general.architecture");
	char want[160];

	put_u64(&fx->b, kv_value_at(kv), 1ull << 40);
	expect_fail(&fx->b, -MOE_EFORMAT, "key 'general.architecture' (at byte",
		    fmt(want, "string value length 1099511627776 at byte %"
			PRIu64 " runs past the end of the file",
			kv_value_at(kv)), NULL);
}

static void test_empty_key(void **state)
{
	struct fixture *fx = *state;
	const struct gguf_kv *kv = good_kv(fx, "test.b");
	char want[160];

	put_u64(&fx->b, kv->file_off, 0);
	expect_fail(&fx->b, -MOE_EFORMAT,
		    fmt(want, "key at byte %" PRIu64 " is empty", kv->file_off),
		    NULL);
}

static void test_unknown_value_type(void **state)
{
	struct fixture *fx = *state;
	const struct gguf_kv *kv = good_kv(fx, "test.a");
	char want[2][160];

	put_u32(&fx->b, kv_type_at(kv), 13);
	expect_fail(&fx->b, -MOE_EFORMAT,
		    fmt(want[0], "key 'test.a' (at byte %" PRIu64 ")",
			kv->file_off),
		    fmt(want[1], "value type 13 at byte %" PRIu64
			" is unknown", kv_type_at(kv)), NULL);
}

static void test_unknown_array_type(void **state)
{
	struct fixture *fx = *state;
	const struct gguf_kv *kv = good_kv(fx, "tokenizer.ggml.token_type");
	char want[160];

	put_u32(&fx->b, kv_value_at(kv), 0x80000000u);
	expect_fail(&fx->b, -MOE_EFORMAT, "key 'tokenizer.ggml.token_type'",
		    fmt(want, "array element type 2147483648 at byte %" PRIu64
			" is unknown", kv_value_at(kv)), NULL);
}

static void test_nested_array(void **state)
{
	struct fixture *fx = *state;
	const struct gguf_kv *kv = good_kv(fx, "tokenizer.ggml.token_type");
	char want[160];

	put_u32(&fx->b, kv_value_at(kv), GGUF_T_ARRAY);
	expect_fail(&fx->b, -MOE_EUNSUPPORTED,
		    fmt(want, "array element type at byte %" PRIu64
			" is array: nested arrays are not supported",
			kv_value_at(kv)), NULL);
}

static void test_array_count_huge(void **state)
{
	struct fixture *fx = *state;
	const struct gguf_kv *kv = good_kv(fx, "tokenizer.ggml.token_type");
	char want[160];

	put_u64(&fx->b, kv_value_at(kv) + 4, 1ull << 61);
	expect_fail(&fx->b, -MOE_EFORMAT,
		    fmt(want, "array count 2305843009213693952 at byte %" PRIu64
			": 4-byte elements run past", kv_value_at(kv) + 4),
		    NULL);
}

static void test_string_array_count_huge(void **state)
{
	struct fixture *fx = *state;
	const struct gguf_kv *kv = good_kv(fx, "tokenizer.ggml.tokens");
	char want[160];

	put_u64(&fx->b, kv_value_at(kv) + 4, UINT64_MAX / 2);
	expect_fail(&fx->b, -MOE_EFORMAT, "key 'tokenizer.ggml.tokens'",
		    fmt(want, "array count 9223372036854775807 at byte %"
			PRIu64 ": that many strings cannot fit",
			kv_value_at(kv) + 4), NULL);
}

/* A count that passes the size check (every string could be empty) but
 * that the strings actually there overrun. */
static void test_string_array_overrun(void **state)
{
	struct fixture *fx = *state;
	const struct gguf_kv *kv = good_kv(fx, "tokenizer.ggml.tokens");
	uint64_t first = kv_value_at(kv) + 12;

	put_u64(&fx->b, first - 8, (fx->b.file_size - first) / 8);
	expect_fail(&fx->b, -MOE_EFORMAT, "key 'tokenizer.ggml.tokens'",
		    "string element length", NULL);
}

static void test_bad_bool(void **state)
{
	struct fixture *fx = *state;
	const struct gguf_kv *kv = good_kv(fx, "qwen3moe.expert_weights_norm");
	char want[160];

	fx->b.p[kv_value_at(kv)] = 2;
	expect_fail(&fx->b, -MOE_EFORMAT,
		    fmt(want, "bool value 2 at byte %" PRIu64
			" is neither 0 nor 1", kv_value_at(kv)), NULL);
}

static void test_duplicate_key(void **state)
{
	struct fixture *fx = *state;
	const struct gguf_kv *a = good_kv(fx, "test.a");
	const struct gguf_kv *b = good_kv(fx, "test.b");
	char want[2][160];

	fx->b.p[b->file_off + 8 + 5] = 'a';
	expect_fail(&fx->b, -MOE_EFORMAT,
		    fmt(want[0], "key 'test.a' (at byte %" PRIu64 ")",
			b->file_off),
		    fmt(want[1], "duplicate key: it is already defined at "
			"byte %" PRIu64, a->file_off), NULL);
}

static void test_unknown_tensor_type(void **state)
{
	struct fixture *fx = *state;
	const struct gguf_tensor *t = good_t(fx, T_UP0);
	char want[2][160];

	put_u32(&fx->b, t_type_at(t), 4); /* Q4_2, retired */
	expect_fail(&fx->b, -MOE_EFORMAT,
		    fmt(want[0], "tensor '" T_UP0 "' (info at byte %" PRIu64
			")", t->info_off),
		    fmt(want[1], "type 4 at byte %" PRIu64
			" is not a known ggml type", t_type_at(t)), NULL);
}

static void test_ndims_zero(void **state)
{
	struct fixture *fx = *state;
	const struct gguf_tensor *t = good_t(fx, T_DOWN);
	char want[160];

	put_u32(&fx->b, t_ndims_at(t), 0);
	expect_fail(&fx->b, -MOE_EFORMAT, "tensor '" T_DOWN "'",
		    fmt(want, "n_dims 0 at byte %" PRIu64 " is not in 1..4",
			t_ndims_at(t)), NULL);
}

static void test_ndims_five(void **state)
{
	struct fixture *fx = *state;
	const struct gguf_tensor *t = good_t(fx, T_ROUTER);
	char want[160];

	put_u32(&fx->b, t_ndims_at(t), 5);
	expect_fail(&fx->b, -MOE_EFORMAT, "tensor '" T_ROUTER "'",
		    fmt(want, "n_dims 5 at byte %" PRIu64 " is not in 1..4",
			t_ndims_at(t)), NULL);
}

static void test_dim_zero(void **state)
{
	struct fixture *fx = *state;
	const struct gguf_tensor *t = good_t(fx, T_UP1);
	char want[160];

	put_u64(&fx->b, t_ne_at(t, 1), 0);
	expect_fail(&fx->b, -MOE_EFORMAT, "tensor '" T_UP1 "'",
		    fmt(want, "ne[1] at byte %" PRIu64 " is 0", t_ne_at(t, 1)),
		    NULL);
}

static void test_dim_overflow(void **state)
{
	struct fixture *fx = *state;
	const struct gguf_tensor *t = good_t(fx, T_UP0);
	char want[160];

	put_u64(&fx->b, t_ne_at(t, 1), 1ull << 40);
	put_u64(&fx->b, t_ne_at(t, 2), 1ull << 40);
	expect_fail(&fx->b, -MOE_EFORMAT, "tensor '" T_UP0 "'",
		    fmt(want, "ne[2] = 1099511627776 at byte %" PRIu64
			" overflows the element count", t_ne_at(t, 2)), NULL);
}

/* 2^62 F32 elements count fine but are 2^64 bytes. */
static void test_size_overflow(void **state)
{
	struct fixture *fx = *state;
	const struct gguf_tensor *t = good_t(fx, T_ROUTER);

	put_u64(&fx->b, t_ne_at(t, 1), 1ull << 58);
	expect_fail(&fx->b, -MOE_EFORMAT, "tensor '" T_ROUTER "'",
		    "4611686018427387904 elements of F32 overflow the byte size",
		    NULL);
}

static void test_block_mismatch(void **state)
{
	struct fixture *fx = *state;
	const struct gguf_tensor *t = good_t(fx, T_UP0);

	put_u64(&fx->b, t_ne_at(t, 0), 255);
	expect_fail(&fx->b, -MOE_EFORMAT, "tensor '" T_UP0 "'",
		    "ne[0] = 255 is not a multiple of the Q4_K block of 256",
		    NULL);
}

static void test_misaligned_offset(void **state)
{
	struct fixture *fx = *state;
	const struct gguf_tensor *t = good_t(fx, T_UP1);
	char want[2][160];

	put_u64(&fx->b, t_offset_at(t), t->offset + 13);
	expect_fail(&fx->b, -MOE_EFORMAT,
		    fmt(want[0], "tensor '" T_UP1 "' (info at byte %" PRIu64
			")", t->info_off),
		    fmt(want[1], "offset %" PRIu64 " (at byte %" PRIu64
			") is not a multiple of alignment 32", t->offset + 13,
			t_offset_at(t)), NULL);
}

static void test_tensor_past_eof(void **state)
{
	struct fixture *fx = *state;
	const struct gguf_tensor *t = good_t(fx, T_DOWN);
	char want[160];

	put_u64(&fx->b, t_offset_at(t), 1u << 20);
	expect_fail(&fx->b, -MOE_EFORMAT, "tensor '" T_DOWN "'",
		    fmt(want, "runs past the end of the file at byte %" PRIu64,
			fx->b.file_size), NULL);
}

/* The file ends one byte before the last tensor does. */
static void test_tensor_past_eof_by_one(void **state)
{
	struct fixture *fx = *state;

	fx->b.len--;
	fx->b.file_size--;
	expect_fail(&fx->b, -MOE_EFORMAT, "tensor '" T_DOWN "'",
		    "runs past the end of the file", NULL);
}

static void test_tensor_overlap(void **state)
{
	struct fixture *fx = *state;
	const struct gguf_tensor *a = good_t(fx, T_UP0), *b = good_t(fx, T_UP1);
	char want[160];

	put_u64(&fx->b, t_offset_at(b), a->offset + 32);
	expect_fail(&fx->b, -MOE_EFORMAT, "tensor '" T_UP1 "' (info at byte",
		    fmt(want, "data at offset %" PRIu64 " overlaps tensor '"
			T_UP0 "'", a->offset + 32), NULL);
}

static void test_duplicate_tensor_name(void **state)
{
	struct fixture *fx = *state;
	const struct gguf_tensor *a = good_t(fx, T_UP0), *b = good_t(fx, T_UP1);
	char want[2][160];

	fx->b.p[b->info_off + 8 + 4] = '0'; /* blk.1 -> blk.0 */
	expect_fail(&fx->b, -MOE_EFORMAT,
		    fmt(want[0], "tensor '" T_UP0 "' (info at byte %" PRIu64
			")", b->info_off),
		    fmt(want[1], "duplicate tensor name: its info at byte %"
			PRIu64, a->info_off), NULL);
}

static void test_alignment_zero(void **state)
{
	struct fixture *fx = *state;
	const struct gguf_kv *kv = good_kv(fx, "general.alignment");
	char want[160];

	put_u32(&fx->b, kv_value_at(kv), 0);
	expect_fail(&fx->b, -MOE_EFORMAT, "key 'general.alignment' (at byte",
		    fmt(want, "alignment 0 at byte %" PRIu64 " is not a nonzero "
			"power of two", kv_value_at(kv)), NULL);
}

static void test_alignment_not_pow2(void **state)
{
	struct fixture *fx = *state;
	const struct gguf_kv *kv = good_kv(fx, "general.alignment");
	char want[160];

	put_u32(&fx->b, kv_value_at(kv), 48);
	expect_fail(&fx->b, -MOE_EFORMAT,
		    fmt(want, "alignment 48 at byte %" PRIu64 " is not a nonzero "
			"power of two", kv_value_at(kv)), NULL);
}

static void test_alignment_wrong_type(void **state)
{
	struct fixture *fx = *state;
	const struct gguf_kv *kv = good_kv(fx, "general.alignment");
	char want[160];

	put_u32(&fx->b, kv_type_at(kv), GGUF_T_I32);
	expect_fail(&fx->b, -MOE_EFORMAT, "key 'general.alignment'",
		    fmt(want, "value type i32 at byte %" PRIu64 ", but "
			"general.alignment must be u32", kv_type_at(kv)), NULL);
}

static void test_parse_mem_args(void **state)
{
	struct fixture *fx = *state;
	struct gguf_file *f;
	struct moe_msg m;

	assert_int_equal(gguf_parse_mem(&f, fx->b.p, fx->b.len, fx->b.len - 1,
					NAME, &m), -EINVAL);
	assert_int_equal(gguf_parse_mem(&f, fx->b.p, fx->b.len,
					(uint64_t)INT64_MAX + 1, NAME, &m),
			 -EINVAL);
	assert_int_equal(gguf_parse_mem(&f, NULL, 0, 0, NAME, &m), -MOE_EFORMAT);
	assert_non_null(strstr(m.text, "truncated: magic at byte 0"));
}

/* ---- accessors ---- */

static struct gguf_file *getter_file(struct blob *b)
{
	struct gguf_writer *w = gguf_writer_new(3, 32);
	int8_t neg = -5;
	uint64_t big = 1ull << 32;
	double huge = 1e300, small = 0.25;

	assert_int_equal(gguf_w_u32(w, "u32", 7), 0);
	assert_int_equal(gguf_w_scalar(w, "u8", GGUF_T_U8, &(uint8_t){ 200 }),
			 0);
	assert_int_equal(gguf_w_i32(w, "i32", 12), 0);
	assert_int_equal(gguf_w_scalar(w, "neg", GGUF_T_I8, &neg), 0);
	assert_int_equal(gguf_w_u64(w, "u64.fits", UINT32_MAX), 0);
	assert_int_equal(gguf_w_u64(w, "u64.big", big), 0);
	assert_int_equal(gguf_w_f32(w, "f32", 0.5f), 0);
	assert_int_equal(gguf_w_scalar(w, "f64", GGUF_T_F64, &small), 0);
	assert_int_equal(gguf_w_scalar(w, "f64.huge", GGUF_T_F64, &huge), 0);
	assert_int_equal(gguf_w_bool(w, "bool", true), 0);
	assert_int_equal(gguf_w_str(w, "str", "softmax"), 0);
	blob_whole(b, w);
	gguf_writer_free(w);
	return parse_ok(b);
}

static void expect_type_err(int rc, const struct moe_msg *m, const char *want)
{
	assert_int_equal(rc, -MOE_EFORMAT);
	if (!strstr(m->text, want) || !strstr(m->text, NAME ": key '")) {
		print_error("message \"%s\" lacks \"%s\"\n", m->text, want);
		fail();
	}
}

static void test_get_u32(void **state)
{
	struct blob b;
	struct gguf_file *f = getter_file(&b);
	struct moe_msg m;
	uint32_t v = 0;

	assert_int_equal(gguf_get_u32(f, "u32", &v, &m), 0);
	assert_int_equal(v, 7);
	assert_int_equal(gguf_get_u32(f, "u8", &v, &m), 0);
	assert_int_equal(v, 200);
	assert_int_equal(gguf_get_u32(f, "i32", &v, &m), 0);
	assert_int_equal(v, 12);
	assert_int_equal(gguf_get_u32(f, "u64.fits", &v, &m), 0);
	assert_int_equal(v, UINT32_MAX);
	v = 99;
	expect_type_err(gguf_get_u32(f, "neg", &v, &m), &m,
			"value -5 does not fit in u32");
	expect_type_err(gguf_get_u32(f, "u64.big", &v, &m), &m,
			"value 4294967296 does not fit in u32");
	expect_type_err(gguf_get_u32(f, "f32", &v, &m), &m,
			"type f32, expected an integer");
	expect_type_err(gguf_get_u32(f, "bool", &v, &m), &m,
			"type bool, expected an integer");
	assert_int_equal(v, 99);
	assert_int_equal(gguf_get_u32(f, "absent", &v, &m), -ENOENT);
	assert_non_null(strstr(m.text, "'absent' is missing"));
	gguf_close(f);
	blob_free(&b);
}

static void test_get_f32_bool_str(void **state)
{
	struct blob b;
	struct gguf_file *f = getter_file(&b);
	struct gguf_str s;
	struct moe_msg m;
	float x = 0;
	bool v = false;

	assert_int_equal(gguf_get_f32(f, "f32", &x, &m), 0);
	assert_true(x == 0.5f);
	assert_int_equal(gguf_get_f32(f, "f64", &x, &m), 0);
	assert_true(x == 0.25f);
	expect_type_err(gguf_get_f32(f, "f64.huge", &x, &m), &m,
			"does not fit in f32");
	expect_type_err(gguf_get_f32(f, "u32", &x, &m), &m,
			"type u32, expected f32");
	assert_int_equal(gguf_get_f32(f, "absent", &x, &m), -ENOENT);
	assert_int_equal(gguf_get_bool(f, "bool", &v, &m), 0);
	assert_true(v);
	expect_type_err(gguf_get_bool(f, "u8", &v, &m), &m,
			"type u8, expected bool");
	assert_int_equal(gguf_get_bool(f, "absent", &v, &m), -ENOENT);
	assert_int_equal(gguf_get_str(f, "str", &s, &m), 0);
	assert_int_equal(s.len, 7);
	assert_string_equal(s.ptr, "softmax");
	expect_type_err(gguf_get_str(f, "i32", &s, &m), &m,
			"type i32, expected string");
	assert_int_equal(gguf_get_str(f, "absent", &s, &m), -ENOENT);
	gguf_close(f);
	blob_free(&b);
}

static void test_accessor_bounds(void **state)
{
	struct fixture *fx = *state;

	assert_non_null(gguf_kv_at(fx->good, gguf_n_kv(fx->good) - 1));
	assert_null(gguf_kv_at(fx->good, gguf_n_kv(fx->good)));
	assert_null(gguf_kv_at(fx->good, SIZE_MAX));
	assert_non_null(gguf_tensor_at(fx->good, 3));
	assert_null(gguf_tensor_at(fx->good, 4));
	assert_null(gguf_find_kv(fx->good, "test"));
	assert_null(gguf_find_kv(fx->good, "test.a.b"));
	assert_null(gguf_find_kv(fx->good, NULL));
	assert_null(gguf_find_tensor(fx->good, NULL));
	assert_string_equal(gguf_vtype_name(GGUF_T_F64), "f64");
	assert_string_equal(gguf_vtype_name(GGUF_T_COUNT), "unknown");
	assert_int_equal(gguf_vtype_size(GGUF_T_U16), 2);
	assert_int_equal(gguf_vtype_size(GGUF_T_STRING), 0);
	assert_int_equal(gguf_vtype_size(99), 0);
}

/* ---- writer ---- */

static void test_writer_rejects(void **state)
{
	struct gguf_writer *w;
	uint64_t ne[4] = { 32, 2, 2, 2 };
	char long_name[70];

	errno = 0;
	assert_null(gguf_writer_new(1, 32));
	assert_int_equal(errno, EINVAL);
	assert_null(gguf_writer_new(3, 0));
	assert_null(gguf_writer_new(3, 48));
	w = gguf_writer_new(3, 32);
	assert_int_equal(gguf_w_u32(w, "general.alignment", 64), -EINVAL);
	assert_int_equal(gguf_w_u32(w, "", 1), -EINVAL);
	assert_int_equal(gguf_w_arr(w, "a", GGUF_T_STRING, ne, 1), -EINVAL);
	assert_int_equal(gguf_w_arr(w, "a", GGUF_T_ARRAY, ne, 1), -EINVAL);
	assert_int_equal(gguf_w_scalar(w, "a", GGUF_T_STRING, ne), -EINVAL);
	assert_int_equal(gguf_w_scalar(w, "a", GGUF_T_BOOL, &(uint8_t){ 2 }),
			 -EINVAL);
	assert_int_equal(gguf_w_tensor(w, "t", 0, ne, MOE_F32), -EINVAL);
	assert_int_equal(gguf_w_tensor(w, "t", 5, ne, MOE_F32), -EINVAL);
	assert_int_equal(gguf_w_tensor(w, "t", 2, ne, 4), -EINVAL);
	assert_int_equal(gguf_w_tensor(w, "t", 2, ne, MOE_Q4_K), -EINVAL);
	assert_int_equal(gguf_w_tensor(w, "t", 2, (uint64_t[]){ 32, 0 },
				       MOE_F32), -EINVAL);
	assert_int_equal(gguf_w_tensor(w, "t", 3, (uint64_t[]){ 1ull << 31,
				       1ull << 31, 1ull << 31 }, MOE_F32),
			 -EINVAL);
	assert_int_equal(gguf_w_tensor(w, "", 2, ne, MOE_F32), -EINVAL);
	memset(long_name, 'x', 65);
	long_name[65] = 0;
	assert_int_equal(gguf_w_tensor(w, long_name, 2, ne, MOE_F32), -EINVAL);
	long_name[64] = 0;
	assert_int_equal(gguf_w_tensor(w, long_name, 2, ne, MOE_F32), 0);
	/* nothing rejected left a trace */
	assert_int_equal(gguf_writer_data_offset(w), 128); /* 24 + 104 */
	assert_int_equal(gguf_writer_tensor_off(w, 1), 0);
	gguf_writer_free(w);
}

int main(void)
{
#define FX(t) cmocka_unit_test_setup_teardown(t, setup, teardown)
#define FX64(t) cmocka_unit_test_setup_teardown(t, setup_align64, teardown)
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_sample_v3),
		cmocka_unit_test(test_sample_v2),
		cmocka_unit_test(test_scalars_v3),
		cmocka_unit_test(test_scalars_v2),
		cmocka_unit_test(test_arrays),
		cmocka_unit_test(test_alignments),
		cmocka_unit_test(test_all_types),
		cmocka_unit_test(test_many_tensors),
		cmocka_unit_test(test_open_file),
		cmocka_unit_test(test_open_large_header),
		cmocka_unit_test(test_sparse_100g),
		cmocka_unit_test(test_open_header_cap),
		cmocka_unit_test(test_open_errors),
		cmocka_unit_test(test_open_truncated),
		FX(test_bad_magic),
		FX(test_version_1),
		FX(test_big_endian),
		FX(test_version_unknown),
		FX(test_truncated_everywhere),
		FX(test_truncated_message),
		FX(test_n_kv_huge),
		FX(test_n_tensors_huge),
		FX(test_key_length_huge),
		FX(test_string_length_huge),
		FX(test_empty_key),
		FX(test_unknown_value_type),
		FX(test_unknown_array_type),
		FX(test_nested_array),
		FX(test_array_count_huge),
		FX(test_string_array_count_huge),
		FX(test_string_array_overrun),
		FX(test_bad_bool),
		FX(test_duplicate_key),
		FX(test_unknown_tensor_type),
		FX(test_ndims_zero),
		FX(test_ndims_five),
		FX(test_dim_zero),
		FX(test_dim_overflow),
		FX(test_size_overflow),
		FX(test_block_mismatch),
		FX(test_misaligned_offset),
		FX(test_tensor_past_eof),
		FX(test_tensor_past_eof_by_one),
		FX(test_tensor_overlap),
		FX(test_duplicate_tensor_name),
		FX64(test_alignment_zero),
		FX64(test_alignment_not_pow2),
		FX64(test_alignment_wrong_type),
		FX(test_parse_mem_args),
		cmocka_unit_test(test_get_u32),
		cmocka_unit_test(test_get_f32_bool_str),
		FX(test_accessor_bounds),
		cmocka_unit_test(test_writer_rejects),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
