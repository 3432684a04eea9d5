/* libmoeclient, the connection: find moed's socket, say hello, check what
 * moed answers and the arena it hands over against each other, keep the
 * model's facts, notice a hang-up, and let go. Runs once per connection;
 * the request path is in request.c. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "client_int.h"
#include "sock.h"

int64_t client_now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (int64_t)t.tv_sec * 1000000000ll + t.tv_nsec;
}

int client_fail(struct moe_client *c, int err)
{
	if (!c->broken)
		c->broken = err;
	return c->broken;
}

static const char *socket_path(const char *path)
{
	const char *env = getenv(MOE_SOCKET_ENV);

	if (path)
		return path;
	return env && *env ? env : MOE_DEFAULT_SOCKET;
}

void client_check_peer(struct moe_client *c)
{
	char buf[IPC_MSG_MAX];
	ssize_t n;
	int type;

	c->last_check = client_now();
	for (;;) {
		n = ipc_recv(c->sock, buf, sizeof(buf), NULL, MSG_DONTWAIT);
		if (n == -EAGAIN)
			return;
		if (n == 0 || n == -ECONNRESET || n == -EPIPE ||
		    n == -ENOTCONN) {
			client_fail(c, -MOE_EDEAD);
			return;
		}
		if (n < 0) {
			client_fail(c, -MOE_EPROTO);
			return;
		}
		type = ipc_msg_check(buf, (size_t)n, sizeof(struct ipc_msg_hdr));
		/* A BYE ends the session as a hang-up does; anything else a
		 * later version may send is not ours to act on. */
		if (type == IPC_MSG_BYE) {
			client_fail(c, -MOE_EDEAD);
			return;
		}
	}
}

static void fill_hello(struct ipc_hello *h, const struct moe_connect_opts *o)
{
	const char *name = o->name ? o->name : program_invocation_short_name;

	memset(h, 0, sizeof(*h));
	ipc_msg_init(&h->h, IPC_MSG_HELLO, sizeof(*h), 0);
	h->ver_min = IPC_PROTO_VERSION_MIN;
	h->ver_max = IPC_PROTO_VERSION_MAX;
	h->max_tokens = o->max_tokens;
	h->max_inflight = o->max_inflight;
	h->max_route_k = o->max_route_k;
	h->pid = (int32_t)getpid();
	if (name)
		strncpy(h->name, name, sizeof(h->name) - 1);
}

/* A receive or send that failed during the handshake, as the caller
 * should see it. */
static int handshake_err(ssize_t n)
{
	if (n == 0 || n == -ECONNRESET || n == -EPIPE)
		return -MOE_EDEAD;
	if (n == -EAGAIN)
		return -ETIMEDOUT; /* SO_RCVTIMEO / SO_SNDTIMEO ran out */
	return n == -EMSGSIZE ? -MOE_EPROTO : (int)n;
}

/* Say hello; on success *fd is the arena's memfd. A refusal comes back
 * as its status. */
static int hello(struct moe_client *c, const struct moe_connect_opts *o,
		 struct ipc_hello_reply *r, int *fd)
{
	struct ipc_hello h;
	ssize_t n;
	int rc;

	fill_hello(&h, o);
	rc = ipc_send(c->sock, &h, sizeof(h), -1, 0);
	/* A peer moed refuses at once (allow lists, too many connections)
	 * may be closed before the hello goes: its refusal is still queued
	 * for us to read. */
	if (rc && rc != -EPIPE && rc != -ECONNRESET)
		return handshake_err(rc);
	memset(r, 0, sizeof(*r));
	n = ipc_recv(c->sock, r, sizeof(*r), fd, 0);
	if (n <= 0)
		return handshake_err(n);
	rc = ipc_msg_check(r, (size_t)n, sizeof(struct ipc_msg_hdr));
	if (rc != IPC_MSG_HELLO_REPLY)
		rc = -MOE_EPROTO;
	else if (r->h.status > 0)
		rc = -MOE_EPROTO;
	else if (r->h.status < 0)
		rc = r->h.status; /* refused: EPERM, EUSERS, EVERSION, ... */
	else if ((size_t)n != sizeof(*r) || *fd < 0)
		rc = -MOE_EPROTO;
	else
		rc = 0;
	if (rc && *fd >= 0) {
		close(*fd);
		*fd = -1;
	}
	return rc;
}

/* What moed said must be what it asked for, and agree with the arena's
 * own header: the library trusts neither alone. */
static bool reply_ok(const struct ipc_hello_reply *r,
		     const struct moe_connect_opts *o)
{
	return r->version >= IPC_PROTO_VERSION_MIN &&
	       r->version <= IPC_PROTO_VERSION_MAX && r->n_layer >= 1 &&
	       r->n_embd >= 1 && r->slot_count >= 1 && r->max_tokens >= 1 &&
	       r->max_inflight >= 1 &&
	       (!o->max_tokens || r->max_tokens <= o->max_tokens) &&
	       (!o->max_inflight || r->slot_count <= o->max_inflight) &&
	       r->max_route_k <= o->max_route_k;
}

static bool arena_matches(const struct ipc_arena *a,
			  const struct ipc_hello_reply *r)
{
	const struct ipc_arena_hdr *l = &a->lay;

	/* Rings at least as long as the slots are many: in-flight requests
	 * are bounded by the slots, so neither ring can ever be full. */
	return a->size == r->arena_size && l->n_embd == r->n_embd &&
	       l->max_tokens == r->max_tokens &&
	       l->slot_count == r->slot_count &&
	       l->slot_size == r->slot_size &&
	       l->max_route_k == r->max_route_k &&
	       l->sq_entries >= l->slot_count &&
	       l->cq_entries >= l->slot_count;
}

static void keep_facts(struct moe_client *c, const struct ipc_hello_reply *r)
{
	struct moe_model_info *i = &c->info;

	memset(i, 0, sizeof(*i));
	memcpy(i->arch, r->arch, sizeof(i->arch) - 1);
	i->n_layer = r->n_layer;
	i->n_embd = r->n_embd;
	i->n_expert = r->n_expert;
	i->n_used = r->n_used;
	i->max_k = r->max_k;
	i->first_moe_layer = r->first_moe_layer;
	i->last_moe_layer = r->last_moe_layer;
	i->n_moe_layers = r->n_moe_layers;
	i->max_tokens = r->max_tokens;
	i->max_inflight = r->slot_count;
	i->max_route_k = r->max_route_k;
	i->proto_version = r->version;
	memcpy(c->moe_layers, r->moe_layers, sizeof(c->moe_layers));
}

/* Map the arena moed passed and take on the facts of the reply. */
static int attach(struct moe_client *c, const struct ipc_hello_reply *r,
		  const struct moe_connect_opts *o, int fd)
{
	int rc;

	if (!reply_ok(r, o)) {
		close(fd);
		return -MOE_EPROTO;
	}
	rc = ipc_arena_attach(&c->arena, fd);
	if (rc) {
		close(fd);
		return rc;
	}
	if (!arena_matches(&c->arena, r))
		return -MOE_EPROTO;
	keep_facts(c, r);
	return client_slots_init(c, r->slot_count);
}

static int dial(struct moe_client *c, const char *path,
		const struct moe_connect_opts *o)
{
	struct ipc_hello_reply r;
	int fd = -1, rc;

	/* Bounds the connect and the handshake; afterwards the library only
	 * ever sends and receives with MSG_DONTWAIT. */
	rc = ipc_connect(socket_path(path), c->timeout_ms);
	if (rc < 0)
		return rc;
	c->sock = rc;
	rc = hello(c, o, &r, &fd);
	if (!rc)
		rc = attach(c, &r, o, fd);
	return rc;
}

int moe_connect(moe_client **out, const char *path,
		const struct moe_connect_opts *opts)
{
	struct moe_connect_opts o = { 0 };
	struct moe_client *c;
	int rc;

	if (opts)
		o = *opts;
	if (!out || !client_all_zero(o.reserved, sizeof(o.reserved)))
		return -EINVAL;
	c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->sock = -1;
	c->arena.fd = -1;
	c->pid = getpid();
	c->timeout_ms = o.timeout_ms ? o.timeout_ms : MOE_DEFAULT_TIMEOUT_MS;
	rc = dial(c, path, &o);
	if (rc)
		goto err;
	c->last_check = client_now();
	*out = c;
	return 0;
err:
	c->broken = rc; /* no BYE: there is no session to end */
	moe_close(c);
	return rc;
}

void moe_close(moe_client *c)
{
	struct ipc_msg_hdr bye;

	if (!c)
		return;
	/* A forked child shares the socket: its BYE would end the parent's
	 * session. Only the process that connected says goodbye. */
	if (c->sock >= 0 && !c->broken && c->pid == getpid()) {
		ipc_msg_init(&bye, IPC_MSG_BYE, sizeof(bye), 0);
		ipc_send(c->sock, &bye, sizeof(bye), -1, MSG_DONTWAIT);
	}
	if (c->sock >= 0)
		close(c->sock);
	ipc_arena_close(&c->arena);
	client_slots_free(c);
	free(c);
}

int moe_model_info(const moe_client *c, struct moe_model_info *info)
{
	if (!c || !info)
		return -EINVAL;
	*info = c->info;
	return 0;
}

int moe_layer_is_moe(const moe_client *c, uint32_t layer)
{
	if (!c)
		return -EINVAL;
	if (layer >= c->info.n_layer || c->info.n_moe_layers == 0)
		return 0;
	/* Past the bitmap moed says only where MoE layers start and end. */
	if (layer >= IPC_MAX_LAYERS)
		return layer >= c->info.first_moe_layer &&
		       layer <= c->info.last_moe_layer;
	return (c->moe_layers[layer / 8] >> (layer % 8)) & 1;
}
