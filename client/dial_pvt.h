/* Private to client/ (libmoeclient and moectl): connect to moed's socket
 * with a bound on every step. ipc_connect() sets no timeout before
 * connect(), and on AF_UNIX a connect to a listener whose backlog is full
 * (a hung moed) blocks for ever; SO_SNDTIMEO set first bounds it. */
#ifndef MOE_CLIENT_DIAL_PVT_H
#define MOE_CLIENT_DIAL_PVT_H

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "sock.h"

/* Connect to path, giving up after timeout_ms (0: no bound); sends and
 * receives on the socket returned stay bounded by the same timeout.
 * Returns the fd (close-on-exec) or -errno: -ENOENT, -ECONNREFUSED (no
 * moed), -EACCES, -ENAMETOOLONG, -EINVAL (empty path), -ETIMEDOUT (the
 * backlog stayed full). */
static inline int client_dial(const char *path, uint32_t timeout_ms)
{
	struct sockaddr_un sa;
	size_t n = strlen(path);
	int s, rc;

	if (n == 0)
		return -EINVAL;
	if (n >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	memcpy(sa.sun_path, path, n + 1);
	s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (s < 0)
		return -errno;
	rc = ipc_sock_timeout(s, timeout_ms);
	while (!rc && connect(s, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		rc = errno == EINTR ? 0 : -errno;
	if (rc) {
		close(s);
		return rc == -EAGAIN ? -ETIMEDOUT : rc;
	}
	return s;
}

#endif
