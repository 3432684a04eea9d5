/* An expert source over the model file mapped read-only: experts are
 * read through the page cache, the way llama.cpp's mmap loading does.
 * It is the baseline the expert store is measured against. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <sys/mman.h>

#include <moe/moeclient.h>

#include "engine.h"

struct moe_mapsrc {
	const struct moe_model *m;
	const uint8_t *base;
	uint64_t len;
};

static int map_acquire(void *ctx, uint32_t layer, uint32_t e,
		       struct moe_ffn_ptrs *p, struct moe_msg *err)
{
	struct moe_mapsrc *s = ctx;
	const struct moe_ffn_mats *f = &s->m->layers[layer].experts[e];

	(void)err;
	p->gate = s->base + f->gate.off;
	p->up = s->base + f->up.off;
	p->down = s->base + f->down.off;
	return 1; /* the page cache decides; counted as resident */
}

static void map_release(void *ctx, uint32_t layer, uint32_t e)
{
	(void)ctx;
	(void)layer;
	(void)e;
}

int moe_mapsrc_open(struct moe_mapsrc **out, const struct moe_model *m,
		    struct moe_expert_src *src, struct moe_msg *err)
{
	struct moe_mapsrc *s = calloc(1, sizeof(*s));
	void *p;

	if (!s)
		return moe_msgf(err, -ENOMEM, "out of memory");
	s->m = m;
	s->len = gguf_file_size(m->gguf);
	p = mmap(NULL, s->len, PROT_READ, MAP_SHARED, gguf_fd(m->gguf), 0);
	if (p == MAP_FAILED) {
		int rc = -errno;

		moe_msgf(err, rc, "%s: mmap of %" PRIu64 " bytes: %s",
			 gguf_path(m->gguf), s->len, moe_strerror(rc));
		free(s);
		return rc;
	}
	s->base = p;
	*src = (struct moe_expert_src){
		.acquire = map_acquire, .release = map_release, .ctx = s,
	};
	*out = s;
	return 0;
}

void moe_mapsrc_close(struct moe_mapsrc *s)
{
	if (!s)
		return;
	munmap((void *)s->base, s->len);
	free(s);
}
