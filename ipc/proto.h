/* The wire format between moed and its clients, built into both: control
 * messages on the Unix socket (the handshake, moectl's questions) and the
 * entries of the two rings in the shared arena. Every struct has a fixed
 * size checked below and reserved bytes, zero when sent, that a later
 * minor version may give a meaning. Integers are native-endian: both ends
 * run on the same machine. */
#ifndef MOE_IPC_PROTO_H
#define MOE_IPC_PROTO_H

#include <assert.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <moe/moeclient.h>

#define IPC_PROTO_MAGIC 0x50454f4du /* "MOEP" in memory */
#define IPC_PROTO_VERSION_MIN 1
#define IPC_PROTO_VERSION_MAX 1

/* Largest control message either side sends: size receive buffers so. */
#define IPC_MSG_MAX 1024

/* Layers the handshake's MoE bitmap can describe. */
#define IPC_MAX_LAYERS 512

/* Numbers are part of the protocol: append, never renumber. */
enum ipc_msg_type {
	/* 0x01-0x0f: a client session. */
	IPC_MSG_HELLO = 0x01,       /* client: struct ipc_hello */
	IPC_MSG_HELLO_REPLY = 0x02, /* moed: struct ipc_hello_reply + memfd */
	IPC_MSG_BYE = 0x03,         /* either: header only; a hang-up is the
				     * same thing, said less politely */
	IPC_MSG_KICK = 0x04,        /* client: header only. moed serves all
				     * clients from one dispatcher, which
				     * cannot futex-wait on every client's
				     * submission bell; when it goes idle it
				     * sets `waiters` on each submission bell
				     * and sleeps in epoll. A client that
				     * pushes and sees waiters set sends one
				     * KICK on its control socket. */
	/* 0x10-0x3f: moectl's questions, each answered once. */
	IPC_MSG_STATUS = 0x10,       /* header only */
	IPC_MSG_STATUS_REPLY = 0x11, /* struct ipc_status_reply */
	IPC_MSG_STATS = 0x12,        /* header only */
	IPC_MSG_STATS_REPLY = 0x13,  /* struct ipc_stats_reply */
	IPC_MSG_STATS_LAYER = 0x14,  /* struct ipc_stats_layer */
	IPC_MSG_STATS_LAYER_REPLY = 0x15, /* struct ipc_stats_layer_reply */
	IPC_MSG_STATS_LIVE = 0x16,   /* header only */
	IPC_MSG_STATS_LIVE_REPLY = 0x17, /* struct ipc_stats_live_reply */
	/* 0x40-0x7e: free for later. */
	IPC_MSG_ERROR = 0x7f, /* moed: header only, a request refused: status */
};

/* Starts every control message. */
struct ipc_msg_hdr {
	uint32_t magic;    /* IPC_PROTO_MAGIC */
	uint16_t type;     /* enum ipc_msg_type */
	uint16_t reserved;
	uint32_t size;     /* bytes of the whole message, header included */
	int32_t status;    /* replies: 0, -errno or -MOE_E*; requests: 0 */
};
static_assert(sizeof(struct ipc_msg_hdr) == 16, "ipc_msg_hdr");

/* Client to moed, first message on a connection. */
struct ipc_hello {
	struct ipc_msg_hdr h;
	uint16_t ver_min;      /* protocol versions the client speaks */
	uint16_t ver_max;
	uint32_t max_tokens;   /* most tokens it puts in one request */
	uint32_t max_inflight; /* most requests it has in flight at once */
	uint32_t max_route_k;  /* widest caller-given routing it sends; 0:
				* it never routes itself */
	int32_t pid;           /* for logs; moed believes SO_PEERCRED only */
	uint32_t flags;        /* none defined: 0 */
	char name[32];         /* the program, for logs; NUL-terminated */
	uint8_t reserved[56];
};
static_assert(sizeof(struct ipc_hello) == 128, "ipc_hello");
static_assert(offsetof(struct ipc_hello, name) == 40, "ipc_hello.name");

/* moed to client. With status 0 the arena's memfd rides along
 * (SCM_RIGHTS); with any other status nothing does and moed hangs up. */
struct ipc_hello_reply {
	struct ipc_msg_hdr h;  /* status: 0, -MOE_EVERSION, -EPERM (uid not
				* allowed), -EUSERS (--max-clients reached),
				* -EINVAL (limits), -ENOMEM */
	uint16_t version;      /* the version chosen, in the client's range */
	uint16_t reserved0;
	uint32_t flags;        /* none defined: 0 */
	char arch[32];         /* "llama", "qwen3moe", ...; NUL-terminated */
	uint32_t n_layer;
	uint32_t n_embd;
	uint32_t n_expert;     /* largest over the MoE layers */
	uint32_t n_used;       /* the model's expert_used_count */
	uint32_t max_k;        /* largest k a request may ask for */
	uint32_t first_moe_layer;
	uint32_t last_moe_layer;
	uint32_t n_moe_layers;
	/* Bit L (byte L / 8, bit L % 8) set: layer L is a MoE layer moed
	 * serves. Layers past IPC_MAX_LAYERS: go by first/last. */
	uint8_t moe_layers[IPC_MAX_LAYERS / 8];
	uint64_t arena_size;   /* bytes of the memfd */
	uint64_t slot_size;    /* bytes per slot */
	uint32_t slot_count;
	uint32_t max_tokens;   /* granted, at most what was asked */
	uint32_t max_inflight; /* granted */
	uint32_t max_route_k;  /* granted */
	uint8_t reserved[72];
};
static_assert(sizeof(struct ipc_hello_reply) == 256, "ipc_hello_reply");
static_assert(offsetof(struct ipc_hello_reply, moe_layers) == 88,
	      "ipc_hello_reply.moe_layers");
static_assert(offsetof(struct ipc_hello_reply, arena_size) % 8 == 0,
	      "ipc_hello_reply.arena_size aligned");

/* moed's answer to IPC_MSG_STATUS. */
struct ipc_status_reply {
	struct ipc_msg_hdr h;
	char arch[32];          /* NUL-terminated */
	char model[128];        /* the model file's path, cut to fit */
	uint32_t n_layer;
	uint32_t n_expert;
	uint32_t clients;
	uint32_t max_clients;
	/* Bytes of resident experts and of the routers and shared experts
	 * kept with them, and the budget for both (0 without a cache). */
	uint64_t cache_used;
	uint64_t cache_budget;
	uint64_t uptime_ms;
	int32_t pid;
	uint32_t threads;
	uint8_t reserved[64];
};
static_assert(sizeof(struct ipc_status_reply) == 288, "ipc_status_reply");

/* moed's answer to IPC_MSG_STATS: counters since start. */
struct ipc_stats_reply {
	struct ipc_msg_hdr h;
	uint64_t requests;
	uint64_t tokens;
	uint64_t refused;       /* descriptors refused as invalid */
	uint64_t failed;        /* requests completed with an error */
	uint64_t expert_hits;
	uint64_t expert_misses;
	uint64_t bytes_read;
	uint64_t prefetch_issued;
	uint64_t prefetch_used;
	uint64_t evictions;
	uint64_t busy_usec;     /* summed request times */
	uint64_t expert_passes; /* passes over an expert's weights: below
				 * hits + misses when clients' tokens were
				 * batched */
	uint8_t reserved[56];
};
static_assert(sizeof(struct ipc_stats_reply) == 168, "ipc_stats_reply");

/* Request times in moed (from taking a request off its ring to its
 * completion) of requests that ran, as quantiles of a histogram with
 * eight buckets per power of two (each figure within about 6%). */
struct ipc_latency {
	uint64_t count;         /* requests measured */
	uint64_t sum_usec;
	uint32_t p50_usec, p90_usec, p99_usec, max_usec;
};
static_assert(sizeof(struct ipc_latency) == 32, "ipc_latency");

/* Per-layer figures are paged: one MoE layer, and up to
 * IPC_STATS_PAGE_EXPERTS of its experts' loads, per question. A client
 * starts at layer IPC_STATS_FIRST, expert 0, and follows the replies'
 * next_expert and next_layer. Pages are taken at different moments, so
 * figures of different pages may be a few requests apart. */
#define IPC_STATS_PAGE_EXPERTS 96
#define IPC_STATS_FIRST UINT32_MAX /* layer: the first MoE layer */
#define IPC_STATS_NONE UINT32_MAX  /* next_layer: that was the last */

/* moectl to moed. */
struct ipc_stats_layer {
	struct ipc_msg_hdr h;
	uint32_t layer;        /* a MoE layer, or IPC_STATS_FIRST */
	uint32_t first_expert; /* the page's first expert */
	uint8_t reserved[8];
};
static_assert(sizeof(struct ipc_stats_layer) == 32, "ipc_stats_layer");

/* moed's answer. status -EINVAL: layer is not a MoE layer, or
 * first_expert is not below its expert count. */
struct ipc_stats_layer_reply {
	struct ipc_msg_hdr h;
	uint32_t layer;
	uint32_t next_layer;    /* the next MoE layer, or IPC_STATS_NONE */
	uint32_t n_expert;      /* the layer's experts */
	uint32_t first_expert;  /* load[0] is this expert's */
	uint32_t n_load;        /* entries of load filled */
	uint32_t next_expert;   /* first expert of the next page of this
				 * layer, or n_expert when this was the last */
	uint64_t requests;      /* requests that ran on the layer */
	uint64_t tokens;
	uint64_t failed;        /* of those, completed with an error */
	uint64_t expert_hits;   /* expert uses found resident */
	uint64_t expert_misses; /* expert uses that waited for a read */
	uint64_t expert_passes; /* passes over an expert's weights */
	struct ipc_latency latency;
	uint8_t reserved[32];
	uint64_t load[IPC_STATS_PAGE_EXPERTS]; /* tokens routed to each */
};
static_assert(sizeof(struct ipc_stats_layer_reply) == 920,
	      "ipc_stats_layer_reply");

/* moed's answer to IPC_MSG_STATS_LIVE: what is happening now, and the
 * figures that need moed's clock. */
struct ipc_stats_live_reply {
	struct ipc_msg_hdr h;
	uint64_t uptime_ms;
	uint32_t queued;        /* requests in clients' submission rings,
				 * not yet taken by the dispatcher */
	uint32_t reads_pending; /* expert reads queued or in flight */
	uint32_t slots_busy;    /* cache slots in use or being read */
	uint32_t clients;
	uint64_t rounds;        /* dispatcher rounds that ran requests:
				 * requests / rounds is the mean batch */
	struct ipc_latency latency; /* every layer */
	uint64_t bytes_read;    /* as in ipc_stats_reply */
	uint64_t read_usec;     /* time with at least one read in flight */
	uint64_t recent_bytes;  /* read in the last recent_usec */
	uint64_t recent_usec;   /* the window: about 10 s */
	uint64_t prefetch_issued;
	uint64_t prefetch_used;
	uint64_t prefetch_wasted; /* evicted or cancelled before a want */
	uint64_t read_errors;
	char policy[16];        /* eviction policy in force (SIGHUP may
				 * change it); "" without a cache (mmap) */
	uint8_t reserved[48];
};
static_assert(sizeof(struct ipc_stats_live_reply) == 208,
	      "ipc_stats_live_reply");
static_assert(sizeof(struct ipc_stats_layer_reply) <= IPC_MSG_MAX &&
		      sizeof(struct ipc_stats_live_reply) <= IPC_MSG_MAX,
	      "stats replies fit the receive buffer");
static_assert(sizeof(struct ipc_status_reply) <= IPC_MSG_MAX &&
		      sizeof(struct ipc_hello_reply) <= IPC_MSG_MAX,
	      "replies fit the receive buffer");

/* Descriptor flags. */
#define IPC_DESC_ROUTED 0x1u /* the slot's routing area holds route_k
			      * (expert, weight) pairs per token */
#define IPC_DESC_KNOWN_FLAGS IPC_DESC_ROUTED

/* Submission ring entry, client to moed: run one MoE layer over the
 * n_tokens rows of the slot's input into its output. moed copies it out
 * of the ring once and checks every field before use. */
struct ipc_desc {
	uint64_t id;        /* the client's, echoed in the completion */
	uint32_t layer;
	uint32_t n_tokens;  /* 1..max_tokens */
	uint32_t slot;      /* < slot_count */
	uint32_t flags;     /* IPC_DESC_* */
	uint32_t gen;       /* the client's sequence number, echoed: tells
			     * a slot's current use from an earlier one */
	float top_p;        /* dynamic K: 0 off, else in (0, 1] */
	uint32_t min_k;     /* dynamic K bounds; 0: defaults */
	uint32_t max_k;
	uint32_t route_k;   /* IPC_DESC_ROUTED: pairs per token, 1..max_k */
	uint8_t reserved[20];
};
static_assert(sizeof(struct ipc_desc) == 64, "ipc_desc: one line");
static_assert(offsetof(struct ipc_desc, top_p) == 28, "ipc_desc.top_p");
static_assert(offsetof(struct ipc_desc, reserved) == 44, "ipc_desc.reserved");

/* Completion ring entry, moed to client: one per descriptor popped. */
struct ipc_cqe {
	uint64_t id;             /* the descriptor's */
	int32_t status;          /* 0, -errno or -MOE_E* (-MOE_EDESC: the
				  * descriptor was refused) */
	uint32_t slot;           /* the descriptor's */
	uint32_t gen;            /* the descriptor's */
	uint32_t n_tokens;
	uint32_t experts_hit;    /* expert uses found resident */
	uint32_t experts_missed; /* expert uses that waited for a read */
	uint32_t usec;           /* from moed's pop to this completion */
	uint32_t k_used;         /* experts per token, summed over tokens */
	uint8_t reserved[24];
};
static_assert(sizeof(struct ipc_cqe) == 64, "ipc_cqe: one line");
static_assert(offsetof(struct ipc_cqe, usec) == 32, "ipc_cqe.usec");

/* Caller-given routing in a slot: token t's j-th expert is entry
 * t * route_k + j. */
struct ipc_route {
	uint32_t id;
	float w;
};
static_assert(sizeof(struct ipc_route) == 8, "ipc_route");

/* The version to speak with a client that speaks min..max, or
 * -MOE_EVERSION when the ranges do not meet. */
static inline int ipc_version_choose(uint16_t min, uint16_t max)
{
	uint16_t v = max < IPC_PROTO_VERSION_MAX ? max : IPC_PROTO_VERSION_MAX;

	if (min > max || v < min || v < IPC_PROTO_VERSION_MIN)
		return -MOE_EVERSION;
	return v;
}

/* Fill a message header. */
static inline void ipc_msg_init(struct ipc_msg_hdr *h, enum ipc_msg_type t,
				uint32_t size, int32_t status)
{
	memset(h, 0, sizeof(*h));
	h->magic = IPC_PROTO_MAGIC;
	h->type = (uint16_t)t;
	h->size = size;
	h->status = status;
}

/* Check a received message of n bytes: magic, that its size field says
 * n, and n >= min. Returns its type, or -MOE_EPROTO. */
static inline int ipc_msg_check(const void *buf, size_t n, size_t min)
{
	struct ipc_msg_hdr h;

	if (n < sizeof(h) || n < min)
		return -MOE_EPROTO;
	memcpy(&h, buf, sizeof(h));
	if (h.magic != IPC_PROTO_MAGIC || h.size != n)
		return -MOE_EPROTO;
	return h.type;
}

#endif
