/* ops_fused.c - GroupNorm + SiLU + conv2d as one node that recomputes the
 * normalised activation in backward instead of keeping it.
 *
 * In a U-Net ResBlock every convolution reads SiLU(GroupNorm(h)) (Ho et al.
 * 2020; reference-model.md). Kept as two nodes, that activation is stored for
 * the convolution's weight gradient: about a third of a training step's
 * memory. Here the forward computes it into scratch that is rewound as soon
 * as the convolution has read it, and the backward recomputes it from h and
 * the saved per-(sample, group) statistics (one cheap elementwise pass, ~2%
 * of the step) before running the two ops' backward kernels:
 *
 *     a = SiLU(GN(h)) (scratch);  y = conv(a, w) + b
 *     backward: a again; da, dw, db = conv'(a, w, dy); dh, dgamma, dbeta = GN'(h, da)
 *
 * Results equal sd_conv2d(sd_group_norm_silu(h)) bit for bit (same kernels,
 * same statistics). Activation checkpointing in the sense of Chen et al.
 * 2016, "Training Deep Nets with Sublinear Memory Cost", for one cheap op. */
#include "ops/ops_internal.h"
#include "sd/ops.h"
#include "core/graph_internal.h"

#include <string.h>

enum { FP_GROUPS = 0, FP_STRIDE = 1, FP_PAD = 2, FP_EPS = 3 };

/* The activation tensor a (shape of h) around scratch data. */
static sd_tensor activation_of(const sd_tensor *h, float *data, float *grad)
{
    sd_tensor a = {.ndim = h->ndim, .numel = h->numel, .data = data, .grad = grad};
    memcpy(a.shape, h->shape, sizeof a.shape);
    return a;
}

static sd_status gn_silu_conv2d_backward(sd_graph *g, sd_tensor *out)
{
    sd_tensor *h = out->src[0], *gamma = out->src[1], *beta = out->src[2];
    sd_tensor *w = out->src[3], *b = out->src[4];
    const int groups = out->params.i[FP_GROUPS];
    const bool need_da = h->grad || (gamma && gamma->grad) || (beta && beta->grad);
    sd_arena_mark mark = sd__arena_mark(g);
    float *a = sd_graph_alloc_floats(g, h->numel);
    float *da = need_da ? sd_graph_alloc_floats(g, h->numel) : NULL;
    if (!a || (need_da && !da))
        return sd_error(SD_ERR_NOMEM, "group_norm_silu_conv2d backward: out of memory for scratch");
    sd__gn_silu_forward_into(h, groups, gamma, beta, out->params.f[FP_EPS], a, NULL);
    if (da) memset(da, 0, h->numel * sizeof(float));
    sd_tensor at = activation_of(h, a, da);
    sd_status st = sd__conv2d_backward_from(g, &at, w, b, out->params.i[FP_STRIDE],
                                            out->params.i[FP_PAD], out->grad);
    if (st == SD_OK && need_da)
        st = sd__gn_silu_backward_from(g, h, gamma, beta, groups, out->saved, da);
    sd__arena_rewind(g, mark);
    return st;
}

sd_tensor *sd_group_norm_silu_conv2d(sd_graph *g, sd_tensor *h, int groups, sd_tensor *gamma,
                                     sd_tensor *beta, float eps, sd_tensor *w, sd_tensor *b,
                                     int stride, int pad)
{
    static const char op[] = "group_norm_silu_conv2d";
    if (!h || !w) return NULL;
    if (!sd__gn_check(g, op, h, groups, gamma, beta, eps)) return NULL;
    if (!sd__conv2d_check(g, h, w, b, stride, pad)) return NULL;
    int shape[4];
    sd__conv2d_out_shape(h, w, stride, pad, shape);
    sd_tensor *out = sd__op_output(g, op, 4, shape, gn_silu_conv2d_backward, 5,
                                   (sd_tensor *[]){h, gamma, beta, w, b});
    if (!out) return NULL;
    void *stats = NULL;
    if (sd__recorded(out)) {
        stats = sd_graph_alloc(g, sd__gn_stats_bytes(h, groups));
        if (!stats) return sd_graph_fail(g, SD_ERR_NOMEM, "%s: out of memory for statistics", op);
        out->saved = stats;
        out->params.i[FP_GROUPS] = groups;
        out->params.i[FP_STRIDE] = stride;
        out->params.i[FP_PAD] = pad;
        out->params.f[FP_EPS] = eps;
    }
    sd_arena_mark mark = sd__arena_mark(g);
    float *a = sd_graph_alloc_floats(g, h->numel);
    if (!a) return sd_graph_fail(g, SD_ERR_NOMEM, "%s: out of memory for scratch", op);
    sd__gn_silu_forward_into(h, groups, gamma, beta, eps, a, stats);
    sd_tensor at = activation_of(h, a, NULL);
    sd_status st = sd__conv2d_forward_into(g, &at, w, b, stride, pad, out->data);
    sd__arena_rewind(g, mark);
    if (st != SD_OK) return sd_graph_fail(g, st, "%s", sd_error_message());
    return out;
}
