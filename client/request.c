/* libmoeclient, the request path: slots, descriptors onto the submission
 * ring, completions off the completion ring, and waits bounded in slices
 * between which the control socket is checked for moed's death. Every
 * MoE layer of an inference loop passes through here; while moed keeps
 * up, a request costs no system call on this side. */
#include <errno.h>
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "client_int.h"
#include "sock.h"

/* Completions taken off the ring per pop. */
#define DRAIN_BATCH 16

int client_slots_init(struct moe_client *c, uint32_t n)
{
	c->slots = calloc(n, sizeof(*c->slots));
	c->free_stack = calloc(n, sizeof(*c->free_stack));
	c->done = calloc(n, sizeof(*c->done));
	if (!c->slots || !c->free_stack || !c->done)
		return -ENOMEM;
	c->n_slots = n;
	/* Slot 0 on top: a client with little in flight keeps reusing the
	 * same few slots, whose pages stay warm. */
	for (uint32_t i = 0; i < n; i++)
		c->free_stack[i] = n - 1 - i;
	c->n_free = n;
	return 0;
}

void client_slots_free(struct moe_client *c)
{
	free(c->slots);
	free(c->free_stack);
	free(c->done);
	c->slots = NULL;
	c->free_stack = c->done = NULL;
	c->n_slots = c->n_free = c->n_done = 0;
}

static void slot_free(struct moe_client *c, uint32_t i)
{
	c->slots[i].state = SLOT_FREE;
	c->slots[i].user = false;
	c->free_stack[c->n_free++] = i;
}

static size_t rows_bytes(const struct moe_client *c, uint32_t n_tokens)
{
	return (size_t)n_tokens * c->info.n_embd * sizeof(float);
}

/* ---- checks: everything moed would refuse, refused here first ---- */

static int check_routing(const struct moe_client *c,
			 const struct moe_req_opts *o, uint32_t n_tokens)
{
	size_t n = (size_t)n_tokens * o->route_k;

	if (o->route_k > c->info.max_route_k)
		return -E2BIG;
	if (!o->route_ids || !o->route_w)
		return -EINVAL;
	for (size_t i = 0; i < n; i++)
		if (o->route_ids[i] >= c->info.n_expert ||
		    !isfinite(o->route_w[i]))
			return -EINVAL;
	return 0;
}

static int check_opts(const struct moe_client *c, const struct moe_req_opts *o,
		      uint32_t n_tokens)
{
	uint32_t kmax = c->info.max_k;

	if (!client_all_zero(o->reserved, sizeof(o->reserved)))
		return -EINVAL;
	if (!(o->top_p >= 0.0f && o->top_p <= 1.0f)) /* NaN fails too */
		return -EINVAL;
	if (o->min_k > kmax || o->max_k > kmax ||
	    (o->min_k && o->max_k && o->min_k > o->max_k))
		return -EINVAL;
	return o->route_k ? check_routing(c, o, n_tokens) : 0;
}

static int check_req(const struct moe_client *c, uint32_t layer,
		     uint32_t n_tokens, const struct moe_req_opts *o)
{
	int rc;

	if (n_tokens == 0 || moe_layer_is_moe(c, layer) != 1)
		return -EINVAL;
	if (n_tokens > c->info.max_tokens)
		return -E2BIG;
	rc = o ? check_opts(c, o, n_tokens) : 0;
	return rc ? rc : c->broken;
}

/* ---- submission ---- */

/* moed's dispatcher, when idle, announces itself on the submission bell
 * and sleeps in epoll, not on the futex: it must be told on the socket. */
static void kick(struct moe_client *c)
{
	struct ipc_bell *b = c->arena.sq_bell;
	struct ipc_msg_hdr k;
	int rc;

	/* A5: an RMW after our push (R1 in ipc_ring_push_n), against the RMW
	 * by which the dispatcher announces itself before its last look at
	 * the rings: the later of the two sees the earlier, so either moed
	 * sees our descriptor or we see it asleep. A plain load could miss
	 * both (store-load). */
	if (!atomic_fetch_add_explicit(&b->waiters, 0, memory_order_seq_cst))
		return;
	ipc_bell_ring(b); /* for a dispatcher that sleeps on the futex */
	ipc_msg_init(&k, IPC_MSG_KICK, sizeof(k), 0);
	rc = ipc_send(c->sock, &k, sizeof(k), -1, MSG_DONTWAIT);
	/* -EAGAIN: the socket is full of kicks moed has yet to read; it is
	 * woken already. A dead moed is reported when the caller waits. */
	if (rc == -EPIPE || rc == -ECONNRESET)
		client_fail(c, -MOE_EDEAD);
}

static void copy_routing(struct moe_client *c, uint32_t slot,
			 const struct moe_req_opts *o, uint32_t n_tokens)
{
	struct ipc_route *r = ipc_slot_route(&c->arena, slot);
	size_t n = (size_t)n_tokens * o->route_k;

	for (size_t i = 0; i < n; i++) {
		r[i].id = o->route_ids[i];
		r[i].w = o->route_w[i];
	}
}

/* Hand slot's request (input already in place) to moed. */
static int start(struct moe_client *c, uint32_t slot, uint32_t layer,
		 uint32_t n_tokens, const struct moe_req_opts *o, float *y,
		 uint64_t *id)
{
	struct req_slot *s = &c->slots[slot];
	struct ipc_desc d;

	memset(&d, 0, sizeof(d));
	d.id = ++c->next_id;
	d.gen = (uint32_t)d.id;
	d.layer = layer;
	d.n_tokens = n_tokens;
	d.slot = slot;
	if (o) {
		d.top_p = o->top_p;
		d.min_k = o->min_k;
		d.max_k = o->max_k;
	}
	if (o && o->route_k) {
		d.flags = IPC_DESC_ROUTED;
		d.route_k = o->route_k;
		copy_routing(c, slot, o, n_tokens);
	}
	/* Never full: requests in flight are bounded by the slots, and
	 * moe_connect checked the ring holds as many. */
	if (ipc_ring_push(&c->arena.sq, &d))
		return client_fail(c, -MOE_EPROTO);
	s->state = SLOT_BUSY;
	s->orphan = false;
	s->id = d.id;
	s->gen = d.gen;
	s->n_tokens = n_tokens;
	s->y = y;
	s->t_submit = client_now();
	c->n_pending++;
	kick(c);
	if (id)
		*id = d.id;
	return 0;
}

/* ---- completions ---- */

/* One completion off the ring: it must answer a request in flight. */
static void land(struct moe_client *c, const struct ipc_cqe *e, int64_t now)
{
	struct req_slot *s;
	int64_t us;

	if (e->slot >= c->n_slots) {
		client_fail(c, -MOE_EPROTO);
		return;
	}
	s = &c->slots[e->slot];
	if (s->state != SLOT_BUSY || e->id != s->id || e->gen != s->gen) {
		client_fail(c, -MOE_EPROTO);
		return;
	}
	if (s->orphan) {
		slot_free(c, e->slot);
		return;
	}
	s->cqe = *e;
	if (s->cqe.status > 0) /* not a status moed may send */
		s->cqe.status = -MOE_EPROTO;
	us = (now - s->t_submit) / 1000;
	s->wall_usec = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
	s->state = SLOT_DONE;
	c->done[c->n_done++] = e->slot;
}

/* Take every completion moed has published. After -MOE_EDEAD the ring is
 * still ours to read (what moed finished before it went is kept); after
 * -MOE_EPROTO nothing in it is believed. */
static void drain(struct moe_client *c)
{
	struct ipc_cqe e[DRAIN_BATCH];
	int64_t now = 0;
	int n;

	do {
		if (c->broken == -MOE_EPROTO)
			return;
		n = ipc_ring_pop_n(&c->arena.cq, e, DRAIN_BATCH);
		if (n < 0) {
			client_fail(c, -MOE_EPROTO);
			return;
		}
		if (n && !now)
			now = client_now();
		for (int i = 0; i < n && c->broken != -MOE_EPROTO; i++)
			land(c, &e[i], now);
	} while (n == DRAIN_BATCH);
}

/* Drain, and look at the socket when that is due. */
static void refresh(struct moe_client *c, int64_t now)
{
	drain(c);
	if (c->broken || now - c->last_check < CLIENT_CHECK_NS)
		return;
	client_check_peer(c);
	if (c->broken)
		drain(c); /* anything moed finished before it went */
}

static void done_remove(struct moe_client *c, uint32_t slot)
{
	uint32_t i = 0;

	while (i < c->n_done && c->done[i] != slot)
		i++;
	if (i == c->n_done)
		return;
	memmove(c->done + i, c->done + i + 1,
		(c->n_done - i - 1) * sizeof(*c->done));
	c->n_done--;
}

/* Hand a finished request to the caller and take its slot back. */
static void collect(struct moe_client *c, uint32_t slot,
		    struct moe_result *res)
{
	struct req_slot *s = &c->slots[slot];

	if (s->y && s->cqe.status == 0)
		memcpy(s->y, ipc_slot_out(&c->arena, slot),
		       rows_bytes(c, s->n_tokens));
	memset(res, 0, sizeof(*res));
	res->id = s->id;
	res->status = s->cqe.status;
	res->slot = slot;
	res->n_tokens = s->n_tokens;
	res->experts_hit = s->cqe.experts_hit;
	res->experts_missed = s->cqe.experts_missed;
	res->k_used = s->cqe.k_used;
	res->usec = s->cqe.usec;
	res->wall_usec = s->wall_usec;
	done_remove(c, slot);
	c->n_pending--;
	if (s->user)
		s->state = SLOT_HELD;
	else
		slot_free(c, slot);
}

/* The slot of a request the caller may still collect, or -1. */
static int find(const struct moe_client *c, uint64_t id)
{
	for (uint32_t i = 0; i < c->n_slots; i++) {
		const struct req_slot *s = &c->slots[i];

		if ((s->state == SLOT_BUSY || s->state == SLOT_DONE) &&
		    !s->orphan && s->id == id)
			return (int)i;
	}
	return -1;
}

/* A request nobody will collect: its slot returns when moed answers. */
static void abandon(struct moe_client *c, uint64_t id)
{
	int i = find(c, id);

	if (i < 0)
		return;
	c->slots[i].y = NULL;
	if (c->slots[i].state == SLOT_DONE) {
		struct moe_result r;

		collect(c, (uint32_t)i, &r);
		return;
	}
	c->slots[i].orphan = true;
	c->n_pending--;
}

/* Sleep on the completion bell for at most a slice of what is left. */
static int sleep_slice(struct moe_client *c, int64_t left)
{
	int rc = ipc_bell_wait(c->arena.cq_bell, ipc_ring_ready, &c->arena.cq,
			       IPC_BELL_SPINS,
			       left < CLIENT_SLICE_NS ? left : CLIENT_SLICE_NS);

	return rc == -ETIMEDOUT || rc >= 0 ? 0 : rc;
}

/* ---- the API ---- */

int moe_submit(moe_client *c, uint32_t layer, const float *x,
	       uint32_t n_tokens, float *y, const struct moe_req_opts *opts,
	       uint64_t *id)
{
	uint32_t slot;
	int rc;

	if (!c || !x)
		return -EINVAL;
	rc = check_req(c, layer, n_tokens, opts);
	if (rc)
		return rc;
	if (!c->n_free)
		drain(c); /* an abandoned request may have come back */
	if (!c->n_free)
		return -EBUSY;
	slot = c->free_stack[--c->n_free];
	c->slots[slot].user = false;
	memcpy(ipc_slot_in(&c->arena, slot), x, rows_bytes(c, n_tokens));
	return start(c, slot, layer, n_tokens, opts, y, id);
}

int moe_poll(moe_client *c, struct moe_result *res, unsigned max)
{
	unsigned n = 0;

	if (!c || !res || !max)
		return -EINVAL;
	refresh(c, client_now());
	while (n < max && c->n_done)
		collect(c, c->done[0], &res[n++]);
	return n ? (int)n : c->broken;
}

int moe_wait(moe_client *c, uint64_t id, struct moe_result *res,
	     int timeout_ms)
{
	int64_t deadline, now;
	int target = -1, rc;

	if (!c || !res)
		return -EINVAL;
	if (id != MOE_WAIT_ANY && (target = find(c, id)) < 0)
		return -ENOENT;
	if (id == MOE_WAIT_ANY && !c->n_pending)
		return -ENOENT;
	now = client_now();
	deadline = now + (int64_t)(timeout_ms < 0 ? (int64_t)c->timeout_ms
						  : timeout_ms) * 1000000;
	for (;;) {
		int ready;

		refresh(c, now);
		ready = target >= 0 ? (c->slots[target].state == SLOT_DONE
					       ? target : -1)
				    : (c->n_done ? (int)c->done[0] : -1);
		if (ready >= 0) {
			collect(c, (uint32_t)ready, res);
			return 0;
		}
		if (c->broken)
			return c->broken;
		if (now >= deadline)
			return -ETIMEDOUT;
		rc = sleep_slice(c, deadline - now);
		if (rc)
			return rc;
		now = client_now();
	}
}

int moe_forward(moe_client *c, uint32_t layer, const float *x,
		uint32_t n_tokens, float *y, const struct moe_req_opts *opts,
		struct moe_result *res)
{
	struct moe_result r;
	uint64_t id;
	int rc;

	if (!y)
		return -EINVAL;
	rc = moe_submit(c, layer, x, n_tokens, y, opts, &id);
	if (rc)
		return rc;
	rc = moe_wait(c, id, &r, -1);
	if (rc) {
		abandon(c, id); /* y must never be written after we return */
		return rc;
	}
	if (res)
		*res = r;
	return r.status;
}

int moe_slot_acquire(moe_client *c, struct moe_slot *slot)
{
	uint32_t i;

	if (!c || !slot)
		return -EINVAL;
	if (c->broken)
		return c->broken;
	if (!c->n_free)
		drain(c);
	if (!c->n_free)
		return -EBUSY;
	i = c->free_stack[--c->n_free];
	c->slots[i].state = SLOT_HELD;
	c->slots[i].user = true;
	memset(slot, 0, sizeof(*slot));
	slot->in = ipc_slot_in(&c->arena, i);
	slot->out = ipc_slot_out(&c->arena, i);
	slot->index = i;
	slot->max_tokens = c->info.max_tokens;
	slot->n_embd = c->info.n_embd;
	return 0;
}

int moe_submit_slot(moe_client *c, uint32_t slot, uint32_t layer,
		    uint32_t n_tokens, const struct moe_req_opts *opts,
		    uint64_t *id)
{
	int rc;

	if (!c || slot >= c->n_slots || !c->slots[slot].user)
		return -EINVAL;
	if (c->slots[slot].state != SLOT_HELD)
		return -EBUSY;
	rc = check_req(c, layer, n_tokens, opts);
	if (rc)
		return rc;
	return start(c, slot, layer, n_tokens, opts, NULL, id);
}

int moe_slot_release(moe_client *c, uint32_t slot)
{
	if (!c || slot >= c->n_slots || !c->slots[slot].user)
		return -EINVAL;
	if (c->slots[slot].state != SLOT_HELD)
		return -EBUSY;
	slot_free(c, slot);
	return 0;
}
