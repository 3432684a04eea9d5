/* SPSC ring and doorbell, one thread: push and pop, full and empty,
 * bursts across the end of the ring, many laps with indices crossing
 * 2^32, indices a hostile peer made up, and the shared layout. Each ring
 * lives in a heap block of exactly its size, so an access past it is
 * caught under ASan. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include <moe/moeclient.h>

#include "futex.h"
#include "ring.h"

struct ent {
	uint64_t seq;
	uint64_t check; /* ~seq: a torn or misplaced copy shows */
};

struct pair {
	void *mem;
	struct ipc_ring prod, cons;
	uint32_t n;
};

static void pair_open(struct pair *p, uint32_t n, uint32_t start)
{
	size_t bytes = ipc_ring_bytes(n, sizeof(struct ent));

	assert_true(bytes > 0);
	assert_int_equal(posix_memalign(&p->mem, IPC_RING_ALIGN, bytes), 0);
	memset(p->mem, 0xa5, bytes);
	ipc_ring_format(p->mem, start);
	p->n = n;
	assert_int_equal(ipc_ring_attach(&p->prod, p->mem, n, sizeof(struct ent),
					 IPC_RING_PRODUCER), 0);
	assert_int_equal(ipc_ring_attach(&p->cons, p->mem, n, sizeof(struct ent),
					 IPC_RING_CONSUMER), 0);
}

static void pair_close(struct pair *p)
{
	free(p->mem);
}

static struct ent ent(uint64_t seq)
{
	return (struct ent){ .seq = seq, .check = ~seq };
}

static struct ipc_ring_shm *shm(struct pair *p)
{
	return p->mem;
}

static void push_pop_one(void **s)
{
	struct pair p;
	struct ent e = ent(42), out = { 0 };

	pair_open(&p, 8, 0);
	assert_int_equal(ipc_ring_pop(&p.cons, &out), -EAGAIN);
	assert_int_equal(ipc_ring_push(&p.prod, &e), 0);
	assert_int_equal(ipc_ring_poll(&p.cons), 1);
	assert_int_equal(ipc_ring_poll(&p.prod), 7);
	assert_int_equal(ipc_ring_pop(&p.cons, &out), 0);
	assert_memory_equal(&out, &e, sizeof(e));
	assert_int_equal(ipc_ring_pop(&p.cons, &out), -EAGAIN);
	assert_int_equal(ipc_ring_poll(&p.prod), 8);
	pair_close(&p);
}

static void full_then_empty(void **s)
{
	struct pair p;
	struct ent e, out;

	pair_open(&p, 16, 0);
	for (uint32_t i = 0; i < 16; i++) {
		e = ent(i);
		assert_int_equal(ipc_ring_push(&p.prod, &e), 0);
	}
	e = ent(99);
	assert_int_equal(ipc_ring_push(&p.prod, &e), -EAGAIN);
	assert_int_equal(ipc_ring_poll(&p.prod), 0);
	assert_int_equal(ipc_ring_poll(&p.cons), 16);
	for (uint32_t i = 0; i < 16; i++) {
		assert_int_equal(ipc_ring_pop(&p.cons, &out), 0);
		assert_int_equal(out.seq, i);
		assert_int_equal(out.check, ~(uint64_t)i);
	}
	assert_int_equal(ipc_ring_pop(&p.cons, &out), -EAGAIN);
	/* Room again once the consumer let go. */
	assert_int_equal(ipc_ring_push(&p.prod, &e), 0);
	pair_close(&p);
}

/* Bursts that straddle the end of the ring, and partial bursts. */
static void bursts(void **s)
{
	struct pair p;
	struct ent in[8], out[8];

	pair_open(&p, 8, 5); /* start 5: the first burst of 6 wraps */
	for (int i = 0; i < 8; i++)
		in[i] = ent(100 + i);
	assert_int_equal(ipc_ring_push_n(&p.prod, in, 6), 6);
	assert_int_equal(ipc_ring_push_n(&p.prod, in + 6, 8), 2); /* room 2 */
	assert_int_equal(ipc_ring_push_n(&p.prod, in, 1), 0);
	assert_int_equal(ipc_ring_pop_n(&p.cons, out, 3), 3);
	assert_int_equal(ipc_ring_pop_n(&p.cons, out + 3, 8), 5);
	assert_memory_equal(in, out, sizeof(in));
	assert_int_equal(ipc_ring_pop_n(&p.cons, out, 8), 0);
	pair_close(&p);
}

/* Many laps in uneven bursts, indices starting just below 2^32 so they
 * wrap early; order and contents checked throughout. */
static void laps_across_2_32(void **s)
{
	struct pair p;
	struct ent buf[13];
	uint64_t next_in = 0, next_out = 0, r = 12345;
	bool crossed = false;

	pair_open(&p, 32, UINT32_MAX - 40);
	while (next_out < 200000) {
		r = r * 6364136223846793005ull + 1442695040888963407ull;
		uint32_t k = (uint32_t)(r >> 60) % 13 + 1;
		int n;

		for (uint32_t i = 0; i < k; i++)
			buf[i] = ent(next_in + i);
		n = ipc_ring_push_n(&p.prod, buf, k);
		assert_true(n >= 0);
		next_in += (uint64_t)n;
		k = (uint32_t)(r >> 50) % 13 + 1;
		n = ipc_ring_pop_n(&p.cons, buf, k);
		assert_true(n >= 0);
		for (int i = 0; i < n; i++) {
			assert_int_equal(buf[i].seq, next_out);
			assert_int_equal(buf[i].check, ~next_out);
			next_out++;
		}
		crossed |= p.cons.own < 1000;
	}
	assert_true(crossed);
	/* Laps: 200000 entries through 32 slots. */
	assert_int_equal(p.cons.own, (uint32_t)(UINT32_MAX - 40 + next_out));
	pair_close(&p);
}

/* Full and empty exactly at the 2^32 boundary. */
static void full_at_wrap(void **s)
{
	struct pair p;
	struct ent e, out;

	pair_open(&p, 4, UINT32_MAX - 1);
	for (int i = 0; i < 4; i++) {
		e = ent(i);
		assert_int_equal(ipc_ring_push(&p.prod, &e), 0);
	}
	assert_int_equal(atomic_load(&shm(&p)->head), 2u);
	assert_int_equal(ipc_ring_push(&p.prod, &e), -EAGAIN);
	for (int i = 0; i < 4; i++)
		assert_int_equal(ipc_ring_pop(&p.cons, &out), 0);
	assert_int_equal(out.seq, 3);
	assert_int_equal(ipc_ring_pop(&p.cons, &out), -EAGAIN);
	pair_close(&p);
}

/* A producer's head written by someone hostile: more than a ring ahead
 * of the tail, or behind it. The consumer reports it and copies nothing
 * (its buffer stays as it was). Exactly a ring ahead is legal (full). */
static void hostile_head(void **s)
{
	static const uint32_t bad[] = { 9, 10, 1000, 0x80000000u,
					UINT32_MAX, UINT32_MAX - 7 };
	struct pair p;
	struct ent out, before;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		pair_open(&p, 8, UINT32_MAX - 3);
		memset(&out, 0x3c, sizeof(out));
		before = out;
		atomic_store(&shm(&p)->head, UINT32_MAX - 3 + bad[i]);
		assert_int_equal(ipc_ring_pop(&p.cons, &out), -MOE_EPROTO);
		assert_memory_equal(&out, &before, sizeof(out));
		assert_int_equal(ipc_ring_poll(&p.cons), -MOE_EPROTO);
		assert_true(ipc_ring_ready(&p.cons)); /* a waiter wakes */
		assert_int_equal(p.cons.own, UINT32_MAX - 3); /* nothing taken */
		pair_close(&p);
	}
	pair_open(&p, 8, 7);
	atomic_store(&shm(&p)->head, 7 + 8);
	assert_int_equal(ipc_ring_poll(&p.cons), 8);
	assert_int_equal(ipc_ring_pop(&p.cons, &out), 0);
	pair_close(&p);
}

/* Validated entries stay poppable after the head turns hostile; the
 * error comes when the consumer next has to look at the head. */
static void hostile_head_after_entries(void **s)
{
	struct pair p;
	struct ent e = ent(1), out;

	pair_open(&p, 8, 0);
	assert_int_equal(ipc_ring_push(&p.prod, &e), 0);
	assert_int_equal(ipc_ring_push(&p.prod, &e), 0);
	assert_int_equal(ipc_ring_poll(&p.cons), 2);
	atomic_store(&shm(&p)->head, 100);
	assert_int_equal(ipc_ring_pop(&p.cons, &out), 0);
	assert_int_equal(ipc_ring_pop(&p.cons, &out), 0);
	assert_int_equal(ipc_ring_pop(&p.cons, &out), -MOE_EPROTO);
	pair_close(&p);
}

/* A consumer's tail beyond the producer's head, or more than a ring
 * behind it: the producer refuses to write. */
static void hostile_tail(void **s)
{
	static const uint32_t bad[] = { 1, 2, 0x80000000u, UINT32_MAX - 8 };
	struct pair p;
	struct ent e = ent(5);

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		pair_open(&p, 8, 0x7ffffffeu);
		/* Fill it, so the producer has to look at the tail. */
		for (int j = 0; j < 8; j++)
			assert_int_equal(ipc_ring_push(&p.prod, &e), 0);
		uint32_t head = atomic_load(&shm(&p)->head);
		atomic_store(&shm(&p)->tail, head + bad[i]);
		assert_int_equal(ipc_ring_push(&p.prod, &e), -MOE_EPROTO);
		assert_int_equal(ipc_ring_poll(&p.prod), -MOE_EPROTO);
		assert_int_equal(atomic_load(&shm(&p)->head), head);
		pair_close(&p);
	}
}

static void attach_checks(void **s)
{
	void *mem;
	struct ipc_ring r;

	assert_int_equal(posix_memalign(&mem, IPC_RING_ALIGN,
					ipc_ring_bytes(8, 64)), 0);
	assert_int_equal(ipc_ring_bytes(0, 64), 0);
	assert_int_equal(ipc_ring_bytes(12, 64), 0);
	assert_int_equal(ipc_ring_bytes(IPC_RING_MAX_ENTRIES * 2, 64), 0);
	assert_int_equal(ipc_ring_bytes(8, 0), 0);
	assert_int_equal(ipc_ring_bytes(8, IPC_RING_MAX_ESIZE + 1), 0);
	assert_int_equal(ipc_ring_bytes(8, 64), IPC_RING_HDR + 8 * 64);
	ipc_ring_format(mem, 0);
	assert_int_equal(ipc_ring_attach(&r, mem, 6, 64, IPC_RING_PRODUCER),
			 -EINVAL);
	assert_int_equal(ipc_ring_attach(&r, (char *)mem + 64, 8, 64,
					 IPC_RING_PRODUCER), -EINVAL);
	atomic_store(&((struct ipc_ring_shm *)mem)->head, 9);
	assert_int_equal(ipc_ring_attach(&r, mem, 8, 64, IPC_RING_CONSUMER),
			 -MOE_EPROTO);
	free(mem);
}

static void wrong_role(void **s)
{
	struct pair p;
	struct ent e = ent(1);

	pair_open(&p, 8, 0);
	assert_int_equal(ipc_ring_pop(&p.prod, &e), -EINVAL);
	assert_int_equal(ipc_ring_push(&p.cons, &e), -EINVAL);
	pair_close(&p);
}

/* The layout the peer relies on, checked at run time too (ring.h
 * static_asserts the same): indices on separate line pairs. */
static void layout(void **s)
{
	static _Atomic uint32_t word;

	assert_int_equal(offsetof(struct ipc_ring_shm, head), 0);
	assert_int_equal(offsetof(struct ipc_ring_shm, tail), 128);
	assert_int_equal(sizeof(struct ipc_ring_shm), IPC_RING_HDR);
	assert_int_equal(IPC_RING_HDR % 64, 0);
	assert_int_equal(offsetof(struct ipc_bell, seq), 0);
	assert_int_equal(sizeof(struct ipc_bell), 128);
	assert_true(atomic_is_lock_free(&word));
}

static bool never(void *arg)
{
	(*(int *)arg)++;
	return false;
}

static bool always(void *arg)
{
	return true;
}

static double now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec * 1e-9;
}

/* Nothing ever ready: the wait gives up after its timeout, not before
 * and not much after, having looked at least once per spin. */
static void bell_timeout(void **s)
{
	struct ipc_bell b;
	int looks = 0;
	double t;

	ipc_bell_init(&b);
	t = now();
	assert_int_equal(ipc_bell_wait(&b, never, &looks, 50, 30000000),
			 -ETIMEDOUT);
	t = now() - t;
	assert_true(t >= 0.029);
	assert_true(t < 2.0);
	assert_true(looks >= 51);
	assert_int_equal(atomic_load(&b.waiters), 0);
	/* Spin only. */
	assert_int_equal(ipc_bell_wait(&b, never, &looks, 10, 0), -ETIMEDOUT);
}

static void bell_ready(void **s)
{
	struct ipc_bell b;

	ipc_bell_init(&b);
	assert_int_equal(ipc_bell_wait(&b, always, NULL, 10, 1000), 0);
	assert_int_equal(ipc_bell_wait(&b, always, NULL, 0, 1000), 0);
	/* Nobody sleeps: ringing changes nothing and makes no call. */
	assert_int_equal(ipc_bell_ring(&b), 0);
	assert_int_equal(atomic_load(&b.seq), 0);
	/* A sleeper announced: the ring moves the word. */
	atomic_store(&b.waiters, 1);
	assert_int_equal(ipc_bell_ring(&b), 0);
	assert_int_equal(atomic_load(&b.seq), 1);
	assert_int_equal(ipc_bell_kick(&b), 0); /* nobody in the kernel */
	assert_int_equal(atomic_load(&b.seq), 2);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(push_pop_one),
		cmocka_unit_test(full_then_empty),
		cmocka_unit_test(bursts),
		cmocka_unit_test(laps_across_2_32),
		cmocka_unit_test(full_at_wrap),
		cmocka_unit_test(hostile_head),
		cmocka_unit_test(hostile_head_after_entries),
		cmocka_unit_test(hostile_tail),
		cmocka_unit_test(attach_checks),
		cmocka_unit_test(wrong_role),
		cmocka_unit_test(layout),
		cmocka_unit_test(bell_timeout),
		cmocka_unit_test(bell_ready),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
