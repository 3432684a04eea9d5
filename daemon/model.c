/* Model index: reads an architecture's MoE keys and finds, checks and
 * records every expert's byte ranges. Shapes are checked against the
 * keys, so a later read of an expert can trust its range and geometry. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <moe/moeclient.h>

#include "dtype.h"
#include "model.h"
#include "quant.h"

static const char *const arch_names[MOE_ARCH_COUNT] = {
	[MOE_ARCH_LLAMA] = "llama",
	[MOE_ARCH_QWEN2MOE] = "qwen2moe",
	[MOE_ARCH_QWEN3MOE] = "qwen3moe",
	[MOE_ARCH_OLMOE] = "olmoe",
	[MOE_ARCH_DEEPSEEK2] = "deepseek2",
};

/* What the reference implementations fix per architecture; GGUF keys,
 * where a file has them, override these. */
static const struct arch_rule {
	bool norm_w;
	bool shared_gate; /* shared FFN scaled by sigmoid(gate . x) */
} arch_rules[MOE_ARCH_COUNT] = {
	[MOE_ARCH_LLAMA] = { .norm_w = true },
	[MOE_ARCH_QWEN2MOE] = { .norm_w = false, .shared_gate = true },
	[MOE_ARCH_QWEN3MOE] = { .norm_w = true },
	[MOE_ARCH_OLMOE] = { .norm_w = false },
	[MOE_ARCH_DEEPSEEK2] = { .norm_w = false },
};

/* Names of everything missing, gathered so one error lists them all. */
struct missing {
	char text[400];
	size_t len;
	unsigned n;
};

static void missing_add(struct missing *ms, const char *name)
{
	int w;

	if (ms->n++ > 0 && ms->len < sizeof(ms->text))
		ms->len += (size_t)snprintf(ms->text + ms->len,
					    sizeof(ms->text) - ms->len, ", ");
	if (ms->len >= sizeof(ms->text))
		return;
	w = snprintf(ms->text + ms->len, sizeof(ms->text) - ms->len, "%s",
		     name);
	ms->len += (size_t)w;
	if (ms->len >= sizeof(ms->text))
		memcpy(ms->text + sizeof(ms->text) - 4, "...", 4);
}

/* The keys one model is read from. */
struct hparams {
	uint32_t n_layer, n_embd, n_expert, n_used;
	uint32_t n_ff_exp;  /* 0 when the file has no such key */
	uint32_t n_shared, n_ff_shexp;
	uint32_t n_dense_lead;
	uint32_t n_group, n_group_used;
	uint32_t gating;
	bool norm_w;
	float w_scale;
};

struct indexer {
	struct moe_model *m;
	const struct gguf_file *g;
	const char *arch;
	struct hparams hp;
	struct missing miss;
	struct moe_msg *err;
};

static int key_u32(struct indexer *ix, const char *suffix, uint32_t *out,
		   bool required)
{
	char key[128];
	int rc;

	snprintf(key, sizeof(key), "%s.%s", ix->arch, suffix);
	rc = gguf_get_u32(ix->g, key, out, ix->err);
	if (rc == -ENOENT && required)
		missing_add(&ix->miss, key);
	return rc == -ENOENT ? 0 : rc;
}

static int key_f32(struct indexer *ix, const char *suffix, float *out)
{
	char key[128];
	int rc;

	snprintf(key, sizeof(key), "%s.%s", ix->arch, suffix);
	rc = gguf_get_f32(ix->g, key, out, ix->err);
	return rc == -ENOENT ? 0 : rc;
}

static int key_bool(struct indexer *ix, const char *suffix, bool *out)
{
	char key[128];
	int rc;

	snprintf(key, sizeof(key), "%s.%s", ix->arch, suffix);
	rc = gguf_get_bool(ix->g, key, out, ix->err);
	return rc == -ENOENT ? 0 : rc;
}

static int read_hparams(struct indexer *ix)
{
	struct hparams *hp = &ix->hp;
	uint32_t n_ff = 0;
	int rc = 0;

	hp->n_group = hp->n_group_used = 1;
	hp->gating = MOE_GATING_SOFTMAX;
	hp->norm_w = arch_rules[ix->m->arch].norm_w;
	hp->w_scale = 1.0f;
	rc = rc ? rc : key_u32(ix, "block_count", &hp->n_layer, true);
	rc = rc ? rc : key_u32(ix, "embedding_length", &hp->n_embd, true);
	rc = rc ? rc : key_u32(ix, "expert_count", &hp->n_expert, true);
	rc = rc ? rc : key_u32(ix, "expert_used_count", &hp->n_used, true);
	rc = rc ? rc : key_u32(ix, "feed_forward_length", &n_ff, false);
	rc = rc ? rc : key_u32(ix, "expert_feed_forward_length",
			       &hp->n_ff_exp, false);
	rc = rc ? rc : key_u32(ix, "expert_shared_count", &hp->n_shared, false);
	rc = rc ? rc : key_u32(ix, "expert_shared_feed_forward_length",
			       &hp->n_ff_shexp, false);
	rc = rc ? rc : key_u32(ix, "leading_dense_block_count",
			       &hp->n_dense_lead, false);
	rc = rc ? rc : key_u32(ix, "expert_group_count", &hp->n_group, false);
	rc = rc ? rc : key_u32(ix, "expert_group_used_count",
			       &hp->n_group_used, false);
	rc = rc ? rc : key_u32(ix, "expert_gating_func", &hp->gating, false);
	rc = rc ? rc : key_bool(ix, "expert_weights_norm", &hp->norm_w);
	rc = rc ? rc : key_f32(ix, "expert_weights_scale", &hp->w_scale);
	if (!hp->n_ff_exp)
		hp->n_ff_exp = n_ff;
	return rc;
}

static int check_hparams(struct indexer *ix)
{
	const struct hparams *hp = &ix->hp;
	const char *path = gguf_path(ix->g);

	if (hp->n_layer == 0 || hp->n_layer > 4096 || hp->n_embd == 0)
		return moe_msgf(ix->err, -MOE_EFORMAT,
				"%s: %s.block_count %u / embedding_length %u out of range",
				path, ix->arch, hp->n_layer, hp->n_embd);
	if (hp->n_expert < 1 || hp->n_expert > MOE_MAX_EXPERTS)
		return moe_msgf(ix->err, -MOE_EFORMAT,
				"%s: %s.expert_count %u: must be 1..%u", path,
				ix->arch, hp->n_expert, MOE_MAX_EXPERTS);
	if (hp->n_used < 1 || hp->n_used > hp->n_expert ||
	    hp->n_used > MOE_MAX_K)
		return moe_msgf(ix->err, -MOE_EFORMAT,
				"%s: %s.expert_used_count %u: must be 1..%u",
				path, ix->arch, hp->n_used,
				hp->n_expert < MOE_MAX_K ? hp->n_expert : MOE_MAX_K);
	if (hp->gating != MOE_GATING_SOFTMAX && hp->gating != MOE_GATING_SIGMOID)
		return moe_msgf(ix->err, -MOE_EFORMAT,
				"%s: %s.expert_gating_func %u: expected 1 (softmax) or 2 (sigmoid)",
				path, ix->arch, hp->gating);
	if (hp->n_group < 1 || hp->n_expert % hp->n_group ||
	    hp->n_group_used < 1 || hp->n_group_used > hp->n_group ||
	    hp->n_used > hp->n_group_used * (hp->n_expert / hp->n_group))
		return moe_msgf(ix->err, -MOE_EFORMAT,
				"%s: %s.expert_group_count %u / expert_group_used_count %u do not fit %u experts choosing %u",
				path, ix->arch, hp->n_group, hp->n_group_used,
				hp->n_expert, hp->n_used);
	if (!(hp->w_scale > 0.0f && hp->w_scale < 1e6f))
		return moe_msgf(ix->err, -MOE_EFORMAT,
				"%s: %s.expert_weights_scale %g out of range",
				path, ix->arch, hp->w_scale);
	return 0;
}

static const struct gguf_tensor *find(struct indexer *ix, const char *fmt,
				      uint32_t layer, int expert,
				      bool required)
{
	const struct gguf_tensor *t;
	char name[96];

	if (expert >= 0)
		snprintf(name, sizeof(name), fmt, layer, expert);
	else
		snprintf(name, sizeof(name), fmt, layer);
	t = gguf_find_tensor(ix->g, name);
	if (!t && required)
		missing_add(&ix->miss, name);
	return t;
}

/* Record slice `slice` of t as a rows x cols matrix, after checking that
 * t's shape is exactly {cols, rows, n_slices}. */
static int take_mat(struct indexer *ix, struct moe_mat *m,
		    const struct gguf_tensor *t, uint32_t cols, uint32_t rows,
		    uint32_t n_slices, uint32_t slice, bool compute)
{
	const uint64_t want[GGUF_MAX_DIMS] = { cols, rows, n_slices, 1 };
	const struct moe_dtype_info *ti = moe_dtype_info(t->type);

	for (int d = 0; d < GGUF_MAX_DIMS; d++)
		if (t->ne[d] != want[d])
			return moe_msgf(ix->err, -MOE_EFORMAT,
					"%s: tensor '%s' (info at byte %" PRIu64 "): ne[%d] is %" PRIu64 ", expected %" PRIu64 " (shape {%u, %u, %u})",
					gguf_path(ix->g), t->name.ptr,
					t->info_off, d, t->ne[d], want[d],
					cols, rows, n_slices);
	if (compute && (!ti || !ti->compute))
		return moe_msgf(ix->err, -MOE_ETYPE,
				"%s: tensor '%s': type %s (%u) is not one moed computes with (F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q6_K)",
				gguf_path(ix->g), t->name.ptr,
				ti ? ti->name : "?", t->type);
	m->type = t->type;
	m->kern = moe_kernels(t->type);
	m->rows = rows;
	m->cols = cols;
	m->row_size = moe_row_size(t->type, cols);
	m->size = m->row_size * rows;
	m->off = t->file_off + (uint64_t)slice * m->size;
	return 0;
}

static int take_ffn(struct indexer *ix, struct moe_ffn_mats *f,
		    const struct gguf_tensor *const t[3], uint32_t n_ff,
		    uint32_t n_slices, uint32_t slice)
{
	uint32_t n_embd = ix->hp.n_embd;
	int rc;

	rc = take_mat(ix, &f->gate, t[0], n_embd, n_ff, n_slices, slice, true);
	if (!rc)
		rc = take_mat(ix, &f->up, t[1], n_embd, n_ff, n_slices, slice,
			      true);
	if (!rc)
		rc = take_mat(ix, &f->down, t[2], n_ff, n_embd, n_slices, slice,
			      true);
	return rc;
}

static const char *const part_fused[3] = {
	"blk.%u.ffn_gate_exps.weight",
	"blk.%u.ffn_up_exps.weight",
	"blk.%u.ffn_down_exps.weight",
};
static const char *const part_single[3] = {
	"blk.%u.ffn_gate.%d.weight",
	"blk.%u.ffn_up.%d.weight",
	"blk.%u.ffn_down.%d.weight",
};
static const char *const part_shared[3] = {
	"blk.%u.ffn_gate_shexp.weight",
	"blk.%u.ffn_up_shexp.weight",
	"blk.%u.ffn_down_shexp.weight",
};

/* n_ff of the experts: from the tensor, checked against the key. */
static int expert_ff(struct indexer *ix, const struct gguf_tensor *gate,
		     uint32_t *n_ff)
{
	uint64_t ne1 = gate->ne[1];

	if (ne1 == 0 || ne1 > UINT32_MAX ||
	    (ix->hp.n_ff_exp && ne1 != ix->hp.n_ff_exp))
		return moe_msgf(ix->err, -MOE_EFORMAT,
				"%s: tensor '%s': %" PRIu64 " rows, but %s.expert_feed_forward_length says %u",
				gguf_path(ix->g), gate->name.ptr, ne1,
				ix->arch, ix->hp.n_ff_exp);
	*n_ff = (uint32_t)ne1;
	return 0;
}

static int index_experts(struct indexer *ix, struct moe_layer *L)
{
	const struct gguf_tensor *t[3];
	uint32_t i = L->index;
	int rc;

	for (int p = 0; p < 3; p++)
		t[p] = find(ix, part_fused[p], i, -1, false);
	if (t[0] && t[1] && t[2]) {
		rc = expert_ff(ix, t[0], &L->n_ff);
		for (uint32_t e = 0; !rc && e < L->n_expert; e++)
			rc = take_ffn(ix, &L->experts[e], t, L->n_ff,
				      L->n_expert, e);
		return rc;
	}
	if (!find(ix, part_single[0], i, 0, false)) {
		for (int p = 0; p < 3; p++)
			if (!t[p])
				find(ix, part_fused[p], i, -1, true);
		return 0;
	}
	/* Older files store each expert as its own 2-D tensors. */
	for (uint32_t e = 0; e < L->n_expert; e++) {
		int missing = 0;

		for (int p = 0; p < 3; p++) {
			t[p] = find(ix, part_single[p], i, (int)e, true);
			missing |= !t[p];
		}
		if (missing)
			continue;
		rc = e == 0 ? expert_ff(ix, t[0], &L->n_ff) : 0;
		if (!rc)
			rc = take_ffn(ix, &L->experts[e], t, L->n_ff, 1, 0);
		if (rc)
			return rc;
	}
	return 0;
}

static int index_shared(struct indexer *ix, struct moe_layer *L)
{
	const struct gguf_tensor *t[3], *gate;
	uint32_t i = L->index;
	bool want = ix->hp.n_shared > 0;
	int rc;

	for (int p = 0; p < 3; p++)
		t[p] = find(ix, part_shared[p], i, -1, false);
	if (!t[0] && !t[1] && !t[2] && !want)
		return 0;
	if (!t[0] || !t[1] || !t[2]) {
		for (int p = 0; p < 3; p++)
			find(ix, part_shared[p], i, -1, true);
		return 0;
	}
	L->has_shared = true;
	L->n_shared = want ? ix->hp.n_shared : 1;
	L->n_ff_shared = t[0]->ne[1] <= UINT32_MAX ? (uint32_t)t[0]->ne[1] : 0;
	if (!L->n_ff_shared ||
	    (ix->hp.n_ff_shexp && L->n_ff_shared != ix->hp.n_ff_shexp))
		return moe_msgf(ix->err, -MOE_EFORMAT,
				"%s: tensor '%s': %" PRIu64 " rows, but %s.expert_shared_feed_forward_length says %u",
				gguf_path(ix->g), t[0]->name.ptr, t[0]->ne[1],
				ix->arch, ix->hp.n_ff_shexp);
	rc = take_ffn(ix, &L->shared, t, L->n_ff_shared, 1, 0);
	if (rc || !arch_rules[ix->m->arch].shared_gate)
		return rc;
	gate = find(ix, "blk.%u.ffn_gate_inp_shexp.weight", i, -1, true);
	if (!gate)
		return 0;
	L->has_shared_gate = true;
	return take_mat(ix, &L->shared_gate, gate, ix->hp.n_embd, 1, 1, 0,
			true);
}

static int index_router(struct indexer *ix, struct moe_layer *L,
			const struct gguf_tensor *router)
{
	const struct gguf_tensor *bias;
	int rc;

	rc = take_mat(ix, &L->router, router, ix->hp.n_embd, L->n_expert, 1,
		      0, true);
	bias = find(ix, "blk.%u.exp_probs_b.bias", L->index, -1, false);
	if (rc || !bias)
		return rc;
	if (bias->type != MOE_F32)
		return moe_msgf(ix->err, -MOE_EFORMAT,
				"%s: tensor '%s': selection bias must be F32, is type %u",
				gguf_path(ix->g), bias->name.ptr, bias->type);
	L->has_bias = true;
	return take_mat(ix, &L->bias, bias, L->n_expert, 1, 1, 0, true);
}

static int index_layer(struct indexer *ix, struct moe_layer *L)
{
	const struct hparams *hp = &ix->hp;
	const struct gguf_tensor *router;
	int rc;

	router = find(ix, "blk.%u.ffn_gate_inp.weight", L->index, -1, false);
	if (!router && L->index < hp->n_dense_lead)
		return 0; /* dense: left to the client */
	if (!router) {
		find(ix, "blk.%u.ffn_gate_inp.weight", L->index, -1, true);
		return 0;
	}
	L->moe = true;
	L->n_expert = hp->n_expert;
	L->n_used = hp->n_used;
	L->n_group = hp->n_group;
	L->n_group_used = hp->n_group_used;
	L->gating = (enum moe_gating)hp->gating;
	L->norm_w = hp->norm_w;
	L->w_scale = hp->w_scale;
	L->experts = calloc(L->n_expert, sizeof(*L->experts));
	if (!L->experts)
		return moe_msgf(ix->err, -ENOMEM, "out of memory");
	rc = index_router(ix, L, router);
	if (!rc)
		rc = index_experts(ix, L);
	if (!rc)
		rc = index_shared(ix, L);
	if (rc || ix->miss.n)
		return rc;
	for (uint32_t e = 0; e < L->n_expert; e++) {
		const struct moe_ffn_mats *f = &L->experts[e];
		uint64_t b = f->gate.size + f->up.size + f->down.size;

		if (b > L->expert_bytes)
			L->expert_bytes = b; /* per-expert tensors may differ */
	}
	return 0;
}

static int find_arch(struct indexer *ix)
{
	struct gguf_str s;
	int rc, a;

	rc = gguf_get_str(ix->g, "general.architecture", &s, ix->err);
	if (rc == -ENOENT)
		return moe_msgf(ix->err, -MOE_EMISSING,
				"%s: missing key general.architecture",
				gguf_path(ix->g));
	if (rc)
		return rc;
	a = moe_arch_by_name(s.ptr);
	if (a < 0)
		return moe_msgf(ix->err, -MOE_EARCH,
				"%s: general.architecture '%.64s' is not one moed serves (llama, qwen2moe, qwen3moe, olmoe, deepseek2)",
				gguf_path(ix->g), s.ptr);
	ix->m->arch = (enum moe_arch)a;
	ix->arch = arch_names[a];
	return 0;
}

static void summarise(struct moe_model *m)
{
	m->first_moe_layer = m->n_layer;
	for (uint32_t i = 0; i < m->n_layer; i++) {
		const struct moe_layer *L = &m->layers[i];

		if (!L->moe)
			continue;
		if (m->first_moe_layer == m->n_layer)
			m->first_moe_layer = i;
		m->n_moe_layers++;
		if (L->n_expert > m->max_expert)
			m->max_expert = L->n_expert;
		if (L->n_ff > m->max_ff)
			m->max_ff = L->n_ff;
		if (L->n_ff_shared > m->max_ff)
			m->max_ff = L->n_ff_shared;
	}
}

static int index_all(struct indexer *ix)
{
	struct moe_model *m = ix->m;
	int rc;

	rc = find_arch(ix);
	if (!rc)
		rc = read_hparams(ix);
	if (!rc && ix->miss.n)
		goto missing;
	if (!rc)
		rc = check_hparams(ix);
	if (rc)
		return rc;
	m->n_layer = ix->hp.n_layer;
	m->n_embd = ix->hp.n_embd;
	m->layers = calloc(m->n_layer, sizeof(*m->layers));
	if (!m->layers)
		return moe_msgf(ix->err, -ENOMEM, "out of memory");
	for (uint32_t i = 0; i < m->n_layer; i++) {
		m->layers[i].index = i;
		rc = index_layer(ix, &m->layers[i]);
		if (rc)
			return rc;
	}
	if (ix->miss.n)
		goto missing;
	summarise(m);
	if (m->n_moe_layers == 0)
		return moe_msgf(ix->err, -MOE_EMISSING,
				"%s: no MoE layers (no blk.N.ffn_gate_inp.weight)",
				gguf_path(ix->g));
	return 0;
missing:
	return moe_msgf(ix->err, -MOE_EMISSING, "%s (%s): %u missing: %s",
			gguf_path(ix->g), ix->arch, ix->miss.n, ix->miss.text);
}

static void free_layers(struct moe_model *m)
{
	if (!m->layers)
		return;
	for (uint32_t i = 0; i < m->n_layer; i++)
		free(m->layers[i].experts);
	free(m->layers);
	m->layers = NULL;
}

int moe_model_index(struct moe_model **out, struct gguf_file *g,
		    struct moe_msg *err)
{
	struct indexer ix = { .g = g, .err = err };
	int rc;

	ix.m = calloc(1, sizeof(*ix.m));
	if (!ix.m)
		return moe_msgf(err, -ENOMEM, "out of memory");
	rc = index_all(&ix);
	if (rc) {
		free_layers(ix.m);
		free(ix.m);
		return rc;
	}
	ix.m->gguf = g;
	*out = ix.m;
	return 0;
}

int moe_model_open(struct moe_model **out, const char *path,
		   struct moe_msg *err)
{
	struct gguf_file *g;
	int rc;

	rc = gguf_open(&g, path, err);
	if (rc)
		return rc;
	rc = moe_model_index(out, g, err);
	if (rc)
		gguf_close(g);
	return rc;
}

void moe_model_close(struct moe_model *m)
{
	if (!m)
		return;
	free_layers(m);
	gguf_close(m->gguf);
	free(m);
}

const char *moe_arch_name(enum moe_arch a)
{
	return (unsigned)a < MOE_ARCH_COUNT ? arch_names[a] : "?";
}

int moe_arch_by_name(const char *name)
{
	for (int a = 0; a < MOE_ARCH_COUNT; a++)
		if (strcmp(name, arch_names[a]) == 0)
			return a;
	return -1;
}

static uint64_t pad64(uint64_t n)
{
	return (n + 63) & ~63ull;
}

uint64_t moe_layer_pinned_bytes(const struct moe_layer *L)
{
	uint64_t n = pad64(L->router.size);

	if (L->has_bias)
		n += pad64(L->bias.size);
	if (L->has_shared)
		n += pad64(L->shared.gate.size) + pad64(L->shared.up.size) +
		     pad64(L->shared.down.size);
	if (L->has_shared_gate)
		n += pad64(L->shared_gate.size);
	return n;
}

uint64_t moe_model_pinned_bytes(const struct moe_model *m)
{
	uint64_t sum = 0;

	for (uint32_t i = 0; i < m->n_layer; i++)
		if (m->layers[i].moe)
			sum += moe_layer_pinned_bytes(&m->layers[i]);
	return sum;
}

uint64_t moe_model_expert_bytes(const struct moe_model *m)
{
	uint64_t sum = 0;

	for (uint32_t i = 0; i < m->n_layer; i++)
		if (m->layers[i].moe)
			sum += m->layers[i].expert_bytes *
			       m->layers[i].n_expert;
	return sum;
}
