/* The log module: levels, and the rate limiter moed turns on so one
 * repeating fault cannot flood the journal, driven by a fake clock; the
 * line formats (the journal's "<N>" priorities without timestamps, else
 * timestamps), the $JOURNAL_STREAM check against the stream's dev:ino,
 * and a real moed choosing between them. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "log.h"
#include "testutil.h"

#define MAX_LINES 512

static struct {
	int level;
	char text[640];
} lines[MAX_LINES];
static int n_lines;
static uint64_t clock_ms;

static void capture(void *ctx, enum moe_log_level level, const char *msg)
{
	(void)ctx;
	assert_true(n_lines < MAX_LINES);
	lines[n_lines].level = (int)level;
	snprintf(lines[n_lines].text, sizeof(lines[n_lines].text), "%s", msg);
	n_lines++;
}

static uint64_t fake_clock(void)
{
	return clock_ms;
}

static int setup(void **s)
{
	n_lines = 0;
	clock_ms = 1000000;
	moe_log_set(capture, NULL);
	moe_log_set_clock(fake_clock);
	moe_log_set_level(MOE_LOG_DEBUG);
	moe_log_set_ratelimit(0, 0);
	return 0;
}

/* Lines holding s. */
static int count(const char *s)
{
	int n = 0;

	for (int i = 0; i < n_lines; i++)
		n += strstr(lines[i].text, s) != NULL;
	return n;
}

/* The K of the first "... repeated K more times" line holding s; -1. */
static int repeated(const char *s)
{
	for (int i = 0; i < n_lines; i++) {
		const char *r = strstr(lines[i].text, "... repeated ");

		if (r && strstr(lines[i].text, s))
			return atoi(r + strlen("... repeated "));
	}
	return -1;
}

static void read_failed(int i)
{
	moe_log(MOE_LOG_WARNING, "read failed at offset %d", i);
}

static void levels(void **s)
{
	moe_log_set_level(MOE_LOG_NOTICE);
	moe_log(MOE_LOG_INFO, "not shown");
	moe_log(MOE_LOG_ERR, "shown %d", 1);
	assert_int_equal(n_lines, 1);
	assert_int_equal(lines[0].level, MOE_LOG_ERR);
	assert_string_equal(lines[0].text, "shown 1");
	assert_int_equal(moe_log_level_by_name("warning"), MOE_LOG_WARNING);
	assert_int_equal(moe_log_level_by_name("loud"), -1);
}

/* Off unless asked: tools and tests see every message. */
static void unlimited_by_default(void **s)
{
	for (int i = 0; i < 100; i++)
		read_failed(i);
	assert_int_equal(n_lines, 100);
	moe_log_flush();
	assert_int_equal(n_lines, 100);
}

/* A burst per call site per interval; the rest counted and reported
 * once the interval is over, as the last one dropped plus the count. */
static void burst_then_summary(void **s)
{
	moe_log_set_ratelimit(3, 5000);
	for (int i = 0; i < 10; i++)
		read_failed(i);
	assert_int_equal(n_lines, 3);
	assert_string_equal(lines[2].text, "read failed at offset 2");
	/* Another call site is counted on its own. */
	moe_log(MOE_LOG_WARNING, "client %s refused", "a");
	assert_int_equal(count("client a refused"), 1);
	/* Within the interval, flushing reports nothing yet. */
	clock_ms += 4999;
	moe_log_flush();
	assert_int_equal(n_lines, 4);
	clock_ms += 1;
	moe_log_flush();
	assert_int_equal(n_lines, 5);
	assert_int_equal(lines[4].level, MOE_LOG_WARNING);
	assert_string_equal(lines[4].text,
			    "read failed at offset 9 ... repeated 7 more times in 5 s");
	/* Reported once only; a new interval lets the burst through again. */
	moe_log_flush();
	assert_int_equal(n_lines, 5);
	for (int i = 10; i < 13; i++)
		read_failed(i);
	assert_int_equal(n_lines, 8);
	assert_int_equal(count("... repeated"), 1);
}

/* No flush: the next message of the site reports the drops first. */
static void summary_before_next(void **s)
{
	moe_log_set_ratelimit(2, 1000);
	for (int i = 0; i < 6; i++)
		read_failed(i);
	clock_ms += 3000;
	read_failed(99);
	assert_int_equal(n_lines, 4);
	assert_string_equal(lines[2].text,
			    "read failed at offset 5 ... repeated 4 more times in 3 s");
	assert_string_equal(lines[3].text, "read failed at offset 99");
}

/* Info and debug are never limited: client connects are not faults. */
static void info_not_limited(void **s)
{
	moe_log_set_ratelimit(1, 1000);
	for (int i = 0; i < 20; i++)
		moe_log(MOE_LOG_INFO, "client %d connected", i);
	assert_int_equal(n_lines, 20);
}

/* More call sites than the table holds: entries are recycled, and no
 * drop goes unreported. */
static void many_sites(void **s)
{
	static char fmts[100][32];
	int total = 0;

	moe_log_set_ratelimit(2, 1000);
	for (int f = 0; f < 100; f++)
		snprintf(fmts[f], sizeof(fmts[f]), "site %d, event %%d", f);
	for (int f = 0; f < 100; f++) {
		for (int i = 0; i < 5; i++)
			moe_log(MOE_LOG_ERR, fmts[f], i);
		clock_ms += 1;
	}
	clock_ms += 1000;
	moe_log_flush();
	for (int i = 0; i < n_lines; i++) {
		const char *r = strstr(lines[i].text, "... repeated ");

		if (r)
			total += atoi(r + strlen("... repeated "));
	}
	assert_int_equal(total, 100 * 3);
	assert_int_equal(repeated("site 0, event 4"), 3);
	assert_int_equal(repeated("site 99, event 4"), 3);
	assert_int_equal(count("... repeated"), 100);
}

/* What one message through moe_log_stream looks like. */
static void format_line(bool journal, enum moe_log_level level,
			const char *msg, char *out, size_t len)
{
	char *buf = NULL;
	size_t n = 0;
	struct moe_log_out o = { open_memstream(&buf, &n), journal, "moed" };

	assert_non_null(o.f);
	moe_log_stream(&o, level, msg);
	fclose(o.f);
	snprintf(out, len, "%s", buf);
	free(buf);
}

/* "YYYY-MM-DD HH:MM:SS.mmm " at the start of s. */
static bool stamped(const char *s)
{
	static const char pat[] = "dddd-dd-dd dd:dd:dd.ddd ";

	for (size_t i = 0; i < sizeof(pat) - 1; i++)
		if (pat[i] == 'd' ? s[i] < '0' || s[i] > '9' : s[i] != pat[i])
			return false;
	return true;
}

static void journal_format(void **s)
{
	char line[256], want[64];

	format_line(true, MOE_LOG_ERR, "disk gone", line, sizeof(line));
	assert_string_equal(line, "<3>disk gone\n");
	format_line(true, MOE_LOG_NOTICE, "client refused", line, sizeof(line));
	assert_string_equal(line, "<5>client refused\n");
	format_line(true, MOE_LOG_DEBUG, "x", line, sizeof(line));
	assert_string_equal(line, "<7>x\n");
	format_line(false, MOE_LOG_WARNING, "slow read", line, sizeof(line));
	printf("  terminal: %s", line);
	assert_true(stamped(line));
	snprintf(want, sizeof(want), " moed[%d] warning: slow read\n", (int)getpid());
	assert_string_equal(line + 23, want);
	assert_int_not_equal(line[0], '<');
}

static void set_stream(const struct stat *st, long long dino)
{
	char v[64];

	snprintf(v, sizeof(v), "%llu:%llu", (unsigned long long)st->st_dev,
		 (unsigned long long)st->st_ino + (unsigned long long)dino);
	setenv("JOURNAL_STREAM", v, 1);
}

static void journal_stream_check(void **s)
{
	char path[256], v[80];
	struct stat st;
	int fd;

	tmp_path(path, sizeof(path), "log-stream");
	fd = open(path, O_WRONLY);
	assert_true(fd >= 0);
	assert_int_equal(fstat(fd, &st), 0);
	unsetenv("JOURNAL_STREAM");
	assert_false(moe_log_is_journal(fd));
	set_stream(&st, 0);
	assert_true(moe_log_is_journal(fd));
	set_stream(&st, 1); /* another file on the same device */
	assert_false(moe_log_is_journal(fd));
	snprintf(v, sizeof(v), "%llu:%llu:7", (unsigned long long)st.st_dev,
		 (unsigned long long)st.st_ino);
	setenv("JOURNAL_STREAM", v, 1);
	assert_false(moe_log_is_journal(fd));
	setenv("JOURNAL_STREAM", "1", 1);
	assert_false(moe_log_is_journal(fd));
	setenv("JOURNAL_STREAM", "", 1);
	assert_false(moe_log_is_journal(fd));
	unsetenv("JOURNAL_STREAM");
	close(fd);
}

/* moed itself: its stderr a file; $JOURNAL_STREAM naming that file, then
 * another one, then unset. Its error line (a missing model) is in the
 * journal's format only in the first case. */
static void moed_picks_format(void **s)
{
	static const char *const env[] = { "same", "other", "unset" };
	char path[256], line[512];
	struct stat st;

	tmp_path(path, sizeof(path), "log-moed");
	assert_int_equal(stat(path, &st), 0);
	for (int k = 0; k < 3; k++) {
		FILE *f;
		char v[80] = "";

		assert_int_equal(truncate(path, 0), 0);
		if (k < 2)
			snprintf(v, sizeof(v), "JOURNAL_STREAM=%llu:%llu",
				 (unsigned long long)st.st_dev,
				 (unsigned long long)st.st_ino + (unsigned long long)k);
		assert_int_equal(run_cmd("env -u JOURNAL_STREAM %s %s/moed --model /nonexistent/m.gguf --socket /nonexistent/s 2>> %s",
					 v, bin_dir(), path), 1);
		f = fopen(path, "r");
		assert_non_null(f);
		assert_non_null(fgets(line, sizeof(line), f));
		fclose(f);
		printf("  JOURNAL_STREAM %s: %s", env[k], line);
		assert_non_null(strstr(line, "/nonexistent/m.gguf"));
		if (k == 0) {
			assert_true(strncmp(line, "<3>", 3) == 0);
			assert_false(stamped(line + 3));
		} else {
			assert_true(stamped(line));
			assert_non_null(strstr(line, " err: "));
		}
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup(levels, setup),
		cmocka_unit_test_setup(unlimited_by_default, setup),
		cmocka_unit_test_setup(burst_then_summary, setup),
		cmocka_unit_test_setup(summary_before_next, setup),
		cmocka_unit_test_setup(info_not_limited, setup),
		cmocka_unit_test_setup(many_sites, setup),
		cmocka_unit_test(journal_format),
		cmocka_unit_test(journal_stream_check),
		cmocka_unit_test(moed_picks_format),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
