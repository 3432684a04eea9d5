/* moed under 1, 2, 4 and 8 clients: each client decodes tokens one at a
 * time through every MoE layer (moe_forward, a residual stream), so what
 * moed sees is what a batch of independent decoders sends it. Prints
 * tokens/s, the client's request latency, and expert weight passes per
 * token beside expert uses per token: the batching gain, how many tokens
 * one pass over an expert's weights served. The baseline, in the same
 * run: the same decode in this process through the engine, no moed, no
 * rings. The model is small enough to stay resident: this measures
 * compute and the request path, not reads (bench_store, bench_pressure). */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <moe/moeclient.h>

#include "engine.h"
#include "model.h"
#include "proto.h"
#include "sock.h"

#define MAX_CLIENTS 8
#define MAX_SAMPLES 200000 /* per client */
#define RESIDUAL 0.05f

static const char *bin = "build/bin";
static char model_path[256], sock_path[256], log_path[256];
static double seconds = 2.0;
static const char *moed_args = ""; /* more options for moed */
static struct moe_model *model; /* its shape, for the clients */

static double now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec * 1e-9;
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return (x > y) - (x < y);
}

/* A token's first hidden state: small values from a per-client seed. */
static void first_state(float *x, uint32_t n, uint64_t seed)
{
	for (uint32_t i = 0; i < n; i++) {
		seed = seed * 6364136223846793005ull + 1442695040888963407ull;
		x[i] = (float)((int)(seed >> 40 & 0xffff) - 32768) / 32768.0f;
	}
}

static void residual(float *x, const float *y, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++)
		x[i] += RESIDUAL * y[i];
}

/* ---- moed ---- */

static pid_t start_moed(void)
{
	char cmd[1024];
	pid_t pid;

	snprintf(cmd, sizeof(cmd),
		 "exec %s/moed --model %s --socket %s --cache-mb 2048 --log-level warning %s >%s 2>&1",
		 bin, model_path, sock_path, moed_args, log_path);
	pid = fork();
	if (pid == 0) {
		execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
		_exit(127);
	}
	for (int i = 0; i < 500; i++) {
		int fd = ipc_connect(sock_path, 5000);

		if (fd >= 0) {
			close(fd);
			return pid;
		}
		if (waitpid(pid, NULL, WNOHANG) == pid)
			break;
		usleep(20000);
	}
	fprintf(stderr, "bench_clients: moed did not start; see %s\n", log_path);
	kill(pid, SIGKILL);
	return -1;
}

static int stats(struct ipc_stats_reply *r)
{
	int rc = ipc_ask(sock_path, 5000, IPC_MSG_STATS, IPC_MSG_STATS_REPLY,
			 r, sizeof(*r));

	if (rc)
		fprintf(stderr, "bench_clients: stats from moed: %s\n",
			moe_strerror(rc));
	return rc;
}

/* ---- clients ---- */

struct client {
	pthread_t th;
	uint32_t index;
	pthread_barrier_t *start;
	pthread_barrier_t *step; /* lockstep: met after every layer */
	_Atomic bool *stop;      /* lockstep: one clock for all */
	double until;
	uint64_t tokens;   /* through every MoE layer */
	uint32_t *lat;     /* per request, microseconds at the client */
	uint32_t n_lat;
	int err;
};

/* In lockstep a client that failed keeps meeting the others (without
 * requests) until the clock stops them all: nobody waits for ever. */
static void *client_main(void *arg)
{
	struct client *c = arg;
	struct moe_connect_opts o = { .max_tokens = 1, .max_inflight = 1,
				      .name = "bench_clients" };
	uint32_t n_embd = model->n_embd;
	float *x = malloc(n_embd * sizeof(float));
	float *y = malloc(n_embd * sizeof(float));
	moe_client *mc = NULL;

	c->err = x && y ? moe_connect(&mc, sock_path, &o) : -ENOMEM;
	pthread_barrier_wait(c->start);
	for (uint64_t t = 0;; t++) {
		if (c->step) {
			if (c->index == 0 && now() >= c->until)
				*c->stop = true;
			pthread_barrier_wait(c->step);
			if (*c->stop)
				break;
		} else if (c->err || now() >= c->until)
			break;
		if (!c->err)
			first_state(x, n_embd, (uint64_t)c->index << 32 | t);
		for (uint32_t l = 0; l < model->n_layer; l++) {
			struct moe_result res;

			if (!model->layers[l].moe)
				continue;
			if (!c->err) {
				c->err = moe_forward(mc, l, x, 1, y, NULL, &res);
				if (c->n_lat < MAX_SAMPLES)
					c->lat[c->n_lat++] = res.wall_usec;
				residual(x, y, n_embd);
			}
			if (c->step)
				pthread_barrier_wait(c->step);
		}
		if (!c->err)
			c->tokens++;
	}
	free(x);
	free(y);
	moe_close(mc);
	return NULL;
}

/* n clients for `seconds`, free-running or in lockstep; prints one row
 * unless base_tps is 0 (a warm-up). */
static int run_clients(uint32_t n, bool lockstep, double base_tps)
{
	static uint32_t lat[MAX_CLIENTS * MAX_SAMPLES];
	struct client cl[MAX_CLIENTS];
	struct ipc_stats_reply a, b;
	pthread_barrier_t start, step;
	_Atomic bool stop = false;
	uint64_t tokens = 0;
	uint32_t n_lat = 0;
	double t0, t1;
	int err = 0;

	pthread_barrier_init(&start, NULL, n + 1);
	pthread_barrier_init(&step, NULL, n);
	if (stats(&a))
		return -1;
	for (uint32_t i = 0; i < n; i++) {
		cl[i] = (struct client){ .index = i, .start = &start,
					 .step = lockstep ? &step : NULL,
					 .stop = &stop,
					 .lat = lat + (size_t)i * MAX_SAMPLES };
		cl[i].until = now() + 3600; /* set below, once all connected */
		pthread_create(&cl[i].th, NULL, client_main, &cl[i]);
	}
	/* The deadline is set before the barrier releases the clients. */
	t0 = now();
	for (uint32_t i = 0; i < n; i++)
		cl[i].until = t0 + seconds;
	pthread_barrier_wait(&start);
	t0 = now();
	for (uint32_t i = 0; i < n; i++) {
		pthread_join(cl[i].th, NULL);
		tokens += cl[i].tokens;
		if (cl[i].err && !err)
			err = cl[i].err;
		memmove(lat + n_lat, cl[i].lat, cl[i].n_lat * sizeof(*lat));
		n_lat += cl[i].n_lat;
	}
	t1 = now();
	pthread_barrier_destroy(&start);
	pthread_barrier_destroy(&step);
	if (err) {
		fprintf(stderr, "bench_clients: a client failed: %s\n",
			moe_strerror(err));
		return -1;
	}
	if (stats(&b) || !n_lat)
		return -1;
	qsort(lat, n_lat, sizeof(*lat), cmp_u32);
	double layer_tokens = (double)(b.tokens - a.tokens);
	double uses = (double)(b.expert_hits + b.expert_misses -
			       a.expert_hits - a.expert_misses);
	double passes = (double)(b.expert_passes - a.expert_passes);
	double tps = tokens / (t1 - t0);

	if (base_tps > 0)
		printf("%7u %10.1f %8.2f %8u %8u %10.2f %10.2f %8.2f\n", n, tps,
	       tps / base_tps, lat[n_lat / 2], lat[(size_t)(n_lat * 0.99)],
	       uses / layer_tokens, passes / layer_tokens,
	       passes ? uses / passes : 0.0);
	return 0;
}

/* ---- the baseline: the same decode in this process ---- */

static double local_decode(uint32_t threads)
{
	struct moe_engine_opts eo = { .threads = threads };
	struct moe_msg err = { "" };
	struct moe_expert_src src;
	struct moe_mapsrc *ms = NULL;
	struct moe_engine *e = NULL;
	struct moe_model *m = NULL;
	float *x = NULL, *y = NULL;
	uint64_t tokens = 0;
	double t0, until, tps = -1;
	int rc;

	rc = moe_model_open(&m, model_path, &err);
	if (!rc)
		rc = moe_mapsrc_open(&ms, m, &src, &err);
	if (!rc)
		rc = moe_engine_new(&e, m, &src, &eo, &err);
	if (!rc) {
		x = malloc(m->n_embd * sizeof(float));
		y = malloc(m->n_embd * sizeof(float));
		if (!x || !y)
			rc = moe_msgf(&err, -ENOMEM, "out of memory");
	}
	t0 = now();
	until = t0 + seconds;
	while (!rc && now() < until) {
		first_state(x, m->n_embd, tokens);
		for (uint32_t l = 0; !rc && l < m->n_layer; l++) {
			if (!m->layers[l].moe)
				continue;
			rc = moe_engine_forward(e, l, x, 1, NULL, NULL, y, &err);
			residual(x, y, m->n_embd);
		}
		tokens += !rc;
	}
	if (rc)
		fprintf(stderr, "bench_clients: local engine: %s\n", err.text);
	else
		tps = tokens / (now() - t0);
	free(x);
	free(y);
	moe_engine_free(e);
	moe_mapsrc_close(ms);
	moe_model_close(m);
	return tps;
}

/* One model: moe-gen writes it from gen, moed serves it, the table. */
static int bench_model(const char *what, const char *gen)
{
	static const uint32_t counts[] = { 1, 2, 4, 8 };
	struct moe_msg err = { "" };
	char cmd[1024];
	double base;
	pid_t pid;
	int rc = 0;

	snprintf(cmd, sizeof(cmd), "%s/moe-gen %s -q --arch qwen3moe %s", bin,
		 model_path, gen);
	if (system(cmd)) {
		fprintf(stderr, "bench_clients: %s failed\n", cmd);
		return 1;
	}
	if (moe_model_open(&model, model_path, &err)) {
		fprintf(stderr, "bench_clients: %s\n", err.text);
		unlink(model_path);
		return 1;
	}
	pid = start_moed();
	if (pid < 0)
		goto out;
	/* Read every expert in once, through moed and locally, so both
	 * sides compute from memory. */
	seconds /= 4;
	rc = run_clients(MAX_CLIENTS, false, 0);
	local_decode(0);
	seconds *= 4;
	base = local_decode(0);
	printf("\n%s: %s; 1 token per request, %.1f s per row\n", what, gen,
	       seconds);
	printf("baseline: the same decode in-process (engine, no moed): %.1f tokens/s\n", base);
	printf("%7s %10s %8s %8s %8s %10s %10s %8s\n", "clients", "tokens/s",
	       "x base", "p50 us", "p99 us", "uses/tok", "passes/tok", "batching");
	for (int lockstep = 0; !rc && lockstep < 2; lockstep++) {
		printf("%s\n", lockstep ? "lockstep: the clients meet after every layer, so their requests share a round"
			: "free-running: each client decodes on its own");
		for (size_t i = 0; !rc && i < sizeof(counts) / sizeof(*counts); i++)
			rc = run_clients(counts[i], lockstep, base);
	}
	kill(pid, SIGTERM);
	waitpid(pid, NULL, 0);
out:
	moe_model_close(model);
	unlink(model_path);
	return pid < 0 || rc ? 1 : 0;
}

int main(int argc, char **argv)
{
	const char *env = getenv("MOE_BIN");
	int rc;

	if (env && *env)
		bin = env;
	if (argc > 1)
		seconds = atof(argv[1]);
	if (argc > 2)
		moed_args = argv[2];
	if (!(seconds > 0) || argc > 3) {
		fprintf(stderr, "usage: bench_clients [SECONDS per run] ['MOED OPTIONS']\n");
		return 2;
	}
	snprintf(model_path, sizeof(model_path), "/tmp/bench_clients.%d.gguf", (int)getpid());
	snprintf(sock_path, sizeof(sock_path), "/tmp/bench_clients.%d.sock", (int)getpid());
	snprintf(log_path, sizeof(log_path), "/tmp/bench_clients.%d.log", (int)getpid());
	printf("bench_clients: moed with 1-8 clients, Q4_K/Q6_K experts\n");
	rc = bench_model("small experts (the request path shows)",
			 "--layers 8 --experts 8 --top-k 2 --embd 256 --ff 256");
	if (!rc)
		rc = bench_model("larger experts (compute dominates)",
				 "--layers 8 --experts 32 --top-k 4 --embd 1024 --ff 512");
	if (!rc)
		unlink(log_path);
	return rc;
}
