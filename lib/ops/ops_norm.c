/* ops_norm.c - normalisation layers: group, instance, layer and batch norm, and
 * the fused SiLU(GroupNorm(x)) of the U-Net's residual blocks.
 *
 * Dimension vocabulary: N batch, C channels, S = product of the trailing
 * (spatial) dims (1 for a 2-D input), G groups, Cg = C / G channels per group,
 * D last-dim features (layer norm), M elements per normalisation set.
 *
 * Every op normalises each "set" of M elements with its own statistics
 * (PyTorch conventions: biased variance, eps inside the square root):
 *     mu = mean(x),  var = mean((x - mu)^2)
 *     rstd = 1 / sqrt(var + eps),  x_hat = (x - mu) * rstd
 *     y = x_hat * gamma[c] + beta[c]            (c: channel of the element)
 * The sets are
 *     group norm     (n, g): the Cg*S contiguous elements x[n, g*Cg:(g+1)*Cg, ...]
 *     instance norm  group norm with G = C
 *     layer norm     each row of the last dim: group norm of the [numel/D, D]
 *                    view with G = 1 (so "channel" = feature d, S = 1)
 *     batch norm     channel c: the N*S elements x[:, c, ...] (strided)
 * Statistics are two-pass (mean, then the sum of squared deviations) with
 * double accumulators, so inputs with |mean| >> std keep their precision; the
 * one-pass E[x^2] - E[x]^2 cancels catastrophically there.
 *
 * Backward, over one set (Ioffe & Szegedy 2015, sec. 3; Wu & He 2018):
 *     dbeta[c]  = sum dy,   dgamma[c] = sum dy * x_hat   (all elements of c)
 *     dy_hat    = dy * gamma[c]
 *     dx        = rstd * (dy_hat - mean(dy_hat) - x_hat * mean(dy_hat * x_hat))
 * (mu and rstd depend on x; the two mean terms are their contributions.)
 * Batch norm in eval mode uses fixed running statistics, so there the map is
 * affine and dx = dy * gamma[c] * rstd[c].
 *
 * Applying the statistics: the mean is kept as an unevaluated float sum
 * hi + lo, and x - mu is evaluated as (x - hi) - lo. When x is near mu the
 * first difference is exact (Sterbenz), so x - mu is correct to float
 * rounding even when |mu| >> std, where a plain float mu would lose
 * ulp(mu) / std of relative accuracy.
 *
 * Saved for backward (only when recorded): the per-set statistics (hi, lo,
 * rstd), exactly the values the forward used; x_hat and the fused op's
 * pre-activation are recomputed from them rather than stored (memory-light).
 *
 * Threading: OpenMP over sets (forward; dx with the per-(n, c) partials of
 * dgamma, dbeta) and over blocks of channels (batch statistics, and dgamma,
 * dbeta when S is small) when the tensor has >= 32K elements. Every output
 * element and every reduction is computed by one thread in a fixed order,
 * so results do not depend on the thread count.
 */
#include "ops/ops_internal.h"
#include "sd/ops.h"
#include "core/graph_internal.h"

#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

#define SD_NORM_PAR_MIN ((size_t)32768)
/* Channels reduced together per block: with S == 1 ([N,C] and layer norm)
 * the elements of one channel are C floats apart, so 16 neighbouring
 * channels share each cache line instead of re-reading it 16 times. */
#define SD_NORM_CBLK 16
/* Smallest spatial size S for which dgamma/dbeta come from per-(n, c)
 * partials of the dx pass rather than a separate pass (gn_backward). */
#define SD_NORM_PART_MIN_S 16

/* ---- shared helpers ----------------------------------------------------- */

static bool affine_ok(sd_graph *g, const char *op, const sd_tensor *x, const sd_tensor *gamma,
                      const sd_tensor *beta, size_t C, float eps)
{
    char bx[64], bp[64];
    if (gamma && gamma->numel != C) {
        sd_graph_fail(g, SD_ERR_INVALID, "%s: gamma has shape %s, expected %zu elements for x %s",
                    op, sd_shape_str(gamma, bp, sizeof bp), C, sd_shape_str(x, bx, sizeof bx));
        return false;
    }
    if (beta && beta->numel != C) {
        sd_graph_fail(g, SD_ERR_INVALID, "%s: beta has shape %s, expected %zu elements for x %s",
                    op, sd_shape_str(beta, bp, sizeof bp), C, sd_shape_str(x, bx, sizeof bx));
        return false;
    }
    if (!(eps >= 0.0f) || !isfinite(eps)) {
        sd_graph_fail(g, SD_ERR_INVALID, "%s: eps must be finite and >= 0, got %g", op, (double)eps);
        return false;
    }
    return true;
}

/* Statistics of one set: mean = hi + lo (see the header), 1 / sqrt(var + eps). */
typedef struct norm_stat {
    float hi, lo, rstd;
} norm_stat;

/* x - mean, accurate to float rounding for x near the mean. */
static inline float centre(float x, norm_stat st) { return (x - st.hi) - st.lo; }

static norm_stat stat_of(double mean, double var, float eps)
{
    norm_stat st;
    st.hi = (float)mean;
    st.lo = (float)(mean - (double)st.hi);
    st.rstd = (float)(1.0 / sqrt(var + (double)eps));
    return st;
}

/* Two-pass statistics of xs[0..M): the sum, then the squares of x - mean.
 * Each pass adds float partial sums in vector lanes over blocks of at most
 * 1024 elements (64 terms per lane at 16 lanes: relative error ~4e-6 at
 * worst) and the blocks in double. A double accumulator per element halved
 * the vector width and made this 3% of a unet-28 step. The lane order is
 * fixed at compile time, so the result is deterministic. */
SD_VECTOR_CLONES
static norm_stat set_stats(const float *xs, size_t M, float eps)
{
    /* Sums of x - x[0]: a large common offset (a set of values near 1000)
     * would otherwise cost the float partial sums their low bits. */
    const float pivot = M ? xs[0] : 0.0f;
    double s = 0.0;
    for (size_t b0 = 0; b0 < M; b0 += 1024) {
        size_t b1 = M - b0 < 1024 ? M : b0 + 1024;
        float f = 0.0f;
#pragma omp simd reduction(+ : f)
        for (size_t i = b0; i < b1; i++) f += xs[i] - pivot;
        s += f;
    }
    s += (double)pivot * (double)M;
    norm_stat st = stat_of(s / (double)M, 0.0, eps);
    double q = 0.0;
    for (size_t b0 = 0; b0 < M; b0 += 1024) {
        size_t b1 = M - b0 < 1024 ? M : b0 + 1024;
        float f = 0.0f;
#pragma omp simd reduction(+ : f)
        for (size_t i = b0; i < b1; i++) {
            float d = centre(xs[i], st);
            f += d * d;
        }
        q += f;
    }
    return stat_of(s / (double)M, q / (double)M, eps);
}

/* Pre-activation z = centre(x) * (rstd * gamma) + beta. Forward and both
 * backward passes evaluate it with this one expression, so the fused op's
 * SiLU derivative is taken at exactly the z its forward used. */
static inline float norm_scale(float rstd, const float *gamma, size_t c)
{
    return gamma ? rstd * gamma[c] : rstd;
}
static inline float norm_shift(const float *beta, size_t c) { return beta ? beta[c] : 0.0f; }

/* e^x for float x, written so that the compiler vectorises loops that call
 * it (libm's expf is an opaque call; GCC maps it to a vector version only
 * under -ffast-math). Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, then
 * the degree-6 Taylor polynomial of e^r (truncation < 2e-8 relative) and the
 * scaling by 2^n through the exponent bits. Arguments are clamped to
 * [-87, 64] so 2^n stays a normal float (e^-87 ~ 1.6e-38), which is all SiLU
 * needs: its tails are z * 0 and z * 1 to float precision.
 * Why 64 and not 88: GCC threads the clamp into its callers, so a loop over
 * z / (1 + exp_vec(-z)) computes the clamped arm z / (1 + e^hi) for EVERY
 * lane and then selects. With hi = 88 that is z * 6e-39, a subnormal for
 * ordinary |z| ~ 1, and each vector of subnormal results costs a microcode
 * assist (~150 cycles on Intel): GroupNorm+SiLU ran 10x slower, ~40% of a
 * unet-28 training step. With hi = 64 (e^64 ~ 6e27) the arm is subnormal only
 * for |z| < 1e-10; the true SiLU values it replaces are below 1e-26.
 * The rounding constant 1.5 * 2^23 rounds to nearest without SSE4.1. */
static inline float exp_vec(float x)
{
    /* NaN: both comparisons are false, so the clamps below map it to -87 and
     * the conversion to int and the shift stay defined ((int32_t)NaN and a
     * left shift of the negative result were undefined behaviour, reached by
     * a diverging run). The NaN itself is returned at the end. The select
     * vectorises like the clamps (no branch). */
    float xc = x > -87.0f ? x : -87.0f;
    xc = xc < 64.0f ? xc : 64.0f;
    const float shifter = 12582912.0f; /* 1.5 * 2^23 */
    float n = (xc * 1.44269504f + shifter) - shifter;
    float r = (xc - n * 0.693145752f) - n * 1.42860677e-6f; /* ln 2 = hi + lo */
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.66666672e-1f + r * (4.16666679e-2f +
                                      r * (8.33333377e-3f + r * 1.38888892e-3f)))));
    union {
        int32_t i;
        float f;
    } scale = {.i = ((int32_t)n + 127) << 23}; /* n in [-126, 92]: no overflow, no negative shift */
    return x == x ? p * scale.f : x;
}

/* SiLU(z) = z * sigmoid(z) = z / (1 + e^-z). */
static inline float silu_f(float z) { return z / (1.0f + exp_vec(-z)); }
/* d/dz [z s(z)] = s + z s (1 - s) = s (1 + z (1 - s)). */
static inline float silu_grad(float z)
{
    float s = 1.0f / (1.0f + exp_vec(-z));
    return s * (1.0f + z * (1.0f - s));
}

static inline const float *data_or_null(const sd_tensor *t) { return t ? t->data : NULL; }

/* ---- group norm family (group, instance, layer, fused SiLU) ------------- */

/* x viewed as [N, G, Cg, S]; set k = n*G + g is the contiguous block
 * x[k*M .. (k+1)*M) with M = Cg*S. */
typedef struct gn_dims {
    size_t N, S;
    size_t G, Cg;
} gn_dims;

enum { GN_P_GROUPS, GN_P_LAYER, GN_P_SILU };

/* The [N,G,Cg,S] view of x: layer norm sees [numel/D, 1, D, 1]. */
static gn_dims gn_dims_of(const sd_tensor *x, int groups, bool layer)
{
    gn_dims d;
    if (layer) {
        d.Cg = (size_t)x->shape[x->ndim - 1];
        d.G = 1;
        d.S = 1;
        d.N = x->numel / d.Cg;
    } else {
        size_t C = (size_t)x->shape[1];
        d.N = (size_t)x->shape[0];
        d.G = (size_t)groups;
        d.Cg = C / d.G;
        d.S = x->numel / (d.N * C);
    }
    return d;
}

/* Set k of gn_forward. Cloned per instruction set (SD_VECTOR_CLONES): this
 * and gn_backward_set are the elementwise hot loops of a U-Net step. */
SD_VECTOR_CLONES
static void gn_forward_set(const gn_dims *d, size_t k, const float *x, const float *gamma,
                           const float *beta, float eps, bool silu, float *y, norm_stat *stats)
{
    const size_t M = d->Cg * d->S;
    const float *xs = x + k * M;
    float *ys = y + k * M;
    const norm_stat st = set_stats(xs, M, eps);
    if (stats) stats[k] = st;
    for (size_t j = 0; j < d->Cg; j++) {
        size_t c = (k % d->G) * d->Cg + j;
        float sc = norm_scale(st.rstd, gamma, c), sh = norm_shift(beta, c);
        const float *xc = xs + j * d->S;
        float *yc = ys + j * d->S;
        if (silu) {
#pragma omp simd
            for (size_t s = 0; s < d->S; s++) yc[s] = silu_f(centre(xc[s], st) * sc + sh);
        } else {
#pragma omp simd
            for (size_t s = 0; s < d->S; s++) yc[s] = centre(xc[s], st) * sc + sh;
        }
    }
}

/* x, y [N, C, S]; gamma, beta [C] or NULL; stats [N*G] or NULL. */
static void gn_forward(const gn_dims *d, const float *x, const float *gamma, const float *beta,
                       float eps, bool silu, float *y, norm_stat *stats)
{
    const size_t sets = d->N * d->G, M = d->Cg * d->S;
    const bool par = sets * M >= SD_NORM_PAR_MIN;
#pragma omp parallel for schedule(static) if (par)
    for (size_t k = 0; k < sets; k++) gn_forward_set(d, k, x, gamma, beta, eps, silu, y, stats);
}

/* dz = d out / d z at one element: dy itself, or dy * SiLU'(z) for the fused
 * op, with z recomputed from the saved statistics. */
static inline float gn_dz(float dy, float x, norm_stat st, float sc, float sh, bool silu)
{
    return silu ? dy * silu_grad(centre(x, st) * sc + sh) : dy;
}

/* Per set: dx += rstd * (dy_hat - mean(dy_hat) - x_hat * mean(dy_hat * x_hat)),
 * differentiating  y = ((x - mu) * rstd) * gamma + beta  with mu, rstd
 * functions of the set. Sweep 1 forms the two means from the per-channel
 * sums sum dz and sum dz * x_hat (dy_hat = dz * gamma[c]), which are also
 * the (n, c) partials of dbeta and dgamma, saved in part [N, C, 2] if given.
 * Sweep 2 writes dx (if dx != NULL). For the fused op, sweep 1 keeps
 * dz = dy * SiLU'(z) in dzbuf [threads, M] so that exp runs once per element;
 * the buffer is one set per thread, not a tensor. */
/* Sweep 1 over one channel's S elements: dz (stored in dz_out if given) and
 * its sums sum dz, sum dz * x_hat. Float partial sums in vector lanes (each
 * over at most S / lanes elements, relative error ~S/lanes * 6e-8) are
 * added into double per channel; the lane order is fixed at compile time, so
 * results are deterministic. `silu` and dz_out are constants at each call
 * site so the compiler emits three plain vector loops. */
static inline void gn_sweep1_channel(const float *x, const float *dy, float *dz_out, size_t S,
                                     norm_stat st, float sc, float sh, bool silu, double *sum_dz,
                                     double *sum_dz_xh)
{
    float sb = 0.0f, sg = 0.0f;
#pragma omp simd reduction(+ : sb, sg)
    for (size_t s = 0; s < S; s++) {
        const float xc = centre(x[s], st);
        const float dz = silu ? dy[s] * silu_grad(xc * sc + sh) : dy[s];
        if (dz_out) dz_out[s] = dz;
        sb += dz;
        sg += dz * (xc * st.rstd);
    }
    *sum_dz = sb;
    *sum_dz_xh = sg;
}

/* Set k of gn_backward_sets; dzs: this thread's [M] dz buffer or NULL. */
SD_VECTOR_CLONES
static void gn_backward_set(const gn_dims *d, size_t k, const float *x, const float *gamma,
                            const float *beta, const norm_stat *stats, bool silu,
                            const float *dy, float *dx, double *part, float *dzs)
{
    const size_t M = d->Cg * d->S, C = d->G * d->Cg, S = d->S;
    const norm_stat st = stats[k];
    const size_t c0 = (k % d->G) * d->Cg, n = k / d->G;
    double s1 = 0.0, s2 = 0.0; /* sum dy_hat, sum dy_hat * x_hat */
    for (size_t j = 0; j < d->Cg; j++) {
        const size_t c = c0 + j, off = k * M + j * S;
        const float gm = gamma ? gamma[c] : 1.0f;
        const float sc = norm_scale(st.rstd, gamma, c), sh = norm_shift(beta, c);
        double sb, sg;
        if (!silu)
            gn_sweep1_channel(x + off, dy + off, NULL, S, st, sc, sh, false, &sb, &sg);
        else if (dzs)
            gn_sweep1_channel(x + off, dy + off, dzs + j * S, S, st, sc, sh, true, &sb, &sg);
        else
            gn_sweep1_channel(x + off, dy + off, NULL, S, st, sc, sh, true, &sb, &sg);
        s1 += gm * sb;
        s2 += gm * sg;
        if (part) {
            part[2 * (n * C + c)] = sg;
            part[2 * (n * C + c) + 1] = sb;
        }
    }
    if (!dx) return;
    const float a = (float)(s1 / (double)M), b = (float)(s2 / (double)M), r = st.rstd;
    for (size_t j = 0; j < d->Cg; j++) {
        const size_t c = c0 + j, off = k * M + j * S;
        const float gm = gamma ? gamma[c] : 1.0f;
        const float *dzc = dzs ? dzs + j * S : dy + off;
        const float *xc = x + off;
        float *dxc = dx + off;
#pragma omp simd
        for (size_t s = 0; s < S; s++) {
            const float xh = centre(xc[s], st) * r;
            dxc[s] += r * (gm * dzc[s] - a - xh * b);
        }
    }
}

static void gn_backward_sets(const gn_dims *d, const float *x, const float *gamma,
                             const float *beta, const norm_stat *stats, bool silu,
                             const float *dy, float *dx, double *part, float *dzbuf)
{
    const size_t sets = d->N * d->G, M = d->Cg * d->S;
    const bool par = sets * M >= SD_NORM_PAR_MIN;
#pragma omp parallel for schedule(static) if (par)
    for (size_t k = 0; k < sets; k++)
        gn_backward_set(d, k, x, gamma, beta, stats, silu, dy, dx, part,
                        dzbuf ? dzbuf + (size_t)omp_get_thread_num() * M : NULL);
}

/* dgamma[c] += sum dz * x_hat, dbeta[c] += sum dz over n and s, from
 * y = x_hat * gamma[c] + beta[c]. Blocks of channels, one thread each. */
static void gn_backward_affine(const gn_dims *d, const float *x, const float *gamma,
                               const float *beta, const norm_stat *stats, bool silu,
                               const float *dy,
                               float *dgamma, float *dbeta)
{
    const size_t C = d->G * d->Cg, S = d->S;
    const size_t cb = S >= SD_NORM_CBLK ? 1 : SD_NORM_CBLK;
    const size_t nblk = (C + cb - 1) / cb;
    const bool par = d->N * C * S >= SD_NORM_PAR_MIN;
#pragma omp parallel for schedule(static) if (par)
    for (size_t blk = 0; blk < nblk; blk++) {
        double ag[SD_NORM_CBLK] = {0}, ab[SD_NORM_CBLK] = {0};
        const size_t c0 = blk * cb, c1 = c0 + cb < C ? c0 + cb : C;
        for (size_t n = 0; n < d->N; n++) {
            for (size_t c = c0; c < c1; c++) {
                const norm_stat st = stats[n * d->G + c / d->Cg];
                const float sc = norm_scale(st.rstd, gamma, c), sh = norm_shift(beta, c);
                const float *xc = x + (n * C + c) * S, *dyc = dy + (n * C + c) * S;
                double sg = 0.0, sb = 0.0;
                for (size_t s = 0; s < S; s++) {
                    float dz = gn_dz(dyc[s], xc[s], st, sc, sh, silu);
                    sg += (double)dz * (double)(centre(xc[s], st) * st.rstd);
                    sb += dz;
                }
                ag[c - c0] += sg;
                ab[c - c0] += sb;
            }
        }
        for (size_t c = c0; c < c1; c++) {
            if (dgamma) dgamma[c] += (float)ag[c - c0];
            if (dbeta) dbeta[c] += (float)ab[c - c0];
        }
    }
}

static sd_status gn_backward(sd_graph *g, sd_tensor *out)
{
    sd_tensor *x = out->src[0], *gamma = out->src[1], *beta = out->src[2];
    const gn_dims d = gn_dims_of(x, out->params.i[GN_P_GROUPS], out->params.i[GN_P_LAYER] != 0);
    const bool silu = out->params.i[GN_P_SILU] != 0;
    const norm_stat *stats = out->saved;
    const float *gd = data_or_null(gamma), *bd = data_or_null(beta);
    float *dgamma = gamma ? gamma->grad : NULL, *dbeta = beta ? beta->grad : NULL;
    const size_t C = d.G * d.Cg, M = d.Cg * d.S;
    /* With S >= SD_NORM_PART_MIN_S the (n, c) partials (2 doubles per S
     * elements) are cheap and spare gn_backward_affine's extra pass over x
     * and dy; below that (layer norm, [N, C] input) that pass is cheaper in
     * memory. */
    const bool affine = dgamma || dbeta, use_part = affine && d.S >= SD_NORM_PART_MIN_S;
    if (x->grad || use_part) {
        double *part = NULL;
        float *dzbuf = NULL;
        if (use_part) part = sd_graph_alloc(g, 2 * d.N * C * sizeof *part);
        if (silu && x->grad)
            dzbuf = sd_graph_alloc_floats(g, (size_t)omp_get_max_threads() * M);
        if ((use_part && !part) || (silu && x->grad && !dzbuf))
            return sd_error(SD_ERR_NOMEM, "%s backward: out of memory for scratch", out->op);
        gn_backward_sets(&d, x->data, gd, bd, stats, silu, out->grad, x->grad, part, dzbuf);
        if (part) {
            /* dgamma[c] += sum_n sum dz * x_hat, dbeta[c] += sum_n sum dz,
             * summed over n in a fixed order. */
            for (size_t c = 0; c < C; c++) {
                double sg = 0.0, sb = 0.0;
                for (size_t n = 0; n < d.N; n++) {
                    sg += part[2 * (n * C + c)];
                    sb += part[2 * (n * C + c) + 1];
                }
                if (dgamma) dgamma[c] += (float)sg;
                if (dbeta) dbeta[c] += (float)sb;
            }
        }
    }
    if (affine && !use_part)
        gn_backward_affine(&d, x->data, gd, bd, stats, silu, out->grad, dgamma, dbeta);
    return SD_OK;
}

/* Validated entry shared by the family: run the forward, record if needed. */
static sd_tensor *gn_run(sd_graph *g, const char *op, sd_tensor *x, int groups, bool layer,
                         sd_tensor *gamma, sd_tensor *beta, float eps, bool silu)
{
    const gn_dims d = gn_dims_of(x, groups, layer);
    if (!affine_ok(g, op, x, gamma, beta, d.G * d.Cg, eps)) return NULL;
    sd_tensor *srcs[3] = {x, gamma, beta};
    sd_tensor *out = sd__op_output(g, op, x->ndim, x->shape, gn_backward, 3, srcs);
    if (!out) return NULL;
    norm_stat *stats = NULL;
    if (sd__recorded(out)) {
        size_t bytes;
        if (sd_mul_size(d.N * d.G, sizeof *stats, &bytes))
            return sd_graph_fail(g, SD_ERR_NOMEM, "%s: statistics size overflows", op);
        stats = sd_graph_alloc(g, bytes);
        if (!stats) return sd_graph_fail(g, SD_ERR_NOMEM, "%s: out of memory for statistics", op);
        out->saved = stats;
        out->params.i[GN_P_GROUPS] = groups;
        out->params.i[GN_P_LAYER] = layer;
        out->params.i[GN_P_SILU] = silu;
    }
    gn_forward(&d, x->data, data_or_null(gamma), data_or_null(beta), eps, silu, out->data, stats);
    return out;
}

static sd_tensor *gn_entry(sd_graph *g, const char *op, sd_tensor *x, int groups,
                           sd_tensor *gamma, sd_tensor *beta, float eps, bool silu)
{
    char bx[64];
    if (!x) return NULL;
    if (x->ndim < 2)
        return sd_graph_fail(g, SD_ERR_INVALID, "%s: x must be [N, C, ...], got %s", op,
                           sd_shape_str(x, bx, sizeof bx));
    if (groups < 1 || x->shape[1] % groups != 0)
        return sd_graph_fail(g, SD_ERR_INVALID, "%s: %d groups do not divide the %d channels of x %s",
                           op, groups, x->shape[1], sd_shape_str(x, bx, sizeof bx));
    return gn_run(g, op, x, groups, false, gamma, beta, eps, silu);
}

bool sd__gn_check(sd_graph *g, const char *op, sd_tensor *x, int groups, sd_tensor *gamma,
                  sd_tensor *beta, float eps)
{
    char bx[64];
    if (x->ndim < 2)
        return sd_graph_fail(g, SD_ERR_INVALID, "%s: x must be [N, C, ...], got %s", op,
                           sd_shape_str(x, bx, sizeof bx)) != NULL;
    if (groups < 1 || x->shape[1] % groups != 0)
        return sd_graph_fail(g, SD_ERR_INVALID, "%s: %d groups do not divide the %d channels of x %s",
                           op, groups, x->shape[1], sd_shape_str(x, bx, sizeof bx)) != NULL;
    const gn_dims d = gn_dims_of(x, groups, false);
    return affine_ok(g, op, x, gamma, beta, d.G * d.Cg, eps);
}

size_t sd__gn_stats_bytes(const sd_tensor *x, int groups)
{
    return (size_t)x->shape[0] * (size_t)groups * sizeof(norm_stat);
}

void sd__gn_silu_forward_into(const sd_tensor *x, int groups, const sd_tensor *gamma,
                              const sd_tensor *beta, float eps, float *y, void *stats)
{
    const gn_dims d = gn_dims_of(x, groups, false);
    gn_forward(&d, x->data, data_or_null(gamma), data_or_null(beta), eps, true, y, stats);
}

sd_status sd__gn_silu_backward_from(sd_graph *g, sd_tensor *x, sd_tensor *gamma, sd_tensor *beta,
                                    int groups, void *stats, float *dy)
{
    sd_tensor out = {.ndim = 0, .grad = dy, .src = {x, gamma, beta}, .saved = stats,
                     .op = "group_norm_silu"};
    out.params.i[GN_P_GROUPS] = groups;
    out.params.i[GN_P_LAYER] = 0;
    out.params.i[GN_P_SILU] = 1;
    return gn_backward(g, &out);
}

sd_tensor *sd_group_norm(sd_graph *g, sd_tensor *x, int groups, sd_tensor *gamma,
                         sd_tensor *beta, float eps)
{
    return gn_entry(g, "group_norm", x, groups, gamma, beta, eps, false);
}

sd_tensor *sd_group_norm_silu(sd_graph *g, sd_tensor *x, int groups, sd_tensor *gamma,
                              sd_tensor *beta, float eps)
{
    return gn_entry(g, "group_norm_silu", x, groups, gamma, beta, eps, true);
}

sd_tensor *sd_instance_norm(sd_graph *g, sd_tensor *x, sd_tensor *gamma, sd_tensor *beta,
                            float eps)
{
    char bx[64];
    if (!x) return NULL;
    /* Without spatial dims every set would be one element (output = beta). */
    if (x->ndim < 3)
        return sd_graph_fail(g, SD_ERR_INVALID, "instance_norm: x must be [N, C, spatial...], got %s",
                           sd_shape_str(x, bx, sizeof bx));
    return gn_run(g, "instance_norm", x, x->shape[1], false, gamma, beta, eps, false);
}

sd_tensor *sd_layer_norm(sd_graph *g, sd_tensor *x, sd_tensor *gamma, sd_tensor *beta, float eps)
{
    if (!x) return NULL;
    return gn_run(g, "layer_norm", x, 1, true, gamma, beta, eps, false);
}

/* ---- batch norm ---------------------------------------------------------- */

enum { BN_P_TRAINING };

/* Per-channel batch statistics of x [N, C, S] over its N*S elements into
 * stats [C], and the running-stat update (PyTorch):
 *     running_mean = (1 - momentum) running_mean + momentum mean
 *     running_var  = (1 - momentum) running_var  + momentum var * M / (M - 1)
 * i.e. the running variance tracks the UNBIASED batch variance, while the
 * normalisation itself uses the biased one. */
static void bn_batch_stats(const float *x, size_t N, size_t C, size_t S, float eps,
                           float momentum, float *running_mean, float *running_var,
                           norm_stat *stats)
{
    const size_t cb = S >= SD_NORM_CBLK ? 1 : SD_NORM_CBLK;
    const size_t nblk = (C + cb - 1) / cb;
    const double M = (double)N * (double)S, mom = momentum;
    const bool par = N * C * S >= SD_NORM_PAR_MIN;
#pragma omp parallel for schedule(static) if (par)
    for (size_t blk = 0; blk < nblk; blk++) {
        double sum[SD_NORM_CBLK] = {0}, sq[SD_NORM_CBLK] = {0};
        const size_t c0 = blk * cb, c1 = c0 + cb < C ? c0 + cb : C;
        for (size_t n = 0; n < N; n++)
            for (size_t c = c0; c < c1; c++) {
                const float *xc = x + (n * C + c) * S;
                double s1 = 0.0;
                for (size_t s = 0; s < S; s++) s1 += xc[s];
                sum[c - c0] += s1;
            }
        for (size_t c = c0; c < c1; c++) sum[c - c0] /= M; /* now the mean */
        for (size_t n = 0; n < N; n++)
            for (size_t c = c0; c < c1; c++) {
                const float *xc = x + (n * C + c) * S;
                const double mu = sum[c - c0];
                double q = 0.0;
                for (size_t s = 0; s < S; s++) q += ((double)xc[s] - mu) * ((double)xc[s] - mu);
                sq[c - c0] += q;
            }
        for (size_t c = c0; c < c1; c++) {
            const double mu = sum[c - c0], var = sq[c - c0] / M;
            stats[c] = stat_of(mu, var, eps);
            if (running_mean)
                running_mean[c] = (float)((1.0 - mom) * running_mean[c] + mom * mu);
            if (running_var)
                running_var[c] = (float)((1.0 - mom) * running_var[c] + mom * (sq[c - c0] / (M - 1.0)));
        }
    }
}

/* y = (x - mean[c]) * (rstd[c] gamma[c]) + beta[c] over planes (n, c) of S. */
static void bn_apply(const float *x, size_t N, size_t C, size_t S, const float *gamma,
                     const float *beta, const norm_stat *stats, float *y)
{
    const bool par = N * C * S >= SD_NORM_PAR_MIN;
#pragma omp parallel for schedule(static) if (par)
    for (size_t p = 0; p < N * C; p++) {
        const size_t c = p % C;
        const norm_stat st = stats[c];
        const float sc = norm_scale(st.rstd, gamma, c), sh = norm_shift(beta, c);
        const float *xp = x + p * S;
        float *yp = y + p * S;
        for (size_t s = 0; s < S; s++) yp[s] = centre(xp[s], st) * sc + sh;
    }
}

static sd_status bn_backward(sd_graph *g, sd_tensor *out)
{
    sd_tensor *x = out->src[0], *gamma = out->src[1], *beta = out->src[2];
    const bool training = out->params.i[BN_P_TRAINING] != 0;
    const size_t N = (size_t)x->shape[0], C = (size_t)x->shape[1], S = x->numel / (N * C);
    const double M = (double)N * (double)S;
    const norm_stat *stats = out->saved;
    const float *dy = out->grad;
    const float *gd = data_or_null(gamma);
    float *dgamma = gamma ? gamma->grad : NULL, *dbeta = beta ? beta->grad : NULL;
    const bool x_needs_sums = x->grad && training;
    /* coef [2, C]: mean(dy) and mean(dy * x_hat) per channel (training dx). */
    double *coef = NULL;
    if (x_needs_sums) {
        coef = sd_graph_alloc(g, 2 * C * sizeof *coef);
        if (!coef) return sd_error(SD_ERR_NOMEM, "batch_norm backward: out of memory");
    }
    const bool par = x->numel >= SD_NORM_PAR_MIN;
    if (dgamma || dbeta || x_needs_sums) {
        /* dbeta[c] = sum dy, dgamma[c] = sum dy * x_hat, from
         * y = x_hat * gamma[c] + beta[c], summed over n and s. */
        const size_t cb = S >= SD_NORM_CBLK ? 1 : SD_NORM_CBLK;
        const size_t nblk = (C + cb - 1) / cb;
#pragma omp parallel for schedule(static) if (par)
        for (size_t blk = 0; blk < nblk; blk++) {
            double s1[SD_NORM_CBLK] = {0}, s2[SD_NORM_CBLK] = {0};
            const size_t c0 = blk * cb, c1 = c0 + cb < C ? c0 + cb : C;
            for (size_t n = 0; n < N; n++)
                for (size_t c = c0; c < c1; c++) {
                    const norm_stat st = stats[c];
                    const float *xc = x->data + (n * C + c) * S, *dyc = dy + (n * C + c) * S;
                    double a = 0.0, b = 0.0;
                    for (size_t s = 0; s < S; s++) {
                        a += dyc[s];
                        b += (double)dyc[s] * (double)(centre(xc[s], st) * st.rstd);
                    }
                    s1[c - c0] += a;
                    s2[c - c0] += b;
                }
            for (size_t c = c0; c < c1; c++) {
                if (dgamma) dgamma[c] += (float)s2[c - c0];
                if (dbeta) dbeta[c] += (float)s1[c - c0];
                if (coef) {
                    coef[c] = s1[c - c0] / M;
                    coef[C + c] = s2[c - c0] / M;
                }
            }
        }
    }
    if (x->grad) {
        /* Training: y = ((x - mu_B) * rstd_B) * gamma + beta with batch stats,
         *   dx = rstd gamma (dy - mean(dy) - x_hat mean(dy x_hat))
         * (gamma is constant over the set, so dy_hat's means factor it out).
         * Eval: y = (x - running_mean) * rstd * gamma + beta, dx = dy rstd gamma. */
#pragma omp parallel for schedule(static) if (par)
        for (size_t p = 0; p < N * C; p++) {
            const size_t c = p % C;
            const norm_stat st = stats[c];
            const float k = norm_scale(st.rstd, gd, c);
            const float *xp = x->data + p * S, *dyp = dy + p * S;
            float *dxp = x->grad + p * S;
            if (training) {
                const double a = coef[c], b = coef[C + c];
                for (size_t s = 0; s < S; s++) {
                    double xh = (double)(centre(xp[s], st) * st.rstd);
                    dxp[s] += (float)((double)k * ((double)dyp[s] - a - xh * b));
                }
            } else {
                for (size_t s = 0; s < S; s++) dxp[s] += dyp[s] * k;
            }
        }
    }
    return SD_OK;
}

sd_tensor *sd_batch_norm(sd_graph *g, sd_tensor *x, sd_tensor *gamma, sd_tensor *beta,
                         float *running_mean, float *running_var, float momentum, float eps,
                         bool training)
{
    char bx[64];
    if (!x) return NULL;
    if (x->ndim < 2)
        return sd_graph_fail(g, SD_ERR_INVALID, "batch_norm: x must be [N, C] or [N, C, H, W], got %s",
                           sd_shape_str(x, bx, sizeof bx));
    const size_t N = (size_t)x->shape[0], C = (size_t)x->shape[1], S = x->numel / (N * C);
    if (!affine_ok(g, "batch_norm", x, gamma, beta, C, eps)) return NULL;
    if (!training && (!running_mean || !running_var))
        return sd_graph_fail(g, SD_ERR_INVALID,
                           "batch_norm: eval mode needs running_mean and running_var, got NULL");
    if (training && N * S < 2)
        return sd_graph_fail(g, SD_ERR_INVALID,
                           "batch_norm: training needs more than 1 value per channel, x is %s",
                           sd_shape_str(x, bx, sizeof bx));
    if (training && !(momentum >= 0.0f && momentum <= 1.0f))
        return sd_graph_fail(g, SD_ERR_INVALID, "batch_norm: momentum must be in [0, 1], got %g",
                           (double)momentum);
    sd_tensor *srcs[3] = {x, gamma, beta};
    sd_tensor *out = sd__op_output(g, "batch_norm", x->ndim, x->shape, bn_backward, 3, srcs);
    if (!out) return NULL;
    /* The forward needs the per-channel statistics anyway (C of them); they
     * are also what backward needs, copied so that later changes to the
     * caller's running arrays cannot affect it. */
    norm_stat *stats = sd_graph_alloc(g, C * sizeof *stats);
    if (!stats) return sd_graph_fail(g, SD_ERR_NOMEM, "batch_norm: out of memory for statistics");
    if (training) {
        bn_batch_stats(x->data, N, C, S, eps, momentum, running_mean, running_var, stats);
    } else {
        for (size_t c = 0; c < C; c++) stats[c] = stat_of(running_mean[c], running_var[c], eps);
    }
    bn_apply(x->data, N, C, S, data_or_null(gamma), data_or_null(beta), stats, out->data);
    if (sd__recorded(out)) {
        out->saved = stats;
        out->params.i[BN_P_TRAINING] = training;
    }
    return out;
}
