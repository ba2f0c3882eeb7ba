/* test_optim.c - unit tests for sd/optim.h.
 *
 * Every optimizer is run for three steps on a 3-element parameter vector with
 * a known gradient sequence; the expected parameters are computed here in
 * double from the update formulas written out by hand (torch.optim pseudo-
 * code), independently of the library's float kernels. Tolerance: 1e-6
 * relative (float carries ~6e-8 relative per operation and the few steps
 * accumulate well under 1e-6 on parameters of order 1).
 */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "sd/optim.h"
#include "sd/status.h"

#define NP 3
#define NSTEP 3
#define RTOL 1e-6

/* Parameters start at P0 and see gradient G[t] at step t + 1. The gradient
 * magnitudes 0.5, 1, 2 appear in every element, in rotated order, so signs
 * and magnitudes change from step to step. */
static const double P0[NP] = {1.5, -2.0, 3.0};
static const double G[NSTEP][NP] = {
    {0.5, -1.0, 2.0},
    {-1.0, 2.0, 0.5},
    {2.0, 0.5, -1.0},
};

static void assert_close(double got, double want, const char *what, int step, int i)
{
    double err = fabs(got - want), tol = RTOL * fabs(want);
    ck_assert_msg(err <= tol, "%s step %d elem %d: got %.9g want %.9g (err %.3g > %.3g)", what,
                  step, i, got, want, err, tol);
}

/* Run `cfg` for NSTEP steps with learning rate lr, comparing p after each step
 * with want[step][i]. */
static void run_and_compare(const sd_opt_config *cfg, float lr, double want[NSTEP][NP],
                            const char *what)
{
    sd_optimizer *o = sd_optimizer_new(cfg, NP);
    ck_assert_msg(o != NULL, "%s: %s", what, sd_error_message());
    float p[NP], g[NP];
    for (int i = 0; i < NP; i++) p[i] = (float)P0[i];
    for (int t = 0; t < NSTEP; t++) {
        for (int i = 0; i < NP; i++) g[i] = (float)G[t][i];
        ck_assert_int_eq(sd_optimizer_step(o, p, g, lr), SD_OK);
        ck_assert_int_eq(sd_optimizer_step_count(o), t + 1);
        for (int i = 0; i < NP; i++) assert_close(p[i], want[t][i], what, t + 1, i);
    }
    sd_optimizer_free(o);
}

START_TEST(test_defaults)
{
    sd_opt_config c = sd_opt_defaults(SD_OPT_ADAM);
    ck_assert(c.kind == SD_OPT_ADAM);
    ck_assert(c.lr == 1e-3f && c.beta1 == 0.9f && c.beta2 == 0.999f && c.eps == 1e-8f);
    ck_assert(c.weight_decay == 0.0f);
    c = sd_opt_defaults(SD_OPT_ADAMW);
    ck_assert(c.lr == 1e-3f && c.weight_decay == 0.01f && c.eps == 1e-8f);
    c = sd_opt_defaults(SD_OPT_RMSPROP);
    ck_assert(c.lr == 1e-2f && c.rmsprop_alpha == 0.99f && c.eps == 1e-8f);
    c = sd_opt_defaults(SD_OPT_ADAGRAD);
    ck_assert(c.lr == 1e-2f && c.eps == 1e-10f);
    ck_assert(sd_opt_defaults(SD_OPT_MOMENTUM).momentum == 0.9f);
    ck_assert(sd_opt_defaults(SD_OPT_NESTEROV).momentum == 0.9f);
    ck_assert(sd_opt_defaults(SD_OPT_SGD).momentum == 0.0f);
}
END_TEST

START_TEST(test_sgd)
{
    /* p_t = p_{t-1} - lr g_t  =>  p_t = p_0 - lr sum_{s<=t} g_s. */
    const double lr = 0.1;
    double want[NSTEP][NP];
    for (int i = 0; i < NP; i++) {
        double sum = 0.0;
        for (int t = 0; t < NSTEP; t++) {
            sum += G[t][i];
            want[t][i] = P0[i] - lr * sum;
        }
    }
    sd_opt_config c = sd_opt_defaults(SD_OPT_SGD);
    run_and_compare(&c, (float)lr, want, "sgd");
}
END_TEST

START_TEST(test_sgd_weight_decay)
{
    /* Coupled L2 (PyTorch weight_decay for SGD): p_t = p - lr (g + wd p). */
    const double lr = 0.1, wd = 0.25;
    double want[NSTEP][NP];
    for (int i = 0; i < NP; i++) {
        double p = P0[i];
        for (int t = 0; t < NSTEP; t++) {
            p = p - lr * (G[t][i] + wd * p);
            want[t][i] = p;
        }
    }
    sd_opt_config c = sd_opt_defaults(SD_OPT_SGD);
    c.weight_decay = (float)wd;
    run_and_compare(&c, (float)lr, want, "sgd+wd");
}
END_TEST

START_TEST(test_momentum)
{
    /* Heavy ball, dampening 0, mu = 0.9 (exact float value used below):
     *   b1 = g1, b2 = mu g1 + g2, b3 = mu^2 g1 + mu g2 + g3,
     *   p_t = p_{t-1} - lr b_t. */
    const double lr = 0.05;
    sd_opt_config c = sd_opt_defaults(SD_OPT_MOMENTUM);
    const double mu = c.momentum;
    double want[NSTEP][NP];
    for (int i = 0; i < NP; i++) {
        double b1 = G[0][i];
        double b2 = mu * G[0][i] + G[1][i];
        double b3 = mu * mu * G[0][i] + mu * G[1][i] + G[2][i];
        want[0][i] = P0[i] - lr * b1;
        want[1][i] = want[0][i] - lr * b2;
        want[2][i] = want[1][i] - lr * b3;
    }
    run_and_compare(&c, (float)lr, want, "momentum");
}
END_TEST

START_TEST(test_nesterov)
{
    /* Nesterov as in torch.optim.SGD(nesterov=True): same buffer b_t as heavy
     * ball, but the step direction is g_t + mu b_t. */
    const double lr = 0.05;
    sd_opt_config c = sd_opt_defaults(SD_OPT_NESTEROV);
    const double mu = c.momentum;
    double want[NSTEP][NP];
    for (int i = 0; i < NP; i++) {
        double b1 = G[0][i];
        double b2 = mu * G[0][i] + G[1][i];
        double b3 = mu * mu * G[0][i] + mu * G[1][i] + G[2][i];
        want[0][i] = P0[i] - lr * (G[0][i] + mu * b1);
        want[1][i] = want[0][i] - lr * (G[1][i] + mu * b2);
        want[2][i] = want[1][i] - lr * (G[2][i] + mu * b3);
    }
    run_and_compare(&c, (float)lr, want, "nesterov");
}
END_TEST

START_TEST(test_adagrad)
{
    /* s_t = g_1^2 + ... + g_t^2,  p_t = p_{t-1} - lr g_t / (sqrt(s_t) + eps).
     * Step 1 is p0 - lr sign(g1) |g1| / (|g1| + eps) ~ p0 - lr sign(g1). */
    const double lr = 0.1;
    sd_opt_config c = sd_opt_defaults(SD_OPT_ADAGRAD);
    const double eps = c.eps;
    double want[NSTEP][NP];
    for (int i = 0; i < NP; i++) {
        double s1 = G[0][i] * G[0][i];
        double s2 = s1 + G[1][i] * G[1][i];
        double s3 = s2 + G[2][i] * G[2][i];
        want[0][i] = P0[i] - lr * G[0][i] / (sqrt(s1) + eps);
        want[1][i] = want[0][i] - lr * G[1][i] / (sqrt(s2) + eps);
        want[2][i] = want[1][i] - lr * G[2][i] / (sqrt(s3) + eps);
    }
    run_and_compare(&c, (float)lr, want, "adagrad");
}
END_TEST

START_TEST(test_rmsprop)
{
    /* v_t = a v_{t-1} + (1 - a) g_t^2 from v_0 = 0, i.e.
     *   v1 = (1-a) g1^2, v2 = a (1-a) g1^2 + (1-a) g2^2,
     *   v3 = a^2 (1-a) g1^2 + a (1-a) g2^2 + (1-a) g3^2,
     * p_t = p_{t-1} - lr g_t / (sqrt(v_t) + eps). alpha = 0.9 so the three
     * steps differ visibly from Adagrad. */
    const double lr = 0.01;
    sd_opt_config c = sd_opt_defaults(SD_OPT_RMSPROP);
    c.rmsprop_alpha = 0.9f;
    const double a = c.rmsprop_alpha, eps = c.eps;
    double want[NSTEP][NP];
    for (int i = 0; i < NP; i++) {
        double q1 = G[0][i] * G[0][i], q2 = G[1][i] * G[1][i], q3 = G[2][i] * G[2][i];
        double v1 = (1 - a) * q1;
        double v2 = a * (1 - a) * q1 + (1 - a) * q2;
        double v3 = a * a * (1 - a) * q1 + a * (1 - a) * q2 + (1 - a) * q3;
        want[0][i] = P0[i] - lr * G[0][i] / (sqrt(v1) + eps);
        want[1][i] = want[0][i] - lr * G[1][i] / (sqrt(v2) + eps);
        want[2][i] = want[1][i] - lr * G[2][i] / (sqrt(v3) + eps);
    }
    run_and_compare(&c, (float)lr, want, "rmsprop");
}
END_TEST

/* Adam's first three steps in closed form (Kingma & Ba 2015, Alg. 1):
 *   m_t = (1-b1) sum_{s<=t} b1^{t-s} g_s,  v_t = (1-b2) sum b2^{t-s} g_s^2,
 *   p_t = p_{t-1} - lr (m_t / (1-b1^t)) / (sqrt(v_t / (1-b2^t)) + eps).
 * For AdamW, p_{t-1} is first multiplied by (1 - lr wd). */
static void adam_reference(double b1, double b2, double eps, double lr, double wd_decoupled,
                           double want[NSTEP][NP])
{
    for (int i = 0; i < NP; i++) {
        const double g1 = G[0][i], g2 = G[1][i], g3 = G[2][i];
        const double m[NSTEP] = {
            (1 - b1) * g1,
            (1 - b1) * (b1 * g1 + g2),
            (1 - b1) * (b1 * b1 * g1 + b1 * g2 + g3),
        };
        const double v[NSTEP] = {
            (1 - b2) * g1 * g1,
            (1 - b2) * (b2 * g1 * g1 + g2 * g2),
            (1 - b2) * (b2 * b2 * g1 * g1 + b2 * g2 * g2 + g3 * g3),
        };
        double p = P0[i];
        for (int t = 0; t < NSTEP; t++) {
            const double mhat = m[t] / (1 - pow(b1, t + 1));
            const double vhat = v[t] / (1 - pow(b2, t + 1));
            p *= 1.0 - lr * wd_decoupled;
            p -= lr * mhat / (sqrt(vhat) + eps);
            want[t][i] = p;
        }
    }
}

START_TEST(test_adam)
{
    const double lr = 0.05;
    sd_opt_config c = sd_opt_defaults(SD_OPT_ADAM);
    double want[NSTEP][NP];
    adam_reference(c.beta1, c.beta2, c.eps, lr, 0.0, want);
    /* Sanity of the reference itself: bias correction makes step 1 exactly
     * lr g1 / (|g1| + eps), i.e. ~lr sign(g1), whatever the betas. */
    for (int i = 0; i < NP; i++)
        ck_assert(fabs(want[0][i] - (P0[i] - lr * G[0][i] / (fabs(G[0][i]) + (double)c.eps))) <
                  1e-12);
    run_and_compare(&c, (float)lr, want, "adam");
}
END_TEST

START_TEST(test_adam_coupled_weight_decay)
{
    /* Adam with weight_decay: L2 added to the gradient, g + wd p_{t-1}. */
    const double lr = 0.05, wd = 0.1;
    sd_opt_config c = sd_opt_defaults(SD_OPT_ADAM);
    c.weight_decay = (float)wd;
    c.beta1 = 0.8f;
    c.beta2 = 0.95f;
    const double b1 = c.beta1, b2 = c.beta2, eps = c.eps;
    double want[NSTEP][NP];
    for (int i = 0; i < NP; i++) {
        double p = P0[i], m = 0.0, v = 0.0;
        for (int t = 0; t < NSTEP; t++) {
            double g = G[t][i] + wd * p;
            m = b1 * m + (1 - b1) * g;
            v = b2 * v + (1 - b2) * g * g;
            p -= lr * (m / (1 - pow(b1, t + 1))) / (sqrt(v / (1 - pow(b2, t + 1))) + eps);
            want[t][i] = p;
        }
    }
    run_and_compare(&c, (float)lr, want, "adam+l2");
}
END_TEST

START_TEST(test_adamw)
{
    const double lr = 0.05;
    sd_opt_config c = sd_opt_defaults(SD_OPT_ADAMW);
    c.weight_decay = 0.5f; /* large, so decoupled vs coupled is clearly visible */
    double want[NSTEP][NP];
    adam_reference(c.beta1, c.beta2, c.eps, lr, c.weight_decay, want);
    run_and_compare(&c, (float)lr, want, "adamw");
}
END_TEST

START_TEST(test_state_and_checkpoint)
{
    /* n_state / state accessors, and: save state + step count after 2 steps,
     * restore into a fresh optimizer, and the third step matches bit for bit. */
    static const struct { sd_opt_kind k; size_t ns; } kinds[] = {
        {SD_OPT_SGD, 0},     {SD_OPT_MOMENTUM, 1}, {SD_OPT_NESTEROV, 1}, {SD_OPT_ADAGRAD, 1},
        {SD_OPT_RMSPROP, 1}, {SD_OPT_ADAM, 2},     {SD_OPT_ADAMW, 2},
    };
    for (size_t q = 0; q < sizeof kinds / sizeof kinds[0]; q++) {
        sd_opt_config c = sd_opt_defaults(kinds[q].k);
        sd_optimizer *a = sd_optimizer_new(&c, NP), *b = sd_optimizer_new(&c, NP);
        ck_assert_ptr_nonnull(a);
        ck_assert_ptr_nonnull(b);
        ck_assert_uint_eq(sd_optimizer_n_state(a), kinds[q].ns);
        ck_assert_uint_eq(sd_optimizer_size(a), NP);
        ck_assert(sd_optimizer_config(a).kind == kinds[q].k);
        ck_assert_ptr_null(sd_optimizer_state(a, (int)kinds[q].ns));
        ck_assert_ptr_null(sd_optimizer_state(a, -1));
        float pa[NP], pb[NP], g[NP];
        for (int i = 0; i < NP; i++) pa[i] = (float)P0[i];
        for (int t = 0; t < 2; t++) {
            for (int i = 0; i < NP; i++) g[i] = (float)G[t][i];
            ck_assert_int_eq(sd_optimizer_step(a, pa, g, 0.1f), SD_OK);
        }
        memcpy(pb, pa, sizeof pa);
        for (size_t k = 0; k < kinds[q].ns; k++) {
            float *sa = sd_optimizer_state(a, (int)k), *sb = sd_optimizer_state(b, (int)k);
            ck_assert_ptr_nonnull(sa);
            memcpy(sb, sa, NP * sizeof(float));
        }
        ck_assert_int_eq(sd_optimizer_set_step_count(b, sd_optimizer_step_count(a)), SD_OK);
        for (int i = 0; i < NP; i++) g[i] = (float)G[2][i];
        ck_assert_int_eq(sd_optimizer_step(a, pa, g, 0.1f), SD_OK);
        ck_assert_int_eq(sd_optimizer_step(b, pb, g, 0.1f), SD_OK);
        ck_assert(memcmp(pa, pb, sizeof pa) == 0);
        ck_assert_int_eq(sd_optimizer_step_count(b), 3);
        sd_optimizer_free(a);
        sd_optimizer_free(b);
    }
}
END_TEST

START_TEST(test_invalid_arguments)
{
    sd_opt_config c = sd_opt_defaults(SD_OPT_ADAM);
    c.beta1 = 1.0f;
    ck_assert_ptr_null(sd_optimizer_new(&c, 4));
    ck_assert(strlen(sd_error_message()) > 0);
    c = sd_opt_defaults(SD_OPT_ADAGRAD);
    c.eps = -1.0f;
    ck_assert_ptr_null(sd_optimizer_new(&c, 4));
    c = sd_opt_defaults(SD_OPT_NESTEROV);
    c.momentum = 0.0f;
    ck_assert_ptr_null(sd_optimizer_new(&c, 4));
    c = sd_opt_defaults(SD_OPT_RMSPROP);
    c.rmsprop_alpha = 1.5f;
    ck_assert_ptr_null(sd_optimizer_new(&c, 4));
    c = sd_opt_defaults(SD_OPT_SGD);
    c.kind = (sd_opt_kind)99;
    ck_assert_ptr_null(sd_optimizer_new(&c, 4));
    ck_assert_ptr_null(sd_optimizer_new(NULL, 4));

    c = sd_opt_defaults(SD_OPT_SGD);
    sd_optimizer *o = sd_optimizer_new(&c, 4);
    ck_assert_ptr_nonnull(o);
    float p[4] = {0}, g[4] = {0};
    ck_assert_int_eq(sd_optimizer_step(o, p, g, -1.0f), SD_ERR_INVALID);
    ck_assert_int_eq(sd_optimizer_step(o, p, g, NAN), SD_ERR_INVALID);
    ck_assert_int_eq(sd_optimizer_step(o, NULL, g, 0.1f), SD_ERR_INVALID);
    ck_assert_int_eq(sd_optimizer_step(NULL, p, g, 0.1f), SD_ERR_INVALID);
    ck_assert_int_eq(sd_optimizer_step_count(o), 0); /* failed steps do not count */
    ck_assert_int_eq(sd_optimizer_set_step_count(o, -3), SD_ERR_INVALID);
    sd_optimizer_free(o);
    sd_optimizer_free(NULL);
}
END_TEST

START_TEST(test_optimizer_no_alloc_in_step)
{
    sd_opt_config c = sd_opt_defaults(SD_OPT_ADAMW);
    sd_optimizer *o = sd_optimizer_new(&c, NP);
    ck_assert_ptr_nonnull(o);
    float p[NP] = {1, 2, 3}, g[NP] = {1, 1, 1};
    uint64_t before = sd_alloc_count();
    for (int t = 0; t < 10; t++) ck_assert_int_eq(sd_optimizer_step(o, p, g, 1e-3f), SD_OK);
    (void)sd_clip_grad_norm(g, NP, 0.5f);
    ck_assert_uint_eq(sd_alloc_count(), before);
    sd_optimizer_free(o);
}
END_TEST

#ifdef _OPENMP
START_TEST(test_thread_count_independent)
{
    /* Every kind over a buffer above the OpenMP threshold: 1 and 4 threads
     * give bit-identical parameters and state after a few steps. */
    const size_t n = 100000;
    float *pa = malloc(n * sizeof *pa), *pb = malloc(n * sizeof *pb), *g = malloc(n * sizeof *g);
    ck_assert(pa && pb && g);
    const int saved = omp_get_max_threads();
    for (int kind = SD_OPT_SGD; kind <= SD_OPT_ADAMW; kind++) {
        sd_opt_config c = sd_opt_defaults((sd_opt_kind)kind);
        c.weight_decay = 0.01f;
        sd_optimizer *a = sd_optimizer_new(&c, n), *b = sd_optimizer_new(&c, n);
        ck_assert(a && b);
        for (size_t i = 0; i < n; i++) pa[i] = pb[i] = (float)sin((double)i);
        for (int t = 0; t < 3; t++) {
            for (size_t i = 0; i < n; i++) g[i] = (float)cos((double)i * (t + 1));
            omp_set_num_threads(1);
            ck_assert_int_eq(sd_optimizer_step(a, pa, g, 0.01f), SD_OK);
            omp_set_num_threads(4);
            ck_assert_int_eq(sd_optimizer_step(b, pb, g, 0.01f), SD_OK);
        }
        ck_assert(memcmp(pa, pb, n * sizeof *pa) == 0);
        for (size_t k = 0; k < sd_optimizer_n_state(a); k++)
            ck_assert(memcmp(sd_optimizer_state(a, (int)k), sd_optimizer_state(b, (int)k),
                             n * sizeof(float)) == 0);
        sd_optimizer_free(a);
        sd_optimizer_free(b);
    }
    omp_set_num_threads(saved);
    free(pa);
    free(pb);
    free(g);
}
END_TEST
#endif

START_TEST(test_clip_grad_norm)
{
    /* g = (3, 4): ||g|| = 5. */
    float g[2] = {3.0f, 4.0f};
    float norm = sd_clip_grad_norm(g, 2, 10.0f);
    assert_close(norm, 5.0, "clip norm (below)", 0, 0);
    ck_assert(g[0] == 3.0f && g[1] == 4.0f); /* below threshold: untouched */

    norm = sd_clip_grad_norm(g, 2, 1.0f);
    assert_close(norm, 5.0, "clip norm (above)", 0, 0);
    /* scaled by max_norm / (norm + 1e-6) */
    const double coef = 1.0 / (5.0 + 1e-6);
    assert_close(g[0], 3.0 * coef, "clipped g", 0, 0);
    assert_close(g[1], 4.0 * coef, "clipped g", 0, 1);
    assert_close(sqrt((double)g[0] * g[0] + (double)g[1] * g[1]), 1.0, "clipped norm", 0, 0);

    /* Large n (crosses the OpenMP threshold and the 256-block partition), with
     * elements g_i = (i mod 7) - 3, so the norm is known in closed form:
     * per 7 consecutive elements the squares sum to 9+4+1+0+1+4+9 = 28. */
    const size_t n = 7 * 100003;
    float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y);
    ck_assert_ptr_nonnull(x);
    ck_assert_ptr_nonnull(y);
    for (size_t i = 0; i < n; i++) x[i] = (float)((int)(i % 7) - 3);
    memcpy(y, x, n * sizeof *x);
    const double want = sqrt(28.0 * 100003.0);
    float n1 = sd_clip_grad_norm(x, n, 1e30f);
    assert_close(n1, want, "clip norm (large)", 0, 0);
#ifdef _OPENMP
    /* Bit-identical norm and clipped gradients for 1 and 4 threads. */
    int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    float a = sd_clip_grad_norm(x, n, 1.0f);
    omp_set_num_threads(4);
    float b = sd_clip_grad_norm(y, n, 1.0f);
    omp_set_num_threads(saved);
    ck_assert(memcmp(&a, &b, sizeof a) == 0);
    ck_assert(memcmp(x, y, n * sizeof *x) == 0);
#endif
    free(x);
    free(y);

    /* Non-finite gradients: norm reported, g left alone. */
    float h[3] = {1.0f, INFINITY, 2.0f};
    norm = sd_clip_grad_norm(h, 3, 1.0f);
    ck_assert(isinf(norm));
    ck_assert(h[0] == 1.0f && h[2] == 2.0f);
    ck_assert(sd_clip_grad_norm(h, 0, 1.0f) == 0.0f);
}
END_TEST

START_TEST(test_lr_schedule)
{
    sd_lr_schedule s = {.base_lr = 2e-4f, .warmup_steps = 100, .total_steps = 1100,
                        .cosine = 0, .min_lr = 1e-5f};
    const double base = s.base_lr, lo = s.min_lr;
    /* warm-up: base (step + 1) / warmup */
    assert_close(sd_lr_at(&s, 0), base * 1.0 / 100.0, "warmup", 0, 0);
    assert_close(sd_lr_at(&s, 49), base * 50.0 / 100.0, "warmup", 49, 0);
    assert_close(sd_lr_at(&s, 99), base, "warmup", 99, 0);
    /* constant afterwards */
    assert_close(sd_lr_at(&s, 100), base, "const", 100, 0);
    assert_close(sd_lr_at(&s, 5000), base, "const", 5000, 0);
    /* cosine: base at the end of warm-up, (base + min)/2 half-way through the
     * remaining 1000 steps, base/min-weighted (1 + cos(pi/4))/2 at a quarter,
     * min at total and beyond. */
    s.cosine = 1;
    assert_close(sd_lr_at(&s, 50), base * 51.0 / 100.0, "cos warmup", 50, 0);
    assert_close(sd_lr_at(&s, 100), base, "cos start", 100, 0);
    assert_close(sd_lr_at(&s, 600), 0.5 * (base + lo), "cos mid", 600, 0);
    assert_close(sd_lr_at(&s, 350), lo + (base - lo) * 0.5 * (1.0 + sqrt(0.5)), "cos quarter",
                 350, 0);
    assert_close(sd_lr_at(&s, 1100), lo, "cos end", 1100, 0);
    assert_close(sd_lr_at(&s, 100000), lo, "cos after", 100000, 0);
    /* no warm-up */
    s.warmup_steps = 0;
    assert_close(sd_lr_at(&s, 0), base, "no warmup", 0, 0);
    assert_close(sd_lr_at(&s, 550), 0.5 * (base + lo), "no warmup mid", 550, 0);
    assert_close(sd_lr_at(&s, -5), base, "negative step", -5, 0);
}
END_TEST

START_TEST(test_ema)
{
    /* Constant target p: e_k - p = decay^k (e_0 - p), i.e.
     * e_k = decay^k e_0 + (1 - decay^k) p. */
    const float decay = 0.9f;
    const double d = decay;
    float ema[NP], p[NP];
    for (int i = 0; i < NP; i++) {
        ema[i] = (float)P0[i];
        p[i] = (float)(P0[i] + 10.0 * (i + 1));
    }
    for (int k = 1; k <= 5; k++) {
        sd_ema_update(ema, p, NP, decay);
        for (int i = 0; i < NP; i++) {
            double dk = pow(d, k);
            assert_close(ema[i], dk * P0[i] + (1.0 - dk) * (double)p[i], "ema", k, i);
        }
    }
    /* decay warm-up min(decay, (1 + t) / (10 + t)) */
    assert_close(sd_ema_decay_warmup(0.999f, 0), 0.1, "ema warmup", 0, 0);
    assert_close(sd_ema_decay_warmup(0.999f, 10), 11.0 / 20.0, "ema warmup", 10, 0);
    assert_close(sd_ema_decay_warmup(0.999f, 100000), (double)0.999f, "ema warmup", 100000, 0);
    assert_close(sd_ema_decay_warmup(0.5f, 10), 0.5, "ema warmup", 10, 0);
}
END_TEST

static Suite *optim_suite(void)
{
    Suite *s = suite_create("optim");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_defaults);
    tcase_add_test(tc, test_sgd);
    tcase_add_test(tc, test_sgd_weight_decay);
    tcase_add_test(tc, test_momentum);
    tcase_add_test(tc, test_nesterov);
    tcase_add_test(tc, test_adagrad);
    tcase_add_test(tc, test_rmsprop);
    tcase_add_test(tc, test_adam);
    tcase_add_test(tc, test_adam_coupled_weight_decay);
    tcase_add_test(tc, test_adamw);
    tcase_add_test(tc, test_state_and_checkpoint);
    tcase_add_test(tc, test_invalid_arguments);
    tcase_add_test(tc, test_optimizer_no_alloc_in_step);
#ifdef _OPENMP
    tcase_add_test(tc, test_thread_count_independent);
#endif
    tcase_add_test(tc, test_clip_grad_norm);
    tcase_add_test(tc, test_lr_schedule);
    tcase_add_test(tc, test_ema);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(optim_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed != 0;
}
