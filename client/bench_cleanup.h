/* What moe-bench must undo if it is interrupted: the moed of its own, that
 * moed's private directory and the memory cgroup it runs in. The running
 * code records each one while it exists; on SIGINT, SIGTERM or SIGHUP a
 * handler stops moed, removes the directory and the cgroup, says so on
 * stderr and exits 128 + the signal's number. Everything the handler
 * does is async-signal-safe: the paths are copied into static buffers
 * when they are recorded, not when they are needed. */
#ifndef MOE_BENCH_CLEANUP_H
#define MOE_BENCH_CLEANUP_H

#include <sys/types.h>

/* Install the handlers (once, before anything is started). */
void bench_cleanup_install(void);

/* In a forked child (a client process, moed before its exec): the
 * default actions again, so that the child never runs the cleanup. */
void bench_cleanup_default(void);

/* The moed of our own: its pid, or 0 once it is reaped. */
void bench_cleanup_pid(pid_t pid);

/* moed's private directory (its files are moed.sock, notify and
 * moed.log), or NULL once it is removed. */
void bench_cleanup_dir(const char *dir);

/* Remove moed's private directory and the files moed puts in it
 * (async-signal-safe: the handler's way and the normal one alike). */
void bench_cleanup_rmdir(const char *dir);

/* The memory cgroup's directory, or NULL once it is removed. */
void bench_cleanup_cgroup(const char *path);

#endif
