/* test_util.h - small helpers shared by the Check suites: one definition of
 * each, so that a fix reaches every suite.
 *
 *   EXPECT(cond, fmt, ...)  ck_assert_msg for loops: fails with a formatted
 *                           message naming the case (Check's own macro
 *                           stringifies the condition, which says little in a
 *                           loop over cases).
 *   tu_urand(&state, lo, hi) a uniform float in [lo, hi) from a 32-bit linear
 *                           congruential generator (Numerical Recipes' a =
 *                           1664525, c = 1013904223) with 24 random bits:
 *                           deterministic test data that needs no library
 *                           RNG, each suite with its own state and seed.
 *   SD_TEST_ASAN            1 in an AddressSanitizer build (suites then run
 *                           fewer or smaller cases and print which).
 */
#ifndef SD_TEST_UTIL_H
#define SD_TEST_UTIL_H

#include <check.h>

#define EXPECT(cond, ...)                                                                  \
    do {                                                                                   \
        if (!(cond)) ck_abort_msg(__VA_ARGS__);                                            \
    } while (0)

static inline float tu_urand(unsigned *state, float lo, float hi)
{
    *state = *state * 1664525u + 1013904223u;
    return lo + (hi - lo) * (float)(*state >> 8) / (float)(1u << 24);
}

#if defined(__SANITIZE_ADDRESS__)
#define SD_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SD_TEST_ASAN 1
#endif
#endif
#ifndef SD_TEST_ASAN
#define SD_TEST_ASAN 0
#endif

#endif
