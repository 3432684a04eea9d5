/* The per-client arena: one memfd that moed creates, seals and hands to a
 * client, holding the header, the two doorbells, the submission and
 * completion rings and the slots for activations. moed creates (and keeps
 * its own copy of the layout, never reading the header back); the client
 * attaches and validates every field against what it was given.
 *
 *   0      struct ipc_arena_hdr
 *   256    sq bell (client rings, moed waits)
 *   384    cq bell (moed rings, client waits)
 *   512    submission ring: ipc_desc entries, client produces
 *   ...    completion ring: ipc_cqe entries, moed produces
 *   page   slot 0 .. slot_count-1, each page-aligned:
 *            in:    max_tokens * n_embd floats      (client writes)
 *            out:   max_tokens * n_embd floats      (moed writes)
 *            route: max_tokens * max_route_k ipc_route (client writes)
 *
 * Sealed against shrinking and growing before it leaves moed, so a client
 * cannot truncate the file and make moed's accesses fault (SIGBUS). Not
 * against writing: a client can change its slots (or anything else) at any
 * moment, so moed treats what it reads there as untrusted values, and
 * takes every size and offset from its own copy of the layout. */
#ifndef MOE_IPC_SHM_H
#define MOE_IPC_SHM_H

#include <assert.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "futex.h"
#include "proto.h"
#include "ring.h"

#define IPC_ARENA_MAGIC UINT64_C(0x414e524164656f6d) /* "moedARNA" */
#define IPC_ARENA_VERSION 1
#define IPC_ARENA_SEALS (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)
#define IPC_ARENA_MAX_SIZE (UINT64_C(1) << 40)
#define IPC_ARENA_MAX_SLOTS 4096u

/* At offset 0. Every field is written by moed in ipc_arena_create, before
 * the memfd is sealed and passed, and by nobody after: the client reads
 * and checks it, moed never reads it again (a client may scribble on it
 * and confuse only itself). */
struct ipc_arena_hdr {
	uint64_t magic;       /* IPC_ARENA_MAGIC */
	uint32_t version;     /* IPC_ARENA_VERSION: layout of this file */
	uint32_t hdr_size;    /* sizeof(struct ipc_arena_hdr) */
	uint64_t total_size;  /* bytes of the memfd; equals its fstat size */
	uint64_t sq_bell_off; /* struct ipc_bell: client rings, moed waits */
	uint64_t cq_bell_off; /* struct ipc_bell: moed rings, client waits */
	uint64_t sq_off;      /* submission ring (struct ipc_ring_shm) */
	uint32_t sq_entries;  /* power of two */
	uint32_t sq_esize;    /* sizeof(struct ipc_desc) */
	uint64_t cq_off;      /* completion ring */
	uint32_t cq_entries;  /* power of two */
	uint32_t cq_esize;    /* sizeof(struct ipc_cqe) */
	uint64_t slot_off;    /* first slot, page-aligned */
	uint64_t slot_size;   /* bytes per slot, a page multiple */
	uint32_t slot_count;
	uint32_t max_tokens;  /* rows per slot */
	uint32_t n_embd;      /* floats per row */
	uint32_t max_route_k; /* routing pairs per token; 0: no area */
	uint64_t in_off;      /* within a slot: input rows */
	uint64_t out_off;     /* within a slot: output rows */
	uint64_t route_off;   /* within a slot: routing pairs */
	int32_t moed_pid;     /* for the client's diagnostics */
	int32_t client_pid;   /* as SO_PEERCRED said; for moectl */
	uint8_t reserved[120];
};
static_assert(sizeof(struct ipc_arena_hdr) == 256, "ipc_arena_hdr");
static_assert(offsetof(struct ipc_arena_hdr, slot_off) == 72,
	      "ipc_arena_hdr.slot_off");

/* What moed asks for. */
struct ipc_arena_params {
	uint32_t sq_entries;  /* powers of two, at least the client's */
	uint32_t cq_entries;  /* requests in flight */
	uint32_t slot_count;  /* 1..IPC_ARENA_MAX_SLOTS */
	uint32_t max_tokens;  /* >= 1 */
	uint32_t n_embd;      /* >= 1 */
	uint32_t max_route_k; /* 0..IPC_ROUTE_MAX_K */
	int32_t client_pid;
	uint32_t ring_start;  /* first ring index; 0 but in tests */
};
#define IPC_ROUTE_MAX_K 256u

/* One side's handle on an arena. Private: never shared. */
struct ipc_arena {
	int fd;
	unsigned char *base;
	size_t size;
	struct ipc_arena_hdr lay; /* our copy of the (checked) layout */
	struct ipc_ring sq;  /* moed: consumer; client: producer */
	struct ipc_ring cq;  /* moed: producer; client: consumer */
	struct ipc_bell *sq_bell;
	struct ipc_bell *cq_bell;
};

/* moed: create, map, lay out and seal a new arena. Returns 0; -EINVAL
 * (params out of range, arena over IPC_ARENA_MAX_SIZE); -errno from
 * memfd_create, ftruncate, mmap or fcntl. */
int ipc_arena_create(struct ipc_arena *a, const struct ipc_arena_params *p);

/* Client: map the arena in fd and check its header. On success a owns fd;
 * on failure the caller still does. Returns 0; -MOE_EPROTO (not an arena,
 * or a size, offset or count that does not fit); -MOE_EVERSION (another
 * layout version); -errno from fstat or mmap. */
int ipc_arena_attach(struct ipc_arena *a, int fd);

/* Unmap and close. Safe on a handle that is zeroed, already closed, or
 * whose create or attach failed. */
void ipc_arena_close(struct ipc_arena *a);

/* Check a header (e.g. mapped from a peer) against a mapping of map_size
 * bytes; what ipc_arena_attach does. Returns 0, -MOE_EPROTO, -MOE_EVERSION. */
int ipc_arena_validate(const struct ipc_arena_hdr *h, uint64_t map_size);

/* moed: 0 if fd carries IPC_ARENA_SEALS, so nobody can resize it;
 * -EPERM if one is missing; -errno from fcntl (-EINVAL: not a memfd). */
int ipc_arena_check_seals(int fd);

/* A slot's areas, or NULL if slot >= slot_count. */
float *ipc_slot_in(const struct ipc_arena *a, uint32_t slot);
float *ipc_slot_out(const struct ipc_arena *a, uint32_t slot);
struct ipc_route *ipc_slot_route(const struct ipc_arena *a, uint32_t slot);

/* moed: check a descriptor copied out of the ring against the arena: the
 * slot, n_tokens, flags, routing options, reserved bytes zero. The layer
 * is the model's to check. Returns 0 or -MOE_EDESC. */
int ipc_desc_check(const struct ipc_desc *d, const struct ipc_arena *a);

/* As ipc_desc_check, and on failure names the first bad field and its
 * value in why (for moed's log). */
int ipc_desc_explain(const struct ipc_desc *d, const struct ipc_arena *a,
		     char *why, size_t len);

#endif
