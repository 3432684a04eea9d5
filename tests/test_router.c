/* Routing semantics on hand-made logits, where the right answer can be
 * worked out on paper: renormalisation or not, sigmoid scores with a
 * selection bias, group-limited selection, scaling, ties, dynamic K. */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "router.h"

static struct moe_layer layer(uint32_t n, uint32_t k, enum moe_gating g,
			      bool norm, float scale)
{
	return (struct moe_layer){
		.moe = true, .n_expert = n, .n_used = k, .gating = g,
		.norm_w = norm, .w_scale = scale, .n_group = 1,
		.n_group_used = 1,
	};
}

static struct moe_route route(const struct moe_layer *L, const float *logits,
			      const float *bias, const struct moe_route_opts *o)
{
	float v[64], scratch[128];
	struct moe_route r;

	memcpy(v, logits, L->n_expert * sizeof(float));
	moe_route_select(L, v, bias, o, &r, scratch);
	return r;
}

static double sig(double x)
{
	return 1 / (1 + exp(-x));
}

/* Mixtral, Qwen3: softmax, top-k, weights renormalised over the k. */
static void softmax_renormalised(void **s)
{
	struct moe_layer L = layer(4, 2, MOE_GATING_SOFTMAX, true, 1.0f);
	float lg[4] = { 1, 3, 2, 0 };
	struct moe_route r = route(&L, lg, NULL, NULL);
	double a = exp(3), b = exp(2);

	assert_int_equal(r.k, 2);
	assert_int_equal(r.id[0], 1);
	assert_int_equal(r.id[1], 2);
	assert_float_equal(r.w[0], a / (a + b), 1e-6);
	assert_float_equal(r.w[1], b / (a + b), 1e-6);
}

/* OLMoE, Qwen2-MoE: softmax over all experts, weights not renormalised. */
static void softmax_plain(void **s)
{
	struct moe_layer L = layer(4, 2, MOE_GATING_SOFTMAX, false, 1.0f);
	float lg[4] = { 1, 3, 2, 0 };
	struct moe_route r = route(&L, lg, NULL, NULL);
	double z = exp(1) + exp(3) + exp(2) + exp(0);

	assert_int_equal(r.k, 2);
	assert_float_equal(r.w[0], exp(3) / z, 1e-6);
	assert_float_equal(r.w[1], exp(2) / z, 1e-6);
}

/* DeepSeek-V3: sigmoid scores; the bias decides who is chosen but the
 * weights are the unbiased scores, renormalised, then scaled. */
static void sigmoid_bias_scale(void **s)
{
	struct moe_layer L = layer(4, 2, MOE_GATING_SIGMOID, true, 2.5f);
	float lg[4] = { 0.0f, 0.1f, 0.2f, -1.0f };
	float bias[4] = { 0.5f, 0, 0, 0 };
	struct moe_route r = route(&L, lg, bias, NULL);
	double a = sig(0.0), b = sig(0.2);

	assert_int_equal(r.k, 2);
	assert_int_equal(r.id[0], 0);
	assert_int_equal(r.id[1], 2);
	assert_float_equal(r.w[0], 2.5 * a / (a + b), 1e-6);
	assert_float_equal(r.w[1], 2.5 * b / (a + b), 1e-6);
	L.norm_w = false;
	r = route(&L, lg, bias, NULL);
	assert_float_equal(r.w[0], 2.5 * a, 1e-6);
}

/* Groups of two, two groups used, ranked by the sum of their two best:
 * expert 4 has the best single score but its group loses. */
static void group_limited(void **s)
{
	struct moe_layer L = layer(8, 3, MOE_GATING_SIGMOID, false, 1.0f);
	float lg[8] = { 2, 2, 1.5f, 1.5f, 3, -5, 0, 0 };
	struct moe_route r;

	L.n_group = 4;
	L.n_group_used = 2;
	r = route(&L, lg, NULL, NULL);
	assert_int_equal(r.k, 3);
	assert_int_equal(r.id[0], 0);
	assert_int_equal(r.id[1], 1);
	assert_int_equal(r.id[2], 2); /* tie with 3: the lower id */
	L.n_group = 1;
	r = route(&L, lg, NULL, NULL);
	assert_int_equal(r.id[0], 4);
}

static void ties_lower_id(void **s)
{
	struct moe_layer L = layer(6, 3, MOE_GATING_SOFTMAX, true, 1.0f);
	float lg[6] = { 0, 1, 0, 1, 0, 1 };
	struct moe_route r = route(&L, lg, NULL, NULL);

	assert_int_equal(r.id[0], 1);
	assert_int_equal(r.id[1], 3);
	assert_int_equal(r.id[2], 5);
}

/* Probabilities 0.5, 0.3, 0.15, 0.05: top-p picks the fewest experts
 * reaching p, within [min_k, max_k]; weights follow the model's rule. */
static void top_p(void **s)
{
	struct moe_layer L = layer(4, 2, MOE_GATING_SOFTMAX, true, 1.0f);
	float lg[4] = { logf(0.15f), logf(0.5f), logf(0.05f), logf(0.3f) };
	struct moe_route_opts o = { .top_p = 0.7f, .max_k = 4 };
	struct moe_route r = route(&L, lg, NULL, &o);

	assert_int_equal(r.k, 2);
	assert_int_equal(r.id[0], 1);
	assert_int_equal(r.id[1], 3);
	o.top_p = 0.85f;
	assert_int_equal(route(&L, lg, NULL, &o).k, 3);
	o.top_p = 0.9f;
	r = route(&L, lg, NULL, &o);
	assert_int_equal(r.k, 3);
	assert_float_equal(r.w[2], 0.15 / 0.95, 1e-5);
	o.top_p = 0.1f;
	o.min_k = 3;
	assert_int_equal(route(&L, lg, NULL, &o).k, 3);
	o = (struct moe_route_opts){ .top_p = 0.99f, .max_k = 2 };
	assert_int_equal(route(&L, lg, NULL, &o).k, 2);
	/* max_k 0 means the model's k */
	o = (struct moe_route_opts){ .top_p = 0.99f };
	assert_int_equal(route(&L, lg, NULL, &o).k, 2);
}

static void option_checks(void **s)
{
	struct moe_layer L = layer(8, 2, MOE_GATING_SOFTMAX, true, 1.0f);
	struct moe_route_opts o = { .top_p = -0.1f };
	struct moe_msg err;

	assert_int_equal(moe_route_opts_check(&L, &o, &err), -EINVAL);
	assert_non_null(strstr(err.text, "top_p"));
	o = (struct moe_route_opts){ .top_p = NAN };
	assert_int_equal(moe_route_opts_check(&L, &o, &err), -EINVAL);
	o = (struct moe_route_opts){ .top_p = 0.5f, .max_k = 9 };
	assert_int_equal(moe_route_opts_check(&L, &o, &err), -EINVAL);
	assert_non_null(strstr(err.text, "max_k 9"));
	o = (struct moe_route_opts){ .top_p = 0.5f, .min_k = 4, .max_k = 3 };
	assert_int_equal(moe_route_opts_check(&L, &o, &err), -EINVAL);
	assert_non_null(strstr(err.text, "min_k 4"));
	o = (struct moe_route_opts){ .top_p = 0.5f, .min_k = 2, .max_k = 8 };
	assert_int_equal(moe_route_opts_check(&L, &o, &err), 0);
}

static void routing_checks(void **s)
{
	struct moe_layer L = layer(8, 2, MOE_GATING_SOFTMAX, true, 1.0f);
	struct moe_route ok = { 2, { 7, 0 }, { 0.5f, 0.5f } };
	struct moe_route none = { 0, { 0 }, { 0 } };
	struct moe_route nan = { 1, { 2 }, { NAN } };
	struct moe_msg err;

	assert_int_equal(moe_route_check(&L, &ok, 0, &err), 0);
	assert_int_equal(moe_route_check(&L, &none, 3, &err), -EINVAL);
	assert_non_null(strstr(err.text, "token 3"));
	assert_int_equal(moe_route_check(&L, &nan, 0, &err), -EINVAL);
	assert_non_null(strstr(err.text, "not finite"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(softmax_renormalised),
		cmocka_unit_test(softmax_plain),
		cmocka_unit_test(sigmoid_bias_scale),
		cmocka_unit_test(group_limited),
		cmocka_unit_test(ties_lower_id),
		cmocka_unit_test(top_p),
		cmocka_unit_test(option_checks),
		cmocka_unit_test(routing_checks),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
