/* GGUF reader: parses a model file's header (metadata and tensor infos)
 * from a growing prefix of the file, checks every field against the file's
 * size, and indexes keys and tensors by name. Tensor data is never read. */
#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <moe/moeclient.h>

#include "dtype.h"
#include "gguf.h"

/* Sizes are carried in uint64_t and handed to malloc as size_t. */
_Static_assert(SIZE_MAX >= UINT64_MAX, "moed needs a 64-bit size_t");

#define FIRST_CHUNK (64u << 10)
/* Real headers (tokenizer vocabularies included) are tens of MiB at most;
 * a length that fits a huge sparse file must not make us read gigabytes. */
#define MAX_HEADER_READ (1ull << 30)
#define ARENA_BLOCK (64u << 10)
#define HEADER_BYTES 24u
#define MAX_KEY_LEN 65535u /* the spec's limit for keys */
#define MAX_NAME_LEN 64u   /* the spec's limit for tensor names */
/* The smallest possible entries, so that a count that cannot fit in the
 * file is refused before anything is allocated for it: a key of one byte
 * with a one-byte value; a tensor name of one byte with one dimension. */
#define MIN_KV_BYTES (8u + 1 + 4 + 1)
#define MIN_TENSOR_BYTES (8u + 1 + 4 + 8 + 4 + 8)

/* Strings (NUL-terminated copies), numeric arrays and string tables live
 * in blocks that never move, so the header buffer can grow (and be freed
 * after parsing) without invalidating what points into them. */
struct arena_blk {
	struct arena_blk *next;
	size_t used, cap;
	max_align_t mem[];
};

struct index {
	size_t *slot; /* entry + 1; 0 marks an empty slot */
	size_t mask;
};

struct gguf_file {
	char *path;
	int fd;
	uint32_t version;
	uint32_t alignment;
	uint64_t file_size;
	uint64_t data_off;
	uint64_t bytes_read;
	struct gguf_kv *kvs;
	size_t n_kv, kv_cap;
	struct gguf_tensor *tensors;
	size_t n_tensors, tensor_cap;
	struct index kv_ix, tensor_ix;
	struct arena_blk *arena;
};

struct parser {
	const char *name;
	struct moe_msg *err;
	int fd;            /* -1: buf is all there is */
	uint64_t file_size;
	const uint8_t *buf; /* the file's bytes [0, len) */
	uint64_t len;
	uint8_t *own;      /* buf, when read from fd */
	uint64_t nread;
	uint64_t pos;
	char where[200];   /* the entry being parsed, for messages */
	struct gguf_file *f;
};

static const uint8_t vtype_size[GGUF_T_COUNT] = {
	[GGUF_T_U8] = 1, [GGUF_T_I8] = 1, [GGUF_T_U16] = 2, [GGUF_T_I16] = 2,
	[GGUF_T_U32] = 4, [GGUF_T_I32] = 4, [GGUF_T_F32] = 4, [GGUF_T_BOOL] = 1,
	[GGUF_T_U64] = 8, [GGUF_T_I64] = 8, [GGUF_T_F64] = 8,
};

static const char *const vtype_names[GGUF_T_COUNT] = {
	"u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool",
	"string", "array", "u64", "i64", "f64",
};

size_t gguf_vtype_size(uint32_t t)
{
	return t < GGUF_T_COUNT ? vtype_size[t] : 0;
}

const char *gguf_vtype_name(uint32_t t)
{
	return t < GGUF_T_COUNT ? vtype_names[t] : "unknown";
}

/* ---- arena ---- */

static struct arena_blk *blk_new(size_t cap)
{
	struct arena_blk *b = malloc(sizeof(*b) + cap);

	if (b) {
		b->used = 0;
		b->cap = cap;
	}
	return b;
}

/* 8-byte aligned. A large request gets a block of its own, linked behind
 * the current one so the current block's free tail is not abandoned. */
static void *arena_alloc(struct arena_blk **head, size_t n)
{
	struct arena_blk *b = *head;
	size_t at = b ? (b->used + 7) & ~(size_t)7 : 0;

	if (b && at <= b->cap && n <= b->cap - at) {
		b->used = at + n;
		return (char *)b->mem + at;
	}
	b = blk_new(n > ARENA_BLOCK / 4 ? n : ARENA_BLOCK);
	if (!b)
		return NULL;
	b->used = n;
	if (*head && n > ARENA_BLOCK / 4) {
		b->next = (*head)->next;
		(*head)->next = b;
	} else {
		b->next = *head;
		*head = b;
	}
	return b->mem;
}

static void arena_free(struct arena_blk *b)
{
	while (b) {
		struct arena_blk *next = b->next;

		free(b);
		b = next;
	}
}

/* ---- messages ---- */

/* A name from the file, printable and short enough for a message. */
static void quote(char *out, size_t cap, const struct gguf_str *s)
{
	size_t n = 0, max = cap - 4;

	for (uint64_t i = 0; i < s->len; i++) {
		unsigned char c = (unsigned char)s->ptr[i];

		if (n == max) {
			memcpy(out + n, "...", 3);
			n += 3;
			break;
		}
		out[n++] = c >= 0x20 && c < 0x7f ? (char)c : '?';
	}
	out[n] = 0;
}

__attribute__((format(printf, 3, 4)))
static int fail(struct parser *p, int code, const char *fmt, ...)
{
	char what[320];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	if (p->where[0])
		moe_msgf(p->err, code, "%s: %s: %s", p->name, p->where, what);
	else
		moe_msgf(p->err, code, "%s: %s", p->name, what);
	return code; /* visibly nonzero, for the compiler's flow analysis */
}

static void where_kv(struct parser *p, const struct gguf_kv *kv)
{
	char q[80];

	quote(q, sizeof(q), &kv->key);
	snprintf(p->where, sizeof(p->where), "key '%s' (at byte %" PRIu64 ")",
		 q, kv->file_off);
}

static void where_tensor(struct parser *p, const struct gguf_tensor *t)
{
	char q[80];

	quote(q, sizeof(q), &t->name);
	snprintf(p->where, sizeof(p->where),
		 "tensor '%s' (info at byte %" PRIu64 ")", q, t->info_off);
}

/* ---- reading the file's bytes ---- */

/* Read more of the file: at least up to upto, at least double what is
 * held, never past the end. */
static int grow(struct parser *p, uint64_t upto)
{
	uint64_t want = p->len * 2;
	uint8_t *nb;
	char eb[64];

	if (upto > MAX_HEADER_READ)
		return fail(p, -MOE_EUNSUPPORTED, "the header would reach byte %"
			    PRIu64 ", past the %llu MiB this reader accepts",
			    upto, MAX_HEADER_READ >> 20);
	if (want > MAX_HEADER_READ)
		want = MAX_HEADER_READ;
	if (want < FIRST_CHUNK)
		want = FIRST_CHUNK;
	if (want < upto)
		want = upto;
	if (want > p->file_size)
		want = p->file_size;
	nb = realloc(p->own, want);
	if (!nb)
		return fail(p, -ENOMEM, "cannot hold %" PRIu64 " header bytes",
			    want);
	p->own = nb;
	p->buf = nb;
	while (p->len < want) {
		ssize_t r = pread(p->fd, nb + p->len, want - p->len, p->len);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			int e = errno;

			return fail(p, -e, "read at byte %" PRIu64 ": %s",
				    p->len, strerror_r(e, eb, sizeof(eb)));
		}
		if (r == 0)
			return fail(p, -EIO, "file shrank below %" PRIu64
				    " bytes while its header was read",
				    p->file_size);
		p->len += (uint64_t)r;
		p->nread += (uint64_t)r;
	}
	return 0;
}

/* Make n bytes at pos available, or say why they are not. */
static int need(struct parser *p, uint64_t n, const char *field)
{
	if (n > p->file_size - p->pos)
		return fail(p, -MOE_EFORMAT, "truncated: %s at byte %" PRIu64
			    " needs %" PRIu64 " bytes but the file ends at "
			    "byte %" PRIu64, field, p->pos, n, p->file_size);
	if (n <= p->len - p->pos)
		return 0;
	if (p->fd < 0)
		return fail(p, -MOE_EFORMAT, "truncated: %s at byte %" PRIu64
			    " needs %" PRIu64 " bytes but only the first %"
			    PRIu64 " bytes were given", field, p->pos, n,
			    p->len);
	return grow(p, p->pos + n);
}

/* An n-byte little-endian unsigned integer, whatever the host's order. */
static int rd(struct parser *p, unsigned n, uint64_t *v, const char *field)
{
	const uint8_t *b;
	int rc = need(p, n, field);

	if (rc)
		return rc;
	b = p->buf + p->pos; /* after need(), which may move the buffer */
	*v = 0;
	for (unsigned i = n; i--;)
		*v = *v << 8 | b[i];
	p->pos += n;
	return 0;
}

static int rd_u32(struct parser *p, uint32_t *v, const char *field)
{
	uint64_t x = 0;
	int rc = rd(p, 4, &x, field);

	*v = (uint32_t)x;
	return rc;
}

static int rd_u64(struct parser *p, uint64_t *v, const char *field)
{
	return rd(p, 8, v, field);
}

/* A string's length, checked against limits and the file's end. */
static int rd_len(struct parser *p, uint64_t *len, const char *field,
		  uint64_t min, uint64_t max)
{
	uint64_t at = p->pos;
	int rc = rd_u64(p, len, field);

	if (rc)
		return rc;
	if (*len < min)
		return fail(p, -MOE_EFORMAT, "%s at byte %" PRIu64
			    " is empty", field, at);
	if (*len > max)
		return fail(p, -MOE_EFORMAT, "%s length %" PRIu64 " at byte %"
			    PRIu64 " exceeds the limit of %" PRIu64, field,
			    *len, at, max);
	if (*len > p->file_size - p->pos)
		return fail(p, -MOE_EFORMAT, "%s length %" PRIu64 " at byte %"
			    PRIu64 " runs past the end of the file (%" PRIu64
			    " bytes remain)", field, *len, at,
			    p->file_size - p->pos);
	return need(p, *len, field);
}

/* A string, copied into the arena with a NUL after it. */
static int rd_str(struct parser *p, struct gguf_str *s, const char *field,
		  uint64_t min, uint64_t max)
{
	uint64_t len;
	char *c;
	int rc = rd_len(p, &len, field, min, max);

	if (rc)
		return rc;
	c = arena_alloc(&p->f->arena, len + 1);
	if (!c)
		return fail(p, -ENOMEM, "no memory for a %" PRIu64
			    "-byte string", len);
	memcpy(c, p->buf + p->pos, len);
	c[len] = 0;
	p->pos += len;
	s->ptr = c;
	s->len = len;
	return 0;
}

static int skip_str(struct parser *p, const char *field)
{
	uint64_t len;
	int rc = rd_len(p, &len, field, 0, UINT64_MAX);

	p->pos += rc ? 0 : len;
	return rc;
}

/* ---- metadata ---- */

static int rd_vtype(struct parser *p, uint32_t *t, const char *field)
{
	uint64_t at = p->pos;
	int rc = rd_u32(p, t, field);

	if (rc)
		return rc;
	if (*t >= GGUF_T_COUNT)
		return fail(p, -MOE_EFORMAT, "%s %" PRIu32 " at byte %" PRIu64
			    " is unknown (0..%d are defined)", field, *t, at,
			    GGUF_T_COUNT - 1);
	return 0;
}

static int rd_scalar(struct parser *p, struct gguf_kv *kv)
{
	uint64_t at = p->pos, v;
	uint32_t u32;
	float f32;
	int rc = rd(p, vtype_size[kv->type], &v, "value");

	if (rc)
		return rc;
	switch (kv->type) {
	case GGUF_T_I8:
		kv->v.i = (int8_t)v;
		break;
	case GGUF_T_I16:
		kv->v.i = (int16_t)v;
		break;
	case GGUF_T_I32:
		kv->v.i = (int32_t)v;
		break;
	case GGUF_T_I64:
		kv->v.i = (int64_t)v;
		break;
	case GGUF_T_F32:
		u32 = (uint32_t)v;
		memcpy(&f32, &u32, sizeof(f32));
		kv->v.f = f32;
		break;
	case GGUF_T_F64:
		memcpy(&kv->v.f, &v, sizeof(v));
		break;
	case GGUF_T_BOOL:
		if (v > 1)
			return fail(p, -MOE_EFORMAT, "bool value %" PRIu64
				    " at byte %" PRIu64 " is neither 0 nor 1",
				    v, at);
		/* fall through */
	default:
		kv->v.u = v;
	}
	return 0;
}

static int check_bools(struct parser *p, const uint8_t *b, uint64_t n)
{
	for (uint64_t j = 0; j < n; j++)
		if (b[j] > 1)
			return fail(p, -MOE_EFORMAT, "bool element %" PRIu64
				    " at byte %" PRIu64 " is %u, neither 0 nor 1",
				    j, p->pos + j, b[j]);
	return 0;
}

static int rd_num_array(struct parser *p, struct gguf_kv *kv, uint64_t at)
{
	uint64_t n = kv->v.arr.n, es = vtype_size[kv->v.arr.type];
	void *d;
	int rc;

	if (n > (p->file_size - p->pos) / es)
		return fail(p, -MOE_EFORMAT, "array count %" PRIu64 " at byte %"
			    PRIu64 ": %" PRIu64 "-byte elements run past the "
			    "end of the file (%" PRIu64 " bytes remain)", n, at,
			    es, p->file_size - p->pos);
	rc = need(p, n * es, "array elements");
	if (rc)
		return rc;
	if (kv->v.arr.type == GGUF_T_BOOL) {
		rc = check_bools(p, p->buf + p->pos, n);
		if (rc)
			return rc;
	}
	d = arena_alloc(&p->f->arena, n * es);
	if (!d)
		return fail(p, -ENOMEM, "no memory for %" PRIu64 " elements", n);
	memcpy(d, p->buf + p->pos, n * es);
	p->pos += n * es;
	kv->v.arr.data = d;
	return 0;
}

/* Walk the strings once before the count is trusted with an allocation:
 * then the table costs at most twice the bytes actually read. */
static int rd_str_array(struct parser *p, struct gguf_kv *kv, uint64_t at)
{
	uint64_t n = kv->v.arr.n, start = p->pos;
	struct gguf_str *v;
	int rc;

	if (n > (p->file_size - p->pos) / 8)
		return fail(p, -MOE_EFORMAT, "array count %" PRIu64 " at byte %"
			    PRIu64 ": that many strings cannot fit in the %"
			    PRIu64 " bytes that remain", n, at,
			    p->file_size - p->pos);
	for (uint64_t j = 0; j < n; j++)
		if ((rc = skip_str(p, "string element")))
			return rc;
	p->pos = start;
	v = arena_alloc(&p->f->arena, n * sizeof(*v));
	if (!v)
		return fail(p, -ENOMEM, "no memory for %" PRIu64 " strings", n);
	for (uint64_t j = 0; j < n; j++)
		if ((rc = rd_str(p, &v[j], "string element", 0, UINT64_MAX)))
			return rc;
	kv->v.arr.data = v;
	return 0;
}

static int rd_array(struct parser *p, struct gguf_kv *kv)
{
	uint64_t at = p->pos;
	int rc = rd_vtype(p, &kv->v.arr.type, "array element type");

	if (rc)
		return rc;
	if (kv->v.arr.type == GGUF_T_ARRAY)
		return fail(p, -MOE_EUNSUPPORTED, "array element type at byte %"
			    PRIu64 " is array: nested arrays are not "
			    "supported", at);
	at = p->pos;
	rc = rd_u64(p, &kv->v.arr.n, "array count");
	if (rc)
		return rc;
	if (kv->v.arr.type == GGUF_T_STRING)
		return rd_str_array(p, kv, at);
	return rd_num_array(p, kv, at);
}

/* general.alignment decides where the data section starts, so it must be
 * exactly what the spec says: a u32 power of two. */
static int check_alignment(struct parser *p, const struct gguf_kv *kv)
{
	static const char key[] = "general.alignment";
	uint64_t at = kv->file_off + 8 + kv->key.len + 4;

	if (kv->key.len != sizeof(key) - 1 || memcmp(kv->key.ptr, key,
						     sizeof(key) - 1))
		return 0;
	if (kv->type != GGUF_T_U32)
		return fail(p, -MOE_EFORMAT, "value type %s at byte %" PRIu64
			    ", but general.alignment must be u32",
			    gguf_vtype_name(kv->type), at - 4);
	if (!kv->v.u || (kv->v.u & (kv->v.u - 1)))
		return fail(p, -MOE_EFORMAT, "alignment %" PRIu64 " at byte %"
			    PRIu64 " is not a nonzero power of two",
			    kv->v.u, at);
	p->f->alignment = (uint32_t)kv->v.u;
	return 0;
}

static int parse_kv(struct parser *p, uint64_t i, struct gguf_kv *kv)
{
	int rc;

	memset(kv, 0, sizeof(*kv));
	kv->file_off = p->pos;
	snprintf(p->where, sizeof(p->where), "key #%" PRIu64 " (at byte %"
		 PRIu64 ")", i, kv->file_off);
	rc = rd_str(p, &kv->key, "key", 1, MAX_KEY_LEN);
	if (rc)
		return rc;
	where_kv(p, kv);
	rc = rd_vtype(p, &kv->type, "value type");
	if (rc)
		return rc;
	if (kv->type == GGUF_T_STRING)
		rc = rd_str(p, &kv->v.s, "string value", 0, UINT64_MAX);
	else if (kv->type == GGUF_T_ARRAY)
		rc = rd_array(p, kv);
	else
		rc = rd_scalar(p, kv);
	return rc ? rc : check_alignment(p, kv);
}

/* ---- name index ---- */

typedef const struct gguf_str *(*name_fn)(const struct gguf_file *, size_t);

static const struct gguf_str *kv_name(const struct gguf_file *f, size_t i)
{
	return &f->kvs[i].key;
}

static const struct gguf_str *tensor_name(const struct gguf_file *f,
					  size_t i)
{
	return &f->tensors[i].name;
}

static uint64_t fnv1a(const char *s, uint64_t n)
{
	uint64_t h = 0xcbf29ce484222325ull;

	for (uint64_t i = 0; i < n; i++)
		h = (h ^ (unsigned char)s[i]) * 0x100000001b3ull;
	return h;
}

/* The entry named s, or SIZE_MAX with *slot set to where it would go. */
static size_t ix_probe(const struct index *ix, const struct gguf_file *f,
		       name_fn name, const char *s, uint64_t len, size_t *slot)
{
	size_t h = (size_t)fnv1a(s, len) & ix->mask;

	for (;; h = (h + 1) & ix->mask) {
		const struct gguf_str *k;

		if (!ix->slot[h]) {
			*slot = h;
			return SIZE_MAX;
		}
		k = name(f, ix->slot[h] - 1);
		if (k->len == len && !memcmp(k->ptr, s, len))
			return ix->slot[h] - 1;
	}
}

/* Index entries 0..n-1; on a duplicate name return its first holder and
 * set *dup to the second. Load factor stays at or under one half. */
static int ix_build(struct index *ix, const struct gguf_file *f, name_fn name,
		    size_t n, size_t *first, size_t *dup)
{
	size_t cap = 8, slot;

	while (cap < 2 * n)
		cap *= 2;
	ix->slot = calloc(cap, sizeof(*ix->slot));
	if (!ix->slot)
		return -ENOMEM;
	ix->mask = cap - 1;
	for (size_t i = 0; i < n; i++) {
		const struct gguf_str *k = name(f, i);

		*first = ix_probe(ix, f, name, k->ptr, k->len, &slot);
		if (*first != SIZE_MAX) {
			*dup = i;
			return 1;
		}
		ix->slot[slot] = i + 1;
	}
	return 0;
}

static size_t ix_find(const struct index *ix, const struct gguf_file *f,
		      name_fn name, const char *s)
{
	size_t slot;

	if (!f || !s || !ix->slot)
		return SIZE_MAX;
	return ix_probe(ix, f, name, s, strlen(s), &slot);
}

static int index_kvs(struct parser *p)
{
	struct gguf_file *f = p->f;
	size_t first, dup;
	int rc = ix_build(&f->kv_ix, f, kv_name, f->n_kv, &first, &dup);

	if (rc < 0)
		return fail(p, rc, "no memory for the key index");
	if (rc == 0)
		return 0;
	where_kv(p, &f->kvs[dup]);
	return fail(p, -MOE_EFORMAT, "duplicate key: it is already defined "
		    "at byte %" PRIu64, f->kvs[first].file_off);
}

static int index_tensors(struct parser *p)
{
	struct gguf_file *f = p->f;
	size_t first, dup;
	int rc = ix_build(&f->tensor_ix, f, tensor_name, f->n_tensors, &first,
			  &dup);

	if (rc < 0)
		return fail(p, rc, "no memory for the tensor index");
	if (rc == 0)
		return 0;
	where_tensor(p, &f->tensors[dup]);
	return fail(p, -MOE_EFORMAT, "duplicate tensor name: its info at byte "
		    "%" PRIu64 " has it too", f->tensors[first].info_off);
}

/* ---- tensor infos ---- */

/* Grow an array so it holds n entries; grows with what was parsed, not
 * with the count the file claims. */
static int reserve(void *arr, size_t *cap, size_t n, size_t elsize)
{
	void **a = arr;
	size_t c = *cap ? *cap : 16;
	void *na;

	if (n <= *cap)
		return 0;
	while (c < n)
		c *= 2;
	na = realloc(*a, c * elsize);
	if (!na)
		return -ENOMEM;
	*a = na;
	*cap = c;
	return 0;
}

static int rd_dims(struct parser *p, struct gguf_tensor *t, uint64_t *nelem)
{
	uint64_t at = p->pos;
	int rc = rd_u32(p, &t->n_dims, "n_dims");

	*nelem = 1;
	if (rc)
		return rc;
	if (t->n_dims < 1 || t->n_dims > GGUF_MAX_DIMS)
		return fail(p, -MOE_EFORMAT, "n_dims %" PRIu32 " at byte %"
			    PRIu64 " is not in 1..%d", t->n_dims, at,
			    GGUF_MAX_DIMS);
	for (uint32_t j = 0; j < GGUF_MAX_DIMS; j++)
		t->ne[j] = 1;
	for (uint32_t j = 0; j < t->n_dims; j++) {
		char field[16];

		at = p->pos;
		snprintf(field, sizeof(field), "ne[%" PRIu32 "]", j);
		if ((rc = rd_u64(p, &t->ne[j], field)))
			return rc;
		if (t->ne[j] == 0)
			return fail(p, -MOE_EFORMAT, "ne[%" PRIu32 "] at byte %"
				    PRIu64 " is 0", j, at);
		if (t->ne[j] > INT64_MAX / *nelem)
			return fail(p, -MOE_EFORMAT, "ne[%" PRIu32 "] = %" PRIu64
				    " at byte %" PRIu64 " overflows the element "
				    "count (%" PRIu64 " before it)", j,
				    t->ne[j], at, *nelem);
		*nelem *= t->ne[j];
	}
	return 0;
}

static int rd_type(struct parser *p, struct gguf_tensor *t, uint64_t nelem)
{
	const struct moe_dtype_info *ti;
	uint64_t at = p->pos;
	int rc = rd_u32(p, &t->type, "type");

	if (rc)
		return rc;
	ti = moe_dtype_info(t->type);
	if (!ti)
		return fail(p, -MOE_EFORMAT, "type %" PRIu32 " at byte %" PRIu64
			    " is not a known ggml type", t->type, at);
	if (t->ne[0] % ti->block)
		return fail(p, -MOE_EFORMAT, "ne[0] = %" PRIu64 " is not a "
			    "multiple of the %s block of %" PRIu32 " elements",
			    t->ne[0], ti->name, ti->block);
	if (nelem / ti->block > INT64_MAX / ti->block_size)
		return fail(p, -MOE_EFORMAT, "%" PRIu64 " elements of %s "
			    "overflow the byte size", nelem, ti->name);
	t->size = nelem / ti->block * ti->block_size;
	return 0;
}

static int parse_tensor(struct parser *p, uint64_t i, struct gguf_tensor *t)
{
	uint64_t nelem;
	int rc;

	memset(t, 0, sizeof(*t));
	t->info_off = p->pos;
	snprintf(p->where, sizeof(p->where), "tensor #%" PRIu64
		 " (info at byte %" PRIu64 ")", i, t->info_off);
	rc = rd_str(p, &t->name, "tensor name", 1, MAX_NAME_LEN);
	if (rc)
		return rc;
	where_tensor(p, t);
	if ((rc = rd_dims(p, t, &nelem)) || (rc = rd_type(p, t, nelem)))
		return rc;
	return rd_u64(p, &t->offset, "offset");
}

/* The offset field ends each info, 8 bytes before the next one. */
static uint64_t offset_field(const struct gguf_tensor *t)
{
	return t->info_off + 8 + t->name.len + 4 + 8 * t->n_dims + 4;
}

static int place_tensor(struct parser *p, struct gguf_tensor *t)
{
	uint64_t data = p->f->data_off, end = p->file_size;

	where_tensor(p, t);
	if (t->offset % p->f->alignment)
		return fail(p, -MOE_EFORMAT, "offset %" PRIu64 " (at byte %"
			    PRIu64 ") is not a multiple of alignment %" PRIu32,
			    t->offset, offset_field(t), p->f->alignment);
	if (data > end || t->offset > end - data ||
	    t->size > end - data - t->offset)
		return fail(p, -MOE_EFORMAT, "data (offset %" PRIu64 " at byte %"
			    PRIu64 ", %" PRIu64 " bytes, data section at byte %"
			    PRIu64 ") runs past the end of the file at byte %"
			    PRIu64, t->offset, offset_field(t), t->size, data,
			    end);
	t->file_off = data + t->offset;
	return 0;
}

struct span {
	uint64_t off, size;
	size_t i;
};

static int span_cmp(const void *a, const void *b)
{
	const struct span *x = a, *y = b;

	return x->off < y->off ? -1 : x->off > y->off;
}

/* Two tensors sharing bytes would make writes to one corrupt the other
 * and mean the file was not written by a sane writer. */
static int check_overlap(struct parser *p)
{
	struct gguf_file *f = p->f;
	struct span *s = malloc((f->n_tensors + 1) * sizeof(*s));
	int rc = 0;

	if (!s)
		return fail(p, -ENOMEM, "no memory to sort tensors");
	for (size_t i = 0; i < f->n_tensors; i++)
		s[i] = (struct span){ f->tensors[i].offset,
				      f->tensors[i].size, i };
	qsort(s, f->n_tensors, sizeof(*s), span_cmp);
	for (size_t i = 1; i < f->n_tensors && !rc; i++) {
		const struct span *a = &s[i - 1], *b = &s[i];
		char q[80];

		if (b->off - a->off >= a->size)
			continue;
		where_tensor(p, &f->tensors[b->i]);
		quote(q, sizeof(q), &f->tensors[a->i].name);
		rc = fail(p, -MOE_EFORMAT, "data at offset %" PRIu64 " overlaps "
			  "tensor '%s' (offset %" PRIu64 ", %" PRIu64 " bytes)",
			  b->off, q, a->off, a->size);
	}
	free(s);
	return rc;
}

static int parse_tensors(struct parser *p, uint64_t n)
{
	struct gguf_file *f = p->f;
	uint64_t a;
	int rc;

	for (uint64_t i = 0; i < n; i++) {
		if (reserve(&f->tensors, &f->tensor_cap, i + 1,
			    sizeof(*f->tensors)))
			return fail(p, -ENOMEM, "no memory for tensor #%" PRIu64,
				    i);
		if ((rc = parse_tensor(p, i, &f->tensors[i])))
			return rc;
		f->n_tensors = i + 1;
	}
	p->where[0] = 0;
	if ((rc = index_tensors(p)))
		return rc;
	a = f->alignment;
	f->data_off = (p->pos + a - 1) / a * a;
	for (size_t i = 0; i < f->n_tensors; i++)
		if ((rc = place_tensor(p, &f->tensors[i])))
			return rc;
	return check_overlap(p);
}

/* ---- header ---- */

static int check_version(struct parser *p, uint32_t v)
{
	uint32_t swapped = __builtin_bswap32(v);

	if (v == 2 || v == 3)
		return 0;
	if (v == 1)
		return fail(p, -MOE_EUNSUPPORTED, "version 1 at byte 4: GGUF v1 "
			    "is not supported (only v2 and v3); convert the "
			    "file with a current llama.cpp");
	if (swapped >= 1 && swapped <= 3)
		return fail(p, -MOE_EUNSUPPORTED, "version 0x%08" PRIx32 " at "
			    "byte 4 is %" PRIu32 " byte-swapped: a big-endian "
			    "GGUF file; only little-endian files are supported",
			    v, swapped);
	return fail(p, -MOE_EUNSUPPORTED, "version %" PRIu32 " at byte 4 is "
		    "not supported (only 2 and 3)", v);
}

static int check_counts(struct parser *p, uint64_t n_tensors, uint64_t n_kv)
{
	uint64_t rem = p->file_size - HEADER_BYTES;

	if (n_kv > rem / MIN_KV_BYTES)
		return fail(p, -MOE_EFORMAT, "n_kv %" PRIu64 " at byte 16 cannot "
			    "fit: each key takes at least %u bytes and %" PRIu64
			    " bytes follow the header", n_kv, MIN_KV_BYTES, rem);
	rem -= n_kv * MIN_KV_BYTES;
	if (n_tensors > rem / MIN_TENSOR_BYTES)
		return fail(p, -MOE_EFORMAT, "n_tensors %" PRIu64 " at byte 8 "
			    "cannot fit: each tensor info takes at least %u "
			    "bytes and %" PRIu64 " bytes remain after %" PRIu64
			    " keys", n_tensors, MIN_TENSOR_BYTES, rem, n_kv);
	return 0;
}

static int parse_header(struct parser *p, uint64_t *n_tensors,
			uint64_t *n_kv)
{
	uint32_t magic;
	int rc;

	if ((rc = rd_u32(p, &magic, "magic")))
		return rc;
	if (magic != GGUF_MAGIC) {
		struct gguf_str s = { (const char *)p->buf, 4 };
		char q[16];

		quote(q, sizeof(q), &s);
		return fail(p, -MOE_EFORMAT, "bad magic \"%s\" (0x%08" PRIx32
			    ") at byte 0: not a GGUF file", q, magic);
	}
	if ((rc = rd_u32(p, &p->f->version, "version")) ||
	    (rc = check_version(p, p->f->version)) ||
	    (rc = rd_u64(p, n_tensors, "n_tensors")) ||
	    (rc = rd_u64(p, n_kv, "n_kv")))
		return rc;
	return check_counts(p, *n_tensors, *n_kv);
}

static int parse_kvs(struct parser *p, uint64_t n)
{
	struct gguf_file *f = p->f;
	int rc;

	for (uint64_t i = 0; i < n; i++) {
		if (reserve(&f->kvs, &f->kv_cap, i + 1, sizeof(*f->kvs)))
			return fail(p, -ENOMEM, "no memory for key #%" PRIu64, i);
		if ((rc = parse_kv(p, i, &f->kvs[i])))
			return rc;
		f->n_kv = i + 1;
	}
	p->where[0] = 0;
	return index_kvs(p);
}

static int parse(struct parser *p, struct gguf_file **out)
{
	struct gguf_file *f = calloc(1, sizeof(*f));
	uint64_t n_tensors = 0, n_kv = 0;
	int rc;

	if (f)
		f->fd = -1; /* before anything can fail: gguf_close() reads it */
	if (!f || !(f->path = strdup(p->name))) {
		rc = moe_msgf(p->err, -ENOMEM, "%s: out of memory", p->name);
		goto out;
	}
	f->alignment = GGUF_DEFAULT_ALIGNMENT;
	f->file_size = p->file_size;
	p->f = f;
	if ((rc = parse_header(p, &n_tensors, &n_kv)) ||
	    (rc = parse_kvs(p, n_kv)) ||
	    (rc = parse_tensors(p, n_tensors)))
		goto out;
	f->bytes_read = p->fd >= 0 ? p->nread : p->pos;
	*out = f;
	f = NULL;
out:
	free(p->own);
	gguf_close(f);
	return rc;
}

/* ---- public ---- */

int gguf_parse_mem(struct gguf_file **out, const void *buf, size_t len,
		   uint64_t file_size, const char *name, struct moe_msg *err)
{
	struct parser p = {
		.name = name ? name : "<memory>", .err = err, .fd = -1,
		.file_size = file_size, .buf = buf, .len = len,
	};

	*out = NULL;
	if ((!buf && len) || file_size < len || file_size > INT64_MAX)
		return moe_msgf(err, -EINVAL, "%s: %zu bytes given of a %"
				PRIu64 "-byte file", p.name, len, file_size);
	return parse(&p, out);
}

int gguf_open(struct gguf_file **out, const char *path, struct moe_msg *err)
{
	struct parser p = { .name = path, .err = err };
	struct stat st;
	char eb[64];
	int rc;

	*out = NULL;
	p.fd = open(path, O_RDONLY | O_CLOEXEC);
	if (p.fd < 0) {
		rc = -errno;
		return moe_msgf(err, rc, "%s: cannot open: %s", path,
				strerror_r(-rc, eb, sizeof(eb)));
	}
	if (fstat(p.fd, &st)) {
		rc = -errno;
		moe_msgf(err, rc, "%s: cannot stat: %s", path,
			 strerror_r(-rc, eb, sizeof(eb)));
		goto err;
	}
	if (!S_ISREG(st.st_mode)) {
		rc = moe_msgf(err, -EINVAL, "%s: not a regular file", path);
		goto err;
	}
	p.file_size = (uint64_t)st.st_size;
	if ((rc = parse(&p, out)))
		goto err;
	(*out)->fd = p.fd;
	return 0;
err:
	close(p.fd);
	return rc;
}

void gguf_close(struct gguf_file *f)
{
	if (!f)
		return;
	if (f->fd >= 0)
		close(f->fd);
	free(f->kv_ix.slot);
	free(f->tensor_ix.slot);
	free(f->kvs);
	free(f->tensors);
	arena_free(f->arena);
	free(f->path);
	free(f);
}

const char *gguf_path(const struct gguf_file *f)
{
	return f->path;
}

int gguf_fd(const struct gguf_file *f)
{
	return f->fd;
}

uint32_t gguf_version(const struct gguf_file *f)
{
	return f->version;
}

uint32_t gguf_alignment(const struct gguf_file *f)
{
	return f->alignment;
}

uint64_t gguf_file_size(const struct gguf_file *f)
{
	return f->file_size;
}

uint64_t gguf_data_offset(const struct gguf_file *f)
{
	return f->data_off;
}

uint64_t gguf_header_bytes_read(const struct gguf_file *f)
{
	return f->bytes_read;
}

size_t gguf_n_kv(const struct gguf_file *f)
{
	return f->n_kv;
}

const struct gguf_kv *gguf_kv_at(const struct gguf_file *f, size_t i)
{
	return i < f->n_kv ? &f->kvs[i] : NULL;
}

const struct gguf_kv *gguf_find_kv(const struct gguf_file *f, const char *key)
{
	size_t i = ix_find(&f->kv_ix, f, kv_name, key);

	return i == SIZE_MAX ? NULL : &f->kvs[i];
}

size_t gguf_n_tensors(const struct gguf_file *f)
{
	return f->n_tensors;
}

const struct gguf_tensor *gguf_tensor_at(const struct gguf_file *f, size_t i)
{
	return i < f->n_tensors ? &f->tensors[i] : NULL;
}

const struct gguf_tensor *gguf_find_tensor(const struct gguf_file *f,
					   const char *name)
{
	size_t i = ix_find(&f->tensor_ix, f, tensor_name, name);

	return i == SIZE_MAX ? NULL : &f->tensors[i];
}

/* ---- typed getters ---- */

static int missing(const struct gguf_file *f, const char *key,
		   struct moe_msg *err)
{
	return moe_msgf(err, -ENOENT, "%s: key '%s' is missing", f->path, key);
}

static int wrong_type(const struct gguf_file *f, const struct gguf_kv *kv,
		      const char *want, struct moe_msg *err)
{
	return moe_msgf(err, -MOE_EFORMAT, "%s: key '%s' (at byte %" PRIu64
			"): type %s, expected %s", f->path, kv->key.ptr,
			kv->file_off, gguf_vtype_name(kv->type), want);
}

/* Any integer type, as long as the value is in 0..max. */
static int int_value(const struct gguf_file *f, const struct gguf_kv *kv,
		     uint64_t max, const char *what, uint64_t *v,
		     struct moe_msg *err)
{
	switch (kv->type) {
	case GGUF_T_U8: case GGUF_T_U16: case GGUF_T_U32: case GGUF_T_U64:
		*v = kv->v.u;
		break;
	case GGUF_T_I8: case GGUF_T_I16: case GGUF_T_I32: case GGUF_T_I64:
		if (kv->v.i < 0)
			return moe_msgf(err, -MOE_EFORMAT, "%s: key '%s' (at "
					"byte %" PRIu64 "): value %" PRId64
					" does not fit in %s", f->path,
					kv->key.ptr, kv->file_off, kv->v.i,
					what);
		*v = (uint64_t)kv->v.i;
		break;
	default:
		return wrong_type(f, kv, "an integer", err);
	}
	if (*v > max)
		return moe_msgf(err, -MOE_EFORMAT, "%s: key '%s' (at byte %"
				PRIu64 "): value %" PRIu64 " does not fit in %s",
				f->path, kv->key.ptr, kv->file_off, *v, what);
	return 0;
}

int gguf_get_u32(const struct gguf_file *f, const char *key, uint32_t *out,
		 struct moe_msg *err)
{
	const struct gguf_kv *kv = gguf_find_kv(f, key);
	uint64_t v = 0;
	int rc;

	if (!kv)
		return missing(f, key, err);
	rc = int_value(f, kv, UINT32_MAX, "u32", &v, err);
	if (!rc)
		*out = (uint32_t)v;
	return rc;
}

int gguf_get_f32(const struct gguf_file *f, const char *key, float *out,
		 struct moe_msg *err)
{
	const struct gguf_kv *kv = gguf_find_kv(f, key);

	if (!kv)
		return missing(f, key, err);
	if (kv->type != GGUF_T_F32 && kv->type != GGUF_T_F64)
		return wrong_type(f, kv, "f32", err);
	if (isfinite(kv->v.f) && fabs(kv->v.f) > FLT_MAX)
		return moe_msgf(err, -MOE_EFORMAT, "%s: key '%s' (at byte %"
				PRIu64 "): value %g does not fit in f32",
				f->path, kv->key.ptr, kv->file_off, kv->v.f);
	*out = (float)kv->v.f;
	return 0;
}

int gguf_get_bool(const struct gguf_file *f, const char *key, bool *out,
		  struct moe_msg *err)
{
	const struct gguf_kv *kv = gguf_find_kv(f, key);

	if (!kv)
		return missing(f, key, err);
	if (kv->type != GGUF_T_BOOL)
		return wrong_type(f, kv, "bool", err);
	*out = kv->v.u != 0;
	return 0;
}

int gguf_get_str(const struct gguf_file *f, const char *key,
		 struct gguf_str *out, struct moe_msg *err)
{
	const struct gguf_kv *kv = gguf_find_kv(f, key);

	if (!kv)
		return missing(f, key, err);
	if (kv->type != GGUF_T_STRING)
		return wrong_type(f, kv, "string", err);
	*out = kv->v.s;
	return 0;
}
