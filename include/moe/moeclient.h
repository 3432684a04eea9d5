/* libmoeclient: the API that applications link to reach moed.
 *
 * Every call returns 0 (or a count) on success and a negative number on
 * failure: either -errno, or one of moed's own codes below, negated.
 * moe_strerror() names any of them. The library never prints. */
#ifndef MOE_MOECLIENT_H
#define MOE_MOECLIENT_H

#include <moe/moe_version.h>

#ifdef __cplusplus
extern "C" {
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
const char *moe_strerror(int err);

#ifdef __cplusplus
}
#endif
#endif
