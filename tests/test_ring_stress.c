/* A producer thread and a consumer thread push millions of sequence
 * numbers through one ring, waiting on doorbells both ways (data for the
 * consumer, space for the producer); the consumer checks order and that
 * nothing is lost or torn. Meant to be run under ThreadSanitizer too
 * (make test-tsan), where the counts shrink tenfold. About 5 s otherwise. */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "futex.h"
#include "ring.h"

#if defined(__SANITIZE_THREAD__)
#define TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define TSAN 1
#endif
#endif
#ifdef TSAN
#define SCALE 10
#else
#define SCALE 1
#endif

#define WAIT_NS 5000000000ll /* a stuck peer fails the test, not hangs it */

struct ent {
	uint64_t seq;
	uint64_t check; /* ~seq */
};

/* The shared block: two bells, then the ring. One mapping, one address
 * space: ThreadSanitizer sees every access. */
struct shared {
	struct ipc_bell data;  /* producer rings, consumer waits */
	struct ipc_bell space; /* consumer rings, producer waits */
};

struct run {
	struct shared *sh;
	void *ring_mem;
	uint32_t n_ent;
	uint64_t total;
	uint32_t burst;       /* most entries per push/pop */
	uint32_t spins;       /* before sleeping on a bell */
	uint32_t nap_every;   /* producer naps this often (0: never)... */
	uint32_t nap_us;      /* ...for this long */
	uint32_t cnap_every;  /* consumer naps likewise */
	uint32_t start;       /* first ring index */
	/* Results, each written by one thread, read after join. */
	uint64_t received;
	uint64_t bad;         /* out of order or torn */
	uint64_t prod_sleeps, cons_sleeps;
	int prod_err, cons_err;
};

static void nap(uint32_t us)
{
	struct timespec t = { 0, (long)us * 1000 };

	nanosleep(&t, NULL);
}

static void *producer(void *arg)
{
	struct run *r = arg;
	struct ipc_ring ring;
	struct ent buf[64];
	uint64_t next = 0;
	int rc;

	r->prod_err = ipc_ring_attach(&ring, r->ring_mem, r->n_ent,
				      sizeof(struct ent), IPC_RING_PRODUCER);
	while (!r->prod_err && next < r->total) {
		uint32_t k = r->burst;

		if (k > r->total - next)
			k = (uint32_t)(r->total - next);
		for (uint32_t i = 0; i < k; i++)
			buf[i] = (struct ent){ next + i, ~(next + i) };
		rc = ipc_ring_push_n(&ring, buf, k);
		if (rc > 0) {
			uint64_t before = next;

			next += (uint64_t)rc;
			r->prod_err = ipc_bell_ring(&r->sh->data);
			if (r->nap_every && next / r->nap_every !=
						    before / r->nap_every)
				nap(r->nap_us);
			continue;
		}
		if (rc < 0) {
			r->prod_err = rc;
			break;
		}
		rc = ipc_bell_wait(&r->sh->space, ipc_ring_ready, &ring,
				   r->spins, WAIT_NS);
		if (rc < 0)
			r->prod_err = rc;
		r->prod_sleeps += rc == 1;
	}
	return NULL;
}

static void *consumer(void *arg)
{
	struct run *r = arg;
	struct ipc_ring ring;
	struct ent buf[64];
	int rc;

	r->cons_err = ipc_ring_attach(&ring, r->ring_mem, r->n_ent,
				      sizeof(struct ent), IPC_RING_CONSUMER);
	while (!r->cons_err && r->received < r->total) {
		rc = ipc_ring_pop_n(&ring, buf, r->burst);
		if (rc > 0) {
			for (int i = 0; i < rc; i++) {
				uint64_t want = r->received + (uint64_t)i;

				r->bad += buf[i].seq != want ||
					  buf[i].check != ~want;
			}
			if (r->cnap_every &&
			    (r->received + (uint64_t)rc) / r->cnap_every !=
				    r->received / r->cnap_every)
				nap(r->nap_us);
			r->received += (uint64_t)rc;
			r->cons_err = ipc_bell_ring(&r->sh->space);
			continue;
		}
		if (rc < 0) {
			r->cons_err = rc;
			break;
		}
		rc = ipc_bell_wait(&r->sh->data, ipc_ring_ready, &ring,
				   r->spins, WAIT_NS);
		if (rc < 0)
			r->cons_err = rc;
		r->cons_sleeps += rc == 1;
	}
	return NULL;
}

/* $MOE_STRESS_SCALE (a percentage) stretches or shrinks every count. */
static uint64_t count(uint64_t n)
{
	const char *e = getenv("MOE_STRESS_SCALE");
	uint64_t pct = e ? strtoull(e, NULL, 10) : 100;

	n = n * pct / 100 / SCALE;
	return n ? n : 1;
}

static void run(struct run *r)
{
	pthread_t tp, tc;
	struct timespec t0, t1;

	void *sh;

	assert_int_equal(posix_memalign(&sh, IPC_BELL_ALIGN,
					sizeof(struct shared)), 0);
	assert_int_equal(posix_memalign(&r->ring_mem, IPC_RING_ALIGN,
					ipc_ring_bytes(r->n_ent,
						       sizeof(struct ent))), 0);
	r->sh = sh;
	ipc_bell_init(&r->sh->data);
	ipc_bell_init(&r->sh->space);
	ipc_ring_format(r->ring_mem, r->start);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	assert_int_equal(pthread_create(&tc, NULL, consumer, r), 0);
	assert_int_equal(pthread_create(&tp, NULL, producer, r), 0);
	pthread_join(tp, NULL);
	pthread_join(tc, NULL);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	printf("  %llu entries in %.2f s, sleeps: producer %llu consumer %llu\n",
	       (unsigned long long)r->total,
	       (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9,
	       (unsigned long long)r->prod_sleeps,
	       (unsigned long long)r->cons_sleeps);
	assert_int_equal(r->prod_err, 0);
	assert_int_equal(r->cons_err, 0);
	assert_int_equal(r->received, r->total);
	assert_int_equal(r->bad, 0);
	free(r->ring_mem);
	free(r->sh);
}

/* One entry at a time through a roomy ring, spinning before sleeping:
 * the common case, indices crossing 2^32 early on. */
static void spin_single(void **s)
{
	struct run r = { .n_ent = 1024, .total = count(2000000), .burst = 1,
			 .spins = IPC_BELL_SPINS, .start = UINT32_MAX - 100 };

	run(&r);
}

/* Bursts through a small ring: partial pushes and pops, wraps inside a
 * burst, both sides running into full and empty. */
static void spin_bursts(void **s)
{
	struct run r = { .n_ent = 256, .total = count(4000000), .burst = 48,
			 .spins = IPC_BELL_SPINS, .start = UINT32_MAX - 1000 };

	run(&r);
}

/* No spinning at all: every wait goes to the futex, and naps on both
 * sides make the other one actually sleep there, many times. */
static void futex_path(void **s)
{
	struct run r = { .n_ent = 16, .total = count(300000), .burst = 3,
			 .spins = 0, .nap_every = 5000, .nap_us = 200,
			 .cnap_every = 7001, .start = UINT32_MAX - 5 };

	run(&r);
	assert_true(r.prod_sleeps > 0);
	assert_true(r.cons_sleeps > 0);
}

/* Brief spins with occasional naps: the mixed path a real client sees. */
static void spin_then_sleep(void **s)
{
	struct run r = { .n_ent = 32, .total = count(1000000), .burst = 1,
			 .spins = 64, .nap_every = 20000, .nap_us = 300,
			 .cnap_every = 30011, .start = 0 };

	run(&r);
	assert_true(r.cons_sleeps > 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(spin_single),
		cmocka_unit_test(spin_bursts),
		cmocka_unit_test(futex_path),
		cmocka_unit_test(spin_then_sleep),
	};

	setvbuf(stdout, NULL, _IOLBF, 0);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
