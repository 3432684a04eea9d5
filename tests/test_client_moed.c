/* libmoeclient against a real moed, as an application links it (the
 * library's own tests use a fake moed; test_moed speaks the wire protocol
 * itself): a moe-gen model served by moed, every answer compared with the
 * engine run in this process or with moe-layer's output file, byte for
 * byte:
 *   forward_matches_engine  moe_model_info, then moe_forward on every MoE
 *                           layer, 1 to max_tokens tokens;
 *   zero_copy_slots         moe_slot_acquire / moe_submit_slot, output read
 *                           straight from the slot;
 *   in_flight               every slot's request in flight at once,
 *                           collected by moe_wait (by id and any) and
 *                           moe_poll;
 *   dynamic_k               top-p with min-k and max-k through moed, equal
 *                           to moe-layer --top-p, with fewer experts used;
 *   moed_killed             moed SIGKILLed with requests in flight and the
 *                           client asleep in moe_wait: it wakes with an
 *                           error, as does every call after, each within
 *                           a bound; then
 *                           moed restarts and the same process connects
 *                           again and gets right answers. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include <moe/moeclient.h>

#include "router.h"
#include "testutil.h"

#define N_EMBD 256
#define N_LAYER 4
#define MAX_TOK 16
#define INFLIGHT 4
#define TIMEOUT_MS 3000

static struct tmoed md;
static struct tref *ref;

static double now_s(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec * 1e-9;
}

static int launch(void)
{
	return tmoed_start(&md, "--cache-mb 16 --threads 2 --max-tokens %d --max-inflight %d",
			   MAX_TOK, INFLIGHT);
}

static void start_moed(void)
{
	if (launch()) {
		tmoed_print_log(&md);
		fail_msg("moed did not start");
	}
}

static int setup(void **s)
{
	tmoed_init(&md, "libclient");
	/* olmoe: every layer MoE, 16 experts, 4 per token. */
	if (run_cmd("%s/moe-gen %s -q --arch olmoe --layers %d --experts 16 --top-k 4 --embd %d --ff 256",
		    bin_dir(), md.model, N_LAYER, N_EMBD))
		return -1;
	ref = tref_open(md.model, 2);
	if (!ref)
		return -1;
	return launch() ? -1 : 0;
}

static int teardown(void **s)
{
	int rc = md.pid ? tmoed_stop(&md) : 0;

	tref_close(ref);
	return rc;
}

static moe_client *connect_ok(void)
{
	struct moe_connect_opts o = { .max_tokens = MAX_TOK,
				      .max_inflight = INFLIGHT,
				      .timeout_ms = TIMEOUT_MS,
				      .name = "test_client_moed" };
	moe_client *c = NULL;
	int rc = moe_connect(&c, md.sock, &o);

	if (rc)
		fail_msg("moe_connect %s: %s", md.sock, moe_strerror(rc));
	return c;
}

static void fill(uint32_t seed, float *x, uint32_t nt)
{
	struct trng r = { seed };

	trng_fill(&r, x, (size_t)nt * N_EMBD, -1.f, 1.f);
}

static void want(uint32_t layer, const float *x, uint32_t nt, float *y)
{
	assert_int_equal(tref_forward(ref, layer, x, nt, NULL, NULL, y), 0);
}

static void forward_matches_engine(void **s)
{
	static float x[MAX_TOK * N_EMBD], y[MAX_TOK * N_EMBD], w[MAX_TOK * N_EMBD];
	moe_client *c = connect_ok();
	struct moe_model_info mi;
	struct moe_result res;

	assert_int_equal(moe_model_info(c, &mi), 0);
	assert_string_equal(mi.arch, "olmoe");
	assert_int_equal(mi.n_layer, N_LAYER);
	assert_int_equal(mi.n_embd, N_EMBD);
	assert_int_equal(mi.n_expert, 16);
	assert_int_equal(mi.n_used, 4);
	assert_int_equal(mi.max_tokens, MAX_TOK);
	assert_int_equal(mi.max_inflight, INFLIGHT);
	for (uint32_t l = mi.first_moe_layer; l <= mi.last_moe_layer; l++) {
		static const uint32_t sizes[] = { 1, 3, MAX_TOK };

		assert_int_equal(moe_layer_is_moe(c, l), 1);
		for (int k = 0; k < 3; k++) {
			uint32_t nt = sizes[k];

			fill(100 * l + nt, x, nt);
			want(l, x, nt, w);
			memset(y, 0xff, sizeof(y));
			assert_int_equal(moe_forward(c, l, x, nt, y, NULL, &res), 0);
			assert_int_equal(res.status, 0);
			assert_int_equal(res.n_tokens, nt);
			assert_int_equal(res.k_used, nt * 4);
			assert_memory_equal(y, w, (size_t)nt * N_EMBD * sizeof(float));
		}
	}
	/* A layer past the model: refused by moed, the client still fine. */
	fill(7, x, 1);
	assert_int_equal(moe_forward(c, N_LAYER + 3, x, 1, y, NULL, &res), -EINVAL);
	assert_int_equal(moe_forward(c, 1, x, 1, y, NULL, &res), 0);
	moe_close(c);
}

static void zero_copy_slots(void **s)
{
	static float w[MAX_TOK * N_EMBD];
	moe_client *c = connect_ok();
	struct moe_slot a, b;
	struct moe_result res;
	uint64_t id;

	assert_int_equal(moe_slot_acquire(c, &a), 0);
	assert_int_equal(moe_slot_acquire(c, &b), 0);
	assert_int_not_equal(a.index, b.index);
	assert_int_equal(a.max_tokens, MAX_TOK);
	assert_int_equal(a.n_embd, N_EMBD);
	/* The rows are written where moed reads them, and read where it
	 * wrote them: no copy on either side. Twice, the slot kept. */
	for (uint32_t round = 0; round < 2; round++) {
		fill(300 + round, a.in, 5);
		want(2, a.in, 5, w);
		assert_int_equal(moe_submit_slot(c, a.index, 2, 5, NULL, &id), 0);
		assert_int_equal(moe_submit_slot(c, a.index, 2, 5, NULL, NULL), -EBUSY);
		assert_int_equal(moe_wait(c, id, &res, -1), 0);
		assert_int_equal(res.status, 0);
		assert_int_equal(res.slot, a.index);
		assert_memory_equal(a.out, w, 5 * N_EMBD * sizeof(float));
	}
	fill(310, b.in, MAX_TOK);
	want(3, b.in, MAX_TOK, w);
	assert_int_equal(moe_submit_slot(c, b.index, 3, MAX_TOK, NULL, &id), 0);
	assert_int_equal(moe_wait(c, MOE_WAIT_ANY, &res, -1), 0);
	assert_int_equal(res.id, id);
	assert_memory_equal(b.out, w, MAX_TOK * N_EMBD * sizeof(float));
	assert_int_equal(moe_slot_release(c, a.index), 0);
	assert_int_equal(moe_slot_release(c, b.index), 0);
	assert_int_equal(moe_slot_release(c, b.index), -EINVAL);
	moe_close(c);
}

static void in_flight(void **s)
{
	static float x[INFLIGHT][MAX_TOK * N_EMBD], y[INFLIGHT][MAX_TOK * N_EMBD];
	static float w[INFLIGHT][MAX_TOK * N_EMBD];
	moe_client *c = connect_ok();
	struct moe_result res[INFLIGHT];
	uint64_t id[INFLIGHT];
	bool seen[INFLIGHT] = { false };
	uint32_t got = 0;

	for (uint32_t round = 0; round < 3; round++) {
		for (uint32_t i = 0; i < INFLIGHT; i++) {
			uint32_t nt = 1 + (i * 5 + round) % MAX_TOK, l = i % N_LAYER;

			fill(1000 * round + i, x[i], nt);
			want(l, x[i], nt, w[i]);
			memset(y[i], 0xff, sizeof(y[i]));
			assert_int_equal(moe_submit(c, l, x[i], nt, y[i], NULL, &id[i]), 0);
		}
		/* Every slot in flight: one more waits for a slot. */
		assert_int_equal(moe_submit(c, 0, x[0], 1, y[0], NULL, NULL), -EBUSY);
		/* The last by id, then any, then whatever is done. */
		assert_int_equal(moe_wait(c, id[INFLIGHT - 1], &res[0], -1), 0);
		assert_int_equal(res[0].id, id[INFLIGHT - 1]);
		memset(seen, 0, sizeof(seen));
		seen[INFLIGHT - 1] = true;
		assert_int_equal(moe_wait(c, MOE_WAIT_ANY, &res[0], -1), 0);
		for (uint32_t i = 0; i < INFLIGHT; i++)
			if (res[0].id == id[i])
				seen[i] = true;
		got = 2;
		for (double t0 = now_s(); got < INFLIGHT && now_s() - t0 < 10;) {
			int n = moe_poll(c, res, INFLIGHT);

			assert_true(n >= 0);
			for (int k = 0; k < n; k++)
				for (uint32_t i = 0; i < INFLIGHT; i++)
					if (res[k].id == id[i]) {
						assert_false(seen[i]);
						assert_int_equal(res[k].status, 0);
						seen[i] = true;
					}
			got += (uint32_t)n;
		}
		assert_int_equal(got, INFLIGHT);
		for (uint32_t i = 0; i < INFLIGHT; i++) {
			uint32_t nt = 1 + (i * 5 + round) % MAX_TOK;

			assert_true(seen[i]);
			assert_memory_equal(y[i], w[i], (size_t)nt * N_EMBD * sizeof(float));
		}
		assert_int_equal(moe_wait(c, MOE_WAIT_ANY, &res[0], 0), -ENOENT);
	}
	moe_close(c);
}

/* Raw little-endian float rows, as moe-layer reads and writes them. */
static void write_f32(const char *path, const float *x, size_t n)
{
	FILE *f = fopen(path, "wb");

	assert_non_null(f);
	assert_int_equal(fwrite(x, sizeof(float), n, f), n);
	assert_int_equal(fclose(f), 0);
}

static void read_f32(const char *path, float *x, size_t n)
{
	FILE *f = fopen(path, "rb");

	assert_non_null(f);
	assert_int_equal(fread(x, sizeof(float), n + 1, f), n);
	fclose(f);
}

static void dynamic_k(void **s)
{
	static float x[MAX_TOK * N_EMBD], y[MAX_TOK * N_EMBD], w[MAX_TOK * N_EMBD];
	struct moe_req_opts o = { .top_p = 0.5f, .min_k = 1, .max_k = 3 };
	char in[256], out[256];
	moe_client *c = connect_ok();
	struct moe_result res;

	tmp_path(in, sizeof(in), "libclient-x");
	tmp_path(out, sizeof(out), "libclient-y");
	fill(4242, x, MAX_TOK);
	write_f32(in, x, MAX_TOK * N_EMBD);
	assert_int_equal(run_cmd("%s/moe-layer %s --layer 1 --input %s --output %s --top-p 0.5 --min-k 1 --max-k 3",
				 bin_dir(), md.model, in, out), 0);
	read_f32(out, w, MAX_TOK * N_EMBD);
	assert_int_equal(moe_forward(c, 1, x, MAX_TOK, y, &o, &res), 0);
	assert_int_equal(res.status, 0);
	printf("  top-p 0.5: %u experts over %d tokens (the model's top-k: %d)\n",
	       res.k_used, MAX_TOK, 4 * MAX_TOK);
	assert_true(res.k_used >= MAX_TOK && res.k_used <= 3 * MAX_TOK);
	assert_memory_equal(y, w, sizeof(w));
	/* And not what the model's own top-4 gives. */
	want(1, x, MAX_TOK, w);
	assert_memory_not_equal(y, w, sizeof(w));
	moe_close(c);
}

#define KILL_AFTER_MS 300

static void *kill_later(void *arg)
{
	usleep(KILL_AFTER_MS * 1000);
	tmoed_kill(&md);
	return NULL;
}

/* Each call on a client whose moed died fails, and fast. */
static void assert_fails_fast(int rc, double t0, const char *what)
{
	double dt = now_s() - t0;

	printf("  %s after SIGKILL: %s in %.0f ms\n", what, moe_strerror(rc), dt * 1e3);
	assert_true(rc < 0);
	assert_true(dt < TIMEOUT_MS / 1000.0 + 1);
}

static void moed_killed(void **s)
{
	static float x[INFLIGHT][MAX_TOK * N_EMBD], y[INFLIGHT][MAX_TOK * N_EMBD];
	static float w[MAX_TOK * N_EMBD];
	moe_client *c = connect_ok();
	struct moe_result res;
	struct moe_slot sl;
	double t0;
	int rc;

	pthread_t killer;

	alarm(60); /* a hang is a failure, not a stuck test run */
	/* moed stopped, so the requests are surely in flight and the wait
	 * surely asleep when the kill comes. */
	assert_int_equal(kill(md.pid, SIGSTOP), 0);
	for (uint32_t i = 0; i < INFLIGHT; i++) {
		fill(77 + i, x[i], MAX_TOK);
		assert_int_equal(moe_submit(c, i % N_LAYER, x[i], MAX_TOK, y[i], NULL, NULL), 0);
	}
	assert_int_equal(pthread_create(&killer, NULL, kill_later, NULL), 0);
	t0 = now_s();
	rc = moe_wait(c, MOE_WAIT_ANY, &res, -1);
	assert_int_equal(rc, -MOE_EDEAD);
	assert_fails_fast(rc, t0, "moe_wait, asleep");
	assert_true(now_s() - t0 >= KILL_AFTER_MS / 1000.0 * 0.9);
	pthread_join(killer, NULL);
	t0 = now_s();
	rc = moe_wait(c, MOE_WAIT_ANY, &res, -1);
	assert_int_equal(rc, -MOE_EDEAD);
	assert_fails_fast(rc, t0, "moe_wait");
	t0 = now_s();
	rc = moe_forward(c, 1, x[0], 1, y[0], NULL, &res);
	assert_int_equal(rc, -MOE_EDEAD);
	assert_fails_fast(rc, t0, "moe_forward");
	t0 = now_s();
	rc = moe_submit(c, 1, x[0], 1, y[0], NULL, NULL);
	assert_fails_fast(rc, t0, "moe_submit");
	t0 = now_s();
	rc = moe_poll(c, &res, 1);
	assert_fails_fast(rc, t0, "moe_poll");
	rc = moe_slot_acquire(c, &sl);
	assert_true(rc < 0);
	moe_close(c);
	/* No moed: connecting fails at once, saying so. */
	t0 = now_s();
	{
		struct moe_connect_opts o = { .timeout_ms = TIMEOUT_MS };
		moe_client *none = NULL;

		rc = moe_connect(&none, md.sock, &o);
		assert_null(none);
		assert_fails_fast(rc, t0, "moe_connect");
	}
	/* moed again, on the same socket: the same process reconnects. */
	start_moed();
	c = connect_ok();
	fill(88, x[0], MAX_TOK);
	want(2, x[0], MAX_TOK, w);
	assert_int_equal(moe_forward(c, 2, x[0], MAX_TOK, y[0], NULL, &res), 0);
	assert_int_equal(res.status, 0);
	assert_memory_equal(y[0], w, sizeof(w));
	moe_close(c);
	alarm(0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(forward_matches_engine),
		cmocka_unit_test(zero_copy_slots),
		cmocka_unit_test(in_flight),
		cmocka_unit_test(dynamic_k),
		cmocka_unit_test(moed_killed),
	};
	int rc = cmocka_run_group_tests(tests, setup, teardown);

	tmoed_kill(&md);
	return rc;
}
