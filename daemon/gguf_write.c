/* GGUF writer: serialises metadata and tensor infos as they are declared,
 * lays tensors out at aligned offsets, and writes the header once; tensor
 * bytes are the caller's to pwrite(), so a file of any size costs little. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dtype.h"
#include "gguf.h"
#include "gguf_write.h"

/* Values and numeric arrays are copied from host memory into the file. */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
	       "the GGUF writer assumes a little-endian host");

#define MAX_KEY_LEN 65535u
#define MAX_NAME_LEN 64u

struct wbuf {
	uint8_t *p;
	size_t len, cap;
};

struct gguf_writer {
	uint32_t version, alignment;
	uint64_t n_kv;
	struct wbuf kv, ti;  /* serialised metadata and tensor infos */
	uint64_t *t_off;     /* relative to the data section */
	uint64_t *t_size;
	size_t n_t, t_cap;
	uint64_t data_end;   /* where the last tensor ends, relative */
};

static int wb_put(struct wbuf *b, const void *src, size_t n)
{
	if (n > b->cap - b->len) {
		size_t cap = b->cap ? b->cap : 256;
		uint8_t *np;

		while (cap - b->len < n)
			cap *= 2;
		np = realloc(b->p, cap);
		if (!np)
			return -ENOMEM;
		b->p = np;
		b->cap = cap;
	}
	if (n)
		memcpy(b->p + b->len, src, n);
	b->len += n;
	return 0;
}

static int wb_u32(struct wbuf *b, uint32_t v)
{
	return wb_put(b, &v, sizeof(v));
}

static int wb_u64(struct wbuf *b, uint64_t v)
{
	return wb_put(b, &v, sizeof(v));
}

static int wb_str(struct wbuf *b, const char *s, size_t len)
{
	int rc = wb_u64(b, len);

	return rc ? rc : wb_put(b, s, len);
}

static uint64_t align_up(uint64_t x, uint32_t a)
{
	return (x + a - 1) / a * a;
}

/* Key and value type; the caller appends the value. On failure the
 * caller truncates back to the length it saved. */
static int kv_begin(struct gguf_writer *w, const char *key, uint32_t type,
		    bool own)
{
	size_t len = key ? strlen(key) : 0;
	int rc;

	if (!len || len > MAX_KEY_LEN)
		return -EINVAL;
	if (!own && !strcmp(key, "general.alignment"))
		return -EINVAL;
	rc = wb_str(&w->kv, key, len);
	return rc ? rc : wb_u32(&w->kv, type);
}

/* One key with a value of n raw bytes, all or nothing. */
static int kv_raw(struct gguf_writer *w, const char *key, uint32_t type,
		  const void *val, size_t n, bool own)
{
	size_t saved = w->kv.len;
	int rc = kv_begin(w, key, type, own);

	if (!rc)
		rc = wb_put(&w->kv, val, n);
	if (rc) {
		w->kv.len = saved;
		return rc;
	}
	w->n_kv++;
	return 0;
}

struct gguf_writer *gguf_writer_new(uint32_t version, uint32_t alignment)
{
	struct gguf_writer *w;

	if ((version != 2 && version != 3) || !alignment ||
	    (alignment & (alignment - 1))) {
		errno = EINVAL;
		return NULL;
	}
	w = calloc(1, sizeof(*w));
	if (!w)
		return NULL;
	w->version = version;
	w->alignment = alignment;
	if (alignment != GGUF_DEFAULT_ALIGNMENT &&
	    kv_raw(w, "general.alignment", GGUF_T_U32, &alignment,
		   sizeof(alignment), true)) {
		gguf_writer_free(w);
		errno = ENOMEM;
		return NULL;
	}
	return w;
}

void gguf_writer_free(struct gguf_writer *w)
{
	if (!w)
		return;
	free(w->kv.p);
	free(w->ti.p);
	free(w->t_off);
	free(w->t_size);
	free(w);
}

int gguf_w_scalar(struct gguf_writer *w, const char *key, uint32_t type,
		  const void *v)
{
	size_t n = gguf_vtype_size(type);

	if (!n)
		return -EINVAL;
	if (type == GGUF_T_BOOL && *(const uint8_t *)v > 1)
		return -EINVAL;
	return kv_raw(w, key, type, v, n, false);
}

int gguf_w_u32(struct gguf_writer *w, const char *key, uint32_t v)
{
	return gguf_w_scalar(w, key, GGUF_T_U32, &v);
}

int gguf_w_i32(struct gguf_writer *w, const char *key, int32_t v)
{
	return gguf_w_scalar(w, key, GGUF_T_I32, &v);
}

int gguf_w_u64(struct gguf_writer *w, const char *key, uint64_t v)
{
	return gguf_w_scalar(w, key, GGUF_T_U64, &v);
}

int gguf_w_f32(struct gguf_writer *w, const char *key, float v)
{
	return gguf_w_scalar(w, key, GGUF_T_F32, &v);
}

int gguf_w_bool(struct gguf_writer *w, const char *key, bool v)
{
	uint8_t b = v;

	return gguf_w_scalar(w, key, GGUF_T_BOOL, &b);
}

int gguf_w_str(struct gguf_writer *w, const char *key, const char *v)
{
	size_t saved = w->kv.len;
	int rc = kv_begin(w, key, GGUF_T_STRING, false);

	if (!rc)
		rc = wb_str(&w->kv, v, strlen(v));
	if (rc) {
		w->kv.len = saved;
		return rc;
	}
	w->n_kv++;
	return 0;
}

/* An array's header: key, ARRAY, element type, count. */
static int arr_begin(struct gguf_writer *w, const char *key, uint32_t et,
		     uint64_t n)
{
	int rc = kv_begin(w, key, GGUF_T_ARRAY, false);

	if (!rc)
		rc = wb_u32(&w->kv, et);
	return rc ? rc : wb_u64(&w->kv, n);
}

int gguf_w_arr(struct gguf_writer *w, const char *key, uint32_t et,
	       const void *data, uint64_t n)
{
	size_t es = gguf_vtype_size(et), saved = w->kv.len;
	int rc;

	if (!es || n > SIZE_MAX / es)
		return -EINVAL;
	rc = arr_begin(w, key, et, n);
	if (!rc)
		rc = wb_put(&w->kv, data, n * es);
	if (rc) {
		w->kv.len = saved;
		return rc;
	}
	w->n_kv++;
	return 0;
}

int gguf_w_arr_str(struct gguf_writer *w, const char *key,
		   const char *const *v, uint64_t n)
{
	size_t saved = w->kv.len;
	int rc = arr_begin(w, key, GGUF_T_STRING, n);

	for (uint64_t i = 0; i < n && !rc; i++)
		rc = wb_str(&w->kv, v[i], strlen(v[i]));
	if (rc) {
		w->kv.len = saved;
		return rc;
	}
	w->n_kv++;
	return 0;
}

/* Bytes of a tensor, or 0 when the reader would refuse its shape. */
static uint64_t tensor_bytes(uint32_t n_dims, const uint64_t *ne,
			     uint32_t type)
{
	const struct moe_dtype_info *ti = moe_dtype_info(type);
	uint64_t nelem = 1;

	if (!ti || n_dims < 1 || n_dims > GGUF_MAX_DIMS || ne[0] % ti->block)
		return 0;
	for (uint32_t j = 0; j < n_dims; j++) {
		if (!ne[j] || ne[j] > INT64_MAX / nelem)
			return 0;
		nelem *= ne[j];
	}
	if (nelem / ti->block > INT64_MAX / ti->block_size)
		return 0;
	return nelem / ti->block * ti->block_size;
}

static int tensor_info(struct wbuf *b, const char *name, uint32_t n_dims,
		       const uint64_t *ne, uint32_t type, uint64_t off)
{
	int rc = wb_str(b, name, strlen(name));

	if (!rc)
		rc = wb_u32(b, n_dims);
	for (uint32_t j = 0; j < n_dims && !rc; j++)
		rc = wb_u64(b, ne[j]);
	if (!rc)
		rc = wb_u32(b, type);
	return rc ? rc : wb_u64(b, off);
}

static int reserve_tensor(struct gguf_writer *w)
{
	size_t cap = w->t_cap ? 2 * w->t_cap : 64;
	uint64_t *o, *s;

	if (w->n_t < w->t_cap)
		return 0;
	o = realloc(w->t_off, cap * sizeof(*o));
	if (!o)
		return -ENOMEM;
	w->t_off = o;
	s = realloc(w->t_size, cap * sizeof(*s));
	if (!s)
		return -ENOMEM;
	w->t_size = s;
	w->t_cap = cap;
	return 0;
}

int gguf_w_tensor(struct gguf_writer *w, const char *name, uint32_t n_dims,
		  const uint64_t *ne, uint32_t type)
{
	size_t nlen = name ? strlen(name) : 0, saved = w->ti.len;
	uint64_t size = tensor_bytes(n_dims, ne, type);
	uint64_t off = align_up(w->data_end, w->alignment);
	int rc;

	if (!size || !nlen || nlen > MAX_NAME_LEN || off > INT64_MAX - size)
		return -EINVAL;
	rc = reserve_tensor(w);
	if (!rc)
		rc = tensor_info(&w->ti, name, n_dims, ne, type, off);
	if (rc) {
		w->ti.len = saved;
		return rc;
	}
	w->t_off[w->n_t] = off;
	w->t_size[w->n_t] = size;
	w->n_t++;
	w->data_end = off + size;
	return 0;
}

uint64_t gguf_writer_data_offset(const struct gguf_writer *w)
{
	return align_up(24 + w->kv.len + w->ti.len, w->alignment);
}

uint64_t gguf_writer_tensor_off(const struct gguf_writer *w, size_t i)
{
	return i < w->n_t ? gguf_writer_data_offset(w) + w->t_off[i] : 0;
}

uint64_t gguf_writer_tensor_size(const struct gguf_writer *w, size_t i)
{
	return i < w->n_t ? w->t_size[i] : 0;
}

uint64_t gguf_writer_file_size(const struct gguf_writer *w)
{
	return gguf_writer_data_offset(w) + w->data_end;
}

int gguf_writer_header_bytes(struct gguf_writer *w, uint8_t **out,
			     size_t *len)
{
	size_t n = gguf_writer_data_offset(w);
	uint32_t magic = GGUF_MAGIC;
	uint64_t n_t = w->n_t;
	uint8_t *h = calloc(1, n); /* the padding is zeros */

	if (!h)
		return -ENOMEM;
	memcpy(h, &magic, 4);
	memcpy(h + 4, &w->version, 4);
	memcpy(h + 8, &n_t, 8);
	memcpy(h + 16, &w->n_kv, 8);
	if (w->kv.len)
		memcpy(h + 24, w->kv.p, w->kv.len);
	if (w->ti.len)
		memcpy(h + 24 + w->kv.len, w->ti.p, w->ti.len);
	*out = h;
	*len = n;
	return 0;
}

static int pwrite_all(int fd, const uint8_t *p, size_t n, off_t off)
{
	while (n) {
		ssize_t r = pwrite(fd, p, n, off);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		p += r;
		n -= (size_t)r;
		off += r;
	}
	return 0;
}

int gguf_writer_write_header(struct gguf_writer *w, int fd)
{
	uint8_t *h;
	size_t n;
	int rc = gguf_writer_header_bytes(w, &h, &n);

	if (rc)
		return rc;
	if (ftruncate(fd, (off_t)gguf_writer_file_size(w)))
		rc = -errno;
	else
		rc = pwrite_all(fd, h, n, 0);
	free(h);
	return rc;
}
