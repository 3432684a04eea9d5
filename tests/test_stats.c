/* moed's serving figures: the latency histogram's buckets and quantiles,
 * and the per-layer pages moectl walks, on a model shape built here (a
 * dense layer, a layer of 200 experts that takes three pages, a small
 * one). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "stats.h"

/* Every uint32_t falls in the bucket whose range holds it: the buckets
 * tile the line in order, eight per power of two. */
static void buckets_tile(void **s)
{
	for (uint32_t b = 0; b + 1 < MOE_HIST_BUCKETS; b++) {
		uint32_t lo = moe_hist_low(b), next = moe_hist_low(b + 1);

		assert_true(lo < next);
		assert_int_equal(moe_hist_bucket(lo), b);
		assert_int_equal(moe_hist_bucket(next - 1), b);
		/* At most 1/8 of its low end wide: the middle is within
		 * 1/16 of any value in it. */
		assert_true((uint64_t)(next - lo) * 8 <= (uint64_t)lo || lo < 8);
	}
	assert_int_equal(moe_hist_bucket(UINT32_MAX), MOE_HIST_BUCKETS - 1);
	assert_int_equal(moe_hist_low(MOE_HIST_BUCKETS - 1), 0xf0000000u);
	for (uint32_t v = 0; v < 8; v++)
		assert_int_equal(moe_hist_bucket(v), v);
}

static void near(uint32_t got, double want)
{
	if (got < want * 15 / 16 || got > want * 17 / 16)
		fail_msg("quantile %u, expected %.0f within 1/16", got, want);
}

static void quantiles(void **s)
{
	struct moe_hist h;
	struct ipc_latency l;

	memset(&h, 0, sizeof(h));
	assert_int_equal(moe_hist_quantile(&h, 0.5), 0);
	/* 1..10000 once each, added out of order */
	for (uint32_t i = 0; i < 10000; i++)
		moe_hist_add(&h, 1 + (i * 7919u) % 10000);
	near(moe_hist_quantile(&h, 0.50), 5000);
	near(moe_hist_quantile(&h, 0.90), 9000);
	near(moe_hist_quantile(&h, 0.99), 9900);
	assert_int_equal(moe_hist_quantile(&h, 1.0), 10000);
	moe_hist_latency(&h, &l);
	assert_int_equal(l.count, 10000);
	assert_int_equal(l.sum_usec, 10000ull * 10001 / 2);
	assert_int_equal(l.max_usec, 10000);
	assert_true(l.p50_usec <= l.p90_usec && l.p90_usec <= l.p99_usec &&
		    l.p99_usec <= l.max_usec);
	/* Small values are exact; one slow request shows at p99 only. */
	memset(&h, 0, sizeof(h));
	for (int i = 0; i < 99; i++)
		moe_hist_add(&h, 3);
	moe_hist_add(&h, 250000);
	assert_int_equal(moe_hist_quantile(&h, 0.5), 3);
	assert_int_equal(moe_hist_quantile(&h, 0.99), 3);
	near(moe_hist_quantile(&h, 1.0), 250000);
	/* Never above the largest value added. */
	memset(&h, 0, sizeof(h));
	moe_hist_add(&h, 1000);
	assert_int_equal(moe_hist_quantile(&h, 0.5), 1000);
}

/* Layer 0 dense, 1 with 200 experts, 2 with 8. */
static struct moe_layer layers[3];
static struct moe_model model = { .n_layer = 3, .n_moe_layers = 2,
				  .first_moe_layer = 1, .max_expert = 200,
				  .layers = layers };

static int setup(void **s)
{
	memset(layers, 0, sizeof(layers));
	layers[1].moe = layers[2].moe = true;
	layers[1].n_expert = 200;
	layers[2].n_expert = 8;
	return 0;
}

static int ask(const struct moe_serve_stats *st, uint32_t layer,
	       uint32_t first, struct ipc_stats_layer_reply *r)
{
	struct ipc_stats_layer q;
	char why[128] = "";
	int rc;

	memset(&q, 0, sizeof(q));
	ipc_msg_init(&q.h, IPC_MSG_STATS_LAYER, sizeof(q), 0);
	q.layer = layer;
	q.first_expert = first;
	rc = moe_serve_stats_layer(st, &q, r, why, sizeof(why));
	assert_int_equal(r->h.status, rc);
	assert_int_equal(r->h.type, IPC_MSG_STATS_LAYER_REPLY);
	assert_int_equal(r->h.size, sizeof(*r));
	if (rc)
		printf("  refused: %s\n", why);
	return rc;
}

/* Tokens routed to known experts come back, page by page, as each
 * expert's load; the walk visits every MoE layer once, in order. */
static void layer_pages(void **s)
{
	struct moe_serve_stats st;
	struct moe_route r[4];
	struct ipc_stats_layer_reply p;
	uint64_t want[200] = { 0 };
	uint32_t layer = IPC_STATS_FIRST, first = 0, pages = 0, seen[3] = { 0 };

	assert_int_equal(moe_serve_stats_init(&st, &model), 0);
	memset(r, 0, sizeof(r));
	for (uint32_t t = 0; t < 4; t++) {
		r[t].k = 3;
		for (uint32_t i = 0; i < 3; i++) {
			r[t].id[i] = (t * 61 + i * 67) % 200;
			want[r[t].id[i]]++;
		}
	}
	moe_serve_stats_uses(&st, 1, r, 4, 10, 2);
	moe_serve_stats_done(&st, 1, 4, 0, 120);
	moe_serve_stats_done(&st, 1, 4, -5, 900);
	for (;;) {
		assert_int_equal(ask(&st, layer, first, &p), 0);
		assert_int_equal(p.first_expert, first);
		pages++;
		seen[p.layer]++;
		if (p.layer == 1) {
			assert_int_equal(p.requests, 2);
			assert_int_equal(p.tokens, 8);
			assert_int_equal(p.failed, 1);
			assert_int_equal(p.expert_hits, 10);
			assert_int_equal(p.expert_misses, 2);
			assert_int_equal(p.latency.count, 2);
			assert_int_equal(p.latency.max_usec, 900);
			assert_memory_equal(p.load, want + first,
					    p.n_load * sizeof(uint64_t));
		} else {
			assert_int_equal(p.requests, 0);
		}
		if (p.next_expert < p.n_expert) {
			assert_int_equal(p.n_load, IPC_STATS_PAGE_EXPERTS);
			first = p.next_expert;
			continue;
		}
		if (p.next_layer == IPC_STATS_NONE)
			break;
		layer = p.next_layer;
		first = 0;
	}
	assert_int_equal(pages, 3 + 1); /* 96 + 96 + 8 experts, then 8 */
	assert_int_equal(seen[0], 0);
	assert_int_equal(seen[1], 3);
	assert_int_equal(seen[2], 1);
	/* The overall histogram saw both requests. */
	assert_int_equal(st.lat.n, 2);
	moe_serve_stats_free(&st);
}

/* A question about a dense or absent layer, or past a layer's experts,
 * is refused with -EINVAL and says which. */
static void bad_questions(void **s)
{
	struct moe_serve_stats st;
	struct ipc_stats_layer_reply p;

	assert_int_equal(moe_serve_stats_init(&st, &model), 0);
	assert_int_equal(ask(&st, 0, 0, &p), -EINVAL);
	assert_int_equal(ask(&st, 3, 0, &p), -EINVAL);
	assert_int_equal(ask(&st, 2, 8, &p), -EINVAL);
	assert_int_equal(ask(&st, 1, 199, &p), 0);
	assert_int_equal(p.n_load, 1);
	assert_int_equal(p.next_expert, 200);
	assert_int_equal(p.next_layer, 2);
	moe_serve_stats_free(&st);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(buckets_tile),
		cmocka_unit_test(quantiles),
		cmocka_unit_test_setup(layer_pages, setup),
		cmocka_unit_test_setup(bad_questions, setup),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
