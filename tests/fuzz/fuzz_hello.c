/* libFuzzer target for the handshake: moe_peer_check on credentials and
 * moe_hello_check on any bytes, under settings also taken from the
 * input, checking what moed relies on before it builds an arena: a
 * refusal names why, a peer is let in exactly when a list names it (by
 * its primary or a supplementary group alike), an accepted hello is a
 * real hello whose grant lies within the settings and the
 * client's own asks, and the name that reaches the log is printable.
 *
 * Input: a 32-byte prefix (struct prefix: settings, peer, clients
 * connected), then the message as it came off the socket. */
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include <moe/moeclient.h>

#include "fuzz.h"
#include "hello.h"
#include "model.h"
#include "proto.h"

struct prefix {
	uint32_t max_clients, max_tokens, max_inflight; /* reduced to range */
	uint32_t n_clients;
	uint32_t uid, gid;
	uint32_t allow;   /* low byte: uids allowed (0..3), next: gids */
	uint32_t id_seed; /* allowed ids are id_seed + i, so some match */
};

/* Settings as moe_config_set would leave them (each in its range). */
static void settings(struct moe_config *cfg, const struct prefix *p)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->max_clients = 1 + p->max_clients % 4096;
	cfg->max_tokens = 1 + p->max_tokens % 65536;
	cfg->max_inflight = 1 + p->max_inflight % 1024;
	cfg->n_allow_uid = (p->allow & 0xff) % 4;
	cfg->n_allow_gid = ((p->allow >> 8) & 0xff) % 4;
	for (uint32_t i = 0; i < cfg->n_allow_uid; i++)
		cfg->allow_uid[i] = p->id_seed + i;
	for (uint32_t i = 0; i < cfg->n_allow_gid; i++)
		cfg->allow_gid[i] = p->id_seed + 2 * i;
}

static bool listed(uint32_t id, const uint32_t *ids, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++)
		if (ids[i] == id)
			return true;
	return false;
}

static void check_name(const char *name)
{
	size_t n = strnlen(name, 32);

	CHECK(n >= 1 && n < 32);
	for (size_t i = 0; i < n; i++)
		CHECK(name[i] >= 0x20 && name[i] < 0x7f);
}

/* The peer let in exactly when a list names its uid or gid (or there
 * are no lists); its gid as a supplementary group counts the same. */
static void check_peer(const struct moe_config *cfg, const struct ucred *cr)
{
	bool in = (!cfg->n_allow_uid && !cfg->n_allow_gid) ||
		  listed(cr->uid, cfg->allow_uid, cfg->n_allow_uid) ||
		  listed(cr->gid, cfg->allow_gid, cfg->n_allow_gid);
	struct ucred other = *cr;
	gid_t g = (gid_t)cr->gid;
	char why[128] = "";
	int rc = moe_peer_check(cfg, cr, NULL, 0, why, sizeof(why));

	CHECK(in ? rc == 0 : rc == -EPERM && why[0]);
	other.gid = cr->gid + 1;
	if (!listed(other.gid, cfg->allow_gid, cfg->n_allow_gid))
		CHECK((moe_peer_check(cfg, &other, &g, 1, why, sizeof(why)) == 0) == in);
}

/* Accepted: the message is a hello and the grant is within bounds. */
static void check_grant(const uint8_t *msg, size_t n,
			const struct moe_config *cfg, uint32_t n_clients, const struct moe_hello_grant *g)
{
	struct ipc_hello h;

	CHECK(n == sizeof(h));
	memcpy(&h, msg, sizeof(h));
	CHECK(h.h.magic == IPC_PROTO_MAGIC && h.h.type == IPC_MSG_HELLO &&
	      h.h.size == sizeof(h));
	CHECK(n_clients < cfg->max_clients);
	CHECK(g->version >= IPC_PROTO_VERSION_MIN &&
	      g->version <= IPC_PROTO_VERSION_MAX &&
	      g->version >= h.ver_min && g->version <= h.ver_max);
	CHECK(g->max_tokens >= 1 && g->max_tokens <= cfg->max_tokens);
	CHECK(!h.max_tokens || g->max_tokens <= h.max_tokens);
	CHECK(g->max_inflight >= 1 && g->max_inflight <= cfg->max_inflight);
	CHECK(!h.max_inflight || g->max_inflight <= h.max_inflight);
	CHECK(g->max_route_k <= h.max_route_k && g->max_route_k <= MOE_MAX_K);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct moe_hello_grant g;
	struct moe_config cfg;
	struct prefix p;
	struct ucred cr;
	char why[128];
	int rc;

	if (size < sizeof(p))
		return 0;
	memcpy(&p, data, sizeof(p));
	settings(&cfg, &p);
	cr = (struct ucred){ .pid = 1, .uid = p.uid, .gid = p.gid };
	why[0] = 0;
	check_peer(&cfg, &cr);
	rc = moe_hello_check(data + sizeof(p), size - sizeof(p), p.n_clients,
			     &cfg, &g, why, sizeof(why));
	check_name(g.name);
	if (rc) {
		CHECK(rc == -MOE_EPROTO || rc == -MOE_EVERSION || rc == -EUSERS);
		CHECK(why[0] && strnlen(why, sizeof(why)) < sizeof(why));
		return 0;
	}
	check_grant(data + sizeof(p), size - sizeof(p), &cfg, p.n_clients, &g);
	return 0;
}
