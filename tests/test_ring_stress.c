/* A producer thread and a consumer thread push millions of sequence
 * numbers through one ring, waiting on doorbells both ways (data for the
 * consumer, space for the producer); the consumer checks order and that
 * nothing is lost or torn. Each case pushes at least its minimum count and
 * then keeps going until its time budget is spent, so the test takes about
 * 5 s whether the (shared) machine is idle or busy. Meant to be run under
 * ThreadSanitizer too (make test-tsan), where the minimums shrink tenfold. */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdalign.h>
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
#define STALL_S 0.5          /* a wait this long means a wakeup was lost */
#define BUDGET_S 1.2         /* per case, once its minimum is reached */

struct ent {
	uint64_t seq;
	uint64_t check; /* ~seq */
};

/* The shared block: two bells. One address space: ThreadSanitizer sees
 * every access. */
struct shared {
	struct ipc_bell data;  /* producer rings, consumer waits */
	struct ipc_bell space; /* consumer rings, producer waits */
};

struct run {
	struct shared *sh;
	void *ring_mem;
	uint32_t n_ent;
	uint64_t min_total;   /* push at least this many... */
	uint32_t burst;       /* most entries per push/pop */
	uint32_t spins;       /* before sleeping on a bell */
	uint32_t nap_every;   /* producer naps this often (0: never)... */
	uint32_t nap_us;      /* ...for this long */
	uint32_t cnap_every;  /* consumer naps likewise */
	uint32_t start;       /* first ring index */
	double stop_at;       /* ...and stop past this time */
	/* Entries the producer will have pushed in all: UINT64_MAX until
	 * it stops. Written by the producer (release, before it rings the
	 * data bell), read by the consumer (acquire, pairs with it). On its
	 * own line: the threads' loops must not share any other. */
	alignas(128) _Atomic uint64_t total;
	/* Results, each written by one thread at its end, read after join. */
	alignas(128) uint64_t received;
	uint64_t bad;         /* out of order or torn */
	uint64_t prod_sleeps, cons_sleeps;
	uint64_t prod_stalls, cons_stalls; /* waits past STALL_S */
	int prod_err, cons_err;
};

static double now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec * 1e-9;
}

static void nap(uint32_t us)
{
	struct timespec t = { 0, (long)us * 1000 };

	nanosleep(&t, NULL);
}

/* Crossed a multiple of every going from a to b? */
static bool crossed(uint64_t a, uint64_t b, uint32_t every)
{
	return every && a / every != b / every;
}

static bool time_to_stop(struct run *r, uint64_t before, uint64_t next)
{
	return next >= r->min_total && crossed(before, next, 4096) &&
	       now() > r->stop_at;
}

/* ipc_bell_wait, timed: a waiter that sleeps until its timeout, when the
 * peer kept working, was not woken: count it as a stall. */
static int wait_bell(struct ipc_bell *b, bool (*ready)(void *), void *arg,
		     uint32_t spins, uint64_t *sleeps, uint64_t *stalls)
{
	double t = now();
	int rc = ipc_bell_wait(b, ready, arg, spins, WAIT_NS);

	*sleeps += rc == 1;
	*stalls += now() - t > STALL_S;
	return rc;
}

static int produce(struct run *r, struct ipc_ring *ring)
{
	struct ent buf[64];
	uint64_t next = 0, sleeps = 0, stalls = 0;
	int rc;

	for (;;) {
		for (uint32_t i = 0; i < r->burst; i++)
			buf[i] = (struct ent){ next + i, ~(next + i) };
		rc = ipc_ring_push_n(ring, buf, r->burst);
		if (rc < 0)
			break;
		if (rc == 0) {
			rc = wait_bell(&r->sh->space, ipc_ring_ready, ring,
				       r->spins, &sleeps, &stalls);
			if (rc < 0)
				break;
			continue;
		}
		uint64_t before = next;

		next += (uint64_t)rc;
		if (time_to_stop(r, before, next))
			atomic_store_explicit(&r->total, next,
					      memory_order_release);
		rc = ipc_bell_ring(&r->sh->data);
		if (rc < 0 || next == atomic_load_explicit(&r->total,
							    memory_order_relaxed))
			break;
		if (crossed(before, next, r->nap_every))
			nap(r->nap_us);
	}
	r->prod_sleeps = sleeps;
	r->prod_stalls = stalls;
	return rc;
}

static void *producer(void *arg)
{
	struct run *r = arg;
	struct ipc_ring ring;

	r->prod_err = ipc_ring_attach(&ring, r->ring_mem, r->n_ent,
				      sizeof(struct ent), IPC_RING_PRODUCER);
	if (!r->prod_err)
		r->prod_err = produce(r, &ring);
	return NULL;
}

/* The consumer's state, on its stack. */
struct cons {
	struct run *r;
	struct ipc_ring ring;
	uint64_t received, bad, sleeps, stalls;
};

static bool all_received(struct cons *c)
{
	/* Pairs with the release store of total in produce(). */
	return c->received >=
	       atomic_load_explicit(&c->r->total, memory_order_acquire);
}

/* The consumer wakes for entries, or for the producer having stopped. */
static bool cons_ready(void *arg)
{
	struct cons *c = arg;

	return ipc_ring_ready(&c->ring) || all_received(c);
}

static void check(struct cons *c, const struct ent *buf, int n)
{
	for (int i = 0; i < n; i++) {
		uint64_t want = c->received + (uint64_t)i;

		c->bad += buf[i].seq != want || buf[i].check != ~want;
	}
}

static int consume(struct cons *c)
{
	struct run *r = c->r;
	struct ent buf[64];
	int rc;

	while (!all_received(c)) {
		rc = ipc_ring_pop_n(&c->ring, buf, r->burst);
		if (rc < 0)
			return rc;
		if (rc == 0) {
			rc = wait_bell(&r->sh->data, cons_ready, c, r->spins,
				       &c->sleeps, &c->stalls);
			if (rc < 0)
				return rc;
			continue;
		}
		check(c, buf, rc);
		if (crossed(c->received, c->received + (uint64_t)rc,
			    r->cnap_every))
			nap(r->nap_us);
		c->received += (uint64_t)rc;
		rc = ipc_bell_ring(&r->sh->space);
		if (rc < 0)
			return rc;
	}
	return 0;
}

static void *consumer(void *arg)
{
	struct cons c = { .r = arg };
	struct run *r = c.r;

	r->cons_err = ipc_ring_attach(&c.ring, r->ring_mem, r->n_ent,
				      sizeof(struct ent), IPC_RING_CONSUMER);
	if (!r->cons_err)
		r->cons_err = consume(&c);
	r->received = c.received;
	r->bad = c.bad;
	r->cons_sleeps = c.sleeps;
	r->cons_stalls = c.stalls;
	return NULL;
}

/* $MOE_STRESS_SCALE (a percentage) stretches or shrinks the minimums. */
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
	double t0;
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
	atomic_init(&r->total, UINT64_MAX);
	t0 = now();
	r->stop_at = t0 + BUDGET_S;
	assert_int_equal(pthread_create(&tc, NULL, consumer, r), 0);
	assert_int_equal(pthread_create(&tp, NULL, producer, r), 0);
	pthread_join(tp, NULL);
	pthread_join(tc, NULL);
	printf("  %llu entries (at least %llu) in %.2f s, sleeps: "
	       "producer %llu consumer %llu\n",
	       (unsigned long long)r->received,
	       (unsigned long long)r->min_total, now() - t0,
	       (unsigned long long)r->prod_sleeps,
	       (unsigned long long)r->cons_sleeps);
	assert_int_equal(r->prod_err, 0);
	assert_int_equal(r->cons_err, 0);
	assert_true(r->received >= r->min_total);
	assert_int_equal(r->received, atomic_load(&r->total));
	assert_int_equal(r->bad, 0);
	assert_int_equal(r->prod_stalls, 0);
	assert_int_equal(r->cons_stalls, 0);
	free(r->ring_mem);
	free(r->sh);
}

/* One entry at a time through a roomy ring, spinning before sleeping:
 * the common case, indices crossing 2^32 early on. */
static void spin_single(void **s)
{
	struct run r = { .n_ent = 1024, .min_total = count(1000000),
			 .burst = 1, .spins = IPC_BELL_SPINS,
			 .start = UINT32_MAX - 100 };

	run(&r);
}

/* Bursts through a small ring: partial pushes and pops, wraps inside a
 * burst, both sides running into full and empty. */
static void spin_bursts(void **s)
{
	struct run r = { .n_ent = 256, .min_total = count(2000000),
			 .burst = 48, .spins = IPC_BELL_SPINS,
			 .start = UINT32_MAX - 1000 };

	run(&r);
}

/* No spinning at all: every wait goes to the futex, and naps on both
 * sides make the other one actually sleep there, many times. */
static void futex_path(void **s)
{
	struct run r = { .n_ent = 16, .min_total = count(100000), .burst = 3,
			 .spins = 0, .nap_every = 5000, .nap_us = 200,
			 .cnap_every = 7001, .start = UINT32_MAX - 5 };

	run(&r);
	assert_true(r.prod_sleeps > 0);
	assert_true(r.cons_sleeps > 0);
}

/* Brief spins with occasional naps: the mixed path a real client sees. */
static void spin_then_sleep(void **s)
{
	struct run r = { .n_ent = 32, .min_total = count(300000), .burst = 1,
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
