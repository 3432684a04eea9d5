/* The expert store on models moe-gen (or the GGUF writer) makes: engines
 * over the store on a quarter budget give the mmap source's bits in every
 * io mode; each eviction policy on a scripted sequence; shared reads;
 * prefetch order and accounting; slot classes; the fallbacks, forced by
 * option and provoked with seccomp in a child; the fault family: a
 * truncated file, injected EIO, O_DIRECT refused, a budget too small;
 * and placement: pools per node of a plan, copies and moved owners
 * followed, the io threads on the plan's CPUs. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <liburing.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include <moe/moeclient.h>

#include "dtype.h"
#include "engine.h"
#include "gguf_write.h"
#include "log.h"
#include "model.h"
#include "plan.h"
#include "quant.h"
#include "source.h"
#include "store.h"
#include "testutil.h"
#include "topo.h"

/* ---- log capture: "said once" is checked by counting lines ---- */

static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static char log_buf[1 << 16];
static size_t log_len;

static void log_capture(void *ctx, enum moe_log_level level, const char *msg)
{
	pthread_mutex_lock(&log_mu);
	log_len += (size_t)snprintf(log_buf + log_len, sizeof(log_buf) - log_len,
				    "%s\n", msg);
	if (log_len >= sizeof(log_buf))
		log_len = sizeof(log_buf) - 1;
	pthread_mutex_unlock(&log_mu);
	if (getenv("STORE_TEST_LOG"))
		fprintf(stderr, "<%d>%s\n", (int)level, msg);
}

static void log_clear(void)
{
	pthread_mutex_lock(&log_mu);
	log_len = 0;
	log_buf[0] = 0;
	pthread_mutex_unlock(&log_mu);
}

static int log_count(const char *needle)
{
	int n = 0;

	pthread_mutex_lock(&log_mu);
	for (const char *p = log_buf; (p = strstr(p, needle)); p++)
		n++;
	pthread_mutex_unlock(&log_mu);
	return n;
}

/* ---- fixtures ---- */

struct fx {
	char path[256];
	struct moe_model *m;
	struct moe_store *s;
	uint8_t *file;     /* the whole file, to check slot contents */
	size_t file_len;
};

static void load_file(struct fx *f)
{
	int fd = open(f->path, O_RDONLY);
	struct stat st;

	assert_true(fd >= 0);
	assert_int_equal(fstat(fd, &st), 0);
	f->file_len = (size_t)st.st_size;
	f->file = malloc(f->file_len);
	assert_int_equal(pread(fd, f->file, f->file_len, 0), (ssize_t)f->file_len);
	close(fd);
}

static void open_model_at(struct fx *f)
{
	struct moe_msg err = { "" };

	if (moe_model_open(&f->m, f->path, &err))
		fail_msg("%s", err.text);
	load_file(f);
}

static void gen_model(struct fx *f, const char *args)
{
	memset(f, 0, sizeof(*f));
	tmp_path(f->path, sizeof(f->path), "store");
	assert_int_equal(run_cmd("%s/moe-gen %s -q %s", bin_dir(), f->path, args), 0);
	open_model_at(f);
}

static void close_fx(struct fx *f)
{
	moe_store_close(f->s);
	f->s = NULL;
	moe_model_close(f->m);
	free(f->file);
}

static void open_store(struct fx *f, const struct moe_store_opts *o)
{
	struct moe_msg err = { "" };
	int rc = moe_store_open(&f->s, f->m, o, &err);

	if (rc)
		fail_msg("moe_store_open: %d %s", rc, err.text);
}

static struct moe_store_stats stats(struct fx *f)
{
	struct moe_store_stats st;

	moe_store_stats(f->s, &st);
	return st;
}

/* The largest slot for this model on this file system. */
static uint64_t slot_bytes(struct fx *f)
{
	struct moe_store_opts o = { .cache_bytes = 1ull << 30 };
	uint64_t b;

	open_store(f, &o);
	b = stats(f).slot_bytes;
	moe_store_close(f->s);
	f->s = NULL;
	return b;
}

static void check_bytes(struct fx *f, uint32_t l, uint32_t e,
			const struct moe_ffn_ptrs *p)
{
	const struct moe_ffn_mats *x = &f->m->layers[l].experts[e];

	assert_true(x->down.off + x->down.size <= f->file_len);
	if (memcmp(p->gate, f->file + x->gate.off, x->gate.size) ||
	    memcmp(p->up, f->file + x->up.off, x->up.size) ||
	    memcmp(p->down, f->file + x->down.off, x->down.size))
		fail_msg("layer %u expert %u: slot bytes differ from the file", l, e);
}

static bool held_ok(struct fx *f, uint32_t l, uint32_t e,
		    const struct moe_ffn_ptrs *p)
{
	const struct moe_ffn_mats *x = &f->m->layers[l].experts[e];

	return !memcmp(p->gate, f->file + x->gate.off, x->gate.size) &&
	       !memcmp(p->up, f->file + x->up.off, x->up.size) &&
	       !memcmp(p->down, f->file + x->down.off, x->down.size);
}

/* want, wait if needed; the reference is kept. */
static void get(struct fx *f, uint32_t l, uint32_t e, struct moe_ffn_ptrs *p)
{
	struct moe_msg err = { "" };
	int rc = moe_store_want(f->s, l, e, p, &err);

	if (rc == 0)
		rc = moe_store_wait(f->s, l, e, p, &err);
	if (rc < 0)
		fail_msg("layer %u expert %u: %d %s", l, e, rc, err.text);
	check_bytes(f, l, e, p);
}

static void use(struct fx *f, uint32_t l, uint32_t e)
{
	struct moe_ffn_ptrs p;

	get(f, l, e, &p);
	moe_store_release(f->s, l, e);
}

static void wait_resident(struct fx *f, uint32_t l, uint32_t e)
{
	for (int i = 0; i < 5000 && !moe_store_resident(f->s, l, e); i++)
		usleep(1000);
	assert_true(moe_store_resident(f->s, l, e));
}

/* Nothing referenced, pending or failed; the budget holds. */
static void check_idle(struct fx *f)
{
	struct moe_store_stats st = stats(f);

	assert_int_equal(st.slots_busy, 0);
	assert_true(st.resident_experts <= st.slots);
	assert_true(st.resident_bytes <= st.budget_bytes);
	assert_true(st.slab_bytes <= st.budget_bytes);
}

/* ---- engines over the store against the mmap source ---- */

struct checker {
	struct moe_store *s;
	atomic_bool stop;   /* relaxed: only ends the loop */
	atomic_int bad;     /* relaxed: read after join */
	atomic_int rounds;
};

/* Resident bytes within the budget at every moment it looks. */
static void *check_main(void *a)
{
	struct checker *c = a;

	while (!atomic_load_explicit(&c->stop, memory_order_relaxed)) {
		struct moe_store_stats st;

		moe_store_stats(c->s, &st);
		if (st.resident_bytes > st.budget_bytes ||
		    st.resident_experts > st.slots)
			atomic_fetch_add_explicit(&c->bad, 1, memory_order_relaxed);
		atomic_fetch_add_explicit(&c->rounds, 1, memory_order_relaxed);
		usleep(200);
	}
	return NULL;
}

/* Forward batches of 1..max_nt tokens through every MoE layer on both
 * engines, the store's prefetching the next layer when asked, its budget
 * lowered to `shrink` (if not 0) halfway; outputs must match bit for
 * bit. */
static void engine_run(struct fx *f, const struct moe_store_opts *o,
		       uint32_t batches, uint32_t max_nt, bool prefetch,
		       uint64_t shrink)
{
	struct moe_engine_opts eo = { .threads = 2 };
	struct moe_expert_src ms_src, st_src;
	struct moe_engine *e_map, *e_store;
	struct moe_mapsrc *ms;
	struct checker ck = { .s = NULL };
	struct moe_msg err = { "" };
	uint32_t n_embd = f->m->n_embd;
	float *x = malloc((size_t)max_nt * n_embd * sizeof(float));
	float *y1 = malloc((size_t)max_nt * n_embd * sizeof(float));
	float *y2 = malloc((size_t)max_nt * n_embd * sizeof(float));
	struct trng rng = { 77 };
	pthread_t th;

	open_store(f, o);
	assert_int_equal(moe_mapsrc_open(&ms, f->m, &ms_src, &err), 0);
	moe_store_source(f->s, &st_src);
	if (moe_engine_new(&e_map, f->m, &ms_src, &eo, &err) ||
	    moe_engine_new(&e_store, f->m, &st_src, &eo, &err))
		fail_msg("%s", err.text);
	moe_engine_set_prefetch(e_store, prefetch);
	ck.s = f->s;
	pthread_create(&th, NULL, check_main, &ck);
	for (uint32_t b = 0; b < batches; b++) {
		uint32_t nt = 1 + (uint32_t)(trng_next(&rng) % max_nt);

		if (shrink && b == batches / 2 &&
		    moe_store_set_budget(f->s, shrink, &err))
			fail_msg("%s", err.text);
		trng_fill(&rng, x, (size_t)nt * n_embd, -1.5f, 1.5f);
		for (uint32_t l = 0; l < f->m->n_layer; l++) {
			struct moe_store_stats st;

			if (!f->m->layers[l].moe)
				continue;
			if (moe_engine_forward(e_map, l, x, nt, NULL, NULL, y1, &err))
				fail_msg("mapsrc: %s", err.text);
			if (moe_engine_forward(e_store, l, x, nt, NULL, NULL, y2, &err))
				fail_msg("batch %u layer %u: %s", b, l, err.text);
			if (memcmp(y1, y2, (size_t)nt * n_embd * sizeof(float)))
				fail_msg("batch %u layer %u: outputs differ", b, l);
			st = stats(f);
			assert_true(st.resident_bytes <= st.budget_bytes);
		}
	}
	atomic_store_explicit(&ck.stop, true, memory_order_relaxed);
	pthread_join(th, NULL);
	assert_int_equal(atomic_load(&ck.bad), 0);
	assert_true(atomic_load(&ck.rounds) > 0);
	moe_engine_free(e_store);
	moe_engine_free(e_map);
	moe_mapsrc_close(ms);
	free(x);
	free(y1);
	free(y2);
}

static void engine_compare(struct fx *f, const struct moe_store_opts *o,
			   uint32_t batches, uint32_t max_nt, bool prefetch)
{
	engine_run(f, o, batches, max_nt, prefetch, 0);
}

#define TINY "--arch llama --layers 1 --experts 8 --top-k 1 --embd 256 --ff 256"
#define QWEN "--arch qwen3moe --layers 4 --experts 16 --top-k 2 --embd 256 --ff 256"

/* Engines on the QWEN model over a store of a 1/divisor of its experts
 * (see engine_compare): evictions happened, no read failed, nothing is
 * left held. The store's counters, for the caller's own checks. */
static struct moe_store_stats budget_run(enum moe_policy pol, uint64_t divisor,
					 uint32_t batches, uint32_t max_nt,
					 bool prefetch)
{
	struct fx f;
	struct moe_store_opts o = { .policy = pol };
	struct moe_store_stats st;

	gen_model(&f, QWEN);
	o.cache_bytes = moe_model_expert_bytes(f.m) / divisor;
	engine_compare(&f, &o, batches, max_nt, prefetch);
	st = stats(&f);
	assert_true(st.evictions > 0);
	assert_int_equal(st.read_errors, 0);
	check_idle(&f);
	close_fx(&f);
	return st;
}

static void quarter_budget(enum moe_policy pol, bool prefetch)
{
	struct moe_store_stats st = budget_run(pol, 4, 30, 3, prefetch);

	assert_true(st.hits > 0);
	if (prefetch)
		assert_true(st.prefetch_issued > 0 && st.prefetch_used > 0);
}

/* Batches of up to 32 tokens want most of a layer's 16 experts, and the
 * budget holds about 6 of its 64: the engine takes them in waves, the
 * bits are still the mapped file's, and the budget is never exceeded. */
static void engine_below_a_pass(void **t)
{
	assert_true(budget_run(MOE_POLICY_PREDICT, 10, 12, 32, true).slots < 16);
}

/* --cache-mb covers the routers and shared experts the engine keeps:
 * the experts get what is left, and a budget they alone fill is refused
 * naming both figures. */
static void pinned_counted(void **t)
{
	struct moe_engine_opts eo = { .threads = 1 };
	struct moe_msg err = { "" };
	struct moe_expert_src src;
	struct moe_engine *e;
	uint64_t pinned, experts;
	struct fx f;

	gen_model(&f, "--arch qwen2moe --layers 2 --experts 8 --top-k 2 --embd 256 --ff 256 --shared-experts 1 --shared-ff 512");
	pinned = moe_model_pinned_bytes(f.m);
	/* two routers of 8 x 256 floats, two shared experts of 3 x 512 x
	 * 256 values, two shared gates of 256 floats, at the least */
	assert_true(pinned >= 2 * (8 * 256 * 4 + 256 * 4));
	assert_int_equal(moe_source_expert_budget(f.m, 64 << 20, &experts, &err), 0);
	assert_int_equal(experts, (64 << 20) - pinned);
	assert_int_equal(moe_source_expert_budget(f.m, pinned, &experts, &err),
			 -MOE_ENOSPACE);
	assert_non_null(strstr(err.text, "routers and shared experts"));
	open_store(&f, &(struct moe_store_opts){ .cache_bytes = experts });
	moe_store_source(f.s, &src);
	if (moe_engine_new(&e, f.m, &src, &eo, &err))
		fail_msg("%s", err.text);
	assert_int_equal(moe_engine_pinned_bytes(e), pinned);
	assert_true(stats(&f).budget_bytes + pinned <= 64 << 20);
	moe_engine_free(e);
	close_fx(&f);
}

/* The budget changed while experts are held (moed's SIGHUP): down to the
 * least the slots need, the held experts stay intact until released and
 * then go; resident bytes fit the new budget, engines still give the
 * mapped file's bits; up again, the parked slots fill again; past the
 * slabs made at start, or below the minimum, a refusal naming the bound
 * that changes nothing. Plain buffers here (no registration), so parked
 * memory is given back, and with registered slabs too. */
static void budget_live(bool plain)
{
	struct moe_store_opts o = { .policy = MOE_POLICY_LRU,
				    .plain_buffers = plain };
	struct moe_msg err = { "" };
	struct moe_ffn_ptrs held[16];
	struct moe_store_stats st;
	uint32_t full_slots, n_held;
	uint64_t full, least;
	struct fx f;

	gen_model(&f, QWEN);
	full = o.cache_bytes = moe_model_expert_bytes(f.m) / 2;
	open_store(&f, &o);
	full_slots = stats(&f).slots;
	n_held = full_slots < 16 ? full_slots : 16;
	for (uint32_t i = 0; i < n_held; i++) /* every slot held */
		get(&f, 1 + i / 16, i % 16, &held[i]);

	least = 4 * stats(&f).slot_bytes; /* top-k 2 plus 2 spare */
	assert_int_equal(moe_store_set_budget(f.s, least - 1, &err), -ERANGE);
	assert_non_null(strstr(err.text, "at the least"));
	assert_int_equal(moe_store_set_budget(f.s, full + 1, &err), -ERANGE);
	assert_non_null(strstr(err.text, "made for at start"));
	assert_int_equal(stats(&f).budget_bytes, full);

	assert_int_equal(moe_store_set_budget(f.s, least, &err), 0);
	st = stats(&f);
	assert_int_equal(st.budget_bytes, least);
	assert_int_equal(st.slots, 4);
	for (uint32_t i = 0; i < n_held; i++) {
		assert_true(held_ok(&f, 1 + i / 16, i % 16, &held[i]));
		moe_store_release(f.s, 1 + i / 16, i % 16);
	}
	st = stats(&f);
	assert_true(st.resident_bytes <= least);
	assert_true(st.resident_experts <= 4);
	assert_true(st.evictions >= n_held - 4);
	for (uint32_t l = 0; l < 4; l++)
		for (uint32_t e = 0; e < 16; e += 3)
			use(&f, l, e);
	st = stats(&f);
	assert_true(st.resident_bytes <= least);
	assert_int_equal(st.slots_busy, 0);

	assert_int_equal(moe_store_set_budget(f.s, full, &err), 0);
	for (uint32_t l = 0; l < 4; l++)
		for (uint32_t e = 0; e < 16; e++)
			use(&f, l, e);
	st = stats(&f);
	assert_int_equal(st.slots, full_slots);
	assert_int_equal(st.resident_experts, full_slots);
	check_idle(&f);
	close_fx(&f);

	/* Engines across a shrink, under the checker: the bits still match. */
	gen_model(&f, QWEN);
	o.cache_bytes = moe_model_expert_bytes(f.m) / 4;
	engine_run(&f, &o, 16, 8, true, o.cache_bytes / 2);
	st = stats(&f);
	assert_int_equal(st.budget_bytes, o.cache_bytes / 2);
	assert_true(st.resident_bytes <= st.budget_bytes);
	assert_int_equal(st.read_errors, 0);
	close_fx(&f);
}

static void budget_live_plain(void **t) { budget_live(true); }
static void budget_live_fixed(void **t) { budget_live(false); }

static void engine_lru(void **t) { quarter_budget(MOE_POLICY_LRU, false); }
static void engine_lfu(void **t) { quarter_budget(MOE_POLICY_LFU, true); }
static void engine_predict(void **t) { quarter_budget(MOE_POLICY_PREDICT, true); }

/* A dense first layer, groups and a shared expert: one token per batch
 * (top-4 of a quarter budget of 32 experts). */
static void engine_deepseek2(void **t)
{
	struct fx f;
	struct moe_store_opts o = { .policy = MOE_POLICY_LRU };

	gen_model(&f, "--arch deepseek2 --layers 3 --experts 16 --top-k 4 --embd 256 --ff 256");
	o.cache_bytes = moe_model_expert_bytes(f.m) / 4;
	engine_compare(&f, &o, 30, 1, true);
	check_idle(&f);
	close_fx(&f);
}

/* io_uring itself; where it cannot be set up, say so and check that the
 * automatic choice falls back to the pread pool instead. */
static void engine_uring(void **t)
{
	struct moe_store_opts o = { .io = MOE_IO_URING };
	struct moe_msg err = { "" };
	struct moe_store_stats st;
	struct fx f;
	int rc;

	gen_model(&f, QWEN);
	o.cache_bytes = moe_model_expert_bytes(f.m) / 4;
	rc = moe_store_open(&f.s, f.m, &o, &err);
	if (rc) {
		printf("io_uring unavailable (%s): skipped; testing the fallback\n",
		       err.text);
		o.io = MOE_IO_AUTO;
		engine_compare(&f, &o, 20, 3, false);
		assert_string_equal(stats(&f).io_mode, "pread");
		close_fx(&f);
		return;
	}
	moe_store_close(f.s);
	f.s = NULL;
	log_clear();
	engine_compare(&f, &o, 20, 3, false);
	st = stats(&f);
	assert_string_equal(st.io_mode, "io_uring");
	/* Where the file system or RLIMIT_MEMLOCK say no, the log says so. */
	if (!st.direct)
		assert_int_equal(log_count("O_DIRECT"), 1);
	if (!st.fixed_buffers)
		assert_int_equal(log_count("as fixed buffers"), 1);
	close_fx(&f);
}

static void engine_pread(void **t)
{
	struct moe_store_opts o = { .io = MOE_IO_PREAD };
	struct fx f;

	gen_model(&f, QWEN);
	o.cache_bytes = moe_model_expert_bytes(f.m) / 4;
	log_clear();
	engine_compare(&f, &o, 20, 3, true);
	assert_string_equal(stats(&f).io_mode, "pread");
	if (!stats(&f).direct)
		assert_int_equal(log_count("O_DIRECT"), 1);
	assert_false(stats(&f).fixed_buffers);
	assert_int_equal(log_count("pread threads"), 1);
	close_fx(&f);
}

static void engine_buffered(void **t)
{
	struct moe_store_opts o = { .buffered = true };
	struct fx f;

	gen_model(&f, QWEN);
	o.cache_bytes = moe_model_expert_bytes(f.m) / 4;
	log_clear();
	engine_compare(&f, &o, 20, 3, true);
	assert_false(stats(&f).direct);
	assert_int_equal(log_count("buffered reads"), 1);
	close_fx(&f);
}

/* Syscalls refused the way a container's seccomp filter refuses them: in
 * a child, which alone gets the filter; it exits 0 on success. */
static void in_filtered_child(struct fx *f, struct sock_filter *code,
			      unsigned short n, int (*body)(struct fx *f))
{
	struct sock_fprog prog = { n, code };
	pid_t pid = fork();
	int st;

	assert_true(pid >= 0);
	if (pid == 0) {
		if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) ||
		    prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog))
			_exit(10);
		_exit(body(f));
	}
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
}

static int read_layer0(struct fx *f)
{
	struct moe_msg err;

	for (uint32_t e = 0; e < f->m->layers[0].n_expert; e++) {
		struct moe_ffn_ptrs p;
		int rc = moe_store_want(f->s, 0, e, &p, &err);

		if (rc == 0)
			rc = moe_store_wait(f->s, 0, e, &p, &err);
		if (rc || !held_ok(f, 0, e, &p))
			return 1;
		moe_store_release(f->s, 0, e);
	}
	return 0;
}

/* io_uring_setup refused: MOE_IO_URING fails; the default falls back to
 * the pread pool and says so once. */
static int setup_refused(struct fx *f)
{
	struct moe_store_opts o = { .cache_bytes = 1ull << 30, .io = MOE_IO_URING };
	struct moe_msg err;
	struct moe_store_stats st;

	if (moe_store_open(&f->s, f->m, &o, &err) != -EPERM)
		return 11;
	log_clear();
	o.io = MOE_IO_AUTO;
	if (moe_store_open(&f->s, f->m, &o, &err))
		return 12;
	moe_store_stats(f->s, &st);
	if (strcmp(st.io_mode, "pread") || log_count("io_uring cannot be set up") != 1)
		return 13;
	if (read_layer0(f))
		return 14;
	moe_store_close(f->s);
	return 0;
}

/* body on the tiny model in a child where syscall nr fails with err. */
static void without_syscall(uint32_t nr, uint32_t err,
			    int (*body)(struct fx *f))
{
	struct sock_filter code[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, nr, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | err),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct fx f;

	gen_model(&f, TINY);
	in_filtered_child(&f, code, sizeof(code) / sizeof(code[0]), body);
	close_fx(&f);
}

static void uring_refused(void **t)
{
	without_syscall(__NR_io_uring_setup, EPERM, setup_refused);
}

/* Buffer registration refused (what a low RLIMIT_MEMLOCK does): plain
 * reads into the same slabs, said once. */
static int register_refused(struct fx *f)
{
	struct moe_store_opts o = { .cache_bytes = 1ull << 30 };
	struct moe_msg err;
	struct moe_store_stats st;

	log_clear();
	if (moe_store_open(&f->s, f->m, &o, &err))
		return 11;
	moe_store_stats(f->s, &st);
	if (strcmp(st.io_mode, "io_uring") || st.fixed_buffers ||
	    log_count("as fixed buffers") != 1)
		return 12;
	if (read_layer0(f))
		return 13;
	moe_store_close(f->s);
	return 0;
}

static void fixed_refused(void **t)
{
	struct sock_filter code[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_register, 0, 3),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[1])),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, IORING_REGISTER_BUFFERS, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOMEM),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct fx f;

	gen_model(&f, TINY);
	in_filtered_child(&f, code, sizeof(code) / sizeof(code[0]), register_refused);
	close_fx(&f);
}

/* open(O_DIRECT) refused with EINVAL, as by a file system without direct
 * io: buffered reads, said once. */
static int open_direct_refused(struct fx *f)
{
	struct moe_store_opts o = { .cache_bytes = 1ull << 30 };
	struct moe_msg err;
	struct moe_store_stats st;

	log_clear();
	if (moe_store_open(&f->s, f->m, &o, &err))
		return 11;
	moe_store_stats(f->s, &st);
	if (st.direct || log_count("refuses O_DIRECT") != 1)
		return 12;
	if (read_layer0(f))
		return 13;
	moe_store_close(f->s);
	return 0;
}

static void direct_refused(void **t)
{
	struct sock_filter code[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_openat, 0, 3),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[2])),
		BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, O_DIRECT, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EINVAL),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct fx f;

	gen_model(&f, TINY);
	in_filtered_child(&f, code, sizeof(code) / sizeof(code[0]),
			  open_direct_refused);
	close_fx(&f);
}

/* ---- every io mode reads the right bytes, in small chunks ---- */

struct mode {
	const char *name;
	struct moe_store_opts o;
	const char *io_mode;
	bool direct, fixed;
};

static void read_all(struct fx *f)
{
	for (uint32_t l = 0; l < f->m->n_layer; l++)
		for (uint32_t e = 0; f->m->layers[l].moe &&
				     e < f->m->layers[l].n_expert; e++)
			use(f, l, e);
}

static void modes_contents(void **t)
{
	struct mode modes[] = {
		{ "uring", { .io = MOE_IO_URING }, "io_uring", true, true },
		{ "plain", { .plain_buffers = true }, "io_uring", true, false },
		{ "sqpoll", { .sqpoll = true }, "io_uring+sqpoll", true, true },
		{ "pread", { .io = MOE_IO_PREAD }, "pread", true, false },
		{ "buffered", { .buffered = true }, "io_uring", false, true },
		{ "pread+buf", { .io = MOE_IO_PREAD, .buffered = true }, "pread",
		  false, false },
	};
	struct moe_store_opts probe = { .cache_bytes = 1ull << 30 };
	bool can_direct, can_fix;
	struct fx f;

	gen_model(&f, "--arch olmoe --layers 2 --experts 8 --top-k 2 --embd 256 --ff 512");
	/* What this machine allows, as the default store finds it. */
	open_store(&f, &probe);
	can_direct = stats(&f).direct;
	can_fix = stats(&f).fixed_buffers;
	moe_store_close(f.s);
	f.s = NULL;
	for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
		struct mode *md = &modes[i];
		struct moe_store_stats st;

		md->direct &= can_direct;
		md->fixed &= can_fix;

		md->o.cache_bytes = 1ull << 30;
		md->o.chunk_bytes = 12288; /* several chunks per matrix */
		md->o.queue_depth = 4;
		open_store(&f, &md->o);
		read_all(&f);
		read_all(&f); /* all hits now */
		st = stats(&f);
		if (strcmp(st.io_mode, md->io_mode) || st.direct != md->direct ||
		    st.fixed_buffers != md->fixed)
			fail_msg("%s: mode %s direct %d fixed %d", md->name,
				 st.io_mode, st.direct, st.fixed_buffers);
		assert_int_equal(st.misses, 16);
		assert_int_equal(st.hits, 16);
		assert_true(st.read_seconds > 0);
		check_idle(&f);
		moe_store_close(f.s);
		f.s = NULL;
	}
	close_fx(&f);
}

/* ---- slot classes: layers whose experts differ in size ---- */

static void fill_tensor(int fd, uint64_t off, uint64_t size, uint32_t type,
			uint32_t ne0, struct trng *r)
{
	size_t row = moe_row_size(type, ne0);
	float *src = malloc(ne0 * sizeof(float));
	uint8_t *dst = malloc(row);

	for (uint64_t at = 0; at < size; at += row) {
		trng_fill(r, src, ne0, -1.0f, 1.0f);
		assert_int_equal(moe_quantize_row(type, src, dst, ne0), 0);
		assert_int_equal(pwrite(fd, dst, row, (off_t)(off + at)), (ssize_t)row);
	}
	free(src);
	free(dst);
}

/* Two llama layers, Q8_0 experts then F16 experts. */
static void write_mixed(const char *path)
{
	const uint32_t types[2] = { MOE_Q8_0, MOE_F16 };
	const char *parts[3] = { "gate", "up", "down" };
	struct gguf_writer *w = gguf_writer_new(3, 32);
	struct trng r = { 5 };
	char name[64];
	size_t nt = 0;
	int fd;

	assert_non_null(w);
	gguf_w_str(w, "general.architecture", "llama");
	gguf_w_u32(w, "llama.block_count", 2);
	gguf_w_u32(w, "llama.embedding_length", 256);
	gguf_w_u32(w, "llama.feed_forward_length", 256);
	gguf_w_u32(w, "llama.expert_count", 8);
	gguf_w_u32(w, "llama.expert_used_count", 2);
	for (uint32_t l = 0; l < 2; l++) {
		uint64_t rne[2] = { 256, 8 }, ne[3] = { 256, 256, 8 };

		snprintf(name, sizeof(name), "blk.%u.ffn_gate_inp.weight", l);
		assert_int_equal(gguf_w_tensor(w, name, 2, rne, MOE_F32), 0);
		for (int p = 0; p < 3; p++) {
			snprintf(name, sizeof(name), "blk.%u.ffn_%s_exps.weight", l, parts[p]);
			assert_int_equal(gguf_w_tensor(w, name, 3, ne, types[l]), 0);
		}
	}
	fd = open(path, O_RDWR | O_TRUNC);
	assert_true(fd >= 0);
	assert_int_equal(gguf_writer_write_header(w, fd), 0);
	for (uint32_t l = 0; l < 2; l++)
		for (int p = 0; p < 4; p++, nt++)
			fill_tensor(fd, gguf_writer_tensor_off(w, nt),
				    gguf_writer_tensor_size(w, nt),
				    p ? types[l] : MOE_F32, 256, &r);
	close(fd);
	gguf_writer_free(w);
}

static void slot_classes(void **t)
{
	struct moe_store_opts o = { 0 };
	struct moe_store_stats st;
	uint64_t a, b;
	struct fx f;

	memset(&f, 0, sizeof(f));
	tmp_path(f.path, sizeof(f.path), "mixed");
	write_mixed(f.path);
	open_model_at(&f);
	a = f.m->layers[0].expert_bytes;
	b = f.m->layers[1].expert_bytes;
	assert_true(a < b);
	/* Both classes get their minimum and share the rest. */
	o.cache_bytes = moe_model_expert_bytes(f.m) / 4 * 3;
	engine_compare(&f, &o, 30, 1, true);
	st = stats(&f);
	assert_int_equal(st.slot_classes, 2);
	assert_true(st.evictions > 0);
	check_idle(&f);
	/* Too small for both minimums (4 slots each): one class of the
	 * larger size. */
	o.cache_bytes = 4 * st.slot_bytes + a;
	moe_store_close(f.s);
	f.s = NULL;
	engine_compare(&f, &o, 30, 1, false);
	st = stats(&f);
	assert_int_equal(st.slot_classes, 1);
	assert_int_equal(st.slots, 4);
	check_idle(&f);
	close_fx(&f);
}

/* ---- eviction policies on a scripted sequence, 3 slots ---- */

enum { A, B, C, D, E };

static void open_slots(struct fx *f, enum moe_policy pol, uint32_t n)
{
	struct moe_store_opts o = { .policy = pol };

	o.cache_bytes = n * slot_bytes(f);
	open_store(f, &o);
	assert_int_equal(stats(f).slots, n);
}

/* A three times, then B, C; hints for A and B; then D, evicting by pol
 * (changed live from `opened` when they differ, as moed's SIGHUP does). */
static void scripted(enum moe_policy opened, enum moe_policy pol, int evicted)
{
	const uint32_t hint[2] = { A, B };
	struct fx f;

	gen_model(&f, TINY);
	open_slots(&f, opened, 3);
	use(&f, 0, A);
	use(&f, 0, A);
	use(&f, 0, A);
	use(&f, 0, B);
	use(&f, 0, C);
	moe_store_prefetch(f.s, 0, hint, 2);
	assert_int_equal(stats(&f).prefetch_issued, 0); /* all resident */
	moe_store_set_policy(f.s, pol);
	use(&f, 0, D);
	for (int x = A; x <= D; x++)
		if (moe_store_resident(f.s, 0, (uint32_t)x) != (x != evicted))
			fail_msg("expert %c: resident %d", 'A' + x,
				 moe_store_resident(f.s, 0, (uint32_t)x));
	assert_int_equal(stats(&f).evictions, 1);
	check_idle(&f);
	close_fx(&f);
}

static void policy_lru(void **t) { scripted(MOE_POLICY_LRU, MOE_POLICY_LRU, A); }
static void policy_lfu(void **t) { scripted(MOE_POLICY_LFU, MOE_POLICY_LFU, B); }
static void policy_predict(void **t) { scripted(MOE_POLICY_PREDICT, MOE_POLICY_PREDICT, C); }

/* Every policy keeps the others' bookkeeping: a switch decides the next
 * eviction as if the new policy had been in force from the start. */
static void policy_switched(void **t)
{
	scripted(MOE_POLICY_LRU, MOE_POLICY_LFU, B);
	scripted(MOE_POLICY_LFU, MOE_POLICY_PREDICT, C);
	scripted(MOE_POLICY_PREDICT, MOE_POLICY_LRU, A);
	assert_int_equal(moe_policy_by_name("lfu"), MOE_POLICY_LFU);
	assert_int_equal(moe_policy_by_name("LRU"), -EINVAL);
}

/* Frequency protects A at first; ageing lets it go once others are
 * wanted and A is not. */
static void lfu_ageing(void **t)
{
	struct fx f;

	gen_model(&f, TINY);
	open_slots(&f, MOE_POLICY_LFU, 3);
	for (int i = 0; i < 20; i++)
		use(&f, 0, A);
	use(&f, 0, B);
	use(&f, 0, C);
	use(&f, 0, D);
	assert_true(moe_store_resident(f.s, 0, A));
	assert_false(moe_store_resident(f.s, 0, B));
	for (uint32_t i = 0; i < 200; i++)
		use(&f, 0, B + i % 4);
	assert_false(moe_store_resident(f.s, 0, A));
	check_idle(&f);
	close_fx(&f);
}

/* ---- shared reads ---- */

struct wanter {
	struct fx *f;
	pthread_barrier_t *bar;
	uint32_t e;
	int want_rc, wait_rc;
	struct moe_ffn_ptrs p;
};

static void *wanter_main(void *a)
{
	struct wanter *w = a;
	struct moe_msg err;

	w->want_rc = moe_store_want(w->f->s, 0, w->e, &w->p, &err);
	pthread_barrier_wait(w->bar); /* both wanted */
	pthread_barrier_wait(w->bar); /* io let go */
	w->wait_rc = w->want_rc ? w->want_rc :
		     moe_store_wait(w->f->s, 0, w->e, &w->p, &err);
	return NULL;
}

/* Two threads want one missing expert while reads are held: one read. */
static void shared_read(void **t)
{
	struct moe_store_opts o = { .cache_bytes = 1ull << 30 };
	const struct moe_ffn_mats *x;
	pthread_barrier_t bar;
	struct wanter w[2];
	pthread_t th[2];
	struct moe_store_stats st;
	struct fx f;

	gen_model(&f, TINY);
	open_store(&f, &o);
	pthread_barrier_init(&bar, NULL, 3);
	moe_store_pause_io(f.s, true);
	for (int i = 0; i < 2; i++) {
		w[i] = (struct wanter){ .f = &f, .bar = &bar, .e = 5 };
		pthread_create(&th[i], NULL, wanter_main, &w[i]);
	}
	pthread_barrier_wait(&bar);
	assert_false(moe_store_resident(f.s, 0, 5));
	moe_store_pause_io(f.s, false);
	pthread_barrier_wait(&bar);
	for (int i = 0; i < 2; i++)
		pthread_join(th[i], NULL);
	pthread_barrier_destroy(&bar);
	for (int i = 0; i < 2; i++) {
		assert_int_equal(w[i].want_rc, 0);
		assert_int_equal(w[i].wait_rc, 0);
		check_bytes(&f, 0, 5, &w[i].p);
		moe_store_release(f.s, 0, 5);
	}
	assert_ptr_equal(w[0].p.gate, w[1].p.gate);
	st = stats(&f);
	x = &f.m->layers[0].experts[5];
	assert_int_equal(st.misses, 1);
	assert_int_equal(st.joins, 1);
	assert_true(st.bytes_read >= x->gate.size + x->up.size + x->down.size);
	assert_true(st.bytes_read <= st.slot_bytes);
	check_idle(&f);
	close_fx(&f);
}

/* ---- prefetch ---- */

static struct moe_store_opts qd1(void)
{
	return (struct moe_store_opts){ .cache_bytes = 1ull << 30,
					.queue_depth = 1 };
}

/* With one read in flight at a time, a demand read queued after two
 * prefetches is issued first; the prefetches keep their order. */
static void demand_first(void **t)
{
	struct moe_store_opts o = qd1();
	const uint32_t pf[2] = { A, B };
	struct moe_ffn_ptrs p;
	struct moe_msg err;
	struct fx f;

	gen_model(&f, TINY);
	open_store(&f, &o);
	moe_store_pause_io(f.s, true);
	moe_store_prefetch(f.s, 0, pf, 2);
	assert_int_equal(moe_store_want(f.s, 0, C, &p, &err), 0);
	moe_store_pause_io(f.s, false);
	assert_int_equal(moe_store_wait(f.s, 0, C, &p, &err), 0);
	wait_resident(&f, 0, A);
	wait_resident(&f, 0, B);
	assert_int_equal(moe_store_read_seq(f.s, 0, C), 1);
	assert_int_equal(moe_store_read_seq(f.s, 0, A), 2);
	assert_int_equal(moe_store_read_seq(f.s, 0, B), 3);
	moe_store_release(f.s, 0, C);
	assert_int_equal(stats(&f).prefetch_issued, 2);
	check_idle(&f);
	close_fx(&f);
}

/* Wanting a queued prefetch makes it a demand read, ahead of the rest. */
static void prefetch_promoted(void **t)
{
	struct moe_store_opts o = qd1();
	const uint32_t pf[3] = { A, B, C };
	struct moe_ffn_ptrs p;
	struct moe_msg err;
	struct fx f;

	gen_model(&f, TINY);
	open_store(&f, &o);
	moe_store_pause_io(f.s, true);
	moe_store_prefetch(f.s, 0, pf, 3);
	assert_int_equal(moe_store_want(f.s, 0, C, &p, &err), 0);
	moe_store_pause_io(f.s, false);
	assert_int_equal(moe_store_wait(f.s, 0, C, &p, &err), 0);
	check_bytes(&f, 0, C, &p);
	moe_store_release(f.s, 0, C);
	wait_resident(&f, 0, A);
	wait_resident(&f, 0, B);
	assert_int_equal(moe_store_read_seq(f.s, 0, C), 1);
	assert_int_equal(moe_store_read_seq(f.s, 0, A), 2);
	assert_int_equal(stats(&f).prefetch_used, 1);
	assert_int_equal(stats(&f).joins, 1);
	check_idle(&f);
	close_fx(&f);
}

/* issued, used, wasted (evicted unused, or cancelled for a demand read),
 * dropped (no slot a prefetch may take). Four slots, LRU. */
static void prefetch_accounting(void **t)
{
	struct moe_ffn_ptrs p[4];
	struct moe_store_stats st;
	uint32_t id;
	struct fx f;

	gen_model(&f, TINY);
	open_slots(&f, MOE_POLICY_LRU, 4);
	id = 0;
	moe_store_prefetch(f.s, 0, &id, 1);
	wait_resident(&f, 0, 0);
	use(&f, 0, 0);
	id = 1;
	moe_store_prefetch(f.s, 0, &id, 1);
	wait_resident(&f, 0, 1);
	for (uint32_t e = 2; e < 6; e++)
		use(&f, 0, e);
	st = stats(&f);
	assert_int_equal(st.prefetch_issued, 2);
	assert_int_equal(st.prefetch_used, 1);
	assert_int_equal(st.prefetch_wasted, 1);
	assert_false(moe_store_resident(f.s, 0, 1));
	/* Every slot held: the prefetch is dropped. */
	for (uint32_t e = 2; e < 6; e++)
		get(&f, 0, e, &p[e - 2]);
	id = 6;
	moe_store_prefetch(f.s, 0, &id, 1);
	st = stats(&f);
	assert_int_equal(st.prefetch_dropped, 1);
	assert_int_equal(st.prefetch_issued, 2);
	for (uint32_t e = 2; e < 6; e++)
		moe_store_release(f.s, 0, e);
	/* A queued prefetch gives its slot back to a demand read. */
	moe_store_pause_io(f.s, true);
	moe_store_prefetch(f.s, 0, &id, 1);
	for (uint32_t e = 3; e < 6; e++)
		get(&f, 0, e, &p[e - 3]);
	{
		struct moe_msg err;

		assert_int_equal(moe_store_want(f.s, 0, 7, &p[3], &err), 0);
		moe_store_pause_io(f.s, false);
		assert_int_equal(moe_store_wait(f.s, 0, 7, &p[3], &err), 0);
	}
	check_bytes(&f, 0, 7, &p[3]);
	for (uint32_t e = 3; e < 8; e += e == 5 ? 2 : 1)
		moe_store_release(f.s, 0, e);
	st = stats(&f);
	assert_int_equal(st.prefetch_issued, 3);
	assert_int_equal(st.prefetch_wasted, 2);
	assert_false(moe_store_resident(f.s, 0, 6));
	check_idle(&f);
	close_fx(&f);
}

/* ---- budgets ---- */

static void enospace(void **t)
{
	struct moe_store_opts o = { 0 };
	struct moe_ffn_ptrs p[3];
	struct moe_msg err = { "" };
	uint64_t sb;
	struct fx f;

	gen_model(&f, TINY);
	sb = slot_bytes(&f);
	o.cache_bytes = 3 * sb - 1;
	assert_int_equal(moe_store_open(&f.s, f.m, &o, &err), -MOE_ENOSPACE);
	assert_non_null(strstr(err.text, "at least"));
	assert_null(f.s);
	o.cache_bytes = 3 * sb;
	open_store(&f, &o);
	for (uint32_t e = 0; e < 3; e++)
		get(&f, 0, e, &p[e]);
	assert_int_equal(moe_store_want(f.s, 0, 3, &p[0], &err), -MOE_ENOSPACE);
	assert_non_null(strstr(err.text, "expert 3"));
	assert_int_equal(moe_store_want(f.s, 0, 8, &p[0], &err), -EINVAL);
	assert_int_equal(moe_store_want(f.s, 1, 0, &p[0], &err), -EINVAL);
	for (uint32_t e = 0; e < 3; e++)
		moe_store_release(f.s, 0, e);
	use(&f, 0, 3);
	check_idle(&f);
	close_fx(&f);
}

/* ---- faults ---- */

static const struct moe_store_opts fault_modes[] = {
	{ .cache_bytes = 1ull << 30 },
	{ .cache_bytes = 1ull << 30, .io = MOE_IO_PREAD },
	{ .cache_bytes = 1ull << 30, .buffered = true },
};

static void expect_io_error(struct fx *f, uint32_t l, uint32_t e, int n_wanters,
			    uint64_t off)
{
	struct moe_ffn_ptrs p;
	struct moe_msg err = { "" };
	char want[64];

	for (int i = 0; i < n_wanters; i++)
		assert_int_equal(moe_store_want(f->s, l, e, &p, &err), 0);
	for (int i = 0; i < n_wanters; i++) {
		assert_int_equal(moe_store_wait(f->s, l, e, &p, &err),
				 -MOE_EEXPERT_IO);
		snprintf(want, sizeof(want), "layer %u expert %u:", l, e);
		if (!strstr(err.text, want) || !strstr(err.text, "file offset"))
			fail_msg("message: %s", err.text);
		snprintf(want, sizeof(want), "file offset %llu ",
			 (unsigned long long)off);
		if (off && !strstr(err.text, want))
			fail_msg("message lacks '%s': %s", want, err.text);
	}
	assert_false(moe_store_resident(f->s, l, e));
	check_idle(f);
}

/* Cut the file in the middle of the last expert's down matrix after the
 * store opened it: that expert fails with a short read at the cut, the
 * others are served; with the bytes back, it is served too. */
static void truncated_file(void **t)
{
	struct fx f;

	gen_model(&f, "--arch qwen3moe --layers 2 --experts 8 --top-k 2 --embd 256 --ff 512");
	for (size_t i = 0; i < sizeof(fault_modes) / sizeof(fault_modes[0]); i++) {
		const struct moe_ffn_mats *x = &f.m->layers[1].experts[7];
		uint64_t cut = x->down.off + x->down.size / 2 + 3;
		int fd = open(f.path, O_RDWR);

		assert_true(fd >= 0);
		assert_int_equal(x->down.off + x->down.size, f.file_len);
		open_store(&f, &fault_modes[i]);
		assert_int_equal(ftruncate(fd, (off_t)cut), 0);
		expect_io_error(&f, 1, 7, 2, cut);
		assert_int_equal(stats(&f).read_errors, 1);
		expect_io_error(&f, 1, 7, 1, cut); /* retried, fails again */
		use(&f, 1, 6);
		use(&f, 1, 0);
		assert_int_equal(pwrite(fd, f.file + cut, f.file_len - cut, (off_t)cut),
				 (ssize_t)(f.file_len - cut));
		close(fd);
		use(&f, 1, 7);
		assert_int_equal(stats(&f).read_errors, 2);
		check_idle(&f);
		moe_store_close(f.s);
		f.s = NULL;
	}
	close_fx(&f);
}

/* EIO on one read: the wanters of that expert fail cleanly, the next
 * want reads it again; a prefetch that fails frees its slot quietly. */
static void injected_eio(void **t)
{
	struct fx f;

	gen_model(&f, TINY);
	for (size_t i = 0; i < sizeof(fault_modes) / sizeof(fault_modes[0]); i++) {
		uint32_t id = 4;

		open_store(&f, &fault_modes[i]);
		use(&f, 0, 1);
		assert_int_equal(moe_store_inject_fault(f.s, 0, 2, 1, -EIO), 0);
		moe_store_pause_io(f.s, true); /* both wanters join one read */
		{
			struct moe_ffn_ptrs p;
			struct moe_msg err = { "" };

			assert_int_equal(moe_store_want(f.s, 0, 2, &p, &err), 0);
			assert_int_equal(moe_store_want(f.s, 0, 2, &p, &err), 0);
			moe_store_pause_io(f.s, false);
			for (int w = 0; w < 2; w++) {
				assert_int_equal(moe_store_wait(f.s, 0, 2, &p, &err),
						 -MOE_EEXPERT_IO);
				assert_non_null(strstr(err.text, "Input/output error"));
				assert_non_null(strstr(err.text, "layer 0 expert 2"));
			}
		}
		check_idle(&f);
		use(&f, 0, 2);
		use(&f, 0, 1);
		moe_store_inject_fault(f.s, 0, id, 1, -EIO);
		moe_store_prefetch(f.s, 0, &id, 1);
		for (int w = 0; w < 5000 && stats(&f).read_errors < 2; w++)
			usleep(1000);
		assert_int_equal(stats(&f).read_errors, 2);
		assert_false(moe_store_resident(f.s, 0, id));
		check_idle(&f);
		use(&f, 0, id);
		moe_store_close(f.s);
		f.s = NULL;
	}
	close_fx(&f);
}

/* O_DIRECT refused on a read: that read and all later ones go buffered,
 * said once. */
static void einval_goes_buffered(void **t)
{
	struct moe_store_opts o = { .cache_bytes = 1ull << 30 };
	struct fx f;

	gen_model(&f, TINY);
	for (int mode = 0; mode < 2; mode++) {
		o.io = mode ? MOE_IO_PREAD : MOE_IO_AUTO;
		open_store(&f, &o);
		if (!stats(&f).direct) {
			printf("O_DIRECT unavailable here: skipped\n");
			break;
		}
		log_clear();
		moe_store_inject_fault(f.s, 0, 3, 1, -EINVAL);
		use(&f, 0, 3);
		assert_false(stats(&f).direct);
		assert_int_equal(stats(&f).read_errors, 0);
		use(&f, 0, 4);
		assert_int_equal(log_count("refused (EINVAL)"), 1);
		check_idle(&f);
		moe_store_close(f.s);
		f.s = NULL;
	}
	close_fx(&f);
}

/* ---- placement: pools per node, copies, moves ---- */

struct placed {
	struct moe_topo *t;
	struct moe_plan *p;
};

/* A plan for f's model on topology desc (NULL: this machine). */
static void plan_for(struct fx *f, struct placed *pl, const char *desc,
		     const struct moe_plan_opts *po)
{
	struct moe_topo_opts to = { .topology = desc };
	struct moe_msg err = { "" };

	if (moe_topo_open(&pl->t, &to, &err) ||
	    moe_plan_new(&pl->p, pl->t, f->m, po, &err))
		fail_msg("%s: %s", desc ? desc : "this machine", err.text);
}

static void unplan(struct placed *pl)
{
	moe_plan_free(pl->p);
	moe_topo_close(pl->t);
}

static struct moe_store_pool pool_st(struct fx *f, uint32_t q)
{
	struct moe_store_pool ps;

	assert_int_equal(moe_store_pool(f->s, q, &ps), 0);
	return ps;
}

/* The pool serving plan node n. */
static uint32_t pool_of_node(struct fx *f, uint32_t n)
{
	for (uint32_t q = 0; q < stats(f).pools; q++)
		if (pool_st(f, q).node == n)
			return q;
	fail_msg("no pool for node %u", n);
	return 0;
}

/* Every slot free or resident and unused, in every pool. */
static void check_pools_idle(struct fx *f)
{
	for (uint32_t q = 0; q < stats(f).pools; q++) {
		struct moe_store_pool ps = pool_st(f, q);

		assert_int_equal(ps.busy, 0);
		assert_int_equal(ps.free_slots + ps.resident, ps.slots);
		assert_true(ps.slab_bytes <= ps.share);
	}
	check_idle(f);
}

/* The QWEN model on two synthetic nodes of two cores, 64 slots, LRU. */
static void open_placed(struct fx *f, struct placed *pl)
{
	struct moe_store_opts o = { .policy = MOE_POLICY_LRU };
	struct moe_plan_opts po = { 0 };

	gen_model(f, QWEN);
	o.cache_bytes = po.cache_bytes = 64 * slot_bytes(f);
	plan_for(f, pl, "numa:2 core:2 pu:1", &po);
	o.plan = pl->p;
	open_store(f, &o);
}

/* Nothing leaked; the store and plan closed. */
static void close_placed(struct fx *f, struct placed *pl)
{
	check_pools_idle(f);
	moe_store_close(f->s);
	f->s = NULL;
	unplan(pl);
}

/* The shares follow the plan's split of its budget and sum to ours;
 * each pool's slabs use its share but for less than one slot. */
static void check_split(struct fx *f, const struct moe_plan *p,
			uint64_t budget)
{
	uint64_t sum = 0, slot = stats(f).slot_bytes;

	assert_int_equal(stats(f).pools, p->n_nodes);
	for (uint32_t q = 0; q < p->n_nodes; q++) {
		struct moe_store_pool ps = pool_st(f, q);
		uint64_t want = (uint64_t)((unsigned __int128)budget *
					   p->nodes[ps.node].budget / p->budget);

		sum += ps.share;
		assert_true(ps.share >= want && ps.share - want < p->n_nodes);
		assert_true(ps.slab_bytes <= ps.share);
		assert_true(ps.share - ps.slab_bytes < slot);
	}
	assert_int_equal(sum, budget);
}

/* Each expert wanted for its owner lands in its owner's pool's slabs,
 * and only there. */
static void check_owner_slots(struct fx *f, const struct moe_plan *p)
{
	for (uint32_t l = 0; l < f->m->n_layer; l++) {
		for (uint32_t e = 0; e < p->layers[l].n_expert; e++) {
			uint32_t own = p->layers[l].owner[e];
			struct moe_ffn_ptrs w;

			get(f, l, e, &w);
			assert_int_equal(moe_store_pool_of(f->s, w.gate),
					 (int)pool_of_node(f, own));
			assert_int_equal(moe_store_pool_of(f->s, w.down),
					 (int)pool_of_node(f, own));
			assert_true(moe_store_resident_on(f->s, l, e, own));
			assert_false(moe_store_resident_on(f->s, l, e, 1 - own));
			moe_store_release(f->s, l, e);
		}
	}
}

/* Every page of the slot holding w is on os_node (get_mempolicy). */
static void check_on_node(struct fx *f, uint32_t l, uint32_t e,
			  const struct moe_ffn_ptrs *w, int os_node)
{
	const struct moe_ffn_mats *x = &f->m->layers[l].experts[e];
	const uint8_t *parts[3] = { w->gate, w->up, w->down };
	uint64_t sizes[3] = { x->gate.size, x->up.size, x->down.size };
	long pg = sysconf(_SC_PAGESIZE);

	for (int i = 0; i < 3; i++) {
		for (uint64_t off = 0; off < sizes[i]; off += (uint64_t)pg) {
			int got = moe_topo_node_of_addr(parts[i] + off);

			if (got != os_node)
				fail_msg("layer %u expert %u: page at +%llu on node %d, its pool's node is %d",
					 l, e, (unsigned long long)off, got,
					 os_node);
		}
	}
}

/* A synthetic two-node machine: a pool per node, shares as the plan
 * splits the budget (unequal: node 0 gives a core to the io thread),
 * experts in their owner's slots; not this machine's, so plain memory
 * and unpinned io. Then this machine: its nodes' pages checked where it
 * has several, else the one plain pool that one node gets. */
static void pools_per_node(void **t)
{
	struct moe_plan_opts po = { .reserve_cores = 1 };
	struct moe_store_opts o = { .policy = MOE_POLICY_LRU };
	struct placed pl;
	struct fx f;

	gen_model(&f, QWEN);
	o.cache_bytes = po.cache_bytes = 30 * slot_bytes(&f) + 12345;
	plan_for(&f, &pl, "numa:2 core:2 pu:1", &po);
	assert_true(pl.p->nodes[0].budget < pl.p->nodes[1].budget);
	o.plan = pl.p;
	open_store(&f, &o);
	check_split(&f, pl.p, o.cache_bytes);
	for (uint32_t q = 0; q < 2; q++)
		assert_int_equal(pool_st(&f, q).os_node, -1);
	assert_false(stats(&f).io_pinned);
	check_owner_slots(&f, pl.p);
	assert_true(stats(&f).evictions > 0);
	assert_int_equal(stats(&f).replicas, 0);
	close_placed(&f, &pl);

	plan_for(&f, &pl, NULL, NULL);
	o.plan = pl.p;
	open_store(&f, &o);
	if (pl.p->n_nodes > 1 && pl.t->numa_ok) {
		for (uint32_t l = 0; l < f.m->n_layer; l++) {
			for (uint32_t e = 0; e < pl.p->layers[l].n_expert; e++) {
				uint32_t own = pl.p->layers[l].owner[e];
				int os = pool_st(&f, pool_of_node(&f, own)).os_node;
				struct moe_ffn_ptrs w;

				get(&f, l, e, &w);
				check_on_node(&f, l, e, &w, os);
				moe_store_release(f.s, l, e);
			}
		}
		print_message("%u NUMA nodes: every page of every slot on its owner's node\n",
			      pl.p->n_nodes);
	} else {
		/* The degenerate plan: one pool, plain memory. */
		assert_int_equal(stats(&f).pools, 1);
		assert_int_equal(pool_st(&f, 0).os_node, -1);
		assert_int_equal(pool_st(&f, 0).share, o.cache_bytes);
		use(&f, 1, 3);
		print_message("%u NUMA node%s here: one pool of plain memory (placement checked on the synthetic plan only)\n",
			      pl.p->n_nodes, pl.p->n_nodes == 1 ? "" : "s, no NUMA support");
	}
	close_placed(&f, &pl);
	close_fx(&f);
}

/* A share that cannot hold a pool's minimum (top-k plus 2 per slot size):
 * one pool for every node, said once; a plan of another model refused. */
static void pools_fall_back(void **t)
{
	struct moe_plan_opts po = { .reserve_cores = 1 };
	struct moe_store_opts o = { .policy = MOE_POLICY_LRU };
	struct moe_msg err = { "" };
	struct placed pl, other;
	struct fx f, g;

	gen_model(&f, QWEN);
	/* 7 slots: node 0's third is 2, under its 4. */
	o.cache_bytes = po.cache_bytes = 7 * slot_bytes(&f);
	plan_for(&f, &pl, "numa:2 core:2 pu:1", &po);
	o.plan = pl.p;
	log_clear();
	open_store(&f, &o);
	assert_int_equal(log_count("one pool of slots for every node"), 1);
	assert_int_equal(stats(&f).pools, 1);
	assert_int_equal(pool_st(&f, 0).node, MOE_STORE_OWNER);
	assert_int_equal(pool_st(&f, 0).share, o.cache_bytes);
	/* Every node names the one pool. */
	for (uint32_t e = 0; e < 16; e++)
		use(&f, 1, e);
	assert_true(moe_store_resident_on(f.s, 1, 15, 0) &&
		    moe_store_resident_on(f.s, 1, 15, 1));
	assert_int_equal(moe_store_replan(f.s), 0);
	check_pools_idle(&f);
	moe_store_close(f.s);
	f.s = NULL;

	gen_model(&g, "--arch qwen3moe --layers 4 --experts 8 --top-k 2 --embd 256 --ff 256");
	plan_for(&g, &other, "numa:2 core:2 pu:1", NULL);
	o.plan = other.p;
	assert_int_equal(moe_store_open(&f.s, f.m, &o, &err), -EINVAL);
	assert_non_null(strstr(err.text, "placement plan gives layer"));
	assert_null(f.s);
	unplan(&other);
	close_fx(&g);
	unplan(&pl);
	close_fx(&f);
}

/* Two tokens per expert of the layer, the hot one in every token. */
static uint32_t hot_routes(struct moe_route *r, uint32_t hot, uint32_t n_expert)
{
	uint32_t nt = 0;

	for (uint32_t e = 0; e < n_expert; e++) {
		if (e == hot)
			continue;
		for (int i = 0; i < 2; i++, nt++)
			r[nt] = (struct moe_route){ 2, { hot, e },
						    { 0.75f, 0.25f } };
	}
	return nt;
}

struct engines {
	struct moe_engine *map, *store;
	struct moe_mapsrc *ms;
};

static void engines_new(struct fx *f, struct engines *en, struct moe_plan *p)
{
	struct moe_engine_opts plain = { .threads = 2 }, planned = { .plan = p };
	struct moe_expert_src ms_src, st_src;
	struct moe_msg err = { "" };

	assert_int_equal(moe_mapsrc_open(&en->ms, f->m, &ms_src, &err), 0);
	moe_store_source(f->s, &st_src);
	assert_non_null(st_src.want_on);
	if (moe_engine_new(&en->map, f->m, &ms_src, &plain, &err) ||
	    moe_engine_new(&en->store, f->m, &st_src, &planned, &err))
		fail_msg("%s", err.text);
}

static void engines_free(struct engines *en)
{
	moe_engine_free(en->store);
	moe_engine_free(en->map);
	moe_mapsrc_close(en->ms);
}

/* Is the placed engine's output the plain engine's, bit for bit? */
static bool same_output(struct fx *f, struct engines *en, uint32_t l,
			const struct moe_route *r, uint32_t nt)
{
	size_t n = (size_t)nt * f->m->n_embd;
	float *x = malloc(n * sizeof(float)), *y1 = malloc(n * sizeof(float));
	float *y2 = malloc(n * sizeof(float));
	struct trng rng = { 31 + l };
	struct moe_msg err = { "" };
	bool same;

	trng_fill(&rng, x, n, -1.5f, 1.5f);
	if (moe_engine_apply(en->map, l, x, nt, r, y1, &err) ||
	    moe_engine_apply(en->store, l, x, nt, r, y2, &err))
		fail_msg("layer %u: %s", l, err.text);
	same = !memcmp(y1, y2, n * sizeof(float));
	free(x);
	free(y1);
	free(y2);
	return same;
}

/* A hot expert copied to the other node: the engine takes it from both
 * and each node's rows from its own copy (same bits as without; spoil
 * the copy and they change); the copy is counted in that node's pool.
 * Held while the plan drops it, it stays readable; its release frees
 * it; nothing leaks. */
static void copies_follow_plan(void **t)
{
	struct moe_route r[2 * MOE_MAX_EXPERTS];
	struct moe_plan_change ch = { 0 };
	struct moe_msg err = { "" };
	const uint32_t l = 2, hot = 5;
	struct moe_ffn_ptrs w;
	struct engines en;
	struct placed pl;
	uint32_t own, other, nt, rounds = 0, q_other, even[16];
	const struct moe_mat *gate;
	struct fx f;

	open_placed(&f, &pl);
	engines_new(&f, &en, pl.p);
	own = pl.p->layers[l].owner[hot];
	other = 1 - own;
	q_other = pool_of_node(&f, other);

	nt = hot_routes(r, hot, 16);
	assert_true(same_output(&f, &en, l, r, nt)); /* feeds the plan too */
	moe_plan_rebalance(pl.p, &ch);
	assert_true(ch.copies_added >= 1);
	assert_true(moe_plan_holds(pl.p, l, hot, other));
	assert_int_equal(moe_store_replan(f.s), 0); /* nothing to drop */
	assert_true(same_output(&f, &en, l, r, nt));
	assert_true(moe_store_resident_on(f.s, l, hot, own));
	assert_true(moe_store_resident_on(f.s, l, hot, other));
	assert_int_equal(stats(&f).replicas, 1);
	assert_int_equal(pool_st(&f, q_other).replicas, 1);
	/* The copy's bytes are the file's, in the other node's slabs. */
	assert_int_equal(moe_store_want_on(f.s, l, hot, other, &w, &err), 1);
	check_bytes(&f, l, hot, &w);
	assert_int_equal(moe_store_pool_of(f.s, w.gate), (int)q_other);
	/* The other node's rows come from this copy and no other. */
	gate = &f.m->layers[l].experts[hot].gate;
	memset((void *)(uintptr_t)w.gate, 0, gate->size);
	assert_false(same_output(&f, &en, l, r, nt));
	memcpy((void *)(uintptr_t)w.gate, f.file + gate->off, gate->size);
	assert_true(same_output(&f, &en, l, r, nt));

	/* It cools while held: kept until released, then freed. */
	for (uint32_t e = 0; e < 16; e++)
		even[e] = 10;
	while (pl.p->layers[l].copies[hot] && rounds++ < 30) {
		moe_plan_feed(pl.p, l, even);
		moe_plan_rebalance(pl.p, NULL);
	}
	assert_int_equal(pl.p->layers[l].copies[hot], 0);
	assert_int_equal(moe_store_replan(f.s), 1);
	assert_true(held_ok(&f, l, hot, &w));
	assert_int_equal(stats(&f).replicas, 0);
	assert_int_equal(stats(&f).dropped, 0);
	moe_store_release_on(f.s, l, hot, other);
	assert_false(moe_store_resident_on(f.s, l, hot, other));
	assert_true(moe_store_resident_on(f.s, l, hot, own));
	assert_int_equal(stats(&f).dropped, 1);
	/* Without the copy: the same bits, and no new copy read. */
	assert_true(same_output(&f, &en, l, r, nt));
	assert_false(moe_store_resident_on(f.s, l, hot, other));
	check_pools_idle(&f);
	engines_free(&en);
	moe_store_close(f.s);
	f.s = NULL;
	unplan(&pl);
	close_fx(&f);
}

/* Load on node 0's experts only: the plan swaps owners. At the replan a
 * moved expert's old slot is freed at once when unused; held (on its
 * node, or as the owner's) it stays readable until released, and while
 * held as the owner's, wants for the owner join it; a demand read in
 * flight lands first; a queued prefetch is taken back. Then wants for
 * the owner read it into the new owner's pool. */
static void owners_move(void **t)
{
	struct moe_plan_change ch = { 0 };
	struct moe_msg err = { "" };
	const uint32_t l = 1;
	uint8_t before[16];
	uint32_t c[16], moved[16], n_moved = 0;
	struct moe_ffn_ptrs held_node, held_owner, pend, w;
	struct placed pl;
	struct fx f;

	open_placed(&f, &pl);
	memcpy(before, pl.p->layers[l].owner, sizeof(before));
	for (uint32_t e = 0; e < 16; e++)
		c[e] = before[e] == 0 ? 100 + e : 1;
	moe_plan_feed(pl.p, l, c);
	moe_plan_rebalance(pl.p, &ch);
	assert_true(ch.swaps > 0);
	for (uint32_t e = 0; e < 16; e++)
		if (pl.p->layers[l].owner[e] != before[e])
			moved[n_moved++] = e;
	assert_true(n_moved >= 4);

	/* Until the replan the store keeps the old owners. */
	for (uint32_t e = 0; e < 16; e++)
		if (e != moved[2] && e != moved[3])
			use(&f, l, e);
	for (uint32_t i = 0; i < n_moved; i++)
		assert_true(i >= 2 || moe_store_resident_on(f.s, l, moved[i],
							    before[moved[i]]));
	assert_int_equal(moe_store_want_on(f.s, l, moved[0], before[moved[0]],
					   &held_node, &err), 1);
	assert_int_equal(moe_store_want(f.s, l, moved[1], &held_owner, &err), 1);
	moe_store_pause_io(f.s, true);
	assert_int_equal(moe_store_want(f.s, l, moved[2], &pend, &err), 0);
	moe_store_prefetch(f.s, l, &moved[3], 1);
	assert_int_equal(moe_store_replan(f.s), n_moved);
	assert_int_equal(stats(&f).dropped, n_moved - 3);
	assert_false(moe_store_resident_on(f.s, l, moved[3], before[moved[3]]));
	assert_int_equal(moe_store_replan(f.s), 0); /* nothing new */
	moe_store_pause_io(f.s, false);
	assert_int_equal(moe_store_wait(f.s, l, moved[2], &pend, &err), 0);
	check_bytes(&f, l, moved[2], &pend);
	assert_int_equal(moe_store_pool_of(f.s, pend.gate),
			 (int)pool_of_node(&f, before[moved[2]]));
	moe_store_release(f.s, l, moved[2]);
	assert_false(moe_store_resident_on(f.s, l, moved[2], before[moved[2]]));

	/* Held as the owner's: another want for the owner joins it. */
	assert_int_equal(moe_store_want(f.s, l, moved[1], &w, &err), 1);
	assert_int_equal(moe_store_pool_of(f.s, w.gate),
			 (int)pool_of_node(&f, before[moved[1]]));
	moe_store_release(f.s, l, moved[1]);
	assert_true(held_ok(&f, l, moved[1], &held_owner));
	moe_store_release(f.s, l, moved[1]);
	/* Held on its old node: wants for the owner go to the new one. */
	assert_true(held_ok(&f, l, moved[0], &held_node));
	for (uint32_t i = 0; i < n_moved; i++) {
		uint32_t e = moved[i], now = pl.p->layers[l].owner[e];

		get(&f, l, e, &w);
		assert_int_equal(moe_store_pool_of(f.s, w.gate),
				 (int)pool_of_node(&f, now));
		assert_true(moe_store_resident_on(f.s, l, e, now));
		moe_store_release(f.s, l, e);
	}
	assert_true(moe_store_resident_on(f.s, l, moved[0], before[moved[0]]));
	assert_true(held_ok(&f, l, moved[0], &held_node));
	moe_store_release_on(f.s, l, moved[0], before[moved[0]]);
	for (uint32_t i = 0; i < n_moved; i++)
		assert_false(moe_store_resident_on(f.s, l, moved[i],
						   before[moved[i]]));
	assert_int_equal(stats(&f).dropped, n_moved);
	close_placed(&f, &pl);
	close_fx(&f);
}

/* get_mempolicy refused as by a seccomp filter: numa_available() < 0.
 * A two-node plan taken as this machine's still gets a pool per node,
 * in plain memory, and the topology says so once however many open. The
 * answer is kept per process: this must run before any test that opens
 * a topology (12 says one did). */
static int no_numa(struct fx *f)
{
	struct moe_topo_opts to = { .topology = "numa:2 core:1 pu:1" };
	struct moe_plan_opts po = { .cache_bytes = 1ull << 30 };
	struct moe_store_opts o = { .cache_bytes = 1ull << 30 };
	struct moe_store_pool ps;
	struct moe_msg err;
	struct moe_topo *t;
	struct moe_plan *p;

	setenv("HWLOC_THISSYSTEM", "1", 1);
	log_clear();
	for (int i = 0; i < 2; i++) {
		if (moe_topo_open(&t, &to, &err) ||
		    moe_plan_new(&p, t, f->m, &po, &err))
			return 11;
		if (t->numa_ok || !p->bind || p->numa)
			return 12;
		o.plan = p;
		if (moe_store_open(&f->s, f->m, &o, &err))
			return 13;
		for (uint32_t q = 0; q < 2; q++)
			if (moe_store_pool(f->s, q, &ps) || ps.os_node != -1 ||
			    ps.node != q)
				return 14;
		if (read_layer0(f))
			return 15;
		moe_store_close(f->s);
		moe_plan_free(p);
		moe_topo_close(t);
	}
	return log_count("no NUMA support") == 1 ? 0 : 16;
}

static void numa_unavailable(void **t)
{
	without_syscall(__NR_get_mempolicy, ENOSYS, no_numa);
}

/* ---- the io thread on the plan's io_cpus ---- */

/* io_cpus of a plan for this machine, one core reserved where there
 * are two: the io threads (io_uring's, then a pread pool) run there. A
 * synthetic plan's CPUs are not this machine's: no pinning. */
static void io_on_plan_cpus(void **t)
{
	cpu_set_t got, allowed;
	struct placed pl;
	struct fx f;

	gen_model(&f, TINY);
	assert_int_equal(sched_getaffinity(0, sizeof(allowed), &allowed), 0);
	for (int mode = 0; mode < 2; mode++) {
		struct moe_plan_opts po = {
			.reserve_cores = CPU_COUNT(&allowed) > 1,
		};
		struct moe_store_opts o = {
			.cache_bytes = 1ull << 30,
			.io = mode ? MOE_IO_PREAD : MOE_IO_AUTO,
		};
		char cpus[64], plan_cpus[64];

		plan_for(&f, &pl, NULL, &po);
		o.plan = pl.p;
		open_store(&f, &o);
		assert_int_equal(moe_store_io_affinity(f.s, &got), 0);
		if (!CPU_EQUAL(&got, &pl.p->io_cpus) || !stats(&f).io_pinned)
			fail_msg("%s: io threads on cpus %s, the plan says %s",
				 stats(&f).io_mode,
				 moe_cpuset_str(&got, cpus, sizeof(cpus)),
				 moe_cpuset_str(&pl.p->io_cpus, plan_cpus,
						sizeof(plan_cpus)));
		use(&f, 0, 1);
		print_message("%s threads pinned to cpus %s (%s)\n",
			      stats(&f).io_mode,
			      moe_cpuset_str(&got, cpus, sizeof(cpus)),
			      pl.p->io_reserved ? "a reserved core" :
						  "the io node's cores");
		moe_store_close(f.s);
		f.s = NULL;
		unplan(&pl);
	}
	close_fx(&f);
}

/* A two-node description taken as this machine's (HWLOC_THISSYSTEM):
 * its io CPU, the core it reserves on node 0 (CPU 1, then CPU 63), is
 * pinned when this machine has it, and is said and left unpinned when
 * not; pool 0's slabs are bound to node 0 (its pages checked there),
 * pool 1's to a node 1 this machine may lack (said once by the topology
 * layer: the memory stays plain). */
static void io_cpus_of_description(void **t)
{
	static const char *const desc[2] = { "numa:2 core:2 pu:1",
					     "numa:2 core:64 pu:1" };
	cpu_set_t allowed, got;
	struct fx f;

	gen_model(&f, TINY);
	assert_int_equal(sched_getaffinity(0, sizeof(allowed), &allowed), 0);
	setenv("HWLOC_THISSYSTEM", "1", 1);
	for (int i = 0; i < 2; i++) {
		struct moe_plan_opts po = { .reserve_cores = 1,
					    .cache_bytes = 1ull << 30 };
		struct moe_store_opts o = { .cache_bytes = 1ull << 30 };
		struct placed pl;
		struct moe_ffn_ptrs w;
		cpu_set_t in;
		bool have;

		plan_for(&f, &pl, desc[i], &po);
		assert_true(pl.p->bind);
		CPU_AND(&in, &allowed, &pl.p->io_cpus);
		have = CPU_EQUAL(&in, &pl.p->io_cpus);
		o.plan = pl.p;
		log_clear();
		open_store(&f, &o);
		assert_int_equal(moe_store_io_affinity(f.s, &got), 0);
		if (have) {
			assert_true(stats(&f).io_pinned);
			assert_true(CPU_EQUAL(&got, &pl.p->io_cpus));
			print_message("%s: io thread pinned to its io cpu\n", desc[i]);
		} else {
			assert_false(stats(&f).io_pinned);
			assert_int_equal(log_count("cannot run the io threads on cpus"), 1);
			assert_false(CPU_EQUAL(&got, &pl.p->io_cpus));
			print_message("%s: its io cpu is not this machine's: said, io unpinned\n",
				      desc[i]);
		}
		assert_int_equal(pool_st(&f, 0).os_node, pl.p->numa ? 0 : -1);
		assert_int_equal(pool_st(&f, 1).os_node, pl.p->numa ? 1 : -1);
		for (uint32_t e = 0; e < 8; e++) {
			uint32_t own = pl.p->layers[0].owner[e];

			get(&f, 0, e, &w);
			if (own == 0 && pl.t->numa_ok)
				check_on_node(&f, 0, e, &w, 0);
			moe_store_release(f.s, 0, e);
		}
		close_placed(&f, &pl);
	}
	unsetenv("HWLOC_THISSYSTEM");
	close_fx(&f);
}

/* ---- replans while others use the store ---- */

struct replanner {
	struct fx *f;
	struct moe_plan *p;
	uint32_t rounds;
	uint32_t marked;    /* read after join */
	atomic_bool *stop;  /* relaxed: only ends the wanters' loops */
};

/* Skewed load on a random expert of a random layer each round: swaps and
 * copies come and go. Only this thread touches the plan. */
static void *replan_main(void *a)
{
	struct replanner *rp = a;
	struct trng r = { 4242 };

	for (uint32_t i = 0; i < rp->rounds; i++) {
		uint32_t l = (uint32_t)(trng_next(&r) % 2);
		uint32_t hot = (uint32_t)(trng_next(&r) % 16), c[16];

		for (uint32_t e = 0; e < 16; e++)
			c[e] = e == hot ? 500 : (uint32_t)(trng_next(&r) % 40);
		moe_plan_feed(rp->p, l, c);
		moe_plan_rebalance(rp->p, NULL);
		rp->marked += moe_store_replan(rp->f->s);
		usleep(300);
	}
	atomic_store_explicit(rp->stop, true, memory_order_relaxed);
	return NULL;
}

struct node_wanter {
	struct fx *f;
	uint64_t seed;
	atomic_bool *stop;
	atomic_int *fail;   /* relaxed: read after join */
};

static uint32_t any_node(struct trng *r)
{
	uint32_t n = (uint32_t)(trng_next(r) % 3);

	return n == 2 ? MOE_STORE_OWNER : n;
}

/* want_on then wait_on; 0 with p filled and the reference kept. */
static int get_on(struct moe_store *s, uint32_t l, uint32_t e, uint32_t node,
		  struct moe_ffn_ptrs *p)
{
	struct moe_msg err;
	int rc = moe_store_want_on(s, l, e, node, p, &err);

	if (rc == 0)
		rc = moe_store_wait_on(s, l, e, node, p, &err);
	return rc < 0 ? rc : 0;
}

/* Up to three experts held at once, each on a random node or the
 * owner's; each released on the node it was wanted on. */
static void *node_wanter_main(void *a)
{
	struct node_wanter *w = a;
	struct trng r = { w->seed };
	int bad = 0;

	while (!atomic_load_explicit(w->stop, memory_order_relaxed)) {
		uint32_t l = (uint32_t)(trng_next(&r) % 2);
		uint32_t n = 1 + (uint32_t)(trng_next(&r) % 3);
		uint32_t ids[3], nodes[3];
		struct moe_ffn_ptrs p[3];

		for (uint32_t i = 0; i < n; i++) {
			ids[i] = (uint32_t)(trng_next(&r) % 16);
			nodes[i] = any_node(&r);
			for (uint32_t j = 0; j < i; j++)
				if (ids[j] == ids[i])
					ids[i] = (ids[i] + 1 + j) % 16;
			if (get_on(w->f->s, l, ids[i], nodes[i], &p[i])) {
				bad++;
				n = i;
				break;
			}
		}
		for (uint32_t i = 0; i < n; i++)
			bad += !held_ok(w->f, l, ids[i], &p[i]);
		for (uint32_t i = 0; i < n; i++)
			moe_store_release_on(w->f->s, l, ids[i], nodes[i]);
	}
	atomic_fetch_add_explicit(w->fail, bad, memory_order_relaxed);
	return NULL;
}

/* Three threads want experts on either node while a fourth rebalances a
 * two-node plan and replans: every held expert keeps the file's bytes
 * through the moves, and once all is released no slot is busy or lost. */
static void concurrent_replans(void **t)
{
	struct moe_store_opts o = { .policy = MOE_POLICY_LRU, .queue_depth = 4 };
	struct moe_plan_opts po = { 0 };
	atomic_bool stop = false;
	atomic_int fail = 0;
	struct node_wanter w[3];
	struct replanner rp;
	struct placed pl;
	pthread_t th[3], rth;
	struct fx f;

	gen_model(&f, "--arch llama --layers 2 --experts 16 --top-k 2 --embd 256 --ff 256");
	o.cache_bytes = po.cache_bytes = 24 * slot_bytes(&f);
	plan_for(&f, &pl, "numa:2 core:2 pu:1", &po);
	o.plan = pl.p;
	open_store(&f, &o);
	rp = (struct replanner){ &f, pl.p, 150, 0, &stop };
	for (int i = 0; i < 3; i++) {
		w[i] = (struct node_wanter){ &f, 7 + (uint64_t)i, &stop, &fail };
		pthread_create(&th[i], NULL, node_wanter_main, &w[i]);
	}
	pthread_create(&rth, NULL, replan_main, &rp);
	pthread_join(rth, NULL);
	for (int i = 0; i < 3; i++)
		pthread_join(th[i], NULL);
	assert_int_equal(atomic_load(&fail), 0);
	assert_true(rp.marked > 0);
	assert_true(pl.p->total.swaps + pl.p->total.copies_added > 0);
	for (int i = 0; i < 5000 && stats(&f).slots_busy; i++)
		usleep(1000);
	print_message("%u swaps, %u copies made, %u dropped; %u slots left their node\n",
		      pl.p->total.swaps, pl.p->total.copies_added,
		      pl.p->total.copies_dropped, rp.marked);
	close_placed(&f, &pl);
	close_fx(&f);
}

/* ---- many threads at once ---- */

struct stress {
	struct fx *f;
	uint64_t seed;
	uint32_t rounds;
	atomic_int *fail;   /* relaxed: read after join */
};

static void stress_round(struct stress *w, struct trng *r)
{
	uint32_t l = (uint32_t)(trng_next(r) % 2), n = 1 + (uint32_t)(trng_next(r) % 3);
	uint32_t ids[3];
	struct moe_ffn_ptrs p[3];
	struct moe_msg err;

	for (uint32_t i = 0; i < n; i++) {
		int rc;

		bool dup;

		do {
			ids[i] = (uint32_t)(trng_next(r) % 16);
			dup = false;
			for (uint32_t j = 0; j < i; j++)
				dup |= ids[j] == ids[i];
		} while (dup);
		rc = moe_store_want(w->f->s, l, ids[i], &p[i], &err);
		if (rc < 0)
			atomic_fetch_add_explicit(w->fail, 1, memory_order_relaxed);
		if (rc == 0 && moe_store_wait(w->f->s, l, ids[i], &p[i], &err))
			atomic_fetch_add_explicit(w->fail, 1, memory_order_relaxed);
	}
	for (uint32_t i = 0; i < n; i++)
		if (!held_ok(w->f, l, ids[i], &p[i]))
			atomic_fetch_add_explicit(w->fail, 1, memory_order_relaxed);
	for (uint32_t i = 0; i < n; i++)
		moe_store_release(w->f->s, l, ids[i]);
}

static void *stress_main(void *a)
{
	struct stress *w = a;
	struct trng r = { w->seed };

	for (uint32_t i = 0; i < w->rounds; i++) {
		if (w->seed == 99) { /* the prefetcher */
			uint32_t ids[2] = { (uint32_t)(trng_next(&r) % 16),
					    (uint32_t)(trng_next(&r) % 16) };

			moe_store_prefetch(w->f->s, (uint32_t)(trng_next(&r) % 2), ids, 2);
			continue;
		}
		stress_round(w, &r);
	}
	return NULL;
}

/* Three wanters holding up to three experts each, with duplicates across
 * threads, a prefetcher and a checker, on 12 slots; ids may collide
 * across threads, so joins happen. Every held expert has the file's
 * bytes; nothing leaks. */
static void concurrent(void **t)
{
	static const enum moe_policy pol[] = { MOE_POLICY_LRU, MOE_POLICY_PREDICT };
	struct fx f;

	gen_model(&f, "--arch llama --layers 2 --experts 16 --top-k 2 --embd 256 --ff 256");
	for (int pi = 0; pi < 2; pi++) {
		struct moe_store_opts o = { .policy = pol[pi], .queue_depth = 4,
					    .io = pi ? MOE_IO_PREAD : MOE_IO_AUTO };
		struct checker ck = { .s = NULL };
		atomic_int fail = 0;
		struct stress w[4];
		pthread_t th[4], cth;
		struct moe_store_stats st;

		o.cache_bytes = 12 * slot_bytes(&f);
		open_store(&f, &o);
		ck.s = f.s;
		pthread_create(&cth, NULL, check_main, &ck);
		for (int i = 0; i < 4; i++) {
			w[i] = (struct stress){ &f, i == 3 ? 99 : 1 + (uint64_t)i,
						i == 3 ? 400 : 300, &fail };
			pthread_create(&th[i], NULL, stress_main, &w[i]);
		}
		for (int i = 0; i < 4; i++)
			pthread_join(th[i], NULL);
		atomic_store_explicit(&ck.stop, true, memory_order_relaxed);
		pthread_join(cth, NULL);
		assert_int_equal(atomic_load(&fail), 0);
		assert_int_equal(atomic_load(&ck.bad), 0);
		/* Let prefetches in flight land before counting. */
		for (int i = 0; i < 5000 && stats(&f).slots_busy; i++)
			usleep(1000);
		st = stats(&f);
		assert_true(st.hits + st.misses + st.joins >= 3 * 300);
		assert_true(st.evictions > 0);
		check_idle(&f);
		moe_store_close(f.s);
		f.s = NULL;
	}
	close_fx(&f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(engine_lru),
		cmocka_unit_test(engine_below_a_pass),
		cmocka_unit_test(pinned_counted),
		cmocka_unit_test(budget_live_plain),
		cmocka_unit_test(budget_live_fixed),
		cmocka_unit_test(engine_lfu),
		cmocka_unit_test(engine_predict),
		cmocka_unit_test(engine_deepseek2),
		cmocka_unit_test(engine_uring),
		cmocka_unit_test(engine_pread),
		cmocka_unit_test(engine_buffered),
		cmocka_unit_test(uring_refused),
		cmocka_unit_test(fixed_refused),
		cmocka_unit_test(direct_refused),
		/* Before any test that opens a topology: see no_numa. */
		cmocka_unit_test(numa_unavailable),
		cmocka_unit_test(modes_contents),
		cmocka_unit_test(slot_classes),
		cmocka_unit_test(policy_lru),
		cmocka_unit_test(policy_lfu),
		cmocka_unit_test(policy_predict),
		cmocka_unit_test(policy_switched),
		cmocka_unit_test(lfu_ageing),
		cmocka_unit_test(shared_read),
		cmocka_unit_test(demand_first),
		cmocka_unit_test(prefetch_promoted),
		cmocka_unit_test(prefetch_accounting),
		cmocka_unit_test(enospace),
		cmocka_unit_test(truncated_file),
		cmocka_unit_test(injected_eio),
		cmocka_unit_test(einval_goes_buffered),
		cmocka_unit_test(concurrent),
		cmocka_unit_test(pools_per_node),
		cmocka_unit_test(pools_fall_back),
		cmocka_unit_test(copies_follow_plan),
		cmocka_unit_test(owners_move),
		cmocka_unit_test(io_on_plan_cpus),
		cmocka_unit_test(io_cpus_of_description),
		cmocka_unit_test(concurrent_replans),
	};

	/* A synthetic topology in the caller's environment would turn the
	 * tests of this machine into something else. */
	unsetenv("HWLOC_SYNTHETIC");
	unsetenv("HWLOC_XMLFILE");
	unsetenv("HWLOC_THISSYSTEM");
	moe_log_set(log_capture, NULL);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
