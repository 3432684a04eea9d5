/* The fuzz targets' checks over their seed corpora, in every `make test`
 * (and under ASan in `make test-asan`): each input in tests/fuzz/seeds-X
 * goes through fuzz_X's entry point, built in here under another name.
 * Inputs that once crashed a target are kept there, so each is a
 * regression test; a check that fails traps, failing this program. */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

int fuzz_gguf_input(const uint8_t *data, size_t size);
int fuzz_hello_input(const uint8_t *data, size_t size);
int fuzz_desc_input(const uint8_t *data, size_t size);

static uint8_t *slurp(const char *path, size_t *n)
{
	FILE *f = fopen(path, "rb");
	uint8_t *p = NULL;
	long len;

	assert_non_null(f);
	assert_int_equal(fseek(f, 0, SEEK_END), 0);
	len = ftell(f);
	rewind(f);
	p = malloc(len ? (size_t)len : 1);
	assert_non_null(p);
	assert_int_equal(fread(p, 1, (size_t)len, f), (size_t)len);
	fclose(f);
	*n = (size_t)len;
	return p;
}

/* Every file of dir through fn; returns how many. */
static int replay(const char *dir, int (*fn)(const uint8_t *, size_t))
{
	struct dirent *de;
	char path[512];
	DIR *d = opendir(dir);
	int n = 0;

	assert_non_null(d);
	while ((de = readdir(d))) {
		uint8_t *p;
		size_t len;

		if (de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
		p = slurp(path, &len);
		assert_int_equal(fn(p, len), 0);
		free(p);
		n++;
	}
	closedir(d);
	printf("  %d inputs from %s\n", n, dir);
	return n;
}

static void gguf_seeds(void **s)
{
	assert_true(replay("tests/fuzz/seeds-gguf", fuzz_gguf_input) >= 10);
}

static void hello_seeds(void **s)
{
	assert_true(replay("tests/fuzz/seeds-hello", fuzz_hello_input) >= 9);
}

static void desc_seeds(void **s)
{
	assert_true(replay("tests/fuzz/seeds-desc", fuzz_desc_input) >= 6);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(gguf_seeds),
		cmocka_unit_test(hello_seeds),
		cmocka_unit_test(desc_seeds),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
