/* The expert source by name: one place that maps option strings to the
 * store's settings, for moed and the tools alike. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <moe/moeclient.h>

#include "source.h"
#include "store.h"

struct moe_source {
	struct moe_store *store;
	struct moe_mapsrc *map;
};

static int names(const struct moe_source_opts *o, struct moe_store_opts *so,
		 struct moe_msg *err)
{
	static const char *const ios[] = { "auto", "uring", "pread" };
	int p = moe_policy_by_name(o->policy ? o->policy : "predict"), i;

	for (i = 0; i < 3 && strcmp(o->io ? o->io : "auto", ios[i]); i++)
		;
	if (p < 0)
		return moe_msgf(err, -EINVAL, "policy '%s': expected lru, lfu or predict",
				o->policy);
	if (i == 3)
		return moe_msgf(err, -EINVAL, "io '%s': expected auto, uring, pread or mmap",
				o->io);
	so->policy = (enum moe_policy)p;
	so->io = i == 0 ? MOE_IO_AUTO : i == 1 ? MOE_IO_URING : MOE_IO_PREAD;
	return 0;
}

int moe_source_open(struct moe_source **out, const struct moe_model *m,
		    const struct moe_source_opts *o, struct moe_expert_src *src,
		    struct moe_msg *err)
{
	struct moe_store_opts so = {
		.cache_bytes = o->cache_bytes,
		.buffered = o->buffered,
		.sqpoll = o->sqpoll,
		.queue_depth = o->queue_depth,
		.chunk_bytes = o->chunk_bytes,
		.plan = o->plan,
	};
	struct moe_source *s = calloc(1, sizeof(*s));
	int rc;

	if (!s)
		return moe_msgf(err, -ENOMEM, "out of memory");
	if (o->io && strcmp(o->io, "mmap") == 0)
		rc = moe_mapsrc_open(&s->map, m, src, err);
	else if (!(rc = names(o, &so, err)) &&
		 !(rc = moe_store_open(&s->store, m, &so, err)))
		moe_store_source(s->store, src);
	if (rc) {
		free(s);
		return rc;
	}
	*out = s;
	return 0;
}

void moe_source_close(struct moe_source *s)
{
	if (!s)
		return;
	moe_store_close(s->store);
	moe_mapsrc_close(s->map);
	free(s);
}

int moe_source_expert_budget(const struct moe_model *m, uint64_t total,
			     uint64_t *experts, struct moe_msg *err)
{
	uint64_t pinned = moe_model_pinned_bytes(m);

	if (pinned >= total)
		return moe_msgf(err, -MOE_ENOSPACE,
				"cache budget of %.1f MiB leaves nothing for experts: the routers and shared experts kept resident take %.1f MiB of it",
				total / 1048576.0, pinned / 1048576.0);
	*experts = total - pinned;
	return 0;
}

struct moe_store *moe_source_store(const struct moe_source *s)
{
	return s->store;
}
