/* Doorbells between moed and a client: the side that waits for a ring
 * spins a little, then sleeps on a futex word in the shared memory; the
 * side that fills the ring rings the bell, which costs a system call only
 * when someone actually sleeps. Waits are always bounded, so a client
 * notices a dead moed (and moed a silent client) in bounded time. */
#ifndef MOE_IPC_FUTEX_H
#define MOE_IPC_FUTEX_H

#include <assert.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

/* One bell per direction, alone on a line pair (see IPC_RING_ALIGN). */
#define IPC_BELL_ALIGN 128

/* Spins before sleeping when the caller has no better figure. A spin is
 * one ready() check and one pause (about 30 ns on this machine's EPYC,
 * a few ns on older cores), so this is 10-20 us here: about what a futex
 * sleep and wakeup cost, so spinning longer cannot win much, while on a
 * busy machine a spinner keeps the core its peer needs. */
#define IPC_BELL_SPINS 500u

struct ipc_bell {
	/* The futex word. Bumped by the ringer (R3 in ipc_bell_ring) when
	 * it sees a sleeper; sleepers wait for it to leave the value they
	 * read (A3). Never interpreted as a count, only compared. */
	alignas(IPC_BELL_ALIGN) _Atomic uint32_t seq;
	/* Sleepers, announced by the waiting side before its last look at
	 * the ring (W1 in ipc_bell_wait) and withdrawn after; read by the
	 * ringer with an RMW (A4). Only ever changed by RMWs. A peer can
	 * scribble here: the worst it causes is a system call too many, or
	 * its own wakeups lost. */
	_Atomic uint32_t waiters;
};

static_assert(sizeof(struct ipc_bell) == IPC_BELL_ALIGN, "one line pair");
static_assert(sizeof(_Atomic uint32_t) == 4, "futex words are 32 bits");
static_assert(ATOMIC_INT_LOCK_FREE == 2, "shared atomics must be lock-free");

/* Only while the peer cannot see the memory yet. */
void ipc_bell_init(struct ipc_bell *b);

/* Call after publishing (a release store that ready() acquires): wakes
 * the waiter if it sleeps. One atomic add of 0 when nobody sleeps.
 * Returns 0 or -errno from futex (-EFAULT: b not mapped). */
int ipc_bell_ring(struct ipc_bell *b);

/* Wakes every sleeper whether or not it announced itself: for shutdown.
 * Returns the number woken or -errno. */
int ipc_bell_kick(struct ipc_bell *b);

/* Waits until ready(arg) is true: first up to `spins` checks with a pause
 * between them, then sleeps on b, checking again on every wakeup. ready
 * must acquire what the ringer published. Gives up timeout_ns after the
 * call (0: spin only). Returns 0 if ready while spinning, 1 if ready after
 * the spins ran out (it announced itself and may have slept), -ETIMEDOUT,
 * or -errno from futex. */
int ipc_bell_wait(struct ipc_bell *b, bool (*ready)(void *arg), void *arg,
		  uint32_t spins, int64_t timeout_ns);

/* One pause instruction: tells the core (and an SMT sibling) we spin. */
static inline void ipc_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ volatile("yield" ::: "memory");
#endif
}

#endif
