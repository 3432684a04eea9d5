/* moe-bench's copy of the model's routers (see bench_route.h). */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <moe/moeclient.h>

#include "bench_route.h"
#include "router.h"

struct bench_router {
	const struct moe_model *m;
	void **w;      /* per layer: the router matrix's bytes; NULL: dense */
	float **bias;  /* per layer: selection bias or NULL */
	size_t scratch_per_token, scratch_fixed; /* floats, largest layer */
};

struct bench_route_scratch {
	uint32_t max_tokens;
	struct moe_route *routes;
	float *f;
	bool *seen;
};

static int load(const struct moe_model *m, const struct moe_mat *mt,
		void **out, struct moe_msg *err)
{
	/* Aligned as moed pins it, so the kernels see the same layout. */
	uint8_t *p = aligned_alloc(64, (mt->size + 64) & ~63ull);
	uint64_t done = 0;

	if (!p)
		return moe_msgf(err, -ENOMEM, "out of memory for a router of %" PRIu64 " bytes",
				mt->size);
	while (done < mt->size) {
		ssize_t n = pread(gguf_fd(m->gguf), p + done, mt->size - done,
				  (off_t)(mt->off + done));

		if (n <= 0) {
			int rc = n < 0 ? -errno : -EIO;

			free(p);
			return moe_msgf(err, rc, "%s: reading a router at offset %" PRIu64 ": %s",
					gguf_path(m->gguf), mt->off + done,
					n < 0 ? moe_strerror(rc) : "the file ends there");
		}
		done += (uint64_t)n;
	}
	*out = p;
	return 0;
}

int bench_router_open(struct bench_router **out, const struct moe_model *m,
		      struct moe_msg *err)
{
	struct bench_router *r = calloc(1, sizeof(*r));
	int rc = 0;

	if (!r || !(r->w = calloc(m->n_layer, sizeof(*r->w))) ||
	    !(r->bias = calloc(m->n_layer, sizeof(*r->bias)))) {
		bench_router_close(r);
		return moe_msgf(err, -ENOMEM, "out of memory");
	}
	r->m = m;
	for (uint32_t l = 0; !rc && l < m->n_layer; l++) {
		const struct moe_layer *L = &m->layers[l];

		if (!L->moe)
			continue;
		rc = load(m, &L->router, &r->w[l], err);
		if (!rc && L->has_bias)
			rc = load(m, &L->bias, (void **)&r->bias[l], err);
		if (L->n_expert > r->scratch_per_token)
			r->scratch_per_token = L->n_expert;
	}
	r->scratch_fixed = 2 * r->scratch_per_token;
	if (rc) {
		bench_router_close(r);
		return rc;
	}
	*out = r;
	return 0;
}

void bench_router_close(struct bench_router *r)
{
	if (!r)
		return;
	for (uint32_t l = 0; r->m && l < r->m->n_layer; l++) {
		free(r->w[l]);
		free(r->bias[l]);
	}
	free(r->w);
	free(r->bias);
	free(r);
}

struct bench_route_scratch *bench_route_scratch_new(const struct bench_router *r,
						    uint32_t max_tokens)
{
	struct bench_route_scratch *s = calloc(1, sizeof(*s));

	if (!s)
		return NULL;
	s->max_tokens = max_tokens;
	s->routes = calloc(max_tokens, sizeof(*s->routes));
	s->f = malloc((r->scratch_per_token * max_tokens + r->scratch_fixed) *
		      sizeof(float));
	s->seen = calloc(r->scratch_per_token, sizeof(*s->seen));
	if (!s->routes || !s->f || !s->seen) {
		bench_route_scratch_free(s);
		return NULL;
	}
	return s;
}

void bench_route_scratch_free(struct bench_route_scratch *s)
{
	if (!s)
		return;
	free(s->routes);
	free(s->f);
	free(s->seen);
	free(s);
}

uint32_t bench_route_experts(const struct bench_router *r,
			     struct bench_route_scratch *s, uint32_t layer,
			     const float *x, uint32_t nt, uint32_t *ids)
{
	const struct moe_layer *L = &r->m->layers[layer];
	uint32_t n = 0;

	moe_route_batch(L, r->w[layer], r->bias[layer], x, r->m->n_embd, nt,
			NULL, s->routes, s->f);
	memset(s->seen, 0, L->n_expert * sizeof(*s->seen));
	for (uint32_t t = 0; t < nt; t++)
		for (uint32_t i = 0; i < s->routes[t].k; i++)
			s->seen[s->routes[t].id[i]] = true;
	for (uint32_t e = 0; e < L->n_expert; e++)
		if (s->seen[e])
			ids[n++] = e;
	return n;
}
