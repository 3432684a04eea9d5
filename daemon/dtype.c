/* The ggml type table: block geometry for every type a GGUF file may
 * declare, and which ones moed computes with. */
#include <string.h>
#include <strings.h>

#include "dtype.h"

#define T(num, nm, blk, sz, comp) \
	[num] = { .name = nm, .block = blk, .block_size = sz, .compute = comp }

/* Sizes from ggml's block layouts; holes are types ggml has retired. */
static const struct moe_dtype_info types[] = {
	T(0, "F32", 1, 4, true),
	T(1, "F16", 1, 2, true),
	T(2, "Q4_0", 32, 18, true),
	T(3, "Q4_1", 32, 20, false),
	T(6, "Q5_0", 32, 22, false),
	T(7, "Q5_1", 32, 24, false),
	T(8, "Q8_0", 32, 34, true),
	T(9, "Q8_1", 32, 36, false),
	T(10, "Q2_K", 256, 84, false),
	T(11, "Q3_K", 256, 110, false),
	T(12, "Q4_K", 256, 144, true),
	T(13, "Q5_K", 256, 176, false),
	T(14, "Q6_K", 256, 210, true),
	T(15, "Q8_K", 256, 292, false),
	T(16, "IQ2_XXS", 256, 66, false),
	T(17, "IQ2_XS", 256, 74, false),
	T(18, "IQ3_XXS", 256, 98, false),
	T(19, "IQ1_S", 256, 50, false),
	T(20, "IQ4_NL", 32, 18, false),
	T(21, "IQ3_S", 256, 110, false),
	T(22, "IQ2_S", 256, 82, false),
	T(23, "IQ4_XS", 256, 136, false),
	T(24, "I8", 1, 1, false),
	T(25, "I16", 1, 2, false),
	T(26, "I32", 1, 4, false),
	T(27, "I64", 1, 8, false),
	T(28, "F64", 1, 8, false),
	T(29, "IQ1_M", 256, 56, false),
	T(30, "BF16", 1, 2, true),
	T(34, "TQ1_0", 256, 54, false),
	T(35, "TQ2_0", 256, 66, false),
	T(39, "MXFP4", 32, 17, false),
};

const struct moe_dtype_info *moe_dtype_info(uint32_t t)
{
	if (t >= sizeof(types) / sizeof(types[0]) || !types[t].name)
		return NULL;
	return &types[t];
}

int moe_dtype_by_name(const char *name)
{
	for (size_t t = 0; t < sizeof(types) / sizeof(types[0]); t++)
		if (types[t].name && strcasecmp(types[t].name, name) == 0)
			return (int)t;
	return -1;
}

size_t moe_row_size(uint32_t t, uint64_t n)
{
	const struct moe_dtype_info *ti = moe_dtype_info(t);

	if (!ti || n % ti->block)
		return 0;
	return (size_t)(n / ti->block) * ti->block_size;
}
