/* The notify protocol against a test socket: what moed sends is what a
 * service manager receives; without $NOTIFY_SOCKET nothing is sent. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cmocka.h>

#include "notify.h"
#include "testutil.h"

static int listener(const char *name, int abstract)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(name));

	assert_true(fd >= 0);
	memcpy(sa.sun_path, name, strlen(name));
	if (abstract)
		sa.sun_path[0] = 0;
	else
		unlink(name);
	assert_int_equal(bind(fd, (struct sockaddr *)&sa, len), 0);
	return fd;
}

static void expect_msg(int fd, const char *want)
{
	char buf[512];
	ssize_t n = recv(fd, buf, sizeof(buf) - 1, MSG_DONTWAIT);

	assert_true(n > 0);
	buf[n] = 0;
	assert_string_equal(buf, want);
}

static void path_socket(void **s)
{
	char path[256];
	int fd;

	tmp_path(path, sizeof(path), "notify");
	fd = listener(path, 0);
	setenv("NOTIFY_SOCKET", path, 1);
	assert_int_equal(moe_notify("READY=1\nSTATUS=serving"), 0);
	expect_msg(fd, "READY=1\nSTATUS=serving");
	assert_int_equal(moe_notifyf("STATUS=%d clients", 3), 0);
	expect_msg(fd, "STATUS=3 clients");
	close(fd);
	unsetenv("NOTIFY_SOCKET");
}

static void abstract_socket(void **s)
{
	char name[64];
	int fd;

	snprintf(name, sizeof(name), "@moetest-notify-%d", (int)getpid());
	fd = listener(name, 1);
	setenv("NOTIFY_SOCKET", name, 1);
	assert_int_equal(moe_notify("WATCHDOG=1"), 0);
	expect_msg(fd, "WATCHDOG=1");
	close(fd);
	unsetenv("NOTIFY_SOCKET");
}

static void not_under_systemd(void **s)
{
	unsetenv("NOTIFY_SOCKET");
	assert_int_equal(moe_notify("READY=1"), 0);
	setenv("NOTIFY_SOCKET", "relative/path", 1);
	assert_int_equal(moe_notify("READY=1"), -EINVAL);
	unsetenv("NOTIFY_SOCKET");
}

static void watchdog_interval(void **s)
{
	char pid[32];

	unsetenv("WATCHDOG_PID");
	unsetenv("WATCHDOG_USEC");
	assert_int_equal(moe_notify_watchdog_usec(), 0);
	setenv("WATCHDOG_USEC", "2000000", 1);
	assert_int_equal(moe_notify_watchdog_usec(), 2000000);
	snprintf(pid, sizeof(pid), "%d", (int)getpid());
	setenv("WATCHDOG_PID", pid, 1);
	assert_int_equal(moe_notify_watchdog_usec(), 2000000);
	snprintf(pid, sizeof(pid), "%d", (int)getpid() + 1);
	setenv("WATCHDOG_PID", pid, 1);
	assert_int_equal(moe_notify_watchdog_usec(), 0); /* meant for another */
	setenv("WATCHDOG_PID", "", 1);
	setenv("WATCHDOG_USEC", "12x", 1);
	assert_int_equal(moe_notify_watchdog_usec(), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(path_socket),
		cmocka_unit_test(abstract_socket),
		cmocka_unit_test(not_under_systemd),
		cmocka_unit_test(watchdog_interval),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
