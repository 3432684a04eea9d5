/* moed's settings: one table of options that both the command line
 * (--name value, --name=value) and the config file (name = value) set, so
 * every option exists in both and is checked the same way. Errors name
 * the file, line and key (or the argument). */
#ifndef MOE_CONFIG_H
#define MOE_CONFIG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "diag.h"

#define MOE_MAX_IDS 32

struct moe_config {
	char model[4096];
	char socket[108];      /* sun_path's size */
	uint64_t cache_mb;
	uint32_t threads;
	uint32_t max_clients;
	uint32_t max_tokens;   /* per request */
	uint32_t max_inflight; /* requests per client */
	uint32_t hello_timeout_ms; /* a connection's time to say hello */
	uint32_t allow_uid[MOE_MAX_IDS], n_allow_uid;
	uint32_t allow_gid[MOE_MAX_IDS], n_allow_gid;
	char policy[16];       /* lru | lfu | predict */
	char io[16];           /* auto | uring | pread */
	bool buffered, sqpoll, prefetch;
	uint32_t batch_wait_us; /* gather window for a round, see server.c */
	uint32_t queue_depth;
	uint32_t chunk_kb;
	char topology[256];    /* hwloc synthetic description, or "" */
	uint32_t reserve_cores;
	char log_level[16];    /* err | warning | notice | info | debug */
};

/* Defaults for every option. */
void moe_config_defaults(struct moe_config *c);

/* Apply one setting by name (without the leading dashes). where names
 * its origin for messages ("moed.conf:12" or "command line"). 0, or
 * -EINVAL with err naming where, key and value; -ENOENT for an unknown
 * key. */
int moe_config_set(struct moe_config *c, const char *key, const char *val,
		   const char *where, struct moe_msg *err);

/* Read a config file: "key = value" lines, '#' comments, blank lines. */
int moe_config_load(struct moe_config *c, const char *path,
		    struct moe_msg *err);

/* Whether an option may change while moed runs (SIGHUP). */
bool moe_config_live(const char *key);

/* Whether key takes no value on the command line (a boolean flag). */
bool moe_config_is_flag(const char *key);

/* Write every option with its current value, as a config file would. */
void moe_config_dump(const struct moe_config *c, FILE *f);

/* One line of help per option, for --help. */
void moe_config_help(FILE *f);

#endif
