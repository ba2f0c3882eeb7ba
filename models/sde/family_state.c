/* family_state.c - the state noise family: a state-dependent G(x, t), the
 * image x = h(y) = asinh(y) of a ve diffusion y (sd/sde.h has the Ito
 * formulas). Elementwise, with div[G G^T] by reverse-mode autodiff. Not
 * linear: no Gaussian kernel in x (A, Sigma, Tweedie, modes and the dense
 * kernel are refused), DSM draws through its own perturb. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "sd/ops.h"
#include "sd/rng.h"
#include "sd/sde_family.h"
#include "sd/tensor.h"

double sd_sde_state_h(double y) { return asinh(y); }
double sd_sde_state_hinv(double x) { return sinh(x); }

static sd_status state_invalid(const char *op)
{
    return sd_error(SD_ERR_INVALID, "sde state: %s does not exist for a state-dependent family "
                                    "(its kernel is not Gaussian in x)", op);
}

static sd_status need_x(const float *x, const char *op)
{
    if (!x) return sd_error(SD_ERR_INVALID, "sde state (%s): needs the state x", op);
    return SD_OK;
}

static void state_defaults(sd_sde *s)
{
    s->sigma_min = 0.01;
    s->sigma_max = 50.0;
}

static void state_string(const sd_sde *s, char *buf, size_t len)
{
    snprintf(buf, len, "%s:sigma_min=%.9g,sigma_max=%.9g", sd_sde_name(s), s->sigma_min,
             s->sigma_max);
}

/* y-space: the ve family with the same schedule. */
static sd_status state_latent(const sd_sde *s, sd_sde *out)
{
    sd_sde ve;
    memset(&ve, 0, sizeof ve);
    ve.family = &sd_sde_family_ve;
    ve.sigma_min = s->sigma_min;
    ve.sigma_max = s->sigma_max;
    *out = ve;
    return SD_OK;
}

/* ---- the kernel operators do not exist ---------------------------------------------- */

static sd_status state_mean(const sd_sde *s, double t, const float *x0, float *out, size_t n,
                            size_t D)
{
    (void)s, (void)t, (void)x0, (void)out, (void)n, (void)D;
    return state_invalid("the kernel mean A(t)");
}

static sd_status state_std(const sd_sde *s, double t, const float *z, float *out, size_t n,
                           size_t D)
{
    (void)s, (void)t, (void)z, (void)out, (void)n, (void)D;
    return state_invalid("the kernel's Sigma^1/2");
}

static sd_status state_inv_cov(const sd_sde *s, double t, const float *v, float *out, size_t n,
                               size_t D)
{
    (void)s, (void)t, (void)v, (void)out, (void)n, (void)D;
    return state_invalid("the kernel's Sigma^-1");
}

static sd_status state_tweedie(const sd_sde *s, double t, const float *x, const float *score,
                               float *out, size_t n, size_t D)
{
    (void)s, (void)t, (void)x, (void)score, (void)out, (void)n, (void)D;
    return state_invalid("Tweedie denoising");
}

static sd_status state_modes(const sd_sde *s, double t, size_t D, double *a, double *var,
                             double *f, double *gg)
{
    (void)s, (void)t, (void)D, (void)a, (void)var, (void)f, (void)gg;
    return state_invalid("a mode decomposition");
}

static sd_status state_to_modes(const sd_sde *s, const float *v, float *out, size_t n, size_t D)
{
    (void)s, (void)v, (void)out, (void)n, (void)D;
    return state_invalid("a mode decomposition");
}

static sd_status state_kernel_dense(const sd_sde *s, double t, size_t D, double *A,
                                    double *Sigma)
{
    (void)s, (void)t, (void)D, (void)A, (void)Sigma;
    return state_invalid("a dense Gaussian kernel");
}

/* ---- drift and diffusion ------------------------------------------------------------- */

/* f = 1/2 h''(y) g2 = -1/2 g2 tanh x sech^2 x (Ito's lemma) */
static sd_status state_drift(const sd_sde *s, double t, const float *x, float *out, size_t n,
                             size_t D)
{
    double g2 = sd_sde_g2(s, t);
    for (size_t i = 0; i < n * D; i++) {
        double c = cosh((double)x[i]);
        out[i] = (float)(-0.5 * g2 * tanh((double)x[i]) / (c * c));
    }
    return SD_OK;
}

static sd_status state_G(const sd_sde *s, double t, const float *x, const float *z, float *out,
                         size_t n, size_t D)
{
    sd_status st = need_x(x, "G");
    if (st != SD_OK) return st;
    double g = sqrt(sd_sde_g2(s, t)); /* G = diag(g h'(y)), h'(y) = sech x */
    for (size_t i = 0; i < n * D; i++) out[i] = (float)(g / cosh((double)x[i]) * z[i]);
    return SD_OK;
}

static sd_status state_GGT(const sd_sde *s, double t, const float *x, const float *v, float *out,
                           size_t n, size_t D)
{
    sd_status st = need_x(x, "GGT");
    if (st != SD_OK) return st;
    double g2 = sd_sde_g2(s, t);
    for (size_t i = 0; i < n * D; i++) {
        double c = cosh((double)x[i]);
        out[i] = (float)(g2 / (c * c) * v[i]);
    }
    return SD_OK;
}

/* div[G G^T] by reverse-mode autodiff: the diagonal m(x) = g2 sech^2 x of
 * G G^T is built from graph ops as 4 g2 / (e^x + e^-x)^2 (every op's
 * backward is then accurate to float relative precision: the forms
 * 1 - tanh^2 or sigmoid(2x) sigmoid(-2x) lose it to cancellation for |x| of
 * a few units, where sech^2 x << 1), and for a diagonal matrix field
 * (div M)_i = d m_i / dx_i, the i-th component of the vector-Jacobian product
 * with cotangent e_i (one backward pass per coordinate; row p depends on x_p
 * only, so every row is done in the same pass). Valid for |x| < 44 (e^2x
 * finite in float), i.e. |y| < 6e18. */
static sd_status state_div_ggt(const sd_sde *s, double t, const float *x, float *out, size_t n,
                               size_t D)
{
    sd_status st = need_x(x, "div GGT");
    if (st != SD_OK) return st;
    if (n == 0) return SD_OK;
    if (n > (size_t)INT32_MAX / (D ? D : 1))
        return sd_error(SD_ERR_INVALID, "sde state (div GGT): batch too large");
    sd_graph *g = sd_graph_new();
    if (!g) return sd_error(SD_ERR_NOMEM, "sde state (div GGT): cannot create a graph");
    sd_tensor *xt = sd_tensor_new(g, 2, (int[]){(int)n, (int)D});
    sd_tensor *k = sd_tensor_new(g, 1, (int[]){1});
    float *cot = sd_graph_alloc_floats(g, n * D);
    if (!xt || !k || !cot) {
        st = sd_graph_status(g) != SD_OK ? sd_graph_status(g) : SD_ERR_NOMEM;
        goto done;
    }
    memcpy(xt->data, x, n * D * sizeof(float));
    sd_tensor_requires_grad(xt);
    k->data[0] = (float)(4.0 * sd_sde_g2(s, t));
    sd_tensor *c = sd_add(g, sd_exp(g, xt), sd_exp(g, sd_scale(g, xt, -1.0f))); /* 2 cosh x */
    sd_tensor *m = sd_div(g, k, sd_square(g, c));
    if (!m) {
        st = sd_graph_status(g) != SD_OK ? sd_graph_status(g) : SD_ERR_INTERNAL;
        goto done;
    }
    for (size_t i = 0; i < D && st == SD_OK; i++) {
        memset(cot, 0, n * D * sizeof(float));
        for (size_t p = 0; p < n; p++) cot[p * D + i] = 1.0f;
        st = sd_graph_backward(g, m, cot);
        for (size_t p = 0; p < n && st == SD_OK; p++) out[p * D + i] = xt->grad[p * D + i];
    }
done:
    sd_graph_free(g);
    return st;
}

static double state_drift_divergence(const sd_sde *s, double t, size_t D)
{
    (void)s, (void)t, (void)D;
    return NAN;
}

static sd_status state_flow_divergence(const sd_sde *s, double t, const float *x, double *out,
                                       size_t n, size_t D)
{
    sd_status st = need_x(x, "flow divergence");
    if (st != SD_OK) return st;
    /* f - 1/2 div M = -1/2 g2 tanh sech^2 + g2 tanh sech^2 = 1/2 g2 tanh x sech^2 x
     * per coordinate; d/dx (tanh sech^2) = sech^4 - 2 tanh^2 sech^2. */
    double g2 = sd_sde_g2(s, t);
    for (size_t p = 0; p < n; p++) {
        double acc = 0.0;
        for (size_t i = 0; i < D; i++) {
            double xi = x[p * D + i], c = cosh(xi), th = tanh(xi), se2 = 1.0 / (c * c);
            acc += se2 * se2 - 2.0 * th * th * se2;
        }
        out[p] = 0.5 * g2 * acc;
    }
    return SD_OK;
}

/* y0 = sinh x0, y = y0 + sigma z, x_t = asinh y; log p(x | x0) =
 * log N(sinh x; y0, sigma^2) + log cosh x, so the target is
 * -(y - y0)/sigma^2 cosh x_t + tanh x_t = -z cosh(x_t)/sigma + tanh x_t. */
static sd_status state_perturb(const sd_sde *s, double t, const float *x0, const float *z,
                               float *xt, float *target, float *metric, size_t n, size_t D)
{
    size_t total = n * D;
    double sig = sd_sde_sigma(s, t);
    for (size_t i = 0; i < total; i++) {
        double y = sinh((double)x0[i]) + sig * z[i], xi = asinh(y);
        xt[i] = (float)xi;
        if (target) target[i] = (float)(-(double)z[i] * cosh(xi) / sig + tanh(xi));
        if (metric) metric[i] = (float)(1.0 / cosh(xi));
    }
    return SD_OK;
}

/* asinh of N(0, sigma_max^2 I) */
static sd_status state_prior_sample(const sd_sde *s, sd_rng *rng, float *x, size_t n, size_t D)
{
    sd_rng_fill_normal(rng, x, n * D, 0.0f, (float)s->sigma_max);
    for (size_t i = 0; i < n * D; i++) x[i] = (float)asinh((double)x[i]);
    return SD_OK;
}

/* y = sinh x ~ N(0, smax^2 I); |dy/dx| = prod cosh x_i */
static double state_prior_logp(const sd_sde *s, const float *x, size_t D)
{
    static const double SD_LOG_2PI = 1.8378770664093453;
    double std = s->sigma_max, ss = 0.0, lj = 0.0;
    for (size_t i = 0; i < D; i++) {
        double y = sinh((double)x[i]);
        ss += y * y;
        lj += log(cosh((double)x[i]));
    }
    return -0.5 * ss / (std * std) - (double)D * (log(std) + 0.5 * SD_LOG_2PI) + lj;
}

const sd_sde_family sd_sde_family_state = {
    .name = "state", .keys = "sigma_min, sigma_max",
    .flags = SD_SDE_STATE_DEPENDENT,
    .defaults = state_defaults, .set_key = sd_sde_ve_key, .finish = sd_sde_ve_finish,
    .to_string = state_string, .latent = state_latent,
    .sigma = sd_sde_ve_sigma, .g2 = sd_sde_ve_g2,
    .apply_mean = state_mean, .apply_std = state_std, .apply_inv_cov = state_inv_cov,
    .drift = state_drift, .apply_G = state_G, .apply_GGT = state_GGT,
    .div_GGT = state_div_ggt, .drift_divergence = state_drift_divergence,
    .flow_divergence = state_flow_divergence, .tweedie = state_tweedie,
    .perturb = state_perturb, .modes = state_modes, .to_modes = state_to_modes,
    .prior_sample = state_prior_sample, .prior_logp = state_prior_logp,
    .kernel_dense = state_kernel_dense,
};
