/* Control-socket helpers over AF_UNIX SOCK_SEQPACKET: listen (replacing a
 * stale socket file safely), connect, one message with an optional fd
 * each way, and the peer's credentials. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <moe/moeclient.h>

#include "proto.h"
#include "sock.h"

static int make_addr(struct sockaddr_un *sa, const char *path)
{
	size_t n = strlen(path);

	if (n == 0)
		return -EINVAL;
	if (n >= sizeof(sa->sun_path))
		return -ENAMETOOLONG;
	memset(sa, 0, sizeof(*sa));
	sa->sun_family = AF_UNIX;
	memcpy(sa->sun_path, path, n + 1);
	return 0;
}

/* Is something serving on sa? A non-blocking probe, so a server with a
 * full backlog (EAGAIN) answers "yes" instead of blocking us. */
static int probe_live(const struct sockaddr_un *sa)
{
	int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK,
		       0);
	int rc;

	if (s < 0)
		return -errno;
	rc = connect(s, (const struct sockaddr *)sa, sizeof(*sa)) ? -errno : 0;
	close(s);
	switch (rc) {
	case 0:
	case -EAGAIN:
	case -EINPROGRESS:
	case -EPROTOTYPE: /* a live stream socket: someone else's */
		return 1;
	case -ECONNREFUSED: /* the file outlived its server */
	case -ENOENT:
		return 0;
	default:
		return rc;
	}
}

/* Remove a socket file a dead server left, and nothing else. */
static int clear_stale(const char *path, const struct sockaddr_un *sa)
{
	struct stat st;
	int live;

	if (lstat(path, &st) < 0)
		return errno == ENOENT ? 0 : -errno;
	if (!S_ISSOCK(st.st_mode))
		return -EEXIST;
	live = probe_live(sa);
	if (live)
		return live > 0 ? -EADDRINUSE : live;
	if (unlink(path) < 0 && errno != ENOENT)
		return -errno;
	return 0;
}

int ipc_listen(const char *path, mode_t mode, int backlog)
{
	struct sockaddr_un sa;
	int s, rc;

	rc = make_addr(&sa, path);
	if (!rc)
		rc = clear_stale(path, &sa);
	if (rc)
		return rc;
	s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (s < 0)
		return -errno;
	/* bind creates the file with the socket inode's mode less the
	 * umask: narrowing the inode first means the file is never wider
	 * than mode, even before the chmod that makes it exact. */
	if (fchmod(s, mode) < 0 ||
	    bind(s, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		goto err;
	if (chmod(path, mode) < 0 || listen(s, backlog) < 0)
		goto err_unlink;
	return s;
err_unlink:
	rc = -errno;
	unlink(path);
	close(s);
	return rc;
err:
	rc = -errno;
	close(s);
	return rc;
}

int ipc_connect(const char *path, uint32_t timeout_ms)
{
	struct sockaddr_un sa;
	int s, rc;

	rc = make_addr(&sa, path);
	if (rc)
		return rc;
	s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (s < 0)
		return -errno;
	/* Set first: on AF_UNIX a connect to a listener whose backlog is
	 * full (a hung moed) waits as long as SO_SNDTIMEO allows. */
	rc = ipc_sock_timeout(s, timeout_ms);
	while (!rc && connect(s, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		rc = errno == EINTR ? 0 : -errno;
	if (rc) {
		close(s);
		return rc == -EAGAIN ? -ETIMEDOUT : rc;
	}
	return s;
}

/* Control-message space, aligned as struct cmsghdr requires. */
union cmsg_buf {
	struct cmsghdr align;
	char buf[CMSG_SPACE(sizeof(int) * IPC_RECV_MAX_FDS)];
};

int ipc_send(int sock, const void *buf, size_t len, int fd, int flags)
{
	struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1 };
	union cmsg_buf c;
	ssize_t n;

	/* An empty message would read as a hang-up at the other end. */
	if (len == 0)
		return -EINVAL;
	if (fd >= 0) {
		memset(&c, 0, sizeof(c));
		m.msg_control = c.buf;
		m.msg_controllen = CMSG_SPACE(sizeof(int));
		struct cmsghdr *h = CMSG_FIRSTHDR(&m);
		h->cmsg_level = SOL_SOCKET;
		h->cmsg_type = SCM_RIGHTS;
		h->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(h), &fd, sizeof(int));
	}
	/* MSG_NOSIGNAL: a client that died must not kill moed. */
	while ((n = sendmsg(sock, &m, flags | MSG_NOSIGNAL)) < 0 &&
	       errno == EINTR)
		;
	if (n < 0)
		return -errno;
	return (size_t)n == len ? 0 : -EMSGSIZE;
}

/* Walk the SCM_RIGHTS data: keep the first fd if *keep wants one, close
 * the rest. Returns how many fds were closed unasked. */
static int take_fds(struct msghdr *m, int *keep)
{
	int extra = 0;

	for (struct cmsghdr *h = CMSG_FIRSTHDR(m); h; h = CMSG_NXTHDR(m, h)) {
		if (h->cmsg_level != SOL_SOCKET || h->cmsg_type != SCM_RIGHTS)
			continue;
		size_t n = (h->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t i = 0; i < n; i++) {
			int fd;

			memcpy(&fd, CMSG_DATA(h) + i * sizeof(int), sizeof(fd));
			if (keep && *keep < 0) {
				*keep = fd;
			} else {
				close(fd);
				extra++;
			}
		}
	}
	return extra;
}

ssize_t ipc_recv(int sock, void *buf, size_t cap, int *fd, int flags)
{
	struct iovec iov = { .iov_base = buf, .iov_len = cap };
	union cmsg_buf c;
	struct msghdr m = {
		.msg_iov = &iov, .msg_iovlen = 1,
		.msg_control = c.buf, .msg_controllen = sizeof(c.buf),
	};
	int got = -1, extra, rc;
	ssize_t n;

	if (fd)
		*fd = -1;
	while ((n = recvmsg(sock, &m, flags | MSG_CMSG_CLOEXEC)) < 0 &&
	       errno == EINTR)
		;
	/* A peer that closed with a message of ours unread leaves a reset,
	 * which the kernel reports (once) before the messages it did send:
	 * its last words (moed's refusal at accept) are still to be read. */
	if (n < 0 && errno == ECONNRESET) {
		m.msg_controllen = sizeof(c.buf);
		n = recvmsg(sock, &m, flags | MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
		if (n < 0)
			errno = ECONNRESET;
	}
	if (n < 0)
		return -errno;
	/* Fds that did not fit (MSG_CTRUNC) were never installed: the
	 * kernel dropped them. The ones that did are ours to close, all of
	 * them on a hang-up (n == 0), which carries none when it is real. */
	extra = take_fds(&m, fd && n > 0 ? &got : NULL);
	if (extra || (m.msg_flags & MSG_CTRUNC))
		rc = -MOE_EPROTO;
	else if (m.msg_flags & MSG_TRUNC)
		rc = -EMSGSIZE;
	else
		rc = 0;
	if (rc) {
		if (got >= 0)
			close(got);
		return rc;
	}
	if (fd)
		*fd = got;
	return n;
}

int ipc_peercred(int sock, struct ucred *cred)
{
	socklen_t len = sizeof(*cred);

	if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, cred, &len) < 0)
		return -errno;
	return len == sizeof(*cred) ? 0 : -EPROTO;
}

/* SO_PEERGROUPS, like SO_PEERCRED, is what the peer held when it called
 * connect(), kept by the kernel with the socket: unlike /proc/PID/status
 * it cannot be read from another process that reused an exited peer's
 * pid, nor from a peer that dropped groups after connecting; unlike
 * getgrouplist() it is what the process holds, not what /etc/group says
 * the user would get at login. */
int ipc_peergroups(int sock, gid_t **groups, uint32_t *n)
{
	socklen_t len = 16 * sizeof(gid_t);
	gid_t *g = NULL;
	int rc = -ERANGE;

	*groups = NULL;
	*n = 0;
	/* ERANGE: len now says what it needs (a peer's groups are fixed,
	 * so a second try fits; a few more cost nothing). */
	for (int tries = 0; tries < 4 && rc == -ERANGE; tries++) {
		gid_t *p = realloc(g, len ? len : sizeof(gid_t));

		if (!p) {
			rc = -ENOMEM;
			break;
		}
		g = p;
		if (getsockopt(sock, SOL_SOCKET, SO_PEERGROUPS, g, &len) == 0) {
			*groups = g;
			*n = (uint32_t)(len / sizeof(gid_t));
			return 0;
		}
		rc = -errno;
	}
	free(g);
	return rc;
}

int ipc_sock_timeout(int sock, uint32_t ms)
{
	struct timeval tv = { .tv_sec = ms / 1000,
			      .tv_usec = (suseconds_t)(ms % 1000) * 1000 };

	if (setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0 ||
	    setsockopt(sock, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0)
		return -errno;
	return 0;
}

int ipc_question(int sock, const void *q, size_t qlen, int type,
		 void *reply, size_t len)
{
	struct ipc_msg_hdr h;
	ssize_t n = ipc_send(sock, q, qlen, -1, 0);

	/* Refused at accept, moed may have closed before the question went;
	 * its refusal is still there to read. */
	if (!n || n == -EPIPE || n == -ECONNRESET)
		n = ipc_recv(sock, reply, len, NULL, 0);
	if (n == (ssize_t)len && ipc_msg_check(reply, len, len) == type)
		return 0;
	if (n >= (ssize_t)sizeof(h) &&
	    ipc_msg_check(reply, (size_t)n, sizeof(h)) >= 0) {
		memcpy(&h, reply, sizeof(h));
		if (h.status < 0)
			return h.status; /* refused: not allowed, too many */
	}
	if (n == 0)
		return -MOE_EDEAD;
	return n < 0 && n != -EMSGSIZE ? (int)n : -MOE_EPROTO;
}

int ipc_ask(const char *path, uint32_t timeout_ms, int q, int type,
	    void *reply, size_t len)
{
	struct ipc_msg_hdr h;
	int fd = ipc_connect(path, timeout_ms), rc;

	if (fd < 0)
		return fd;
	ipc_msg_init(&h, (enum ipc_msg_type)q, sizeof(h), 0);
	rc = ipc_question(fd, &h, sizeof(h), type, reply, len);
	close(fd);
	return rc;
}
