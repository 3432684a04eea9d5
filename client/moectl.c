/* moectl: asks a running moed for its status and counters (one question
 * each on a fresh connection), and sends a layer through it with
 * libmoeclient, in the same file formats as moe-layer, so the two outputs
 * can be compared byte for byte. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <moe/moeclient.h>

#include "../tools/cli.h"

#include "proto.h"
#include "sock.h"

#define ASK_TIMEOUT_MS 10000

static const char *sock_path(const char *opt)
{
	const char *env = getenv(MOE_SOCKET_ENV);

	if (opt)
		return opt;
	return env && *env ? env : MOE_DEFAULT_SOCKET;
}

/* ---- status and stats ---- */

static int dial(const char *path)
{
	int fd = ipc_connect(path, ASK_TIMEOUT_MS);

	if (fd < 0) {
		fprintf(stderr, "moectl: cannot reach moed at %s: %s\n", path,
			moe_strerror(fd));
		return -1;
	}
	return fd;
}

/* Ask one question on a fresh connection; the reply must be `type`. */
static int ask(const char *path, enum ipc_msg_type q, enum ipc_msg_type type,
	       void *reply, size_t len)
{
	struct ipc_msg_hdr h;
	ssize_t n;
	int fd = dial(path), rc = -1;

	if (fd < 0)
		return -1;
	ipc_msg_init(&h, q, sizeof(h), 0);
	n = ipc_send(fd, &h, sizeof(h), -1, 0);
	if (!n)
		n = ipc_recv(fd, reply, len, NULL, 0);
	if (n == (ssize_t)len && ipc_msg_check(reply, len, len) == (int)type)
		rc = 0;
	else
		fprintf(stderr, "moectl: %s: no answer from moed (%s)\n", path,
			n == -EAGAIN ? "timed out"
			: n < 0      ? moe_strerror((int)n)
			: n == 0     ? "it hung up"
				     : "unexpected reply");
	close(fd);
	return rc;
}

static void print_uptime(uint64_t ms)
{
	uint64_t s = ms / 1000;

	if (s >= 86400)
		printf("%" PRIu64 "d ", s / 86400);
	printf("%02" PRIu64 ":%02" PRIu64 ":%02" PRIu64, s / 3600 % 24,
	       s / 60 % 60, s % 60);
}

static int cmd_status(const char *path)
{
	struct ipc_status_reply r;

	if (ask(path, IPC_MSG_STATUS, IPC_MSG_STATUS_REPLY, &r, sizeof(r)))
		return 1;
	r.arch[sizeof(r.arch) - 1] = 0;
	r.model[sizeof(r.model) - 1] = 0;
	printf("moed        pid %d, up ", r.pid);
	print_uptime(r.uptime_ms);
	printf(", %u workers\n", r.threads);
	printf("model       %s (%s, %u layers, %u experts)\n", r.model, r.arch,
	       r.n_layer, r.n_expert);
	printf("clients     %u of %u\n", r.clients, r.max_clients);
	if (r.cache_budget)
		printf("cache       %.1f of %.1f MiB (%.0f%%)\n",
		       r.cache_used / 1048576.0, r.cache_budget / 1048576.0,
		       100.0 * r.cache_used / r.cache_budget);
	else
		printf("cache       the page cache (mmap)\n");
	return 0;
}

struct counter {
	const char *name, *help;
	uint64_t v;
};

/* Prometheus wants base units: the one time counter goes out in
 * seconds. */
static void print_prometheus(const struct counter *c, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		bool usec = strcmp(c[i].name, "busy_usec") == 0;
		const char *name = usec ? "busy_seconds" : c[i].name;

		printf("# HELP moed_%s %s\n# TYPE moed_%s counter\n", name,
		       c[i].help, name);
		if (usec)
			printf("moed_%s %.6f\n", name, c[i].v / 1e6);
		else
			printf("moed_%s %" PRIu64 "\n", name, c[i].v);
	}
}

static void print_json(const struct counter *c, size_t n, double hit_rate)
{
	printf("{");
	for (size_t i = 0; i < n; i++)
		printf("%s\"%s\": %" PRIu64, i ? ", " : "", c[i].name, c[i].v);
	if (!isnan(hit_rate))
		printf(", \"hit_rate\": %.4f", hit_rate);
	printf("}\n");
}

static void print_table(const struct counter *c, size_t n, double hit_rate,
			const struct ipc_stats_reply *r)
{
	for (size_t i = 0; i < n; i++)
		printf("%-16s %" PRIu64 "\n", c[i].name, c[i].v);
	if (!isnan(hit_rate))
		printf("%-16s %.4f\n", "hit_rate", hit_rate);
	if (r->requests)
		printf("%-16s %.1f\n", "mean_usec",
		       (double)r->busy_usec / (double)r->requests);
}

static int cmd_stats(const char *path, const char *format)
{
	struct ipc_stats_reply r;
	double hit_rate = NAN;

	if (ask(path, IPC_MSG_STATS, IPC_MSG_STATS_REPLY, &r, sizeof(r)))
		return 1;
	const struct counter c[] = {
		{ "requests", "Requests received.", r.requests },
		{ "tokens", "Tokens in accepted requests.", r.tokens },
		{ "refused", "Descriptors refused as invalid.", r.refused },
		{ "failed", "Requests completed with an error.", r.failed },
		{ "expert_hits", "Expert uses found resident.", r.expert_hits },
		{ "expert_misses", "Expert uses that waited for a read.",
		  r.expert_misses },
		{ "bytes_read", "Bytes read from the model file.", r.bytes_read },
		{ "prefetch_issued", "Prefetch reads issued.", r.prefetch_issued },
		{ "prefetch_used", "Prefetched experts later wanted.",
		  r.prefetch_used },
		{ "evictions", "Experts evicted from the cache.", r.evictions },
		{ "busy_usec", "Request time in moed, summed.", r.busy_usec },
	};
	size_t n = sizeof(c) / sizeof(c[0]);

	if (r.expert_hits + r.expert_misses)
		hit_rate = (double)r.expert_hits /
			   (double)(r.expert_hits + r.expert_misses);
	if (strcmp(format, "json") == 0)
		print_json(c, n, hit_rate);
	else if (strcmp(format, "prometheus") == 0)
		print_prometheus(c, n);
	else
		print_table(c, n, hit_rate, &r);
	return 0;
}

/* ---- forward ---- */

struct fwd {
	uint32_t layer, tokens;
	const char *in, *out;
	struct moe_req_opts ro;
	bool verbose;
};

struct totals {
	uint32_t requests;
	uint64_t hit, missed, k_used, usec, wall_usec;
};

static moe_client *open_client(const char *path)
{
	struct moe_connect_opts o = { .name = "moectl" };
	moe_client *c;
	int rc = moe_connect(&c, path, &o);

	if (!rc)
		return c;
	if (rc == -EPERM || rc == -EUSERS || rc == -MOE_EVERSION)
		fprintf(stderr, "moectl: moed at %s refused us: %s\n", path,
			moe_strerror(rc));
	else if (rc == -ETIMEDOUT || rc == -MOE_EDEAD || rc == -MOE_EPROTO)
		fprintf(stderr, "moectl: no hello from moed at %s: %s\n", path,
			moe_strerror(rc));
	else
		fprintf(stderr, "moectl: cannot reach moed at %s: %s\n", path,
			moe_strerror(rc));
	return NULL;
}

/* The whole input: rows of n_embd floats, exactly --tokens of them if
 * given. */
static float *read_rows(const char *path, uint32_t n_embd, uint32_t want,
			uint32_t *nt)
{
	size_t row = (size_t)n_embd * sizeof(float);
	struct stat st;
	FILE *f = fopen(path, "rb");
	float *x = NULL;

	if (!f || fstat(fileno(f), &st)) {
		fprintf(stderr, "moectl: %s: %s\n", path, strerror(errno));
		goto out;
	}
	if (!st.st_size || (size_t)st.st_size % row ||
	    (size_t)st.st_size / row > UINT32_MAX ||
	    (want && (size_t)st.st_size != want * row)) {
		fprintf(stderr, "moectl: %s: %jd bytes, expected %s%zu-byte rows (n_embd %u floats)\n",
			path, (intmax_t)st.st_size,
			want ? "exactly --tokens " : "whole ", row, n_embd);
		goto out;
	}
	*nt = (uint32_t)((size_t)st.st_size / row);
	x = malloc((size_t)st.st_size);
	if (!x || fread(x, 1, (size_t)st.st_size, f) != (size_t)st.st_size) {
		fprintf(stderr, "moectl: %s: %s\n", path,
			x ? "short read" : "out of memory");
		free(x);
		x = NULL;
	}
out:
	if (f)
		fclose(f);
	return x;
}

static int write_rows(const char *path, const float *y, size_t n)
{
	return cli_write_f32("moectl", path, y, n);
}

static void chunk_err(const struct fwd *o, uint32_t t0, uint32_t n, int rc)
{
	fprintf(stderr, "moectl: layer %u, tokens %u..%u: %s\n", o->layer, t0,
		t0 + n - 1, moe_strerror(rc));
}

static void add_result(struct totals *t, const struct moe_result *r)
{
	t->requests++;
	t->hit += r->experts_hit;
	t->missed += r->experts_missed;
	t->k_used += r->k_used;
	t->usec += r->usec;
	t->wall_usec += r->wall_usec;
}

/* Requests of at most max_tokens rows, up to max_inflight of them in
 * flight (moed batches those of one round into one pass), collected in
 * the order they were sent. Outputs land in y directly. */
static int run_chunks(moe_client *c, const struct moe_model_info *mi,
		      const struct fwd *o, const float *x, float *y,
		      uint32_t nt, struct totals *t)
{
	uint32_t step = mi->max_tokens, n_chunks = (nt + step - 1) / step;
	uint64_t *ids = calloc(n_chunks, sizeof(*ids));
	uint32_t sent = 0, got = 0;
	struct moe_result r;
	size_t row = mi->n_embd;
	int rc = 0;

	if (!ids)
		return -ENOMEM;
	while (!rc && got < n_chunks) {
		while (sent < n_chunks && sent - got < mi->max_inflight) {
			uint32_t t0 = sent * step;
			uint32_t n = nt - t0 < step ? nt - t0 : step;

			rc = moe_submit(c, o->layer, x + t0 * row, n,
					y + t0 * row, &o->ro, &ids[sent]);
			if (rc) {
				chunk_err(o, t0, n, rc);
				goto out;
			}
			sent++;
		}
		uint32_t t0 = got * step, n = nt - t0 < step ? nt - t0 : step;

		rc = moe_wait(c, ids[got], &r, -1);
		if (!rc)
			rc = r.status;
		if (rc)
			chunk_err(o, t0, n, rc);
		else
			add_result(t, &r);
		got++;
	}
out:
	free(ids);
	return rc;
}

static void report(const struct fwd *o, uint32_t nt, const struct totals *t)
{
	uint64_t uses = t->hit + t->missed;

	fprintf(stderr,
		"moectl: layer %u: %u tokens in %u requests, %" PRIu64
		" expert uses (%" PRIu64 " resident, %" PRIu64 " read), "
		"%.2f experts per token, %" PRIu64 " us in moed, %" PRIu64
		" us round trips\n",
		o->layer, nt, t->requests, uses, t->hit, t->missed,
		nt ? (double)t->k_used / nt : 0.0, t->usec, t->wall_usec);
}

static bool layer_ok(moe_client *c, const struct moe_model_info *mi,
		     uint32_t layer)
{
	if (moe_layer_is_moe(c, layer) == 1)
		return true;
	fprintf(stderr, "moectl: layer %u is not a MoE layer of this model (%s, %u layers; MoE layers %u..%u)\n",
		layer, mi->arch, mi->n_layer, mi->first_moe_layer,
		mi->last_moe_layer);
	return false;
}

/* The k bounds against the model's, so a refusal names the option. */
static bool k_ok(const struct moe_model_info *mi, const struct moe_req_opts *ro)
{
	if (ro->min_k > mi->max_k || ro->max_k > mi->max_k) {
		fprintf(stderr, "moectl: --%s %u: moed allows at most %u experts per token\n",
			ro->max_k > mi->max_k ? "max-k" : "min-k",
			ro->max_k > mi->max_k ? ro->max_k : ro->min_k, mi->max_k);
		return false;
	}
	if (ro->min_k && ro->max_k && ro->min_k > ro->max_k) {
		fprintf(stderr, "moectl: --min-k %u is above --max-k %u\n",
			ro->min_k, ro->max_k);
		return false;
	}
	return true;
}

static int cmd_forward(const char *path, const struct fwd *o)
{
	struct moe_model_info mi;
	struct totals t = { 0 };
	moe_client *c = open_client(path);
	float *x = NULL, *y = NULL;
	uint32_t nt = 0;
	int rc = 1;

	if (!c)
		return 1;
	moe_model_info(c, &mi);
	if (!layer_ok(c, &mi, o->layer) || !k_ok(&mi, &o->ro))
		goto out;
	x = read_rows(o->in, mi.n_embd, o->tokens, &nt);
	if (!x)
		goto out;
	y = malloc((size_t)nt * mi.n_embd * sizeof(float));
	if (!y) {
		fprintf(stderr, "moectl: out of memory for %u tokens\n", nt);
		goto out;
	}
	if (run_chunks(c, &mi, o, x, y, nt, &t))
		goto out;
	if (o->verbose)
		report(o, nt, &t);
	rc = write_rows(o->out, y, (size_t)nt * mi.n_embd) ? 1 : 0;
out:
	free(x);
	free(y);
	moe_close(c);
	return rc;
}

/* ---- command line ---- */

static void usage(FILE *f)
{
	fprintf(f,
"usage: moectl [--socket PATH] status\n"
"       moectl [--socket PATH] stats [--json | --prometheus]\n"
"       moectl [--socket PATH] forward --layer L --input X.f32 [--tokens N]\n"
"              --output Y.f32 [--top-p P --min-k A --max-k B] [--verbose]\n"
"The socket is --socket, else $" MOE_SOCKET_ENV ", else " MOE_DEFAULT_SOCKET ".\n"
"forward takes and writes raw little-endian float32 rows of n_embd, as\n"
"moe-layer does; inputs longer than moed grants one request are sent as\n"
"several. --verbose prints the requests' figures on stderr.\n");
}

static int parse_num(const char *opt, const char *s, double lo, double hi,
		     double *out)
{
	return cli_num("moectl", opt, s, lo, hi, out);
}

struct args {
	struct fwd o;
	const char *sock, *format;
	bool have_layer;
};

/* One option that takes a number. */
static int parse_numeric(int c, const char *arg, struct args *a)
{
	double v = 0;
	int rc = -1;

	switch (c) {
	case 'l':
		rc = parse_num("--layer", arg, 0, UINT32_MAX, &v);
		a->o.layer = (uint32_t)v;
		a->have_layer = true;
		break;
	case 'n':
		rc = parse_num("--tokens", arg, 1, UINT32_MAX, &v);
		a->o.tokens = (uint32_t)v;
		break;
	case 'p':
		rc = parse_num("--top-p", arg, 0, 1, &v);
		a->o.ro.top_p = (float)v;
		break;
	case 'a':
		rc = parse_num("--min-k", arg, 0, 65536, &v);
		a->o.ro.min_k = (uint32_t)v;
		break;
	case 'b':
		rc = parse_num("--max-k", arg, 0, 65536, &v);
		a->o.ro.max_k = (uint32_t)v;
		break;
	}
	return rc;
}

/* Options before the command ("+": stop at it) and after it. */
static int parse_opts(int argc, char **argv, const char *optstring,
		      struct args *a)
{
	static const struct option lo[] = {
		{ "socket", 1, NULL, 's' }, { "json", 0, NULL, 'j' },
		{ "prometheus", 0, NULL, 'P' }, { "layer", 1, NULL, 'l' },
		{ "input", 1, NULL, 'i' }, { "output", 1, NULL, 'o' },
		{ "tokens", 1, NULL, 'n' }, { "top-p", 1, NULL, 'p' },
		{ "min-k", 1, NULL, 'a' }, { "max-k", 1, NULL, 'b' },
		{ "verbose", 0, NULL, 'v' }, { "help", 0, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	while ((c = getopt_long(argc, argv, optstring, lo, NULL)) != -1) {
		switch (c) {
		case 's': a->sock = optarg; break;
		case 'j': a->format = "json"; break;
		case 'P': a->format = "prometheus"; break;
		case 'i': a->o.in = optarg; break;
		case 'o': a->o.out = optarg; break;
		case 'v': a->o.verbose = true; break;
		case 'h': usage(stdout); exit(0);
		case 'l': case 'n': case 'p': case 'a': case 'b':
			if (parse_numeric(c, optarg, a))
				return -1;
			break;
		default: usage(stderr); return -1;
		}
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct args a = { .format = "table" };
	const char *cmd;

	if (parse_opts(argc, argv, "+hv", &a))
		return 2;
	if (optind >= argc) {
		usage(stderr);
		return 2;
	}
	cmd = argv[optind++];
	if (parse_opts(argc, argv, "hv", &a))
		return 2;
	if (optind < argc) {
		fprintf(stderr, "moectl: unexpected argument '%s'\n", argv[optind]);
		return 2;
	}
	if (strcmp(cmd, "status") == 0)
		return cmd_status(sock_path(a.sock));
	if (strcmp(cmd, "stats") == 0)
		return cmd_stats(sock_path(a.sock), a.format);
	if (strcmp(cmd, "forward") == 0) {
		if (!a.have_layer || !a.o.in || !a.o.out) {
			fprintf(stderr, "moectl: forward needs --layer, --input and --output\n");
			return 2;
		}
		return cmd_forward(sock_path(a.sock), &a.o);
	}
	fprintf(stderr, "moectl: unknown command '%s'\n", cmd);
	usage(stderr);
	return 2;
}
