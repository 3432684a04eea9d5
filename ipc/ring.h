/* Single-producer single-consumer rings in shared memory between moed and
 * one client: the submission ring (client to moed) and the completion ring
 * (moed to client). Fixed-size entries, a power-of-two count, free-running
 * 32-bit indices masked by count - 1, as DPDK's lib/ring and io_uring do.
 *
 * The two sides do not trust each other. Each side keeps the index it owns
 * in its private handle and only ever stores it to shared memory; the
 * peer's index is loaded, checked against the ring size and refused when
 * it is impossible, so a hostile peer can make a ring report an error but
 * never make the other side read or write outside it. Entries are copied
 * out whole, so the consumer checks a copy the producer can no longer
 * change. Sizes come from the caller's own (validated) layout, never from
 * shared memory. */
#ifndef MOE_IPC_RING_H
#define MOE_IPC_RING_H

#include <assert.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Each index gets a pair of 64-byte lines: AMD and Intel cores prefetch
 * the adjacent line of a pair, which would drag the peer's index into a
 * line we write (false sharing) if the two shared a 128-byte block. */
#define IPC_RING_ALIGN 128

/* Largest ring: indices are compared as differences modulo 2^32, which
 * stays unambiguous while a ring holds at most 2^31 entries; no ring
 * needs more than this much. */
#define IPC_RING_MAX_ENTRIES (1u << 16)
#define IPC_RING_MAX_ESIZE 4096u

/* The shared part: two indices, then the entries at IPC_RING_HDR bytes.
 * An entry is written by the producer only while it is free (after A1
 * saw the consumer release it, before R1 publishes it) and read by the
 * consumer only while it is published (after A2, before R2). */
struct ipc_ring_shm {
	/* Written by the producer only (R1 in ipc_ring_push_n), after the
	 * entries it publishes; read by the consumer (A2). */
	alignas(IPC_RING_ALIGN) _Atomic uint32_t head;
	/* Written by the consumer only (R2 in ipc_ring_pop_n), after it has
	 * copied the entries it releases; read by the producer (A1). */
	alignas(IPC_RING_ALIGN) _Atomic uint32_t tail;
};

#define IPC_RING_HDR (2 * IPC_RING_ALIGN)

static_assert(offsetof(struct ipc_ring_shm, head) == 0, "head first");
static_assert(offsetof(struct ipc_ring_shm, tail) == IPC_RING_ALIGN,
	      "tail on its own line pair");
static_assert(sizeof(struct ipc_ring_shm) == IPC_RING_HDR,
	      "entries start on a fresh line pair");
static_assert(sizeof(_Atomic uint32_t) == sizeof(uint32_t),
	      "an atomic index has the plain layout the peer expects");
/* Both processes map the ring at different addresses: only lock-free
 * atomics are address-free, a lock-based fallback would not synchronise. */
static_assert(ATOMIC_INT_LOCK_FREE == 2, "indices must be lock-free");

enum ipc_ring_role {
	IPC_RING_PRODUCER,
	IPC_RING_CONSUMER,
};

/* One side's private handle. Nothing in it is shared. */
struct ipc_ring {
	struct ipc_ring_shm *shm;
	unsigned char *ents;
	uint32_t mask;   /* entries - 1 */
	uint32_t esize;  /* bytes per entry */
	uint32_t own;    /* our index (head or tail): the true value; the
			  * shared copy is only ever written from this */
	uint32_t peer;   /* the peer's index as last loaded and accepted */
	enum ipc_ring_role role;
};

/* Bytes of shared memory a ring of n entries of esize bytes takes, or 0
 * if n is not a power of two in 1..IPC_RING_MAX_ENTRIES or esize is not
 * in 1..IPC_RING_MAX_ESIZE. */
size_t ipc_ring_bytes(uint32_t n, uint32_t esize);

/* Set head = tail = start (normally 0; tests start near UINT32_MAX).
 * Only while the peer cannot see the memory yet. */
void ipc_ring_format(void *mem, uint32_t start);

/* Attach a handle to a formatted ring at mem (IPC_RING_ALIGN-aligned,
 * ipc_ring_bytes(n, esize) bytes) as producer or consumer. Our own index
 * is read from shared memory once, here: attach before the peer starts.
 * Returns 0; -EINVAL (n, esize or alignment wrong); -MOE_EPROTO (the
 * indices are already inconsistent). */
int ipc_ring_attach(struct ipc_ring *r, void *mem, uint32_t n,
		    uint32_t esize, enum ipc_ring_role role);

/* Copy up to n entries from e into the ring. Returns the number pushed
 * (0 when full), -MOE_EPROTO when the consumer's tail is impossible (not
 * within one ring of our head), -EINVAL on a consumer handle. */
int ipc_ring_push_n(struct ipc_ring *r, const void *e, uint32_t n);

/* Copy up to n entries out of the ring into e. Returns the number popped
 * (0 when empty), -MOE_EPROTO when the producer's head is impossible
 * (ahead of our tail by more than the ring size, or behind it), -EINVAL
 * on a producer handle. */
int ipc_ring_pop_n(struct ipc_ring *r, void *e, uint32_t n);

/* One entry: 0, -EAGAIN (full or empty), or as above. */
int ipc_ring_push(struct ipc_ring *r, const void *e);
int ipc_ring_pop(struct ipc_ring *r, void *e);

/* Looks at the peer's index now: for a consumer the entries ready to
 * pop, for a producer the free entries; -MOE_EPROTO as above. */
int ipc_ring_poll(struct ipc_ring *r);

/* For ipc_bell_wait (arg: struct ipc_ring *): true when poll() is not 0,
 * so a waiter also wakes for a corrupt ring and sees the error. */
bool ipc_ring_ready(void *ring);

#endif
