/* libmoeclient's private state, shared by its two halves: moeclient.c
 * (connect, handshake, model facts, close) and request.c (slots, submit,
 * completions, waits). Never installed, never included by applications. */
#ifndef MOE_CLIENT_INT_H
#define MOE_CLIENT_INT_H

#include <assert.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <moe/moeclient.h>

#include "shm.h"

/* The public structs are ABI: their sizes are frozen (reserved fields
 * take what later versions add). */
static_assert(sizeof(struct moe_connect_opts) == 64, "moe_connect_opts");
static_assert(sizeof(struct moe_model_info) == 128, "moe_model_info");
static_assert(sizeof(struct moe_req_opts) == 64, "moe_req_opts");
static_assert(sizeof(struct moe_result) == 64, "moe_result");
static_assert(sizeof(struct moe_slot) == 48, "moe_slot");

/* A wait sleeps on the completion bell at most this long before it looks
 * at the control socket: a dead moed (which rings no bell) is noticed
 * within about this long. */
#define CLIENT_SLICE_NS 40000000ll
/* Calls that do not sleep (moe_poll) look at the socket at most this
 * often, so polling stays free of system calls. */
#define CLIENT_CHECK_NS 40000000ll

enum slot_state {
	SLOT_FREE, /* on the free stack */
	SLOT_HELD, /* the caller's (moe_slot_acquire), idle */
	SLOT_BUSY, /* a request in flight */
	SLOT_DONE, /* its completion arrived, not yet collected */
};

/* One slot of the arena, as the library tracks it. */
struct req_slot {
	enum slot_state state;
	bool user;          /* zero-copy: back to SLOT_HELD when collected */
	bool orphan;        /* abandoned (moe_forward timed out): freed when
			     * its completion arrives, never collected */
	uint64_t id;
	uint32_t gen;
	uint32_t n_tokens;
	float *y;           /* output copied here on collection; NULL: not */
	int64_t t_submit;   /* CLOCK_MONOTONIC ns */
	uint32_t wall_usec; /* submit to completion, once SLOT_DONE */
	struct ipc_cqe cqe; /* once SLOT_DONE */
};

struct moe_client {
	int sock;
	pid_t pid;           /* the process that connected (see moe_close) */
	int broken;          /* 0, -MOE_EDEAD or -MOE_EPROTO: sticky */
	uint32_t timeout_ms;
	struct ipc_arena arena;
	struct moe_model_info info;
	uint8_t moe_layers[IPC_MAX_LAYERS / 8];
	uint64_t next_id;
	int64_t last_check;  /* last look at the socket, ns */
	struct req_slot *slots;
	uint32_t n_slots;
	uint32_t *free_stack; /* SLOT_FREE slots */
	uint32_t n_free;
	uint32_t *done;       /* SLOT_DONE slots, in completion order */
	uint32_t n_done;
	uint32_t n_pending;   /* requests a caller may still collect:
			       * SLOT_BUSY but not orphans, and SLOT_DONE */
};

static inline bool client_all_zero(const void *p, size_t n)
{
	const unsigned char *b = p;

	for (size_t i = 0; i < n; i++)
		if (b[i])
			return false;
	return true;
}

/* CLOCK_MONOTONIC in ns. */
int64_t client_now(void);

/* Mark the client unusable with err (the first reason sticks); returns
 * the reason in force. */
int client_fail(struct moe_client *c, int err);

/* Set up the slot bookkeeping for n slots (all free). 0 or -ENOMEM. */
int client_slots_init(struct moe_client *c, uint32_t n);
void client_slots_free(struct moe_client *c);

/* Read whatever moed sent on the control socket without blocking; a
 * hang-up (or a BYE) marks the client dead. */
void client_check_peer(struct moe_client *c);

#endif
