/* ops_elementwise.c - broadcasting binary ops (add, sub, mul, div) and the
 * scalar affine map a * s + c, with their backward rules.
 *
 * Dimension vocabulary: shapes are right-aligned and left-padded with ones to
 * four dims [d0, d1, d2, d3] (N, C, H, W for images); `out` has the numpy
 * broadcast shape of a and b.
 *
 * Broadcast plans, chosen per call from the shapes alone:
 *   SAME     a, b and out have one shape: flat loops.
 *   SEG      one operand ("full") has the output shape and the other ("seg")
 *            has the shape [1.., out[d0..d1], 1..]: leading ones, a run of dims
 *            equal to the output's, trailing ones. Viewing out as
 *            [outer, mid, inner], seg element m applies to the contiguous run
 *            out[o, m, :]. This is the U-Net hot path: per-sample [N,1,1,1],
 *            per-channel [1,C,1,1] or [C,1,1], per-(sample, channel)
 *            [N,C,1,1], scalars [1] and biases [W].
 *   GENERAL  anything else (both operands broadcast, e.g. [N,1,H,1] with
 *            [1,C,1,W]): a 4-deep loop with per-operand strides, 0 on a
 *            broadcast dim.
 *
 * Backward: the pointwise derivative d out / d operand times the cotangent;
 * for a broadcast operand that product is summed back to the operand's shape
 * (ggml's "undo broadcasting with a sum-reduce"). Sums run in double, and
 * every operand element is owned by exactly one thread, so gradients do not
 * depend on the thread count.
 */
#include "sd/ops.h"
#include "core/graph_internal.h"

#include <stdio.h>
#include <string.h>

/* Below this many elements an OpenMP region costs more than it saves. */
#define EW_PAR_MIN 32768
/* A contiguous run longer than this is split into several parallel tasks, so
 * that a per-sample broadcast with a small batch still uses every thread. */
#define EW_CHUNK 8192

typedef enum { EW_ADD, EW_SUB, EW_MUL, EW_DIV } ew_op;
static const char *const ew_names[] = {"add", "sub", "mul", "div"};

typedef enum { PLAN_SAME, PLAN_SEG, PLAN_GENERAL } plan_kind;

typedef struct ew_plan {
    plan_kind kind;
    int ndim;               /* output dims: max(a->ndim, b->ndim) */
    int po[4], pa[4], pb[4]; /* padded shapes of out, a, b */
    size_t n;               /* out numel */
    bool seg_is_a;          /* SEG: a is the broadcast operand (b the full one) */
    size_t outer, mid, inner; /* SEG: out viewed as [outer, mid, inner] */
} ew_plan;

static void pad4(const sd_tensor *t, int p[4])
{
    int lead = 4 - t->ndim;
    for (int d = 0; d < 4; d++) p[d] = d < lead ? 1 : t->shape[d - lead];
}

static bool same4(const int x[4], const int y[4])
{
    return x[0] == y[0] && x[1] == y[1] && x[2] == y[2] && x[3] == y[3];
}

static size_t prod(const int *p, int from, int to) /* product of p[from..to) */
{
    size_t r = 1;
    for (int d = from; d < to; d++) r *= (size_t)p[d];
    return r;
}

/* Is px = [1.., po[d0..d1], 1..]? Then fill the [outer, mid, inner] view of
 * po. An all-ones px (a scalar) gives mid = 1, inner = numel. */
static bool seg_pattern(const int po[4], const int px[4], size_t *outer, size_t *mid,
                        size_t *inner)
{
    int d0 = -1, d1 = -1;
    for (int d = 0; d < 4; d++)
        if (px[d] != 1) {
            if (d0 < 0) d0 = d;
            d1 = d;
        }
    if (d0 < 0) d0 = 0; /* empty middle run */
    for (int d = d0; d <= d1; d++)
        if (px[d] != po[d]) return false;
    *outer = prod(po, 0, d0);
    *mid = prod(po, d0, d1 + 1);
    *inner = prod(po, d1 + 1, 4);
    return true;
}

/* Broadcast shapes (numpy rules); false if they are incompatible. */
static bool ew_plan_make(const sd_tensor *a, const sd_tensor *b, ew_plan *p)
{
    pad4(a, p->pa);
    pad4(b, p->pb);
    p->ndim = a->ndim > b->ndim ? a->ndim : b->ndim;
    for (int d = 0; d < 4; d++) {
        if (p->pa[d] == p->pb[d] || p->pb[d] == 1) p->po[d] = p->pa[d];
        else if (p->pa[d] == 1) p->po[d] = p->pb[d];
        else return false;
    }
    p->n = prod(p->po, 0, 4);
    bool a_full = same4(p->pa, p->po), b_full = same4(p->pb, p->po);
    p->outer = p->mid = p->inner = 0;
    p->seg_is_a = false;
    if (a_full && b_full) {
        p->kind = PLAN_SAME;
    } else if (a_full && seg_pattern(p->po, p->pb, &p->outer, &p->mid, &p->inner)) {
        p->kind = PLAN_SEG;
    } else if (b_full && seg_pattern(p->po, p->pa, &p->outer, &p->mid, &p->inner)) {
        p->kind = PLAN_SEG;
        p->seg_is_a = true;
    } else {
        p->kind = PLAN_GENERAL;
    }
    return true;
}

/* Per-output-dim element strides of a tensor of padded shape px inside the
 * output po: the contiguous stride, or 0 on a broadcast dim. */
static void bcast_strides(const int px[4], const int po[4], size_t st[4])
{
    size_t s = 1;
    for (int d = 3; d >= 0; d--) {
        st[d] = px[d] == po[d] ? s : 0;
        s *= (size_t)px[d];
    }
}

static inline float ew_apply(ew_op op, float x, float y)
{
    switch (op) {
    case EW_ADD: return x + y;
    case EW_SUB: return x - y;
    case EW_MUL: return x * y;
    default: return x / y;
    }
}

/* d out / d x for out = x op y. */
static inline float ew_dx(ew_op op, float y)
{
    switch (op) {
    case EW_ADD:
    case EW_SUB: return 1.0f;
    case EW_MUL: return y;
    default: return 1.0f / y;
    }
}

/* d out / d y for out = x op y (for div, -x / y^2 = -out / y avoids y^2
 * overflow). */
static inline float ew_dy(ew_op op, float x, float y, float out)
{
    switch (op) {
    case EW_ADD: return 1.0f;
    case EW_SUB: return -1.0f;
    case EW_MUL: return x;
    default: return -out / y;
    }
}

/* Run kernels. Each is force-inlined into EW_SWITCH, which instantiates it
 * once per op with `op` a compile-time constant, so the switch in ew_apply
 * disappears and the loop vectorises. Called once per contiguous run (task),
 * from inside the OpenMP loops. All pointers cover len floats. */
#if defined(__GNUC__)
#define EW_KERNEL static inline __attribute__((always_inline)) void
#else
#define EW_KERNEL static inline void
#endif

#define EW_SWITCH(op, kernel, ...)                                                                 \
    do {                                                                                           \
        switch (op) {                                                                              \
        case EW_ADD: kernel(EW_ADD, __VA_ARGS__); break;                                           \
        case EW_SUB: kernel(EW_SUB, __VA_ARGS__); break;                                           \
        case EW_MUL: kernel(EW_MUL, __VA_ARGS__); break;                                           \
        default: kernel(EW_DIV, __VA_ARGS__); break;                                               \
        }                                                                                          \
    } while (0)

/* o = a op b, elementwise. */
EW_KERNEL k_same(ew_op op, const float *a, const float *b, float *o, size_t len)
{
    for (size_t j = 0; j < len; j++) o[j] = ew_apply(op, a[j], b[j]);
}

/* SEG run: o = f op s, or s op f when the broadcast operand is a. */
EW_KERNEL k_seg(ew_op op, bool seg_is_a, const float *f, float s, float *o, size_t len)
{
    if (seg_is_a)
        for (size_t j = 0; j < len; j++) o[j] = ew_apply(op, s, f[j]);
    else
        for (size_t j = 0; j < len; j++) o[j] = ew_apply(op, f[j], s);
}

/* ga += gy * d(a op b)/da, elementwise. */
EW_KERNEL k_same_da(ew_op op, const float *b, const float *gy, float *ga, size_t len)
{
    for (size_t j = 0; j < len; j++) ga[j] += gy[j] * ew_dx(op, b[j]);
}

/* gb += gy * d(a op b)/db, elementwise. */
EW_KERNEL k_same_db(ew_op op, const float *a, const float *b, const float *y, const float *gy,
                    float *gb, size_t len)
{
    for (size_t j = 0; j < len; j++) gb[j] += gy[j] * ew_dy(op, a[j], b[j], y[j]);
}

/* SEG run, full operand: gf += gy * d(f op s)/df, or gy * d(s op f)/df. */
EW_KERNEL k_seg_dfull(ew_op op, bool seg_is_a, const float *f, float s, const float *y,
                      const float *gy, float *gf, size_t len)
{
    if (seg_is_a)
        for (size_t j = 0; j < len; j++) gf[j] += gy[j] * ew_dy(op, s, f[j], y[j]);
    else
        for (size_t j = 0; j < len; j++) gf[j] += gy[j] * ew_dx(op, s);
}

/* SEG run, broadcast operand: *acc += sum_j gy * d(f op s)/ds (or of s op f).
 * Eight double partials in a fixed order keep the sum vectorisable and
 * deterministic. */
EW_KERNEL k_seg_dseg(ew_op op, bool seg_is_a, const float *f, float s, const float *y,
                     const float *gy, double *acc, size_t len)
{
    double part[8] = {0};
    size_t j = 0, len8 = len & ~(size_t)7;
    if (seg_is_a) {
        for (; j < len8; j += 8)
            for (int k = 0; k < 8; k++) part[k] += (double)(gy[j + k] * ew_dx(op, f[j + k]));
        for (; j < len; j++) part[0] += (double)(gy[j] * ew_dx(op, f[j]));
    } else {
        for (; j < len8; j += 8)
            for (int k = 0; k < 8; k++)
                part[k] += (double)(gy[j + k] * ew_dy(op, f[j + k], s, y[j + k]));
        for (; j < len; j++) part[0] += (double)(gy[j] * ew_dy(op, f[j], s, y[j]));
    }
    *acc += ((part[0] + part[1]) + (part[2] + part[3])) +
            ((part[4] + part[5]) + (part[6] + part[7]));
}

/* out = a op b under plan p. a: pa, b: pb, out: po (padded shapes). */
static void ew_forward(ew_op op, const ew_plan *p, const float *a, const float *b, float *out)
{
    size_t n = p->n;
    if (p->kind == PLAN_SAME) {
        size_t ntask = (n + EW_CHUNK - 1) / EW_CHUNK;
#pragma omp parallel for schedule(static) if (n > EW_PAR_MIN)
        for (size_t t = 0; t < ntask; t++) {
            size_t j0 = t * EW_CHUNK, len = n - j0 < EW_CHUNK ? n - j0 : EW_CHUNK;
            EW_SWITCH(op, k_same, a + j0, b + j0, out + j0, len);
        }
    } else if (p->kind == PLAN_SEG) {
        const float *full = p->seg_is_a ? b : a, *seg = p->seg_is_a ? a : b;
        size_t inner = p->inner, mid = p->mid;
        size_t nchunk = (inner + EW_CHUNK - 1) / EW_CHUNK;
        size_t ntask = p->outer * mid * nchunk;
        bool seg_is_a = p->seg_is_a;
        /* Task t covers chunk (t % nchunk) of run s = t / nchunk. */
#pragma omp parallel for schedule(static) if (n > EW_PAR_MIN)
        for (size_t t = 0; t < ntask; t++) {
            size_t s = t / nchunk, j0 = (t % nchunk) * EW_CHUNK;
            size_t len = inner - j0 < EW_CHUNK ? inner - j0 : EW_CHUNK;
            size_t off = s * inner + j0;
            EW_SWITCH(op, k_seg, seg_is_a, full + off, seg[s % mid], out + off, len);
        }
    } else {
        size_t sa[4], sb[4];
        bcast_strides(p->pa, p->po, sa);
        bcast_strides(p->pb, p->po, sb);
        const int *po = p->po;
        int n01 = po[0] * po[1];
#pragma omp parallel for schedule(static) if (n > EW_PAR_MIN)
        for (int i01 = 0; i01 < n01; i01++) {
            size_t i0 = (size_t)(i01 / po[1]), i1 = (size_t)(i01 % po[1]);
            size_t o = (size_t)i01 * (size_t)po[2] * (size_t)po[3];
            for (size_t i2 = 0; i2 < (size_t)po[2]; i2++) {
                const float *ar = a + i0 * sa[0] + i1 * sa[1] + i2 * sa[2];
                const float *br = b + i0 * sb[0] + i1 * sb[1] + i2 * sb[2];
                for (size_t i3 = 0; i3 < (size_t)po[3]; i3++, o++)
                    out[o] = ew_apply(op, ar[i3 * sa[3]], br[i3 * sb[3]]);
            }
        }
    }
}

/* GENERAL plan: dst[i] (=|+=) gy[i] * d out[i] / d (side 0: a, 1: b), i over
 * the output. */
static void general_grad(ew_op op, const ew_plan *p, int side, const float *a, const float *b,
                         const float *y, const float *gy, float *dst, bool accumulate)
{
    size_t sa[4], sb[4];
    bcast_strides(p->pa, p->po, sa);
    bcast_strides(p->pb, p->po, sb);
    const int *po = p->po;
    int n01 = po[0] * po[1];
#pragma omp parallel for schedule(static) if (p->n > EW_PAR_MIN)
    for (int i01 = 0; i01 < n01; i01++) {
        size_t i0 = (size_t)(i01 / po[1]), i1 = (size_t)(i01 % po[1]);
        size_t o = (size_t)i01 * (size_t)po[2] * (size_t)po[3];
        for (size_t i2 = 0; i2 < (size_t)po[2]; i2++) {
            const float *ar = a + i0 * sa[0] + i1 * sa[1] + i2 * sa[2];
            const float *br = b + i0 * sb[0] + i1 * sb[1] + i2 * sb[2];
            for (size_t i3 = 0; i3 < (size_t)po[3]; i3++, o++) {
                float x = ar[i3 * sa[3]], z = br[i3 * sb[3]];
                float d = side == 0 ? ew_dx(op, z) : ew_dy(op, x, z, y[o]);
                if (accumulate) dst[o] += gy[o] * d;
                else dst[o] = gy[o] * d;
            }
        }
    }
}

/* gx += t summed over the dims where x is broadcast. t: po (output shape),
 * gx: px (padded operand shape, each px[d] is po[d] or 1). Each gx element
 * is summed in double by one thread, in a fixed order. */
static void sum_to_shape(const float *t, const int po[4], const int px[4], float *gx)
{
    size_t ost[4], s = 1;
    for (int d = 3; d >= 0; d--) {
        ost[d] = s;
        s *= (size_t)po[d];
    }
    size_t r[4];
    for (int d = 0; d < 4; d++) r[d] = (px[d] == 1) ? (size_t)po[d] : 1;
    size_t nx = prod(px, 0, 4), n = s;
#pragma omp parallel for schedule(static) if (n > EW_PAR_MIN && nx > 1)
    for (size_t e = 0; e < nx; e++) {
        size_t rem = e, base = 0;
        for (int d = 3; d >= 0; d--) {
            base += (rem % (size_t)px[d]) * ost[d];
            rem /= (size_t)px[d];
        }
        double acc = 0.0;
        for (size_t i0 = 0; i0 < r[0]; i0++)
            for (size_t i1 = 0; i1 < r[1]; i1++)
                for (size_t i2 = 0; i2 < r[2]; i2++) {
                    const float *row = t + base + i0 * ost[0] + i1 * ost[1] + i2 * ost[2];
                    for (size_t i3 = 0; i3 < r[3]; i3++) acc += row[i3 * ost[3]];
                }
        gx[e] += (float)acc;
    }
}

/* Backward of out = a op b (op in params.i[0]):
 *   ga += reduce_to_a(gy * d out / d a),  gb += reduce_to_b(gy * d out / d b)
 * with d(a+b) = (1, 1), d(a-b) = (1, -1), d(a*b) = (b, a),
 * d(a/b) = (1/b, -a/b^2 = -out/b). */
static sd_status ew_backward(sd_graph *g, sd_tensor *out)
{
    ew_op op = (ew_op)out->params.i[0];
    sd_tensor *A = out->src[0], *B = out->src[1];
    ew_plan p;
    ew_plan_make(A, B, &p);
    const float *a = A->data, *b = B->data, *y = out->data, *gy = out->grad;
    float *ga = A->grad, *gb = B->grad;
    size_t n = p.n;

    if (p.kind == PLAN_SAME) {
        size_t ntask = (n + EW_CHUNK - 1) / EW_CHUNK;
        /* Two passes, so that sd_mul(x, x) (ga == gb) never races. */
        if (ga) {
#pragma omp parallel for schedule(static) if (n > EW_PAR_MIN)
            for (size_t t = 0; t < ntask; t++) {
                size_t j0 = t * EW_CHUNK, len = n - j0 < EW_CHUNK ? n - j0 : EW_CHUNK;
                EW_SWITCH(op, k_same_da, b + j0, gy + j0, ga + j0, len);
            }
        }
        if (gb) {
#pragma omp parallel for schedule(static) if (n > EW_PAR_MIN)
            for (size_t t = 0; t < ntask; t++) {
                size_t j0 = t * EW_CHUNK, len = n - j0 < EW_CHUNK ? n - j0 : EW_CHUNK;
                EW_SWITCH(op, k_same_db, a + j0, b + j0, y + j0, gy + j0, gb + j0, len);
            }
        }
        return SD_OK;
    }

    if (p.kind == PLAN_SEG) {
        size_t inner = p.inner, mid = p.mid, outer = p.outer;
        const float *seg = p.seg_is_a ? a : b, *full = p.seg_is_a ? b : a;
        float *gfull = p.seg_is_a ? gb : ga, *gseg = p.seg_is_a ? ga : gb;
        bool seg_is_a = p.seg_is_a;
        /* Full operand: elementwise, with the broadcast value of its run. */
        if (gfull) {
            size_t nchunk = (inner + EW_CHUNK - 1) / EW_CHUNK;
            size_t ntask = outer * mid * nchunk;
#pragma omp parallel for schedule(static) if (n > EW_PAR_MIN)
            for (size_t t = 0; t < ntask; t++) {
                size_t s = t / nchunk, j0 = (t % nchunk) * EW_CHUNK;
                size_t len = inner - j0 < EW_CHUNK ? inner - j0 : EW_CHUNK;
                size_t off = s * inner + j0;
                EW_SWITCH(op, k_seg_dfull, seg_is_a, full + off, seg[s % mid], y + off, gy + off,
                          gfull + off, len);
            }
        }
        /* Broadcast operand: element m sums its runs out[o, m, :] over o. */
        if (gseg) {
#pragma omp parallel for schedule(static) if (n > EW_PAR_MIN && mid > 1)
            for (size_t m = 0; m < mid; m++) {
                double acc = 0.0;
                for (size_t o = 0; o < outer; o++) {
                    size_t off = (o * mid + m) * inner;
                    EW_SWITCH(op, k_seg_dseg, seg_is_a, full + off, seg[m], y + off, gy + off,
                              &acc, inner);
                }
                gseg[m] += (float)acc;
            }
        }
        return SD_OK;
    }

    /* GENERAL: a full-shaped operand accumulates directly; a broadcast one
     * goes through an arena scratch of the output's size and a sum-reduce. */
    float *grads[2] = {ga, gb};
    const int *pshape[2] = {p.pa, p.pb};
    float *scratch = NULL;
    for (int side = 0; side < 2; side++) {
        if (!grads[side]) continue;
        if (same4(pshape[side], p.po)) {
            general_grad(op, &p, side, a, b, y, gy, grads[side], true);
            continue;
        }
        if (!scratch) scratch = sd_graph_alloc_floats(g, n);
        if (!scratch) return sd_error(SD_ERR_NOMEM, "%s backward: out of memory", ew_names[op]);
        general_grad(op, &p, side, a, b, y, gy, scratch, false);
        sum_to_shape(scratch, p.po, pshape[side], grads[side]);
    }
    return SD_OK;
}

static sd_tensor *ew_binary(sd_graph *g, ew_op op, sd_tensor *a, sd_tensor *b)
{
    if (!a || !b) return NULL;
    ew_plan p;
    if (!ew_plan_make(a, b, &p)) {
        char sa[64], sb[64];
        return sd_graph_fail(g, SD_ERR_INVALID, "%s: shapes %s and %s do not broadcast",
                           ew_names[op], sd_shape_str(a, sa, sizeof sa),
                           sd_shape_str(b, sb, sizeof sb));
    }
    int shape[4];
    for (int d = 0; d < p.ndim; d++) shape[d] = p.po[4 - p.ndim + d];
    sd_tensor *srcs[2] = {a, b};
    sd_tensor *out = sd__op_output(g, ew_names[op], p.ndim, shape, ew_backward, 2, srcs);
    if (!out) return NULL;
    out->params.i[0] = (int)op;
    ew_forward(op, &p, a->data, b->data, out->data);
    return out;
}

sd_tensor *sd_add(sd_graph *g, sd_tensor *a, sd_tensor *b) { return ew_binary(g, EW_ADD, a, b); }
sd_tensor *sd_sub(sd_graph *g, sd_tensor *a, sd_tensor *b) { return ew_binary(g, EW_SUB, a, b); }
sd_tensor *sd_mul(sd_graph *g, sd_tensor *a, sd_tensor *b) { return ew_binary(g, EW_MUL, a, b); }
sd_tensor *sd_div(sd_graph *g, sd_tensor *a, sd_tensor *b) { return ew_binary(g, EW_DIV, a, b); }

/* ---- in-place scaled add ------------------------------------------------ */

/* Backward of out = (a + b) * s (out aliases a's old buffer):
 *   ga += s gy,  gb += s * (gy summed over b's broadcast runs). */
static sd_status add_into_backward(sd_graph *g, sd_tensor *out)
{
    (void)g;
    sd_tensor *A = out->src[0], *B = out->src[1];
    ew_plan p;
    ew_plan_make(A, B, &p);
    const float s = out->params.f[0], *gy = out->grad;
    float *ga = A->grad, *gb = B->grad;
    size_t n = out->numel;
    if (ga) {
#pragma omp parallel for schedule(static) if (n > EW_PAR_MIN)
        for (size_t i = 0; i < n; i++) ga[i] += s * gy[i];
    }
    if (!gb) return SD_OK;
    if (p.kind == PLAN_SAME) {
#pragma omp parallel for schedule(static) if (n > EW_PAR_MIN)
        for (size_t i = 0; i < n; i++) gb[i] += s * gy[i];
        return SD_OK;
    }
    /* SEG with b the broadcast operand: b[m] feeds out[o, m, :]. */
#pragma omp parallel for schedule(static) if (n > EW_PAR_MIN && p.mid > 1)
    for (size_t m = 0; m < p.mid; m++) {
        double acc = 0.0;
        for (size_t o = 0; o < p.outer; o++) {
            const float *run = gy + (o * p.mid + m) * p.inner;
            for (size_t j = 0; j < p.inner; j++) acc += run[j];
        }
        gb[m] += (float)(s * acc);
    }
    return SD_OK;
}

sd_tensor *sd_add_into(sd_graph *g, sd_tensor *a, sd_tensor *b, float s)
{
    if (!a || !b) return NULL;
    if (!a->op)
        return sd_graph_fail(g, SD_ERR_INVALID, "add_into: the target must be an op output, not a leaf");
    ew_plan p;
    char sa[64], sb[64];
    bool ok = ew_plan_make(a, b, &p) && p.ndim == a->ndim && p.n == a->numel &&
              (p.kind == PLAN_SAME || (p.kind == PLAN_SEG && !p.seg_is_a));
    if (!ok)
        return sd_graph_fail(g, SD_ERR_INVALID,
                           "add_into: %s must be %s's shape or broadcast to it along whole runs",
                           sd_shape_str(b, sb, sizeof sb), sd_shape_str(a, sa, sizeof sa));
    sd_tensor *out = sd__op_view(g, "add_into", a->ndim, a->shape, a->data, add_into_backward, 2,
                                 (sd_tensor *[]){a, b});
    if (!out) return NULL;
    out->params.f[0] = s;
    float *y = out->data;
    const float *bv = b->data;
    size_t n = out->numel;
    /* (a + b) * s in that order, so the result equals sd_scale(sd_add(a, b), s). */
    if (p.kind == PLAN_SAME) {
#pragma omp parallel for schedule(static) if (n > EW_PAR_MIN)
        for (size_t i = 0; i < n; i++) y[i] = (y[i] + bv[i]) * s;
    } else {
        size_t runs = p.outer * p.mid;
#pragma omp parallel for schedule(static) if (n > EW_PAR_MIN)
        for (size_t r = 0; r < runs; r++) {
            float v = bv[r % p.mid], *run = y + r * p.inner;
            for (size_t j = 0; j < p.inner; j++) run[j] = (run[j] + v) * s;
        }
    }
    return out;
}

/* ---- scalar affine ------------------------------------------------------ */

/* Backward of out = a * s + c: ga += gy * s. */
static sd_status affine_backward(sd_graph *g, sd_tensor *out)
{
    (void)g;
    sd_tensor *A = out->src[0];
    if (!A->grad) return SD_OK;
    float s = out->params.f[0], *ga = A->grad;
    const float *gy = out->grad;
    size_t n = out->numel;
#pragma omp parallel for schedule(static) if (n > EW_PAR_MIN)
    for (size_t i = 0; i < n; i++) ga[i] += gy[i] * s;
    return SD_OK;
}

static sd_tensor *affine_impl(sd_graph *g, const char *name, sd_tensor *a, float s, float c)
{
    if (!a) return NULL;
    sd_tensor *out = sd__op_output(g, name, a->ndim, a->shape, affine_backward, 1, &a);
    if (!out) return NULL;
    out->params.f[0] = s;
    out->params.f[1] = c;
    const float *x = a->data;
    float *y = out->data;
    size_t n = a->numel;
#pragma omp parallel for schedule(static) if (n > EW_PAR_MIN)
    for (size_t i = 0; i < n; i++) y[i] = x[i] * s + c;
    return out;
}

sd_tensor *sd_affine_scalar(sd_graph *g, sd_tensor *a, float s, float c)
{
    return affine_impl(g, "affine_scalar", a, s, c);
}

sd_tensor *sd_scale(sd_graph *g, sd_tensor *a, float s)
{
    return affine_impl(g, "scale", a, s, 0.0f);
}

sd_tensor *sd_shift(sd_graph *g, sd_tensor *a, float c)
{
    return affine_impl(g, "shift", a, 1.0f, c);
}
