/* libFuzzer target for the GGUF reader and the model index: parses the
 * input as a whole file, then as the start of a larger one whose size
 * comes from its last 8 bytes, walks whatever was accepted, checking what
 * the reader promises (ranges inside the file, names found, strings
 * terminated), and indexes it as a model, checking what the index
 * promises (every expert's ranges inside the file, shapes as the keys
 * say, kernels for every matrix moed computes with). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <moe/moeclient.h>

#include "fuzz.h"
#include "dtype.h"
#include "gguf.h"
#include "model.h"

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

/* A matrix the engine reads: inside the file, its size its rows. */
static void check_mat(const struct gguf_file *f, const struct moe_mat *m,
		      uint32_t rows, uint32_t cols)
{
	CHECK(m->rows == rows && m->cols == cols);
	CHECK(m->row_size == moe_row_size(m->type, cols) && m->row_size);
	CHECK(m->size == m->row_size * rows);
	CHECK(m->off >= gguf_data_offset(f));
	CHECK(m->off <= gguf_file_size(f) &&
	      m->size <= gguf_file_size(f) - m->off);
	CHECK(m->kern != NULL); /* every type indexed is computed with */
}

static void check_ffn(const struct gguf_file *f, const struct moe_ffn_mats *x,
		      uint32_t n_ff, uint32_t n_embd)
{
	check_mat(f, &x->gate, n_ff, n_embd);
	check_mat(f, &x->up, n_ff, n_embd);
	check_mat(f, &x->down, n_embd, n_ff);
}

static void check_layer(const struct moe_model *m, const struct moe_layer *L)
{
	const struct gguf_file *f = m->gguf;
	uint64_t most = 0;

	CHECK(L->n_expert >= 1 && L->n_expert <= m->max_expert &&
	      L->n_expert <= MOE_MAX_EXPERTS);
	CHECK(L->n_used >= 1 && L->n_used <= L->n_expert &&
	      L->n_used <= MOE_MAX_K);
	CHECK(L->n_group >= 1 && L->n_group_used >= 1 &&
	      L->n_group_used <= L->n_group && L->n_expert % L->n_group == 0);
	CHECK(L->gating == MOE_GATING_SOFTMAX || L->gating == MOE_GATING_SIGMOID);
	CHECK(L->n_ff >= 1 && L->n_ff <= m->max_ff);
	check_mat(f, &L->router, L->n_expert, m->n_embd);
	if (L->has_bias) {
		check_mat(f, &L->bias, 1, L->n_expert);
		CHECK(L->bias.type == MOE_F32);
	}
	if (L->has_shared) {
		CHECK(L->n_ff_shared >= 1 && L->n_ff_shared <= m->max_ff);
		check_ffn(f, &L->shared, L->n_ff_shared, m->n_embd);
	}
	if (L->has_shared_gate)
		check_mat(f, &L->shared_gate, 1, m->n_embd);
	for (uint32_t e = 0; e < L->n_expert; e++) {
		const struct moe_ffn_mats *x = &L->experts[e];
		uint64_t b = x->gate.size + x->up.size + x->down.size;

		check_ffn(f, x, L->n_ff, m->n_embd);
		most = b > most ? b : most;
	}
	CHECK(L->expert_bytes == most);
}

/* Index an accepted file; the model takes f on success. */
static void index_model(struct gguf_file *f)
{
	struct moe_model *m = NULL;
	struct moe_msg err;
	uint32_t n_moe = 0;
	int rc;

	err.text[0] = 0;
	rc = moe_model_index(&m, f, &err);
	if (rc) {
		CHECK(rc < 0 && !m && err.text[0]);
		gguf_close(f);
		return;
	}
	CHECK(m->gguf == f && m->n_layer >= 1 && m->n_embd >= 1);
	CHECK(m->first_moe_layer < m->n_layer);
	CHECK(m->layers[m->first_moe_layer].moe);
	for (uint32_t l = 0; l < m->n_layer; l++) {
		CHECK(m->layers[l].index == l);
		if (m->layers[l].moe) {
			check_layer(m, &m->layers[l]);
			n_moe++;
		}
	}
	CHECK(n_moe == m->n_moe_layers);
	sink += moe_model_expert_bytes(m);
	moe_model_close(m);
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
	index_model(f);
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
