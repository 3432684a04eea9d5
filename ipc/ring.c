/* SPSC rings in shared memory: the bodies of ring.h. Hot path of every
 * request in both directions, a few entries at a time; each side touches
 * the peer's line only when its cached copy of the peer's index says the
 * ring is full (producer) or empty (consumer). */
#include <errno.h>
#include <string.h>

#include <moe/moeclient.h>

#include "ring.h"

size_t ipc_ring_bytes(uint32_t n, uint32_t esize)
{
	if (n == 0 || n > IPC_RING_MAX_ENTRIES || (n & (n - 1)))
		return 0;
	if (esize == 0 || esize > IPC_RING_MAX_ESIZE)
		return 0;
	return IPC_RING_HDR + (size_t)n * esize;
}

void ipc_ring_format(void *mem, uint32_t start)
{
	struct ipc_ring_shm *s = mem;

	/* Relaxed: the memory is published to the peer later by something
	 * that synchronises (the sealed memfd handed over a socket). */
	atomic_store_explicit(&s->head, start, memory_order_relaxed);
	atomic_store_explicit(&s->tail, start, memory_order_relaxed);
}

/* Indices are free-running: the ring holds head - tail entries (mod 2^32),
 * which can never exceed its size. Anything else is a peer lying. */
static bool span_ok(const struct ipc_ring *r, uint32_t head, uint32_t tail)
{
	return head - tail <= r->mask + 1;
}

int ipc_ring_attach(struct ipc_ring *r, void *mem, uint32_t n,
		    uint32_t esize, enum ipc_ring_role role)
{
	struct ipc_ring_shm *s = mem;
	uint32_t head, tail;

	if (!ipc_ring_bytes(n, esize) || (uintptr_t)mem % IPC_RING_ALIGN)
		return -EINVAL;
	if (role != IPC_RING_PRODUCER && role != IPC_RING_CONSUMER)
		return -EINVAL;
	/* A0: pairs with R1/R2 of whoever last moved the indices (at attach
	 * that is ipc_ring_format, published by the fd handover). */
	head = atomic_load_explicit(&s->head, memory_order_acquire);
	tail = atomic_load_explicit(&s->tail, memory_order_acquire);
	*r = (struct ipc_ring){
		.shm = s,
		.ents = (unsigned char *)mem + IPC_RING_HDR,
		.mask = n - 1,
		.esize = esize,
		.own = role == IPC_RING_PRODUCER ? head : tail,
		.peer = role == IPC_RING_PRODUCER ? tail : head,
		.role = role,
	};
	return span_ok(r, head, tail) ? 0 : -MOE_EPROTO;
}

/* Producer: reload the consumer's tail. */
static int load_tail(struct ipc_ring *r)
{
	/* A1: pairs with R2 in ipc_ring_pop_n: the consumer has finished
	 * copying every entry below tail, so we may overwrite them. */
	uint32_t tail = atomic_load_explicit(&r->shm->tail,
					     memory_order_acquire);

	if (!span_ok(r, r->own, tail))
		return -MOE_EPROTO;
	r->peer = tail;
	return 0;
}

/* Consumer: reload the producer's head. */
static int load_head(struct ipc_ring *r)
{
	/* A2: pairs with R1 in ipc_ring_push_n: the entries below head are
	 * written before we copy them. */
	uint32_t head = atomic_load_explicit(&r->shm->head,
					     memory_order_acquire);

	if (!span_ok(r, head, r->own))
		return -MOE_EPROTO;
	r->peer = head;
	return 0;
}

/* Copy n entries between the ring (starting at index idx) and a flat
 * array, in at most two pieces around the end of the ring. */
static void copy_in(struct ipc_ring *r, uint32_t idx, const void *src,
		    uint32_t n)
{
	uint32_t at = idx & r->mask, first = r->mask + 1 - at;

	if (first > n)
		first = n;
	memcpy(r->ents + (size_t)at * r->esize, src, (size_t)first * r->esize);
	memcpy(r->ents, (const unsigned char *)src + (size_t)first * r->esize,
	       (size_t)(n - first) * r->esize);
}

static void copy_out(struct ipc_ring *r, uint32_t idx, void *dst, uint32_t n)
{
	uint32_t at = idx & r->mask, first = r->mask + 1 - at;

	if (first > n)
		first = n;
	memcpy(dst, r->ents + (size_t)at * r->esize, (size_t)first * r->esize);
	memcpy((unsigned char *)dst + (size_t)first * r->esize, r->ents,
	       (size_t)(n - first) * r->esize);
}

int ipc_ring_push_n(struct ipc_ring *r, const void *e, uint32_t n)
{
	uint32_t size = r->mask + 1, room;
	int rc;

	if (r->role != IPC_RING_PRODUCER)
		return -EINVAL;
	room = size - (r->own - r->peer);
	if (room < n) {
		rc = load_tail(r);
		if (rc)
			return rc;
		room = size - (r->own - r->peer);
	}
	if (n > room)
		n = room;
	if (n == 0)
		return 0;
	copy_in(r, r->own, e, n);
	r->own += n;
	/* R1: publishes the entries just copied; pairs with A2 in load_head
	 * (which ipc_ring_poll and ipc_ring_ready use too). */
	atomic_store_explicit(&r->shm->head, r->own, memory_order_release);
	return (int)n;
}

int ipc_ring_pop_n(struct ipc_ring *r, void *e, uint32_t n)
{
	uint32_t avail;
	int rc;

	if (r->role != IPC_RING_CONSUMER)
		return -EINVAL;
	avail = r->peer - r->own;
	if (avail < n) {
		rc = load_head(r);
		if (rc)
			return rc;
		avail = r->peer - r->own;
	}
	if (n > avail)
		n = avail;
	if (n == 0)
		return 0;
	copy_out(r, r->own, e, n);
	r->own += n;
	/* R2: hands the entries just copied back to the producer; pairs
	 * with A1 in load_tail. */
	atomic_store_explicit(&r->shm->tail, r->own, memory_order_release);
	return (int)n;
}

int ipc_ring_push(struct ipc_ring *r, const void *e)
{
	int rc = ipc_ring_push_n(r, e, 1);

	return rc == 1 ? 0 : rc == 0 ? -EAGAIN : rc;
}

int ipc_ring_pop(struct ipc_ring *r, void *e)
{
	int rc = ipc_ring_pop_n(r, e, 1);

	return rc == 1 ? 0 : rc == 0 ? -EAGAIN : rc;
}

int ipc_ring_poll(struct ipc_ring *r)
{
	int rc;

	if (r->role == IPC_RING_PRODUCER) {
		rc = load_tail(r);
		return rc ? rc : (int)(r->mask + 1 - (r->own - r->peer));
	}
	rc = load_head(r);
	return rc ? rc : (int)(r->peer - r->own);
}

bool ipc_ring_ready(void *ring)
{
	return ipc_ring_poll(ring) != 0;
}
