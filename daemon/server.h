/* moed's serving loop: the control socket (handshakes, moectl's
 * questions, hang-ups), one dispatcher that drains every client's
 * submission ring, batches requests for the same layer so one pass over
 * each expert serves them all, and answers on the completion rings.
 * Signals and the systemd watchdog arrive as file descriptors in the
 * same epoll set, so one thread owns every piece of state here. */
#ifndef MOE_SERVER_H
#define MOE_SERVER_H

#include <stdint.h>

#include "config.h"
#include "diag.h"
#include "engine.h"
#include "model.h"

struct moe_store;
struct moe_plan;

struct moe_server_deps {
	const char *config_path;  /* re-read on SIGHUP; NULL: none */
	struct moe_config *cfg;   /* the settings in force */
	struct moe_model *m;
	struct moe_engine *e;
	struct moe_store *store;  /* NULL: experts come from the mapped file */
	struct moe_plan *plan;    /* NULL: no rebalancing */
	int argc;                 /* moed's command line: the settings it */
	char *const *argv;        /* gives override the file on SIGHUP too */
};

struct moe_server;

/* Catch SIGTERM, SIGINT and SIGHUP into a pipe the server reads, and
 * ignore SIGPIPE. Call it early in main. 0 or -errno. */
int moe_server_catch_signals(void);

/* Listen on cfg->socket (signals caught as moe_server_block_signals()
 * says). 0 or -errno with err set. */
int moe_server_new(struct moe_server **out, const struct moe_server_deps *d,
		   struct moe_msg *err);

/* Serve until SIGTERM or SIGINT: then stop accepting, finish what the
 * clients have submitted, and return 0. */
int moe_server_run(struct moe_server *s);

void moe_server_free(struct moe_server *s);

#endif
