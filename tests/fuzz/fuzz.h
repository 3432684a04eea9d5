/* Shared by the fuzz targets: CHECK stops the run on the spot when the
 * code under test breaks a promise, so libFuzzer keeps the input (and
 * test_fuzz_seeds, replaying the seeds, fails). */
#ifndef MOE_FUZZ_H
#define MOE_FUZZ_H

#define CHECK(c)                         \
	do {                             \
		if (!(c))                \
			__builtin_trap(); \
	} while (0)

#endif
