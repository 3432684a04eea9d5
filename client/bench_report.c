/* moe-bench's report (see bench_report.h). */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <moe/moeclient.h>

#include "bench_report.h"

#define MIB 1048576.0

/* ---- figures ---- */

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return (x > y) - (x < y);
}

/* Nearest-rank percentile of n sorted values. */
static double pct(const uint32_t *v, size_t n, double q)
{
	size_t i = (size_t)ceil(q * (double)n);

	if (!n)
		return NAN;
	return v[i ? i - 1 : 0];
}

static void latencies(struct bench_run *r)
{
	size_t n = r->load.n_rec;
	uint32_t *w = malloc((n ? n : 1) * sizeof(*w));
	uint32_t *m = malloc((n ? n : 1) * sizeof(*m));
	double sum = 0;

	r->p50_us = r->p99_us = r->mean_us = NAN;
	r->moed_p50_us = r->moed_p99_us = NAN;
	if (!w || !m || !n)
		goto out;
	for (size_t i = 0; i < n; i++) {
		w[i] = r->load.rec[i].wall_usec;
		m[i] = r->load.rec[i].usec;
		sum += w[i];
	}
	qsort(w, n, sizeof(*w), cmp_u32);
	qsort(m, n, sizeof(*m), cmp_u32);
	r->p50_us = pct(w, n, 0.50);
	r->p99_us = pct(w, n, 0.99);
	r->mean_us = sum / (double)n;
	r->moed_p50_us = pct(m, n, 0.50);
	r->moed_p99_us = pct(m, n, 0.99);
out:
	free(w);
	free(m);
}

/* Percentiles of the wall times of one layer's requests of one phase. */
static void layer_phase(const struct bench_load *l, uint32_t layer, int phase,
			uint32_t *tmp, struct bench_layer_latency *out)
{
	size_t n = 0;

	for (size_t i = 0; i < l->n_rec; i++)
		if (l->rec[i].layer == layer && (l->rec[i].prefill != 0) == phase)
			tmp[n++] = l->rec[i].wall_usec;
	qsort(tmp, n, sizeof(*tmp), cmp_u32);
	out->requests[phase] = n;
	out->p50_us[phase] = pct(tmp, n, 0.50);
	out->p99_us[phase] = pct(tmp, n, 0.99);
}

static void per_layer(struct bench_run *r, uint32_t n_layer)
{
	const struct bench_load *l = &r->load;
	uint32_t *tmp = malloc((l->n_rec ? l->n_rec : 1) * sizeof(*tmp));
	bool *seen = calloc(n_layer ? n_layer : 1, sizeof(*seen));
	uint32_t n = 0;

	free(r->layers);
	r->layers = NULL;
	r->n_layers = 0;
	for (size_t i = 0; seen && i < l->n_rec; i++)
		if (l->rec[i].layer < n_layer && !seen[l->rec[i].layer]) {
			seen[l->rec[i].layer] = true;
			n++;
		}
	if (tmp && seen && n)
		r->layers = calloc(n, sizeof(*r->layers));
	for (uint32_t L = 0; r->layers && L < n_layer; L++) {
		struct bench_layer_latency *o = &r->layers[r->n_layers];

		if (!seen[L])
			continue;
		o->layer = L;
		layer_phase(l, L, 0, tmp, o);
		layer_phase(l, L, 1, tmp, o);
		r->n_layers++;
	}
	free(tmp);
	free(seen);
}

void bench_run_free(struct bench_run *r)
{
	free(r->layers);
	r->layers = NULL;
	r->n_layers = 0;
	bench_load_free(&r->load);
}

void bench_report_summarize(struct bench_run *r, uint32_t n_layer)
{
	const struct bench_load *l = &r->load;

	r->tokens = l->prefill_tokens + l->decode_tokens;
	r->seconds = (double)(l->t_end - l->t_start) * 1e-9;
	r->prefill_seconds = l->prefill_tokens ? (double)(l->t_decode - l->t_start) * 1e-9 : 0;
	r->decode_seconds = (double)(l->t_end - l->t_decode) * 1e-9;
	r->hits = r->misses = 0;
	for (size_t i = 0; i < l->n_rec; i++) {
		r->hits += l->rec[i].hit;
		r->misses += l->rec[i].miss;
	}
	latencies(r);
	per_layer(r, n_layer);
}

static double ratio(double a, double b)
{
	return b > 0 ? a / b : NAN;
}

double bench_run_tokens_per_s(const struct bench_run *r)
{
	return r->done ? ratio((double)r->tokens, r->seconds) : NAN;
}

double bench_ceiling_tokens_per_s(const struct bench_report *b)
{
	if (!b->ceiling_done || !b->ceiling.bytes)
		return NAN;
	return ratio((double)b->run[0].tokens, b->ceiling.seconds);
}

/* Bytes a run read from the model: the store's count, or for mmap what
 * the kernel read for moed (page faults and readahead). */
static double run_bytes(const struct bench_run *r)
{
	if (r->store)
		return (double)r->c.bytes_read;
	return r->disk_bytes == UINT64_MAX ? NAN : (double)r->disk_bytes;
}

static double hit_rate(const struct bench_run *r)
{
	return r->store ? ratio((double)r->hits, (double)(r->hits + r->misses)) : NAN;
}

static double prefetch_accuracy(const struct bench_run *r)
{
	return r->store ? ratio((double)r->c.prefetch_used, (double)r->c.prefetch_issued)
			: NAN;
}

/* ---- the table ---- */

/* A figure with fmt[0] decimals; "-" where there is none (NaN, or a
 * negative size meaning unknown). */
static void cell(FILE *f, int width, const char *fmt, double v)
{
	if (isnan(v) || v < 0)
		fprintf(f, " %*s", width, "-");
	else
		fprintf(f, " %*.*f", width, fmt[0] - '0', v);
}

static void table_row(FILE *f, const struct bench_report *b,
		      const struct bench_run *r)
{
	double tps = bench_run_tokens_per_s(r), bytes = run_bytes(r);

	fprintf(f, "%-22s", r->title);
	if (!r->done) {
		fprintf(f, " skipped: %s\n", r->skipped);
		return;
	}
	cell(f, 9, "1", tps);
	cell(f, 9, "0", r->p50_us);
	cell(f, 9, "0", r->p99_us);
	cell(f, 7, "1", 100 * hit_rate(r));
	cell(f, 8, "1", 100 * prefetch_accuracy(r));
	cell(f, 8, "3", bytes / 1e9);
	cell(f, 6, "2", ratio(bytes / 1e9, r->seconds));
	cell(f, 8, "2", ratio(tps, bench_ceiling_tokens_per_s(b)));
	cell(f, 8, "0", r->peak_rss_mb);
	cell(f, 8, "0", r->cgroup_peak_mb);
	fputc('\n', f);
}

static void table_head(FILE *f, const struct bench_report *b)
{
	const struct bench_run *m = &b->run[0];

	fprintf(f, "model     %s: %s, %u MoE layers, %u experts, %u per token\n",
		b->model, b->arch, b->n_moe_layers, b->n_expert, b->n_used);
	fprintf(f, "          %.1f MiB of experts (one expert read: %.2f MiB), file %.1f MiB\n",
		b->expert_bytes / MIB, b->expert_read_bytes / MIB, b->file_bytes / MIB);
	if (!b->attached)
		fprintf(f, "          its pages are dropped from the page cache before the moed and mmap runs\n");
	if (b->mem_cap_mb)
		fprintf(f, "memory    cap %" PRIu64 " MiB (%s): the experts are %.1fx the cap\n",
			b->mem_cap_mb, b->cgroup, b->expert_bytes / MIB / (double)b->mem_cap_mb);
	else
		fprintf(f, "memory    no cap%s%s\n", b->cgroup[0] ? ": " : "", b->cgroup);
	if (b->attached)
		fprintf(f, "moed      a running moed (--socket): its own budget and policy\n");
	else
		fprintf(f, "moed      expert budget %" PRIu64 " MiB, policy %s, prefetch %s\n",
			m->cache_mb, b->policy, b->prefetch ? "on" : "off");
	fprintf(f, "workload  %s, k %u: %u decode tokens, prefill %u per stream, %u client%s (%s) x %u in flight, seed %" PRIu64 "\n",
		b->workload, b->k, b->tokens, b->prefill, b->clients,
		b->clients == 1 ? "" : "s", b->procs ? "processes" : "threads",
		b->inflight, b->seed);
}

static void table_ceiling(FILE *f, const struct bench_report *b)
{
	const struct bench_ceiling *c = &b->ceiling;

	fprintf(f, "%-22s", "I/O ceiling");
	if (!b->ceiling_done) {
		fprintf(f, " skipped: %s\n", b->ceiling_skipped);
		return;
	}
	if (!c->bytes) {
		fprintf(f, " nothing to read: moed read no expert in the run\n");
		return;
	}
	cell(f, 9, "1", bench_ceiling_tokens_per_s(b));
	fprintf(f, "   moed's %.3f GB as %" PRIu64 " raw expert reads in %.3f s: %.2f GB/s at QD %u, %s\n",
		c->bytes / 1e9, b->ceiling_reads, c->seconds,
		c->bytes / 1e9 / c->seconds, c->queue_depth, c->how);
	fprintf(f, "%-22s   (which experts: an LRU replay of the trace at %.0f MiB, %" PRIu64 " misses, %.3f GB; moed does not say which it read)\n",
		"", b->ceiling_budget / MIB, b->ceiling_replay_reads,
		b->ceiling_replay_bytes / 1e9);
}

/* Each MoE layer's p50 and p99 in moed's run, decode and prefill apart. */
static void table_layers(FILE *f, const struct bench_run *r)
{
	bool prefill = false;

	if (!r->done || !r->n_layers)
		return;
	for (uint32_t i = 0; i < r->n_layers; i++)
		prefill |= r->layers[i].requests[1] != 0;
	fprintf(f, "\n%s, per MoE layer (us)\n%-8s %9s %9s %9s", r->title, "layer",
		"requests", "p50", "p99");
	if (prefill)
		fprintf(f, "   prefill: %9s %9s %9s", "requests", "p50", "p99");
	fputc('\n', f);
	for (uint32_t i = 0; i < r->n_layers; i++) {
		const struct bench_layer_latency *L = &r->layers[i];

		fprintf(f, "%-8u %9" PRIu64, L->layer, L->requests[0]);
		cell(f, 9, "0", L->p50_us[0]);
		cell(f, 9, "0", L->p99_us[0]);
		if (prefill) {
			fprintf(f, "   %8s %9" PRIu64, "", L->requests[1]);
			cell(f, 9, "0", L->p50_us[1]);
			cell(f, 9, "0", L->p99_us[1]);
		}
		fputc('\n', f);
	}
}

void bench_report_table(FILE *f, const struct bench_report *b)
{
	const struct bench_run *m = &b->run[0];

	table_head(f, b);
	fprintf(f, "\n%-22s %9s %9s %9s %7s %8s %8s %6s %8s %8s %8s\n", "run",
		"tokens/s", "p50 us", "p99 us", "hit %", "pf acc %", "read GB",
		"GB/s", "of ceil", "RSS MiB", "cg MiB");
	for (int i = 0; i < 3; i++)
		table_row(f, b, &b->run[i]);
	table_ceiling(f, b);
	table_layers(f, m);
	if (m->done && m->load.prefill_tokens)
		fprintf(f, "\nmoed: prefill %.1f tokens/s, decode %.1f tokens/s\n",
			ratio((double)m->load.prefill_tokens, m->prefill_seconds),
			ratio((double)m->load.decode_tokens, m->decode_seconds));
	fprintf(f, "\np50, p99: one MoE layer, request submitted to answer collected, all layers together\n"
		   "(each layer's below the runs). read: bytes moed read from the model (mmap: what the\n"
		   "kernel read for it). of ceil: tokens/s over the I/O ceiling's, raw reads of moed's\n"
		   "bytes. RSS: moed's peak resident set; cg: the cgroup's peak (page cache included).\n");
}

/* ---- JSON ---- */

struct json {
	FILE *f;
	int depth;
	bool first;
};

static void j_key(struct json *j, const char *key)
{
	fprintf(j->f, "%s\n%*s\"%s\": ", j->first ? "" : ",", 2 * j->depth, "", key);
	j->first = false;
}

static void j_open(struct json *j, const char *key)
{
	if (key)
		j_key(j, key);
	fputc('{', j->f);
	j->depth++;
	j->first = true;
}

static void j_close(struct json *j)
{
	j->depth--;
	fprintf(j->f, "\n%*s}", 2 * j->depth, "");
	j->first = false;
}

/* Whole numbers (byte counts) in full, so that they can be checked
 * exactly; others to six figures. */
static void j_num(struct json *j, const char *key, double v)
{
	j_key(j, key);
	if (isfinite(v) && v == floor(v) && fabs(v) < 0x1p53)
		fprintf(j->f, "%.0f", v);
	else if (isfinite(v))
		fprintf(j->f, "%.6g", v);
	else
		fputs("null", j->f);
}

static void j_u64(struct json *j, const char *key, uint64_t v)
{
	j_key(j, key);
	fprintf(j->f, "%" PRIu64, v);
}

static void j_bool(struct json *j, const char *key, bool v)
{
	j_key(j, key);
	fputs(v ? "true" : "false", j->f);
}

static void j_str(struct json *j, const char *key, const char *s)
{
	j_key(j, key);
	fputc('"', j->f);
	for (; s && *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\')
			fprintf(j->f, "\\%c", c);
		else if (c < 0x20)
			fprintf(j->f, "\\u%04x", c);
		else
			fputc(c, j->f);
	}
	fputc('"', j->f);
}

static void j_inline_num(FILE *f, const char *key, double v)
{
	if (isfinite(v))
		fprintf(f, ", \"%s\": %.0f", key, v);
	else
		fprintf(f, ", \"%s\": null", key);
}

/* "layers": one object a line, each MoE layer's latency by phase. */
static void j_layers(struct json *j, const struct bench_run *r)
{
	static const char *const phase[2] = { "decode", "prefill" };

	j_key(j, "layers");
	fputc('[', j->f);
	for (uint32_t i = 0; i < r->n_layers; i++) {
		const struct bench_layer_latency *L = &r->layers[i];

		fprintf(j->f, "%s\n%*s{\"layer\": %u", i ? "," : "", 2 * j->depth + 2, "", L->layer);
		for (int p = 0; p < 2; p++) {
			fprintf(j->f, ", \"%s\": {\"requests\": %" PRIu64, phase[p], L->requests[p]);
			j_inline_num(j->f, "p50_us", L->p50_us[p]);
			j_inline_num(j->f, "p99_us", L->p99_us[p]);
			fputc('}', j->f);
		}
		fputc('}', j->f);
	}
	fprintf(j->f, "%s]", r->n_layers ? "\n" : "");
}

/* The figures every run has; the moed run's go at the top level. */
static void j_run_figures(struct json *j, const struct bench_report *b,
			  const struct bench_run *r)
{
	double tps = bench_run_tokens_per_s(r), bytes = run_bytes(r);

	j_u64(j, "tokens", r->tokens);
	j_num(j, "seconds", r->seconds);
	j_num(j, "tokens_per_s", tps);
	j_num(j, "prefill_tokens_per_s", r->load.prefill_tokens
		? ratio((double)r->load.prefill_tokens, r->prefill_seconds) : NAN);
	j_num(j, "decode_tokens_per_s", ratio((double)r->load.decode_tokens, r->decode_seconds));
	j_u64(j, "requests", r->load.n_rec);
	j_open(j, "layer_latency_us");
	j_num(j, "p50", r->p50_us);
	j_num(j, "p99", r->p99_us);
	j_num(j, "mean", r->mean_us);
	j_num(j, "moed_p50", r->moed_p50_us);
	j_num(j, "moed_p99", r->moed_p99_us);
	j_close(j);
	j_layers(j, r);
	j_u64(j, "expert_hits", r->hits);
	j_u64(j, "expert_misses", r->misses);
	j_num(j, "hit_rate", hit_rate(r));
	j_u64(j, "prefetch_issued", r->c.prefetch_issued);
	j_u64(j, "prefetch_used", r->c.prefetch_used);
	j_u64(j, "prefetch_wasted", r->c.prefetch_wasted);
	j_num(j, "prefetch_accuracy", prefetch_accuracy(r));
	j_u64(j, "evictions", r->c.evictions);
	j_num(j, "bytes_read", bytes);
	j_num(j, "disk_read_bytes", r->disk_bytes == UINT64_MAX ? NAN : (double)r->disk_bytes);
	j_u64(j, "major_faults", r->major_faults);
	j_num(j, "read_gbps", ratio(bytes / 1e9, r->seconds));
	j_num(j, "io_ceiling_fraction", ratio(tps, bench_ceiling_tokens_per_s(b)));
	j_num(j, "peak_rss_mb", r->peak_rss_mb >= 0 ? r->peak_rss_mb : NAN);
	j_num(j, "cgroup_peak_mb", r->cgroup_peak_mb >= 0 ? r->cgroup_peak_mb : NAN);
	j_u64(j, "cache_mb", r->cache_mb);
}

static void j_baseline(struct json *j, const struct bench_report *b,
		       const struct bench_run *r)
{
	j_open(j, r->name);
	if (r->done)
		j_run_figures(j, b, r);
	else {
		j_num(j, "tokens_per_s", NAN);
		j_str(j, "skipped", r->skipped);
	}
	j_close(j);
}

static void j_ceiling(struct json *j, const struct bench_report *b)
{
	const struct bench_ceiling *c = &b->ceiling;

	j_open(j, "io_ceiling");
	j_num(j, "tokens_per_s", bench_ceiling_tokens_per_s(b));
	if (!b->ceiling_done) {
		j_str(j, "skipped", b->ceiling_skipped);
		j_close(j);
		return;
	}
	j_u64(j, "reads", b->ceiling_reads);
	j_u64(j, "bytes", c->bytes);
	j_num(j, "seconds", c->seconds);
	j_num(j, "read_gbps", ratio(c->bytes / 1e9, c->seconds));
	j_u64(j, "queue_depth", c->queue_depth);
	j_u64(j, "chunk_bytes", c->chunk);
	j_str(j, "method", "moed's bytes read, as raw reads of the trace's experts (an LRU replay picks which)");
	j_u64(j, "moed_bytes_read", b->run[0].c.bytes_read);
	j_u64(j, "replay_reads", b->ceiling_replay_reads);
	j_u64(j, "replay_bytes", b->ceiling_replay_bytes);
	j_u64(j, "cache_bytes", b->ceiling_budget);
	j_str(j, "how", c->how);
	j_close(j);
}

static void j_setup(struct json *j, const struct bench_report *b)
{
	j_open(j, "model");
	j_str(j, "path", b->model);
	j_str(j, "arch", b->arch);
	j_u64(j, "file_bytes", b->file_bytes);
	j_u64(j, "expert_bytes", b->expert_bytes);
	j_u64(j, "expert_read_bytes", b->expert_read_bytes);
	j_u64(j, "expert_read_bytes_min", b->expert_read_min);
	j_u64(j, "moe_layers", b->n_moe_layers);
	j_u64(j, "experts", b->n_expert);
	j_u64(j, "experts_per_token", b->n_used);
	j_close(j);
	j_u64(j, "mem_cap_mb", b->mem_cap_mb);
	j_str(j, "cgroup", b->cgroup);
	j_open(j, "workload");
	j_str(j, "kind", b->workload);
	j_u64(j, "k", b->k);
	j_u64(j, "decode_tokens", b->tokens);
	j_u64(j, "prefill", b->prefill);
	j_u64(j, "clients", b->clients);
	j_bool(j, "processes", b->procs);
	j_u64(j, "inflight", b->inflight);
	j_u64(j, "seed", b->seed);
	j_close(j);
	j_str(j, "policy", b->attached ? "" : b->policy);
	j_bool(j, "prefetch", b->prefetch);
	j_bool(j, "attached", b->attached);
}

void bench_report_json(FILE *f, const struct bench_report *b)
{
	struct json j = { .f = f, .first = true };

	j_open(&j, NULL);
	j_setup(&j, b);
	j_run_figures(&j, b, &b->run[0]);
	j_open(&j, "baselines");
	for (int i = 1; i < 3; i++)
		j_baseline(&j, b, &b->run[i]);
	j_ceiling(&j, b);
	j_close(&j);
	j_close(&j);
	fputc('\n', f);
}

/* ---- plots ---- */

bool bench_have_gnuplot(void)
{
	const char *path = getenv("PATH");
	char p[4096];

	for (const char *s = path; s && *s;) {
		size_t len = strcspn(s, ":");

		snprintf(p, sizeof(p), "%.*s/gnuplot", (int)len, len ? s : ".");
		if (access(p, X_OK) == 0)
			return true;
		s += len + (s[len] == ':');
	}
	return false;
}

/* Sorted latencies against the fraction of requests at or below them. */
static int write_cdf(const char *path, const struct bench_run *r)
{
	size_t n = r->load.n_rec;
	uint32_t *v = malloc((n ? n : 1) * sizeof(*v));
	FILE *f = fopen(path, "w");
	int rc = 0;

	if (!v)
		rc = -ENOMEM;
	else if (!f)
		rc = -errno;
	for (size_t i = 0; !rc && i < n; i++)
		v[i] = r->load.rec[i].wall_usec;
	if (!rc) {
		qsort(v, n, sizeof(*v), cmp_u32);
		for (size_t i = 0; i < n; i++)
			fprintf(f, "%u %.6f\n", v[i] ? v[i] : 1, (double)(i + 1) / (double)n);
	}
	if (f && fclose(f) && !rc)
		rc = -errno;
	free(v);
	return rc;
}

/* Hit rate of the expert uses in each of about 60 slices of the run. */
static int write_hitrate(const char *path, const struct bench_run *r)
{
	const struct bench_load *l = &r->load;
	double span = (double)(l->t_end - l->t_start), step = span / 60;
	FILE *f = fopen(path, "w");
	size_t i = 0;

	if (!f)
		return -errno;
	for (int s = 0; s < 60 && step > 0; s++) {
		double end = l->t_start + step * (s + 1);
		uint64_t h = 0, m = 0;

		for (; i < l->n_rec && (double)l->rec[i].t_done <= end; i++) {
			h += l->rec[i].hit;
			m += l->rec[i].miss;
		}
		if (h + m)
			fprintf(f, "%.4f %.5f\n", (end - l->t_start - step / 2) * 1e-9,
				(double)h / (double)(h + m));
	}
	return fclose(f) ? -errno : 0;
}

static int write_script(const char *dir, const struct bench_report *b)
{
	char p[4200];
	FILE *f;
	bool any = false;

	snprintf(p, sizeof(p), "%s/plots.gp", dir);
	f = fopen(p, "w");
	if (!f)
		return -errno;
	fprintf(f, "# moe-bench's plots: gnuplot %s/plots.gp\n"
		   "if (strstrt(GPVAL_TERMINALS, 'pngcairo') > 0) {\n"
		   "  set terminal pngcairo size 960,600\n"
		   "} else {\n"
		   "  set terminal png size 960,600\n"
		   "}\n"
		   "set grid\nset key bottom right\n"
		   "set output '%s/latency.png'\n"
		   "set title 'Per-layer latency, %s (%s)'\n"
		   "set logscale x\nset xlabel 'microseconds, request submitted to answer'\n"
		   "set ylabel 'fraction of requests'\nset yrange [0:1]\nplot ",
		dir, dir, b->model, b->workload);
	for (int i = 0; i < 3; i++)
		if (b->run[i].done && b->run[i].load.n_rec) {
			fprintf(f, "%s'%s/latency-%s.dat' using 1:2 with lines lw 2 title '%s'",
				any ? ", " : "", dir, b->run[i].name, b->run[i].title);
			any = true;
		}
	fprintf(f, "\nunset logscale x\nset output '%s/hitrate.png'\n"
		   "set title 'Expert cache hit rate over the run'\n"
		   "set xlabel 'seconds'\nset ylabel 'hit rate'\nset yrange [0:1.05]\n"
		   "plot '%s/hitrate-moed.dat' using 1:2 with linespoints title '%s'\n",
		dir, dir, b->run[0].title);
	return fclose(f) ? -errno : 0;
}

static int run_gnuplot(const char *dir, struct moe_msg *err)
{
	char script[4200];
	pid_t pid;
	int ws;

	snprintf(script, sizeof(script), "%s/plots.gp", dir);
	pid = fork();
	if (pid < 0)
		return moe_msgf(err, -errno, "fork: %s", moe_strerror(-errno));
	if (pid == 0) {
		execlp("gnuplot", "gnuplot", script, (char *)NULL);
		_exit(127);
	}
	if (waitpid(pid, &ws, 0) != pid || !WIFEXITED(ws) || WEXITSTATUS(ws))
		return moe_msgf(err, -ECHILD, "gnuplot %s failed (status %d)%s", script,
				WIFEXITED(ws) ? WEXITSTATUS(ws) : -1,
				WIFEXITED(ws) && WEXITSTATUS(ws) == 127 ? ": gnuplot is not installed" : "");
	return 0;
}

int bench_report_plot(const char *dir, const struct bench_report *b,
		      struct moe_msg *err)
{
	char p[4200];
	int rc = 0;

	if (strchr(dir, '\''))
		return moe_msgf(err, -EINVAL, "--plot %s: a quote in the path would break the gnuplot script", dir);
	if (mkdir(dir, 0755) && errno != EEXIST)
		return moe_msgf(err, -errno, "--plot %s: %s", dir, moe_strerror(-errno));
	for (int i = 0; !rc && i < 3; i++) {
		if (!b->run[i].done)
			continue;
		snprintf(p, sizeof(p), "%s/latency-%s.dat", dir, b->run[i].name);
		rc = write_cdf(p, &b->run[i]);
	}
	snprintf(p, sizeof(p), "%s/hitrate-moed.dat", dir);
	if (!rc)
		rc = write_hitrate(p, &b->run[0]);
	if (!rc)
		rc = write_script(dir, b);
	if (rc)
		return moe_msgf(err, rc, "--plot %s: %s", p, moe_strerror(rc));
	return run_gnuplot(dir, err);
}
