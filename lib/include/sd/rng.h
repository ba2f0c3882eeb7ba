/* rng.h - seeded, reproducible random numbers with independent streams.
 *
 * Generator: xoshiro256** 1.0 (Blackman & Vigna, "Scrambled linear
 * pseudorandom number generators", ACM TOMS 2021). 256 bits of state, period
 * 2^256 - 1, passes BigCrush/PractRand, and every output bit is usable, which
 * the 24-bit float and 53-bit double conversions below rely on.
 *
 * Streams. Every consumer of randomness (weight init, data order, diffusion
 * noise, time sampling, ...) owns its own sd_rng initialised from the run's
 * single seed and a fixed stream id:
 *
 *     sd_rng noise; sd_rng_init(&noise, seed, SD_STREAM_NOISE);
 *
 * The state is derived from (seed, stream) through splitmix64 (Steele, Lea &
 * Flood, "Fast splittable pseudorandom number generators", OOPSLA 2014), so
 * the streams are separate generators: drawing from one never shifts another,
 * and adding e.g. dropout to a model does not change the data order.
 *
 * sd_rng_split derives a deterministic child generator from a parent and an
 * index without advancing the parent. Parallel code splits one child per work
 * chunk (never per thread), so results do not depend on the thread count.
 *
 * The struct is plain data (including the cached second normal deviate of the
 * polar method), so copying or serialising it captures the stream exactly.
 * None of these functions allocates or fails; a NULL generator is a caller bug.
 */
#ifndef SD_RNG_H
#define SD_RNG_H

#include <stddef.h>
#include <stdint.h>

typedef struct sd_rng {
    uint64_t s[4];  /* xoshiro256** state, never all zero */
    int has_spare;  /* 1 if `spare` holds an unused normal deviate */
    float spare;
} sd_rng;

/* Fixed stream ids. Values are part of the reproducibility contract: changing
 * one changes every run that uses it. New purposes get new numbers. */
enum {
    SD_STREAM_INIT = 1,    /* parameter initialisation */
    SD_STREAM_DATA = 2,    /* data-set order / mini-batch sampling */
    SD_STREAM_NOISE = 3,   /* forward-process noise eps ~ N(0, I) in the loss */
    SD_STREAM_TIME = 4,    /* diffusion time / noise-level sampling */
    SD_STREAM_DROPOUT = 5, /* dropout masks */
    SD_STREAM_SAMPLER = 6, /* reverse-time sampler noise */
    SD_STREAM_PROBE = 7,   /* Hutchinson / Skilling probe vectors */
    SD_STREAM_DEQUANT = 8, /* uniform dequantisation noise */
    SD_STREAM_FLIP = 9     /* random horizontal flips */
};

/* Initialise from (seed, stream). Any values are allowed, including 0. */
void sd_rng_init(sd_rng *r, uint64_t seed, uint64_t stream);

/* Deterministic child generator number `index` of `parent`. The parent is not
 * modified; the same (parent state, index) always gives the same child, and
 * children with different indices are independent streams. */
void sd_rng_split(const sd_rng *parent, uint64_t index, sd_rng *child);

/* 64 uniformly random bits. */
uint64_t sd_rng_u64(sd_rng *r);

/* Uniform in [0, 1) on the grid k * 2^-24 (all floats of that grid are exact,
 * 1.0f is never returned). */
float sd_rng_uniform(sd_rng *r);

/* Uniform in [0, 1) on the grid k * 2^-53. */
double sd_rng_uniform_double(sd_rng *r);

/* Standard normal N(0, 1) (Marsaglia polar method, computed in double). */
float sd_rng_normal(sd_rng *r);

/* +1.0f or -1.0f with probability 1/2 each (Rademacher). */
float sd_rng_rademacher(sd_rng *r);

/* Uniform integer in [0, n), exactly unbiased (Lemire 2019, "Fast random
 * integer generation in an interval", ACM TOMACS). n == 0 returns 0. */
uint64_t sd_rng_below(sd_rng *r, uint64_t n);

/* Bulk fills. fill_uniform and fill_normal give exactly the same values as n
 * calls of sd_rng_uniform / mean + std * sd_rng_normal. fill_rademacher takes
 * 64 signs from each 64-bit draw, so it is ~64x cheaper than n single calls
 * but yields a different (equally valid) sequence. */
void sd_rng_fill_uniform(sd_rng *r, float *x, size_t n);
void sd_rng_fill_normal(sd_rng *r, float *x, size_t n, float mean, float std);
void sd_rng_fill_rademacher(sd_rng *r, float *x, size_t n);

/* Uniformly random permutation of idx[0..n) in place (Fisher-Yates / Durstenfeld).
 * The caller initialises idx (e.g. idx[i] = i); every one of the n! orders of
 * the given contents is equally likely. */
void sd_rng_shuffle_indices(sd_rng *r, uint32_t *idx, size_t n);

#endif
