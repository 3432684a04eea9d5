/* moe-gen: writes a synthetic MoE model as a GGUF file, of any size, in
 * constant memory. Every row's values come from a generator seeded by
 * (seed, tensor, row), so a file is the same whatever the thread count,
 * and routers are built so that routing is skewed and correlated from
 * one layer to the next, as in trained models (see route_row()). */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "dtype.h"
#include "gguf.h"
#include "gguf_write.h"
#include "model.h"
#include "quant.h"

enum part { P_GATE, P_UP, P_DOWN };

struct cfg {
	const char *out;
	enum moe_arch arch;
	uint32_t layers, experts, top_k, embd, ff;
	uint32_t types[3];     /* gate, up, down */
	uint32_t router_type;
	uint32_t shared, shared_ff;
	uint32_t groups, groups_used;
	uint32_t dense;        /* leading dense layers (deepseek2) */
	double size_gb;
	uint64_t seed;
	bool legacy;           /* one tensor per expert: blk.N.ffn_gate.E.weight */
	uint32_t version, alignment;
	uint32_t threads;
	bool quiet;
};

/* What fills a tensor's rows. */
enum fill { F_FFN, F_ROUTER, F_BIAS, F_SHGATE };

struct tdesc {
	char name[96];
	uint32_t n_dims;
	uint64_t ne[3];
	uint32_t type;
	enum fill fill;
	uint32_t layer;
	uint32_t expert0; /* expert index of the first slice (legacy names) */
	uint64_t off, size, row_size, rows; /* rows over all slices */
};

struct gen {
	struct cfg c;
	struct tdesc *t;
	size_t n_t, cap_t;
	int fd;
	_Atomic uint64_t next_job; /* (tensor << 32) | row block */
	_Atomic uint64_t done_bytes;
	uint64_t total_bytes;
	_Atomic int failed;
};

#define ROWS_PER_JOB 64

static uint64_t mix(uint64_t z)
{
	z += 0x9e3779b97f4a7c15ull;
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static uint64_t seed_of(uint64_t seed, uint64_t a, uint64_t b, uint64_t c)
{
	return mix(mix(mix(seed ^ 0x6d6f652d67656eull) ^ a) ^ b) ^ c;
}

/* Uniform in [-1, 1). */
static float unif(uint64_t *s)
{
	*s = mix(*s);
	return (float)((int64_t)(*s >> 11) - (1ll << 52)) * 0x1p-52f;
}

/* Close to a standard normal: a sum of four uniforms, rescaled. */
static float gauss(uint64_t *s)
{
	return (unif(s) + unif(s) + unif(s) + unif(s)) * 0.8660254f;
}

/* An expert's gain on its router logits: a few experts get large gains,
 * so they win more often (routing is skewed, as in trained models). */
static float expert_gain(const struct cfg *c, uint32_t layer, uint32_t e)
{
	uint64_t s = seed_of(c->seed, 0x6761696eull, layer, e);
	float u = (unif(&s) + 1.0f) * 0.5f;

	return 0.6f + 0.9f * u * u * u;
}

static uint32_t gcd(uint32_t a, uint32_t b)
{
	while (b) {
		uint32_t r = a % b;

		a = b;
		b = r;
	}
	return a;
}

/* Which shared direction expert e of a layer follows: a permutation per
 * layer, e -> (a * e + b) mod n with a coprime to n. */
static uint32_t expert_dir(const struct cfg *c, uint32_t layer, uint32_t e)
{
	uint64_t s = seed_of(c->seed, 0x7065726dull, layer, 0);
	uint32_t n = c->experts, a;

	do {
		s = mix(s);
		a = (uint32_t)(s % n);
	} while (n > 1 && gcd(a, n) != 1);
	return (uint32_t)(((uint64_t)a * e + (s >> 32)) % n);
}

/* Router row of expert e at layer l: gain * (0.8 * D_dir + 0.6 * N_l,e)
 * where the directions D_j are the same in every layer. Tokens whose
 * residual stream points along D_j pick, in every layer, the expert that
 * follows D_j there: picks are correlated from layer to layer, and the
 * router of layer l+1 applied to layer l's input predicts them. */
static void route_row(const struct cfg *c, uint32_t layer, uint32_t e,
		      float *v)
{
	uint64_t sd = seed_of(c->seed, 0x646972ull, expert_dir(c, layer, e), 0);
	uint64_t sn = seed_of(c->seed, 0x6e6f6973ull, layer, e);
	float scale = expert_gain(c, layer, e) * 2.0f / sqrtf((float)c->embd);

	for (uint32_t i = 0; i < c->embd; i++)
		v[i] = scale * (0.8f * gauss(&sd) + 0.6f * gauss(&sn));
}

/* One row of floats for row `row` of tensor t. */
static void fill_row(const struct gen *g, const struct tdesc *t, uint64_t row,
		     float *v)
{
	const struct cfg *c = &g->c;
	uint64_t cols = t->ne[0];
	uint64_t s = seed_of(c->seed, (uint64_t)(t - g->t), row, 0);

	switch (t->fill) {
	case F_ROUTER:
		route_row(c, t->layer, (uint32_t)row, v);
		return;
	case F_BIAS:
		for (uint64_t i = 0; i < cols; i++)
			v[i] = 0.05f * unif(&s);
		return;
	case F_SHGATE:
	case F_FFN: {
		/* Uniform with variance 1/cols: unit-variance inputs give
		 * unit-variance outputs, so activations stay finite. Two
		 * values per draw: this loop is most of moe-gen's work. */
		float a = sqrtf(3.0f / (float)cols) * 0x1p-31f;

		for (uint64_t i = 0; i < cols; i += 2) {
			uint64_t z = mix(s += 0x9e3779b97f4a7c15ull);

			v[i] = a * (float)(int32_t)(uint32_t)(z >> 32);
			v[i + 1] = a * (float)(int32_t)(uint32_t)z;
		}
		return;
	}
	}
}

static int add_tensor(struct gen *g, const char *name, uint32_t n_dims,
		      uint64_t ne0, uint64_t ne1, uint64_t ne2, uint32_t type,
		      enum fill fill, uint32_t layer)
{
	struct tdesc *t;

	if (g->n_t == g->cap_t) {
		size_t cap = g->cap_t ? g->cap_t * 2 : 64;
		void *p = realloc(g->t, cap * sizeof(*g->t));

		if (!p)
			return -ENOMEM;
		g->t = p;
		g->cap_t = cap;
	}
	t = &g->t[g->n_t++];
	memset(t, 0, sizeof(*t));
	snprintf(t->name, sizeof(t->name), "%s", name);
	t->n_dims = n_dims;
	t->ne[0] = ne0;
	t->ne[1] = ne1;
	t->ne[2] = ne2;
	t->type = type;
	t->fill = fill;
	t->layer = layer;
	t->row_size = moe_row_size(type, ne0);
	t->rows = ne1 * ne2;
	return 0;
}

static const char *const part_name[3] = { "gate", "up", "down" };

static int add_ffn(struct gen *g, uint32_t l, const char *suffix,
		   uint32_t ff, uint32_t n_exp, bool legacy)
{
	const struct cfg *c = &g->c;
	char name[96];
	int rc = 0;

	for (int p = 0; p < 3 && !rc; p++) {
		uint64_t ne0 = p == P_DOWN ? ff : c->embd;
		uint64_t ne1 = p == P_DOWN ? c->embd : ff;

		if (legacy) {
			for (uint32_t e = 0; e < n_exp && !rc; e++) {
				snprintf(name, sizeof(name),
					 "blk.%u.ffn_%s.%u.weight", l,
					 part_name[p], e);
				rc = add_tensor(g, name, 2, ne0, ne1, 1,
						c->types[p], F_FFN, l);
			}
			continue;
		}
		snprintf(name, sizeof(name), "blk.%u.ffn_%s%s.weight", l,
			 part_name[p], suffix);
		rc = add_tensor(g, name, strcmp(suffix, "_exps") ? 2 : 3,
				ne0, ne1, n_exp, c->types[p], F_FFN, l);
	}
	return rc;
}

static int plan_layer(struct gen *g, uint32_t l)
{
	const struct cfg *c = &g->c;
	char name[96];
	int rc;

	if (l < c->dense)
		return add_ffn(g, l, "", c->ff, 1, false);
	snprintf(name, sizeof(name), "blk.%u.ffn_gate_inp.weight", l);
	rc = add_tensor(g, name, 2, c->embd, c->experts, 1, c->router_type,
			F_ROUTER, l);
	if (!rc && c->arch == MOE_ARCH_DEEPSEEK2) {
		snprintf(name, sizeof(name), "blk.%u.exp_probs_b.bias", l);
		rc = add_tensor(g, name, 1, c->experts, 1, 1, MOE_F32, F_BIAS,
				l);
	}
	if (!rc)
		rc = add_ffn(g, l, "_exps", c->ff, c->experts, c->legacy);
	if (!rc && c->shared && c->arch == MOE_ARCH_QWEN2MOE) {
		snprintf(name, sizeof(name), "blk.%u.ffn_gate_inp_shexp.weight", l);
		rc = add_tensor(g, name, 1, c->embd, 1, 1, c->router_type,
				F_SHGATE, l);
	}
	if (!rc && c->shared)
		rc = add_ffn(g, l, "_shexp", c->shared_ff, 1, false);
	return rc;
}

static int plan(struct gen *g)
{
	for (uint32_t l = 0; l < g->c.layers; l++) {
		int rc = plan_layer(g, l);

		if (rc)
			return rc;
	}
	return 0;
}

static int put_keys(struct gen *g, struct gguf_writer *w)
{
	const struct cfg *c = &g->c;
	const char *a = moe_arch_name(c->arch);
	char k[128];
	int rc = 0;

#define KEY(fn, suffix, v)                                          \
	do {                                                        \
		snprintf(k, sizeof(k), "%s.%s", a, suffix);         \
		rc = rc ? rc : fn(w, k, v);                         \
	} while (0)
	rc = gguf_w_str(w, "general.architecture", a);
	rc = rc ? rc : gguf_w_str(w, "general.name", "moe-gen synthetic MoE");
	rc = rc ? rc : gguf_w_u64(w, "moegen.seed", c->seed);
	KEY(gguf_w_u32, "block_count", c->layers);
	KEY(gguf_w_u32, "context_length", 4096);
	KEY(gguf_w_u32, "embedding_length", c->embd);
	KEY(gguf_w_u32, "feed_forward_length", c->ff);
	KEY(gguf_w_u32, "attention.head_count", c->embd >= 128 ? c->embd / 128 : 1);
	KEY(gguf_w_f32, "attention.layer_norm_rms_epsilon", 1e-6f);
	KEY(gguf_w_u32, "expert_count", c->experts);
	KEY(gguf_w_u32, "expert_used_count", c->top_k);
	if (c->arch != MOE_ARCH_LLAMA && c->arch != MOE_ARCH_OLMOE)
		KEY(gguf_w_u32, "expert_feed_forward_length", c->ff);
	if (c->shared && c->arch == MOE_ARCH_QWEN2MOE)
		KEY(gguf_w_u32, "expert_shared_feed_forward_length", c->shared_ff);
	if (c->arch == MOE_ARCH_DEEPSEEK2) {
		KEY(gguf_w_u32, "expert_shared_count", c->shared);
		KEY(gguf_w_u32, "leading_dense_block_count", c->dense);
		KEY(gguf_w_u32, "expert_group_count", c->groups);
		KEY(gguf_w_u32, "expert_group_used_count", c->groups_used);
		KEY(gguf_w_u32, "expert_gating_func", MOE_GATING_SIGMOID);
		KEY(gguf_w_bool, "expert_weights_norm", true);
		KEY(gguf_w_f32, "expert_weights_scale", 2.5f);
	}
#undef KEY
	return rc;
}

static int write_header(struct gen *g)
{
	struct gguf_writer *w = gguf_writer_new(g->c.version, g->c.alignment);
	int rc;

	if (!w)
		return -ENOMEM;
	rc = put_keys(g, w);
	for (size_t i = 0; !rc && i < g->n_t; i++)
		rc = gguf_w_tensor(w, g->t[i].name, g->t[i].n_dims, g->t[i].ne,
				   g->t[i].type);
	if (!rc)
		rc = gguf_writer_write_header(w, g->fd);
	for (size_t i = 0; !rc && i < g->n_t; i++) {
		g->t[i].off = gguf_writer_tensor_off(w, i);
		g->t[i].size = gguf_writer_tensor_size(w, i);
		g->total_bytes += g->t[i].size;
	}
	gguf_writer_free(w);
	return rc;
}

static int write_rows(struct gen *g, const struct tdesc *t, uint64_t r0,
		      uint64_t r1, float *v, uint8_t *buf)
{
	uint8_t *p = buf;
	uint64_t len, off;

	for (uint64_t r = r0; r < r1; r++, p += t->row_size) {
		fill_row(g, t, r, v);
		moe_quantize_row(t->type, v, p, t->ne[0]);
	}
	len = (r1 - r0) * t->row_size;
	off = t->off + r0 * t->row_size;
	for (uint64_t done = 0; done < len;) {
		ssize_t n = pwrite(g->fd, buf + done, len - done,
				   (off_t)(off + done));

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		done += (uint64_t)n;
	}
	atomic_fetch_add_explicit(&g->done_bytes, len, memory_order_relaxed);
	return 0;
}

/* Jobs are (tensor, block of rows) in file order, handed out by one
 * atomic counter; a worker that finds a tensor exhausted moves on. */
static void *worker(void *arg)
{
	struct gen *g = arg;
	uint64_t max_cols = g->c.embd > g->c.ff ? g->c.embd : g->c.ff;
	float *v = malloc((g->c.shared_ff > max_cols ? g->c.shared_ff : max_cols) *
			  sizeof(float));
	size_t bufsz = 0;
	uint8_t *buf = NULL;
	size_t ti = 0;
	uint64_t blk_base = 0; /* job number of tensor ti's first block */

	for (size_t i = 0; i < g->n_t; i++)
		if (g->t[i].row_size * ROWS_PER_JOB > bufsz)
			bufsz = g->t[i].row_size * ROWS_PER_JOB;
	buf = malloc(bufsz);
	if (!v || !buf) {
		atomic_store(&g->failed, ENOMEM);
		goto out;
	}
	for (;;) {
		uint64_t job = atomic_fetch_add(&g->next_job, 1), blocks;
		int rc;

		while (ti < g->n_t &&
		       job >= blk_base + (blocks = (g->t[ti].rows + ROWS_PER_JOB - 1) / ROWS_PER_JOB)) {
			blk_base += blocks;
			ti++;
		}
		if (ti >= g->n_t || atomic_load(&g->failed))
			break;
		uint64_t r0 = (job - blk_base) * ROWS_PER_JOB;
		uint64_t r1 = r0 + ROWS_PER_JOB < g->t[ti].rows ? r0 + ROWS_PER_JOB : g->t[ti].rows;

		rc = write_rows(g, &g->t[ti], r0, r1, v, buf);
		if (rc) {
			atomic_store(&g->failed, -rc);
			break;
		}
	}
out:
	free(v);
	free(buf);
	return NULL;
}

static void progress(struct gen *g, bool final)
{
	static double last;
	struct timespec ts;
	double now, done = (double)atomic_load(&g->done_bytes);

	clock_gettime(CLOCK_MONOTONIC, &ts);
	now = ts.tv_sec + ts.tv_nsec * 1e-9;
	if (!final && now - last < 0.2)
		return;
	last = now;
	fprintf(stderr, "\rmoe-gen: %5.1f%%  %.2f / %.2f GB%s",
		g->total_bytes ? 100.0 * done / (double)g->total_bytes : 100.0,
		done / 1e9, (double)g->total_bytes / 1e9, final ? "\n" : "");
}

static int generate(struct gen *g)
{
	pthread_t th[64];
	uint32_t n = g->c.threads;
	bool tty = !g->c.quiet && isatty(STDERR_FILENO);
	uint32_t started = 0;

	for (; started < n; started++)
		if (pthread_create(&th[started], NULL, worker, g))
			break;
	if (!started)
		return -EAGAIN;
	while (tty && atomic_load(&g->done_bytes) < g->total_bytes &&
	       !atomic_load(&g->failed)) {
		progress(g, false);
		usleep(100000);
	}
	for (uint32_t i = 0; i < started; i++)
		pthread_join(th[i], NULL);
	if (tty)
		progress(g, true);
	return -atomic_load(&g->failed);
}

static uint64_t layer_bytes(const struct cfg *c)
{
	uint64_t e = c->experts, b;

	b = moe_row_size(c->router_type, c->embd) * e;
	b += e * (moe_row_size(c->types[P_GATE], c->embd) * c->ff +
		  moe_row_size(c->types[P_UP], c->embd) * c->ff +
		  moe_row_size(c->types[P_DOWN], c->ff) * c->embd);
	if (c->shared)
		b += moe_row_size(c->types[P_GATE], c->embd) * c->shared_ff * 2 +
		     moe_row_size(c->types[P_DOWN], c->shared_ff) * c->embd;
	return b;
}

static void usage(FILE *f)
{
	fprintf(f,
"usage: moe-gen OUT.gguf [options]\n"
"Writes a synthetic MoE model (only its MoE tensors) as a GGUF file.\n"
"  --arch A            llama | qwen2moe | qwen3moe | olmoe | deepseek2 (qwen3moe)\n"
"  --layers N          layers (4); --size-gb picks it instead\n"
"  --experts E         routed experts per layer (16)\n"
"  --top-k K           experts used per token (4)\n"
"  --embd D            hidden size (512)\n"
"  --ff F              FFN size of one expert (1024)\n"
"  --type T            type of all three parts, or per part:\n"
"                      --type gate=Q4_K,up=Q4_K,down=Q6_K (the default)\n"
"                      types: F32 F16 BF16 Q8_0 Q4_0 Q4_K Q6_K\n"
"  --router-type T     type of the router (F32)\n"
"  --shared-experts S  shared experts (qwen2moe: 1, deepseek2: 1, others 0)\n"
"  --shared-ff F       rows of the fused shared FFN (S * ff)\n"
"  --groups G          expert groups, deepseek2 (4 when experts allow)\n"
"  --groups-used G     groups each token may use (G / 2)\n"
"  --dense-layers N    leading dense layers, deepseek2 (1)\n"
"  --size-gb X         choose --layers to make the file about X GB\n"
"  --seed S            generator seed (1): same seed, same bytes\n"
"  --legacy-names      one tensor per expert (blk.N.ffn_gate.E.weight)\n"
"  --gguf-version V    2 or 3 (3)\n"
"  --alignment A       data alignment, a power of two (32)\n"
"  --threads N         writer threads (online CPUs)\n"
"  -q, --quiet         no progress line\n");
}

static int parse_type(const char *s, uint32_t *out)
{
	int t = moe_dtype_by_name(s);

	if (t < 0 || !moe_dtype_info((uint32_t)t)->compute) {
		fprintf(stderr, "moe-gen: --type: '%s' is not one of F32 F16 BF16 Q8_0 Q4_0 Q4_K Q6_K\n", s);
		return -1;
	}
	*out = (uint32_t)t;
	return 0;
}

/* "Q4_K" for all parts, or "gate=Q4_K,up=Q4_K,down=Q6_K". */
static int parse_types(const char *s, uint32_t types[3])
{
	char buf[128], *save = NULL;

	if (!strchr(s, '=')) {
		if (parse_type(s, &types[0]))
			return -1;
		types[1] = types[2] = types[0];
		return 0;
	}
	snprintf(buf, sizeof(buf), "%s", s);
	for (char *tok = strtok_r(buf, ",", &save); tok;
	     tok = strtok_r(NULL, ",", &save)) {
		char *eq = strchr(tok, '=');
		int p;

		if (!eq)
			goto bad;
		*eq = 0;
		for (p = 0; p < 3 && strcmp(tok, part_name[p]); p++)
			;
		if (p == 3 || parse_type(eq + 1, &types[p]))
			goto bad;
	}
	return 0;
bad:
	fprintf(stderr, "moe-gen: --type '%s': expected T or gate=T,up=T,down=T\n", s);
	return -1;
}

static int parse_u32(const char *opt, const char *s, uint32_t *out)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(s, &end, 0);
	if (errno || *end || end == s || v > UINT32_MAX) {
		fprintf(stderr, "moe-gen: %s: '%s' is not a number\n", opt, s);
		return -1;
	}
	*out = (uint32_t)v;
	return 0;
}

enum {
	O_ARCH = 256, O_LAYERS, O_EXPERTS, O_TOPK, O_EMBD, O_FF, O_TYPE,
	O_RTYPE, O_SHARED, O_SHFF, O_GROUPS, O_GUSED, O_DENSE, O_SIZE,
	O_SEED, O_LEGACY, O_VERSION, O_ALIGN, O_THREADS,
};

static const struct option longopts[] = {
	{ "arch", 1, NULL, O_ARCH }, { "layers", 1, NULL, O_LAYERS },
	{ "experts", 1, NULL, O_EXPERTS }, { "top-k", 1, NULL, O_TOPK },
	{ "embd", 1, NULL, O_EMBD }, { "ff", 1, NULL, O_FF },
	{ "type", 1, NULL, O_TYPE }, { "router-type", 1, NULL, O_RTYPE },
	{ "shared-experts", 1, NULL, O_SHARED }, { "shared-ff", 1, NULL, O_SHFF },
	{ "groups", 1, NULL, O_GROUPS }, { "groups-used", 1, NULL, O_GUSED },
	{ "dense-layers", 1, NULL, O_DENSE }, { "size-gb", 1, NULL, O_SIZE },
	{ "seed", 1, NULL, O_SEED }, { "legacy-names", 0, NULL, O_LEGACY },
	{ "gguf-version", 1, NULL, O_VERSION }, { "alignment", 1, NULL, O_ALIGN },
	{ "threads", 1, NULL, O_THREADS }, { "quiet", 0, NULL, 'q' },
	{ "help", 0, NULL, 'h' }, { NULL, 0, NULL, 0 },
};

/* Options that depend on the architecture get its defaults when unset. */
struct seen {
	bool shared, groups, gused, dense, layers;
};

static int parse_opt(struct cfg *c, struct seen *sn, int o, const char *a)
{
	switch (o) {
	case O_ARCH: {
		int x = moe_arch_by_name(a);

		if (x < 0) {
			fprintf(stderr, "moe-gen: --arch '%s': expected llama, qwen2moe, qwen3moe, olmoe or deepseek2\n", a);
			return -1;
		}
		c->arch = (enum moe_arch)x;
		return 0;
	}
	case O_LAYERS: sn->layers = true; return parse_u32("--layers", a, &c->layers);
	case O_EXPERTS: return parse_u32("--experts", a, &c->experts);
	case O_TOPK: return parse_u32("--top-k", a, &c->top_k);
	case O_EMBD: return parse_u32("--embd", a, &c->embd);
	case O_FF: return parse_u32("--ff", a, &c->ff);
	case O_TYPE: return parse_types(a, c->types);
	case O_RTYPE: return parse_type(a, &c->router_type);
	case O_SHARED: sn->shared = true; return parse_u32("--shared-experts", a, &c->shared);
	case O_SHFF: return parse_u32("--shared-ff", a, &c->shared_ff);
	case O_GROUPS: sn->groups = true; return parse_u32("--groups", a, &c->groups);
	case O_GUSED: sn->gused = true; return parse_u32("--groups-used", a, &c->groups_used);
	case O_DENSE: sn->dense = true; return parse_u32("--dense-layers", a, &c->dense);
	case O_SIZE: {
		char *end;

		c->size_gb = strtod(a, &end);
		if (*end || !(c->size_gb > 0)) {
			fprintf(stderr, "moe-gen: --size-gb: '%s' is not a positive number\n", a);
			return -1;
		}
		return 0;
	}
	case O_SEED: {
		char *end;

		c->seed = strtoull(a, &end, 0);
		if (*end) {
			fprintf(stderr, "moe-gen: --seed: '%s' is not a number\n", a);
			return -1;
		}
		return 0;
	}
	case O_LEGACY: c->legacy = true; return 0;
	case O_VERSION: return parse_u32("--gguf-version", a, &c->version);
	case O_ALIGN: return parse_u32("--alignment", a, &c->alignment);
	case O_THREADS: return parse_u32("--threads", a, &c->threads);
	case 'q': c->quiet = true; return 0;
	case 'h': usage(stdout); exit(0);
	}
	usage(stderr);
	return -1;
}

static void arch_defaults(struct cfg *c, const struct seen *sn)
{
	bool ds = c->arch == MOE_ARCH_DEEPSEEK2;

	if (!sn->shared)
		c->shared = ds || c->arch == MOE_ARCH_QWEN2MOE;
	if (!c->shared_ff)
		c->shared_ff = c->shared * c->ff;
	if (!sn->groups)
		c->groups = ds && c->experts % 4 == 0 && c->top_k <= c->experts / 2 ? 4 : 1;
	if (!sn->gused)
		c->groups_used = c->groups > 1 ? c->groups / 2 : 1;
	if (!sn->dense)
		c->dense = ds ? 1 : 0;
	if (!ds)
		c->dense = 0, c->groups = c->groups_used = 1;
}

/* The shape checks a reader would make, said here in the user's terms. */
static int check_cfg(const struct cfg *c)
{
	uint32_t blk_embd = 1, blk_ff = 1;

	for (int p = 0; p < 3; p++) {
		uint32_t b = moe_dtype_info(c->types[p])->block;

		if (p != P_DOWN && b > blk_embd)
			blk_embd = b;
		if (p == P_DOWN && b > blk_ff)
			blk_ff = b;
	}
	if (moe_dtype_info(c->router_type)->block > blk_embd)
		blk_embd = moe_dtype_info(c->router_type)->block;
	if (c->shared && moe_dtype_info(c->types[P_GATE])->block > blk_ff)
		blk_ff = moe_dtype_info(c->types[P_GATE])->block;
#define BAD(...) do { fprintf(stderr, "moe-gen: " __VA_ARGS__); fputc('\n', stderr); return -1; } while (0)
	if (!c->embd || c->embd % blk_embd || c->embd % moe_dtype_info(c->types[P_DOWN])->block)
		BAD("--embd %u: must be a positive multiple of %u for these types", c->embd, blk_embd);
	if (!c->ff || c->ff % blk_ff || c->ff % blk_embd)
		BAD("--ff %u: must be a positive multiple of %u for these types", c->ff, blk_ff > blk_embd ? blk_ff : blk_embd);
	if (c->shared && (c->shared_ff % blk_ff || c->shared_ff % blk_embd))
		BAD("--shared-ff %u: must be a multiple of %u", c->shared_ff, blk_ff);
	if (c->experts < 1 || c->experts > MOE_MAX_EXPERTS)
		BAD("--experts %u: must be 1..%u", c->experts, MOE_MAX_EXPERTS);
	if (c->top_k < 1 || c->top_k > c->experts || c->top_k > MOE_MAX_K)
		BAD("--top-k %u: must be 1..%u", c->top_k, c->experts < MOE_MAX_K ? c->experts : MOE_MAX_K);
	if (c->groups < 1 || c->experts % c->groups || c->groups_used < 1 ||
	    c->groups_used > c->groups || c->top_k > c->groups_used * (c->experts / c->groups))
		BAD("--groups %u / --groups-used %u do not fit %u experts choosing %u", c->groups, c->groups_used, c->experts, c->top_k);
	if (c->layers < 1 || c->dense >= c->layers)
		BAD("--layers %u: need at least one MoE layer after %u dense", c->layers, c->dense);
	if (c->version != 2 && c->version != 3)
		BAD("--gguf-version %u: must be 2 or 3", c->version);
	if (c->alignment < 8 || c->alignment & (c->alignment - 1))
		BAD("--alignment %u: must be a power of two, at least 8", c->alignment);
	if (c->threads < 1 || c->threads > 64)
		BAD("--threads %u: must be 1..64", c->threads);
#undef BAD
	return 0;
}

static int parse_args(struct cfg *c, int argc, char **argv)
{
	struct seen sn = { 0 };
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	int o;

	*c = (struct cfg){
		.arch = MOE_ARCH_QWEN3MOE, .layers = 4, .experts = 16,
		.top_k = 4, .embd = 512, .ff = 1024,
		.types = { MOE_Q4_K, MOE_Q4_K, MOE_Q6_K },
		.router_type = MOE_F32, .seed = 1, .version = 3,
		.alignment = GGUF_DEFAULT_ALIGNMENT,
		.threads = ncpu > 0 ? (uint32_t)(ncpu < 64 ? ncpu : 64) : 1,
	};
	while ((o = getopt_long(argc, argv, "qh", longopts, NULL)) != -1)
		if (parse_opt(c, &sn, o, optarg))
			return -1;
	if (optind != argc - 1) {
		usage(stderr);
		return -1;
	}
	c->out = argv[optind];
	arch_defaults(c, &sn);
	if (c->size_gb > 0 && !sn.layers) {
		double per = (double)layer_bytes(c);

		c->layers = c->dense + (uint32_t)fmax(1.0, round(c->size_gb * 1e9 / per));
	}
	return check_cfg(c);
}

int main(int argc, char **argv)
{
	struct gen g = { .fd = -1 };
	int rc;

	if (parse_args(&g.c, argc, argv))
		return 2;
	g.fd = open(g.c.out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (g.fd < 0) {
		fprintf(stderr, "moe-gen: %s: %s\n", g.c.out, strerror(errno));
		return 1;
	}
	rc = plan(&g);
	if (!rc)
		rc = write_header(&g);
	if (!rc)
		rc = generate(&g);
	if (!rc && fsync(g.fd))
		rc = -errno;
	if (close(g.fd) && !rc)
		rc = -errno;
	free(g.t);
	if (rc) {
		fprintf(stderr, "moe-gen: %s: %s\n", g.c.out, strerror(-rc));
		unlink(g.c.out);
		return 1;
	}
	if (!g.c.quiet)
		printf("%s: %s, %u layers, %u experts (top %u), embd %u, ff %u, %.3f GB\n",
		       g.c.out, moe_arch_name(g.c.arch), g.c.layers, g.c.experts,
		       g.c.top_k, g.c.embd, g.c.ff,
		       (double)(g.total_bytes) / 1e9);
	return 0;
}
