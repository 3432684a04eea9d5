/* The io engine under the expert store: reads file ranges into caller
 * buffers, demand reads ahead of prefetches, split into chunks, on one
 * io_uring thread (O_DIRECT, registered file and buffers) or a pread
 * thread pool. Internal to the engine library; the store is its user. */
#ifndef MOE_IO_H
#define MOE_IO_H

#include <sched.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include "diag.h"

#define MOE_IO_SEGS 3          /* an expert: gate, up, down */
#define MOE_IO_NOBUF UINT32_MAX

/* One contiguous read. off, len and buf are aligned to moe_io_block();
 * the bytes in [off, off + need) must be read, the rest is alignment
 * padding that may lie past the end of the file. */
struct moe_io_seg {
	uint64_t off;
	uint64_t len;
	uint64_t need;
	uint8_t *buf;
};

struct moe_io_req;
typedef void (*moe_io_done_fn)(struct moe_io_req *r);

/* A request: up to MOE_IO_SEGS segments read as one unit. The caller
 * owns the memory and must not touch it between submit and done. */
struct moe_io_req {
	struct moe_io_seg seg[MOE_IO_SEGS];
	uint32_t n_seg;
	uint32_t buf_index;  /* registered buffer holding every seg, or
			      * MOE_IO_NOBUF */
	moe_io_done_fn done; /* called once from an io thread with no io
			      * lock held; the io engine forgets r first */
	/* Results, valid in done(). */
	int rc;              /* 0, -errno, -EIO for a short read, or
			      * -ECANCELED when the engine closed first */
	bool err_short;      /* rc: the file ended before off + need */
	uint64_t err_off;    /* file offset where the failure was seen */
	uint64_t bytes;      /* bytes read, padding included */
	uint64_t seq;        /* order in which its first chunk was issued */
	/* Private to io.c. */
	struct moe_io_req *next;
	uint32_t cur_seg;
	uint64_t cur_at;
	uint32_t inflight;
	uint8_t queue;
};

struct moe_io_opts {
	bool force_pread;     /* the pread pool even where io_uring works */
	bool require_uring;   /* fail rather than fall back to pread */
	bool buffered;        /* no O_DIRECT */
	bool sqpoll;
	uint32_t queue_depth; /* chunks in flight; 0: 32 */
	uint32_t chunk_bytes; /* 0: 1 MiB; rounded down to the block */
	uint32_t threads;     /* pread pool; 0: 4 */
	/* Run the io thread (or the pread pool, and an SQPOLL thread on the
	 * first of them) on these CPUs: the placement plan's io_cpus, near
	 * the device. NULL: wherever the scheduler puts them. CPUs the
	 * kernel refuses leave them unpinned, said once in the log. */
	const cpu_set_t *cpus;
};

struct moe_io_stats {
	uint64_t bytes;         /* read, padding included */
	double busy_seconds;    /* time with at least one read in flight */
	uint64_t chunks;        /* reads issued */
	const char *mode;       /* "io_uring", "io_uring+sqpoll", "pread" */
	bool direct;            /* O_DIRECT in use now */
	bool fixed_buffers;
	bool pinned;            /* the threads run on the CPUs asked for */
};

struct moe_io;

/* Open path for reading (a second open, independent of any other fd)
 * and set up io_uring, or decide on the pread pool. Fallbacks (pread for
 * io_uring, buffered for O_DIRECT) are taken here and said once through
 * moe_log. Nothing runs until moe_io_start(). 0 or -errno with err set. */
int moe_io_open(struct moe_io **out, const char *path,
		const struct moe_io_opts *o, struct moe_msg *err);

/* Register bufs (n may be 0) as fixed buffers where io_uring and
 * RLIMIT_MEMLOCK allow, saying once in the log when they do not, then
 * start the io thread or pool. 0 or -errno with err set. */
int moe_io_start(struct moe_io *io, const struct iovec *bufs, uint32_t n,
		 struct moe_msg *err);

/* Drain reads in flight, cancel queued ones (done with -ECANCELED),
 * stop the threads, close the file. Takes a handle in any state. */
void moe_io_close(struct moe_io *io);

/* Offset and memory alignment for O_DIRECT reads: at least 4096. */
uint32_t moe_io_block(const struct moe_io *io);

/* Queue r. Demand reads are issued before any queued prefetch. */
void moe_io_submit(struct moe_io *io, struct moe_io_req *r, bool prefetch);

/* A queued prefetch became a demand read: move what is left of it to the
 * demand queue. False if it is no longer queued. */
bool moe_io_promote(struct moe_io *io, struct moe_io_req *r);

/* Take back a queued request none of whose chunks was issued; done()
 * will not be called. False if it was issued already (or done). */
bool moe_io_cancel(struct moe_io *io, struct moe_io_req *r);

void moe_io_stats(struct moe_io *io, struct moe_io_stats *st);

/* The CPUs the io thread (the first pread thread) may run on, as the
 * kernel has them. 0, -ESRCH before moe_io_start, or -errno. */
int moe_io_affinity(struct moe_io *io, cpu_set_t *cpus);

/* Test hooks. inject: the next n reads overlapping [off, off + len)
 * complete with err (a negative errno) instead of their result. pause:
 * queued reads wait until unpaused. */
void moe_io_inject(struct moe_io *io, uint64_t off, uint64_t len,
		   uint32_t n, int err);
void moe_io_pause(struct moe_io *io, bool paused);

#endif
