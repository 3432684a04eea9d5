/* Cold streaming through the expert store: every expert of a ~1.6 GB
 * model wanted in turn, read with O_DIRECT (no page cache), in GB/s and
 * as a fraction of raw io_uring O_DIRECT reads of the same ranges at the
 * same queue depth and chunk size, measured in the same run (the machine
 * is shared: the ratio is the figure; the target is 0.9). The bench
 * writes the model into $TMPDIR itself and deletes it. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <liburing.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "dtype.h"
#include "gguf_write.h"
#include "model.h"
#include "store.h"

#define N_LAYER 4
#define N_EXPERT 32
#define N_EMBD 4096
#define N_FF 1536
#define QD 32
#define CHUNK (1u << 20)
#define BUDGET (512ull << 20)
#define BLK 4096
#define ROUNDS 5
#define FILL (8u << 20)

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- the model: a real GGUF layout, arbitrary bytes ---- */

static int declare(struct gguf_writer *w)
{
	static const char *const parts[3] = { "gate", "up", "down" };
	uint64_t rne[2] = { N_EMBD, N_EXPERT };
	uint64_t gu[3] = { N_EMBD, N_FF, N_EXPERT }, dn[3] = { N_FF, N_EMBD, N_EXPERT };
	char name[64];
	int rc = gguf_w_str(w, "general.architecture", "llama");

	rc = rc ? rc : gguf_w_u32(w, "llama.block_count", N_LAYER);
	rc = rc ? rc : gguf_w_u32(w, "llama.embedding_length", N_EMBD);
	rc = rc ? rc : gguf_w_u32(w, "llama.feed_forward_length", N_FF);
	rc = rc ? rc : gguf_w_u32(w, "llama.expert_count", N_EXPERT);
	rc = rc ? rc : gguf_w_u32(w, "llama.expert_used_count", 4);
	for (int l = 0; !rc && l < N_LAYER; l++) {
		snprintf(name, sizeof(name), "blk.%d.ffn_gate_inp.weight", l);
		rc = gguf_w_tensor(w, name, 2, rne, MOE_F32);
		for (int p = 0; !rc && p < 3; p++) {
			snprintf(name, sizeof(name), "blk.%d.ffn_%s_exps.weight", l, parts[p]);
			rc = gguf_w_tensor(w, name, 3, p == 2 ? dn : gu,
					   p == 2 ? MOE_Q6_K : MOE_Q4_K);
		}
	}
	return rc;
}

/* Header, then every data byte written (a sparse file would read holes),
 * synced and dropped from the page cache. */
static int write_model(const char *path, uint64_t *size)
{
	struct gguf_writer *w = gguf_writer_new(3, 32);
	uint8_t *buf = malloc(FILL);
	uint64_t at, end;
	int fd = -1, rc = -1;

	if (!w || !buf || declare(w))
		goto out;
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (fd < 0 || gguf_writer_write_header(w, fd))
		goto out;
	for (size_t i = 0; i < FILL; i++)
		buf[i] = (uint8_t)(i * 2654435761u >> 13);
	end = gguf_writer_file_size(w);
	for (at = gguf_writer_data_offset(w); at < end; at += FILL) {
		size_t n = end - at < FILL ? end - at : FILL;

		memcpy(buf, &at, sizeof(at));
		if (pwrite(fd, buf, n, (off_t)at) != (ssize_t)n)
			goto out;
	}
	if (fdatasync(fd) || posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED))
		goto out;
	*size = end;
	rc = 0;
out:
	if (fd >= 0)
		close(fd);
	free(buf);
	gguf_writer_free(w);
	return rc;
}

/* ---- raw io_uring: the same aligned ranges, chunks and depth ---- */

struct piece {
	uint64_t off;
	uint32_t len;
	uint64_t dst;
};

static uint64_t a_down(uint64_t x) { return x & ~(uint64_t)(BLK - 1); }
static uint64_t a_up(uint64_t x) { return a_down(x + BLK - 1); }

static uint64_t slot_size(const struct moe_model *m)
{
	uint64_t most = 0;

	for (uint32_t l = 0; l < m->n_layer; l++)
		for (uint32_t e = 0; e < m->layers[l].n_expert; e++) {
			const struct moe_ffn_mats *f = &m->layers[l].experts[e];
			const struct moe_mat *mt[3] = { &f->gate, &f->up, &f->down };
			uint64_t n = 0;

			for (int i = 0; i < 3; i++)
				n += a_up(mt[i]->off + mt[i]->size) - a_down(mt[i]->off);
			if (n > most)
				most = n;
		}
	return most;
}

/* Expert i goes to slot i % n_slots of the region, as a cache would. */
static struct piece *plan_pieces(const struct moe_model *m, uint64_t slot,
				 uint64_t n_slots, size_t *n_out)
{
	size_t cap = 4096, n = 0, i = 0;
	struct piece *pc = malloc(cap * sizeof(*pc));

	for (uint32_t l = 0; l < m->n_layer; l++)
		for (uint32_t e = 0; e < m->layers[l].n_expert; e++, i++) {
			const struct moe_ffn_mats *f = &m->layers[l].experts[e];
			const struct moe_mat *mt[3] = { &f->gate, &f->up, &f->down };
			uint64_t dst = (i % n_slots) * slot;

			for (int k = 0; k < 3; k++) {
				uint64_t a0 = a_down(mt[k]->off), a1 = a_up(mt[k]->off + mt[k]->size);

				for (uint64_t o = a0; o < a1; o += CHUNK) {
					if (n == cap)
						pc = realloc(pc, (cap *= 2) * sizeof(*pc));
					pc[n++] = (struct piece){ o, (uint32_t)(a1 - o < CHUNK ? a1 - o : CHUNK),
								  dst + (o - a0) };
				}
				dst += a1 - a0;
			}
		}
	*n_out = n;
	return pc;
}

static double raw_run(int fd, const struct piece *pc, size_t n, uint8_t *region,
		      uint64_t *bytes)
{
	struct io_uring ring;
	struct iovec iov = { region, BUDGET };
	size_t next = 0, done = 0;
	unsigned inflight = 0;
	double t;

	if (io_uring_queue_init(QD, &ring, 0) ||
	    io_uring_register_files(&ring, &fd, 1) ||
	    io_uring_register_buffers(&ring, &iov, 1)) {
		fprintf(stderr, "bench_store: io_uring setup failed\n");
		exit(1);
	}
	*bytes = 0;
	t = now();
	while (done < n) {
		struct io_uring_cqe *cqe;

		while (next < n && inflight < QD) {
			struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);

			io_uring_prep_read_fixed(sqe, 0, region + pc[next].dst,
						 pc[next].len, pc[next].off, 0);
			sqe->flags |= IOSQE_FIXED_FILE;
			next++;
			inflight++;
		}
		io_uring_submit_and_wait(&ring, 1);
		while (io_uring_peek_cqe(&ring, &cqe) == 0) {
			if (cqe->res < 0) {
				fprintf(stderr, "bench_store: raw read: %s\n", strerror(-cqe->res));
				exit(1);
			}
			*bytes += (uint64_t)cqe->res;
			io_uring_cqe_seen(&ring, cqe);
			inflight--;
			done++;
		}
	}
	t = now() - t;
	io_uring_queue_exit(&ring);
	return t;
}

/* ---- the store: want every expert, a window of them outstanding ---- */

static void wait_release(struct moe_store *s, uint32_t l, uint32_t e)
{
	struct moe_ffn_ptrs p;
	struct moe_msg err;

	if (moe_store_wait(s, l, e, &p, &err)) {
		fprintf(stderr, "bench_store: %s\n", err.text);
		exit(1);
	}
	moe_store_release(s, l, e);
}

static double store_run(const struct moe_model *m, struct moe_store_stats *st)
{
	struct moe_store_opts o = { .cache_bytes = BUDGET, .queue_depth = QD,
				    .chunk_bytes = CHUNK };
	uint32_t fifo[N_LAYER * N_EXPERT], head = 0, tail = 0, window;
	struct moe_ffn_ptrs p;
	struct moe_msg err;
	struct moe_store *s;
	double t;

	if (moe_store_open(&s, m, &o, &err)) {
		fprintf(stderr, "bench_store: %s\n", err.text);
		exit(1);
	}
	moe_store_stats(s, st);
	window = st->slots - 2;
	t = now();
	for (uint32_t l = 0; l < m->n_layer; l++)
		for (uint32_t e = 0; e < m->layers[l].n_expert; e++) {
			if (tail - head == window) {
				wait_release(s, fifo[head] / N_EXPERT, fifo[head] % N_EXPERT);
				head++;
			}
			if (moe_store_want(s, l, e, &p, &err) != 0) {
				fprintf(stderr, "bench_store: want: %s\n", err.text);
				exit(1);
			}
			fifo[tail++] = l * N_EXPERT + e;
		}
	for (; head < tail; head++)
		wait_release(s, fifo[head] / N_EXPERT, fifo[head] % N_EXPERT);
	t = now() - t;
	moe_store_stats(s, st);
	moe_store_close(s);
	return t;
}

static int bench(const char *path, uint64_t size)
{
	struct moe_model *m;
	struct moe_msg err;
	struct moe_store_stats st;
	uint64_t slot, raw_bytes = 0;
	double best_raw = 0, best_store = 0, busy_rate = 0;
	struct piece *pc;
	size_t n;
	uint8_t *region;
	int fd;

	if (moe_model_open(&m, path, &err)) {
		fprintf(stderr, "bench_store: %s\n", err.text);
		return 1;
	}
	fd = open(path, O_RDONLY | O_DIRECT);
	if (fd < 0) {
		printf("bench_store: O_DIRECT unavailable in this directory: skipped\n");
		moe_model_close(m);
		return 0;
	}
	slot = slot_size(m);
	pc = plan_pieces(m, slot, BUDGET / slot, &n);
	/* The same memory the store's slabs get: huge pages, faulted in. */
	region = mmap(NULL, BUDGET, PROT_READ | PROT_WRITE,
		      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	madvise(region, BUDGET, MADV_HUGEPAGE);
	memset(region, 0, BUDGET);
	printf("model %.2f GB: %u experts of %.1f MB in 3 ranges; QD %d, chunk %u KiB, budget %llu MiB\n",
	       size / 1e9, N_LAYER * N_EXPERT, m->layers[0].expert_bytes / 1e6,
	       QD, CHUNK >> 10, BUDGET >> 20);
	/* Whatever caches sit below O_DIRECT (a VM's host page cache) are
	 * brought to one state for both, and the order alternates. */
	raw_run(fd, pc, n, region, &raw_bytes);
	for (int r = 0; r < ROUNDS; r++) {
		double ts = r % 2 ? store_run(m, &st) : 0;
		double tr = raw_run(fd, pc, n, region, &raw_bytes);

		if (r % 2 == 0)
			ts = store_run(m, &st);
		double gr = raw_bytes / tr / 1e9, gs = st.bytes_read / ts / 1e9;

		printf("round %d: raw io_uring O_DIRECT %.2f GB/s, store %.2f GB/s (%s%s%s)\n",
		       r + 1, gr, gs, st.io_mode, st.direct ? ", O_DIRECT" : "",
		       st.fixed_buffers ? ", fixed buffers" : "");
		if (st.bytes_read != raw_bytes)
			printf("  note: store read %" PRIu64 " bytes, raw %" PRIu64 "\n",
			       st.bytes_read, raw_bytes);
		if (gr > best_raw)
			best_raw = gr;
		if (gs > best_store) {
			best_store = gs;
			busy_rate = st.bytes_read / st.read_seconds / 1e9;
		}
	}
	printf("raw   %.2f GB/s (best of %d)\n", best_raw, ROUNDS);
	printf("store %.2f GB/s (best of %d; %.2f GB/s over its read-busy time)\n",
	       best_store, ROUNDS, busy_rate);
	printf("ratio %.3f (target >= 0.9)%s\n", best_store / best_raw,
	       best_store / best_raw < 0.9 ? "  BELOW TARGET" : "");
	munmap(region, BUDGET);
	free(pc);
	close(fd);
	moe_model_close(m);
	return 0;
}

int main(void)
{
	const char *dir = getenv("TMPDIR");
	char path[4096];
	struct statvfs vfs;
	uint64_t size = 0;
	int rc;

	if (!dir || !*dir)
		dir = "/tmp";
	if (statvfs(dir, &vfs) == 0 &&
	    (uint64_t)vfs.f_bavail * vfs.f_frsize < (3ull << 30)) {
		printf("bench_store: less than 3 GB free in %s: skipped\n", dir);
		return 0;
	}
	snprintf(path, sizeof(path), "%s/moe-bench-store-%d.gguf", dir, (int)getpid());
	if (write_model(path, &size)) {
		fprintf(stderr, "bench_store: writing %s: %s\n", path, strerror(errno));
		unlink(path);
		return 1;
	}
	rc = bench(path, size);
	unlink(path);
	return rc;
}
