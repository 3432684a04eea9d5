/* moectl: asks a running moed for its status and counters, and sends a
 * layer through it with the same file formats as moe-layer, so the two
 * outputs can be compared byte for byte. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <moe/moeclient.h>

#include "proto.h"
#include "shm.h"
#include "sock.h"

#define DEFAULT_SOCKET "/run/moed/moed.sock"
#define WAIT_NS 30000000000ll /* one request, at most */

static const char *sock_path(const char *opt)
{
	const char *env = getenv("MOED_SOCKET");

	if (opt)
		return opt;
	return env && *env ? env : DEFAULT_SOCKET;
}

static int dial(const char *path)
{
	int fd = ipc_connect(path);

	if (fd < 0) {
		fprintf(stderr, "moectl: cannot reach moed at %s: %s\n", path,
			moe_strerror(fd));
		return -1;
	}
	ipc_sock_timeout(fd, 10000);
	return fd;
}

/* Ask one question on a fresh connection; the reply must be `type`. */
static int ask(const char *path, enum ipc_msg_type q, enum ipc_msg_type type,
	       void *reply, size_t len)
{
	struct ipc_msg_hdr h;
	ssize_t n;
	int fd = dial(path), rc = -1;

	if (fd < 0)
		return -1;
	ipc_msg_init(&h, q, sizeof(h), 0);
	n = ipc_send(fd, &h, sizeof(h), -1, 0);
	if (!n)
		n = ipc_recv(fd, reply, len, NULL, 0);
	if (n == (ssize_t)len && ipc_msg_check(reply, len, len) == (int)type)
		rc = 0;
	else
		fprintf(stderr, "moectl: %s: no answer from moed (%s)\n", path,
			n < 0 ? moe_strerror((int)n) : "unexpected reply");
	close(fd);
	return rc;
}

static int cmd_status(const char *path)
{
	struct ipc_status_reply r;

	if (ask(path, IPC_MSG_STATUS, IPC_MSG_STATUS_REPLY, &r, sizeof(r)))
		return 1;
	printf("moed        pid %d, up %.1f s, %u workers\n", r.pid,
	       r.uptime_ms / 1000.0, r.threads);
	printf("model       %s (%s, %u layers, %u experts)\n", r.model, r.arch,
	       r.n_layer, r.n_expert);
	printf("clients     %u of %u\n", r.clients, r.max_clients);
	if (r.cache_budget)
		printf("cache       %.1f of %.1f MiB (%.0f%%)\n",
		       r.cache_used / 1048576.0, r.cache_budget / 1048576.0,
		       100.0 * r.cache_used / r.cache_budget);
	else
		printf("cache       the page cache (mmap)\n");
	return 0;
}

struct counter {
	const char *name, *help;
	uint64_t v;
};

static int cmd_stats(const char *path, const char *format)
{
	struct ipc_stats_reply r;
	size_t n;

	if (ask(path, IPC_MSG_STATS, IPC_MSG_STATS_REPLY, &r, sizeof(r)))
		return 1;
	const struct counter c[] = {
		{ "requests", "requests received", r.requests },
		{ "tokens", "tokens in accepted requests", r.tokens },
		{ "refused", "descriptors refused as invalid", r.refused },
		{ "failed", "requests completed with an error", r.failed },
		{ "expert_hits", "expert uses found resident", r.expert_hits },
		{ "expert_misses", "expert uses that waited for a read", r.expert_misses },
		{ "bytes_read", "bytes read from the model file", r.bytes_read },
		{ "prefetch_issued", "prefetch reads issued", r.prefetch_issued },
		{ "prefetch_used", "prefetched experts later wanted", r.prefetch_used },
		{ "evictions", "experts evicted from the cache", r.evictions },
		{ "busy_usec", "request time summed, microseconds", r.busy_usec },
	};
	n = sizeof(c) / sizeof(c[0]);
	for (size_t i = 0; i < n; i++) {
		if (strcmp(format, "json") == 0)
			printf("%s\"%s\": %" PRIu64 "%s", i ? ", " : "{", c[i].name,
			       c[i].v, i + 1 == n ? "}\n" : "");
		else if (strcmp(format, "prometheus") == 0)
			printf("# HELP moed_%s %s\n# TYPE moed_%s counter\nmoed_%s %" PRIu64 "\n",
			       c[i].name, c[i].help, c[i].name, c[i].name, c[i].v);
		else
			printf("%-16s %" PRIu64 "\n", c[i].name, c[i].v);
	}
	return 0;
}

struct session {
	int sock;
	struct ipc_arena a;
	struct ipc_hello_reply r;
};

static int open_session(const char *path, struct session *s)
{
	struct ipc_hello h;
	ssize_t n;
	int fd = -1, rc;

	memset(s, 0, sizeof(*s));
	s->a.fd = -1;
	s->sock = dial(path);
	if (s->sock < 0)
		return -1;
	memset(&h, 0, sizeof(h));
	ipc_msg_init(&h.h, IPC_MSG_HELLO, sizeof(h), 0);
	h.ver_min = IPC_PROTO_VERSION_MIN;
	h.ver_max = IPC_PROTO_VERSION_MAX;
	h.max_inflight = 1;
	h.pid = getpid();
	strcpy(h.name, "moectl");
	n = ipc_send(s->sock, &h, sizeof(h), -1, 0);
	if (!n)
		n = ipc_recv(s->sock, &s->r, sizeof(s->r), &fd, 0);
	if (n != sizeof(s->r) ||
	    ipc_msg_check(&s->r, sizeof(s->r), sizeof(s->r)) != IPC_MSG_HELLO_REPLY) {
		fprintf(stderr, "moectl: %s: no hello from moed (%s)\n", path,
			n < 0 ? moe_strerror((int)n) : "unexpected reply");
		goto err;
	}
	if (s->r.h.status) {
		fprintf(stderr, "moectl: moed refused the connection: %s\n",
			moe_strerror(s->r.h.status));
		goto err;
	}
	rc = ipc_arena_attach(&s->a, fd);
	if (rc) {
		fprintf(stderr, "moectl: bad arena from moed: %s\n", moe_strerror(rc));
		close(fd);
		goto err;
	}
	return 0;
err:
	close(s->sock);
	return -1;
}

/* Push one descriptor and wait for its completion; a hang-up of the
 * control socket means moed died, so the wait is done in slices. */
static int round_trip(struct session *s, const struct ipc_desc *d,
		      struct ipc_cqe *c)
{
	struct ipc_msg_hdr k;
	char b[64];

	if (ipc_ring_push(&s->a.sq, d))
		return -EAGAIN;
	ipc_bell_ring(s->a.sq_bell);
	if (atomic_load_explicit(&s->a.sq_bell->waiters, memory_order_seq_cst)) {
		ipc_msg_init(&k, IPC_MSG_KICK, sizeof(k), 0);
		ipc_send(s->sock, &k, sizeof(k), -1, MSG_DONTWAIT);
	}
	for (int64_t waited = 0; waited < WAIT_NS; waited += 100000000) {
		int rc = ipc_bell_wait(s->a.cq_bell, ipc_ring_ready, &s->a.cq,
				       IPC_BELL_SPINS, 100000000);
		ssize_t n;

		if (rc >= 0)
			return ipc_ring_pop(&s->a.cq, c);
		if (rc != -ETIMEDOUT)
			return rc;
		n = ipc_recv(s->sock, b, sizeof(b), NULL, MSG_DONTWAIT);
		if (n == 0 || (n < 0 && n != -EAGAIN))
			return -MOE_EDEAD;
	}
	return -ETIMEDOUT;
}

struct fwd {
	uint32_t layer, tokens;
	const char *in, *out;
	float top_p;
	uint32_t min_k, max_k;
};

static float *read_rows(const char *path, uint32_t n_embd, uint32_t want,
			uint32_t *nt)
{
	size_t row = (size_t)n_embd * sizeof(float);
	struct stat st;
	FILE *f = fopen(path, "rb");
	float *x = NULL;

	if (!f || fstat(fileno(f), &st)) {
		fprintf(stderr, "moectl: %s: %s\n", path, strerror(errno));
		goto out;
	}
	if (!st.st_size || st.st_size % row || (want && (size_t)st.st_size != want * row)) {
		fprintf(stderr, "moectl: %s: %jd bytes, expected %s%zu-byte rows (n_embd %u floats)\n",
			path, (intmax_t)st.st_size, want ? "exactly --tokens " : "whole ",
			row, n_embd);
		goto out;
	}
	*nt = (uint32_t)(st.st_size / row);
	x = malloc(st.st_size);
	if (x && fread(x, 1, st.st_size, f) != (size_t)st.st_size) {
		free(x);
		x = NULL;
	}
out:
	if (f)
		fclose(f);
	return x;
}

/* Send the rows in requests of at most the granted size. */
static int forward_all(struct session *s, const struct fwd *o, float *x,
		       uint32_t nt)
{
	uint32_t n_embd = s->r.n_embd, step = s->r.max_tokens;

	for (uint32_t t0 = 0; t0 < nt; t0 += step) {
		uint32_t n = nt - t0 < step ? nt - t0 : step;
		struct ipc_desc d = { .id = t0 + 1, .layer = o->layer,
				      .n_tokens = n, .top_p = o->top_p,
				      .min_k = o->min_k, .max_k = o->max_k };
		struct ipc_cqe c;
		int rc;

		memcpy(ipc_slot_in(&s->a, 0), x + (size_t)t0 * n_embd,
		       (size_t)n * n_embd * sizeof(float));
		rc = round_trip(s, &d, &c);
		if (!rc)
			rc = c.status;
		if (rc) {
			fprintf(stderr, "moectl: layer %u, tokens %u..%u: %s\n",
				o->layer, t0, t0 + n - 1, moe_strerror(rc));
			return -1;
		}
		memcpy(x + (size_t)t0 * n_embd, ipc_slot_out(&s->a, 0),
		       (size_t)n * n_embd * sizeof(float));
	}
	return 0;
}

static int cmd_forward(const char *path, const struct fwd *o)
{
	struct session s;
	uint32_t nt = 0;
	float *x;
	FILE *f;
	int rc = 1;

	if (open_session(path, &s))
		return 1;
	x = read_rows(o->in, s.r.n_embd, o->tokens, &nt);
	if (x && !forward_all(&s, o, x, nt)) {
		f = fopen(o->out, "wb");
		if (f && fwrite(x, sizeof(float), (size_t)nt * s.r.n_embd, f) ==
				 (size_t)nt * s.r.n_embd && !fclose(f))
			rc = 0;
		else
			fprintf(stderr, "moectl: %s: %s\n", o->out, strerror(errno));
	}
	free(x);
	ipc_arena_close(&s.a);
	close(s.sock);
	return rc;
}

static void usage(FILE *f)
{
	fprintf(f,
"usage: moectl [--socket PATH] status\n"
"       moectl [--socket PATH] stats [--json | --prometheus]\n"
"       moectl [--socket PATH] forward --layer L --input X.f32 [--tokens N]\n"
"              --output Y.f32 [--top-p P --min-k A --max-k B]\n"
"The socket is --socket, else $MOED_SOCKET, else " DEFAULT_SOCKET ".\n"
"forward takes and writes raw little-endian float32 rows of n_embd, as\n"
"moe-layer does.\n");
}

struct args {
	struct fwd o;
	const char *sock, *format;
};

/* Options before the command ("+": stop at it) and after it. */
static int parse_opts(int argc, char **argv, const char *optstring,
		      struct args *a)
{
	static const struct option lo[] = {
		{ "socket", 1, NULL, 's' }, { "json", 0, NULL, 'j' },
		{ "prometheus", 0, NULL, 'P' }, { "layer", 1, NULL, 'l' },
		{ "input", 1, NULL, 'i' }, { "output", 1, NULL, 'o' },
		{ "tokens", 1, NULL, 'n' }, { "top-p", 1, NULL, 'p' },
		{ "min-k", 1, NULL, 'a' }, { "max-k", 1, NULL, 'b' },
		{ "help", 0, NULL, 'h' }, { NULL, 0, NULL, 0 },
	};
	int c;

	while ((c = getopt_long(argc, argv, optstring, lo, NULL)) != -1) {
		switch (c) {
		case 's': a->sock = optarg; break;
		case 'j': a->format = "json"; break;
		case 'P': a->format = "prometheus"; break;
		case 'l': a->o.layer = (uint32_t)strtoul(optarg, NULL, 10); break;
		case 'i': a->o.in = optarg; break;
		case 'o': a->o.out = optarg; break;
		case 'n': a->o.tokens = (uint32_t)strtoul(optarg, NULL, 10); break;
		case 'p': a->o.top_p = strtof(optarg, NULL); break;
		case 'a': a->o.min_k = (uint32_t)strtoul(optarg, NULL, 10); break;
		case 'b': a->o.max_k = (uint32_t)strtoul(optarg, NULL, 10); break;
		case 'h': usage(stdout); exit(0);
		default: usage(stderr); return -1;
		}
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct args a = { .o.layer = UINT32_MAX, .format = "table" };
	const char *cmd;

	if (parse_opts(argc, argv, "+h", &a))
		return 2;
	if (optind >= argc) {
		usage(stderr);
		return 2;
	}
	cmd = argv[optind++];
	if (parse_opts(argc, argv, "h", &a))
		return 2;
	if (strcmp(cmd, "status") == 0)
		return cmd_status(sock_path(a.sock));
	if (strcmp(cmd, "stats") == 0)
		return cmd_stats(sock_path(a.sock), a.format);
	if (strcmp(cmd, "forward") == 0) {
		if (a.o.layer == UINT32_MAX || !a.o.in || !a.o.out) {
			fprintf(stderr, "moectl: forward needs --layer, --input and --output\n");
			return 2;
		}
		return cmd_forward(sock_path(a.sock), &a.o);
	}
	fprintf(stderr, "moectl: unknown command '%s'\n", cmd);
	usage(stderr);
	return 2;
}
