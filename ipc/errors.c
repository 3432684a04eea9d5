/* moe_strerror(): one table for moed's own codes, strerror() for errno.
 * Shared by the daemon and libmoeclient. */
#include <string.h>

#include <moe/moeclient.h>

const char *moe_strerror(int err)
{
	if (err < 0)
		err = -err;
	switch (err) {
#define MOE_ERR_CASE(name, num, desc) \
	case num:                     \
		return desc;
		MOE_ERRORS(MOE_ERR_CASE)
#undef MOE_ERR_CASE
	}
	if (err == 0)
		return "success";
	return strerror(err);
}
