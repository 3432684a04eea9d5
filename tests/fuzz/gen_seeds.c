/* Writes the fuzz targets' seed corpora (`make fuzz-seeds`):
 *   seeds-gguf/   small whole GGUF files (header and zeroed data) covering
 *                 every value type, v2 and v3, a non-default alignment and
 *                 tensors of several types and ranks; and the header of
 *                 each moe-gen model named on the command line, with the
 *                 rest of its size in the last 8 bytes (as fuzz_gguf reads
 *                 them), so the model index sees real models;
 *   seeds-hello/  fuzz_hello's settings prefix and hello messages: valid,
 *                 refused for each reason, odd names, cut short;
 *   seeds-desc/   real arenas with valid and invalid descriptors in the
 *                 ring, and layouts ipc_arena_create made.
 * Usage: gen_seeds DIR [MODEL.gguf...]  (DIR: where the seeds-* go). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dtype.h"
#include "gguf.h"
#include "gguf_write.h"
#include "proto.h"
#include "shm.h"
#include "../testutil.h"

static const char *out_dir;

/* Write n bytes to out_dir/sub/name. */
static int put(const char *sub, const char *name, const void *p, size_t n)
{
	char path[512];
	FILE *f;
	int bad;

	snprintf(path, sizeof(path), "%s/%s/%s", out_dir, sub, name);
	f = fopen(path, "wb");
	if (!f) {
		perror(path);
		return 1;
	}
	bad = fwrite(p, 1, n, f) != n;
	bad |= fclose(f) != 0;
	if (bad)
		perror(path);
	return bad;
}

static int save(struct gguf_writer *w, const char *name)
{
	char path[512];
	int fd, rc;

	snprintf(path, sizeof(path), "%s/seeds-gguf/%s", out_dir, name);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (fd < 0) {
		perror(path);
		return 1;
	}
	rc = gguf_writer_write_header(w, fd);
	close(fd);
	gguf_writer_free(w);
	if (rc)
		fprintf(stderr, "%s: write failed (%d)\n", path, rc);
	return rc != 0;
}

static struct gguf_writer *minimal(void)
{
	return gguf_writer_new(3, 32);
}

/* Shaped like a MoE model: router, expert tensors, tokenizer arrays. */
static struct gguf_writer *moe(void)
{
	static const char *const toks[] = { "<s>", "</s>", "a", "" };
	static const int32_t tt[] = { 3, 3, 1, 1 };
	struct gguf_writer *w = gguf_writer_new(3, 32);

	gguf_w_str(w, "general.architecture", "qwen3moe");
	gguf_w_u32(w, "qwen3moe.expert_count", 2);
	gguf_w_u32(w, "qwen3moe.expert_used_count", 1);
	gguf_w_f32(w, "qwen3moe.expert_weights_scale", 2.5f);
	gguf_w_bool(w, "qwen3moe.expert_weights_norm", true);
	gguf_w_arr_str(w, "tokenizer.ggml.tokens", toks, 4);
	gguf_w_arr(w, "tokenizer.ggml.token_type", GGUF_T_I32, tt, 4);
	gguf_w_tensor(w, "blk.0.ffn_gate_inp.weight", 2, (uint64_t[]){ 8, 2 },
		      MOE_F32);
	gguf_w_tensor(w, "blk.0.ffn_up_exps.weight", 3,
		      (uint64_t[]){ 32, 1, 2 }, MOE_Q8_0);
	gguf_w_tensor(w, "blk.0.ffn_down_exps.weight", 3,
		      (uint64_t[]){ 256, 1, 1 }, MOE_Q4_K);
	return w;
}

/* v2, alignment 64, every scalar type and numeric arrays. */
static struct gguf_writer *scalars(void)
{
	struct gguf_writer *w = gguf_writer_new(2, 64);
	static const double f64[] = { 1.5, -2.25 };
	static const uint8_t bools[] = { 1, 0, 1 };
	int64_t i64 = -7;
	uint16_t u16 = 65535;
	int8_t i8 = -1;
	double d = 0.125;

	gguf_w_scalar(w, "s.u8", GGUF_T_U8, &(uint8_t){ 200 });
	gguf_w_scalar(w, "s.i8", GGUF_T_I8, &i8);
	gguf_w_scalar(w, "s.u16", GGUF_T_U16, &u16);
	gguf_w_scalar(w, "s.i16", GGUF_T_I16, &(int16_t){ -300 });
	gguf_w_i32(w, "s.i32", -70000);
	gguf_w_u64(w, "s.u64", 1ull << 40);
	gguf_w_scalar(w, "s.i64", GGUF_T_I64, &i64);
	gguf_w_scalar(w, "s.f64", GGUF_T_F64, &d);
	gguf_w_arr(w, "a.f64", GGUF_T_F64, f64, 2);
	gguf_w_arr(w, "a.bool", GGUF_T_BOOL, bools, 3);
	gguf_w_tensor(w, "t.bf16", 1, (uint64_t[]){ 4 }, MOE_BF16);
	return w;
}

/* Several types, ranks 1..4. */
static struct gguf_writer *types(void)
{
	struct gguf_writer *w = gguf_writer_new(3, 32);

	gguf_w_tensor(w, "t.f16", 4, (uint64_t[]){ 2, 2, 2, 2 }, MOE_F16);
	gguf_w_tensor(w, "t.q4_0", 2, (uint64_t[]){ 32, 3 }, MOE_Q4_0);
	gguf_w_tensor(w, "t.q6_k", 1, (uint64_t[]){ 256 }, MOE_Q6_K);
	gguf_w_tensor(w, "t.i8", 3, (uint64_t[]){ 5, 3, 1 }, 24);
	return w;
}

/* A moe-gen model's header, and the bytes after it as fuzz_gguf's
 * trailing size (shifted left 16: it shifts right). */
static int model_seed(const char *model)
{
	struct moe_msg err = { "" };
	struct gguf_file *g;
	uint64_t head, rest;
	char name[300];
	uint8_t *buf;
	int fd, bad;

	if (gguf_open(&g, model, &err)) {
		fprintf(stderr, "%s\n", err.text);
		return 1;
	}
	head = gguf_data_offset(g);
	rest = (gguf_file_size(g) - head) << 16;
	gguf_close(g);
	buf = malloc(head + 8);
	fd = open(model, O_RDONLY);
	bad = !buf || fd < 0 || pread(fd, buf, head, 0) != (ssize_t)head;
	if (fd >= 0)
		close(fd);
	if (!bad) {
		const char *base = strrchr(model, '/');

		memcpy(buf + head, &rest, 8);
		snprintf(name, sizeof(name), "model-%s", base ? base + 1 : model);
		bad = put("seeds-gguf", name, buf, head + 8);
	}
	free(buf);
	return bad;
}

/* ---- hello: fuzz_hello's 32-byte prefix, then the message ---- */

struct hello_prefix {
	uint32_t max_clients, max_tokens, max_inflight, n_clients;
	uint32_t uid, gid, allow, id_seed;
};

static int hello_seed(const char *name, struct hello_prefix p,
		      const struct ipc_hello *h, size_t n)
{
	uint8_t buf[sizeof(p) + sizeof(*h)];

	memcpy(buf, &p, sizeof(p));
	memcpy(buf + sizeof(p), h, n);
	return put("seeds-hello", name, buf, sizeof(p) + n);
}

static struct ipc_hello hello(uint32_t tokens, uint32_t inflight,
			      uint32_t route_k, const char *name)
{
	struct ipc_hello h;

	thello_init(&h, tokens, inflight, route_k, name);
	h.pid = 1234; /* the same bytes on every run */
	return h;
}

static int hello_seeds(void)
{
	/* moed's defaults (max-clients 64, 256 tokens, 8 in flight), less
	 * one as fuzz_hello adds one; uid 1000 allowed by its list. */
	struct hello_prefix def = { 63, 255, 7, 0, 1000, 1000, 0, 0 };
	struct hello_prefix uids = { 63, 255, 7, 2, 1000, 100, 0x0203, 999 };
	struct hello_prefix full = { 1, 255, 7, 2, 0, 0, 0, 0 };
	struct ipc_hello h = hello(64, 4, 8, "test_moed"), v = h;
	int bad = 0;

	bad |= hello_seed("hello-valid", def, &h, sizeof(h));
	bad |= hello_seed("hello-allowed-uid", uids, &h, sizeof(h));
	bad |= hello_seed("hello-max-clients", full, &h, sizeof(h));
	bad |= hello_seed("hello-short", def, &h, sizeof(h) - 40);
	h = hello(0, 0, 0, "");
	bad |= hello_seed("hello-zero-asks", def, &h, sizeof(h));
	h = hello(100000, 5000, 300, "a\nforged log line\x1b[31m");
	bad |= hello_seed("hello-over-limits-odd-name", def, &h, sizeof(h));
	v.ver_min = 2;
	v.ver_max = 9;
	bad |= hello_seed("hello-version-too-new", def, &v, sizeof(v));
	v.ver_min = 3;
	v.ver_max = 1;
	bad |= hello_seed("hello-version-inverted", def, &v, sizeof(v));
	v = hello(8, 1, 0, "moectl");
	v.h.type = IPC_MSG_STATUS;
	bad |= hello_seed("hello-wrong-type", def, &v, sizeof(v));
	return bad;
}

/* ---- descriptors: fuzz_desc's modes ---- */

static struct ipc_desc desc(uint32_t slot, uint32_t nt, uint32_t flags,
			    uint32_t route_k)
{
	return (struct ipc_desc){ .id = 7, .layer = 1, .n_tokens = nt,
				  .slot = slot, .flags = flags,
				  .route_k = route_k };
}

/* Mode 0: parameter bytes (see real_arena), the head jump, then ring
 * entries: sq 8, cq 8, 4 slots, 16 tokens, n_embd 64, route_k 8. */
static int ring_seed(const char *name, const struct ipc_desc *d, uint32_t n,
		     uint32_t jump)
{
	uint8_t buf[1 + 12 + 4 + 8 * sizeof(*d)] = { 0 };
	uint8_t par[12] = { 3, 3, 4, 16, 0, 64, 0, 1, 0, 0, 0, 0 };

	memcpy(buf + 1, par, sizeof(par));
	memcpy(buf + 13, &jump, 4);
	memcpy(buf + 17, d, n * sizeof(*d));
	return put("seeds-desc", name, buf, 17 + n * sizeof(*d));
}

/* Mode 1: a header ipc_arena_create laid out, its size, descriptors. */
static int layout_seed(const char *name, const struct ipc_arena_params *ap,
		       const struct ipc_desc *d, uint32_t n)
{
	uint8_t buf[1 + sizeof(struct ipc_arena_hdr) + 8 + 4 * sizeof(*d)];
	struct ipc_arena a;
	int rc = ipc_arena_create(&a, ap);

	if (rc) {
		fprintf(stderr, "%s: ipc_arena_create: %d\n", name, rc);
		return 1;
	}
	a.lay.moed_pid = 0; /* the same bytes on every run */
	buf[0] = 1;
	memcpy(buf + 1, &a.lay, sizeof(a.lay));
	memcpy(buf + 1 + sizeof(a.lay), &a.lay.total_size, 8);
	memcpy(buf + 9 + sizeof(a.lay), d, n * sizeof(*d));
	ipc_arena_close(&a);
	return put("seeds-desc", name, buf, 9 + sizeof(a.lay) + n * sizeof(*d));
}

static int desc_seeds(void)
{
	struct ipc_desc ok[4] = {
		desc(0, 1, 0, 0), desc(3, 16, 0, 0),
		desc(1, 4, IPC_DESC_ROUTED, 8), desc(2, 2, 0, 0),
	};
	struct ipc_desc bad[4] = {
		desc(4, 1, 0, 0),               /* slot past the arena */
		desc(0, 17, 0, 0),              /* too many tokens */
		desc(0, 1, IPC_DESC_ROUTED, 9), /* route_k past the grant */
		desc(0, 1, 0x80, 0),            /* unknown flag */
	};
	struct ipc_arena_params ap = { 8, 8, 4, 16, 64, 8, 1, 0 };
	struct ipc_arena_params wrap = { 4, 4, 2, 4, 32, 0, 1, 0xfffffffeu };
	int rc = 0;

	ok[0].top_p = 0.9f;
	ok[0].min_k = 1;
	ok[0].max_k = 4;
	bad[3].top_p = 2.0f;
	rc |= ring_seed("desc-ring-valid", ok, 4, 4 << 1);
	rc |= ring_seed("desc-ring-invalid", bad, 4, 4 << 1);
	rc |= ring_seed("desc-ring-head-ahead", ok, 4, 1000 << 1);
	rc |= layout_seed("desc-layout-valid", &ap, ok, 4);
	rc |= layout_seed("desc-layout-invalid", &ap, bad, 4);
	rc |= layout_seed("desc-layout-wrapping-ring", &wrap, ok, 1);
	return rc;
}

int main(int argc, char **argv)
{
	int bad;

	if (argc < 2) {
		fprintf(stderr, "usage: gen_seeds DIR [MODEL.gguf...]\n");
		return 2;
	}
	out_dir = argv[1];
	bad = save(minimal(), "gguf-minimal.gguf") |
	      save(moe(), "gguf-moe.gguf") |
	      save(scalars(), "gguf-v2-scalars-align64.gguf") |
	      save(types(), "gguf-types.gguf");
	for (int i = 2; i < argc; i++)
		bad |= model_seed(argv[i]);
	bad |= hello_seeds();
	bad |= desc_seeds();
	return bad;
}
