/* The control socket: AF_UNIX SOCK_SEQPACKET, so each send is one message
 * with its boundaries kept, and a peer's death reads as a hang-up. Carries
 * the handshake (and the arena's memfd, SCM_RIGHTS) and moectl's questions;
 * a few messages per connection, never the request path. */
#ifndef MOE_IPC_SOCK_H
#define MOE_IPC_SOCK_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

/* Most fds one received message may carry before it counts as truncated:
 * room for more than we ever expect (one), so a peer sending a few extra
 * is seen, and its fds closed, rather than silently cut. */
#define IPC_RECV_MAX_FDS 4

/* Listen on path with the given mode (0660 for moed). A socket file
 * left by a dead moed is removed; a live one (something accepts a
 * connection) is left alone, and sees that probe as a connection that
 * hangs up at once. Two servers starting on one path at the same
 * instant are not told apart: the caller (systemd) runs one. Returns the
 * listening fd (close-on-exec); -EADDRINUSE (a live server), -EEXIST (path
 * is not a socket: never removed), -ENAMETOOLONG, or -errno. */
int ipc_listen(const char *path, mode_t mode, int backlog);

/* Connect to path, giving up after timeout_ms (0: no bound); sends and
 * receives on the socket stay bounded by the same timeout. Returns the fd
 * (close-on-exec) or -errno: -ENOENT, -ECONNREFUSED (no moed), -EACCES,
 * -ENAMETOOLONG, -EINVAL (empty path), -ETIMEDOUT (the listener's backlog
 * stayed full: a hung moed). */
int ipc_connect(const char *path, uint32_t timeout_ms);

/* Send one message of len bytes, with fd attached if fd >= 0. Never
 * raises SIGPIPE. Returns 0; -EINVAL (len 0: it would read as a hang-up),
 * -EPIPE or -ECONNRESET (peer gone), -EAGAIN (MSG_DONTWAIT, or the
 * ipc_sock_timeout passed), or -errno. */
int ipc_send(int sock, const void *buf, size_t len, int fd, int flags);

/* Receive one message into buf (cap bytes). If fd is not NULL, *fd gets
 * the descriptor that came with it (close-on-exec) or -1; fds nobody
 * asked for, and any beyond the first, are closed. Returns the message's
 * length (messages a peer sent before it closed are returned even when
 * it left some of ours unread); 0 when the peer hung up; -ECONNRESET
 * (it hung up leaving ours unread); -EMSGSIZE (longer than cap: dropped),
 * -MOE_EPROTO (unexpected or too many fds, or the control data cut
 * short: all closed), -EAGAIN (MSG_DONTWAIT, or the ipc_sock_timeout
 * passed), or -errno. On any error *fd is -1 and nothing is left open. */
ssize_t ipc_recv(int sock, void *buf, size_t cap, int *fd, int flags);

/* The peer's pid, uid and gid as the kernel saw them at connect time.
 * Returns 0 or -errno. */
int ipc_peercred(int sock, struct ucred *cred);

/* The peer's supplementary groups as the kernel saw them at connect
 * time (SO_PEERGROUPS): *groups (malloc'd, the caller frees it) gets *n
 * of them. Returns 0 or -errno (*groups NULL, *n 0): -ENOPROTOOPT on a
 * kernel before 4.13, -ENOMEM. */
int ipc_peergroups(int sock, gid_t **groups, uint32_t *n);

/* Limit blocking sends and receives on sock to ms milliseconds (0: no
 * limit): a client's handshake with a hung moed then fails with -EAGAIN.
 * Returns 0 or -errno. */
int ipc_sock_timeout(int sock, uint32_t ms);

/* Send question q (qlen bytes) on sock and take the answer: a message of
 * `type` and exactly len bytes (at least a header's) into reply. 0; the
 * negative status of a refusal moed sent instead (-EPERM: not on its
 * allow lists, -EUSERS: too many connections); -MOE_EDEAD (moed hung
 * up), -MOE_EPROTO (some other answer), -EAGAIN (ipc_sock_timeout
 * passed), or -errno. */
int ipc_question(int sock, const void *q, size_t qlen, int type,
		 void *reply, size_t len);

/* One question on a fresh connection to path: a header-only message of
 * type q, answered by one message of type `type` and exactly len bytes
 * into reply. Everything bounded by timeout_ms. Returns 0; an
 * ipc_connect error; the negative status of a refusal moed sent instead
 * (-EPERM: not on its allow lists, -EUSERS: too many connections);
 * -EAGAIN (no answer in time), -MOE_EDEAD (moed hung up), -MOE_EPROTO
 * (some other answer), or -errno. */
int ipc_ask(const char *path, uint32_t timeout_ms, int q, int type,
	    void *reply, size_t len);

#endif
