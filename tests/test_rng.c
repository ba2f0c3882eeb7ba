/* test_rng.c - unit tests for sd/rng.h.
 *
 * Statistical tests use fixed seeds, so they are deterministic, but their
 * tolerances are derived from the sampling distribution of the statistic
 * rather than from observed output: a correct generator passes each with
 * probability > 1 - 1e-6 (5 sigma), a wrong one (bias, wrong variance,
 * correlated streams) fails.
 */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sd/rng.h"
#include "sd/status.h"

#define N_STAT 1000000

/* Five standard errors of the sample mean of N iid draws with variance var:
 * by the CLT the mean is ~N(mu, var / N), so |mean - mu| <= 5 sqrt(var / N)
 * fails with probability 5.7e-7 for a correct generator. */
static double tol5(double var, double n)
{
    return 5.0 * sqrt(var / n);
}

START_TEST(test_same_seed_same_sequence)
{
    sd_rng a, b;
    sd_rng_init(&a, 12345, SD_STREAM_NOISE);
    sd_rng_init(&b, 12345, SD_STREAM_NOISE);
    for (int i = 0; i < 1000; i++) ck_assert_uint_eq(sd_rng_u64(&a), sd_rng_u64(&b));
    for (int i = 0; i < 1001; i++) {
        /* odd count: exercises the cached spare deviate as well */
        float x = sd_rng_normal(&a), y = sd_rng_normal(&b);
        ck_assert(memcmp(&x, &y, sizeof x) == 0);
    }
}
END_TEST

START_TEST(test_different_streams_and_seeds_differ)
{
    /* All nine named streams of one seed, and the same stream of two seeds,
     * must give different first outputs; with 64-bit outputs an accidental
     * equality has probability ~2^-64 per pair. */
    uint64_t first[10];
    for (int s = 1; s <= 9; s++) {
        sd_rng r;
        sd_rng_init(&r, 42, (uint64_t)s);
        first[s] = sd_rng_u64(&r);
        for (int q = 1; q < s; q++) ck_assert_uint_ne(first[s], first[q]);
    }
    sd_rng a, b;
    sd_rng_init(&a, 1, SD_STREAM_DATA);
    sd_rng_init(&b, 2, SD_STREAM_DATA);
    int equal = 0;
    for (int i = 0; i < 100; i++) equal += sd_rng_u64(&a) == sd_rng_u64(&b);
    ck_assert_int_eq(equal, 0);
    /* Seed 0 / stream 0 must still give a live generator (state not all zero). */
    sd_rng z;
    sd_rng_init(&z, 0, 0);
    ck_assert(z.s[0] | z.s[1] | z.s[2] | z.s[3]);
    uint64_t x0 = sd_rng_u64(&z), x1 = sd_rng_u64(&z);
    ck_assert_uint_ne(x0, x1);
}
END_TEST

START_TEST(test_streams_do_not_interfere)
{
    /* Reference sequence of stream B drawn alone ... */
    uint64_t ref[256];
    sd_rng b;
    sd_rng_init(&b, 7, SD_STREAM_TIME);
    for (int i = 0; i < 256; i++) ref[i] = sd_rng_u64(&b);
    /* ... equals stream B drawn while stream A (same seed) is used heavily. */
    sd_rng a;
    sd_rng_init(&a, 7, SD_STREAM_NOISE);
    sd_rng_init(&b, 7, SD_STREAM_TIME);
    float buf[1000];
    for (int i = 0; i < 256; i++) {
        sd_rng_fill_normal(&a, buf, (size_t)(i % 7) * 100 + 1, 0.0f, 1.0f);
        ck_assert_uint_eq(sd_rng_u64(&b), ref[i]);
    }
}
END_TEST

START_TEST(test_state_copy_resumes_exactly)
{
    /* The struct is the full state: a copy taken while a spare normal is
     * cached continues identically (what checkpoint/resume relies on). */
    sd_rng r;
    sd_rng_init(&r, 99, SD_STREAM_SAMPLER);
    (void)sd_rng_normal(&r);
    ck_assert_int_eq(r.has_spare, 1);
    sd_rng copy = r;
    for (int i = 0; i < 100; i++) {
        float x = sd_rng_normal(&r), y = sd_rng_normal(&copy);
        ck_assert(memcmp(&x, &y, sizeof x) == 0);
    }
}
END_TEST

START_TEST(test_split)
{
    sd_rng parent;
    sd_rng_init(&parent, 5, SD_STREAM_DATA);
    sd_rng before = parent;
    sd_rng c0, c0b, c1;
    sd_rng_split(&parent, 0, &c0);
    sd_rng_split(&parent, 0, &c0b);
    sd_rng_split(&parent, 1, &c1);
    /* parent untouched */
    ck_assert(memcmp(parent.s, before.s, sizeof parent.s) == 0);
    /* deterministic, index-dependent, and not the parent's own sequence */
    uint64_t p0 = sd_rng_u64(&parent);
    int same01 = 0;
    for (int i = 0; i < 64; i++) {
        uint64_t x = sd_rng_u64(&c0), y = sd_rng_u64(&c0b), z = sd_rng_u64(&c1);
        ck_assert_uint_eq(x, y);
        same01 += x == z;
        ck_assert_uint_ne(x, p0);
    }
    ck_assert_int_eq(same01, 0);
    ck_assert_int_eq(c0.has_spare, 0);
}
END_TEST

START_TEST(test_uniform_moments)
{
    sd_rng r;
    sd_rng_init(&r, 2024, SD_STREAM_DATA);
    double s1 = 0.0, s2 = 0.0;
    long bad = 0;
    for (int i = 0; i < N_STAT; i++) {
        float u = sd_rng_uniform(&r);
        bad += !(u >= 0.0f && u < 1.0f);
        /* 24-bit grid: u * 2^24 is an integer */
        double k = (double)u * 16777216.0;
        bad += k != floor(k);
        double d = (double)u - 0.5;
        s1 += d;
        s2 += d * d;
    }
    ck_assert_int_eq(bad, 0);
    const double n = N_STAT;
    /* U(0,1): mean 1/2, variance 1/12. The sample mean has variance
     * (1/12)/n. For the variance, (U - 1/2)^2 has mean 1/12 and variance
     * E(U-1/2)^4 - (1/12)^2 = 1/80 - 1/144 = 1/180. (Centring at the known
     * mean avoids the O(1/n) bias of the sample variance.) */
    ck_assert(fabs(s1 / n) <= tol5(1.0 / 12.0, n));
    ck_assert(fabs(s2 / n - 1.0 / 12.0) <= tol5(1.0 / 180.0, n));

    /* Same for the double variant, whose grid is 2^-53. */
    s1 = s2 = 0.0;
    for (int i = 0; i < N_STAT; i++) {
        double u = sd_rng_uniform_double(&r);
        bad += !(u >= 0.0 && u < 1.0);
        s1 += u - 0.5;
        s2 += (u - 0.5) * (u - 0.5);
    }
    ck_assert_int_eq(bad, 0);
    ck_assert(fabs(s1 / n) <= tol5(1.0 / 12.0, n));
    ck_assert(fabs(s2 / n - 1.0 / 12.0) <= tol5(1.0 / 180.0, n));

    /* fill_uniform gives the same values as single draws. */
    sd_rng a, b;
    sd_rng_init(&a, 3, SD_STREAM_DEQUANT);
    b = a;
    float buf[257];
    sd_rng_fill_uniform(&a, buf, 257);
    for (int i = 0; i < 257; i++) ck_assert(buf[i] == sd_rng_uniform(&b));
}
END_TEST

START_TEST(test_normal_moments)
{
    sd_rng r;
    sd_rng_init(&r, 31337, SD_STREAM_NOISE);
    double m1 = 0.0, m2 = 0.0, m4 = 0.0;
    long bad = 0;
    for (int i = 0; i < N_STAT; i++) {
        double x = sd_rng_normal(&r);
        bad += !isfinite(x);
        m1 += x;
        m2 += x * x;
        m4 += x * x * x * x;
    }
    ck_assert_int_eq(bad, 0);
    const double n = N_STAT;
    /* N(0,1) moments E X = 0, E X^2 = 1, E X^4 = 3, E X^8 = 105. Variances of
     * the summands: Var X = 1, Var X^2 = 3 - 1 = 2, Var X^4 = 105 - 9 = 96. */
    ck_assert(fabs(m1 / n) <= tol5(1.0, n));
    ck_assert(fabs(m2 / n - 1.0) <= tol5(2.0, n));
    ck_assert(fabs(m4 / n - 3.0) <= tol5(96.0, n));
}
END_TEST

START_TEST(test_fill_normal_mean_std)
{
    const size_t n = N_STAT;
    float *x = malloc(n * sizeof *x);
    ck_assert_ptr_nonnull(x);
    sd_rng a, b;
    sd_rng_init(&a, 8, SD_STREAM_INIT);
    b = a;
    const float mean = 2.5f, sd = 0.75f;
    sd_rng_fill_normal(&a, x, n, mean, sd);
    double m1 = 0.0, m2 = 0.0;
    long bad = 0;
    for (size_t i = 0; i < n; i++) {
        /* identical to single draws */
        if (i < 1001) bad += x[i] != mean + sd * sd_rng_normal(&b);
        double d = (double)x[i] - mean;
        m1 += d;
        m2 += d * d;
    }
    ck_assert_int_eq(bad, 0);
    /* X = mean + sd Z: Var(X - mean) = sd^2, Var((X - mean)^2) = 2 sd^4. */
    const double s2 = (double)sd * sd;
    ck_assert(fabs(m1 / (double)n) <= tol5(s2, (double)n));
    ck_assert(fabs(m2 / (double)n - s2) <= tol5(2.0 * s2 * s2, (double)n));
    free(x);
}
END_TEST

START_TEST(test_rademacher)
{
    sd_rng r;
    sd_rng_init(&r, 77, SD_STREAM_PROBE);
    /* The number of +1 among n draws is Binomial(n, 1/2): mean n/2, standard
     * deviation sqrt(n)/2; allow 5 of them. */
    const double n = N_STAT, tol = 5.0 * sqrt(n) / 2.0;
    long plus = 0, bad = 0;
    for (int i = 0; i < N_STAT; i++) {
        float v = sd_rng_rademacher(&r);
        bad += !(v == 1.0f || v == -1.0f);
        plus += v == 1.0f;
    }
    ck_assert_int_eq(bad, 0);
    ck_assert(fabs((double)plus - n / 2.0) <= tol);

    /* Bulk fill, with a length that is not a multiple of 64. Also check that
     * neighbouring signs are uncorrelated (the bits of one 64-bit draw): the
     * count of equal neighbours is again Binomial(n - 1, 1/2). */
    const size_t m = N_STAT + 13;
    float *x = malloc(m * sizeof *x);
    ck_assert_ptr_nonnull(x);
    sd_rng_fill_rademacher(&r, x, m);
    plus = 0;
    long same = 0;
    for (size_t i = 0; i < m; i++) {
        bad += !(x[i] == 1.0f || x[i] == -1.0f);
        plus += x[i] == 1.0f;
        if (i > 0) same += x[i] == x[i - 1];
    }
    ck_assert_int_eq(bad, 0);
    ck_assert(fabs((double)plus - (double)m / 2.0) <= 5.0 * sqrt((double)m) / 2.0);
    ck_assert(fabs((double)same - (double)(m - 1) / 2.0) <= 5.0 * sqrt((double)(m - 1)) / 2.0);
    free(x);
}
END_TEST

/* Pearson chi-square statistic of observed counts against equal expectation. */
static double chi2_uniform(const long *count, int bins, long total)
{
    const double e = (double)total / bins;
    double c = 0.0;
    for (int k = 0; k < bins; k++) c += ((double)count[k] - e) * ((double)count[k] - e) / e;
    return c;
}

/* Upper 0.1% points of the chi-square distribution (standard tables, e.g.
 * NIST/SEMATECH e-Handbook 1.3.6.7.4): P(chi2_df > value) = 0.001. */
#define CHI2_999_DF9 27.877
#define CHI2_999_DF23 49.728

START_TEST(test_below_unbiased)
{
    sd_rng r;
    sd_rng_init(&r, 4242, SD_STREAM_DATA);
    ck_assert_uint_eq(sd_rng_below(&r, 0), 0);
    for (int i = 0; i < 100; i++) ck_assert_uint_eq(sd_rng_below(&r, 1), 0);

    /* n = 10: each value has probability 1/10; with 1e6 draws Pearson's
     * statistic is chi-square with 9 degrees of freedom. */
    long count[10] = {0}, bad = 0;
    for (int i = 0; i < N_STAT; i++) {
        uint64_t v = sd_rng_below(&r, 10);
        if (v < 10) count[v]++;
        else bad++;
    }
    ck_assert_int_eq(bad, 0);
    ck_assert(chi2_uniform(count, 10, N_STAT) < CHI2_999_DF9);

    /* n close to (2/3) 2^64: here the naive x % n maps twice as many 64-bit
     * words onto [0, 2^64 - n) ~ [0, n/2) as onto the rest, so a biased
     * reduction puts ~2/3 of the mass in the lower half and the 10-bin test
     * fails by a huge margin; an unbiased one gives chi-square(9). */
    const uint64_t big = UINT64_C(0xAAAAAAAAAAAAAAAB);
    const uint64_t width = big / 10 + 1; /* 10 bins, last one slightly short */
    long cb[10] = {0}, even = 0;
    const int nb = 200000;
    for (int i = 0; i < nb; i++) {
        uint64_t v = sd_rng_below(&r, big);
        if (v < big) cb[v / width]++;
        else bad++;
        even += (v & 1u) == 0;
    }
    ck_assert_int_eq(bad, 0);
    /* Multiply-shift without Lemire's rejection step is biased in a way the
     * bins cannot see: 2^64 / big ~ 1.5, so alternate outputs have 2 and 1
     * preimages and one parity gets ~2/3 of the mass. Unbiased, P(even) =
     * (big + 1) / (2 big) = 1/2 to 1e-19, and the even count is
     * Binomial(nb, 1/2): within 5 sd = 5 sqrt(nb) / 2. */
    ck_assert(fabs((double)even - nb / 2.0) <= 5.0 * sqrt((double)nb) / 2.0);
    /* The bins are not exactly equal (width * 10 exceeds big by < 10), a
     * relative difference < 1e-17: irrelevant at this sample size. */
    ck_assert(chi2_uniform(cb, 10, nb) < CHI2_999_DF9);
}
END_TEST

START_TEST(test_shuffle_permutation)
{
    sd_rng r;
    sd_rng_init(&r, 1, SD_STREAM_DATA);
    enum { N = 1000 };
    uint32_t idx[N];
    for (uint32_t i = 0; i < N; i++) idx[i] = i;
    sd_rng_shuffle_indices(&r, idx, N);
    int seen[N] = {0};
    int fixed = 0;
    for (uint32_t i = 0; i < N; i++) {
        ck_assert_uint_lt(idx[i], N);
        seen[idx[i]]++;
        fixed += idx[i] == i;
    }
    for (int i = 0; i < N; i++) ck_assert_int_eq(seen[i], 1);
    /* Fixed points of a uniform permutation are ~Poisson(1): P(>= 12) < 1e-9.
     * A no-op shuffle would have 1000. */
    ck_assert_int_lt(fixed, 12);

    /* Degenerate sizes are fine. */
    sd_rng_shuffle_indices(&r, idx, 0);
    uint32_t one = 7;
    sd_rng_shuffle_indices(&r, &one, 1);
    ck_assert_uint_eq(one, 7);
}
END_TEST

START_TEST(test_shuffle_uniform)
{
    /* All 24 orders of 4 items equally likely: chi-square with 23 dof. An
     * off-by-one Fisher-Yates (j in [0, i) or [0, n)) fails this badly. */
    sd_rng r;
    sd_rng_init(&r, 2, SD_STREAM_DATA);
    long count[24] = {0};
    const int trials = 240000;
    for (int t = 0; t < trials; t++) {
        uint32_t a[4] = {0, 1, 2, 3};
        sd_rng_shuffle_indices(&r, a, 4);
        /* Lehmer code -> rank in [0, 24) */
        int rank = 0;
        for (int i = 0; i < 4; i++) {
            int smaller = 0;
            for (int j = i + 1; j < 4; j++) smaller += a[j] < a[i];
            rank = rank * (4 - i) + smaller;
        }
        count[rank]++;
    }
    ck_assert(chi2_uniform(count, 24, trials) < CHI2_999_DF23);
}
END_TEST

static Suite *rng_suite(void)
{
    Suite *s = suite_create("rng");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_same_seed_same_sequence);
    tcase_add_test(tc, test_different_streams_and_seeds_differ);
    tcase_add_test(tc, test_streams_do_not_interfere);
    tcase_add_test(tc, test_state_copy_resumes_exactly);
    tcase_add_test(tc, test_split);
    tcase_add_test(tc, test_uniform_moments);
    tcase_add_test(tc, test_normal_moments);
    tcase_add_test(tc, test_fill_normal_mean_std);
    tcase_add_test(tc, test_rademacher);
    tcase_add_test(tc, test_below_unbiased);
    tcase_add_test(tc, test_shuffle_permutation);
    tcase_add_test(tc, test_shuffle_uniform);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(rng_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed != 0;
}
