/* Shared by the fuzz targets: CHECK stops the run on the spot when the
 * code under test breaks a promise, so libFuzzer keeps the input (and
 * test_fuzz_seeds, replaying the seeds, fails), after naming the broken
 * promise so that a failure far away (CI) can be read from its log. */
#ifndef MOE_FUZZ_H
#define MOE_FUZZ_H

#include <stdio.h>

#define CHECK(c)                                                       \
	do {                                                           \
		if (!(c)) {                                            \
			fprintf(stderr, "%s:%d: CHECK(%s) failed\n",   \
				__FILE__, __LINE__, #c);               \
			__builtin_trap();                              \
		}                                                      \
	} while (0)

#endif
