/* The layer engine against the double-precision reference in ref.c, on
 * models moe-gen writes: every architecture, every type, mixed types,
 * per-expert tensor names, the sgemm path, dynamic K, caller routing,
 * thread-count invariance, and the errors a caller can provoke. */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <moe/moeclient.h>

#include "engine.h"
#include "model.h"
#include "plan.h"
#include "topo.h"
#include "ref.h"
#include "testutil.h"

/* Relative to the largest reference value: float kernels over a few
 * hundred terms against double sums. */
#define TOL 2e-4
/* Below this selection-score gap, float and double may fairly pick
 * different experts; such tokens are not compared on their picks. */
#define TIE 1e-4

struct fixture {
	char path[256];
	struct moe_model *m;
	struct moe_mapsrc *ms;
	struct moe_engine *e;
	struct moe_expert_src src;
};

static void open_model(struct fixture *f, const char *gen_args,
		       const struct moe_engine_opts *eo)
{
	struct moe_msg err = { "" };
	int rc;

	tmp_path(f->path, sizeof(f->path), "layer");
	rc = run_cmd("%s/moe-gen %s -q %s", bin_dir(), f->path, gen_args);
	assert_int_equal(rc, 0);
	rc = moe_model_open(&f->m, f->path, &err);
	if (rc)
		fail_msg("%s", err.text);
	rc = moe_mapsrc_open(&f->ms, f->m, &f->src, &err);
	assert_int_equal(rc, 0);
	rc = moe_engine_new(&f->e, f->m, &f->src, eo, &err);
	if (rc)
		fail_msg("%s", err.text);
}

static void close_model(struct fixture *f)
{
	moe_engine_free(f->e);
	moe_mapsrc_close(f->ms);
	moe_model_close(f->m);
}

static float *random_tokens(uint32_t nt, uint32_t n_embd, uint64_t seed)
{
	struct trng r = { seed };
	float *x = malloc((size_t)nt * n_embd * sizeof(float));

	trng_fill(&r, x, (size_t)nt * n_embd, -1.7f, 1.7f);
	return x;
}

static void to_double(const float *x, double *d, size_t n)
{
	for (size_t i = 0; i < n; i++)
		d[i] = x[i];
}

/* Routing of one token against the reference: same experts in the same
 * order unless the reference calls it a near tie; same weights. */
static void check_route(const struct moe_route *got, const struct moe_route *want,
			double margin, uint32_t tok)
{
	if (margin < TIE)
		return;
	if (got->k != want->k)
		fail_msg("token %u: k %u, reference %u", tok, got->k, want->k);
	for (uint32_t i = 0; i < got->k; i++) {
		if (got->id[i] != want->id[i])
			fail_msg("token %u pick %u: expert %u, reference %u",
				 tok, i, got->id[i], want->id[i]);
		if (fabsf(got->w[i] - want->w[i]) > 1e-4f * fmaxf(1.0f, fabsf(want->w[i])))
			fail_msg("token %u pick %u: weight %g, reference %g", tok,
				 i, got->w[i], want->w[i]);
	}
}

/* Forward nt tokens through every MoE layer; compare routing and output
 * with the reference. Returns the number of tokens whose picks were
 * compared (near ties are skipped). */
static uint32_t check_layers(struct fixture *f, uint32_t nt,
			     const struct moe_route_opts *o)
{
	uint32_t n_embd = f->m->n_embd, compared = 0;
	float *x = random_tokens(nt, n_embd, 42), *y = malloc((size_t)nt * n_embd * 4);
	double *xd = malloc(n_embd * sizeof(double)), *yd = malloc(n_embd * sizeof(double));
	struct moe_route *r = calloc(nt, sizeof(*r));
	struct moe_msg err = { "" };

	for (uint32_t l = 0; l < f->m->n_layer; l++) {
		struct ref_layer *ref;

		if (!f->m->layers[l].moe)
			continue;
		if (moe_engine_forward(f->e, l, x, nt, o, r, y, &err))
			fail_msg("layer %u: %s", l, err.text);
		ref = ref_layer_load(f->m, gguf_fd(f->m->gguf), l);
		for (uint32_t t = 0; t < nt; t++) {
			struct moe_route want;
			double margin, e;

			to_double(x + (size_t)t * n_embd, xd, n_embd);
			ref_route(ref, xd, o, &want, &margin);
			check_route(&r[t], &want, margin, t);
			compared += margin >= TIE;
			ref_apply(ref, xd, &r[t], yd);
			e = max_rel_err(y + (size_t)t * n_embd, yd, n_embd, 1e-3);
			if (e > TOL)
				fail_msg("layer %u token %u: relative error %g", l, t, e);
		}
		ref_layer_free(ref);
	}
	free(x);
	free(y);
	free(xd);
	free(yd);
	free(r);
	return compared;
}

static void check_model(const char *gen_args, uint32_t nt)
{
	struct moe_engine_opts eo = { .threads = 2 };
	struct fixture f;

	open_model(&f, gen_args, &eo);
	assert_true(check_layers(&f, nt, NULL) > nt / 2);
	close_model(&f);
}

#define SMALL "--layers 2 --experts 8 --top-k 2 --embd 256 --ff 512"

static void arch_llama(void **s) { check_model("--arch llama " SMALL, 6); }
static void arch_qwen2moe(void **s) { check_model("--arch qwen2moe " SMALL, 6); }
static void arch_qwen3moe(void **s) { check_model("--arch qwen3moe " SMALL, 6); }
static void arch_olmoe(void **s) { check_model("--arch olmoe " SMALL, 6); }

/* Sigmoid gating, selection bias, 4 groups of 4 with 2 used, scale 2.5,
 * a shared expert, and a leading dense layer that is skipped. */
static void arch_deepseek2(void **s)
{
	check_model("--arch deepseek2 --layers 3 --experts 16 --top-k 4 "
		    "--embd 256 --ff 256", 8);
}

static void type_f32(void **s) { check_model(SMALL " --type F32", 4); }
static void type_f16(void **s) { check_model(SMALL " --type F16", 4); }
static void type_bf16(void **s) { check_model(SMALL " --type BF16", 4); }
static void type_q8_0(void **s) { check_model(SMALL " --type Q8_0", 4); }
static void type_q4_0(void **s) { check_model(SMALL " --type Q4_0", 4); }
static void type_q4_k(void **s) { check_model(SMALL " --type Q4_K", 4); }
static void type_q6_k(void **s) { check_model(SMALL " --type Q6_K", 4); }

static void mixed_types(void **s)
{
	check_model(SMALL " --type gate=Q4_0,up=Q8_0,down=BF16 --router-type F16", 4);
	check_model(SMALL " --type gate=Q4_K,up=F16,down=Q6_K --router-type BF16", 4);
}

static void legacy_names(void **s)
{
	check_model("--arch llama --legacy-names " SMALL, 4);
}

static void gguf_v2_wide_alignment(void **s)
{
	check_model(SMALL " --gguf-version 2 --alignment 256", 4);
}

/* Batches past blas_min take the sgemm path; they must agree with the
 * reference as closely as the streaming path does. */
static void blas_path(void **s)
{
	struct moe_engine_opts eo = { .threads = 2, .blas_min = 4 };
	struct fixture f;

	open_model(&f, SMALL " --top-k 4", &eo);
	check_layers(&f, 40, NULL);
	close_model(&f);
}

/* The same tokens with 1, 2 and 3 workers give the same bits. */
static void threads_identical(void **s)
{
	uint32_t nt = 37, n_embd = 256;
	float *x = random_tokens(nt, n_embd, 7), *y[3];
	struct moe_msg err = { "" };

	for (uint32_t th = 1; th <= 3; th++) {
		struct moe_engine_opts eo = { .threads = th, .blas_min = 16 };
		struct fixture f;

		open_model(&f, "--arch qwen2moe " SMALL " --seed 9", &eo);
		y[th - 1] = malloc((size_t)nt * n_embd * 4);
		if (moe_engine_forward(f.e, 1, x, nt, NULL, NULL, y[th - 1], &err))
			fail_msg("%s", err.text);
		close_model(&f);
	}
	assert_memory_equal(y[0], y[1], (size_t)nt * n_embd * 4);
	assert_memory_equal(y[0], y[2], (size_t)nt * n_embd * 4);
	for (int i = 0; i < 3; i++)
		free(y[i]);
	free(x);
}

/* Below the sgemm threshold a token's output does not depend on which
 * other tokens shared its batch: what lets moed batch several clients
 * and still give each the bits moe-layer gives. */
static void batch_independent(void **s)
{
	struct moe_engine_opts eo = { .threads = 2, .blas_min = UINT32_MAX };
	uint32_t nt = 20, n_embd = 256;
	float *x = random_tokens(nt, n_embd, 5);
	float *all = malloc((size_t)nt * n_embd * 4), one[256];
	struct moe_msg err = { "" };
	struct fixture f;

	open_model(&f, "--arch qwen2moe " SMALL " --type gate=Q4_K,up=Q8_0,down=Q6_K", &eo);
	if (moe_engine_forward(f.e, 1, x, nt, NULL, NULL, all, &err))
		fail_msg("%s", err.text);
	for (uint32_t t = 0; t < nt; t++) {
		if (moe_engine_forward(f.e, 1, x + t * n_embd, 1, NULL, NULL, one, &err))
			fail_msg("%s", err.text);
		assert_memory_equal(one, all + t * n_embd, sizeof(one));
	}
	close_model(&f);
	free(all);
	free(x);
}

/* A plan for 4 nodes of 2 cores (synthetic, so nothing is pinned) runs
 * each expert's rows on its owner's workers only; the output must be the
 * bits a plain pool gives, and the plan must have been fed the counts. */
static void planned_matches_plain(void **s)
{
	struct moe_topo_opts to = { .topology = "pack:4 numa:1 core:2 pu:1" };
	struct moe_msg err = { "" };
	uint32_t nt = 23, n_embd = 256;
	float *x = random_tokens(nt, n_embd, 11), *y[2];
	struct moe_topo *topo;
	struct moe_plan *plan;

	for (int planned = 0; planned < 2; planned++) {
		struct moe_engine_opts eo = { .threads = 2 };
		struct fixture f;

		open_model(&f, "--arch olmoe " SMALL " --experts 16 --seed 4", &eo);
		if (planned) {
			moe_engine_free(f.e);
			if (moe_topo_open(&topo, &to, &err) ||
			    moe_plan_new(&plan, topo, f.m, NULL, &err))
				fail_msg("%s", err.text);
			eo.plan = plan;
			if (moe_engine_new(&f.e, f.m, &f.src, &eo, &err))
				fail_msg("%s", err.text);
			assert_int_equal(moe_engine_threads(f.e), 8);
		}
		y[planned] = malloc((size_t)nt * n_embd * 4);
		if (moe_engine_forward(f.e, 1, x, nt, NULL, NULL, y[planned], &err))
			fail_msg("%s", err.text);
		if (planned) {
			uint64_t fed = 0;

			for (uint32_t e = 0; e < 16; e++)
				fed += plan->layers[1].fed[e];
			assert_int_equal(fed, nt * 2); /* top-k 2 per token */
		}
		close_model(&f);
	}
	assert_memory_equal(y[0], y[1], (size_t)nt * n_embd * 4);
	moe_plan_free(plan);
	moe_topo_close(topo);
	free(y[0]);
	free(y[1]);
	free(x);
}

/* Top-p picks between min_k and max_k experts, as the reference does. */
static void dynamic_k(void **s)
{
	struct moe_engine_opts eo = { .threads = 2 };
	struct moe_route_opts o = { .top_p = 0.5f, .min_k = 1, .max_k = 6 };
	struct moe_route_opts o2 = { .top_p = 0.99f, .min_k = 2, .max_k = 3 };
	struct fixture f;

	open_model(&f, "--arch olmoe --layers 1 --experts 16 --top-k 4 --embd 256 --ff 256", &eo);
	assert_true(check_layers(&f, 12, &o) > 6);
	assert_true(check_layers(&f, 12, &o2) > 6);
	close_model(&f);
}

/* Routing given by the caller is used as given. */
static void caller_routing(void **s)
{
	struct moe_engine_opts eo = { .threads = 2 };
	uint32_t nt = 5, n_embd = 256;
	struct moe_route r[5] = {
		{ 1, { 3 }, { 1.0f } },
		{ 2, { 0, 7 }, { 0.25f, 0.75f } },
		{ 3, { 5, 1, 2 }, { -0.5f, 2.0f, 0.125f } },
		{ 8, { 0, 1, 2, 3, 4, 5, 6, 7 }, { 1, 1, 1, 1, 1, 1, 1, 1 } },
		{ 1, { 6 }, { 0.0f } },
	};
	float *x = random_tokens(nt, n_embd, 3), *y = malloc((size_t)nt * n_embd * 4);
	double xd[256], yd[256];
	struct moe_msg err = { "" };
	struct ref_layer *ref;
	struct fixture f;

	open_model(&f, "--arch qwen2moe " SMALL, &eo);
	if (moe_engine_apply(f.e, 0, x, nt, r, y, &err))
		fail_msg("%s", err.text);
	ref = ref_layer_load(f.m, gguf_fd(f.m->gguf), 0);
	for (uint32_t t = 0; t < nt; t++) {
		to_double(x + t * n_embd, xd, n_embd);
		ref_apply(ref, xd, &r[t], yd);
		assert_true(max_rel_err(y + t * n_embd, yd, n_embd, 1e-3) < TOL);
	}
	ref_layer_free(ref);
	close_model(&f);
	free(x);
	free(y);
}

/* A source over the mapped file that holds at most `cap` experts at
 * once, as a small cache does (-MOE_ENOSPACE past that), and records the
 * order of acquires and prefetch hints. */
struct scarce {
	struct moe_expert_src inner;
	uint32_t cap, held, max_held, acquires;
	uint32_t hints, hint_layer;
	uint32_t acquires_at_hint; /* acquires when the last hint came */
};

static int scarce_acquire(void *ctx, uint32_t layer, uint32_t e,
			  struct moe_ffn_ptrs *p, struct moe_msg *err)
{
	struct scarce *c = ctx;
	int rc;

	if (c->held == c->cap)
		return moe_msgf(err, -MOE_ENOSPACE, "all %u slots in use",
				c->cap);
	rc = c->inner.acquire(c->inner.ctx, layer, e, p, err);
	if (rc >= 0) {
		c->acquires++;
		if (++c->held > c->max_held)
			c->max_held = c->held;
	}
	return rc;
}

static void scarce_release(void *ctx, uint32_t layer, uint32_t e)
{
	struct scarce *c = ctx;

	c->held--;
	c->inner.release(c->inner.ctx, layer, e);
}

static void scarce_prefetch(void *ctx, uint32_t layer, const uint32_t *ids,
			    uint32_t n)
{
	struct scarce *c = ctx;

	c->hints++;
	c->hint_layer = layer;
	c->acquires_at_hint = c->acquires;
}

static void scarce_engine(struct fixture *f, struct scarce *c, uint32_t cap,
			  struct moe_engine **e)
{
	struct moe_engine_opts eo = { .threads = 2 };
	struct moe_expert_src src = {
		.acquire = scarce_acquire, .release = scarce_release,
		.prefetch = scarce_prefetch, .ctx = c,
	};
	struct moe_msg err = { "" };

	memset(c, 0, sizeof(*c));
	c->inner = f->src;
	c->cap = cap;
	if (moe_engine_new(e, f->m, &src, &eo, &err))
		fail_msg("%s", err.text);
}

/* Layer `layer` of nt tokens through e gives the bits the fixture's
 * engine (everything at hand in the mapped file) gives. */
static void same_bits_as_mapped(struct fixture *f, struct moe_engine *e,
				uint32_t layer, const float *x, uint32_t nt)
{
	size_t n = (size_t)nt * f->m->n_embd;
	float *want = malloc(n * sizeof(float)), *got = malloc(n * sizeof(float));
	struct moe_msg err = { "" };

	if (moe_engine_forward(f->e, layer, x, nt, NULL, NULL, want, &err) ||
	    moe_engine_forward(e, layer, x, nt, NULL, NULL, got, &err))
		fail_msg("%s", err.text);
	assert_memory_equal(got, want, n * sizeof(float));
	free(want);
	free(got);
}

/* A cache that cannot hold one pass's experts at once costs waves, not
 * a failed request: 48 tokens want nearly all 16 experts of a layer,
 * the source holds 3 (fewer than top-k), and the output is still the
 * bits of an engine with everything at hand. A source holding none
 * fails the call with its own error. */
static void waves_under_scarcity(void **s)
{
	struct moe_engine_opts eo = { .threads = 2 };
	uint32_t nt = 48, n_embd = 256;
	float *x = random_tokens(nt, n_embd, 3), *y = malloc((size_t)nt * n_embd * 4);
	struct moe_msg err = { "" };
	struct moe_engine *e;
	struct scarce c;
	struct fixture f;

	open_model(&f, "--arch qwen2moe --layers 2 --experts 16 --top-k 4 --embd 256 --ff 256", &eo);
	scarce_engine(&f, &c, 3, &e);
	same_bits_as_mapped(&f, e, 1, x, nt);
	assert_true(c.max_held <= 3);
	assert_true(c.acquires > 3); /* more than one wave */
	assert_int_equal(c.held, 0); /* every expert released */
	moe_engine_free(e);

	scarce_engine(&f, &c, 0, &e);
	assert_int_equal(moe_engine_forward(e, 1, x, nt, NULL, NULL, y, &err),
			 -MOE_ENOSPACE);
	assert_non_null(strstr(err.text, "slots in use"));
	moe_engine_free(e);
	close_model(&f);
	free(x);
	free(y);
}

/* With prefetch on, an apply hints the next MoE layer once, after it has
 * taken every expert it needs (so the hint cannot evict one of them),
 * and not at all when the source cannot hold its experts at once; with
 * prefetch off, never. */
static void prefetch_after_wants(void **s)
{
	struct moe_engine_opts eo = { .threads = 2 };
	uint32_t nt = 8, n_embd = 256;
	float *x = random_tokens(nt, n_embd, 8), *y = malloc((size_t)nt * n_embd * 4);
	struct moe_route r[8];
	struct moe_msg err = { "" };
	struct moe_engine *e;
	struct scarce c;
	struct fixture f;
	uint32_t distinct = 0;
	uint8_t seen[16] = { 0 };

	open_model(&f, "--arch llama --layers 3 --experts 16 --top-k 2 --embd 256 --ff 256", &eo);
	scarce_engine(&f, &c, 16, &e);
	if (moe_engine_route(e, 0, x, nt, NULL, r, &err))
		fail_msg("%s", err.text);
	for (uint32_t t = 0; t < nt; t++)
		for (uint32_t i = 0; i < r[t].k; i++)
			distinct += !seen[r[t].id[i]]++;
	if (moe_engine_apply(e, 0, x, nt, r, y, &err))
		fail_msg("%s", err.text);
	assert_int_equal(c.hints, 0); /* off by default */
	moe_engine_set_prefetch(e, true);
	if (moe_engine_apply(e, 0, x, nt, r, y, &err))
		fail_msg("%s", err.text);
	assert_int_equal(c.hints, 1);
	assert_int_equal(c.hint_layer, 1);
	/* The first apply's experts, then all of this one's, then the hint. */
	assert_int_equal(c.acquires_at_hint, 2 * distinct);
	if (moe_engine_apply(e, 2, x, nt, r, y, &err)) /* the last layer */
		fail_msg("%s", err.text);
	assert_int_equal(c.hints, 1);
	moe_engine_free(e);

	scarce_engine(&f, &c, 2, &e); /* fewer than the pass's experts */
	moe_engine_set_prefetch(e, true);
	assert_true(distinct > 2);
	if (moe_engine_apply(e, 0, x, nt, r, y, &err))
		fail_msg("%s", err.text);
	assert_int_equal(c.hints, 0);
	moe_engine_free(e);
	close_model(&f);
	free(x);
	free(y);
}

/* A source whose odd experts are still being read when wanted: the even
 * ones are resident at once. Each expert's bytes are a private copy, and
 * the first wait spoils the resident experts' copies: an engine that
 * computes the resident experts while the others load has used them by
 * then, one that waited for every read first would compute garbage. */
struct slow {
	struct moe_expert_src inner;
	const struct moe_layer *L;
	uint8_t *copy[16][3];
	uint32_t waits;
};

static void slow_fill(struct slow *c, uint32_t e, struct moe_ffn_ptrs *p)
{
	p->gate = c->copy[e][0];
	p->up = c->copy[e][1];
	p->down = c->copy[e][2];
}

static int slow_want(void *ctx, uint32_t layer, uint32_t e,
		     struct moe_ffn_ptrs *p, struct moe_msg *err)
{
	struct slow *c = ctx;

	slow_fill(c, e, p);
	return e % 2 ? 0 : 1;
}

static int slow_wait(void *ctx, uint32_t layer, uint32_t e,
		     struct moe_ffn_ptrs *p, struct moe_msg *err)
{
	struct slow *c = ctx;
	const struct moe_ffn_mats *f = c->L->experts;

	if (!c->waits++)
		for (uint32_t x = 0; x < c->L->n_expert; x += 2) {
			memset(c->copy[x][0], 0xff, f[x].gate.size);
			memset(c->copy[x][1], 0xff, f[x].up.size);
			memset(c->copy[x][2], 0xff, f[x].down.size);
		}
	slow_fill(c, e, p);
	return 0;
}

static int slow_acquire(void *ctx, uint32_t layer, uint32_t e,
			struct moe_ffn_ptrs *p, struct moe_msg *err)
{
	slow_fill(ctx, e, p);
	return 1;
}

static void slow_release(void *ctx, uint32_t layer, uint32_t e)
{
}

static void resident_first(void **s)
{
	struct moe_engine_opts eo = { .threads = 2 };
	uint32_t nt = 24, n_embd = 256;
	float *x = random_tokens(nt, n_embd, 12);
	struct moe_expert_src src = {
		.acquire = slow_acquire, .release = slow_release,
		.want = slow_want, .wait = slow_wait,
	};
	struct moe_msg err = { "" };
	struct moe_engine *e;
	struct slow c = { .waits = 0 };
	struct fixture f;

	open_model(&f, "--arch llama --layers 1 --experts 16 --top-k 2 --embd 256 --ff 256", &eo);
	c.L = &f.m->layers[0];
	for (uint32_t id = 0; id < 16; id++) {
		struct moe_ffn_ptrs p;
		const struct moe_mat *m[3] = { &c.L->experts[id].gate,
					       &c.L->experts[id].up,
					       &c.L->experts[id].down };
		const void *from[3];

		assert_int_equal(f.src.acquire(f.src.ctx, 0, id, &p, &err) >= 0, 1);
		from[0] = p.gate;
		from[1] = p.up;
		from[2] = p.down;
		for (int i = 0; i < 3; i++) {
			c.copy[id][i] = malloc(m[i]->size);
			memcpy(c.copy[id][i], from[i], m[i]->size);
		}
		f.src.release(f.src.ctx, 0, id);
	}
	src.ctx = &c;
	if (moe_engine_new(&e, f.m, &src, &eo, &err))
		fail_msg("%s", err.text);
	same_bits_as_mapped(&f, e, 0, x, nt);
	assert_true(c.waits > 0);
	moe_engine_free(e);
	for (uint32_t i = 0; i < 16; i++)
		for (int k = 0; k < 3; k++)
			free(c.copy[i][k]);
	close_model(&f);
	free(x);
}

static void errors(void **s)
{
	struct moe_engine_opts eo = { .threads = 1 };
	struct moe_route_opts bad_p = { .top_p = 1.5f };
	struct moe_route_opts bad_k = { .top_p = 0.5f, .max_k = 9 };
	struct moe_route dup = { 2, { 1, 1 }, { 0.5f, 0.5f } };
	struct moe_route range = { 1, { 8 }, { 1.0f } };
	struct moe_msg err = { "" };
	float *x = random_tokens(1, 256, 1), y[256];
	struct fixture f;

	open_model(&f, "--arch deepseek2 --layers 2 --experts 8 --top-k 2 --embd 256 --ff 256", &eo);
	assert_int_equal(moe_engine_forward(f.e, 2, x, 1, NULL, NULL, y, &err), -EINVAL);
	assert_non_null(strstr(err.text, "layer 2"));
	assert_int_equal(moe_engine_forward(f.e, 0, x, 1, NULL, NULL, y, &err), -EINVAL);
	assert_non_null(strstr(err.text, "dense"));
	assert_int_equal(moe_engine_forward(f.e, 1, x, 1, &bad_p, NULL, y, &err), -EINVAL);
	assert_non_null(strstr(err.text, "top_p"));
	assert_int_equal(moe_engine_forward(f.e, 1, x, 1, &bad_k, NULL, y, &err), -EINVAL);
	assert_non_null(strstr(err.text, "max_k 9"));
	assert_int_equal(moe_engine_apply(f.e, 1, x, 1, &dup, y, &err), -EINVAL);
	assert_non_null(strstr(err.text, "expert 1 chosen twice"));
	assert_int_equal(moe_engine_apply(f.e, 1, x, 1, &range, y, &err), -EINVAL);
	assert_non_null(strstr(err.text, "expert id 8"));
	x[77] = NAN;
	assert_int_equal(moe_engine_forward(f.e, 1, x, 1, NULL, NULL, y, &err),
			 -MOE_EINVAL_INPUT);
	assert_non_null(strstr(err.text, "element 77"));
	x[77] = 0.5f;
	/* and it still serves after all that */
	assert_int_equal(moe_engine_forward(f.e, 1, x, 1, NULL, NULL, y, &err), 0);
	close_model(&f);
	free(x);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(arch_llama),
		cmocka_unit_test(arch_qwen2moe),
		cmocka_unit_test(arch_qwen3moe),
		cmocka_unit_test(arch_olmoe),
		cmocka_unit_test(arch_deepseek2),
		cmocka_unit_test(type_f32),
		cmocka_unit_test(type_f16),
		cmocka_unit_test(type_bf16),
		cmocka_unit_test(type_q8_0),
		cmocka_unit_test(type_q4_0),
		cmocka_unit_test(type_q4_k),
		cmocka_unit_test(type_q6_k),
		cmocka_unit_test(mixed_types),
		cmocka_unit_test(legacy_names),
		cmocka_unit_test(gguf_v2_wide_alignment),
		cmocka_unit_test(blas_path),
		cmocka_unit_test(threads_identical),
		cmocka_unit_test(batch_independent),
		cmocka_unit_test(planned_matches_plain),
		cmocka_unit_test(dynamic_k),
		cmocka_unit_test(caller_routing),
		cmocka_unit_test(waves_under_scarcity),
		cmocka_unit_test(prefetch_after_wants),
		cmocka_unit_test(resident_first),
		cmocka_unit_test(errors),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
