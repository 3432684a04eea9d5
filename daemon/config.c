/* moed's option table and its two readers (command line, config file).
 * Each entry knows its type, bounds, help and whether SIGHUP may change
 * it; nothing else in moed parses an option. */
#include <ctype.h>
#include <errno.h>
#include <grp.h>
#include <inttypes.h>
#include <pwd.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

enum otype { O_STR, O_U32, O_U64, O_BOOL, O_ENUM, O_UIDS, O_GIDS };

struct opt {
	const char *name;
	enum otype type;
	size_t off;        /* field in struct moe_config */
	size_t size;       /* O_STR, O_ENUM: buffer size */
	uint64_t min, max; /* O_U32, O_U64 */
	const char *choices; /* O_ENUM: "a|b|c" */
	bool live;
	const char *help;
};

#define F(field) offsetof(struct moe_config, field), sizeof(((struct moe_config *)0)->field)

static const struct opt opts[] = {
	{ "model", O_STR, F(model), 0, 0, NULL, false, "GGUF model file to serve" },
	{ "socket", O_STR, F(socket), 0, 0, NULL, false, "control socket path (/run/moed/moed.sock)" },
	{ "cache-mb", O_U64, F(cache_mb), 16, 1ull << 40, NULL, true, "budget for resident experts, routers and shared experts included, MiB; live up to its value at start (4096)" },
	{ "threads", O_U32, F(threads), 0, 4096, NULL, false, "worker threads, 0 for one per core (0)" },
	{ "max-clients", O_U32, F(max_clients), 1, 4096, NULL, false, "clients served at once (64)" },
	{ "max-tokens", O_U32, F(max_tokens), 1, 65536, NULL, false, "tokens per request, at most (256)" },
	{ "max-inflight", O_U32, F(max_inflight), 1, 1024, NULL, false, "requests in flight per client, at most (8)" },
	{ "hello-timeout-ms", O_U32, F(hello_timeout_ms), 100, 600000, NULL, true, "a connection not past its hello in this long is closed (5000)" },
	{ "allow-uid", O_UIDS, F(allow_uid), 0, 0, NULL, false, "users that may connect, comma-separated (any)" },
	{ "allow-gid", O_GIDS, F(allow_gid), 0, 0, NULL, false, "groups that may connect, comma-separated (any)" },
	{ "policy", O_ENUM, F(policy), 0, 0, "lru|lfu|predict", true, "cache eviction policy (predict)" },
	{ "io", O_ENUM, F(io), 0, 0, "auto|uring|pread|mmap", false, "expert reads: io_uring, a pread pool, or mmap and the page cache (auto)" },
	{ "buffered", O_BOOL, F(buffered), 0, 0, NULL, false, "read through the page cache, not O_DIRECT (no)" },
	{ "sqpoll", O_BOOL, F(sqpoll), 0, 0, NULL, false, "io_uring submission polling thread (no)" },
	{ "prefetch", O_BOOL, F(prefetch), 0, 0, NULL, true, "prefetch the next layer's likely experts (yes)" },
	{ "batch-wait-us", O_U32, F(batch_wait_us), 0, 10000, NULL, true, "wait this long for a client expected at the same layer, to batch with it (50)" },
	{ "queue-depth", O_U32, F(queue_depth), 1, 4096, NULL, false, "reads in flight (32)" },
	{ "chunk-kb", O_U32, F(chunk_kb), 4, 65536, NULL, false, "largest single read, KiB (1024)" },
	{ "topology", O_STR, F(topology), 0, 0, NULL, false, "synthetic hwloc topology, for testing plans" },
	{ "reserve-cores", O_U32, F(reserve_cores), 0, 4096, NULL, false, "cores left free of workers (0)" },
	{ "log-level", O_ENUM, F(log_level), 0, 0, "err|warning|notice|info|debug", true, "least severe level logged (info)" },
};

#undef F

#define N_OPTS (sizeof(opts) / sizeof(opts[0]))

void moe_config_defaults(struct moe_config *c)
{
	memset(c, 0, sizeof(*c));
	strcpy(c->socket, "/run/moed/moed.sock");
	c->cache_mb = 4096;
	c->max_clients = 64;
	c->max_tokens = 256;
	c->max_inflight = 8;
	c->hello_timeout_ms = 5000;
	strcpy(c->policy, "predict");
	strcpy(c->io, "auto");
	c->prefetch = true;
	c->batch_wait_us = 50;
	c->queue_depth = 32;
	c->chunk_kb = 1024;
	strcpy(c->log_level, "info");
}

static const struct opt *find(const char *key)
{
	for (size_t i = 0; i < N_OPTS; i++)
		if (strcmp(opts[i].name, key) == 0)
			return &opts[i];
	return NULL;
}

bool moe_config_live(const char *key)
{
	const struct opt *o = find(key);

	return o && o->live;
}

bool moe_config_is_flag(const char *key)
{
	const struct opt *o = find(key);

	return o && o->type == O_BOOL;
}

static int parse_uint(const char *s, uint64_t min, uint64_t max,
		      uint64_t *out)
{
	char *end;
	unsigned long long v;

	if (!isdigit((unsigned char)*s))
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || *end || v < min || v > max)
		return -EINVAL;
	*out = v;
	return 0;
}

static int parse_bool(const char *s, bool *out)
{
	static const char *const yes[] = { "1", "yes", "true", "on" };
	static const char *const no[] = { "0", "no", "false", "off" };

	for (int i = 0; i < 4; i++) {
		if (strcmp(s, yes[i]) == 0)
			return *out = true, 0;
		if (strcmp(s, no[i]) == 0)
			return *out = false, 0;
	}
	return -EINVAL;
}

static bool in_choices(const char *choices, const char *v)
{
	size_t n = strlen(v);

	for (const char *p = choices; *p;) {
		const char *bar = strchr(p, '|');
		size_t len = bar ? (size_t)(bar - p) : strlen(p);

		if (len == n && strncmp(p, v, n) == 0)
			return true;
		p += len + (bar != NULL);
	}
	return false;
}

/* A comma-separated list of numeric ids or user/group names. */
static int parse_ids(const char *s, bool group, uint32_t *ids, uint32_t *n)
{
	char buf[1024], *save = NULL;
	uint32_t k = 0;

	if (strlen(s) >= sizeof(buf))
		return -EINVAL;
	strcpy(buf, s);
	for (char *t = strtok_r(buf, ", ", &save); t; t = strtok_r(NULL, ", ", &save)) {
		uint64_t v;

		if (k == MOE_MAX_IDS)
			return -EINVAL;
		if (parse_uint(t, 0, UINT32_MAX - 1, &v) == 0) {
			ids[k++] = (uint32_t)v;
		} else if (group) {
			struct group *g = getgrnam(t);

			if (!g)
				return -EINVAL;
			ids[k++] = g->gr_gid;
		} else {
			struct passwd *p = getpwnam(t);

			if (!p)
				return -EINVAL;
			ids[k++] = p->pw_uid;
		}
	}
	*n = k;
	return 0;
}

static int set_value(struct moe_config *c, const struct opt *o,
		     const char *val)
{
	char *field = (char *)c + o->off;
	uint64_t v;
	int rc;

	switch (o->type) {
	case O_STR:
	case O_ENUM:
		if (strlen(val) >= o->size ||
		    (o->type == O_ENUM && !in_choices(o->choices, val)))
			return -EINVAL;
		strcpy(field, val);
		return 0;
	case O_U32:
	case O_U64:
		rc = parse_uint(val, o->min, o->max, &v);
		if (rc)
			return rc;
		if (o->type == O_U32)
			*(uint32_t *)(void *)field = (uint32_t)v;
		else
			*(uint64_t *)(void *)field = v;
		return 0;
	case O_BOOL:
		return parse_bool(val, (bool *)field);
	case O_UIDS:
		return parse_ids(val, false, c->allow_uid, &c->n_allow_uid);
	case O_GIDS:
		return parse_ids(val, true, c->allow_gid, &c->n_allow_gid);
	}
	return -EINVAL;
}

static const char *expect(const struct opt *o, char *buf, size_t len)
{
	switch (o->type) {
	case O_STR: snprintf(buf, len, "a string under %zu bytes", o->size); break;
	case O_ENUM: snprintf(buf, len, "one of %s", o->choices); break;
	case O_U32:
	case O_U64:
		snprintf(buf, len, "an integer in [%" PRIu64 ", %" PRIu64 "]", o->min, o->max);
		break;
	case O_BOOL: snprintf(buf, len, "yes or no"); break;
	case O_UIDS: snprintf(buf, len, "user names or uids, comma-separated"); break;
	case O_GIDS: snprintf(buf, len, "group names or gids, comma-separated"); break;
	}
	return buf;
}

int moe_config_set(struct moe_config *c, const char *key, const char *val,
		   const char *where, struct moe_msg *err)
{
	const struct opt *o = find(key);
	char want[96];

	if (!o)
		return moe_msgf(err, -ENOENT, "%s: unknown option '%s'", where,
				key);
	if (set_value(c, o, val))
		return moe_msgf(err, -EINVAL, "%s: %s: '%s' is not %s", where,
				key, val, expect(o, want, sizeof(want)));
	return 0;
}

static char *trim(char *s)
{
	char *e;

	while (isspace((unsigned char)*s))
		s++;
	e = s + strlen(s);
	while (e > s && isspace((unsigned char)e[-1]))
		*--e = 0;
	return s;
}

int moe_config_load(struct moe_config *c, const char *path,
		    struct moe_msg *err)
{
	char line[4352], where[4200];
	unsigned lineno = 0;
	FILE *f = fopen(path, "r");
	int rc = 0;

	if (!f)
		return moe_msgf(err, -errno, "%s: %s", path, strerror(errno));
	while (!rc && fgets(line, sizeof(line), f)) {
		char *s, *eq, *hash;

		lineno++;
		snprintf(where, sizeof(where), "%s:%u", path, lineno);
		if (!strchr(line, '\n') && !feof(f)) {
			rc = moe_msgf(err, -EINVAL, "%s: line too long", where);
			break;
		}
		hash = strchr(line, '#');
		if (hash)
			*hash = 0;
		s = trim(line);
		if (!*s)
			continue;
		eq = strchr(s, '=');
		if (!eq) {
			rc = moe_msgf(err, -EINVAL, "%s: expected 'key = value', got '%s'",
				      where, s);
			break;
		}
		*eq = 0;
		rc = moe_config_set(c, trim(s), trim(eq + 1), where, err);
		if (rc == -ENOENT)
			rc = -EINVAL; /* in a file, an unknown key is an error */
	}
	if (!rc && ferror(f))
		rc = moe_msgf(err, -EIO, "%s: read error", path);
	fclose(f);
	return rc;
}

static void dump_ids(FILE *f, const uint32_t *ids, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++)
		fprintf(f, "%s%u", i ? "," : "", ids[i]);
}

void moe_config_dump(const struct moe_config *c, FILE *f)
{
	for (size_t i = 0; i < N_OPTS; i++) {
		const struct opt *o = &opts[i];
		const char *field = (const char *)c + o->off;

		fprintf(f, "%s = ", o->name);
		switch (o->type) {
		case O_STR:
		case O_ENUM: fputs(field, f); break;
		case O_U32: fprintf(f, "%u", *(const uint32_t *)(const void *)field); break;
		case O_U64: fprintf(f, "%" PRIu64, *(const uint64_t *)(const void *)field); break;
		case O_BOOL: fputs(*(const bool *)field ? "yes" : "no", f); break;
		case O_UIDS: dump_ids(f, c->allow_uid, c->n_allow_uid); break;
		case O_GIDS: dump_ids(f, c->allow_gid, c->n_allow_gid); break;
		}
		fputc('\n', f);
	}
}

void moe_config_help(FILE *f)
{
	for (size_t i = 0; i < N_OPTS; i++)
		fprintf(f, "  --%-15s %s%s\n", opts[i].name, opts[i].help,
			opts[i].live ? " [live]" : "");
}
