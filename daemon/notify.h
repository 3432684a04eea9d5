/* systemd's notify protocol, spoken by hand: datagrams of "KEY=value"
 * lines to the socket named by $NOTIFY_SOCKET (a path, or an abstract
 * name starting with '@'). Without $NOTIFY_SOCKET every call is a no-op,
 * so moed runs the same under systemd and from a shell. */
#ifndef MOE_NOTIFY_H
#define MOE_NOTIFY_H

#include <stdint.h>

/* Send a state string such as "READY=1\nSTATUS=serving". 0 (also when
 * not under systemd) or -errno. */
int moe_notify(const char *state);

/* printf-style moe_notify. */
int moe_notifyf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* The watchdog interval systemd asked for, in microseconds; 0 when none
 * (no $WATCHDOG_USEC, or $WATCHDOG_PID names another process). Pings are
 * due at half of it. */
uint64_t moe_notify_watchdog_usec(void);

#endif
