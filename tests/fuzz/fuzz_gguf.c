/* libFuzzer target for the GGUF reader: parses the input as a whole file,
 * then as the start of a larger one whose size comes from its last 8
 * bytes, and walks whatever was accepted, checking what the reader
 * promises (ranges inside the file, names found, strings terminated). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <moe/moeclient.h>

#include "gguf.h"

#define CHECK(c)                         \
	do {                             \
		if (!(c))                \
			__builtin_trap(); \
	} while (0)

static volatile uint64_t sink;

static void touch(const void *p, uint64_t n)
{
	const uint8_t *b = p;
	uint64_t s = 0;

	for (uint64_t i = 0; i < n; i++)
		s += b[i];
	sink += s;
}

static void walk_str(const struct gguf_str *s)
{
	touch(s->ptr, s->len);
	CHECK(s->ptr[s->len] == 0);
}

static void walk_getters(const struct gguf_file *f, const char *key)
{
	struct moe_msg m;
	struct gguf_str s;
	uint32_t u;
	float x;
	bool b;
	int rc;

	rc = gguf_get_u32(f, key, &u, &m);
	CHECK(rc == 0 || rc == -MOE_EFORMAT);
	rc = gguf_get_f32(f, key, &x, &m);
	CHECK(rc == 0 || rc == -MOE_EFORMAT);
	rc = gguf_get_bool(f, key, &b, &m);
	CHECK(rc == 0 || rc == -MOE_EFORMAT);
	rc = gguf_get_str(f, key, &s, &m);
	CHECK(rc == 0 || rc == -MOE_EFORMAT);
}

static void walk_kv(const struct gguf_file *f, const struct gguf_kv *kv)
{
	const struct gguf_kv *found;

	walk_str(&kv->key);
	CHECK(kv->type < GGUF_T_COUNT);
	/* a key with a NUL inside cannot be looked up by C string */
	if (strlen(kv->key.ptr) == kv->key.len) {
		found = gguf_find_kv(f, kv->key.ptr);
		CHECK(found == kv);
		walk_getters(f, kv->key.ptr);
	}
	if (kv->type == GGUF_T_STRING)
		walk_str(&kv->v.s);
	if (kv->type != GGUF_T_ARRAY)
		return;
	CHECK(kv->v.arr.type < GGUF_T_COUNT &&
	      kv->v.arr.type != GGUF_T_ARRAY);
	if (kv->v.arr.type == GGUF_T_STRING) {
		const struct gguf_str *s = kv->v.arr.data;

		for (uint64_t i = 0; i < kv->v.arr.n; i++)
			walk_str(&s[i]);
		return;
	}
	touch(kv->v.arr.data, kv->v.arr.n * gguf_vtype_size(kv->v.arr.type));
}

static void walk_tensor(const struct gguf_file *f, const struct gguf_tensor *t)
{
	const struct gguf_tensor *found;

	walk_str(&t->name);
	CHECK(t->n_dims >= 1 && t->n_dims <= GGUF_MAX_DIMS);
	for (int j = 0; j < GGUF_MAX_DIMS; j++)
		CHECK(t->ne[j] >= 1);
	CHECK(t->size > 0);
	CHECK(t->offset % gguf_alignment(f) == 0);
	CHECK(t->file_off == gguf_data_offset(f) + t->offset);
	CHECK(t->file_off <= gguf_file_size(f));
	CHECK(t->size <= gguf_file_size(f) - t->file_off);
	if (strlen(t->name.ptr) == t->name.len) {
		found = gguf_find_tensor(f, t->name.ptr);
		CHECK(found == t);
	}
}

static void walk(const struct gguf_file *f)
{
	uint32_t a = gguf_alignment(f);

	CHECK(a && !(a & (a - 1)));
	CHECK(gguf_version(f) == 2 || gguf_version(f) == 3);
	for (size_t i = 0; i < gguf_n_kv(f); i++)
		walk_kv(f, gguf_kv_at(f, i));
	for (size_t i = 0; i < gguf_n_tensors(f); i++)
		walk_tensor(f, gguf_tensor_at(f, i));
	CHECK(!gguf_kv_at(f, gguf_n_kv(f)));
	CHECK(!gguf_tensor_at(f, gguf_n_tensors(f)));
}

static void one(const uint8_t *data, size_t len, uint64_t file_size)
{
	struct gguf_file *f;
	struct moe_msg m;
	int rc;

	m.text[0] = 0;
	rc = gguf_parse_mem(&f, data, len, file_size, "fuzz.gguf", &m);
	if (rc) {
		CHECK(!f && rc < 0 && m.text[0]);
		return;
	}
	walk(f);
	gguf_close(f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint64_t extra;

	one(data, size, size);
	/* The same bytes as the head of a file up to 2^48 bytes longer, so
	 * tensors may lie beyond what the input holds. */
	if (size >= 8) {
		memcpy(&extra, data + size - 8, sizeof(extra));
		size -= 8;
		one(data, size, size + (extra >> 16));
	}
	return 0;
}
