/* The I/O ceiling (see bench_io.h): an LRU replay of the trace for the
 * bytes its misses needed, then raw O_DIRECT io_uring reads of them. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <liburing.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <moe/moeclient.h>

#include "bench_io.h"

#define CHUNK (1u << 20)          /* moed's default read size */
#define PROBE_BYTES (64ull << 20) /* bytes each depth is tried on */
#define MIN_BLOCK 4096u

static const uint32_t depths[] = { 1, 4, 8, 16, 32, 64 };
#define N_DEPTHS (sizeof(depths) / sizeof(depths[0]))
#define MAX_DEPTH 64

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

uint32_t bench_dio_block(int fd)
{
	struct statx sx;
	uint32_t b = MIN_BLOCK, want = MIN_BLOCK;

	if (statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) == 0 &&
	    (sx.stx_mask & STATX_DIOALIGN))
		want = sx.stx_dio_offset_align > sx.stx_dio_mem_align
			       ? sx.stx_dio_offset_align : sx.stx_dio_mem_align;
	while (b < want)
		b <<= 1;
	return b;
}

static const struct moe_mat *part(const struct moe_ffn_mats *f, int i)
{
	return i == 0 ? &f->gate : i == 1 ? &f->up : &f->down;
}

uint64_t bench_expert_read_bytes(const struct moe_model *m, uint32_t blk,
				 uint32_t layer, uint32_t e)
{
	const struct moe_ffn_mats *f = &m->layers[layer].experts[e];
	uint64_t n = 0;

	for (int i = 0; i < 3; i++) {
		const struct moe_mat *mt = part(f, i);
		uint64_t a0 = mt->off / blk * blk;
		uint64_t a1 = (mt->off + mt->size + blk - 1) / blk * blk;

		n += a1 - a0;
	}
	return n;
}

/* ---- which bytes: the LRU replay ---- */

struct lru {
	const struct moe_model *m;
	uint32_t blk;
	uint64_t *slot;        /* per layer: the largest read, as a slot */
	int32_t *prev, *next;  /* per cell (layer * max_expert + expert) */
	uint64_t *stamp;       /* request that last used it, 1-based */
	bool *resident;
	int32_t head, tail;    /* most and least recently used */
	uint64_t used, budget;
};

static void unlink_cell(struct lru *c, int32_t i)
{
	if (c->prev[i] >= 0)
		c->next[c->prev[i]] = c->next[i];
	else
		c->head = c->next[i];
	if (c->next[i] >= 0)
		c->prev[c->next[i]] = c->prev[i];
	else
		c->tail = c->prev[i];
}

static void push_front(struct lru *c, int32_t i)
{
	c->prev[i] = -1;
	c->next[i] = c->head;
	if (c->head >= 0)
		c->prev[c->head] = i;
	c->head = i;
	if (c->tail < 0)
		c->tail = i;
}

/* What a resident expert costs the budget: a slot of its layer's largest
 * read, as moed's store carves slots. */
static uint64_t cell_bytes(const struct lru *c, int32_t i)
{
	return c->slot[(uint32_t)i / c->m->max_expert];
}

/* Make room for `need` bytes, never evicting what request `now` uses. */
static void evict_for(struct lru *c, uint64_t need, uint64_t now)
{
	while (c->used + need > c->budget && c->tail >= 0 &&
	       c->stamp[c->tail] != now) {
		int32_t v = c->tail;

		unlink_cell(c, v);
		c->resident[v] = false;
		c->used -= cell_bytes(c, v);
	}
}

static int add_read(struct bench_read **r, size_t *n, size_t *cap,
		    uint32_t layer, uint32_t e)
{
	if (*n == *cap) {
		size_t nc = *cap ? *cap * 2 : 1024;
		struct bench_read *p = realloc(*r, nc * sizeof(*p));

		if (!p)
			return -ENOMEM;
		*r = p;
		*cap = nc;
	}
	(*r)[(*n)++] = (struct bench_read){ layer, e };
	return 0;
}

/* One request: hits move to the front first, so the misses that follow
 * evict only experts this request does not use. */
static int replay(struct lru *c, const struct bench_use *u, uint64_t now,
		  struct bench_read **r, size_t *n, size_t *cap, uint64_t *bytes)
{
	size_t base = (size_t)u->layer * c->m->max_expert;

	for (uint32_t i = 0; i < u->n; i++) {
		int32_t x = (int32_t)(base + u->ids[i]);

		c->stamp[x] = now;
		if (c->resident[x]) {
			unlink_cell(c, x);
			push_front(c, x);
		}
	}
	for (uint32_t i = 0; i < u->n; i++) {
		int32_t x = (int32_t)(base + u->ids[i]);
		uint64_t b;

		if (c->resident[x])
			continue;
		b = cell_bytes(c, x);
		evict_for(c, b, now);
		push_front(c, x);
		c->resident[x] = true;
		c->used += b;
		*bytes += bench_expert_read_bytes(c->m, c->blk, u->layer, u->ids[i]);
		if (add_read(r, n, cap, u->layer, u->ids[i]))
			return -ENOMEM;
	}
	return 0;
}

int bench_ceiling_plan(const struct moe_model *m, uint32_t blk,
		       uint64_t budget, const struct bench_use *uses,
		       size_t n_uses, struct bench_read **reads,
		       size_t *n_reads, uint64_t *bytes)
{
	size_t cells = (size_t)m->n_layer * m->max_expert, cap = 0;
	struct lru c = { .m = m, .blk = blk, .head = -1, .tail = -1,
			 .budget = budget };
	int rc = -ENOMEM;

	*reads = NULL;
	*n_reads = 0;
	*bytes = 0;
	c.prev = malloc(cells * sizeof(*c.prev));
	c.next = malloc(cells * sizeof(*c.next));
	c.stamp = calloc(cells, sizeof(*c.stamp));
	c.resident = calloc(cells, sizeof(*c.resident));
	c.slot = calloc(m->n_layer, sizeof(*c.slot));
	for (uint32_t l = 0; c.slot && l < m->n_layer; l++)
		for (uint32_t e = 0; m->layers[l].moe && e < m->layers[l].n_expert; e++) {
			uint64_t b = bench_expert_read_bytes(m, blk, l, e);

			if (b > c.slot[l])
				c.slot[l] = b;
		}
	if (c.prev && c.next && c.stamp && c.resident && c.slot) {
		rc = 0;
		for (size_t i = 0; !rc && i < n_uses; i++)
			rc = replay(&c, &uses[i], i + 1, reads, n_reads, &cap, bytes);
	}
	free(c.prev);
	free(c.next);
	free(c.stamp);
	free(c.resident);
	free(c.slot);
	if (rc) {
		free(*reads);
		*reads = NULL;
	}
	return rc;
}

/* ---- the raw reads ---- */

struct piece {
	uint64_t off;
	uint32_t len;
};

/* Cut the replay's reads where their bytes reach target, or, if they
 * stop short, go on with the trace's uses in order (round and round)
 * until they do: the experts stay the trace's own, the bytes moed's. */
int bench_ceiling_match(const struct moe_model *m, uint32_t blk,
			uint64_t target, const struct bench_use *uses,
			size_t n_uses, struct bench_read **reads,
			size_t *n_reads, uint64_t *bytes)
{
	size_t cap = *n_reads, n = 0;
	uint64_t sum = 0;

	while (n < *n_reads && sum < target) {
		sum += bench_expert_read_bytes(m, blk, (*reads)[n].layer, (*reads)[n].expert);
		n++;
	}
	for (size_t pass = 0; sum < target && n_uses; pass++) {
		bool any = false;

		for (size_t i = 0; i < n_uses && sum < target; i++)
			for (uint32_t j = 0; j < uses[i].n && sum < target; j++) {
				if (add_read(reads, &n, &cap, uses[i].layer, uses[i].ids[j]))
					return -ENOMEM;
				sum += bench_expert_read_bytes(m, blk, uses[i].layer, uses[i].ids[j]);
				any = true;
			}
		if (!any)
			break;
	}
	*n_reads = n;
	*bytes = sum;
	return 0;
}

static int plan_pieces(const struct moe_model *m, uint32_t blk,
		       const struct bench_read *reads, size_t n,
		       struct piece **out, size_t *n_out)
{
	size_t cap = 1024, k = 0;
	struct piece *pc = malloc(cap * sizeof(*pc));

	for (size_t r = 0; pc && r < n; r++) {
		const struct moe_ffn_mats *f =
			&m->layers[reads[r].layer].experts[reads[r].expert];

		for (int i = 0; pc && i < 3; i++) {
			const struct moe_mat *mt = part(f, i);
			uint64_t a0 = mt->off / blk * blk;
			uint64_t a1 = (mt->off + mt->size + blk - 1) / blk * blk;

			for (uint64_t o = a0; pc && o < a1; o += CHUNK) {
				if (k == cap) {
					struct piece *p = realloc(pc, (cap *= 2) * sizeof(*p));

					if (!p)
						free(pc);
					pc = p;
					if (!pc)
						break;
				}
				pc[k++] = (struct piece){
					o, (uint32_t)(a1 - o < CHUNK ? a1 - o : CHUNK) };
			}
		}
	}
	if (!pc)
		return -ENOMEM;
	*out = pc;
	*n_out = k;
	return 0;
}

struct pass {
	int fd;
	const char *path;
	uint8_t *region;      /* MAX_DEPTH buffers of CHUNK bytes */
	bool fixed;           /* region registered with the ring */
	const char *mode;     /* "O_DIRECT", or why buffered */
	uint64_t bytes;
	double seconds;
};

/* A read that failed, or came back short before the end of the file. */
static int read_error(const struct pass *p, const struct piece *pc, int res,
		      struct moe_msg *err)
{
	struct stat st;

	if (res >= 0 && !fstat(p->fd, &st) &&
	    pc->off + (uint64_t)res >= (uint64_t)st.st_size)
		return 0; /* the last block of the file: short by design */
	return moe_msgf(err, res < 0 ? res : -EIO,
			"%s: raw read of %u bytes at offset %" PRIu64 ": %s",
			p->path, pc->len, pc->off,
			res < 0 ? moe_strerror(res) : "short read");
}

static void prep(struct io_uring *ring, struct pass *p, const struct piece *pc,
		 size_t idx, uint32_t slot)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
	uint8_t *buf = p->region + (size_t)slot * CHUNK;

	if (p->fixed)
		io_uring_prep_read_fixed(sqe, p->fd, buf, pc->len, pc->off, 0);
	else
		io_uring_prep_read(sqe, p->fd, buf, pc->len, pc->off);
	io_uring_sqe_set_data64(sqe, (uint64_t)idx << 8 | slot);
}

/* Every piece once, qd in flight. */
static int uring_pass(struct pass *p, const struct piece *pc, size_t n,
		      uint32_t qd, struct moe_msg *err)
{
	struct iovec iov = { p->region, (size_t)MAX_DEPTH * CHUNK };
	uint32_t free_slots[MAX_DEPTH], n_free = qd;
	struct io_uring ring;
	size_t next = 0, done = 0;
	int rc = io_uring_queue_init(qd, &ring, 0);

	if (rc)
		return moe_msgf(err, rc, "io_uring_queue_init: %s", moe_strerror(rc));
	p->fixed = io_uring_register_buffers(&ring, &iov, 1) == 0;
	for (uint32_t i = 0; i < qd; i++)
		free_slots[i] = i;
	p->bytes = 0;
	p->seconds = now_s();
	/* After a failure nothing more is submitted, but what is in flight
	 * is collected: the kernel may write the buffers until then. */
	while (done < next || (!rc && next < n)) {
		struct io_uring_cqe *cqe;
		int r;

		while (!rc && next < n && n_free) {
			prep(&ring, p, &pc[next], next, free_slots[--n_free]);
			next++;
		}
		r = io_uring_submit_and_wait(&ring, 1);
		if (r < 0 && r != -EINTR) {
			rc = rc ? rc : moe_msgf(err, r, "io_uring_submit: %s", moe_strerror(r));
			break;
		}
		while (io_uring_peek_cqe(&ring, &cqe) == 0) {
			uint64_t d = io_uring_cqe_get_data64(cqe);
			const struct piece *q = &pc[d >> 8];

			if (!rc && (cqe->res < 0 || (uint32_t)cqe->res < q->len))
				rc = read_error(p, q, cqe->res, err);
			p->bytes += cqe->res > 0 ? (uint64_t)cqe->res : 0;
			free_slots[n_free++] = (uint32_t)(d & 0xff);
			io_uring_cqe_seen(&ring, cqe);
			done++;
		}
	}
	p->seconds = now_s() - p->seconds;
	io_uring_queue_exit(&ring);
	return rc;
}

/* Where io_uring cannot be set up: one pread after another. */
static int pread_pass(struct pass *p, const struct piece *pc, size_t n,
		      struct moe_msg *err)
{
	p->bytes = 0;
	p->seconds = now_s();
	for (size_t i = 0; i < n; i++) {
		ssize_t r = pread(p->fd, p->region, pc[i].len, (off_t)pc[i].off);

		if ((r < 0 || (size_t)r < pc[i].len) &&
		    read_error(p, &pc[i], r < 0 ? -errno : (int)r, err))
			return -EIO;
		p->bytes += r > 0 ? (uint64_t)r : 0;
	}
	p->seconds = now_s() - p->seconds;
	return 0;
}

/* The prefix of pieces that holds about PROBE_BYTES. */
static size_t probe_count(const struct piece *pc, size_t n)
{
	uint64_t b = 0;
	size_t i = 0;

	while (i < n && b < PROBE_BYTES)
		b += pc[i++].len;
	return i;
}

/* Try each depth on the probe; the whole list at the best one (the probe
 * is the whole list when the list is small). */
static int best_depth(struct pass *p, const struct piece *pc, size_t n,
		      struct bench_ceiling *out, struct moe_msg *err)
{
	size_t np = probe_count(pc, n);
	double best = 0;
	int rc;

	for (size_t i = 0; i < N_DEPTHS; i++) {
		rc = uring_pass(p, pc, np, depths[i], err);
		if (rc)
			return rc;
		if (p->seconds > 0 && p->bytes / p->seconds > best) {
			best = p->bytes / p->seconds;
			out->queue_depth = depths[i];
			out->bytes = p->bytes;
			out->seconds = p->seconds;
		}
	}
	if (np == n)
		return 0;
	rc = uring_pass(p, pc, n, out->queue_depth, err);
	out->bytes = p->bytes;
	out->seconds = p->seconds;
	return rc;
}

static int open_model(const struct moe_model *m, struct pass *p,
		      struct moe_msg *err)
{
	p->path = gguf_path(m->gguf);
	p->fd = open(p->path, O_RDONLY | O_DIRECT | O_CLOEXEC);
	p->mode = "O_DIRECT";
	if (p->fd >= 0)
		return 0;
	if (errno == EINVAL)
		p->fd = open(p->path, O_RDONLY | O_CLOEXEC);
	if (p->fd < 0)
		return moe_msgf(err, -errno, "%s: %s", p->path, moe_strerror(-errno));
	p->mode = "buffered: the file system refuses O_DIRECT";
	return 0;
}

int bench_ceiling_run(const struct moe_model *m, const struct bench_read *reads,
		      size_t n_reads, struct bench_ceiling *out,
		      struct moe_msg *err)
{
	struct pass p = { .fd = -1 };
	struct piece *pc = NULL;
	size_t n = 0;
	int rc;

	memset(out, 0, sizeof(*out));
	out->chunk = CHUNK;
	rc = open_model(m, &p, err);
	if (rc)
		return rc;
	rc = plan_pieces(m, bench_dio_block(p.fd), reads, n_reads, &pc, &n);
	p.region = aligned_alloc(MIN_BLOCK, (size_t)MAX_DEPTH * CHUNK);
	if (rc || !p.region) {
		rc = moe_msgf(err, -ENOMEM, "out of memory for the raw reads");
		goto out;
	}
	if (n && (rc = best_depth(&p, pc, n, out, NULL)) == 0) {
		snprintf(out->how, sizeof(out->how), "io_uring, %s", p.mode);
	} else if (n) {
		/* io_uring refused (seccomp, io_uring_disabled): plain reads. */
		rc = pread_pass(&p, pc, n, err);
		out->queue_depth = 1;
		out->bytes = p.bytes;
		out->seconds = p.seconds;
		snprintf(out->how, sizeof(out->how), "pread (io_uring unavailable), %s", p.mode);
	}
out:
	free(p.region);
	free(pc);
	close(p.fd);
	return rc;
}
