/* moe-bench's report: the figures of each run (moed itself and the
 * baselines: mmap, all in RAM, the I/O ceiling) worked out from the
 * request records and moed's counters, printed as a table or as one JSON
 * object, and plotted with gnuplot. */
#ifndef MOE_BENCH_REPORT_H
#define MOE_BENCH_REPORT_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "bench_io.h"
#include "bench_load.h"
#include "diag.h"

/* moed's counters over one run (after minus before). */
struct bench_counters {
	uint64_t requests, tokens, expert_hits, expert_misses, bytes_read;
	uint64_t prefetch_issued, prefetch_used, evictions, busy_usec;
	uint64_t prefetch_wasted; /* evicted or cancelled before a want */
};

/* One MoE layer's request latencies in a run, submit to answer, each
 * phase apart ([0] decode, [1] prefill). */
struct bench_layer_latency {
	uint32_t layer;
	uint64_t requests[2];
	double p50_us[2], p99_us[2]; /* NaN where the phase sent none */
};

struct bench_run {
	const char *name;        /* key in the JSON: "moed", "mmap", "ram" */
	const char *title;       /* row of the table */
	bool done;
	char skipped[256];       /* why it did not run, or "" */
	struct bench_load load;  /* the records */
	struct bench_counters c; /* moed's */
	bool store;              /* moed read through its store (else mmap) */
	uint64_t disk_bytes;     /* moed's read_bytes in /proc (-1: unknown) */
	uint64_t major_faults;
	double peak_rss_mb;      /* moed's VmHWM; < 0: unknown */
	double cgroup_peak_mb;   /* < 0: not capped or unknown */
	uint64_t cache_mb;       /* moed's expert budget; 0 for mmap */
	/* Worked out by bench_report_summarize(): */
	uint64_t tokens, hits, misses;
	double seconds, prefill_seconds, decode_seconds;
	double p50_us, p99_us, mean_us;       /* per-layer, submit to answer */
	double moed_p50_us, moed_p99_us;      /* per-layer, inside moed */
	struct bench_layer_latency *layers;   /* each MoE layer's, by index */
	uint32_t n_layers;
};

struct bench_report {
	/* What was run. */
	const char *model;
	const char *arch;
	uint64_t file_bytes, expert_bytes;
	uint64_t expert_read_bytes;  /* one expert's read (the largest) */
	uint64_t expert_read_min;    /* and the smallest: reads are widened
				      * to whole blocks, so they differ */
	uint32_t n_moe_layers, n_expert, n_used;
	uint64_t mem_cap_mb;         /* 0: no cap */
	char cgroup[300];            /* "v1 /sys/fs/cgroup/memory/...", or why none */
	const char *workload;        /* "router", "zipf:1.2", ... */
	uint32_t k, tokens, prefill, clients, inflight;
	bool procs;
	uint64_t seed;
	const char *policy;
	bool prefetch;
	bool attached;               /* --socket: moed was not ours */
	/* The runs: [0] moed itself, then the mmap and all-in-RAM baselines. */
	struct bench_run run[3];
	/* The I/O ceiling. */
	bool ceiling_done;
	char ceiling_skipped[256];
	struct bench_ceiling ceiling;
	uint64_t ceiling_reads;      /* expert reads of the timed pass */
	uint64_t ceiling_budget;     /* bytes of the replayed cache */
	uint64_t ceiling_replay_reads, ceiling_replay_bytes; /* the replay's
				      * misses, before matching moed's bytes */
};

/* Fill the worked-out fields of r from its records (n_layer: the
 * model's layers, MoE or not). */
void bench_report_summarize(struct bench_run *r, uint32_t n_layer);
/* Free what summarize allocated and the run's records. */
void bench_run_free(struct bench_run *r);

double bench_run_tokens_per_s(const struct bench_run *r);
/* Tokens/s the ceiling allows (0: nothing to read, or not measured). */
double bench_ceiling_tokens_per_s(const struct bench_report *b);

void bench_report_table(FILE *f, const struct bench_report *b);
void bench_report_json(FILE *f, const struct bench_report *b);

/* Is gnuplot on $PATH? */
bool bench_have_gnuplot(void);

/* Write dir/latency.png (distribution of per-layer latency, each run)
 * and dir/hitrate.png (moed's hit rate over the run), with the data and
 * the gnuplot script beside them. 0 or -errno with err set. */
int bench_report_plot(const char *dir, const struct bench_report *b,
		      struct moe_msg *err);

#endif
