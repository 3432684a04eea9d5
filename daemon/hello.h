/* The handshake's decision, apart from sockets and memory: whether a
 * client's hello message is accepted, and the limits it is granted. It
 * reads only its arguments, so a fuzzer can drive it with any bytes;
 * server.c sends the answer and builds the arena from the grant. */
#ifndef MOE_HELLO_H
#define MOE_HELLO_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "config.h"

struct moe_hello_grant {
	uint16_t version;      /* the protocol version chosen */
	uint32_t max_tokens;   /* 1..cfg->max_tokens */
	uint32_t max_inflight; /* 1..cfg->max_inflight: slots and ring size */
	uint32_t max_route_k;  /* 0..MOE_MAX_K */
	char name[32];         /* the client's name for logs: printable
				* ASCII only, "?" when it gave none */
};

/* Whether a peer may talk to moed at all (hello or question), asked
 * once per connection at accept: its uid on allow-uid, or its primary
 * gid (c->gid) or one of its n_groups supplementary groups on
 * allow-gid; with neither list set, everyone the socket's mode lets in.
 * Returns 0, or -EPERM with why naming the uid and gid. */
int moe_peer_check(const struct moe_config *cfg, const struct ucred *c,
		   const gid_t *groups, uint32_t n_groups, char *why, size_t len);

/* Decide on the n bytes of buf, received from an admitted peer (see
 * moe_peer_check) while n_clients clients are connected, under the
 * settings cfg. g->name is filled in every case (for the log line); the
 * rest only on success. Returns 0; or the status to refuse with, with
 * why naming the field and value: -MOE_EPROTO (not a hello: size, magic
 * or type), -MOE_EVERSION (no common protocol version), -EUSERS
 * (max-clients reached). */
int moe_hello_check(const void *buf, size_t n, uint32_t n_clients,
		    const struct moe_config *cfg, struct moe_hello_grant *g,
		    char *why, size_t len);

#endif
