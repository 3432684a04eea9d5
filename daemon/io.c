/* The io engine: a scheduler (two queues, chunking, queue depth) under one
 * mutex, drained either by one io_uring thread that submits and reaps, or
 * by a pool of pread threads. Expected load: tens to hundreds of
 * multi-MiB expert reads per second, wanted by several engine workers. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <liburing.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <moe/moeclient.h>

#include "io.h"
#include "log.h"
#include "topo.h"

#define DEF_QD 32
#define MAX_QD 1024
#define DEF_CHUNK (1u << 20)
#define MAX_CHUNK (1u << 30)
#define DEF_THREADS 4
#define MAX_THREADS 64
#define MIN_BLOCK 4096
#define N_INJECT 8
#define SQ_IDLE_MS 100
#define SQPOLL_SPIN_NS 200000 /* watch for completions this long */

#if defined(__x86_64__) || defined(__i386__)
#define cpu_relax() __builtin_ia32_pause()
#else
#define cpu_relax() ((void)0)
#endif

/* Q_NONE is 0 so that a zeroed request is in no queue. */
enum { Q_NONE, Q_DEMAND, Q_PREFETCH, N_QUEUES };

/* One read in flight: a piece of a request's segment. */
struct chunk {
	struct moe_io_req *r;
	struct chunk *next; /* free list */
	uint64_t off;
	uint8_t *buf;
	uint32_t len;
	uint32_t need;      /* bytes at the start that must arrive */
	bool direct;
	bool prefetch;
};

struct queue {
	struct moe_io_req *head, *tail;
};

struct inject {
	uint64_t off, len;
	uint32_t n;
	int err;
};

struct moe_io {
	pthread_mutex_t mu;   /* everything below but the ring */
	pthread_cond_t cv;    /* pread pool: work queued, or stop */
	struct queue q[N_QUEUES]; /* q[Q_NONE] unused */
	struct chunk *chunks, *free_chunks;
	uint32_t qd, pf_max, chunk_bytes, blk, want_threads;
	uint32_t inflight, inflight_pf;
	bool paused, stop;
	bool waiting;         /* io_uring thread is (about to be) blocked */
	bool direct;          /* new reads go to fd_direct */
	bool said_einval;
	int fd_direct, fd_buf;
	bool uring, sqpoll, fixed_files, fixed_bufs;
	struct io_uring ring; /* the io thread's alone once started */
	int efd;              /* wakes the io thread: a read is kept armed */
	bool efd_armed;
	uint64_t efd_val;
	pthread_t *threads;
	uint32_t n_threads;
	cpu_set_t cpus;       /* where the threads go, when pin */
	bool pin, pinned;
	uint64_t bytes, n_chunks, seq;
	double busy;
	struct timespec busy_t0;
	struct inject inj[N_INJECT];
	char *path;
};

static double since(const struct timespec *t0)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)(t.tv_sec - t0->tv_sec) +
	       (double)(t.tv_nsec - t0->tv_nsec) * 1e-9;
}

/* ---- queues and chunks (io->mu held) ---- */

static void q_push(struct moe_io *io, int qi, struct moe_io_req *r)
{
	struct queue *q = &io->q[qi];

	r->next = NULL;
	r->queue = (uint8_t)qi;
	if (q->tail)
		q->tail->next = r;
	else
		q->head = r;
	q->tail = r;
}

static void q_remove(struct moe_io *io, struct moe_io_req *r)
{
	struct queue *q = &io->q[r->queue];
	struct moe_io_req **pp = &q->head, *prev = NULL;

	while (*pp && *pp != r) {
		prev = *pp;
		pp = &(*pp)->next;
	}
	if (*pp) {
		*pp = r->next;
		if (q->tail == r)
			q->tail = prev;
	}
	r->next = NULL;
	r->queue = Q_NONE;
}

/* Cut the next piece of r's current segment into c. */
static void cut_chunk(struct moe_io *io, struct moe_io_req *r,
		      struct chunk *c)
{
	const struct moe_io_seg *g = &r->seg[r->cur_seg];
	uint64_t len = g->len - r->cur_at, need_end = g->off + g->need;

	if (len > io->chunk_bytes)
		len = io->chunk_bytes;
	c->r = r;
	c->off = g->off + r->cur_at;
	c->buf = g->buf + r->cur_at;
	c->len = (uint32_t)len;
	c->need = need_end <= c->off ? 0 :
		  need_end - c->off < len ? (uint32_t)(need_end - c->off) :
					    (uint32_t)len;
	c->direct = io->direct;
	r->cur_at += len;
	if (r->cur_at == g->len) {
		r->cur_seg++;
		r->cur_at = 0;
	}
	if (r->cur_seg == r->n_seg)
		q_remove(io, r);
	if (!r->seq)
		r->seq = ++io->seq;
	r->inflight++;
}

/* The next chunk to issue, or NULL. Demand reads first; prefetches only
 * with no demand queued and at most pf_max of them in flight, so that a
 * demand read arriving next finds free depth at once. */
static struct chunk *next_chunk(struct moe_io *io)
{
	struct moe_io_req *r = io->q[Q_DEMAND].head;
	bool pf = false;
	struct chunk *c;

	if (io->paused || io->inflight >= io->qd || !io->free_chunks)
		return NULL;
	if (!r) {
		r = io->q[Q_PREFETCH].head;
		pf = true;
		if (!r || io->inflight_pf >= io->pf_max)
			return NULL;
	}
	c = io->free_chunks;
	io->free_chunks = c->next;
	cut_chunk(io, r, c);
	c->prefetch = pf;
	io->inflight_pf += pf;
	if (io->inflight++ == 0)
		clock_gettime(CLOCK_MONOTONIC, &io->busy_t0);
	io->n_chunks++;
	return c;
}

static int injected(struct moe_io *io, const struct chunk *c, int res)
{
	for (int i = 0; i < N_INJECT; i++) {
		struct inject *j = &io->inj[i];

		if (j->n && c->off < j->off + j->len &&
		    j->off < c->off + c->len) {
			j->n--;
			return j->err;
		}
	}
	return res;
}

/* The first failure of a request is the one reported; its chunks not yet
 * issued never will be. */
static int fail(struct moe_io *io, struct chunk *c, int rc, uint64_t off,
		bool is_short)
{
	struct moe_io_req *r = c->r;

	if (!r->rc) {
		r->rc = rc;
		r->err_off = off;
		r->err_short = is_short;
		if (r->queue != Q_NONE)
			q_remove(io, r);
	}
	return rc;
}

static void fall_back_buffered(struct moe_io *io)
{
	io->direct = false;
	if (io->said_einval)
		return;
	io->said_einval = true;
	moe_log(MOE_LOG_WARNING,
		"%s: an O_DIRECT read was refused (EINVAL): buffered reads from now on",
		io->path);
}

/* What a finished read means for its chunk: 0 done, 1 issue it again
 * (the rest of a partial read, or the same read buffered after O_DIRECT
 * refused it), or a negative error now recorded in its request. */
static int chunk_result(struct moe_io *io, struct chunk *c, int res)
{
	res = injected(io, c, res);
	if (res == -EINVAL && c->direct) {
		fall_back_buffered(io);
		c->direct = false;
		return 1;
	}
	if (res < 0)
		return fail(io, c, res, c->off, false);
	io->bytes += (uint32_t)res;
	c->r->bytes += (uint32_t)res;
	if ((uint32_t)res >= c->need)
		return 0;
	/* Short of what the range needs: at the end of the file (nothing,
	 * or an O_DIRECT read ending off a block), or a partial read. */
	if (res == 0 || (c->direct && (uint32_t)res % io->blk))
		return fail(io, c, -EIO, c->off + (uint32_t)res, true);
	c->off += (uint32_t)res;
	c->buf += res;
	c->len -= (uint32_t)res;
	c->need -= (uint32_t)res;
	return 1;
}

/* Retire c; returns its request if that was its last chunk. */
static struct moe_io_req *chunk_finish(struct moe_io *io, struct chunk *c)
{
	struct moe_io_req *r = c->r;

	io->inflight_pf -= c->prefetch;
	if (--io->inflight == 0)
		io->busy += since(&io->busy_t0);
	c->next = io->free_chunks;
	io->free_chunks = c;
	if (--r->inflight || r->queue != Q_NONE)
		return NULL;
	return r;
}

/* Callbacks run with no io lock held: they take the store's lock, and the
 * store calls in here with its lock held. The next pointer is read first
 * because done() may hand r straight back to moe_io_submit(). */
static void run_done(struct moe_io_req *r)
{
	while (r) {
		struct moe_io_req *n = r->next;

		r->next = NULL;
		r->done(r);
		r = n;
	}
}

static struct moe_io_req *cancel_queued(struct moe_io *io)
{
	struct moe_io_req *list = NULL;

	for (int qi = Q_DEMAND; qi <= Q_PREFETCH; qi++) {
		struct moe_io_req *r;

		while ((r = io->q[qi].head)) {
			q_remove(io, r);
			if (!r->rc)
				r->rc = -ECANCELED;
			if (!r->inflight) {
				r->next = list;
				list = r;
			}
		}
	}
	return list;
}

/* Wake whoever drains the queues. The io_uring thread is woken through
 * the eventfd only when it said it would block (waiting, set under mu
 * before it sleeps), so a busy thread costs no syscall. */
static void kick(struct moe_io *io)
{
	uint64_t one = 1;

	if (!io->uring) {
		pthread_cond_broadcast(&io->cv);
		return;
	}
	if (!io->waiting)
		return;
	io->waiting = false;
	if (write(io->efd, &one, sizeof(one)) < 0) {
		/* EAGAIN only, at a counter near 2^64: it is armed anyway. */
	}
}

/* ---- io_uring backend: one thread owns the ring ---- */

static struct io_uring_sqe *get_sqe(struct moe_io *io)
{
	struct io_uring_sqe *sqe;

	/* The ring holds qd + 1 entries and at most that many reads are
	 * ever outstanding, so this loop is a safety net. */
	while (!(sqe = io_uring_get_sqe(&io->ring))) {
		if (io->sqpoll)
			io_uring_sqring_wait(&io->ring);
		else
			io_uring_submit(&io->ring);
	}
	return sqe;
}

static void uring_prep(struct moe_io *io, struct chunk *c)
{
	struct io_uring_sqe *sqe = get_sqe(io);
	int fd = c->direct ? io->fd_direct : io->fd_buf;

	if (io->fixed_files)
		fd = c->direct ? 0 : 1;
	if (io->fixed_bufs && c->r->buf_index != MOE_IO_NOBUF)
		io_uring_prep_read_fixed(sqe, fd, c->buf, c->len, c->off,
					 (int)c->r->buf_index);
	else
		io_uring_prep_read(sqe, fd, c->buf, c->len, c->off);
	if (io->fixed_files)
		sqe->flags |= IOSQE_FIXED_FILE;
	io_uring_sqe_set_data(sqe, c);
}

static void arm_efd(struct moe_io *io)
{
	struct io_uring_sqe *sqe = get_sqe(io);

	io_uring_prep_read(sqe, io->efd, &io->efd_val, sizeof(io->efd_val), 0);
	io_uring_sqe_set_data(sqe, NULL);
	io->efd_armed = true;
}

static void uring_complete(struct moe_io *io, struct chunk *c, int res,
			   struct moe_io_req **done)
{
	struct moe_io_req *r;

	if (chunk_result(io, c, res) == 1 && !c->r->rc) {
		uring_prep(io, c);
		return;
	}
	r = chunk_finish(io, c);
	if (r) {
		r->next = *done;
		*done = r;
	}
}

static void uring_reap(struct moe_io *io)
{
	struct moe_io_req *done = NULL;
	struct io_uring_cqe *cqe;
	unsigned head, n = 0;

	pthread_mutex_lock(&io->mu);
	io_uring_for_each_cqe(&io->ring, head, cqe) {
		struct chunk *c = io_uring_cqe_get_data(cqe);

		n++;
		if (c)
			uring_complete(io, c, cqe->res, &done);
		else
			io->efd_armed = false;
	}
	io_uring_cq_advance(&io->ring, n);
	pthread_mutex_unlock(&io->mu);
	run_done(done);
}

/* With SQPOLL the kernel's thread takes our submissions without a system
 * call; while reads are in flight, watch the completion ring a while
 * for them too, so that a busy store enters the kernel only when it goes
 * idle (or the SQ thread has gone to sleep and must be woken, which
 * io_uring_submit does). True if completions are ready. */
static bool sqpoll_poll(struct moe_io *io)
{
	struct timespec t0, t;

	io_uring_submit(&io->ring);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	do {
		for (int i = 0; i < 64; i++) {
			if (io_uring_cq_ready(&io->ring))
				return true;
			cpu_relax();
		}
		clock_gettime(CLOCK_MONOTONIC, &t);
	} while ((t.tv_sec - t0.tv_sec) * 1000000000L + t.tv_nsec - t0.tv_nsec <
		 SQPOLL_SPIN_NS);
	return false;
}

static void *uring_main(void *arg)
{
	struct moe_io *io = arg;
	struct chunk *c;
	bool busy;

	pthread_mutex_lock(&io->mu);
	for (;;) {
		if (!io->efd_armed)
			arm_efd(io);
		while ((c = next_chunk(io)))
			uring_prep(io, c);
		if (io->stop && !io->inflight)
			break;
		busy = io->inflight > 0;
		io->waiting = true;
		pthread_mutex_unlock(&io->mu);
		if (!io->sqpoll || !busy || !sqpoll_poll(io))
			io_uring_submit_and_wait(&io->ring, 1);
		uring_reap(io);
		pthread_mutex_lock(&io->mu);
		io->waiting = false;
	}
	pthread_mutex_unlock(&io->mu);
	return NULL;
}

/* ---- pread backend: each thread runs one chunk at a time ---- */

static int pread_once(int fd, uint8_t *buf, uint32_t len, uint64_t off)
{
	ssize_t n;

	do
		n = pread(fd, buf, len, (off_t)off);
	while (n < 0 && errno == EINTR);
	return n < 0 ? -errno : (int)n;
}

/* Called and returns with io->mu held; drops it around the read and the
 * callback. */
static void pread_chunk(struct moe_io *io, struct chunk *c)
{
	struct moe_io_req *r;
	int rc;

	do {
		int fd = c->direct ? io->fd_direct : io->fd_buf;
		int res;

		pthread_mutex_unlock(&io->mu);
		res = pread_once(fd, c->buf, c->len, c->off);
		pthread_mutex_lock(&io->mu);
		rc = chunk_result(io, c, res);
	} while (rc == 1 && !c->r->rc);
	r = chunk_finish(io, c);
	if (r) {
		pthread_mutex_unlock(&io->mu);
		r->next = NULL;
		run_done(r);
		pthread_mutex_lock(&io->mu);
	}
}

static void *pread_main(void *arg)
{
	struct moe_io *io = arg;

	pthread_mutex_lock(&io->mu);
	for (;;) {
		struct chunk *c = next_chunk(io);

		if (c) {
			pread_chunk(io, c);
			continue;
		}
		if (io->stop)
			break;
		pthread_cond_wait(&io->cv, &io->mu);
	}
	pthread_mutex_unlock(&io->mu);
	return NULL;
}

/* ---- setup ---- */

/* O_DIRECT alignment from statx where the kernel reports it (6.1+); at
 * least a page, which also keeps registered buffers page-aligned. */
static uint32_t dio_block(int fd)
{
	struct statx sx;
	uint32_t b = MIN_BLOCK, want = MIN_BLOCK;

	if (statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) == 0 &&
	    (sx.stx_mask & STATX_DIOALIGN)) {
		if (sx.stx_dio_offset_align > want)
			want = sx.stx_dio_offset_align;
		if (sx.stx_dio_mem_align > want)
			want = sx.stx_dio_mem_align;
	}
	while (b < want)
		b <<= 1;
	return b;
}

static int open_files(struct moe_io *io, const struct moe_io_opts *o,
		      struct moe_msg *err)
{
	io->fd_buf = open(io->path, O_RDONLY | O_CLOEXEC);
	if (io->fd_buf < 0)
		return moe_msgf(err, -errno, "%s: open: %s", io->path,
				moe_strerror(-errno));
	io->blk = dio_block(io->fd_buf);
	if (o->buffered) {
		moe_log(MOE_LOG_NOTICE, "%s: buffered reads (O_DIRECT off by option)",
			io->path);
		return 0;
	}
	io->fd_direct = open(io->path, O_RDONLY | O_CLOEXEC | O_DIRECT);
	if (io->fd_direct >= 0) {
		io->direct = true;
		return 0;
	}
	if (errno != EINVAL)
		return moe_msgf(err, -errno, "%s: open with O_DIRECT: %s",
				io->path, moe_strerror(-errno));
	moe_log(MOE_LOG_WARNING,
		"%s: the file system refuses O_DIRECT: buffered reads", io->path);
	return 0;
}

static int first_cpu(const cpu_set_t *s)
{
	for (int i = 0; i < CPU_SETSIZE; i++)
		if (CPU_ISSET(i, s))
			return i;
	return -1;
}

static int ring_init(struct moe_io *io, bool sqpoll)
{
	struct io_uring_params p;
	int rc;

	memset(&p, 0, sizeof(p));
	if (sqpoll) {
		p.flags = IORING_SETUP_SQPOLL;
		p.sq_thread_idle = SQ_IDLE_MS;
	}
	/* The SQPOLL thread submits for us: it belongs near the device
	 * too. A CPU it may not use is no reason to go without it. */
	if (sqpoll && io->pin) {
		p.flags |= IORING_SETUP_SQ_AFF;
		p.sq_thread_cpu = (uint32_t)first_cpu(&io->cpus);
	}
	/* One entry more than the depth: the eventfd read stays armed. */
	rc = io_uring_queue_init_params(io->qd + 1, &io->ring, &p);
	if (rc == -EINVAL && (p.flags & IORING_SETUP_SQ_AFF)) {
		memset(&p, 0, sizeof(p));
		p.flags = IORING_SETUP_SQPOLL;
		p.sq_thread_idle = SQ_IDLE_MS;
		rc = io_uring_queue_init_params(io->qd + 1, &io->ring, &p);
	}
	return rc;
}

/* Probe io_uring by setting it up: the kernel version says nothing about
 * seccomp filters or kernel.io_uring_disabled. */
static int uring_setup(struct moe_io *io, const struct moe_io_opts *o)
{
	int fds[2], rc;

	rc = ring_init(io, o->sqpoll);
	if (rc && o->sqpoll) {
		moe_log(MOE_LOG_WARNING,
			"%s: io_uring SQPOLL refused (%s): submitting from the io thread",
			io->path, moe_strerror(rc));
		rc = ring_init(io, false);
	}
	if (rc)
		return rc;
	io->sqpoll = !!(io->ring.flags & IORING_SETUP_SQPOLL);
	io->efd = eventfd(0, EFD_CLOEXEC);
	if (io->efd < 0) {
		rc = -errno;
		io_uring_queue_exit(&io->ring);
		return rc;
	}
	io->uring = true;
	fds[0] = io->fd_direct >= 0 ? io->fd_direct : io->fd_buf;
	fds[1] = io->fd_buf;
	io->fixed_files = io_uring_register_files(&io->ring, fds, 2) == 0;
	return 0;
}

static int pick_backend(struct moe_io *io, const struct moe_io_opts *o,
			struct moe_msg *err)
{
	int rc;

	if (o->force_pread) {
		moe_log(MOE_LOG_NOTICE,
			"%s: reads go to a pool of %u pread threads (by option)",
			io->path, io->want_threads);
		return 0;
	}
	rc = uring_setup(io, o);
	if (!rc)
		return 0;
	if (o->require_uring)
		return moe_msgf(err, rc, "%s: io_uring cannot be set up: %s",
				io->path, moe_strerror(rc));
	moe_log(MOE_LOG_WARNING,
		"%s: io_uring cannot be set up (%s): reads go to a pool of %u pread threads",
		io->path, moe_strerror(rc), io->want_threads);
	return 0;
}

static void set_limits(struct moe_io *io, const struct moe_io_opts *o)
{
	io->qd = o->queue_depth ? o->queue_depth : DEF_QD;
	if (io->qd > MAX_QD)
		io->qd = MAX_QD;
	io->pf_max = io->qd - io->qd / 4;
	io->chunk_bytes = o->chunk_bytes ? o->chunk_bytes : DEF_CHUNK;
	if (io->chunk_bytes > MAX_CHUNK)
		io->chunk_bytes = MAX_CHUNK;
	io->chunk_bytes &= ~(io->blk - 1);
	if (!io->chunk_bytes)
		io->chunk_bytes = io->blk;
	io->want_threads = o->threads ? o->threads : DEF_THREADS;
	if (io->want_threads > MAX_THREADS)
		io->want_threads = MAX_THREADS;
}

static int alloc_chunks(struct moe_io *io)
{
	io->chunks = calloc(io->qd, sizeof(*io->chunks));
	if (!io->chunks)
		return -ENOMEM;
	for (uint32_t i = 0; i < io->qd; i++) {
		io->chunks[i].next = io->free_chunks;
		io->free_chunks = &io->chunks[i];
	}
	return 0;
}

int moe_io_open(struct moe_io **out, const char *path,
		const struct moe_io_opts *o, struct moe_msg *err)
{
	struct moe_io *io = calloc(1, sizeof(*io));
	int rc = -ENOMEM;

	if (!io)
		return moe_msgf(err, -ENOMEM, "out of memory");
	pthread_mutex_init(&io->mu, NULL);
	pthread_cond_init(&io->cv, NULL);
	io->fd_direct = io->fd_buf = io->efd = -1;
	if (o->cpus && CPU_COUNT(o->cpus)) {
		io->cpus = *o->cpus;
		io->pin = true;
	}
	io->path = strdup(path);
	if (!io->path) {
		moe_msgf(err, rc, "out of memory");
		goto err;
	}
	rc = open_files(io, o, err);
	if (rc)
		goto err;
	set_limits(io, o);
	rc = alloc_chunks(io);
	if (rc) {
		moe_msgf(err, rc, "out of memory");
		goto err;
	}
	rc = pick_backend(io, o, err);
	if (rc)
		goto err;
	*out = io;
	return 0;
err:
	moe_io_close(io);
	return rc;
}

static void register_buffers(struct moe_io *io, const struct iovec *bufs,
			     uint32_t n)
{
	uint64_t total = 0;
	struct rlimit rl = { 0, 0 };
	int rc;

	if (!io->uring || !n)
		return;
	rc = io_uring_register_buffers(&io->ring, bufs, n);
	if (!rc) {
		io->fixed_bufs = true;
		return;
	}
	for (uint32_t i = 0; i < n; i++)
		total += bufs[i].iov_len;
	getrlimit(RLIMIT_MEMLOCK, &rl);
	moe_log(MOE_LOG_WARNING,
		"%s: cannot register %" PRIu64 " bytes of slabs as fixed buffers (%s; RLIMIT_MEMLOCK %" PRIu64 "): plain reads",
		io->path, total, moe_strerror(rc), (uint64_t)rl.rlim_cur);
}

/* Started on its CPUs, so that its stack is local as well. CPUs the
 * kernel refuses (offline, outside our cpuset): said once, then the
 * threads run unpinned. */
static int start_thread(struct moe_io *io, pthread_t *th,
			void *(*fn)(void *))
{
	char cpus[256];
	pthread_attr_t attr;
	int rc;

	if (!io->pin)
		return pthread_create(th, NULL, fn, io);
	pthread_attr_init(&attr);
	pthread_attr_setaffinity_np(&attr, sizeof(io->cpus), &io->cpus);
	rc = pthread_create(th, &attr, fn, io);
	pthread_attr_destroy(&attr);
	if (rc != EINVAL) {
		io->pinned = !rc;
		return rc;
	}
	io->pin = false;
	moe_log(MOE_LOG_WARNING,
		"%s: cannot run the io threads on cpus %s (%s): they run unpinned",
		io->path, moe_cpuset_str(&io->cpus, cpus, sizeof(cpus)),
		moe_strerror(-rc));
	return pthread_create(th, NULL, fn, io);
}

static int start_threads(struct moe_io *io, uint32_t n,
			 void *(*fn)(void *), struct moe_msg *err)
{
	int rc;

	io->threads = calloc(n, sizeof(*io->threads));
	if (!io->threads)
		return moe_msgf(err, -ENOMEM, "out of memory");
	for (uint32_t i = 0; i < n; i++) {
		rc = start_thread(io, &io->threads[i], fn);
		if (rc)
			return moe_msgf(err, -rc, "cannot start an io thread: %s",
					moe_strerror(rc));
		io->n_threads++;
	}
	return 0;
}

int moe_io_start(struct moe_io *io, const struct iovec *bufs, uint32_t n,
		 struct moe_msg *err)
{
	register_buffers(io, bufs, n);
	if (io->uring)
		return start_threads(io, 1, uring_main, err);
	return start_threads(io, io->want_threads, pread_main, err);
}

void moe_io_close(struct moe_io *io)
{
	struct moe_io_req *cancelled;

	if (!io)
		return;
	pthread_mutex_lock(&io->mu);
	io->stop = true;
	cancelled = cancel_queued(io);
	io->waiting = io->uring; /* a stopping thread may not be waiting */
	kick(io);
	pthread_mutex_unlock(&io->mu);
	run_done(cancelled);
	for (uint32_t i = 0; i < io->n_threads; i++)
		pthread_join(io->threads[i], NULL);
	if (io->uring)
		io_uring_queue_exit(&io->ring);
	if (io->efd >= 0)
		close(io->efd);
	if (io->fd_direct >= 0)
		close(io->fd_direct);
	if (io->fd_buf >= 0)
		close(io->fd_buf);
	free(io->threads);
	free(io->chunks);
	free(io->path);
	pthread_cond_destroy(&io->cv);
	pthread_mutex_destroy(&io->mu);
	free(io);
}

uint32_t moe_io_block(const struct moe_io *io)
{
	return io->blk;
}

/* ---- use ---- */

void moe_io_submit(struct moe_io *io, struct moe_io_req *r, bool prefetch)
{
	r->rc = 0;
	r->err_short = false;
	r->err_off = 0;
	r->bytes = 0;
	r->seq = 0;
	r->cur_seg = 0;
	r->cur_at = 0;
	r->inflight = 0;
	pthread_mutex_lock(&io->mu);
	q_push(io, prefetch ? Q_PREFETCH : Q_DEMAND, r);
	kick(io);
	pthread_mutex_unlock(&io->mu);
}

bool moe_io_promote(struct moe_io *io, struct moe_io_req *r)
{
	bool moved = false;

	pthread_mutex_lock(&io->mu);
	if (r->queue == Q_PREFETCH) {
		q_remove(io, r);
		q_push(io, Q_DEMAND, r);
		kick(io);
		moved = true;
	}
	pthread_mutex_unlock(&io->mu);
	return moved;
}

bool moe_io_cancel(struct moe_io *io, struct moe_io_req *r)
{
	bool ok;

	pthread_mutex_lock(&io->mu);
	ok = r->queue != Q_NONE && !r->seq;
	if (ok)
		q_remove(io, r);
	pthread_mutex_unlock(&io->mu);
	return ok;
}

void moe_io_stats(struct moe_io *io, struct moe_io_stats *st)
{
	pthread_mutex_lock(&io->mu);
	st->bytes = io->bytes;
	st->busy_seconds = io->busy;
	if (io->inflight)
		st->busy_seconds += since(&io->busy_t0);
	st->chunks = io->n_chunks;
	st->mode = !io->uring ? "pread" :
		   io->sqpoll ? "io_uring+sqpoll" : "io_uring";
	st->direct = io->direct;
	st->fixed_buffers = io->fixed_bufs;
	st->pinned = io->pinned;
	pthread_mutex_unlock(&io->mu);
}

int moe_io_affinity(struct moe_io *io, cpu_set_t *cpus)
{
	if (!io->n_threads)
		return -ESRCH;
	return -pthread_getaffinity_np(io->threads[0], sizeof(*cpus), cpus);
}

void moe_io_inject(struct moe_io *io, uint64_t off, uint64_t len,
		   uint32_t n, int err)
{
	pthread_mutex_lock(&io->mu);
	for (int i = 0; i < N_INJECT; i++) {
		if (io->inj[i].n)
			continue;
		io->inj[i] = (struct inject){ off, len, n, err };
		break;
	}
	pthread_mutex_unlock(&io->mu);
}

void moe_io_pause(struct moe_io *io, bool paused)
{
	pthread_mutex_lock(&io->mu);
	io->paused = paused;
	if (!paused)
		kick(io);
	pthread_mutex_unlock(&io->mu);
}
