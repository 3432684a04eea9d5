/* Doorbells: spin, then FUTEX_WAIT on a word in the shared mapping. The
 * futex calls are the shared (not _PRIVATE) ones: the two sides are
 * different processes, so the kernel must key the futex on the page, not
 * on our address space.
 *
 * Why no wakeup is lost. The waiter W and the ringer R do:
 *
 *   W: s = seq (A3)               R: publish (a release store: head)
 *      waiters += 1 (W1)             if (waiters += 0 (A4)) != 0:
 *      if (!ready())                         seq++ (R3), FUTEX_WAKE
 *              FUTEX_WAIT(seq, s)
 *      waiters -= 1
 *
 * W1 and A4 are both read-modify-writes (acq_rel) of waiters, so one comes
 * before the other in its modification order, and the later one reads
 * what the earlier wrote (or an RMW after it: all accesses of waiters are
 * RMWs, so release sequences are never broken). If A4 comes first, W1
 * acquires A4, which released the publishing store: W's ready() sees it
 * and W does not sleep. If W1 comes first, A4 reads a non-zero count
 * (unless W already withdrew, in which case W is awake and looks again)
 * and acquires W1: W read s before R's seq++, so s is an older value. The
 * kernel compares seq with s and queues W atomically with respect to
 * FUTEX_WAKE: either seq has moved (W returns at once) or W is queued
 * when R wakes it. Either way W calls ready() again.
 *
 * A plain load of waiters in R would not do: its store-load pattern
 * (publish, then read waiters; announce, then read head) needs a full
 * barrier on both sides, which an RMW gives and a release/acquire pair
 * does not. RMWs rather than seq_cst fences, because ThreadSanitizer
 * understands the former and not the latter. */
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "futex.h"

/* Longer waits are cut to this (a day), so the deadline cannot overflow. */
#define MAX_TIMEOUT_NS (86400ll * 1000000000ll)

void ipc_bell_init(struct ipc_bell *b)
{
	/* Relaxed: published to the peer with the whole arena. */
	atomic_store_explicit(&b->seq, 0, memory_order_relaxed);
	atomic_store_explicit(&b->waiters, 0, memory_order_relaxed);
}

static int futex_wake(struct ipc_bell *b, int n)
{
	long rc = syscall(SYS_futex, (uint32_t *)&b->seq, FUTEX_WAKE, n,
			  NULL, NULL, 0);

	return rc < 0 ? -errno : (int)rc;
}

/* Sleeps while seq == s, until the absolute CLOCK_MONOTONIC deadline
 * (FUTEX_WAIT_BITSET takes an absolute time, so retries do not drift). */
static int futex_wait(struct ipc_bell *b, uint32_t s,
		      const struct timespec *deadline)
{
	long rc = syscall(SYS_futex, (uint32_t *)&b->seq, FUTEX_WAIT_BITSET,
			  s, deadline, NULL, FUTEX_BITSET_MATCH_ANY);

	return rc < 0 ? -errno : 0;
}

int ipc_bell_ring(struct ipc_bell *b)
{
	int rc;

	/* A4: an RMW, not a load (see the top of the file). Release half
	 * pairs with W1's acquire (W then sees what we published); acquire
	 * half pairs with W1's release (W's read of seq came before R3). */
	if (!atomic_fetch_add_explicit(&b->waiters, 0, memory_order_acq_rel))
		return 0;
	/* R3: pairs with A3 in sleep_once; the kernel reads it too. */
	atomic_fetch_add_explicit(&b->seq, 1, memory_order_release);
	rc = futex_wake(b, INT_MAX);
	return rc < 0 ? rc : 0;
}

int ipc_bell_kick(struct ipc_bell *b)
{
	/* R3 as in ipc_bell_ring. */
	atomic_fetch_add_explicit(&b->seq, 1, memory_order_release);
	return futex_wake(b, INT_MAX);
}

static struct timespec deadline_after(int64_t ns)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	ns += t.tv_nsec;
	t.tv_sec += ns / 1000000000;
	t.tv_nsec = ns % 1000000000;
	return t;
}

static bool past(const struct timespec *deadline)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec > deadline->tv_sec ||
	       (t.tv_sec == deadline->tv_sec && t.tv_nsec >= deadline->tv_nsec);
}

/* Announce ourselves, look once more, sleep. 1 if ready() already held,
 * 0 after a sleep (woken, seq moved, signal or timeout: the caller looks
 * again), -errno if the futex call failed otherwise. */
static int sleep_once(struct ipc_bell *b, bool (*ready)(void *), void *arg,
		      const struct timespec *deadline)
{
	/* A3: pairs with R3 in ipc_bell_ring. */
	uint32_t s = atomic_load_explicit(&b->seq, memory_order_acquire);
	int rc = 1;

	/* W1: pairs with A4 in ipc_bell_ring, both ways. */
	atomic_fetch_add_explicit(&b->waiters, 1, memory_order_acq_rel);
	if (!ready(arg)) {
		rc = futex_wait(b, s, deadline);
		if (rc == -EAGAIN || rc == -EINTR || rc == -ETIMEDOUT)
			rc = 0;
	}
	/* Relaxed: a ringer that still sees us only makes a spare
	 * FUTEX_WAKE; nothing is published by leaving. Being an RMW it keeps
	 * the release sequences of W1 and A4 intact. */
	atomic_fetch_sub_explicit(&b->waiters, 1, memory_order_relaxed);
	return rc;
}

int ipc_bell_wait(struct ipc_bell *b, bool (*ready)(void *arg), void *arg,
		  uint32_t spins, int64_t timeout_ns)
{
	struct timespec deadline;
	int rc;

	for (uint32_t i = 0; i < spins; i++) {
		if (ready(arg))
			return 0;
		ipc_cpu_relax();
	}
	if (ready(arg))
		return 0;
	if (timeout_ns < 0)
		timeout_ns = 0;
	if (timeout_ns > MAX_TIMEOUT_NS)
		timeout_ns = MAX_TIMEOUT_NS;
	deadline = deadline_after(timeout_ns);
	for (;;) {
		if (past(&deadline))
			return ready(arg) ? 1 : -ETIMEDOUT;
		rc = sleep_once(b, ready, arg, &deadline);
		if (rc < 0)
			return rc;
		if (rc == 1 || ready(arg))
			return 1;
	}
}
