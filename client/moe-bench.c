/* moe-bench: how fast a model runs through moed on this machine, with
 * this much memory, against what the alternatives give on the same trace.
 * It starts a moed of its own on the model (or uses a running one), caps
 * its memory with a cgroup, drives it through libmoeclient with a
 * router-driven or synthetic workload, then runs the baselines: mmap and
 * the page cache under the same cap, everything in RAM, and the I/O
 * ceiling (raw reads of the expert bytes the trace needed). */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <moe/moeclient.h>

#include "../tools/cli.h"

#include "bench_cgroup.h"
#include "bench_cleanup.h"
#include "bench_io.h"
#include "bench_load.h"
#include "bench_moed.h"
#include "bench_report.h"
#include "bench_route.h"
#include "model.h"
#include "proto.h"
#include "sock.h"

#define MIB ((uint64_t)1 << 20)
#define MAX_MOED_ARGS 16
#define ASK_TIMEOUT_MS 10000

/* Exit statuses scripts can tell apart. */
enum { EXIT_FAIL = 1, EXIT_USAGE = 2, EXIT_REFUSED = 3 };

struct app {
	const char *model, *sock, *moed_given, *cg_root, *plot, *workload;
	struct bench_load_opts lo;
	uint64_t cap_mb, cache_mb;
	const char *policy;
	bool no_prefetch, drop_caches, no_cap_ok, json;
	bool want_mmap, want_ram, want_io;
	const char *moed_args[MAX_MOED_ARGS + 1];
	int n_moed_args;
	/* State. */
	struct moe_model *m;
	char moed[PATH_MAX];
	uint32_t blk;
	struct bench_router *router;
	struct ipc_status_reply status; /* --socket: the running moed's */
	struct bench_report rep;
};

static void usage(FILE *f)
{
	fprintf(f,
"usage: moe-bench MODEL.gguf [options]            start a moed of its own\n"
"       moe-bench --socket PATH [MODEL.gguf] [options]  use a running moed\n"
"Workload:\n"
"  --workload W      router (hidden states through the model's routers), or a\n"
"                    synthetic trace: uniform, zipf[:S], correlated:P[:S] (router)\n"
"  --tokens N        decode tokens, one per request per layer, in all (128)\n"
"  --prefill N       prompt tokens per stream, sent as one request per layer (0)\n"
"  --clients N       connections to moed, each its own thread (1)\n"
"  --procs           clients are processes instead of threads\n"
"  --inflight N      requests in flight per client: independent streams (1)\n"
"  --k K             experts per token of a synthetic trace (the model's)\n"
"  --alpha A         residual stream: next input = input + A * output (0.5)\n"
"  --seed S          seed of the hidden states and traces (1)\n"
"  --timeout MS      bound on each request (120000)\n"
"Memory:\n"
"  --mem-cap MB      run moed, and the mmap baseline, in a memory cgroup capped at MB MiB\n"
"  --cgroup-root DIR make the cgroup under DIR ($" BENCH_CGROUP_ROOT_ENV ")\n"
"  --no-cap-ok       where no cgroup can be made, go on with moed's budget alone\n"
"  --drop-caches     drop the page cache before each capped run\n"
"  --cache-mb MB     moed's expert budget (60%% of the cap; without a cap 4096)\n"
"  --policy P        moed's eviction policy: lru, lfu or predict (predict)\n"
"  --no-prefetch     moed does not prefetch the next layer's experts\n"
"  --moed PATH       the moed to start (next to moe-bench, else on $PATH)\n"
"  --moed-arg ARG    one more argument for moed (repeatable)\n"
"Baselines and output:\n"
"  --baselines LIST  mmap, ram, io (the I/O ceiling), comma-separated, or none (all)\n"
"  --json            one JSON object on stdout instead of the table\n"
"  --plot DIR        latency and hit-rate plots as PNG in DIR (needs gnuplot)\n"
"Exit status: 0 done; 1 the model is missing, moed failed or a run failed;\n"
"2 bad command line; 3 the memory cap or a page-cache drop was refused.\n");
}

static int num(const char *opt, const char *s, double lo, double hi, double *v)
{
	return cli_num("moe-bench", opt, s, lo, hi, v);
}

static int parse_baselines(struct app *a, const char *s)
{
	char buf[128], *save = NULL;

	a->want_mmap = a->want_ram = a->want_io = false;
	if (strcmp(s, "none") == 0)
		return 0;
	snprintf(buf, sizeof(buf), "%s", s);
	for (char *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
		if (strcmp(t, "mmap") == 0)
			a->want_mmap = true;
		else if (strcmp(t, "ram") == 0)
			a->want_ram = true;
		else if (strcmp(t, "io") == 0)
			a->want_io = true;
		else {
			fprintf(stderr, "moe-bench: --baselines: '%s' is not mmap, ram, io or none\n", t);
			return -1;
		}
	}
	return 0;
}

static int parse_workload(struct app *a, const char *s)
{
	a->workload = s;
	if (strcmp(s, "router") == 0) {
		a->lo.kind = BENCH_ROUTER;
		return 0;
	}
	a->lo.kind = BENCH_TRACE;
	if (bench_trace_parse(s, &a->lo.trace) == 0)
		return 0;
	fprintf(stderr, "moe-bench: --workload '%s': expected router, uniform, zipf[:S] (S > 0) or correlated:P[:S] (P in [0, 1])\n", s);
	return -1;
}

/* One option that takes a number. */
static int parse_number(struct app *a, int c, const char *arg)
{
	double v = 0;
	int rc;

	switch (c) {
	case 'n': rc = num("--tokens", arg, 1, 1e9, &v); a->lo.tokens = (uint32_t)v; break;
	case 'P': rc = num("--prefill", arg, 0, 65536, &v); a->lo.prefill = (uint32_t)v; break;
	case 'c': rc = num("--clients", arg, 1, 1024, &v); a->lo.clients = (uint32_t)v; break;
	case 'i': rc = num("--inflight", arg, 1, 1024, &v); a->lo.inflight = (uint32_t)v; break;
	case 'k': rc = num("--k", arg, 1, 64, &v); a->lo.trace.k = (uint32_t)v; break;
	case 'A': rc = num("--alpha", arg, 0, 10, &v); a->lo.alpha = v; break;
	case 'S': rc = num("--seed", arg, 0, 1e15, &v); a->lo.seed = (uint64_t)v; break;
	case 'T': rc = num("--timeout", arg, 100, 3.6e6, &v); a->lo.timeout_ms = (uint32_t)v; break;
	case 'M': rc = num("--mem-cap", arg, 16, 1 << 30, &v); a->cap_mb = (uint64_t)v; break;
	case 'C': rc = num("--cache-mb", arg, 16, 1 << 30, &v); a->cache_mb = (uint64_t)v; break;
	default: rc = -1;
	}
	return rc;
}

static int parse_args(struct app *a, int argc, char **argv)
{
	static const struct option lo[] = {
		{ "workload", 1, NULL, 'w' }, { "tokens", 1, NULL, 'n' },
		{ "prefill", 1, NULL, 'P' }, { "clients", 1, NULL, 'c' },
		{ "procs", 0, NULL, 'p' }, { "inflight", 1, NULL, 'i' },
		{ "k", 1, NULL, 'k' }, { "alpha", 1, NULL, 'A' },
		{ "seed", 1, NULL, 'S' }, { "timeout", 1, NULL, 'T' },
		{ "mem-cap", 1, NULL, 'M' }, { "cgroup-root", 1, NULL, 'G' },
		{ "no-cap-ok", 0, NULL, 'N' }, { "drop-caches", 0, NULL, 'D' },
		{ "cache-mb", 1, NULL, 'C' }, { "policy", 1, NULL, 'Y' },
		{ "no-prefetch", 0, NULL, 'F' }, { "moed", 1, NULL, 'm' },
		{ "moed-arg", 1, NULL, 'a' }, { "baselines", 1, NULL, 'B' },
		{ "json", 0, NULL, 'j' }, { "plot", 1, NULL, 'o' },
		{ "socket", 1, NULL, 's' }, { "help", 0, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
		switch (c) {
		case 'w': if (parse_workload(a, optarg)) return -1; break;
		case 'p': a->lo.procs = true; break;
		case 'G': a->cg_root = optarg; break;
		case 'N': a->no_cap_ok = true; break;
		case 'D': a->drop_caches = true; break;
		case 'Y': a->policy = optarg; break;
		case 'F': a->no_prefetch = true; break;
		case 'm': a->moed_given = optarg; break;
		case 'a':
			if (a->n_moed_args == MAX_MOED_ARGS) {
				fprintf(stderr, "moe-bench: at most %d --moed-arg\n", MAX_MOED_ARGS);
				return -1;
			}
			a->moed_args[a->n_moed_args++] = optarg;
			break;
		case 'B': if (parse_baselines(a, optarg)) return -1; break;
		case 'j': a->json = true; break;
		case 'o': a->plot = optarg; break;
		case 's': a->sock = optarg; break;
		case 'h': usage(stdout); exit(0);
		case '?': usage(stderr); return -1;
		default: if (parse_number(a, c, optarg)) return -1;
		}
	}
	if (optind < argc)
		a->model = argv[optind++];
	if (optind < argc) {
		fprintf(stderr, "moe-bench: unexpected argument '%s'\n", argv[optind]);
		return -1;
	}
	return 0;
}

static int check_args(const struct app *a)
{
	if (!a->model && !a->sock) {
		fprintf(stderr, "moe-bench: no model: give MODEL.gguf, or --socket for a running moed\n");
		return -1;
	}
	if (a->sock && a->cap_mb) {
		fprintf(stderr, "moe-bench: --mem-cap needs a moed of moe-bench's own (not --socket): a running moed cannot be moved into a cgroup from here\n");
		return -1;
	}
	if (strcmp(a->policy, "lru") && strcmp(a->policy, "lfu") && strcmp(a->policy, "predict")) {
		fprintf(stderr, "moe-bench: --policy '%s': expected lru, lfu or predict\n", a->policy);
		return -1;
	}
	if (a->lo.kind == BENCH_ROUTER && a->lo.trace.k) {
		fprintf(stderr, "moe-bench: --k applies to synthetic traces; the router picks the model's k\n");
		return -1;
	}
	return 0;
}

/* ---- facts about the machine and moed ---- */

/* The number after key on the line of a /proc file that starts with it;
 * pid 0: /proc/file itself. -1 when there is none. */
static int64_t proc_field(pid_t pid, const char *file, const char *key)
{
	char p[64], line[256];
	size_t n = strlen(key);
	int64_t v = -1;
	FILE *f;

	if (pid)
		snprintf(p, sizeof(p), "/proc/%d/%s", (int)pid, file);
	else
		snprintf(p, sizeof(p), "/proc/%s", file);
	f = fopen(p, "re");
	if (!f)
		return -1;
	while (v < 0 && fgets(line, sizeof(line), f))
		if (strncmp(line, key, n) == 0)
			v = strtoll(line + n, NULL, 10);
	fclose(f);
	return v;
}

/* Major page faults: field 12 of /proc/pid/stat, counted after the
 * command name (which may hold spaces). */
static uint64_t proc_majflt(pid_t pid)
{
	char p[64], buf[1024], *s;
	unsigned long long v = 0;
	FILE *f;

	snprintf(p, sizeof(p), "/proc/%d/stat", (int)pid);
	f = fopen(p, "re");
	if (!f)
		return 0;
	if (fgets(buf, sizeof(buf), f) && (s = strrchr(buf, ')')))
		sscanf(s + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %llu", &v);
	fclose(f);
	return v;
}

static uint64_t mem_available(void)
{
	int64_t kb = proc_field(0, "meminfo", "MemAvailable:");

	return kb < 0 ? 0 : (uint64_t)kb * 1024;
}

/* moed's counters, and from its live figures the wasted prefetches and
 * the reads still pending. */
static int ask_stats(const char *sock, struct bench_counters *c,
		     uint32_t *pending)
{
	struct ipc_stats_reply r;
	struct ipc_stats_live_reply lr;
	int rc = ipc_ask(sock, ASK_TIMEOUT_MS, IPC_MSG_STATS, IPC_MSG_STATS_REPLY,
			 &r, sizeof(r));

	if (!rc)
		rc = ipc_ask(sock, ASK_TIMEOUT_MS, IPC_MSG_STATS_LIVE,
			     IPC_MSG_STATS_LIVE_REPLY, &lr, sizeof(lr));
	if (rc)
		return rc;
	*c = (struct bench_counters){
		r.requests, r.tokens, r.expert_hits, r.expert_misses,
		r.bytes_read, r.prefetch_issued, r.prefetch_used, r.evictions,
		r.busy_usec, lr.prefetch_wasted,
	};
	if (pending)
		*pending = lr.reads_pending;
	return 0;
}

/* The store counts a read's bytes when it completes and a prefetch when
 * it is issued: after the last request, wait (up to 10 s) for the
 * prefetches still in flight, so that the counters agree. */
static int settle(const char *sock, struct bench_counters *c)
{
	uint32_t pending = 0;
	int rc;

	for (int i = 0; i < 1000; i++) {
		rc = ask_stats(sock, c, &pending);
		if (rc || !pending)
			return rc;
		usleep(10000);
	}
	fprintf(stderr, "moe-bench: moed still has %u reads pending 10 s after the run: its bytes read may not cover every prefetch issued\n",
		pending);
	return 0;
}

static void counters_delta(struct bench_counters *d, const struct bench_counters *a,
			   const struct bench_counters *b)
{
	d->requests = b->requests - a->requests;
	d->tokens = b->tokens - a->tokens;
	d->expert_hits = b->expert_hits - a->expert_hits;
	d->expert_misses = b->expert_misses - a->expert_misses;
	d->bytes_read = b->bytes_read - a->bytes_read;
	d->prefetch_issued = b->prefetch_issued - a->prefetch_issued;
	d->prefetch_used = b->prefetch_used - a->prefetch_used;
	d->evictions = b->evictions - a->evictions;
	d->busy_usec = b->busy_usec - a->busy_usec;
	d->prefetch_wasted = b->prefetch_wasted - a->prefetch_wasted;
}

static int drop_caches(void)
{
	int fd, rc = 0;

	sync();
	fd = open("/proc/sys/vm/drop_caches", O_WRONLY | O_CLOEXEC);
	if (fd < 0 || write(fd, "1", 1) != 1)
		rc = -errno;
	if (fd >= 0)
		close(fd);
	if (rc)
		fprintf(stderr, "moe-bench: --drop-caches: cannot write /proc/sys/vm/drop_caches: %s (it needs root)\n",
			strerror(-rc));
	return rc;
}

/* Take the model's pages out of the page cache (written there by
 * whatever made the file, or read by an earlier run and charged to some
 * other cgroup), so that each run starts cold. Needs no privilege. */
static void evict_model(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return;
	fdatasync(fd); /* dirty pages cannot be dropped */
	posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
	close(fd);
}

/* ---- one run ---- */

/* Counters, /proc figures and the load itself, around one run. */
static int measure(struct app *a, struct bench_run *r, const char *sock,
		   pid_t pid, bool warm, struct moe_msg *err)
{
	struct bench_load_opts lo = a->lo;
	struct bench_counters before, after;
	int64_t io0, io1;
	uint64_t mf0;
	int rc = 0;

	if (warm) {
		uint32_t *ne = calloc(a->m->n_layer, sizeof(*ne));

		for (uint32_t l = 0; ne && l < a->m->n_layer; l++)
			ne[l] = a->m->layers[l].moe ? a->m->layers[l].n_expert : 0;
		rc = ne ? bench_load_touch_all(sock, ne, a->m->n_layer, lo.timeout_ms, err)
			: moe_msgf(err, -ENOMEM, "out of memory");
		free(ne);
		if (rc)
			return rc;
	}
	rc = settle(sock, &before);
	if (rc)
		return moe_msgf(err, rc, "moed's counters at %s: %s", sock, moe_strerror(rc));
	io0 = proc_field(pid, "io", "read_bytes:");
	mf0 = proc_majflt(pid);
	lo.sock = sock;
	lo.label = r->title;
	lo.router = r == &a->rep.run[0] ? a->router : NULL;
	rc = bench_load_run(&lo, &r->load, err);
	if (rc)
		return rc;
	rc = settle(sock, &after);
	if (rc)
		return moe_msgf(err, rc, "moed's counters at %s: %s", sock, moe_strerror(rc));
	counters_delta(&r->c, &before, &after);
	io1 = proc_field(pid, "io", "read_bytes:");
	r->disk_bytes = io0 >= 0 && io1 >= io0 ? (uint64_t)(io1 - io0) : UINT64_MAX;
	r->major_faults = proc_majflt(pid) - mf0;
	r->peak_rss_mb = (double)proc_field(pid, "status", "VmHWM:") / 1024.0;
	r->done = true;
	bench_report_summarize(r, a->m->n_layer);
	return 0;
}

static void cgroup_name(char *buf, size_t cap, const char *run)
{
	snprintf(buf, cap, "moe-bench-%d-%s", (int)getpid(), run);
}

/* The cgroup of a capped run; -1 (said why) when refused and not
 * allowed to go on without it, 1 when going on without one. */
static int make_cgroup(struct app *a, struct bench_run *r, struct bench_cgroup *cg)
{
	struct moe_msg err = { "" };
	char name[64];
	int rc;

	cgroup_name(name, sizeof(name), r->name);
	rc = bench_cgroup_make(cg, a->cg_root, name, a->cap_mb * MIB, &err);
	if (!rc) {
		bench_cleanup_cgroup(cg->path);
		snprintf(a->rep.cgroup, sizeof(a->rep.cgroup), "cgroup v%d, one per capped run under %.*s",
			 cg->version, (int)(strrchr(cg->path, '/') - cg->path), cg->path);
		return 0;
	}
	if (!a->no_cap_ok) {
		fprintf(stderr, "moe-bench: --mem-cap %" PRIu64 ": %s\n"
				"moe-bench: (--no-cap-ok runs without the cap, on moed's expert budget alone)\n",
			a->cap_mb, err.text);
		return -1;
	}
	snprintf(a->rep.cgroup, sizeof(a->rep.cgroup), "not enforced, moed's budget only: %.240s", err.text);
	fprintf(stderr, "moe-bench: no memory cgroup (%s): relying on moed's expert budget, the mmap baseline is not capped\n",
		err.text);
	return 1;
}

/* moed's options for a run. */
static void moed_options(struct app *a, const struct bench_run *r, bool mmap,
			 const char **args, char (*bufs)[32])
{
	int n = 0;

	if (mmap) {
		args[n++] = "--io";
		args[n++] = "mmap";
	} else {
		snprintf(bufs[0], 32, "%" PRIu64, r->cache_mb);
		args[n++] = "--cache-mb";
		args[n++] = bufs[0];
		args[n++] = "--policy";
		args[n++] = a->policy;
	}
	if (a->no_prefetch)
		args[n++] = "--prefetch=no";
	snprintf(bufs[1], 32, "%u", a->lo.prefill > 256 ? a->lo.prefill : 256);
	snprintf(bufs[2], 32, "%u", a->lo.inflight > 8 ? a->lo.inflight : 8);
	snprintf(bufs[3], 32, "%u", a->lo.clients + 4 > 64 ? a->lo.clients + 4 : 64);
	args[n++] = "--max-tokens";
	args[n++] = bufs[1];
	args[n++] = "--max-inflight";
	args[n++] = bufs[2];
	args[n++] = "--max-clients";
	args[n++] = bufs[3];
	for (int i = 0; i < a->n_moed_args; i++)
		args[n++] = a->moed_args[i];
	args[n] = NULL;
}

/* After a failed run: what moed's end and the cgroup say about it. */
static void explain_failure(const struct app *a, struct bench_run *r,
			    struct bench_moed *d, const struct bench_cgroup *cg,
			    const char *what)
{
	fprintf(stderr, "moe-bench: %s run: %s\n", r->title, what);
	if (!bench_moed_exited(d))
		return;
	if (cg && bench_cgroup_oom_kills(cg))
		fprintf(stderr, "moe-bench: the kernel's OOM killer killed moed in its cgroup: the %" PRIu64 " MiB cap is too small for %s\n",
			a->cap_mb, r->store ? "its expert budget (--cache-mb) plus its own memory" : "moed's own memory");
	bench_moed_report(d, stderr, 8);
}

static int run_own(struct app *a, struct bench_run *r, bool mmap, bool capped,
		   bool warm)
{
	const char *args[16 + MAX_MOED_ARGS];
	char bufs[4][32];
	struct bench_cgroup cg;
	struct bench_moed d;
	struct moe_msg err = { "" };
	int have_cg = -1, rc;

	r->store = !mmap;
	r->cgroup_peak_mb = -1;
	if (capped && a->cap_mb) {
		have_cg = make_cgroup(a, r, &cg);
		if (have_cg < 0)
			return -EXIT_REFUSED;
	}
	if (capped && a->drop_caches && drop_caches()) {
		if (have_cg == 0) {
			bench_cgroup_remove(&cg, NULL);
			bench_cleanup_cgroup(NULL);
		}
		return -EXIT_REFUSED;
	}
	if (!warm)
		evict_model(a->model);
	moed_options(a, r, mmap, args, bufs);
	rc = bench_moed_start(&d, &(struct bench_moed_opts){
		.moed = a->moed, .model = a->model, .args = args,
		.cg = have_cg == 0 ? &cg : NULL }, &err);
	if (rc) {
		explain_failure(a, r, &d, have_cg == 0 ? &cg : NULL, err.text);
		goto out;
	}
	rc = measure(a, r, d.sock, d.pid, warm, &err);
	if (rc)
		explain_failure(a, r, &d, have_cg == 0 ? &cg : NULL, err.text);
	if (have_cg == 0)
		r->cgroup_peak_mb = (double)bench_cgroup_peak(&cg) / (double)MIB;
	if (bench_moed_stop(&d, &err) && !rc) {
		fprintf(stderr, "moe-bench: %s run: %s\n", r->title, err.text);
		bench_moed_report(&d, stderr, 8);
		rc = -ECHILD;
	}
out:
	bench_moed_cleanup(&d);
	if (have_cg == 0 && bench_cgroup_remove(&cg, &err))
		fprintf(stderr, "moe-bench: %s\n", err.text);
	if (have_cg == 0)
		bench_cleanup_cgroup(NULL);
	return rc ? -EXIT_FAIL : 0;
}

static int run_attached(struct app *a, struct bench_run *r)
{
	struct moe_msg err = { "" };
	char comm[64] = "";
	int rc, fd;
	char p[64];

	r->store = a->status.cache_budget != 0;
	r->cache_mb = a->status.cache_budget / MIB;
	r->cgroup_peak_mb = -1;
	rc = measure(a, r, a->sock, a->status.pid, false, &err);
	if (rc) {
		fprintf(stderr, "moe-bench: %s\n", err.text);
		return -EXIT_FAIL;
	}
	/* Another pid namespace would make /proc name someone else. */
	snprintf(p, sizeof(p), "/proc/%d/comm", a->status.pid);
	fd = open(p, O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		ssize_t n = read(fd, comm, sizeof(comm) - 1);

		comm[n > 0 ? n : 0] = 0;
		close(fd);
	}
	if (strncmp(comm, "moed", 4)) {
		r->peak_rss_mb = -1;
		r->disk_bytes = UINT64_MAX;
		r->major_faults = 0;
	}
	return 0;
}

/* ---- the baselines ---- */

/* Bytes of a cache that holds every expert: each one's read, block
 * widened, as the store's slots are. */
static uint64_t all_experts_bytes(const struct app *a)
{
	uint64_t n = 0;

	for (uint32_t l = 0; l < a->m->n_layer; l++)
		for (uint32_t e = 0; a->m->layers[l].moe && e < a->m->layers[l].n_expert; e++)
			n += bench_expert_read_bytes(a->m, a->blk, l, e);
	return n;
}

static int run_ram(struct app *a, struct bench_run *r)
{
	uint64_t need = all_experts_bytes(a), avail = mem_available();

	r->cache_mb = (need + MIB - 1) / MIB + 16;
	if (need + (512ull << 20) > avail) {
		snprintf(r->skipped, sizeof(r->skipped),
			 "the experts need %" PRIu64 " MiB and %" PRIu64 " MiB are available",
			 need / MIB, avail / MIB);
		return 0;
	}
	return run_own(a, r, false, false, true);
}

/* Raw reads of moed's own bytes read, in expert reads of the trace (see
 * bench_io.h for which ones). */
static int run_ceiling(struct app *a)
{
	const struct bench_load *l = &a->rep.run[0].load;
	struct bench_use *u = malloc((l->n_rec ? l->n_rec : 1) * sizeof(*u));
	struct bench_read *reads = NULL;
	struct moe_msg err = { "" };
	size_t n = 0, nr = 0;
	uint64_t bytes;
	int rc;

	if (!u)
		return -ENOMEM;
	for (size_t i = 0; i < l->n_rec; i++)
		if (l->rec[i].n_ids)
			u[n++] = (struct bench_use){ l->rec[i].layer, l->rec[i].n_ids,
						     l->ids + l->rec[i].ids_off };
	a->rep.ceiling_budget = a->rep.run[0].cache_mb * MIB;
	rc = bench_ceiling_plan(a->m, a->blk, a->rep.ceiling_budget, u, n, &reads, &nr, &bytes);
	a->rep.ceiling_replay_reads = nr;
	a->rep.ceiling_replay_bytes = bytes;
	if (!rc)
		rc = bench_ceiling_match(a->m, a->blk, a->rep.run[0].c.bytes_read,
					 u, n, &reads, &nr, &bytes);
	free(u);
	if (!rc)
		rc = bench_ceiling_run(a->m, reads, nr, &a->rep.ceiling, &err);
	free(reads);
	if (rc) {
		snprintf(a->rep.ceiling_skipped, sizeof(a->rep.ceiling_skipped), "%.250s",
			 err.text[0] ? err.text : moe_strerror(rc));
		fprintf(stderr, "moe-bench: I/O ceiling: %s\n", a->rep.ceiling_skipped);
		return -EXIT_FAIL;
	}
	a->rep.ceiling_reads = nr;
	a->rep.ceiling_done = true;
	return 0;
}

/* ---- setting up ---- */

static int attach(struct app *a)
{
	int rc = ipc_ask(a->sock, ASK_TIMEOUT_MS, IPC_MSG_STATUS,
			 IPC_MSG_STATUS_REPLY, &a->status, sizeof(a->status));

	if (rc) {
		fprintf(stderr, "moe-bench: no moed answers at %s: %s\n", a->sock,
			rc == -EAGAIN ? "timed out" : moe_strerror(rc));
		return -1;
	}
	a->status.model[sizeof(a->status.model) - 1] = 0;
	if (!a->model)
		a->model = a->status.model;
	return 0;
}

static int open_model(struct app *a)
{
	struct moe_msg err = { "" };
	int rc = moe_model_open(&a->m, a->model, &err), fd;

	if (rc) {
		fprintf(stderr, "moe-bench: %s\n", err.text[0] ? err.text : moe_strerror(rc));
		if (a->sock && a->model == a->status.model)
			fprintf(stderr, "moe-bench: (the path moed reported; give the model's path after the options if it differs here)\n");
		return -1;
	}
	fd = open(a->model, O_RDONLY | O_CLOEXEC);
	a->blk = fd >= 0 ? bench_dio_block(fd) : 4096;
	if (fd >= 0)
		close(fd);
	return 0;
}

static void fill_report(struct app *a)
{
	struct bench_report *b = &a->rep;
	const struct moe_layer *L = &a->m->layers[a->m->first_moe_layer];
	struct stat st;

	b->model = a->model;
	b->arch = moe_arch_name(a->m->arch);
	b->file_bytes = stat(a->model, &st) ? 0 : (uint64_t)st.st_size;
	b->expert_bytes = moe_model_expert_bytes(a->m);
	b->expert_read_min = UINT64_MAX;
	for (uint32_t l = 0; l < a->m->n_layer; l++)
		for (uint32_t e = 0; a->m->layers[l].moe && e < a->m->layers[l].n_expert; e++) {
			uint64_t r = bench_expert_read_bytes(a->m, a->blk, l, e);

			if (r > b->expert_read_bytes)
				b->expert_read_bytes = r;
			if (r < b->expert_read_min)
				b->expert_read_min = r;
		}
	b->n_moe_layers = a->m->n_moe_layers;
	b->n_expert = a->m->max_expert;
	b->n_used = L->n_used;
	b->mem_cap_mb = a->cap_mb;
	b->workload = a->workload;
	b->k = a->lo.kind == BENCH_TRACE && a->lo.trace.k ? a->lo.trace.k : L->n_used;
	b->tokens = a->lo.tokens;
	b->prefill = a->lo.prefill;
	b->clients = a->lo.clients;
	b->inflight = a->lo.inflight;
	b->procs = a->lo.procs;
	b->seed = a->lo.seed;
	b->policy = a->policy;
	b->prefetch = !a->no_prefetch;
	b->attached = a->sock != NULL;
	b->run[0] = (struct bench_run){ .name = "moed",
		.title = a->sock ? "moed (running)" : "moed (store)" };
	b->run[1] = (struct bench_run){ .name = "mmap", .title = "mmap (page cache)" };
	b->run[2] = (struct bench_run){ .name = "ram", .title = "all in RAM" };
	if (!a->want_mmap)
		snprintf(b->run[1].skipped, sizeof(b->run[1].skipped), "not asked for (--baselines)");
	if (!a->want_ram)
		snprintf(b->run[2].skipped, sizeof(b->run[2].skipped), "not asked for (--baselines)");
	if (!a->cache_mb)
		a->cache_mb = a->cap_mb ? (a->cap_mb * 6 / 10 > 16 ? a->cap_mb * 6 / 10 : 16) : 4096;
	b->run[0].cache_mb = a->cache_mb;
	b->run[1].cache_mb = 0;
}

static int prepare(struct app *a)
{
	struct moe_msg err = { "" };

	if (a->sock && attach(a))
		return EXIT_FAIL;
	if (open_model(a))
		return EXIT_FAIL;
	if ((!a->sock || a->want_mmap || a->want_ram) &&
	    bench_moed_find(a->moed_given, a->moed, sizeof(a->moed), &err)) {
		fprintf(stderr, "moe-bench: %s\n", err.text);
		return EXIT_FAIL;
	}
	fill_report(a);
	if (a->want_io && a->lo.kind == BENCH_ROUTER &&
	    bench_router_open(&a->router, a->m, &err)) {
		fprintf(stderr, "moe-bench: %s\n", err.text);
		return EXIT_FAIL;
	}
	if (a->cap_mb)
		fprintf(stderr, "moe-bench: %s: %.1f MiB of experts against a %" PRIu64 " MiB memory cap (%.1fx)\n",
			a->model, a->rep.expert_bytes / (double)MIB, a->cap_mb,
			a->rep.expert_bytes / (double)MIB / (double)a->cap_mb);
	return 0;
}

static int run_all(struct app *a)
{
	struct bench_report *b = &a->rep;
	int rc;

	rc = a->sock ? run_attached(a, &b->run[0]) : run_own(a, &b->run[0], false, true, false);
	if (!rc && a->want_mmap)
		rc = run_own(a, &b->run[1], true, true, false);
	if (!rc && a->want_ram)
		rc = run_ram(a, &b->run[2]);
	if (!rc && a->want_io) {
		if (a->rep.run[0].store)
			rc = run_ceiling(a);
		else
			snprintf(b->ceiling_skipped, sizeof(b->ceiling_skipped),
				 "moed reads through mmap: no expert cache to replay");
	} else if (!a->want_io) {
		snprintf(b->ceiling_skipped, sizeof(b->ceiling_skipped), "not asked for (--baselines)");
	}
	return rc ? -rc : 0;
}

int main(int argc, char **argv)
{
	struct app a = {
		.lo = { .tokens = 128, .clients = 1, .inflight = 1, .alpha = 0.5,
			.seed = 1, .timeout_ms = 120000 },
		.workload = "router", .policy = "predict",
		.want_mmap = true, .want_ram = true, .want_io = true,
	};
	struct moe_msg err = { "" };
	int rc;

	signal(SIGPIPE, SIG_IGN);
	bench_cleanup_install();
	if (parse_args(&a, argc, argv) || check_args(&a))
		return EXIT_USAGE;
	if (a.plot && !bench_have_gnuplot()) {
		fprintf(stderr, "moe-bench: --plot needs gnuplot, which is not on $PATH (Debian: apt-get install gnuplot-nox)\n");
		return EXIT_FAIL;
	}
	rc = prepare(&a);
	if (!rc)
		rc = run_all(&a);
	if (!rc) {
		if (a.json)
			bench_report_json(stdout, &a.rep);
		else
			bench_report_table(stdout, &a.rep);
		fflush(stdout);
		if (a.plot && bench_report_plot(a.plot, &a.rep, &err)) {
			fprintf(stderr, "moe-bench: %s\n", err.text);
			rc = EXIT_FAIL;
		}
	}
	for (int i = 0; i < 3; i++)
		bench_run_free(&a.rep.run[i]);
	bench_router_close(a.router);
	moe_model_close(a.m);
	return rc;
}
