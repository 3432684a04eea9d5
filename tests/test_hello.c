/* moe_hello_check, the handshake's decision: each refusal with its status
 * and a reason naming the value, the limits granted, and the client's
 * name made safe for a log line; moe_peer_check, who may connect at all,
 * by uid, primary gid or a supplementary group. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include <moe/moeclient.h>

#include "hello.h"
#include "model.h"
#include "proto.h"
#include "testutil.h"

static struct moe_config cfg;
static const struct ucred me = { .pid = 42, .uid = 1000, .gid = 100 };
static char why[128];

static int setup(void **s)
{
	moe_config_defaults(&cfg);
	return 0;
}

static struct ipc_hello hello(uint32_t tokens, uint32_t inflight,
			      uint32_t route_k)
{
	struct ipc_hello h;

	thello_init(&h, tokens, inflight, route_k, "engine");
	return h;
}

static int check(const struct ipc_hello *h, size_t n, uint32_t clients,
		 struct moe_hello_grant *g)
{
	why[0] = 0;
	return moe_hello_check(h, n, clients, &cfg, g, why, sizeof(why));
}

static void granted(void **s)
{
	struct ipc_hello h = hello(64, 4, 8);
	struct moe_hello_grant g;

	assert_int_equal(check(&h, sizeof(h), 0, &g), 0);
	assert_int_equal(g.version, IPC_PROTO_VERSION_MAX);
	assert_int_equal(g.max_tokens, 64);
	assert_int_equal(g.max_inflight, 4);
	assert_int_equal(g.max_route_k, 8);
	assert_string_equal(g.name, "engine");
	/* Zero asks for moed's limits; more than them gets them. */
	h = hello(0, 0, 0);
	assert_int_equal(check(&h, sizeof(h), 0, &g), 0);
	assert_int_equal(g.max_tokens, cfg.max_tokens);
	assert_int_equal(g.max_inflight, cfg.max_inflight);
	assert_int_equal(g.max_route_k, 0);
	h = hello(UINT32_MAX, UINT32_MAX, UINT32_MAX);
	assert_int_equal(check(&h, sizeof(h), 0, &g), 0);
	assert_int_equal(g.max_tokens, cfg.max_tokens);
	assert_int_equal(g.max_inflight, cfg.max_inflight);
	assert_int_equal(g.max_route_k, MOE_MAX_K);
}

/* Not a hello of the right size: nothing read past what came, and the
 * name stays "?" (once, what lay in the receive buffer was logged). */
static void malformed(void **s)
{
	struct ipc_hello h = hello(8, 1, 0);
	struct moe_hello_grant g;

	assert_int_equal(check(&h, offsetof(struct ipc_hello, name), 0, &g),
			 -MOE_EPROTO);
	assert_string_equal(g.name, "?");
	assert_non_null(strstr(why, "40 bytes, expected 128"));
	h.h.size = sizeof(h) + 1;
	assert_int_equal(check(&h, sizeof(h), 0, &g), -MOE_EPROTO);
	h = hello(8, 1, 0);
	h.h.type = IPC_MSG_STATUS;
	assert_int_equal(check(&h, sizeof(h), 0, &g), -MOE_EPROTO);
	h = hello(8, 1, 0);
	h.h.magic ^= 1;
	assert_int_equal(check(&h, sizeof(h), 0, &g), -MOE_EPROTO);
}

static void refusals(void **s)
{
	struct ipc_hello h = hello(8, 1, 0);
	struct moe_hello_grant g;

	h.ver_min = IPC_PROTO_VERSION_MAX + 1;
	h.ver_max = IPC_PROTO_VERSION_MAX + 3;
	assert_int_equal(check(&h, sizeof(h), 0, &g), -MOE_EVERSION);
	assert_non_null(strstr(why, "protocol versions 2..4"));
	h = hello(8, 1, 0);
	h.ver_min = 1;
	h.ver_max = 0;
	assert_int_equal(check(&h, sizeof(h), 0, &g), -MOE_EVERSION);
	h = hello(8, 1, 0);
	assert_int_equal(check(&h, sizeof(h), cfg.max_clients, &g), -EUSERS);
	assert_string_equal(why, "64 clients already (max-clients 64)");
}

/* The allow lists: a uid, the primary gid, or any supplementary group
 * (what `usermod -aG moed USER` gives) lets a peer in. */
static void peer_allowed(void **s)
{
	const gid_t groups[] = { 27, 44, 990 };

	assert_int_equal(moe_peer_check(&cfg, &me, NULL, 0, why, sizeof(why)), 0);
	cfg.allow_uid[0] = 0;
	cfg.n_allow_uid = 1;
	assert_int_equal(moe_peer_check(&cfg, &me, groups, 3, why, sizeof(why)),
			 -EPERM);
	assert_string_equal(why, "uid 1000 / gid 100 (and 3 supplementary groups) not in allow-uid or allow-gid");
	cfg.allow_uid[0] = 1000;
	assert_int_equal(moe_peer_check(&cfg, &me, groups, 3, why, sizeof(why)), 0);
	cfg.n_allow_uid = 0;
	cfg.allow_gid[0] = 100; /* the primary group */
	cfg.n_allow_gid = 1;
	assert_int_equal(moe_peer_check(&cfg, &me, NULL, 0, why, sizeof(why)), 0);
	cfg.allow_gid[0] = 7;
	cfg.allow_gid[1] = 990; /* the last supplementary group */
	cfg.n_allow_gid = 2;
	assert_int_equal(moe_peer_check(&cfg, &me, groups, 3, why, sizeof(why)), 0);
	assert_int_equal(moe_peer_check(&cfg, &me, groups, 2, why, sizeof(why)),
			 -EPERM);
	cfg.n_allow_uid = cfg.n_allow_gid = 0;
}

/* A name is the client's to choose: in the log it cannot start a line of
 * its own or send terminal escapes. */
static void name_made_safe(void **s)
{
	struct ipc_hello h = hello(8, 1, 0);
	struct moe_hello_grant g;

	memcpy(h.name, "a\nmoed[1] err: x\033[2J", 21);
	assert_int_equal(check(&h, sizeof(h), 0, &g), 0);
	assert_string_equal(g.name, "a?moed[1] err: x?[2J");
	memset(h.name, 'z', sizeof(h.name)); /* no NUL at all */
	assert_int_equal(check(&h, sizeof(h), 0, &g), 0);
	assert_int_equal(strlen(g.name), sizeof(g.name) - 1);
	h.name[0] = 0;
	assert_int_equal(check(&h, sizeof(h), 0, &g), 0);
	assert_string_equal(g.name, "?");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(granted),
		cmocka_unit_test(malformed),
		cmocka_unit_test(refusals),
		cmocka_unit_test(peer_allowed),
		cmocka_unit_test(name_made_safe),
	};

	return cmocka_run_group_tests(tests, setup, NULL);
}
