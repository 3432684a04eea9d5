/* GGUF writer: builds a header (metadata, tensor infos, aligned offsets)
 * and lets the caller stream tensor data to its place in constant memory.
 * Used by moe-gen and by the tests that forge files. */
#ifndef MOE_GGUF_WRITE_H
#define MOE_GGUF_WRITE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct gguf_writer;

/* version 2 or 3; alignment a power of two (general.alignment is written
 * when it is not the default 32). NULL with errno ENOMEM on allocation
 * failure, EINVAL for another version or alignment. */
struct gguf_writer *gguf_writer_new(uint32_t version, uint32_t alignment);
void gguf_writer_free(struct gguf_writer *w);

/* Metadata, in the order added. Return 0, -ENOMEM, or -EINVAL when key
 * is empty, longer than 65535 bytes, or "general.alignment" (the writer
 * owns that one). Keys are not checked for repeats: the reader rejects
 * them. Values are host-order, and the host must be little-endian. */
int gguf_w_u32(struct gguf_writer *w, const char *key, uint32_t v);
int gguf_w_i32(struct gguf_writer *w, const char *key, int32_t v);
int gguf_w_u64(struct gguf_writer *w, const char *key, uint64_t v);
int gguf_w_f32(struct gguf_writer *w, const char *key, float v);
int gguf_w_bool(struct gguf_writer *w, const char *key, bool v);
int gguf_w_str(struct gguf_writer *w, const char *key, const char *v);
/* Any scalar type (enum gguf_vtype but STRING and ARRAY); v points at one
 * value of that type (BOOL: one byte, 0 or 1). -EINVAL for another type. */
int gguf_w_scalar(struct gguf_writer *w, const char *key, uint32_t type,
		  const void *v);
/* Numeric array: n elements of type et (a GGUF scalar type), packed.
 * -EINVAL when et is STRING, ARRAY or unknown. */
int gguf_w_arr(struct gguf_writer *w, const char *key, uint32_t et,
	       const void *data, uint64_t n);
int gguf_w_arr_str(struct gguf_writer *w, const char *key,
		   const char *const *v, uint64_t n);

/* Declare a tensor; its data goes at the next aligned offset. Returns 0,
 * -EINVAL (unknown type, ne[0] not a multiple of its block, n_dims not in
 * 1..4, a dimension of 0, element count or file size overflowing, name
 * empty or longer than 64 bytes), -ENOMEM. Names are not checked for
 * repeats: the reader rejects them. */
int gguf_w_tensor(struct gguf_writer *w, const char *name, uint32_t n_dims,
		  const uint64_t *ne, uint32_t type);

/* After all declarations: bytes of header + padding (= data section
 * offset), and each tensor's absolute file offset and size (0 when i is
 * not a declared tensor). The file ends where the last tensor ends. */
uint64_t gguf_writer_data_offset(const struct gguf_writer *w);
uint64_t gguf_writer_tensor_off(const struct gguf_writer *w, size_t i);
uint64_t gguf_writer_tensor_size(const struct gguf_writer *w, size_t i);
uint64_t gguf_writer_file_size(const struct gguf_writer *w);

/* Write the header (and padding to the data section) at offset 0 of fd
 * and size the file to gguf_writer_file_size(). The caller then pwrite()s
 * each tensor's bytes at gguf_writer_tensor_off(); in a file that was
 * empty, bytes nobody writes read as zeros and take no space.
 * 0 or -errno. */
int gguf_writer_write_header(struct gguf_writer *w, int fd);

/* The header as bytes (malloc'd; caller frees), for tests that corrupt
 * it. *len is its length including padding to the data section. */
int gguf_writer_header_bytes(struct gguf_writer *w, uint8_t **out,
			     size_t *len);

#endif
