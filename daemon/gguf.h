/* GGUF reader: parses a model file's header (metadata and tensor infos)
 * in place, without reading tensor data, and trusts none of it.
 *
 * Every count, length, dimension, type and offset is checked against the
 * file's size before use; a failure returns -MOE_EFORMAT (or -errno for an
 * I/O error) with a message naming the field, its value and the byte
 * offset where it was read. Opening a huge model costs what its header
 * costs: only the header bytes are read. */
#ifndef MOE_GGUF_H
#define MOE_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "diag.h"

#define GGUF_MAGIC 0x46554747u /* "GGUF" read as a little-endian u32 */
#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_DIMS 4

enum gguf_vtype {
	GGUF_T_U8 = 0,
	GGUF_T_I8 = 1,
	GGUF_T_U16 = 2,
	GGUF_T_I16 = 3,
	GGUF_T_U32 = 4,
	GGUF_T_I32 = 5,
	GGUF_T_F32 = 6,
	GGUF_T_BOOL = 7,
	GGUF_T_STRING = 8,
	GGUF_T_ARRAY = 9,
	GGUF_T_U64 = 10,
	GGUF_T_I64 = 11,
	GGUF_T_F64 = 12,
	GGUF_T_COUNT
};

/* A string inside the parsed header: not NUL-terminated in the file, but
 * the reader stores a terminating NUL after each one, so ptr is a C string
 * as long as the file's string held no NUL itself (len says the truth). */
struct gguf_str {
	const char *ptr;
	uint64_t len;
};

struct gguf_kv {
	struct gguf_str key;
	uint32_t type;      /* enum gguf_vtype */
	uint64_t file_off;  /* offset of the key's length field */
	union {
		uint64_t u;  /* U8..U64, BOOL (zero-extended) */
		int64_t i;   /* I8..I64 (sign-extended) */
		double f;    /* F32, F64 */
		struct gguf_str s;
		struct {
			uint32_t type;    /* element type */
			uint64_t n;       /* element count */
			const void *data; /* numeric: n packed little-endian
					   * elements, 8-byte aligned;
					   * string: n gguf_str */
		} arr;
	} v;
};

struct gguf_tensor {
	struct gguf_str name;
	uint32_t n_dims;
	uint64_t ne[GGUF_MAX_DIMS]; /* unused dims are 1 */
	uint32_t type;              /* enum moe_dtype / ggml type number */
	uint64_t offset;            /* relative to the data section */
	uint64_t size;              /* bytes */
	uint64_t file_off;          /* absolute: data section + offset */
	uint64_t info_off;          /* where its info began in the header */
};

/* A parsed file never changes: any number of threads may use the
 * accessors below at once. Pointers they return live until gguf_close(). */
struct gguf_file;

/* Open and parse path. On success *out owns the fd (read-only) and the
 * parsed header. path is used in error messages. Returns 0, or:
 *   -MOE_EFORMAT       the header is malformed or truncated, a count or
 *                      range does not fit the file, a tensor's type is
 *                      unknown, names repeat, tensor data overlap;
 *   -MOE_EUNSUPPORTED  a valid file this reader does not take: GGUF v1,
 *                      a big-endian file, any version but 2 and 3, a
 *                      nested array, a header over 1 GiB (gguf_open);
 *   -errno             open, fstat or pread failed; -EINVAL when path is
 *                      not a regular file; -ENOMEM.
 * Policy: every dimension must be >= 1 (ggml's own reader cannot take 0),
 * keys are 1..65535 bytes and tensor names 1..64 (the spec's limits),
 * general.alignment must be a u32 nonzero power of two. */
int gguf_open(struct gguf_file **out, const char *path, struct moe_msg *err);

/* Parse a header held in memory: buf holds the first len bytes of a file
 * whose total size is file_size (>= len). Ranges are checked against
 * file_size; parsing past len is an error (truncated). For fuzzing and
 * tests. name is used in messages. Returns as gguf_open, and -EINVAL when
 * file_size < len or file_size > INT64_MAX. */
int gguf_parse_mem(struct gguf_file **out, const void *buf, size_t len,
		   uint64_t file_size, const char *name, struct moe_msg *err);

void gguf_close(struct gguf_file *f);

const char *gguf_path(const struct gguf_file *f);
int gguf_fd(const struct gguf_file *f); /* -1 for gguf_parse_mem */
uint32_t gguf_version(const struct gguf_file *f);
uint32_t gguf_alignment(const struct gguf_file *f);
uint64_t gguf_file_size(const struct gguf_file *f);
uint64_t gguf_data_offset(const struct gguf_file *f);
/* Bytes read from the file to parse it (gguf_open: what pread returned,
 * reads start at 64 KiB and double); for gguf_parse_mem, the bytes of buf
 * the header spans. */
uint64_t gguf_header_bytes_read(const struct gguf_file *f);

size_t gguf_n_kv(const struct gguf_file *f);
const struct gguf_kv *gguf_kv_at(const struct gguf_file *f, size_t i);
const struct gguf_kv *gguf_find_kv(const struct gguf_file *f, const char *key);

/* Typed getters: 0 on success; -ENOENT if key is absent; -MOE_EFORMAT
 * with a message if present with an incompatible type or a value that
 * does not fit (an integer getter accepts any integer type in range). */
int gguf_get_u32(const struct gguf_file *f, const char *key, uint32_t *out,
		 struct moe_msg *err);
int gguf_get_f32(const struct gguf_file *f, const char *key, float *out,
		 struct moe_msg *err);
int gguf_get_bool(const struct gguf_file *f, const char *key, bool *out,
		  struct moe_msg *err);
int gguf_get_str(const struct gguf_file *f, const char *key,
		 struct gguf_str *out, struct moe_msg *err);

size_t gguf_n_tensors(const struct gguf_file *f);
const struct gguf_tensor *gguf_tensor_at(const struct gguf_file *f, size_t i);
const struct gguf_tensor *gguf_find_tensor(const struct gguf_file *f,
					   const char *name);

/* "u32", "string"...; "unknown" for a number outside enum gguf_vtype. */
const char *gguf_vtype_name(uint32_t t);

/* Bytes of one value of scalar type t (an array element's stride); 0 for
 * STRING, ARRAY and unknown types. */
size_t gguf_vtype_size(uint32_t t);

#endif
