/* A moed of moe-bench's own: started on a model with a private socket in a
 * private directory, optionally inside a memory cgroup from its first
 * instruction, known to be ready when it says READY=1 on the notify
 * socket it is given (systemd's protocol, which moed speaks anyway), and
 * stopped with SIGTERM afterwards. Its log goes to a file whose tail is
 * shown when it fails. */
#ifndef MOE_BENCH_MOED_H
#define MOE_BENCH_MOED_H

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "bench_cgroup.h"
#include "diag.h"

struct bench_moed {
	pid_t pid;            /* 0 once reaped */
	int wstatus;          /* wait status once reaped */
	long maxrss_kb;       /* its peak RSS from wait4, once reaped */
	char dir[256];        /* private directory: socket, notify, log */
	char sock[PATH_MAX];
	char log[PATH_MAX];
	int notify_fd;
};

struct bench_moed_opts {
	const char *moed;             /* the moed executable */
	const char *model;
	const char *const *args;      /* more options, NULL-terminated */
	const struct bench_cgroup *cg; /* NULL: not capped */
	uint32_t ready_ms;            /* 0: 120 s */
};

/* Find moed: `given` if not NULL, else next to this executable (build
 * tree: bin/moed; install: ../sbin/moed), else moed on $PATH. Writes the
 * path to out. 0 or -ENOENT with err listing where it looked. */
int bench_moed_find(const char *given, char *out, size_t cap,
		    struct moe_msg *err);

/* Start moed and wait until it is ready. On failure nothing is left
 * running and err says why: moed exited (with its status and the last
 * line of its log), it did not get ready in time, or the cgroup refused
 * it. The directory is kept for the log until bench_moed_cleanup(). */
int bench_moed_start(struct bench_moed *d, const struct bench_moed_opts *o,
		     struct moe_msg *err);

/* Has it exited (reaping it if so)? */
bool bench_moed_exited(struct bench_moed *d);

/* SIGTERM, up to 10 s for it to finish, then SIGKILL. 0 if it exited 0;
 * else -ECHILD with err saying how it ended. */
int bench_moed_stop(struct bench_moed *d, struct moe_msg *err);

/* Describe how a reaped moed ended ("exited with status 1", "killed by
 * signal 9"), and its log's last lines, to f. */
void bench_moed_report(const struct bench_moed *d, FILE *f, int lines);

/* Remove the private directory and its files. */
void bench_moed_cleanup(struct bench_moed *d);

#endif
