/* ops_unary.c - pointwise activations and maths functions, and dropout.
 *
 * Every op maps x (any shape, n elements) to y of the same shape with
 * y[i] = f(x[i]). Backward uses only x (the source's data) and y (the
 * output's data), both immutable after the forward, so nothing extra is
 * saved: ga[i] += gy[i] * f'(x[i]), with f' written in whichever of x and y
 * is cheaper and more accurate (e.g. tanh' = 1 - y^2, exp' = y).
 *
 * Numerics: single-precision libm; gelu is the exact x * Phi(x) through erf;
 * sigmoid and softplus are written so that no intermediate overflows.
 * Domain errors follow IEEE (log of a negative is NaN, as in PyTorch).
 *
 * Dropout draws its mask sequentially from the caller's sd_rng, so the mask
 * does not depend on the thread count.
 */
#include "sd/ops.h"
#include "sd/rng.h"
#include "core/graph_internal.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#define UN_PAR_MIN 32768 /* elements below which threading costs more than it saves */

/* PyTorch's softplus threshold: above it, log(1 + e^x) == x in float. */
#define SOFTPLUS_THRESHOLD 20.0f

typedef enum {
    UN_RELU, UN_LEAKY_RELU, UN_ELU, UN_GELU, UN_SILU, UN_TANH, UN_SIGMOID, UN_SOFTPLUS,
    UN_SIN, UN_COS, UN_EXP, UN_LOG, UN_SQUARE, UN_SQRT
} un_op;

static const char *const un_names[] = {
    "relu", "leaky_relu", "elu", "gelu", "silu", "tanh", "sigmoid", "softplus",
    "sin", "cos", "exp", "log", "square", "sqrt"};

/* 1 / (1 + e^-x) without overflow: e^-|x| <= 1 in both branches. */
static inline float stable_sigmoid(float x)
{
    if (x >= 0.0f) return 1.0f / (1.0f + expf(-x));
    float e = expf(x);
    return e / (1.0f + e);
}

/* Phi(x) = (1 + erf(x / sqrt 2)) / 2 = erfc(-x / sqrt 2) / 2, the standard
 * normal CDF; the erfc form keeps full relative accuracy in the left tail,
 * where 1 + erf cancels. */
static inline float normal_cdf(float x) { return 0.5f * erfcf(-x * 0.70710678118654752f); }

/* y = f(x); k is the op's scalar (leaky slope, elu alpha). */
static inline float un_f(un_op op, float x, float k)
{
    switch (op) {
    case UN_RELU: return x > 0.0f ? x : 0.0f;
    case UN_LEAKY_RELU: return x > 0.0f ? x : k * x;
    case UN_ELU: return x > 0.0f ? x : k * expm1f(x); /* alpha (e^x - 1) */
    case UN_GELU: return x * normal_cdf(x);
    case UN_SILU: return x * stable_sigmoid(x);
    case UN_TANH: return tanhf(x);
    case UN_SIGMOID: return stable_sigmoid(x);
    case UN_SOFTPLUS:
        /* log(1 + e^x) = max(x, 0) + log1p(e^-|x|): the exponent is <= 0. */
        if (x > SOFTPLUS_THRESHOLD) return x;
        return fmaxf(x, 0.0f) + log1pf(expf(-fabsf(x)));
    case UN_SIN: return sinf(x);
    case UN_COS: return cosf(x);
    case UN_EXP: return expf(x);
    case UN_LOG: return logf(x);
    case UN_SQUARE: return x * x;
    default: return sqrtf(x);
    }
}

/* f'(x), given y = f(x). */
static inline float un_df(un_op op, float x, float y, float k)
{
    switch (op) {
    case UN_RELU: return x > 0.0f ? 1.0f : 0.0f;
    case UN_LEAKY_RELU: return x > 0.0f ? 1.0f : k;
    case UN_ELU: return x > 0.0f ? 1.0f : y + k; /* d alpha (e^x - 1) = alpha e^x = y + alpha */
    case UN_GELU: /* d x Phi(x) = Phi(x) + x phi(x), phi(x) = e^(-x^2/2) / sqrt(2 pi) */
        return normal_cdf(x) + x * 0.39894228040143268f * expf(-0.5f * x * x);
    case UN_SILU: { /* d x s(x) = s (1 + x (1 - s)) */
        float s = stable_sigmoid(x);
        return s * (1.0f + x * (1.0f - s));
    }
    case UN_TANH: return 1.0f - y * y;
    case UN_SIGMOID: return y * (1.0f - y);
    case UN_SOFTPLUS: return x > SOFTPLUS_THRESHOLD ? 1.0f : stable_sigmoid(x);
    case UN_SIN: return cosf(x);
    case UN_COS: return -sinf(x);
    case UN_EXP: return y;
    case UN_LOG: return 1.0f / x;
    case UN_SQUARE: return 2.0f * x;
    default: return 0.5f / y; /* d sqrt(x) = 1 / (2 sqrt(x)) */
    }
}

/* Chunk kernels, force-inlined into UN_SWITCH, which instantiates them once
 * per op with `op` a compile-time constant: the per-element switch folds away
 * and the cheap ops (relu, leaky_relu, square, ...) vectorise. */
#if defined(__GNUC__)
#define UN_KERNEL static inline __attribute__((always_inline)) void
#else
#define UN_KERNEL static inline void
#endif

#define UN_CASE(o, kernel, ...)                                                                    \
    case o: kernel(o, __VA_ARGS__); break
#define UN_SWITCH(op, kernel, ...)                                                                 \
    do {                                                                                           \
        switch (op) {                                                                              \
            UN_CASE(UN_RELU, kernel, __VA_ARGS__);                                                 \
            UN_CASE(UN_LEAKY_RELU, kernel, __VA_ARGS__);                                           \
            UN_CASE(UN_ELU, kernel, __VA_ARGS__);                                                  \
            UN_CASE(UN_GELU, kernel, __VA_ARGS__);                                                 \
            UN_CASE(UN_SILU, kernel, __VA_ARGS__);                                                 \
            UN_CASE(UN_TANH, kernel, __VA_ARGS__);                                                 \
            UN_CASE(UN_SIGMOID, kernel, __VA_ARGS__);                                              \
            UN_CASE(UN_SOFTPLUS, kernel, __VA_ARGS__);                                             \
            UN_CASE(UN_SIN, kernel, __VA_ARGS__);                                                  \
            UN_CASE(UN_COS, kernel, __VA_ARGS__);                                                  \
            UN_CASE(UN_EXP, kernel, __VA_ARGS__);                                                  \
            UN_CASE(UN_LOG, kernel, __VA_ARGS__);                                                  \
            UN_CASE(UN_SQUARE, kernel, __VA_ARGS__);                                               \
            UN_CASE(UN_SQRT, kernel, __VA_ARGS__);                                                 \
        }                                                                                          \
    } while (0)

#define UN_CHUNK 4096

/* y = f(x) over len floats. */
UN_KERNEL k_forward(un_op op, const float *x, float *y, float k, size_t len)
{
    for (size_t i = 0; i < len; i++) y[i] = un_f(op, x[i], k);
}

/* ga += gy * f'(x) over len floats. */
UN_KERNEL k_backward(un_op op, const float *x, const float *y, const float *gy, float *ga,
                     float k, size_t len)
{
    for (size_t i = 0; i < len; i++) ga[i] += gy[i] * un_df(op, x[i], y[i], k);
}

/* Backward of y = f(x): ga[i] += gy[i] * f'(x[i]). */
static sd_status un_backward(sd_graph *g, sd_tensor *out)
{
    (void)g;
    sd_tensor *A = out->src[0];
    if (!A->grad) return SD_OK;
    un_op op = (un_op)out->params.i[0];
    float k = out->params.f[1];
    const float *x = A->data, *y = out->data, *gy = out->grad;
    float *ga = A->grad;
    size_t n = out->numel, ntask = (n + UN_CHUNK - 1) / UN_CHUNK;
#pragma omp parallel for schedule(static) if (n > UN_PAR_MIN)
    for (size_t t = 0; t < ntask; t++) {
        size_t i0 = t * UN_CHUNK, len = n - i0 < UN_CHUNK ? n - i0 : UN_CHUNK;
        UN_SWITCH(op, k_backward, x + i0, y + i0, gy + i0, ga + i0, k, len);
    }
    return SD_OK;
}

static sd_tensor *un_apply(sd_graph *g, un_op op, sd_tensor *a, float k)
{
    if (!a) return NULL;
    sd_tensor *out = sd__op_output(g, un_names[op], a->ndim, a->shape, un_backward, 1, &a);
    if (!out) return NULL;
    out->params.i[0] = (int)op; /* i[0] and f[1] do not overlap in the union */
    out->params.f[1] = k;
    const float *x = a->data;
    float *y = out->data;
    size_t n = a->numel, ntask = (n + UN_CHUNK - 1) / UN_CHUNK;
#pragma omp parallel for schedule(static) if (n > UN_PAR_MIN)
    for (size_t t = 0; t < ntask; t++) {
        size_t i0 = t * UN_CHUNK, len = n - i0 < UN_CHUNK ? n - i0 : UN_CHUNK;
        UN_SWITCH(op, k_forward, x + i0, y + i0, k, len);
    }
    return out;
}

sd_tensor *sd_relu(sd_graph *g, sd_tensor *a) { return un_apply(g, UN_RELU, a, 0.0f); }
sd_tensor *sd_leaky_relu(sd_graph *g, sd_tensor *a, float negative_slope)
{
    return un_apply(g, UN_LEAKY_RELU, a, negative_slope);
}
sd_tensor *sd_elu(sd_graph *g, sd_tensor *a, float alpha) { return un_apply(g, UN_ELU, a, alpha); }
sd_tensor *sd_gelu(sd_graph *g, sd_tensor *a) { return un_apply(g, UN_GELU, a, 0.0f); }
sd_tensor *sd_silu(sd_graph *g, sd_tensor *a) { return un_apply(g, UN_SILU, a, 0.0f); }
sd_tensor *sd_tanh(sd_graph *g, sd_tensor *a) { return un_apply(g, UN_TANH, a, 0.0f); }
sd_tensor *sd_sigmoid(sd_graph *g, sd_tensor *a) { return un_apply(g, UN_SIGMOID, a, 0.0f); }
sd_tensor *sd_softplus(sd_graph *g, sd_tensor *a) { return un_apply(g, UN_SOFTPLUS, a, 0.0f); }
sd_tensor *sd_sin(sd_graph *g, sd_tensor *a) { return un_apply(g, UN_SIN, a, 0.0f); }
sd_tensor *sd_cos(sd_graph *g, sd_tensor *a) { return un_apply(g, UN_COS, a, 0.0f); }
sd_tensor *sd_exp(sd_graph *g, sd_tensor *a) { return un_apply(g, UN_EXP, a, 0.0f); }
sd_tensor *sd_log(sd_graph *g, sd_tensor *a) { return un_apply(g, UN_LOG, a, 0.0f); }
sd_tensor *sd_square(sd_graph *g, sd_tensor *a) { return un_apply(g, UN_SQUARE, a, 0.0f); }
sd_tensor *sd_sqrt(sd_graph *g, sd_tensor *a) { return un_apply(g, UN_SQRT, a, 0.0f); }

/* ---- dropout ------------------------------------------------------------ */

/* Backward of y[i] = keep[i] ? x[i] / (1 - p) : 0, with the byte mask keep
 * saved by the forward: ga[i] += gy[i] / (1 - p) where kept. */
static sd_status dropout_backward(sd_graph *g, sd_tensor *out)
{
    (void)g;
    sd_tensor *A = out->src[0];
    if (!A->grad) return SD_OK;
    const uint8_t *keep = out->saved;
    float scale = out->params.f[0];
    const float *gy = out->grad;
    float *ga = A->grad;
    size_t n = out->numel;
#pragma omp parallel for schedule(static) if (n > UN_PAR_MIN)
    for (size_t i = 0; i < n; i++)
        if (keep[i]) ga[i] += gy[i] * scale;
    return SD_OK;
}

sd_tensor *sd_dropout(sd_graph *g, sd_tensor *x, float p, sd_rng *rng, bool training)
{
    if (!x) return NULL;
    if (!(p >= 0.0f && p <= 1.0f)) /* also rejects NaN */
        return sd_graph_fail(g, SD_ERR_INVALID, "dropout: probability %g outside [0, 1]", (double)p);
    /* Inference or p == 0: the identity, and the input itself (as PyTorch). */
    if (!training || p == 0.0f) return x;
    if (!rng) return sd_graph_fail(g, SD_ERR_INVALID, "dropout: NULL rng in training mode");
    sd_tensor *out = sd__op_output(g, "dropout", x->ndim, x->shape, dropout_backward, 1, &x);
    if (!out) return NULL;
    size_t n = x->numel;
    /* Keep with probability 1 - p; p == 1 drops everything (scale unused). */
    float scale = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
    uint8_t *keep = NULL;
    if (sd__recorded(out)) {
        keep = sd_graph_alloc(g, n);
        if (!keep) return sd_graph_fail(g, SD_ERR_NOMEM, "dropout: out of memory for the mask");
        out->saved = keep;
        out->params.f[0] = scale;
    }
    const float *xs = x->data;
    float *y = out->data;
    for (size_t i = 0; i < n; i++) {
        bool k = sd_rng_uniform(rng) >= p; /* uniform in [0, 1): P(keep) = 1 - p */
        y[i] = k ? xs[i] * scale : 0.0f;
        if (keep) keep[i] = k;
    }
    return out;
}
