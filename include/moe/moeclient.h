/* libmoeclient: the API that applications link to reach moed.
 *
 * An inference engine runs attention, norms and sampling itself and, for
 * every MoE layer, hands moed the hidden states of its tokens: rows of
 * n_embd floats in, the layer's output rows (the weighted sum of the
 * chosen experts, shared experts included) back, through memory shared
 * with moed. One moe_client is one connection with its own memory.
 *
 * Errors: every call returns 0 (or a count) on success and a negative
 * number on failure: either -errno, or one of moed's own codes below,
 * negated. moe_strerror() names any of them. The library never prints,
 * never raises SIGPIPE, and never waits without a bound: a moed that dies
 * is noticed within about 100 ms (-MOE_EDEAD), a moed that hangs within
 * the client's timeout (-ETIMEDOUT). After -MOE_EDEAD the client is
 * useless: moe_close() it and moe_connect() again once moed is back.
 *
 * Threads: a moe_client is not locked. Use each one from one thread at a
 * time (calls on one client must not overlap; which thread makes them
 * does not matter); give each thread its own client for parallel work.
 * Different clients are independent. moe_strerror() is thread-safe. A
 * child after fork() must not use its parent's clients (moe_close() in
 * the child is safe: it only releases the child's copies).
 *
 * Lifetime of a request:
 *   moe_forward():  copy in, run, wait, copy out: one call.
 *   moe_submit(), then moe_poll() / moe_wait(): several in flight, the
 *                   library copies input in at submit and output out when
 *                   the completion is collected.
 *   moe_slot_acquire(), write slot.in, moe_submit_slot(), collect, read
 *                   slot.out, submit the slot again or moe_slot_release():
 *                   no copies at all.
 * At most max_inflight requests (see moe_model_info) are in flight or
 * waiting to be collected at once, slots held with moe_slot_acquire()
 * counted. */
#ifndef MOE_MOECLIENT_H
#define MOE_MOECLIENT_H

#include <stdint.h>

#include <moe/moe_version.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define MOE_API __attribute__((visibility("default")))
#else
#define MOE_API
#endif

/* moed's own error codes, in a range far above any errno value.
 * X(name, number, description): the one list behind the enum and
 * moe_strerror(). Numbers are part of the ABI: append, never renumber. */
#define MOE_ERRORS(X)                                                        \
	X(MOE_EFORMAT, 2000, "malformed model file")                         \
	X(MOE_EUNSUPPORTED, 2001, "model uses an unsupported feature")       \
	X(MOE_EMISSING, 2002, "model lacks a required tensor or key")        \
	X(MOE_EARCH, 2003, "unknown model architecture")                     \
	X(MOE_ETYPE, 2004, "tensor type not supported for compute")          \
	X(MOE_EINVAL_INPUT, 2005, "invalid input data")                      \
	X(MOE_EEXPERT_IO, 2006, "expert read failed")                        \
	X(MOE_EPROTO, 2007, "protocol error")                                \
	X(MOE_EVERSION, 2008, "protocol version mismatch")                   \
	X(MOE_EDESC, 2009, "invalid request descriptor")                     \
	X(MOE_EDEAD, 2010, "moed has gone away")                             \
	X(MOE_ENOSPACE, 2011, "cache budget too small")

enum moe_error {
#define MOE_ERR_ENUM(name, num, desc) name = num,
	MOE_ERRORS(MOE_ERR_ENUM)
#undef MOE_ERR_ENUM
};

/* Describe an error code returned by any moe_ call: err may be negative
 * (as returned) or positive. Never returns NULL. */
MOE_API const char *moe_strerror(int err);

/* Where moe_connect() looks when it is given no path and $MOED_SOCKET is
 * unset or empty. */
#define MOE_DEFAULT_SOCKET "/run/moed/moed.sock"
#define MOE_SOCKET_ENV "MOED_SOCKET"

/* How long a wait may last when the caller does not say: 30 s. */
#define MOE_DEFAULT_TIMEOUT_MS 30000u

/* A connection to moed. Opaque. */
typedef struct moe_client moe_client;

/* What the client asks for. Zero every field you do not set (e.g.
 * `struct moe_connect_opts o = { .max_tokens = 64 };`): zero means the
 * default, and reserved bytes must stay zero. */
struct moe_connect_opts {
	uint32_t max_tokens;   /* most tokens in one request; 0: as many as
				* moed allows. moed may grant fewer. */
	uint32_t max_inflight; /* requests in flight at once; 0: moed's
				* limit. moed may grant fewer. */
	uint32_t max_route_k;  /* widest caller-given routing (experts per
				* token) this client will send; 0: it never
				* routes itself. */
	uint32_t timeout_ms;   /* bound on the handshake, on moe_forward()
				* and on moe_wait() with timeout_ms < 0;
				* 0: MOE_DEFAULT_TIMEOUT_MS */
	const char *name;      /* the program, for moed's log (cut to 31
				* bytes); NULL: the process's name */
	uint32_t reserved[10];
};

/* Open a connection to moed and map the memory it hands over.
 *
 * out   receives the new client.
 * path  moed's control socket; NULL: $MOED_SOCKET if set and not empty,
 *       else MOE_DEFAULT_SOCKET.
 * opts  limits and options; NULL: all defaults.
 *
 * Returns 0 and sets *out, or (with *out untouched):
 *   -EINVAL        out is NULL, path is empty, a reserved field of opts
 *                  is not zero, or moed found the limits asked for out of
 *                  range;
 *   -ENAMETOOLONG  path does not fit a Unix socket address;
 *   -ENOENT, -ECONNREFUSED  no moed listens at path;
 *   -EACCES        the socket's permissions do not let us in;
 *   -EPERM         moed refused: our uid and gid are not on its allow list;
 *   -EUSERS        moed refused: it serves --max-clients clients already;
 *   -MOE_EVERSION  moed speaks no protocol version this library speaks;
 *   -ETIMEDOUT     moed did not take the connection (its backlog stayed
 *                  full) or did not answer within opts->timeout_ms;
 *   -MOE_EDEAD     moed hung up during the handshake;
 *   -MOE_EPROTO    moed's answer or its shared memory is malformed;
 *   -ENOMEM        out of memory (here or in moed);
 *   -errno         from socket(), connect(), mmap() and the like. */
MOE_API int moe_connect(moe_client **out, const char *path,
			const struct moe_connect_opts *opts);

/* Close the connection and release everything: requests still in flight
 * are abandoned (moed finishes or drops them), pointers into slots become
 * invalid. c may be NULL. Never fails, never blocks. */
MOE_API void moe_close(moe_client *c);

/* The model moed serves and the limits it granted this client. */
struct moe_model_info {
	char arch[32];            /* "llama", "qwen3moe", ...; NUL-terminated */
	uint32_t n_layer;         /* layers, MoE or not */
	uint32_t n_embd;          /* floats per token row */
	uint32_t n_expert;        /* routed experts (largest over layers) */
	uint32_t n_used;          /* experts per token the model asks for */
	uint32_t max_k;           /* largest k a request may ask for */
	uint32_t first_moe_layer; /* first and last MoE layers */
	uint32_t last_moe_layer;
	uint32_t n_moe_layers;
	uint32_t max_tokens;      /* granted: tokens per request */
	uint32_t max_inflight;    /* granted: requests (and slots) at once */
	uint32_t max_route_k;     /* granted: pairs per token when routing */
	uint32_t proto_version;   /* protocol version in use */
	uint32_t reserved[12];
};

/* Fill *info. Works on a client that saw -MOE_EDEAD too (the facts are
 * kept from the handshake). Returns 0, or -EINVAL if c or info is NULL. */
MOE_API int moe_model_info(const moe_client *c, struct moe_model_info *info);

/* Is layer one that moed runs (a MoE layer of the model)? Returns 1 if
 * so, 0 if not (a dense layer, or past the last layer), -EINVAL if c is
 * NULL. */
MOE_API int moe_layer_is_moe(const moe_client *c, uint32_t layer);

/* Per-request options. Zero every field you do not set; all zero means
 * the model's own routing. */
struct moe_req_opts {
	/* Dynamic K: keep the fewest top experts whose probabilities sum
	 * to top_p, at least min_k and at most max_k of them. top_p 0: off
	 * (the model's n_used); else in (0, 1]. min_k, max_k 0: defaults;
	 * each at most max_k of moe_model_info. */
	float top_p;
	uint32_t min_k;
	uint32_t max_k;
	/* Caller-given routing instead of moed's router: route_k experts
	 * per token (1..granted max_route_k), token t's j-th expert being
	 * route_ids[t * route_k + j] with weight route_w[t * route_k + j].
	 * Both arrays hold n_tokens * route_k entries and are copied at
	 * submit. 0: moed routes. */
	uint32_t route_k;
	const uint32_t *route_ids;
	const float *route_w;
	uint32_t reserved[8];
};

/* What became of a request: filled by moe_forward(), moe_poll() and
 * moe_wait(). */
struct moe_result {
	uint64_t id;             /* the request's, as moe_submit*() gave it */
	int32_t status;          /* 0, or why the request failed:
				  * -EINVAL (moed: not a MoE layer, bad
				  * routing), -MOE_EINVAL_INPUT (an input
				  * value is not finite), -MOE_EEXPERT_IO (an
				  * expert could not be read), -MOE_EDESC,
				  * -ENOMEM */
	uint32_t slot;           /* the slot it ran in */
	uint32_t n_tokens;
	uint32_t experts_hit;    /* expert uses found resident in moed */
	uint32_t experts_missed; /* expert uses that waited for a read */
	uint32_t k_used;         /* experts per token, summed over tokens */
	uint32_t usec;           /* in moed, from taking it to answering */
	uint32_t wall_usec;      /* here, from submit to collection */
	uint32_t reserved[6];
};

/* Errors every request call below may return, besides its own:
 *   -EINVAL      c is NULL, a required pointer is NULL, n_tokens is 0,
 *                layer is not a MoE layer (see moe_layer_is_moe()), or
 *                opts is out of range (top_p outside [0, 1], min_k above
 *                max_k, a k above max_k, a routing id at or above
 *                n_expert, a routing weight not finite, route arrays
 *                NULL, a reserved field not zero);
 *   -E2BIG       n_tokens above the granted max_tokens, or route_k above
 *                the granted max_route_k;
 *   -MOE_EDEAD   moed has gone away (its socket hung up);
 *   -MOE_EPROTO  moed broke the protocol (a corrupt ring or completion);
 *                the client is unusable from then on, as after EDEAD.
 * Nothing is submitted when one of these is returned. */

/* Run one layer over n_tokens rows: copy x into a slot, submit, wait for
 * the answer (at most the client's timeout_ms), copy the output to y.
 *
 * layer     a MoE layer of the model.
 * x         n_tokens * n_embd floats, row-major.
 * n_tokens  1..max_tokens.
 * y         n_tokens * n_embd floats for the output; may be x.
 * opts      NULL: the model's routing.
 * res       NULL, or filled with the request's figures.
 *
 * Returns the request's status: 0 with y written, or any status listed
 * under struct moe_result (y then undefined); or, with y untouched:
 *   -EBUSY       every slot is taken (by moe_submit(), moe_slot_acquire()
 *                or completions not yet collected);
 *   -ETIMEDOUT   no answer within timeout_ms: the request is abandoned
 *                (its slot comes back when moed answers it, which
 *                nothing collects, and y is never written);
 *   or the common errors above. */
MOE_API int moe_forward(moe_client *c, uint32_t layer, const float *x,
			uint32_t n_tokens, float *y,
			const struct moe_req_opts *opts,
			struct moe_result *res);

/* Start a request and return at once: x is copied into a free slot
 * before the call returns; the output is copied to y when the completion
 * is collected by moe_poll() or moe_wait(). y must stay valid until then.
 *
 * x, n_tokens, layer, opts  as in moe_forward().
 * y   n_tokens * n_embd floats for the output, or NULL: not copied out.
 * id  receives the request's id (never 0), for moe_wait(); may be NULL.
 *
 * Returns 0; -EBUSY (every slot is taken: collect a completion first);
 * or the common errors above. */
MOE_API int moe_submit(moe_client *c, uint32_t layer, const float *x,
		       uint32_t n_tokens, float *y,
		       const struct moe_req_opts *opts, uint64_t *id);

/* Collect finished requests without waiting, in the order they finished:
 * fills up to max results (copying outputs to the y given at submit).
 *
 * Returns how many were filled (0: none finished yet); -EINVAL (c or res
 * NULL, max 0); -MOE_EDEAD or -MOE_EPROTO once every request that did
 * finish has been collected. */
MOE_API int moe_poll(moe_client *c, struct moe_result *res, unsigned max);

/* Pass as id to moe_wait() to wait for whichever request finishes first. */
#define MOE_WAIT_ANY 0

/* Wait for request id (or MOE_WAIT_ANY) to finish and collect it into
 * *res (copying its output to the y given at submit). Completions of
 * other requests that arrive meanwhile are kept for later calls.
 *
 * timeout_ms  < 0: the client's timeout_ms; 0: do not block; > 0: at
 *             most this long.
 *
 * Returns 0 with *res filled (look at res->status: the request itself
 * may have failed); or, with nothing collected:
 *   -EINVAL      c or res is NULL;
 *   -ENOENT      no such request in flight (never submitted, already
 *                collected or abandoned; with MOE_WAIT_ANY: none at all);
 *   -ETIMEDOUT   not finished in time; it stays in flight: wait again;
 *   -MOE_EDEAD, -MOE_EPROTO  as above;
 *   -errno       futex(2) failed (not expected: the bell is in our own
 *                mapping). moe_forward() passes this on too. */
MOE_API int moe_wait(moe_client *c, uint64_t id, struct moe_result *res,
		     int timeout_ms);

/* Direct access to a slot's memory, shared with moed: write the input
 * rows into in, submit, read the output rows from out. Valid until
 * moe_slot_release() or moe_close(). Do not touch in while a request of
 * this slot is in flight, nor trust out before its completion. */
struct moe_slot {
	float *in;           /* max_tokens * n_embd floats, row-major */
	float *out;          /* max_tokens * n_embd floats */
	uint32_t index;      /* the slot's number, for the calls below */
	uint32_t max_tokens;
	uint32_t n_embd;
	uint32_t reserved[5];
};

/* Take a free slot for zero-copy use; it stays the caller's (through any
 * number of requests) until moe_slot_release().
 * Returns 0 with *slot filled; -EBUSY (every slot is taken); -EINVAL (c
 * or slot NULL); -MOE_EDEAD, -MOE_EPROTO. */
MOE_API int moe_slot_acquire(moe_client *c, struct moe_slot *slot);

/* Run layer over the first n_tokens rows of a held slot's input; the
 * output appears in the slot's out once the request is collected by
 * moe_poll() or moe_wait(). Then the slot is the caller's again.
 * Returns 0 with *id set (id may be NULL); -EBUSY (a request of this
 * slot is in flight or not yet collected); -EINVAL (slot not held by
 * the caller); or the common errors above. */
MOE_API int moe_submit_slot(moe_client *c, uint32_t slot, uint32_t layer,
			    uint32_t n_tokens,
			    const struct moe_req_opts *opts, uint64_t *id);

/* Give a held slot back. Returns 0; -EBUSY (a request of this slot is in
 * flight or not yet collected: collect it first); -EINVAL (c NULL, slot
 * not held by the caller). */
MOE_API int moe_slot_release(moe_client *c, uint32_t slot);

#ifdef __cplusplus
}
#endif
#endif
