/* The handshake's decision (see hello.h). Everything in the hello is the
 * client's to choose, so it is read from a private copy and each field is
 * checked or clamped; the name is kept printable since it goes into log
 * lines, where a newline would forge a line of moed's own. Who the peer
 * is was settled before it said anything (moe_peer_check). */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <moe/moeclient.h>

#include "hello.h"
#include "model.h"
#include "proto.h"

static bool id_in(uint32_t id, const uint32_t *ids, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++)
		if (ids[i] == id)
			return true;
	return false;
}

static bool any_in(const gid_t *groups, uint32_t n, const uint32_t *ids,
		   uint32_t n_ids)
{
	for (uint32_t i = 0; i < n; i++)
		if (id_in((uint32_t)groups[i], ids, n_ids))
			return true;
	return false;
}

int moe_peer_check(const struct moe_config *cfg, const struct ucred *c,
		   const gid_t *groups, uint32_t n_groups, char *why, size_t len)
{
	if (!cfg->n_allow_uid && !cfg->n_allow_gid)
		return 0; /* the socket's mode decides */
	if (id_in(c->uid, cfg->allow_uid, cfg->n_allow_uid) ||
	    id_in(c->gid, cfg->allow_gid, cfg->n_allow_gid) ||
	    any_in(groups, n_groups, cfg->allow_gid, cfg->n_allow_gid))
		return 0;
	return snprintf(why, len,
			"uid %u / gid %u (and %u supplementary groups) not in allow-uid or allow-gid",
			c->uid, c->gid, n_groups), -EPERM;
}

static uint32_t clamp_limit(uint32_t asked, uint32_t cap)
{
	return asked && asked < cap ? asked : cap;
}

/* The name up to its first NUL, bytes outside printable ASCII as '?'. */
static void take_name(char *dst, size_t size, const char *src, size_t n)
{
	size_t i;

	for (i = 0; i < n && i + 1 < size && src[i]; i++)
		dst[i] = src[i] >= 0x20 && src[i] < 0x7f ? src[i] : '?';
	if (i == 0)
		dst[i++] = '?';
	dst[i] = 0;
}

int moe_hello_check(const void *buf, size_t n, uint32_t n_clients,
		    const struct moe_config *cfg,
		    struct moe_hello_grant *g, char *why, size_t len)
{
	struct ipc_hello h;
	int v;

	memset(g, 0, sizeof(*g));
	take_name(g->name, sizeof(g->name), "", 0);
	if (ipc_msg_check(buf, n, sizeof(h)) != IPC_MSG_HELLO || n != sizeof(h))
		return snprintf(why, len, "malformed hello (%zu bytes, expected %zu)",
				n, sizeof(h)), -MOE_EPROTO;
	memcpy(&h, buf, sizeof(h));
	take_name(g->name, sizeof(g->name), h.name, sizeof(h.name));
	v = ipc_version_choose(h.ver_min, h.ver_max);
	if (v < 0)
		return snprintf(why, len, "protocol versions %u..%u, moed speaks %u..%u",
				h.ver_min, h.ver_max, IPC_PROTO_VERSION_MIN,
				IPC_PROTO_VERSION_MAX), v;
	if (n_clients >= cfg->max_clients)
		return snprintf(why, len, "%u clients already (max-clients %u)",
				n_clients, cfg->max_clients), -EUSERS;
	g->version = (uint16_t)v;
	g->max_tokens = clamp_limit(h.max_tokens, cfg->max_tokens);
	g->max_inflight = clamp_limit(h.max_inflight, cfg->max_inflight);
	g->max_route_k = h.max_route_k < MOE_MAX_K ? h.max_route_k : MOE_MAX_K;
	return 0;
}
