/* The I/O ceiling of a benchmark run: how fast the run could have been if
 * reading experts were the only cost. moed counts the bytes it read but
 * does not say which experts they were, so:
 *   1. which experts: the trace's requests (each one's distinct experts,
 *      in the order they completed) replayed against an LRU cache of
 *      moed's budget (slots as moed's store makes them), every miss one
 *      read of the expert's three ranges widened to the O_DIRECT block,
 *      as moed reads them;
 *   2. how many: those reads cut, or carried on with the trace's own
 *      uses, until their bytes are moed's bytes read in the run (equal
 *      where the experts' reads are of one size, else over by less than
 *      one expert's read);
 *   3. raw reads of exactly those bytes: O_DIRECT through io_uring, in
 *      chunks, at the queue depth that reads them fastest (a few depths
 *      are tried), with nothing else going on.
 * The model is only read, never cached: O_DIRECT bypasses the page cache
 * (where the file system refuses O_DIRECT, buffered reads, said so). */
#ifndef MOE_BENCH_IO_H
#define MOE_BENCH_IO_H

#include <stddef.h>
#include <stdint.h>

#include "diag.h"
#include "model.h"

/* O_DIRECT alignment for fd, as moed's store chooses it: at least 4096,
 * more where statx reports a larger DIO alignment, a power of two. */
uint32_t bench_dio_block(int fd);

/* Bytes one read of expert e of layer costs: its gate, up and down
 * ranges, each widened to blk. */
uint64_t bench_expert_read_bytes(const struct moe_model *m, uint32_t blk,
				 uint32_t layer, uint32_t e);

/* One request of the trace: its layer and distinct experts. */
struct bench_use {
	uint32_t layer;
	uint32_t n;
	const uint32_t *ids;
};

struct bench_read {
	uint32_t layer, expert;
};

/* Replay uses against an LRU cache of budget bytes (each resident expert
 * taking a slot of its layer's largest read, as in moed's store; the
 * experts of the request in hand are never evicted for each other).
 * *reads gets the misses in order (free() it), *n_reads their count,
 * *bytes the sum of their reads. 0 or -ENOMEM. */
int bench_ceiling_plan(const struct moe_model *m, uint32_t blk,
		       uint64_t budget, const struct bench_use *uses,
		       size_t n_uses, struct bench_read **reads,
		       size_t *n_reads, uint64_t *bytes);

/* Cut *reads (from bench_ceiling_plan) where their bytes reach target,
 * or extend it with the experts of uses, in order and round again, until
 * they do. *bytes gets their sum: target where every read is of one size,
 * else below target plus one read; less only if uses is empty. 0 or
 * -ENOMEM (*reads is still the caller's to free). */
int bench_ceiling_match(const struct moe_model *m, uint32_t blk,
			uint64_t target, const struct bench_use *uses,
			size_t n_uses, struct bench_read **reads,
			size_t *n_reads, uint64_t *bytes);

struct bench_ceiling {
	uint64_t bytes;      /* read in the timed pass */
	double seconds;      /* of the timed pass at the best depth */
	uint32_t queue_depth;
	uint32_t chunk;      /* bytes per read request */
	char how[128];       /* "io_uring, O_DIRECT", or the fallback taken */
};

/* Read the planned experts' bytes from the model's file (raw, no cache)
 * at each queue depth of a probe, then all of them at the best depth.
 * 0, or -errno with err naming the file and offset. */
int bench_ceiling_run(const struct moe_model *m, const struct bench_read *reads,
		      size_t n_reads, struct bench_ceiling *out,
		      struct moe_msg *err);

#endif
