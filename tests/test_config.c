/* moed's options: defaults, the config file and the command line set the
 * same table, and every bad line is an error naming file, line and key. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "config.h"
#include "testutil.h"

static const char *write_conf(char *path, size_t len, const char *text)
{
	FILE *f;

	tmp_path(path, len, "conf");
	f = fopen(path, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
	return path;
}

static void defaults(void **s)
{
	struct moe_config c;

	moe_config_defaults(&c);
	assert_string_equal(c.socket, "/run/moed/moed.sock");
	assert_int_equal(c.cache_mb, 4096);
	assert_string_equal(c.policy, "predict");
	assert_true(c.prefetch);
	assert_false(c.sqpoll);
}

static void file_sets_everything(void **s)
{
	char path[256];
	struct moe_config c;
	struct moe_msg err = { "" };

	moe_config_defaults(&c);
	write_conf(path, sizeof(path),
		   "# moed settings\n\n"
		   "model = /srv/models/m.gguf   # trailing comment\n"
		   "  cache-mb=512\n"
		   "policy = lfu\n"
		   "sqpoll = yes\n"
		   "prefetch = off\n"
		   "allow-uid = 0, root\n"
		   "allow-gid = root\n");
	if (moe_config_load(&c, path, &err))
		fail_msg("%s", err.text);
	assert_string_equal(c.model, "/srv/models/m.gguf");
	assert_int_equal(c.cache_mb, 512);
	assert_string_equal(c.policy, "lfu");
	assert_true(c.sqpoll);
	assert_false(c.prefetch);
	assert_int_equal(c.n_allow_uid, 2);
	assert_int_equal(c.allow_uid[1], 0);
	assert_int_equal(c.n_allow_gid, 1);
}

static void command_line_overrides(void **s)
{
	struct moe_config c;
	struct moe_msg err = { "" };

	moe_config_defaults(&c);
	assert_int_equal(moe_config_set(&c, "cache-mb", "64", "command line", &err), 0);
	assert_int_equal(c.cache_mb, 64);
	assert_int_equal(moe_config_set(&c, "nope", "1", "command line", &err), -ENOENT);
	assert_non_null(strstr(err.text, "unknown option 'nope'"));
}

static void bad_lines_named(void **s)
{
	static const struct {
		const char *text, *want;
	} cases[] = {
		{ "model = a\nbogus = 1\n", ":2: unknown option 'bogus'" },
		{ "cache-mb = lots\n", ":1: cache-mb: 'lots' is not an integer" },
		{ "cache-mb = 1\n", "cache-mb: '1' is not an integer in [16," },
		{ "policy = fifo\n", "policy: 'fifo' is not one of lru|lfu|predict" },
		{ "\n\nsqpoll = maybe\n", ":3: sqpoll: 'maybe' is not yes or no" },
		{ "allow-uid = no-such-user-here\n", "allow-uid: 'no-such-user-here'" },
		{ "threads 4\n", ":1: expected 'key = value'" },
		{ "max-clients = -1\n", "max-clients: '-1'" },
	};
	char path[256];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct moe_config c;
		struct moe_msg err = { "" };

		moe_config_defaults(&c);
		write_conf(path, sizeof(path), cases[i].text);
		assert_int_equal(moe_config_load(&c, path, &err), -EINVAL);
		if (!strstr(err.text, cases[i].want) || !strstr(err.text, path))
			fail_msg("case %zu: '%s' lacks '%s'", i, err.text, cases[i].want);
	}
}

static void missing_file(void **s)
{
	struct moe_config c;
	struct moe_msg err = { "" };

	moe_config_defaults(&c);
	assert_int_equal(moe_config_load(&c, "/nonexistent/moed.conf", &err), -ENOENT);
	assert_non_null(strstr(err.text, "/nonexistent/moed.conf"));
}

/* What dump writes, load reads back to the same settings. */
static void dump_round_trip(void **s)
{
	struct moe_config a, b;
	struct moe_msg err = { "" };
	char path[256];
	FILE *f;

	moe_config_defaults(&a);
	moe_config_set(&a, "model", "/m.gguf", "t", &err);
	moe_config_set(&a, "allow-uid", "1,2,3", "t", &err);
	moe_config_set(&a, "buffered", "yes", "t", &err);
	tmp_path(path, sizeof(path), "dump");
	f = fopen(path, "w");
	moe_config_dump(&a, f);
	fclose(f);
	moe_config_defaults(&b);
	if (moe_config_load(&b, path, &err))
		fail_msg("%s", err.text);
	assert_memory_equal(&a, &b, sizeof(a));
}

/* The example config that is installed must load as it is. */
static void example_config_loads(void **s)
{
	struct moe_config c;
	struct moe_msg err = { "" };

	moe_config_defaults(&c);
	if (moe_config_load(&c, "systemd/moed.conf.example", &err))
		fail_msg("%s", err.text);
	assert_string_equal(c.model, "/srv/models/model.gguf");
	assert_string_equal(c.policy, "predict");
}

static void live_options(void **s)
{
	assert_true(moe_config_live("log-level"));
	assert_true(moe_config_live("cache-mb"));
	assert_false(moe_config_live("max-tokens"));
	assert_true(moe_config_live("prefetch"));
	assert_false(moe_config_live("model"));
	assert_true(moe_config_is_flag("sqpoll"));
	assert_false(moe_config_is_flag("model"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(defaults),
		cmocka_unit_test(file_sets_everything),
		cmocka_unit_test(command_line_overrides),
		cmocka_unit_test(bad_lines_named),
		cmocka_unit_test(missing_file),
		cmocka_unit_test(dump_round_trip),
		cmocka_unit_test(example_config_loads),
		cmocka_unit_test(live_options),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
