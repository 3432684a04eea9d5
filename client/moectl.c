/* moectl: asks a running moed for its status and counters (one question
 * each on a fresh connection), and sends a layer through it with
 * libmoeclient, in the same file formats as moe-layer, so the two outputs
 * can be compared byte for byte. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stddef.h>
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

static int question_hdr(int fd, enum ipc_msg_type q, enum ipc_msg_type type,
			void *reply, size_t len)
{
	struct ipc_msg_hdr h;

	ipc_msg_init(&h, q, sizeof(h), 0);
	return ipc_question(fd, &h, sizeof(h), (int)type, reply, len);
}

static void no_answer(const char *path, int rc)
{
	if (rc == -EPERM || rc == -EUSERS) {
		fprintf(stderr, "moectl: %s: moed refused: %s\n", path,
			rc == -EPERM ? "this user is not on its allow lists (allow-uid, allow-gid)"
				     : "too many connections waiting (max-clients)");
		return;
	}
	fprintf(stderr, "moectl: %s: no answer from moed (%s)\n", path,
		rc == -EAGAIN	   ? "timed out"
		: rc == -MOE_EDEAD ? "it hung up"
		: rc == -MOE_EPROTO ? "unexpected reply"
				    : moe_strerror(rc));
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
	int fd = dial(path), rc;

	if (fd < 0)
		return 1;
	rc = question_hdr(fd, IPC_MSG_STATUS, IPC_MSG_STATUS_REPLY, &r, sizeof(r));
	close(fd);
	if (rc) {
		no_answer(path, rc);
		return 1;
	}
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

/* One MoE layer's figures and every expert's load, from its pages. */
struct layer_fig {
	struct ipc_stats_layer_reply r; /* the first page (load aside) */
	uint64_t *load;                 /* r.n_expert entries */
};

/* Everything `moectl stats` prints. */
struct figures {
	struct ipc_stats_reply c;
	bool live;                      /* moed answered the questions */
	struct ipc_stats_live_reply l;  /* below; else only c is known */
	struct layer_fig *layers;
	uint32_t n_layers;
};

static void figures_free(struct figures *f)
{
	for (uint32_t i = 0; i < f->n_layers; i++)
		free(f->layers[i].load);
	free(f->layers);
}

/* A page that does not follow from the question is moed's protocol
 * error: checked before anything is copied. */
static bool page_ok(const struct ipc_stats_layer_reply *r, uint32_t layer,
		    uint32_t first, const struct layer_fig *cur)
{
	return !r->h.status && r->first_expert == first &&
	       r->n_expert > 0 && r->n_expert <= (1u << 20) &&
	       r->n_load <= IPC_STATS_PAGE_EXPERTS &&
	       r->n_load <= r->n_expert - first &&
	       r->next_expert == first + r->n_load &&
	       (r->n_load || r->next_expert == r->n_expert) &&
	       (layer == IPC_STATS_FIRST || r->layer == layer) &&
	       (r->next_layer == IPC_STATS_NONE || r->next_layer > r->layer) &&
	       (!cur || (cur->r.layer == r->layer && cur->r.n_expert == r->n_expert));
}

/* A new layer's entry, its load sized from its first page. */
static struct layer_fig *add_layer(struct figures *f,
				   const struct ipc_stats_layer_reply *r)
{
	struct layer_fig *p = realloc(f->layers, (f->n_layers + 1) * sizeof(*p));

	if (!p)
		return NULL;
	f->layers = p;
	p += f->n_layers;
	p->r = *r;
	p->load = calloc(r->n_expert, sizeof(*p->load));
	if (!p->load)
		return NULL;
	f->n_layers++;
	return p;
}

/* Every MoE layer's pages, in layer order, following next_expert and
 * next_layer. */
static int fetch_layers(int fd, struct figures *f)
{
	static struct ipc_stats_layer_reply r;
	struct ipc_stats_layer q;
	struct layer_fig *cur = NULL;
	uint32_t layer = IPC_STATS_FIRST, first = 0;
	bool more = true;
	int rc;

	while (more) {
		memset(&q, 0, sizeof(q));
		ipc_msg_init(&q.h, IPC_MSG_STATS_LAYER, sizeof(q), 0);
		q.layer = layer;
		q.first_expert = first;
		rc = ipc_question(fd, &q, sizeof(q), IPC_MSG_STATS_LAYER_REPLY, &r,
			      sizeof(r));
		if (rc)
			return rc;
		if (!page_ok(&r, layer, first, first ? cur : NULL))
			return r.h.status ? r.h.status : -MOE_EPROTO;
		if (!first && !(cur = add_layer(f, &r)))
			return -ENOMEM;
		memcpy(cur->load + first, r.load, r.n_load * sizeof(r.load[0]));
		if (r.next_expert < r.n_expert) {
			first = r.next_expert;
		} else {
			layer = r.next_layer;
			first = 0;
			more = layer != IPC_STATS_NONE;
		}
	}
	return 0;
}

/* The counters every moed answers; then, on the same connection, what
 * is happening now and the per-layer pages. A moed older than those
 * questions hangs up on them: its counters are still shown. */
static int fetch(const char *path, struct figures *f)
{
	int fd = dial(path), rc;

	if (fd < 0)
		return -1;
	rc = question_hdr(fd, IPC_MSG_STATS, IPC_MSG_STATS_REPLY, &f->c,
			  sizeof(f->c));
	if (rc) {
		no_answer(path, rc);
		close(fd);
		return -1;
	}
	rc = question_hdr(fd, IPC_MSG_STATS_LIVE, IPC_MSG_STATS_LIVE_REPLY,
			  &f->l, sizeof(f->l));
	if (!rc)
		rc = fetch_layers(fd, f);
	close(fd);
	f->live = !rc;
	if (rc == -MOE_EDEAD)
		fprintf(stderr, "moectl: moed at %s gives no per-layer figures (an older moed?): counters only\n",
			path);
	else if (rc) {
		no_answer(path, rc);
		return -1;
	}
	return 0;
}

static double ratio(double a, double b)
{
	return b > 0 ? a / b : NAN;
}

static double hit_rate(uint64_t hits, uint64_t misses)
{
	return ratio((double)hits, (double)(hits + misses));
}

/* GB/s over the time reads were in flight, and over the last window. */
static double gbps(uint64_t bytes, uint64_t usec)
{
	return ratio((double)bytes / 1e3, (double)usec);
}

struct counter {
	const char *name, *help;
	uint64_t v;
	const char *prom; /* its Prometheus name: a unit, then _total */
};

#define N_COUNTERS 11

static void counters(const struct ipc_stats_reply *r, struct counter *c)
{
	const struct counter all[N_COUNTERS] = {
		{ "requests", "Requests received.", r->requests, "requests_total" },
		{ "tokens", "Tokens in accepted requests.", r->tokens, "tokens_total" },
		{ "refused", "Descriptors refused as invalid.", r->refused,
		  "refused_total" },
		{ "failed", "Requests completed with an error.", r->failed,
		  "failed_total" },
		{ "expert_hits", "Expert uses found resident.", r->expert_hits,
		  "expert_hits_total" },
		{ "expert_misses", "Expert uses that waited for a read.",
		  r->expert_misses, "expert_misses_total" },
		{ "bytes_read", "Bytes read from the model file.", r->bytes_read,
		  "read_bytes_total" },
		{ "prefetch_issued", "Prefetch reads issued.", r->prefetch_issued,
		  "prefetch_issued_total" },
		{ "prefetch_used", "Prefetched experts later wanted.",
		  r->prefetch_used, "prefetch_used_total" },
		{ "evictions", "Experts evicted from the cache.", r->evictions,
		  "evictions_total" },
		{ "busy_usec", "Request time in moed, summed.", r->busy_usec,
		  "busy_seconds_total" },
	};

	memcpy(c, all, sizeof(all));
}

/* ---- stats: a table ---- */

/* v formatted by fmt (one double), or "-" where there is none. */
static const char *fmt(char *buf, size_t len, const char *f, double v)
{
	if (isnan(v))
		snprintf(buf, len, "-");
	else
		snprintf(buf, len, f, v);
	return buf;
}

/* The three experts with the most tokens, as "id:tokens" pairs. */
static void hot_experts(const struct layer_fig *L, char *buf, size_t len)
{
	uint32_t top[3] = { UINT32_MAX, UINT32_MAX, UINT32_MAX };
	size_t at = 0;

	for (uint32_t e = 0; e < L->r.n_expert; e++) {
		for (int i = 0; i < 3; i++) {
			if (top[i] != UINT32_MAX && L->load[e] <= L->load[top[i]])
				continue;
			memmove(top + i + 1, top + i, (2 - i) * sizeof(top[0]));
			top[i] = e;
			break;
		}
	}
	buf[0] = 0;
	for (int i = 0; i < 3 && top[i] != UINT32_MAX && at < len; i++)
		if (L->load[top[i]])
			at += (size_t)snprintf(buf + at, len - at, "%s%u:%" PRIu64,
					       at ? " " : "", top[i],
					       L->load[top[i]]);
	if (!buf[0])
		snprintf(buf, len, "-");
}

static void print_layer_row(const struct layer_fig *L)
{
	const struct ipc_stats_layer_reply *r = &L->r;
	char hot[96], hr[32];

	hot_experts(L, hot, sizeof(hot));
	printf("%5u %9" PRIu64 " %9" PRIu64 " %8s", r->layer, r->requests,
	       r->tokens, fmt(hr, sizeof(hr), "%.4f",
			      hit_rate(r->expert_hits, r->expert_misses)));
	printf(" %8" PRIu64 " %7u %7u %7u %8u  %s\n", r->expert_passes,
	       r->latency.p50_usec, r->latency.p90_usec, r->latency.p99_usec,
	       r->latency.max_usec, hot);
}

/* Expert uses of a layer: its experts' loads summed. */
static uint64_t layer_uses(const struct layer_fig *L)
{
	uint64_t n = 0;

	for (uint32_t e = 0; e < L->r.n_expert; e++)
		n += L->load[e];
	return n;
}

static void print_live(const struct ipc_stats_live_reply *l)
{
	printf("%-16s %u\n", "clients", l->clients);
	printf("%-16s %u  (requests waiting for the dispatcher)\n", "queued",
	       l->queued);
	printf("%-16s %u  (expert reads queued or in flight)\n",
	       "reads_pending", l->reads_pending);
	printf("%-16s %u\n", "slots_busy", l->slots_busy);
	printf("%-16s %.*s\n", "policy", (int)sizeof(l->policy),
	       l->policy[0] ? l->policy : "- (no cache: mmap)");
	printf("%-16s %" PRIu64 "\n", "rounds", l->rounds);
	printf("%-16s p50 %u, p90 %u, p99 %u, max %u\n", "latency_usec",
	       l->latency.p50_usec, l->latency.p90_usec, l->latency.p99_usec,
	       l->latency.max_usec);
	char a[32], b[32];

	printf("%-16s %s while reading, %s over the last %.0f s\n", "read_gbps",
	       fmt(a, sizeof(a), "%.2f", gbps(l->bytes_read, l->read_usec)),
	       fmt(b, sizeof(b), "%.2f", gbps(l->recent_bytes, l->recent_usec)),
	       l->recent_usec / 1e6);
	printf("%-16s %s  (%" PRIu64 " used of %" PRIu64 " issued, %" PRIu64 " wasted)\n",
	       "prefetch_accuracy",
	       fmt(a, sizeof(a), "%.4f",
		   ratio((double)l->prefetch_used, (double)l->prefetch_issued)),
	       l->prefetch_used, l->prefetch_issued, l->prefetch_wasted);
}

static void print_table(const struct figures *f, bool experts)
{
	const struct ipc_stats_reply *r = &f->c;
	struct counter c[N_COUNTERS];
	double hr = hit_rate(r->expert_hits, r->expert_misses);

	counters(r, c);
	for (size_t i = 0; i < N_COUNTERS; i++)
		printf("%-16s %" PRIu64 "\n", c[i].name, c[i].v);
	if (!isnan(hr))
		printf("%-16s %.4f\n", "hit_rate", hr);
	if (r->requests)
		printf("%-16s %.1f\n", "mean_usec",
		       (double)r->busy_usec / (double)r->requests);
	if (!f->live)
		return;
	print_live(&f->l);
	printf("\n%5s %9s %9s %8s %8s %7s %7s %7s %8s  %s\n", "layer",
	       "requests", "tokens", "hit_rate", "passes", "p50_us", "p90_us",
	       "p99_us", "max_us", "hot experts (expert:tokens)");
	for (uint32_t i = 0; i < f->n_layers; i++)
		print_layer_row(&f->layers[i]);
	if (!experts)
		return;
	printf("\n%5s %6s %12s %7s\n", "layer", "expert", "tokens", "share");
	for (uint32_t i = 0; i < f->n_layers; i++) {
		const struct layer_fig *L = &f->layers[i];
		double uses = (double)layer_uses(L);

		for (uint32_t e = 0; e < L->r.n_expert; e++)
			printf("%5u %6u %12" PRIu64 " %6.2f%%\n", L->r.layer, e,
			       L->load[e], uses ? 100 * L->load[e] / uses : 0.0);
	}
}

/* ---- stats: JSON ---- */

static void j_num(const char *name, double v, const char *after)
{
	if (isnan(v))
		printf("\"%s\": null%s", name, after);
	else
		printf("\"%s\": %.6g%s", name, v, after);
}

static void j_latency(const struct ipc_latency *l)
{
	printf("\"latency_usec\": {\"count\": %" PRIu64 ", \"sum\": %" PRIu64
	       ", \"p50\": %u, \"p90\": %u, \"p99\": %u, \"max\": %u}",
	       l->count, l->sum_usec, l->p50_usec, l->p90_usec, l->p99_usec,
	       l->max_usec);
}

static void j_live(const struct ipc_stats_live_reply *l)
{
	printf(", \"policy\": \"%.*s\"", (int)sizeof(l->policy), l->policy);
	printf(", \"uptime_ms\": %" PRIu64 ", \"clients\": %u, \"queued\": %u"
	       ", \"reads_pending\": %u, \"slots_busy\": %u, \"rounds\": %" PRIu64
	       ", ", l->uptime_ms, l->clients, l->queued, l->reads_pending,
	       l->slots_busy, l->rounds);
	j_latency(&l->latency);
	printf(", \"read\": {\"bytes\": %" PRIu64 ", \"busy_usec\": %" PRIu64
	       ", \"recent_bytes\": %" PRIu64 ", \"recent_usec\": %" PRIu64
	       ", \"errors\": %" PRIu64 ", ", l->bytes_read, l->read_usec,
	       l->recent_bytes, l->recent_usec, l->read_errors);
	j_num("gbps_while_reading", gbps(l->bytes_read, l->read_usec), ", ");
	j_num("gbps_recent", gbps(l->recent_bytes, l->recent_usec), "}");
	printf(", \"prefetch\": {\"issued\": %" PRIu64 ", \"used\": %" PRIu64
	       ", \"wasted\": %" PRIu64 ", ", l->prefetch_issued,
	       l->prefetch_used, l->prefetch_wasted);
	j_num("accuracy", ratio((double)l->prefetch_used,
				(double)l->prefetch_issued), "}");
}

static void j_layer(const struct layer_fig *L)
{
	const struct ipc_stats_layer_reply *r = &L->r;

	printf("{\"layer\": %u, \"requests\": %" PRIu64 ", \"tokens\": %" PRIu64
	       ", \"failed\": %" PRIu64 ", \"expert_hits\": %" PRIu64
	       ", \"expert_misses\": %" PRIu64 ", \"expert_passes\": %" PRIu64
	       ", ", r->layer, r->requests, r->tokens, r->failed,
	       r->expert_hits, r->expert_misses, r->expert_passes);
	j_num("hit_rate", hit_rate(r->expert_hits, r->expert_misses), ", ");
	j_latency(&r->latency);
	printf(", \"expert_tokens\": [");
	for (uint32_t e = 0; e < r->n_expert; e++)
		printf("%s%" PRIu64, e ? ", " : "", L->load[e]);
	printf("]}");
}

static void print_json(const struct figures *f)
{
	struct counter c[N_COUNTERS];

	counters(&f->c, c);
	printf("{");
	for (size_t i = 0; i < N_COUNTERS; i++)
		printf("%s\"%s\": %" PRIu64, i ? ", " : "", c[i].name, c[i].v);
	printf(", ");
	j_num("hit_rate", hit_rate(f->c.expert_hits, f->c.expert_misses), "");
	if (f->live) {
		j_live(&f->l);
		printf(", \"layers\": [");
		for (uint32_t i = 0; i < f->n_layers; i++) {
			printf(i ? ", " : "");
			j_layer(&f->layers[i]);
		}
		printf("]");
	}
	printf("}\n");
}

/* ---- stats: Prometheus text format ---- */

static void p_family(const char *name, const char *type, const char *help)
{
	printf("# HELP moed_%s %s\n# TYPE moed_%s %s\n", name, help, name, type);
}

/* A value in the format's spelling (NaN where there is none). */
static void p_value(double v)
{
	if (isnan(v))
		printf(" NaN\n");
	else
		printf(" %.9g\n", v);
}

static void p_one(const char *name, const char *type, const char *help,
		  double v)
{
	p_family(name, type, help);
	printf("moed_%s", name);
	p_value(v);
}

/* A summary's quantiles, sum and count, in seconds; labels ("" or
 * `layer="3"`) go inside the braces. */
static void p_summary(const char *name, const char *labels,
		      const struct ipc_latency *l)
{
	const char *sep = *labels ? "," : "";

	printf("moed_%s{%s%squantile=\"0.5\"} %.6f\n", name, labels, sep,
	       l->p50_usec / 1e6);
	printf("moed_%s{%s%squantile=\"0.9\"} %.6f\n", name, labels, sep,
	       l->p90_usec / 1e6);
	printf("moed_%s{%s%squantile=\"0.99\"} %.6f\n", name, labels, sep,
	       l->p99_usec / 1e6);
	printf("moed_%s_sum%s%s%s %.6f\n", name, *labels ? "{" : "", labels,
	       *labels ? "}" : "", l->sum_usec / 1e6);
	printf("moed_%s_count%s%s%s %" PRIu64 "\n", name, *labels ? "{" : "",
	       labels, *labels ? "}" : "", l->count);
}

/* The counters every moed has, named as Prometheus's conventions want
 * (a counter ends in _total, after its unit); busy_usec goes out in
 * seconds, Prometheus's base unit. */
static void p_counters(const struct ipc_stats_reply *r)
{
	struct counter c[N_COUNTERS];

	counters(r, c);
	for (size_t i = 0; i < N_COUNTERS; i++) {
		bool usec = strcmp(c[i].name, "busy_usec") == 0;

		p_one(c[i].prom, "counter", c[i].help,
		      usec ? c[i].v / 1e6 : (double)c[i].v);
	}
}

static void p_live(const struct ipc_stats_live_reply *l)
{
	p_one("clients", "gauge", "Clients connected.", l->clients);
	p_one("queued_requests", "gauge",
	      "Requests in clients' submission rings not yet taken by the dispatcher.",
	      l->queued);
	p_one("reads_pending", "gauge", "Expert reads queued or in flight.",
	      l->reads_pending);
	p_one("cache_slots_busy", "gauge",
	      "Cache slots in use or being read.", l->slots_busy);
	p_one("rounds_total", "counter",
	      "Dispatcher rounds that ran requests (requests per round is the batch).",
	      (double)l->rounds);
	p_one("read_busy_seconds_total", "counter",
	      "Time with at least one expert read in flight.",
	      l->read_usec / 1e6);
	p_one("read_recent_bytes_per_second", "gauge",
	      "Expert bytes read per second over the last few seconds.",
	      1e6 * ratio((double)l->recent_bytes, (double)l->recent_usec));
	p_one("read_errors_total", "counter", "Expert reads that failed.",
	      (double)l->read_errors);
	p_one("prefetch_wasted_total", "counter",
	      "Prefetched experts evicted or cancelled before any use.",
	      (double)l->prefetch_wasted);
	p_one("prefetch_accuracy_ratio", "gauge",
	      "Prefetched experts later used, of those prefetched.",
	      ratio((double)l->prefetch_used, (double)l->prefetch_issued));
	p_family("request_duration_seconds", "summary",
		 "Request time in moed, from taking it off its ring to its completion.");
	p_summary("request_duration_seconds", "", &l->latency);
	p_one("request_duration_max_seconds", "gauge",
	      "Longest request time in moed since it started.",
	      l->latency.max_usec / 1e6);
}

struct layer_counter {
	const char *name, *help;
	size_t off; /* a uint64_t in struct ipc_stats_layer_reply */
};

static const struct layer_counter layer_counters[] = {
	{ "layer_requests_total", "Requests that ran on the layer.",
	  offsetof(struct ipc_stats_layer_reply, requests) },
	{ "layer_tokens_total", "Tokens of those requests.",
	  offsetof(struct ipc_stats_layer_reply, tokens) },
	{ "layer_failed_total", "Requests on the layer completed with an error.",
	  offsetof(struct ipc_stats_layer_reply, failed) },
	{ "layer_expert_hits_total", "Expert uses found resident.",
	  offsetof(struct ipc_stats_layer_reply, expert_hits) },
	{ "layer_expert_misses_total", "Expert uses that waited for a read.",
	  offsetof(struct ipc_stats_layer_reply, expert_misses) },
	{ "layer_expert_passes_total", "Passes over an expert's weights.",
	  offsetof(struct ipc_stats_layer_reply, expert_passes) },
};

static uint64_t layer_field(const struct layer_fig *L, size_t off)
{
	uint64_t v;

	memcpy(&v, (const char *)&L->r + off, sizeof(v));
	return v;
}

/* Per layer, one family at a time: the format wants each family's
 * samples together. */
static void p_layers(const struct figures *f)
{
	char lab[32];

	for (size_t k = 0; k < sizeof(layer_counters) / sizeof(layer_counters[0]); k++) {
		p_family(layer_counters[k].name, "counter", layer_counters[k].help);
		for (uint32_t i = 0; i < f->n_layers; i++)
			printf("moed_%s{layer=\"%u\"} %" PRIu64 "\n",
			       layer_counters[k].name, f->layers[i].r.layer,
			       layer_field(&f->layers[i], layer_counters[k].off));
	}
	p_family("layer_hit_ratio", "gauge",
		 "Expert uses found resident, of all uses on the layer.");
	for (uint32_t i = 0; i < f->n_layers; i++) {
		printf("moed_layer_hit_ratio{layer=\"%u\"}", f->layers[i].r.layer);
		p_value(hit_rate(f->layers[i].r.expert_hits,
				 f->layers[i].r.expert_misses));
	}
	p_family("layer_request_duration_seconds", "summary",
		 "Request time in moed on the layer.");
	for (uint32_t i = 0; i < f->n_layers; i++) {
		snprintf(lab, sizeof(lab), "layer=\"%u\"", f->layers[i].r.layer);
		p_summary("layer_request_duration_seconds", lab,
			  &f->layers[i].r.latency);
	}
	p_family("expert_tokens_total", "counter",
		 "Tokens routed to the expert (its load).");
	for (uint32_t i = 0; i < f->n_layers; i++)
		for (uint32_t e = 0; e < f->layers[i].r.n_expert; e++)
			printf("moed_expert_tokens_total{layer=\"%u\",expert=\"%u\"} %" PRIu64 "\n",
			       f->layers[i].r.layer, e, f->layers[i].load[e]);
}

static void print_prometheus(const struct figures *f)
{
	p_counters(&f->c);
	if (!f->live)
		return;
	p_live(&f->l);
	p_layers(f);
}

static int cmd_stats(const char *path, const char *format, bool experts)
{
	struct figures f;

	memset(&f, 0, sizeof(f));
	if (fetch(path, &f)) {
		figures_free(&f);
		return 1;
	}
	if (strcmp(format, "json") == 0)
		print_json(&f);
	else if (strcmp(format, "prometheus") == 0)
		print_prometheus(&f);
	else
		print_table(&f, experts);
	figures_free(&f);
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
"       moectl [--socket PATH] stats [--json | --prometheus | --experts]\n"
"       moectl [--socket PATH] forward --layer L --input X.f32 [--tokens N]\n"
"              --output Y.f32 [--top-p P --min-k A --max-k B] [--verbose]\n"
"The socket is --socket, else $" MOE_SOCKET_ENV ", else " MOE_DEFAULT_SOCKET ".\n"
"forward takes and writes raw little-endian float32 rows of n_embd, as\n"
"moe-layer does; inputs longer than moed grants one request are sent as\n"
"several. --verbose prints the requests' figures on stderr.\n"
"stats prints counters, what moed is doing now, request times and per\n"
"layer figures; --experts adds every expert's load to the table.\n");
}

static int parse_num(const char *opt, const char *s, double lo, double hi,
		     double *out)
{
	return cli_num("moectl", opt, s, lo, hi, out);
}

struct args {
	struct fwd o;
	const char *sock, *format;
	bool have_layer, experts;
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
		{ "experts", 0, NULL, 'e' },
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
		case 'e': a->experts = true; break;
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
		return cmd_stats(sock_path(a.sock), a.format, a.experts);
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
