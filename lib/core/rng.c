/* rng.c - xoshiro256** with splitmix64-derived streams (see sd/rng.h). */
#include "sd/rng.h"

#include <math.h>

/* splitmix64 increment: 2^64 / golden ratio, odd (Steele et al. 2014). */
#define SD_GOLDEN UINT64_C(0x9E3779B97F4A7C15)
/* Domain separator so that a child of sd_rng_split can never be keyed the same
 * way as a top-level (seed, stream) generator by construction. */
#define SD_SPLIT_DOMAIN UINT64_C(0xD1B54A32D192ED03)

/* splitmix64 output function ("mix13" finaliser, Stafford 2011): a bijection
 * of 64-bit words with full avalanche, used both as a hash and as a generator. */
static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

/* Fill the xoshiro state with four consecutive splitmix64 outputs from `key`,
 * as recommended by Blackman & Vigna for seeding. mix64 is a bijection and the
 * four counters are distinct, so at most one word can be zero: the forbidden
 * all-zero state cannot occur. */
static void seed_from_key(sd_rng *r, uint64_t key)
{
    for (int i = 0; i < 4; i++) {
        key += SD_GOLDEN;
        r->s[i] = mix64(key);
    }
    r->has_spare = 0;
    r->spare = 0.0f;
}

void sd_rng_init(sd_rng *r, uint64_t seed, uint64_t stream)
{
    /* key = mix(mix(seed) + stream). For a fixed seed the map stream -> key is
     * injective (sum then bijection), and likewise seed -> key for a fixed
     * stream, so distinct streams of one run never share a state. The outer mix
     * destroys the additive relation between neighbouring stream ids, so their
     * splitmix64 windows do not overlap (which would make stream k+1's state a
     * shifted copy of stream k's). */
    seed_from_key(r, mix64(mix64(seed) + stream));
}

void sd_rng_split(const sd_rng *parent, uint64_t index, sd_rng *child)
{
    /* Hash the whole 256-bit parent state (a chained splitmix hash), then key
     * the child exactly like sd_rng_init keys a stream. The parent's cached
     * normal deviate is deliberately ignored: it is output, not state. */
    uint64_t h = mix64(parent->s[0] ^ SD_SPLIT_DOMAIN);
    h = mix64(h ^ parent->s[1]);
    h = mix64(h ^ parent->s[2]);
    h = mix64(h ^ parent->s[3]);
    seed_from_key(child, mix64(h + index));
}

uint64_t sd_rng_u64(sd_rng *r)
{
    /* xoshiro256** 1.0 reference step (Blackman & Vigna 2021, Fig. 1 with the
     * ** scrambler: rotl(s1 * 5, 7) * 9). */
    uint64_t *s = r->s;
    const uint64_t result = rotl(s[1] * 5, 7) * 9;
    const uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

float sd_rng_uniform(sd_rng *r)
{
    /* Top 24 bits: a float has a 24-bit significand, so k * 2^-24 with
     * k < 2^24 is exact and strictly below 1 (rounding a 53-bit double could
     * produce 1.0f). */
    return (float)(sd_rng_u64(r) >> 40) * 0x1.0p-24f;
}

double sd_rng_uniform_double(sd_rng *r)
{
    return (double)(sd_rng_u64(r) >> 11) * 0x1.0p-53;
}

float sd_rng_normal(sd_rng *r)
{
    if (r->has_spare) {
        r->has_spare = 0;
        return r->spare;
    }
    /* Marsaglia & Bray (1964) polar method: (u, v) uniform in the unit disc,
     * s = u^2 + v^2; then u*f and v*f with f = sqrt(-2 ln s / s) are two
     * independent N(0,1). Rejection rate 1 - pi/4. Done in double so that the
     * float results carry no accumulated rounding from the log/sqrt. */
    double u, v, s;
    do {
        u = 2.0 * sd_rng_uniform_double(r) - 1.0;
        v = 2.0 * sd_rng_uniform_double(r) - 1.0;
        s = u * u + v * v;
    } while (s >= 1.0 || s == 0.0);
    double f = sqrt(-2.0 * log(s) / s);
    r->spare = (float)(v * f);
    r->has_spare = 1;
    return (float)(u * f);
}

float sd_rng_rademacher(sd_rng *r)
{
    /* The top bit; all xoshiro256** bits are of full quality. */
    return (sd_rng_u64(r) >> 63) ? 1.0f : -1.0f;
}

/* High and low 64-bit halves of the 128-bit product a * b. */
static uint64_t mul_64x64(uint64_t a, uint64_t b, uint64_t *lo)
{
#if defined(__SIZEOF_INT128__)
    __extension__ typedef unsigned __int128 u128;
    u128 m = (u128)a * b;
    *lo = (uint64_t)m;
    return (uint64_t)(m >> 64);
#else
    uint64_t a0 = a & 0xFFFFFFFFu, a1 = a >> 32;
    uint64_t b0 = b & 0xFFFFFFFFu, b1 = b >> 32;
    uint64_t p00 = a0 * b0, p01 = a0 * b1, p10 = a1 * b0, p11 = a1 * b1;
    uint64_t mid = (p00 >> 32) + (p01 & 0xFFFFFFFFu) + (p10 & 0xFFFFFFFFu);
    *lo = (mid << 32) | (p00 & 0xFFFFFFFFu);
    return p11 + (p01 >> 32) + (p10 >> 32) + (mid >> 32);
#endif
}

uint64_t sd_rng_below(sd_rng *r, uint64_t n)
{
    if (n == 0) return 0;
    /* Lemire (2019), Algorithm 5: floor(x * n / 2^64) is uniform on [0, n)
     * once the 2^64 mod n values of x whose low product half falls below
     * t = 2^64 mod n are rejected. (0 - n) % n == 2^64 mod n in uint64. The
     * division only happens on the rare path lo < n. */
    uint64_t lo;
    uint64_t hi = mul_64x64(sd_rng_u64(r), n, &lo);
    if (lo < n) {
        const uint64_t t = (0 - n) % n;
        while (lo < t) hi = mul_64x64(sd_rng_u64(r), n, &lo);
    }
    return hi;
}

void sd_rng_fill_uniform(sd_rng *r, float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) x[i] = sd_rng_uniform(r);
}

void sd_rng_fill_normal(sd_rng *r, float *x, size_t n, float mean, float std)
{
    for (size_t i = 0; i < n; i++) x[i] = mean + std * sd_rng_normal(r);
}

void sd_rng_fill_rademacher(sd_rng *r, float *x, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint64_t bits = sd_rng_u64(r);
        /* Most significant bit first, matching sd_rng_rademacher's choice of bit. */
        for (int b = 63; b >= 0 && i < n; b--, i++)
            x[i] = ((bits >> b) & 1u) ? 1.0f : -1.0f;
    }
}

void sd_rng_shuffle_indices(sd_rng *r, uint32_t *idx, size_t n)
{
    /* Durstenfeld's Fisher-Yates: position i receives a uniform pick among the
     * i + 1 not yet placed items; with an unbiased sd_rng_below every
     * permutation has probability exactly 1/n!. */
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)sd_rng_below(r, (uint64_t)i);
        uint32_t tmp = idx[i - 1];
        idx[i - 1] = idx[j];
        idx[j] = tmp;
    }
}
