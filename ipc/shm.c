/* The per-client arena: layout, creation and sealing (moed), attach and
 * validation (client). Runs once per connection; nothing here is on the
 * request path except the slot accessors and ipc_desc_check. */
#include <errno.h>
#include <stdio.h>
#include <fcntl.h>
#include <math.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "shm.h"

#define PAGE 4096u
#define HDR_BELL_OFF 256u

static_assert(HDR_BELL_OFF >= sizeof(struct ipc_arena_hdr), "header fits");
static_assert(HDR_BELL_OFF % IPC_BELL_ALIGN == 0, "bells aligned");
static_assert(IPC_BELL_ALIGN % IPC_RING_ALIGN == 0 ||
		      IPC_RING_ALIGN % IPC_BELL_ALIGN == 0,
	      "bells and rings share an alignment grid");

static uint64_t align_up(uint64_t x, uint64_t a)
{
	return (x + a - 1) / a * a;
}

/* *out = a * b * c, or false on overflow. */
static bool mul3(uint64_t a, uint64_t b, uint64_t c, uint64_t *out)
{
	uint64_t ab;

	return !__builtin_mul_overflow(a, b, &ab) &&
	       !__builtin_mul_overflow(ab, c, out);
}

/* The areas inside one slot; false if they overflow. */
static bool slot_layout(struct ipc_arena_hdr *h)
{
	uint64_t rows, route;

	if (!mul3(h->max_tokens, h->n_embd, sizeof(float), &rows) ||
	    !mul3(h->max_tokens, h->max_route_k, sizeof(struct ipc_route),
		  &route) ||
	    rows > IPC_ARENA_MAX_SIZE || route > IPC_ARENA_MAX_SIZE)
		return false;
	h->in_off = 0;
	h->out_off = align_up(rows, 64);
	h->route_off = h->out_off + align_up(rows, 64);
	h->slot_size = align_up(h->route_off + route, PAGE);
	return true;
}

static bool params_ok(const struct ipc_arena_params *p)
{
	return ipc_ring_bytes(p->sq_entries, sizeof(struct ipc_desc)) &&
	       ipc_ring_bytes(p->cq_entries, sizeof(struct ipc_cqe)) &&
	       p->slot_count >= 1 && p->slot_count <= IPC_ARENA_MAX_SLOTS &&
	       p->max_tokens >= 1 && p->n_embd >= 1 &&
	       p->max_route_k <= IPC_ROUTE_MAX_K;
}

/* Where everything goes, per the picture in shm.h. */
static int layout(struct ipc_arena_hdr *h, const struct ipc_arena_params *p)
{
	uint64_t slots;

	if (!params_ok(p))
		return -EINVAL;
	*h = (struct ipc_arena_hdr){
		.magic = IPC_ARENA_MAGIC,
		.version = IPC_ARENA_VERSION,
		.hdr_size = sizeof(*h),
		.sq_bell_off = HDR_BELL_OFF,
		.cq_bell_off = HDR_BELL_OFF + sizeof(struct ipc_bell),
		.sq_off = HDR_BELL_OFF + 2 * sizeof(struct ipc_bell),
		.sq_entries = p->sq_entries,
		.sq_esize = sizeof(struct ipc_desc),
		.cq_entries = p->cq_entries,
		.cq_esize = sizeof(struct ipc_cqe),
		.slot_count = p->slot_count,
		.max_tokens = p->max_tokens,
		.n_embd = p->n_embd,
		.max_route_k = p->max_route_k,
		.moed_pid = getpid(),
		.client_pid = p->client_pid,
	};
	/* On the ring alignment: a one-entry ring does not end on it. */
	h->cq_off = align_up(h->sq_off + ipc_ring_bytes(h->sq_entries,
							h->sq_esize),
			     IPC_RING_ALIGN);
	h->slot_off = align_up(h->cq_off +
				       ipc_ring_bytes(h->cq_entries, h->cq_esize),
			       PAGE);
	if (!slot_layout(h) ||
	    __builtin_mul_overflow(h->slot_size, (uint64_t)h->slot_count,
				   &slots) ||
	    slots > IPC_ARENA_MAX_SIZE)
		return -EINVAL;
	h->total_size = h->slot_off + slots;
	return h->total_size > IPC_ARENA_MAX_SIZE ? -EINVAL : 0;
}

struct range {
	uint64_t off, len;
};

/* Every range inside [0, size) and no two overlapping. */
static bool ranges_ok(const struct range *r, int n, uint64_t size)
{
	for (int i = 0; i < n; i++) {
		if (r[i].len == 0 || r[i].off > size ||
		    r[i].len > size - r[i].off)
			return false;
		for (int j = 0; j < i; j++)
			if (r[i].off < r[j].off + r[j].len &&
			    r[j].off < r[i].off + r[i].len)
				return false;
	}
	return true;
}

static bool rings_ok(const struct ipc_arena_hdr *h)
{
	return h->sq_esize == sizeof(struct ipc_desc) &&
	       h->cq_esize == sizeof(struct ipc_cqe) &&
	       ipc_ring_bytes(h->sq_entries, h->sq_esize) &&
	       ipc_ring_bytes(h->cq_entries, h->cq_esize) &&
	       h->sq_off % IPC_RING_ALIGN == 0 &&
	       h->cq_off % IPC_RING_ALIGN == 0 &&
	       h->sq_bell_off % IPC_BELL_ALIGN == 0 &&
	       h->cq_bell_off % IPC_BELL_ALIGN == 0;
}

/* The slot areas inside a slot, the slots inside the arena. */
static bool slots_ok(const struct ipc_arena_hdr *h, uint64_t *slots_len)
{
	uint64_t rows, route;
	struct range in_slot[3];
	int n = 2;

	if (h->slot_count == 0 || h->slot_count > IPC_ARENA_MAX_SLOTS ||
	    h->max_tokens == 0 || h->n_embd == 0 ||
	    h->max_route_k > IPC_ROUTE_MAX_K || h->slot_off % 64 ||
	    h->slot_size % 64 ||
	    !mul3(h->max_tokens, h->n_embd, sizeof(float), &rows) ||
	    !mul3(h->max_tokens, h->max_route_k, sizeof(struct ipc_route),
		  &route) ||
	    __builtin_mul_overflow(h->slot_size, (uint64_t)h->slot_count,
				   slots_len) ||
	    h->in_off % 64 || h->out_off % 64 || h->route_off % 64)
		return false;
	in_slot[0] = (struct range){ h->in_off, rows };
	in_slot[1] = (struct range){ h->out_off, rows };
	if (route)
		in_slot[n++] = (struct range){ h->route_off, route };
	return ranges_ok(in_slot, n, h->slot_size);
}

int ipc_arena_validate(const struct ipc_arena_hdr *h, uint64_t map_size)
{
	uint64_t slots_len;

	if (map_size < sizeof(*h) || h->magic != IPC_ARENA_MAGIC)
		return -MOE_EPROTO;
	if (h->version != IPC_ARENA_VERSION)
		return -MOE_EVERSION;
	if (h->hdr_size != sizeof(*h) || h->total_size != map_size ||
	    !rings_ok(h) || !slots_ok(h, &slots_len))
		return -MOE_EPROTO;
	struct range r[] = {
		{ 0, h->hdr_size },
		{ h->sq_bell_off, sizeof(struct ipc_bell) },
		{ h->cq_bell_off, sizeof(struct ipc_bell) },
		{ h->sq_off, ipc_ring_bytes(h->sq_entries, h->sq_esize) },
		{ h->cq_off, ipc_ring_bytes(h->cq_entries, h->cq_esize) },
		{ h->slot_off, slots_len },
	};
	return ranges_ok(r, sizeof(r) / sizeof(r[0]), map_size) ? 0
								: -MOE_EPROTO;
}

/* Handles on the rings and bells, from our private copy of the layout. */
static int attach_parts(struct ipc_arena *a, bool moed)
{
	const struct ipc_arena_hdr *h = &a->lay;
	int rc;

	a->sq_bell = (struct ipc_bell *)(a->base + h->sq_bell_off);
	a->cq_bell = (struct ipc_bell *)(a->base + h->cq_bell_off);
	rc = ipc_ring_attach(&a->sq, a->base + h->sq_off, h->sq_entries,
			     h->sq_esize,
			     moed ? IPC_RING_CONSUMER : IPC_RING_PRODUCER);
	if (rc)
		return rc;
	return ipc_ring_attach(&a->cq, a->base + h->cq_off, h->cq_entries,
			       h->cq_esize,
			       moed ? IPC_RING_PRODUCER : IPC_RING_CONSUMER);
}

static void format_arena(struct ipc_arena *a, uint32_t ring_start)
{
	memcpy(a->base, &a->lay, sizeof(a->lay));
	ipc_bell_init((struct ipc_bell *)(a->base + a->lay.sq_bell_off));
	ipc_bell_init((struct ipc_bell *)(a->base + a->lay.cq_bell_off));
	ipc_ring_format(a->base + a->lay.sq_off, ring_start);
	ipc_ring_format(a->base + a->lay.cq_off, ring_start);
}

int ipc_arena_create(struct ipc_arena *a, const struct ipc_arena_params *p)
{
	int rc;

	*a = (struct ipc_arena){ .fd = -1 };
	rc = layout(&a->lay, p);
	if (rc)
		return rc;
	a->size = a->lay.total_size;
	a->fd = memfd_create("moed-arena", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (a->fd < 0)
		return -errno;
	/* memfds are born 0777: nobody but its owner need open it by name
	 * (/proc/PID/fd); the client gets the open fd itself. */
	if (fchmod(a->fd, 0600) < 0 || ftruncate(a->fd, (off_t)a->size) < 0)
		goto err_errno;
	a->base = mmap(NULL, a->size, PROT_READ | PROT_WRITE, MAP_SHARED,
		       a->fd, 0);
	if (a->base == MAP_FAILED) {
		a->base = NULL;
		goto err_errno;
	}
	format_arena(a, p->ring_start);
	/* Sealed before anyone else can hold the fd: from here on the size
	 * is fixed for every mapping, ours included. */
	if (fcntl(a->fd, F_ADD_SEALS, IPC_ARENA_SEALS) < 0)
		goto err_errno;
	rc = ipc_arena_validate(&a->lay, a->size);
	if (!rc)
		rc = attach_parts(a, true);
	if (rc)
		goto err;
	return 0;
err_errno:
	rc = -errno;
err:
	if (a->base)
		munmap(a->base, a->size);
	close(a->fd);
	*a = (struct ipc_arena){ .fd = -1 };
	return rc;
}

int ipc_arena_attach(struct ipc_arena *a, int fd)
{
	struct stat st;
	void *base;
	int rc;

	*a = (struct ipc_arena){ .fd = -1 };
	if (fstat(fd, &st) < 0)
		return -errno;
	if (st.st_size < (off_t)sizeof(a->lay) ||
	    (uint64_t)st.st_size > IPC_ARENA_MAX_SIZE)
		return -MOE_EPROTO;
	base = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE,
		    MAP_SHARED, fd, 0);
	if (base == MAP_FAILED)
		return -errno;
	/* Check a private copy: what we use is exactly what we checked. */
	memcpy(&a->lay, base, sizeof(a->lay));
	a->base = base;
	a->size = (size_t)st.st_size;
	rc = ipc_arena_validate(&a->lay, a->size);
	if (!rc)
		rc = attach_parts(a, false);
	if (rc) {
		munmap(base, a->size);
		*a = (struct ipc_arena){ .fd = -1 };
		return rc;
	}
	a->fd = fd;
	return 0;
}

void ipc_arena_close(struct ipc_arena *a)
{
	if (!a->base)
		return;
	munmap(a->base, a->size);
	if (a->fd >= 0)
		close(a->fd);
	*a = (struct ipc_arena){ .fd = -1 };
}

int ipc_arena_check_seals(int fd)
{
	int seals = fcntl(fd, F_GET_SEALS);

	if (seals < 0)
		return -errno;
	return (seals & IPC_ARENA_SEALS) == IPC_ARENA_SEALS ? 0 : -EPERM;
}

static unsigned char *slot_base(const struct ipc_arena *a, uint32_t slot)
{
	if (!a->base || slot >= a->lay.slot_count)
		return NULL;
	return a->base + a->lay.slot_off + (uint64_t)slot * a->lay.slot_size;
}

float *ipc_slot_in(const struct ipc_arena *a, uint32_t slot)
{
	unsigned char *s = slot_base(a, slot);

	return s ? (float *)(s + a->lay.in_off) : NULL;
}

float *ipc_slot_out(const struct ipc_arena *a, uint32_t slot)
{
	unsigned char *s = slot_base(a, slot);

	return s ? (float *)(s + a->lay.out_off) : NULL;
}

struct ipc_route *ipc_slot_route(const struct ipc_arena *a, uint32_t slot)
{
	unsigned char *s = slot_base(a, slot);

	if (!s || a->lay.max_route_k == 0)
		return NULL;
	return (struct ipc_route *)(s + a->lay.route_off);
}

static bool zeroes(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i])
			return false;
	return true;
}

/* The first field of d that is wrong, written into why; 0 if none. */
static int desc_fault(const struct ipc_desc *d, const struct ipc_arena_hdr *h,
		      char *why, size_t len)
{
	bool routed = d->flags & IPC_DESC_ROUTED;

#define BAD(...) return snprintf(why, len, __VA_ARGS__), -MOE_EDESC
	if (d->slot >= h->slot_count)
		BAD("slot %u: the arena has %u", d->slot, h->slot_count);
	if (d->n_tokens == 0 || d->n_tokens > h->max_tokens)
		BAD("n_tokens %u: must be 1..%u", d->n_tokens, h->max_tokens);
	if (d->flags & ~IPC_DESC_KNOWN_FLAGS)
		BAD("flags 0x%x: unknown bits", d->flags);
	if (!zeroes(d->reserved, sizeof(d->reserved)))
		BAD("reserved bytes are not zero");
	if (!isfinite(d->top_p) || d->top_p < 0 || d->top_p > 1)
		BAD("top_p %g: must be in [0, 1]", (double)d->top_p);
	if (d->min_k && d->max_k && d->min_k > d->max_k)
		BAD("min_k %u is above max_k %u", d->min_k, d->max_k);
	if (routed && (d->route_k == 0 || d->route_k > h->max_route_k))
		BAD("route_k %u: must be 1..%u", d->route_k, h->max_route_k);
	if (!routed && d->route_k != 0)
		BAD("route_k %u without the routed flag", d->route_k);
#undef BAD
	return 0;
}

int ipc_desc_check(const struct ipc_desc *d, const struct ipc_arena *a)
{
	char why[96];

	return desc_fault(d, &a->lay, why, sizeof(why));
}

int ipc_desc_explain(const struct ipc_desc *d, const struct ipc_arena *a,
		     char *why, size_t len)
{
	if (len)
		why[0] = 0;
	return desc_fault(d, &a->lay, why, len);
}
