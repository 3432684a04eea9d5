/* moe-layer: runs one MoE layer of a GGUF model in-process, without the
 * daemon: raw float32 rows in, raw float32 rows out, optionally with the
 * routing written out or given. --info prints the model's MoE shape. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <moe/moeclient.h>

#include "cli.h"

#include "dtype.h"
#include "engine.h"
#include "model.h"
#include "plan.h"
#include "quant.h"
#include "source.h"
#include "store.h"

struct args {
	const char *model, *input, *output, *routing_out, *routing_in;
	uint32_t layer, tokens, threads;
	int have_layer, info, tensors;
	int print_plan;
	const char *topology;
	uint32_t reserve_cores;
	struct moe_route_opts ro;
	struct moe_source_opts so;
	int trace, no_prefetch;
	uint32_t batch;
	double alpha;
	uint64_t seed;
};

static void usage(FILE *f)
{
	fprintf(f,
"usage: moe-layer MODEL.gguf --info | --tensors\n"
"       moe-layer MODEL.gguf --print-plan [--topology SYNTHETIC|XML] [--reserve-cores N]\n"
"       moe-layer MODEL.gguf --layer L --input X.f32 [--tokens N] --output Y.f32\n"
"                 [--top-p P --min-k A --max-k B] [--routing-out FILE]\n"
"                 [--routing-in FILE] [--threads N]\n"
"       moe-layer MODEL.gguf --trace [--tokens N] [--batch B] [--alpha A]\n"
"                 [--seed S] [--no-prefetch]\n"
"  any run:       [--io uring|pread|mmap|auto] [--cache-mb M] [--policy lru|lfu|predict]\n"
"The trace runs N tokens (256) in batches of B (16) through every MoE layer,\n"
"each layer's input being the previous input plus A (0.5) times its output,\n"
"and prints tokens/s, hit rate, prefetch accuracy and GB/s read.\n"
"Inputs and outputs are raw little-endian float32 rows of n_embd.\n"
"Routing files hold one line per token: k, then k pairs of expert id and weight.\n");
}

static const char *type_name(uint32_t t)
{
	const struct moe_dtype_info *ti = moe_dtype_info(t);

	return ti ? ti->name : "?";
}

static void print_info(const struct moe_model *m)
{
	const struct moe_layer *L = &m->layers[m->first_moe_layer];
	const char *gating = L->gating == MOE_GATING_SIGMOID ? "sigmoid" : "softmax";
	uint64_t total = moe_model_expert_bytes(m);

	printf("architecture     %s\n", moe_arch_name(m->arch));
	printf("layers           %u (%u MoE, first MoE layer %u)\n", m->n_layer,
	       m->n_moe_layers, m->first_moe_layer);
	printf("n_embd           %u\n", m->n_embd);
	printf("experts          %u, %u used per token\n", L->n_expert, L->n_used);
	printf("expert n_ff      %u\n", L->n_ff);
	printf("expert types     gate %s, up %s, down %s\n",
	       type_name(L->experts[0].gate.type), type_name(L->experts[0].up.type),
	       type_name(L->experts[0].down.type));
	printf("router           %s, %s%s, scale %g\n", type_name(L->router.type),
	       gating, L->norm_w ? ", renormalised" : "", L->w_scale);
	if (L->n_group > 1)
		printf("groups           %u, %u used\n", L->n_group, L->n_group_used);
	if (L->has_bias)
		printf("selection bias   yes\n");
	if (L->has_shared)
		printf("shared experts   %u (n_ff %u)%s\n", L->n_shared,
		       L->n_ff_shared, L->has_shared_gate ? ", sigmoid-gated" : "");
	printf("bytes per expert %" PRIu64 "\n", L->expert_bytes);
	printf("expert bytes     %" PRIu64 " (%.3f GB)\n", total, total / 1e9);
	for (uint32_t i = 0; i < m->n_layer; i++)
		if (!m->layers[i].moe)
			printf("layer %u          dense (not served)\n", i);
}

/* One line per tensor, as the GGUF header declares it: name, type number,
 * dimensions, offset in the data section. */
static void print_tensors(const struct gguf_file *g)
{
	printf("version %u alignment %u data %" PRIu64 "\n", gguf_version(g),
	       gguf_alignment(g), gguf_data_offset(g));
	for (size_t i = 0; i < gguf_n_tensors(g); i++) {
		const struct gguf_tensor *t = gguf_tensor_at(g, i);

		printf("%s %u", t->name.ptr, t->type);
		for (uint32_t d = 0; d < t->n_dims; d++)
			printf("%c%" PRIu64, d ? ',' : ' ', t->ne[d]);
		printf(" %" PRIu64 "\n", t->offset);
	}
}

static int parse_num(const char *opt, const char *s, double lo, double hi,
		     double *out)
{
	return cli_num("moe-layer", opt, s, lo, hi, out);
}

static int parse_args(struct args *a, int argc, char **argv)
{
	static const struct option lo[] = {
		{ "info", 0, NULL, 'I' }, { "tensors", 0, NULL, 'T' },
		{ "layer", 1, NULL, 'l' },
		{ "input", 1, NULL, 'i' }, { "output", 1, NULL, 'o' },
		{ "tokens", 1, NULL, 'n' }, { "top-p", 1, NULL, 'p' },
		{ "min-k", 1, NULL, 'a' }, { "max-k", 1, NULL, 'b' },
		{ "routing-out", 1, NULL, 'R' }, { "routing-in", 1, NULL, 'G' },
		{ "threads", 1, NULL, 't' }, { "help", 0, NULL, 'h' },
		{ "print-plan", 0, NULL, 'P' }, { "topology", 1, NULL, 'X' },
		{ "reserve-cores", 1, NULL, 'r' },
		{ "cache-mb", 1, NULL, 'C' }, { "io", 1, NULL, 'O' },
		{ "policy", 1, NULL, 'Y' }, { "trace", 0, NULL, 'Z' },
		{ "batch", 1, NULL, 'B' }, { "alpha", 1, NULL, 'A' },
		{ "no-prefetch", 0, NULL, 'N' }, { "seed", 1, NULL, 'S' },
		{ NULL, 0, NULL, 0 },
	};
	double v;
	int o;

	while ((o = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
		switch (o) {
		case 'I': a->info = 1; break;
		case 'T': a->tensors = 1; break;
		case 'i': a->input = optarg; break;
		case 'o': a->output = optarg; break;
		case 'R': a->routing_out = optarg; break;
		case 'G': a->routing_in = optarg; break;
		case 'l':
			if (parse_num("--layer", optarg, 0, 1e6, &v))
				return -1;
			a->layer = (uint32_t)v;
			a->have_layer = 1;
			break;
		case 'n':
			if (parse_num("--tokens", optarg, 1, 1e9, &v))
				return -1;
			a->tokens = (uint32_t)v;
			break;
		case 'p':
			if (parse_num("--top-p", optarg, 0, 1, &v))
				return -1;
			a->ro.top_p = (float)v;
			break;
		case 'a':
			if (parse_num("--min-k", optarg, 0, MOE_MAX_K, &v))
				return -1;
			a->ro.min_k = (uint32_t)v;
			break;
		case 'b':
			if (parse_num("--max-k", optarg, 0, MOE_MAX_K, &v))
				return -1;
			a->ro.max_k = (uint32_t)v;
			break;
		case 't':
			if (parse_num("--threads", optarg, 1, 1024, &v))
				return -1;
			a->threads = (uint32_t)v;
			break;
		case 'P': a->print_plan = 1; break;
		case 'X': a->topology = optarg; break;
		case 'r':
			if (parse_num("--reserve-cores", optarg, 0, 1e6, &v))
				return -1;
			a->reserve_cores = (uint32_t)v;
			break;
		case 'C':
			if (parse_num("--cache-mb", optarg, 1, 1 << 24, &v))
				return -1;
			a->so.cache_bytes = (uint64_t)v << 20;
			break;
		case 'O': a->so.io = optarg; break;
		case 'Y': a->so.policy = optarg; break;
		case 'Z': a->trace = 1; break;
		case 'N': a->no_prefetch = 1; break;
		case 'B':
			if (parse_num("--batch", optarg, 1, 65536, &v))
				return -1;
			a->batch = (uint32_t)v;
			break;
		case 'A':
			if (parse_num("--alpha", optarg, 0, 10, &v))
				return -1;
			a->alpha = v;
			break;
		case 'S':
			if (parse_num("--seed", optarg, 0, 1e15, &v))
				return -1;
			a->seed = (uint64_t)v;
			break;
		case 'h': usage(stdout); exit(0);
		default: usage(stderr); return -1;
		}
	}
	if (optind != argc - 1) {
		usage(stderr);
		return -1;
	}
	a->model = argv[optind];
	if (!a->so.io)
		a->so.io = a->so.cache_bytes ? "auto" : "mmap";
	if (!a->info && !a->tensors && !a->print_plan && !a->trace &&
	    (!a->have_layer || !a->input || !a->output)) {
		fprintf(stderr, "moe-layer: need --info, --tensors, --print-plan, --trace, or --layer, --input and --output\n");
		return -1;
	}
	return 0;
}

/* Read the whole input: exactly tokens rows of n_embd floats. */
static float *read_input(const struct args *a, uint32_t n_embd,
			 uint32_t *tokens)
{
	size_t row = (size_t)n_embd * sizeof(float);
	struct stat st;
	float *x = NULL;
	FILE *f = fopen(a->input, "rb");

	if (!f || fstat(fileno(f), &st)) {
		fprintf(stderr, "moe-layer: %s: %s\n", a->input, strerror(errno));
		goto out;
	}
	if (st.st_size == 0 || (size_t)st.st_size % row ||
	    (a->tokens && (size_t)st.st_size != a->tokens * row)) {
		fprintf(stderr, "moe-layer: %s: %jd bytes, expected %s%zu-byte rows (n_embd %u floats)\n",
			a->input, (intmax_t)st.st_size,
			a->tokens ? "exactly --tokens " : "whole ", row, n_embd);
		goto out;
	}
	*tokens = (uint32_t)((size_t)st.st_size / row);
	x = malloc((size_t)st.st_size);
	if (!x || fread(x, 1, (size_t)st.st_size, f) != (size_t)st.st_size) {
		fprintf(stderr, "moe-layer: %s: short read\n", a->input);
		free(x);
		x = NULL;
	}
out:
	if (f)
		fclose(f);
	return x;
}

static int write_routing(const char *path, const struct moe_route *r,
			 uint32_t nt)
{
	FILE *f = fopen(path, "w");

	if (!f) {
		fprintf(stderr, "moe-layer: %s: %s\n", path, strerror(errno));
		return -1;
	}
	for (uint32_t t = 0; t < nt; t++) {
		fprintf(f, "%u", r[t].k);
		for (uint32_t i = 0; i < r[t].k; i++)
			fprintf(f, " %u %.9g", r[t].id[i], r[t].w[i]);
		fputc('\n', f);
	}
	if (fclose(f)) {
		fprintf(stderr, "moe-layer: %s: %s\n", path, strerror(errno));
		return -1;
	}
	return 0;
}

static int read_routing(const char *path, struct moe_route *r, uint32_t nt)
{
	FILE *f = fopen(path, "r");
	int rc = -1;

	if (!f) {
		fprintf(stderr, "moe-layer: %s: %s\n", path, strerror(errno));
		return -1;
	}
	for (uint32_t t = 0; t < nt; t++) {
		if (fscanf(f, "%u", &r[t].k) != 1 || r[t].k < 1 ||
		    r[t].k > MOE_MAX_K) {
			fprintf(stderr, "moe-layer: %s: token %u: expected a count 1..%u\n",
				path, t, MOE_MAX_K);
			goto out;
		}
		for (uint32_t i = 0; i < r[t].k; i++)
			if (fscanf(f, "%u %f", &r[t].id[i], &r[t].w[i]) != 2) {
				fprintf(stderr, "moe-layer: %s: token %u: expected %u id/weight pairs\n",
					path, t, r[t].k);
				goto out;
			}
	}
	rc = 0;
out:
	fclose(f);
	return rc;
}

static int write_output(const char *path, const float *y, size_t n)
{
	return cli_write_f32("moe-layer", path, y, n);
}

/* The store's budget: --cache-mb less the routers and shared experts,
 * as in moed; 0 without --cache-mb, or with --io mmap. */
static int expert_budget(const struct args *a, const struct moe_model *m,
			 uint64_t *bytes, struct moe_msg *err)
{
	*bytes = 0;
	if (!a->so.cache_bytes || !strcmp(a->so.io, "mmap"))
		return 0;
	return moe_source_expert_budget(m, a->so.cache_bytes, bytes, err);
}

/* Without --cache-mb, a store gets room for every expert. */
static int open_source(const struct args *a, const struct moe_model *m,
		       struct moe_source **out, struct moe_expert_src *src,
		       struct moe_msg *err)
{
	struct moe_source_opts so = a->so;
	int rc = expert_budget(a, m, &so.cache_bytes, err);

	if (!so.cache_bytes)
		so.cache_bytes = moe_model_expert_bytes(m) + (256ull << 20);
	return rc ? rc : moe_source_open(out, m, &so, src, err);
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Tokens through every MoE layer as a residual stream: x += alpha * y. */
static int trace_batch(struct moe_engine *e, const struct moe_model *m,
		       const struct args *a, float *x, float *y, uint32_t nt,
		       struct moe_msg *err)
{
	size_t n = (size_t)nt * m->n_embd;

	for (uint32_t l = 0; l < m->n_layer; l++) {
		int rc;

		if (!m->layers[l].moe)
			continue;
		rc = moe_engine_forward(e, l, x, nt, NULL, NULL, y, err);
		if (rc)
			return rc;
		for (size_t i = 0; i < n; i++)
			x[i] += (float)a->alpha * y[i];
	}
	return 0;
}

static void trace_report(const struct args *a, struct moe_source *ms,
			 uint32_t tokens, double secs)
{
	struct moe_store *st = moe_source_store(ms);
	struct moe_store_stats s = { 0 };
	struct rusage ru;

	printf("trace: %u tokens in %.3f s: %.1f tokens/s (io %s)\n", tokens,
	       secs, tokens / secs, a->so.io);
	if (!st) {
		getrusage(RUSAGE_SELF, &ru);
		printf("mmap: %ld major page faults\n", ru.ru_majflt);
		return;
	}
	moe_store_stats(st, &s);
	/* A want that joined a read in flight (most often a prefetch's) had
	 * to wait for it: not a hit, whoever started the read. */
	uint64_t wants = s.hits + s.joins + s.misses;

	printf("cache: %.1f%% hits (%" PRIu64 " hits, %" PRIu64 " joined a read in flight, %" PRIu64 " misses, %" PRIu64 " evictions), %s policy, budget %.0f MiB\n",
	       100.0 * s.hits / (double)(wants + !wants), s.hits, s.joins,
	       s.misses, s.evictions, a->so.policy ? a->so.policy : "predict",
	       s.budget_bytes / 1048576.0);
	printf("prefetch: %" PRIu64 " issued, %" PRIu64 " used (%.1f%% accurate), %" PRIu64 " wasted\n",
	       s.prefetch_issued, s.prefetch_used,
	       100.0 * s.prefetch_used / (double)(s.prefetch_issued + !s.prefetch_issued),
	       s.prefetch_wasted);
	printf("read: %.3f GB by %s%s, %.2f GB/s while reading\n",
	       s.bytes_read / 1e9, s.io_mode, s.direct ? " (O_DIRECT)" : "",
	       s.read_seconds > 0 ? s.bytes_read / 1e9 / s.read_seconds : 0.0);
}

static int run_trace(const struct args *a, struct moe_model *m)
{
	struct moe_engine_opts eo = { .threads = a->threads };
	uint32_t tokens = a->tokens ? a->tokens : 256;
	uint32_t batch = a->batch ? a->batch : 16;
	struct moe_msg err = { "" };
	struct moe_expert_src src;
	struct moe_source *ms = NULL;
	struct moe_engine *e = NULL;
	size_t n = (size_t)batch * m->n_embd;
	float *x = malloc(n * sizeof(float)), *y = malloc(n * sizeof(float));
	uint64_t s = a->seed ? a->seed : 1;
	double t0;
	int rc;

	rc = !x || !y ? moe_msgf(&err, -ENOMEM, "out of memory")
		      : open_source(a, m, &ms, &src, &err);
	if (!rc)
		rc = moe_engine_new(&e, m, &src, &eo, &err);
	if (!rc)
		moe_engine_set_prefetch(e, !a->no_prefetch);
	t0 = now_s();
	for (uint32_t done = 0; !rc && done < tokens; done += batch) {
		uint32_t nt = tokens - done < batch ? tokens - done : batch;

		for (size_t i = 0; i < (size_t)nt * m->n_embd; i++) {
			s = s * 6364136223846793005ull + 1442695040888963407ull;
			x[i] = (float)((int64_t)(s >> 40) - (1 << 23)) * 0x1p-23f;
		}
		rc = trace_batch(e, m, a, x, y, nt, &err);
	}
	if (!rc)
		trace_report(a, ms, tokens, now_s() - t0);
	else
		fprintf(stderr, "moe-layer: %s: %s\n", a->model,
			err.text[0] ? err.text : moe_strerror(rc));
	moe_engine_free(e);
	moe_source_close(ms);
	free(x);
	free(y);
	return rc ? -1 : 0;
}

static int run_layer(const struct args *a, struct moe_model *m)
{
	struct moe_engine_opts eo = { .threads = a->threads };
	struct moe_expert_src src;
	struct moe_source *ms = NULL;
	struct moe_engine *e = NULL;
	struct moe_route *routes = NULL;
	struct moe_msg err = { "" };
	float *x = NULL, *y = NULL;
	uint32_t nt = 0;
	int rc = -1;

	x = read_input(a, m->n_embd, &nt);
	if (!x)
		goto out;
	y = malloc((size_t)nt * m->n_embd * sizeof(float));
	routes = calloc(nt, sizeof(*routes));
	if (!y || !routes) {
		fprintf(stderr, "moe-layer: out of memory for %u tokens\n", nt);
		goto out;
	}
	if (a->routing_in && read_routing(a->routing_in, routes, nt))
		goto out;
	rc = open_source(a, m, &ms, &src, &err);
	if (!rc)
		rc = moe_engine_new(&e, m, &src, &eo, &err);
	if (!rc && a->routing_in)
		rc = moe_engine_apply(e, a->layer, x, nt, routes, y, &err);
	else if (!rc)
		rc = moe_engine_forward(e, a->layer, x, nt, &a->ro, routes, y,
					&err);
	if (rc) {
		fprintf(stderr, "moe-layer: %s: %s\n", a->model,
			err.text[0] ? err.text : moe_strerror(rc));
		rc = -1;
		goto out;
	}
	rc = write_output(a->output, y, (size_t)nt * m->n_embd);
	if (!rc && a->routing_out)
		rc = write_routing(a->routing_out, routes, nt);
out:
	moe_engine_free(e);
	moe_source_close(ms);
	free(routes);
	free(x);
	free(y);
	return rc;
}

int main(int argc, char **argv)
{
	struct moe_msg err = { "" };
	struct moe_model *m;
	struct args a = { 0 };
	int rc;

	if (parse_args(&a, argc, argv))
		return 2;
	if (a.tensors) {
		struct gguf_file *g;

		rc = gguf_open(&g, a.model, &err);
		if (rc) {
			fprintf(stderr, "moe-layer: %s\n", err.text);
			return 1;
		}
		print_tensors(g);
		gguf_close(g);
		return 0;
	}
	rc = moe_model_open(&m, a.model, &err);
	if (rc) {
		fprintf(stderr, "moe-layer: %s\n",
			err.text[0] ? err.text : moe_strerror(rc));
		return 1;
	}
	if (a.info)
		print_info(m);
	else if (a.print_plan) {
		uint64_t budget;

		rc = expert_budget(&a, m, &budget, &err);
		if (!rc)
			rc = moe_plan_report(stdout, m, a.model, a.topology,
					     a.reserve_cores, budget, &err);
		if (rc)
			fprintf(stderr, "moe-layer: %s\n",
				err.text[0] ? err.text : moe_strerror(rc));
	} else if (a.trace)
		rc = run_trace(&a, m);
	else
		rc = run_layer(&a, m);
	moe_model_close(m);
	return rc ? 1 : 0;
}
