/* moe_memcap: the cache that fits under a memory cgroup's limit (the
 * arithmetic), and what this machine's cgroup says (read, whatever it
 * is). moed started inside a capped cgroup is test_faults'
 * cache_over_cgroup. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cmocka.h>

#include "memcap.h"

#define MiB (UINT64_C(1) << 20)

static void fit(void **s)
{
	struct moe_memcap c = { .limit = UINT64_MAX };

	assert_true(moe_memcap_fit(&c, 512 * MiB) == 512 * MiB);
	/* 1 GiB limit, 100 MiB in use: the reserve is 256 MiB (a quarter). */
	c.limit = 1024 * MiB;
	c.usage = 100 * MiB;
	assert_true(moe_memcap_fit(&c, 4096 * MiB) == 668 * MiB);
	assert_true(moe_memcap_fit(&c, 64 * MiB) == 64 * MiB);
	/* 40 MiB: the reserve is its floor, 16 MiB; 16 asked for fit. */
	c.limit = 40 * MiB;
	c.usage = 1 * MiB;
	assert_true(moe_memcap_fit(&c, 16 * MiB) == 16 * MiB);
	assert_true(moe_memcap_fit(&c, 64 * MiB) == 23 * MiB);
	/* Nothing left. */
	c.usage = 30 * MiB;
	assert_true(moe_memcap_fit(&c, 1024 * MiB) == 0);
}

static void read_here(void **s)
{
	struct moe_memcap c;

	assert_int_equal(moe_memcap_read(&c), 0);
	if (c.limit == UINT64_MAX) {
		printf("  no memory cgroup limit applies here\n");
		return;
	}
	printf("  %s: limit %.0f MiB, %.0f MiB in use (page cache left out)\n",
	       c.path, c.limit / (double)MiB, c.usage / (double)MiB);
	assert_true(c.usage <= c.limit);
	assert_true(c.path[0] == '/');
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(fit),
		cmocka_unit_test(read_here),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
