/* libFuzzer target for the descriptor validator and the arena layout: the
 * checks that keep a client inside its own memory. Two modes, by the low
 * bit of the first byte:
 *
 *  0  a real arena from fuzzed parameters (ipc_arena_create), attached
 *     the way a client does; the rest of the input is what a hostile
 *     client writes into its submission ring (head index and entries).
 *     moed's side pops, checks each descriptor, touches the first and
 *     last byte of every area an accepted one names (ASan sees any byte
 *     outside the mapping) and answers on the completion ring.
 *  1  a fuzzed arena header and mapping size through ipc_arena_validate;
 *     a header it accepts must describe disjoint areas inside the
 *     mapping, and the rest of the input is descriptors checked against
 *     that layout (addresses only, in a reserved PROT_NONE range).
 *
 * Either way, a descriptor ipc_desc_check accepts must name only bytes
 * of its own slot, and ipc_desc_explain must agree and say why. */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <moe/moeclient.h>

#include "fuzz.h"
#include "shm.h"

static volatile uint8_t sink;

struct area {
	uint64_t off, len;
};

static bool inside(struct area a, uint64_t lo, uint64_t hi)
{
	return a.off >= lo && a.off <= hi && a.len <= hi - a.off;
}

static bool disjoint(struct area a, struct area b)
{
	return a.off + a.len <= b.off || b.off + b.len <= a.off;
}

/* The fields ipc_desc_check promises to have checked. */
static void check_fields(const struct ipc_desc *d, const struct ipc_arena_hdr *h)
{
	static const uint8_t zero[sizeof(d->reserved)];
	bool routed = d->flags & IPC_DESC_ROUTED;

	CHECK(d->slot < h->slot_count);
	CHECK(d->n_tokens >= 1 && d->n_tokens <= h->max_tokens);
	CHECK(!(d->flags & ~IPC_DESC_KNOWN_FLAGS));
	CHECK(!memcmp(d->reserved, zero, sizeof(zero)));
	CHECK(isfinite(d->top_p) && d->top_p >= 0 && d->top_p <= 1);
	CHECK(!d->min_k || !d->max_k || d->min_k <= d->max_k);
	CHECK(routed ? d->route_k >= 1 && d->route_k <= h->max_route_k
		     : d->route_k == 0);
}

/* Offsets (from the arena's base) of what an accepted descriptor lets
 * moed read and write: n 1..3 areas, all inside its slot. */
static int desc_areas(const struct ipc_desc *d, const struct ipc_arena *a,
		      struct area *ar)
{
	const struct ipc_arena_hdr *h = &a->lay;
	uint64_t rows = (uint64_t)d->n_tokens * h->n_embd * sizeof(float);
	uint64_t lo = h->slot_off + (uint64_t)d->slot * h->slot_size;
	struct ipc_route *rt = ipc_slot_route(a, d->slot);
	int n = 2;

	ar[0] = (struct area){ (uint64_t)((unsigned char *)ipc_slot_in(a, d->slot) - a->base), rows };
	ar[1] = (struct area){ (uint64_t)((unsigned char *)ipc_slot_out(a, d->slot) - a->base), rows };
	if (d->flags & IPC_DESC_ROUTED) {
		CHECK(rt != NULL);
		ar[n++] = (struct area){
			(uint64_t)((unsigned char *)rt - a->base),
			(uint64_t)d->n_tokens * d->route_k * sizeof(struct ipc_route)
		};
	}
	CHECK(inside((struct area){ lo, h->slot_size }, h->slot_off,
		     h->total_size));
	for (int i = 0; i < n; i++) {
		CHECK(inside(ar[i], lo, lo + h->slot_size));
		for (int j = 0; j < i; j++)
			CHECK(disjoint(ar[i], ar[j]));
	}
	return n;
}

/* Check one descriptor; returns the number of areas when accepted. */
static int check_desc(const struct ipc_desc *d, const struct ipc_arena *a,
		      struct area *ar)
{
	char why[128] = "x";
	int rc = ipc_desc_check(d, a);

	CHECK(ipc_desc_explain(d, a, why, sizeof(why)) == rc);
	if (rc) {
		CHECK(rc == -MOE_EDESC && why[0]);
		return 0;
	}
	CHECK(why[0] == 0);
	check_fields(d, &a->lay);
	return desc_areas(d, a, ar);
}

/* ---- mode 0: a real arena and a hostile client ---- */

static uint32_t take_u32(const uint8_t **p, size_t *n)
{
	uint32_t v = 0;
	size_t k = *n < 4 ? *n : 4;

	memcpy(&v, *p, k);
	*p += k;
	*n -= k;
	return v;
}

static void answer(struct ipc_arena *a, const struct ipc_desc *d, int st)
{
	struct ipc_cqe c = { .id = d->id, .status = st, .slot = d->slot };
	int rc = ipc_ring_push(&a->cq, &c);

	CHECK(rc == 0 || rc == -EAGAIN); /* full: the client's to drain */
}

static void serve(struct ipc_arena *moed, struct ipc_arena *cl,
		  const uint8_t *p, size_t n)
{
	const struct ipc_arena_hdr *h = &moed->lay;
	uint32_t jump = take_u32(&p, &n);
	size_t ring = (size_t)h->sq_entries * sizeof(struct ipc_desc);
	struct ipc_desc d;
	struct area ar[3];

	/* The client scribbles on its ring: entries, then any head. */
	memcpy(cl->base + h->sq_off + IPC_RING_HDR, p, n < ring ? n : ring);
	atomic_store_explicit(&cl->sq.shm->head,
			      (jump & 1) ? jump : cl->sq.own + (jump >> 1) % (2 * h->sq_entries + 2),
			      memory_order_release);
	for (uint32_t i = 0; i < 2 * h->sq_entries + 2; i++) {
		int rc = ipc_ring_pop(&moed->sq, &d), k;

		if (rc == -EAGAIN || rc == -MOE_EPROTO)
			return; /* empty, or corrupt: moed hangs up */
		CHECK(rc == 0);
		k = check_desc(&d, moed, ar);
		for (int j = 0; j < k; j++) {
			sink += moed->base[ar[j].off];
			moed->base[ar[j].off + ar[j].len - 1] = sink;
		}
		answer(moed, &d, k ? 0 : -MOE_EDESC);
	}
	CHECK(0); /* more entries popped than a ring can hold */
}

static void real_arena(const uint8_t *p, size_t n)
{
	struct ipc_arena_params ap;
	struct ipc_arena moed, cl;
	uint8_t b[12] = { 0 };
	int rc, fd;

	memcpy(b, p, n < sizeof(b) ? n : sizeof(b));
	p += n < sizeof(b) ? n : sizeof(b);
	n -= n < sizeof(b) ? n : sizeof(b);
	ap = (struct ipc_arena_params){
		.sq_entries = 1u << (b[0] % 9),
		.cq_entries = (1u << (b[1] % 9)) + (b[1] >= 250), /* some not 2^k */
		.slot_count = b[2] % 17,            /* 0 is refused */
		.max_tokens = (b[3] | b[4] << 8) % 513,
		.n_embd = (b[5] | b[6] << 8) % 1025,
		.max_route_k = b[7] % 34 * 8 + (b[7] >= 250), /* 264: refused */
		.client_pid = 1,
	};
	memcpy(&ap.ring_start, b + 8, 4);
	rc = ipc_arena_create(&moed, &ap);
	if (rc) {
		CHECK(rc == -EINVAL); /* parameters out of range */
		return;
	}
	CHECK(ipc_arena_check_seals(moed.fd) == 0);
	fd = dup(moed.fd);
	CHECK(fd >= 0);
	CHECK(ipc_arena_attach(&cl, fd) == 0);
	CHECK(!memcmp(&cl.lay, &moed.lay, sizeof(cl.lay)));
	CHECK(ftruncate(fd, 4096) < 0); /* sealed */
	serve(&moed, &cl, p, n);
	ipc_arena_close(&cl);
	ipc_arena_close(&moed);
}

/* ---- mode 1: a fuzzed layout ---- */

/* An address range of the arena's size that nothing may touch: the
 * descriptors are checked against it by address only. Reserved per input
 * and only as large as the layout says, since a sanitizer's runtime may
 * not leave room for the largest arena next to its shadow memory (TSan);
 * NULL when the range cannot be had, and then only the layout is checked. */
static unsigned char *reserve(uint64_t size)
{
	void *m = mmap(NULL, size, PROT_NONE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

	return m == MAP_FAILED ? NULL : m;
}

/* What ipc_arena_validate promises of a header it accepts. */
static void check_layout(const struct ipc_arena_hdr *h, uint64_t size)
{
	uint64_t slots;

	CHECK(!__builtin_mul_overflow(h->slot_size, (uint64_t)h->slot_count,
				      &slots));
	struct area r[] = {
		{ 0, sizeof(*h) },
		{ h->sq_bell_off, sizeof(struct ipc_bell) },
		{ h->cq_bell_off, sizeof(struct ipc_bell) },
		{ h->sq_off, ipc_ring_bytes(h->sq_entries, h->sq_esize) },
		{ h->cq_off, ipc_ring_bytes(h->cq_entries, h->cq_esize) },
		{ h->slot_off, slots },
	};

	CHECK(h->magic == IPC_ARENA_MAGIC && h->version == IPC_ARENA_VERSION);
	CHECK(h->total_size == size);
	CHECK(h->slot_count >= 1 && h->slot_count <= IPC_ARENA_MAX_SLOTS);
	for (size_t i = 0; i < sizeof(r) / sizeof(r[0]); i++) {
		CHECK(r[i].len && inside(r[i], 0, size));
		for (size_t j = 0; j < i; j++)
			CHECK(disjoint(r[i], r[j]));
	}
}

static void fuzzed_layout(const uint8_t *p, size_t n)
{
	struct ipc_arena a = { .fd = -1 };
	struct ipc_desc d;
	struct area ar[3];
	uint64_t size;

	if (n < sizeof(a.lay) + 8)
		return;
	memcpy(&a.lay, p, sizeof(a.lay));
	memcpy(&size, p + sizeof(a.lay), 8);
	p += sizeof(a.lay) + 8;
	n -= sizeof(a.lay) + 8;
	size %= IPC_ARENA_MAX_SIZE + 1;
	if (size < sizeof(a.lay)) /* the fuzzer rarely guesses a size */
		size = a.lay.total_size;
	/* Beyond what attach ever maps (and our reserved range). */
	if (size > IPC_ARENA_MAX_SIZE || ipc_arena_validate(&a.lay, size))
		return;
	check_layout(&a.lay, size);
	a.base = reserve(size);
	if (!a.base)
		return;
	a.size = size;
	for (; n >= sizeof(d); p += sizeof(d), n -= sizeof(d)) {
		memcpy(&d, p, sizeof(d));
		check_desc(&d, &a, ar);
	}
	munmap(a.base, size);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	if (data[0] & 1)
		fuzzed_layout(data + 1, size - 1);
	else
		real_arena(data + 1, size - 1);
	return 0;
}
