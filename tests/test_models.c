/* test_models.c - the reference score networks (models/unet.c, models/mlp.c,
 * models/fourier.c): output shapes of both presets, parameter counts from the
 * architecture formula, a double-precision reference forward written from
 * ../shared/reference-model.md that looks every parameter up by name,
 * finite-difference gradients w.r.t. x and a sample of parameters,
 * determinism, per-sample independence, and config/input errors.
 * (The number-for-number comparison with PyTorch is
 * tests/crosscheck/crosscheck_models.py.) */
#include <check.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gradcheck.h"
#include "sd/mlp.h"
#include "sd/ops.h"
#include "sd/params.h"
#include "sd/rng.h"
#include "sd/unet.h"

/* The tiny U-Net of the gradient checks: 2 levels, 1 block, 2 groups. */
static const sd_unet_config TINY = {.channels = 1, .resolution = 8, .ch = 8, .n_levels = 2,
                                    .mult = {1, 2}, .num_res_blocks = 1, .groups = 2};

static sd_params *make_unet(const sd_unet_config *cfg, sd_unet *net, uint64_t seed)
{
    sd_params *p = sd_params_new();
    ck_assert_ptr_nonnull(p);
    ck_assert_msg(sd_unet_declare(cfg, p, net) == SD_OK, "%s", sd_error_message());
    ck_assert_int_eq(sd_params_finalize(p), SD_OK);
    sd_rng rng;
    sd_rng_init(&rng, seed, SD_STREAM_INIT);
    sd_unet_init(net, p, &rng);
    return p;
}

static sd_params *make_mlp(const sd_mlp_config *cfg, sd_mlp *net, uint64_t seed)
{
    sd_params *p = sd_params_new();
    ck_assert_ptr_nonnull(p);
    ck_assert_msg(sd_mlp_declare(cfg, p, net) == SD_OK, "%s", sd_error_message());
    ck_assert_int_eq(sd_params_finalize(p), SD_OK);
    sd_rng rng;
    sd_rng_init(&rng, seed, SD_STREAM_INIT);
    sd_mlp_init(net, p, &rng);
    return p;
}

static void fill_normal(float *x, size_t n, uint64_t seed)
{
    sd_rng rng;
    sd_rng_init(&rng, seed, SD_STREAM_DATA);
    sd_rng_fill_normal(&rng, x, n, 0.0f, 1.0f);
}

/* ---- parameter counts from the architecture formula --------------------- */

/* ResBlock(cin, cout) with time-embedding width tdim: two GroupNorms, two
 * 3x3 convs, the temb projection, and a 1x1 skip conv when cin != cout. */
static size_t block_params(size_t cin, size_t cout, size_t tdim)
{
    size_t n = 2 * cin + (9 * cin * cout + cout) + (tdim * cout + cout) + 2 * cout +
               (9 * cout * cout + cout);
    if (cin != cout) n += cin * cout + cout;
    return n;
}

static size_t unet_formula(const sd_unet_config *c)
{
    size_t ch = (size_t)c->ch, tdim = 4 * ch, C = (size_t)c->channels;
    size_t L = (size_t)c->n_levels, R = (size_t)c->num_res_blocks;
    size_t n = (32 * tdim + tdim) + (tdim * tdim + tdim) + (9 * C * ch + ch);
    /* Widths of the encoder's saved activations, popped by the decoder. */
    size_t skips[80], ns = 0, cur = ch;
    skips[ns++] = ch;
    for (size_t i = 0; i < L; i++) {
        size_t w = ch * (size_t)c->mult[i];
        for (size_t j = 0; j < R; j++) {
            n += block_params(cur, w, tdim);
            cur = w;
            skips[ns++] = w;
        }
        if (i + 1 < L) {
            n += 9 * w * w + w; /* stride-2 conv */
            skips[ns++] = w;
        }
    }
    n += 2 * block_params(cur, cur, tdim);
    for (size_t i = L; i-- > 0;) {
        size_t w = ch * (size_t)c->mult[i];
        for (size_t j = 0; j <= R; j++) {
            n += block_params(cur + skips[--ns], w, tdim);
            cur = w;
        }
        if (i > 0) n += 9 * w * w + w; /* conv after the nearest upsampling */
    }
    ck_assert_uint_eq(ns, 0);
    n += 2 * cur + (9 * cur * C + C);
    return n;
}

START_TEST(test_param_counts)
{
    const char *names[] = {"unet-28", "unet-32"};
    for (int k = 0; k < 2; k++) {
        bool ok = false;
        sd_unet_config cfg = sd_unet_preset(names[k], &ok);
        ck_assert(ok);
        sd_unet net;
        sd_params *p = sd_params_new();
        ck_assert_int_eq(sd_unet_declare(&cfg, p, &net), SD_OK);
        size_t n = sd_params_trainable_count(p);
        printf("%s: %zu trainable parameters\n", names[k], n);
        ck_assert_uint_eq(n, unet_formula(&cfg));
        ck_assert_uint_eq(p->total, n + 16); /* + the Fourier buffer */
        int w = sd_params_find(p, "fourier.W");
        ck_assert_int_ge(w, 0);
        ck_assert(!p->items[w].trainable);
        int c1 = sd_params_find(p, "down.0.block.1.conv1.weight");
        ck_assert_int_ge(c1, 0);
        ck_assert_int_eq(p->items[c1].shape[0], cfg.ch);
        ck_assert_int_eq(p->items[c1].shape[3], 3);
        sd_params_free(p);
    }
    sd_unet net;
    sd_params *p = sd_params_new();
    ck_assert_int_eq(sd_unet_declare(&TINY, p, &net), SD_OK);
    ck_assert_uint_eq(sd_params_trainable_count(p), unet_formula(&TINY));
    sd_params_free(p);
    /* A wider first level (mult[0] = 2) changes the output head's width. */
    sd_unet_config wide = {.channels = 2, .resolution = 8, .ch = 4, .n_levels = 3,
                           .mult = {2, 1, 3}, .num_res_blocks = 2, .groups = 4};
    p = sd_params_new();
    ck_assert_int_eq(sd_unet_declare(&wide, p, &net), SD_OK);
    ck_assert_uint_eq(sd_params_trainable_count(p), unet_formula(&wide));
    sd_params_free(p);

    sd_mlp mlp;
    sd_mlp_config mc = sd_mlp_reference(2);
    p = sd_params_new();
    ck_assert_int_eq(sd_mlp_declare(&mc, p, &mlp), SD_OK);
    size_t D = 2, H = 128;
    ck_assert_uint_eq(sd_params_trainable_count(p),
                      ((D + 32) * H + H) + 2 * (H * H + H) + (H * D + D));
    sd_params_free(p);
}
END_TEST

/* ---- shapes ---------------------------------------------------------------- */

START_TEST(test_preset_shapes)
{
    const char *names[] = {"unet-28", "unet-32"};
    sd_graph *g = sd_graph_new();
    for (int k = 0; k < 2; k++) {
        bool ok;
        sd_unet_config cfg = sd_unet_preset(names[k], &ok);
        sd_unet net;
        sd_params *p = make_unet(&cfg, &net, 7);
        sd_graph_reset(g);
        sd_graph_set_grad_enabled(g, false);
        int shape[4] = {2, cfg.channels, cfg.resolution, cfg.resolution};
        sd_tensor *x = sd_tensor_new(g, 4, shape);
        fill_normal(x->data, x->numel, 1);
        float cond[2] = {-1.0f, 2.0f}, sigma[2] = {0.36f, 7.4f};
        sd_tensor *out = sd_unet_forward(&net, p, g, x, cond, sigma);
        ck_assert_msg(out != NULL, "%s", sd_error_message());
        ck_assert_int_eq(out->ndim, 4);
        for (int d = 0; d < 4; d++) ck_assert_int_eq(out->shape[d], shape[d]);
        for (size_t i = 0; i < out->numel; i++) ck_assert(isfinite(out->data[i]));
        sd_graph_set_grad_enabled(g, true);
        sd_params_free(p);
    }
    sd_graph_free(g);
}
END_TEST

/* ---- double-precision reference forward of the U-Net ---------------------- */

/* One sample's activation: c x h x w doubles from a bump pool. */
typedef struct img {
    int c, h, w;
    double *d;
} img;

static double *pool;
static size_t pool_used, pool_cap;

static img img_new(int c, int h, int w)
{
    size_t n = (size_t)c * h * w;
    ck_assert_uint_le(pool_used + n, pool_cap);
    img r = {c, h, w, pool + pool_used};
    pool_used += n;
    memset(r.d, 0, n * sizeof(double));
    return r;
}

static sd_params *ref_p;

static const sd_param *param(const char *fmt, ...)
{
    char name[SD_PARAM_NAME_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    int idx = sd_params_find(ref_p, name);
    ck_assert_msg(idx >= 0, "parameter %s not declared", name);
    return &ref_p->items[idx];
}

static const float *pdata(const sd_param *it) { return ref_p->data + it->offset; }

/* Conv2d "<pre>.weight" [cout, cin, k, k] + bias, zero padding. */
static img ref_conv(img x, const char *pre, int stride, int pad)
{
    const sd_param *wp = param("%s.weight", pre), *bp = param("%s.bias", pre);
    int co = wp->shape[0], k = wp->shape[2];
    ck_assert_int_eq(wp->shape[1], x.c);
    int ho = (x.h + 2 * pad - k) / stride + 1, wo = (x.w + 2 * pad - k) / stride + 1;
    img y = img_new(co, ho, wo);
    const float *w = pdata(wp), *b = pdata(bp);
    for (int o = 0; o < co; o++)
        for (int i = 0; i < ho; i++)
            for (int j = 0; j < wo; j++) {
                double s = b[o];
                for (int c = 0; c < x.c; c++)
                    for (int u = 0; u < k; u++)
                        for (int v = 0; v < k; v++) {
                            int yy = i * stride - pad + u, xx = j * stride - pad + v;
                            if (yy < 0 || yy >= x.h || xx < 0 || xx >= x.w) continue;
                            s += w[((o * x.c + c) * k + u) * k + v] * x.d[(c * x.h + yy) * x.w + xx];
                        }
                y.d[(o * ho + i) * wo + j] = s;
            }
    return y;
}

static double silu(double v) { return v / (1.0 + exp(-v)); }

/* SiLU(GroupNorm(groups, c)(x)) with eps 1e-5, biased variance. */
static img ref_gn_silu(img x, const char *pre, int groups)
{
    const float *gw = pdata(param("%s.weight", pre)), *gb = pdata(param("%s.bias", pre));
    img y = img_new(x.c, x.h, x.w);
    int cg = x.c / groups, hw = x.h * x.w;
    for (int gi = 0; gi < groups; gi++) {
        double m = 0, v = 0;
        int n = cg * hw;
        for (int i = 0; i < n; i++) m += x.d[gi * n + i];
        m /= n;
        for (int i = 0; i < n; i++) v += (x.d[gi * n + i] - m) * (x.d[gi * n + i] - m);
        v /= n;
        for (int i = 0; i < n; i++) {
            int c = gi * cg + i / hw;
            y.d[gi * n + i] = silu((x.d[gi * n + i] - m) / sqrt(v + 1e-5) * gw[c] + gb[c]);
        }
    }
    return y;
}

/* Linear "<pre>" on a vector: y[o] = b[o] + sum_i w[o, i] x[i]. */
static void ref_linear(const double *x, const char *pre, double *y)
{
    const sd_param *wp = param("%s.weight", pre);
    const float *w = pdata(wp), *b = pdata(param("%s.bias", pre));
    for (int o = 0; o < wp->shape[0]; o++) {
        double s = b[o];
        for (int i = 0; i < wp->shape[1]; i++) s += w[o * wp->shape[1] + i] * x[i];
        y[o] = s;
    }
}

static img ref_resblock(img x, const char *pre, const double *tact, int groups)
{
    char sub[SD_PARAM_NAME_MAX];
    snprintf(sub, sizeof sub, "%s.norm1", pre);
    img h = ref_gn_silu(x, sub, groups);
    snprintf(sub, sizeof sub, "%s.conv1", pre);
    h = ref_conv(h, sub, 1, 1);
    double t[1024];
    snprintf(sub, sizeof sub, "%s.temb_proj", pre);
    ref_linear(tact, sub, t);
    for (int c = 0; c < h.c; c++)
        for (int i = 0; i < h.h * h.w; i++) h.d[c * h.h * h.w + i] += t[c];
    snprintf(sub, sizeof sub, "%s.norm2", pre);
    h = ref_gn_silu(h, sub, groups);
    snprintf(sub, sizeof sub, "%s.conv2", pre);
    h = ref_conv(h, sub, 1, 1);
    img skip = x;
    snprintf(sub, sizeof sub, "%s.skip.weight", pre);
    if (x.c != h.c) {
        snprintf(sub, sizeof sub, "%s.skip", pre);
        skip = ref_conv(x, sub, 1, 0);
    } else {
        ck_assert_int_lt(sd_params_find(ref_p, sub), 0);
    }
    img y = img_new(h.c, h.h, h.w);
    for (int i = 0; i < h.c * h.h * h.w; i++) y.d[i] = (skip.d[i] + h.d[i]) / sqrt(2.0);
    return y;
}

static img ref_concat(img a, img b)
{
    img y = img_new(a.c + b.c, a.h, a.w);
    memcpy(y.d, a.d, (size_t)a.c * a.h * a.w * sizeof(double));
    memcpy(y.d + (size_t)a.c * a.h * a.w, b.d, (size_t)b.c * b.h * b.w * sizeof(double));
    return y;
}

static img ref_up2(img x)
{
    img y = img_new(x.c, 2 * x.h, 2 * x.w);
    for (int c = 0; c < x.c; c++)
        for (int i = 0; i < y.h; i++)
            for (int j = 0; j < y.w; j++)
                y.d[(c * y.h + i) * y.w + j] = x.d[(c * x.h + i / 2) * x.w + j / 2];
    return y;
}

/* The network of reference-model.md for one sample x [C, H, W]. */
static img ref_unet(const sd_unet_config *cfg, const float *x, double cond, double sigma)
{
    const int L = cfg->n_levels, R = cfg->num_res_blocks, G = cfg->groups;
    const float *W = pdata(param("fourier.W"));
    double e0[32], t1[1024], temb[1024], tact[1024];
    for (int k = 0; k < 16; k++) {
        e0[k] = sin(2.0 * M_PI * W[k] * cond);
        e0[16 + k] = cos(2.0 * M_PI * W[k] * cond);
    }
    ref_linear(e0, "temb.fc1", t1);
    int tdim = 4 * cfg->ch;
    for (int i = 0; i < tdim; i++) t1[i] = silu(t1[i]);
    ref_linear(t1, "temb.fc2", temb);
    for (int i = 0; i < tdim; i++) tact[i] = silu(temb[i]);

    img in = img_new(cfg->channels, cfg->resolution, cfg->resolution);
    for (int i = 0; i < cfg->channels * cfg->resolution * cfg->resolution; i++) in.d[i] = x[i];
    char pre[SD_PARAM_NAME_MAX];
    img hs[80];
    int nh = 0;
    img h = ref_conv(in, "conv_in", 1, 1);
    hs[nh++] = h;
    for (int i = 0; i < L; i++) {
        for (int j = 0; j < R; j++) {
            snprintf(pre, sizeof pre, "down.%d.block.%d", i, j);
            h = ref_resblock(h, pre, tact, G);
            hs[nh++] = h;
        }
        if (i != L - 1) {
            snprintf(pre, sizeof pre, "down.%d.downsample", i);
            h = ref_conv(h, pre, 2, 1);
            hs[nh++] = h;
        }
    }
    h = ref_resblock(h, "mid.0", tact, G);
    h = ref_resblock(h, "mid.1", tact, G);
    for (int i = L - 1; i >= 0; i--) {
        for (int j = 0; j <= R; j++) {
            snprintf(pre, sizeof pre, "up.%d.block.%d", i, j);
            h = ref_resblock(ref_concat(h, hs[--nh]), pre, tact, G);
        }
        if (i != 0) {
            snprintf(pre, sizeof pre, "up.%d.upsample", i);
            h = ref_conv(ref_up2(h), pre, 1, 1);
        }
    }
    ck_assert_int_eq(nh, 0);
    h = ref_conv(ref_gn_silu(h, "norm_out", G), "conv_out", 1, 1);
    for (int i = 0; i < h.c * h.h * h.w; i++) h.d[i] /= sigma;
    return h;
}

static void check_unet_against_reference(const sd_unet_config *cfg, int n)
{
    sd_unet net;
    sd_params *p = make_unet(cfg, &net, 11);
    /* GroupNorm affines start at 1 / 0; perturb them so that a swapped
     * weight/bias or a wrong norm is visible. */
    sd_rng rng;
    sd_rng_init(&rng, 5, SD_STREAM_INIT);
    for (size_t i = 0; i < p->count; i++)
        if (strstr(p->items[i].name, "norm"))
            for (size_t j = 0; j < p->items[i].numel; j++)
                p->data[p->items[i].offset + j] += 0.3f * sd_rng_normal(&rng);
    sd_graph *g = sd_graph_new();
    int shape[4] = {n, cfg->channels, cfg->resolution, cfg->resolution};
    sd_tensor *x = sd_tensor_new(g, 4, shape);
    fill_normal(x->data, x->numel, 3);
    float cond[4] = {-2.3f, 0.4f, 1.9f, 0.05f}, sigma[4] = {0.1f, 1.5f, 6.7f, 1.05f};
    sd_tensor *out = sd_unet_forward(&net, p, g, x, cond, sigma);
    ck_assert_msg(out != NULL, "%s", sd_error_message());
    pool_cap = (size_t)1 << 21;
    pool = malloc(pool_cap * sizeof(double));
    ref_p = p;
    size_t per = x->numel / (size_t)n;
    for (int s = 0; s < n; s++) {
        pool_used = 0;
        img ref = ref_unet(cfg, x->data + s * per, cond[s], sigma[s]);
        ck_assert_uint_eq((size_t)ref.c * ref.h * ref.w, per);
        double mx = 0, err = 0;
        for (size_t i = 0; i < per; i++) {
            mx = fmax(mx, fabs(ref.d[i]));
            err = fmax(err, fabs(ref.d[i] - out->data[s * per + i]));
        }
        ck_assert_msg(err <= 2e-5 * mx, "sample %d: max |C - ref| = %g, max |ref| = %g", s, err,
                      mx);
    }
    free(pool);
    pool = NULL;
    sd_graph_free(g);
    sd_params_free(p);
}

START_TEST(test_unet_reference_forward)
{
    check_unet_against_reference(&TINY, 2);
    sd_unet_config wide = {.channels = 2, .resolution = 8, .ch = 4, .n_levels = 3,
                           .mult = {2, 1, 3}, .num_res_blocks = 2, .groups = 4};
    check_unet_against_reference(&wide, 3);
}
END_TEST

/* ---- MLP against a reference in double --------------------------------- */

START_TEST(test_mlp_reference_forward)
{
    sd_mlp net;
    sd_mlp_config cfg = {.dim = 3, .hidden = 20, .n_hidden_layers = 3};
    sd_params *p = make_mlp(&cfg, &net, 2);
    sd_graph *g = sd_graph_new();
    const int n = 5;
    sd_tensor *x = sd_tensor_new(g, 2, (int[]){n, 3});
    fill_normal(x->data, x->numel, 9);
    float cond[5] = {-4.6f, -1.0f, 0.0f, 0.7f, 2.3f}, sigma[5];
    for (int i = 0; i < n; i++) sigma[i] = expf(cond[i]);
    sd_tensor *out = sd_mlp_forward(&net, p, g, x, cond, sigma);
    ck_assert_msg(out != NULL, "%s", sd_error_message());
    ck_assert_int_eq(out->shape[0], n);
    ck_assert_int_eq(out->shape[1], 3);
    ref_p = p;
    const float *W = pdata(param("fourier.W"));
    for (int s = 0; s < n; s++) {
        double h[64], y[64];
        for (int d = 0; d < 3; d++) h[d] = x->data[s * 3 + d];
        for (int k = 0; k < 16; k++) {
            h[3 + k] = sin(2.0 * M_PI * W[k] * cond[s]);
            h[3 + 16 + k] = cos(2.0 * M_PI * W[k] * cond[s]);
        }
        char pre[32];
        for (int l = 0; l < 3; l++) {
            snprintf(pre, sizeof pre, "layers.%d", l);
            ref_linear(h, pre, y);
            for (int i = 0; i < 20; i++) h[i] = silu(y[i]);
        }
        ref_linear(h, "out", y);
        for (int d = 0; d < 3; d++) {
            double ref = y[d] / sigma[s];
            ck_assert_msg(fabs(out->data[s * 3 + d] - ref) <= 1e-4 * (1.0 + fabs(ref)),
                          "sample %d dim %d: %g vs %g", s, d, (double)out->data[s * 3 + d], ref);
        }
    }
    sd_graph_free(g);
    sd_params_free(p);
}
END_TEST

/* ---- gradients ------------------------------------------------------------ */

typedef struct net_ctx {
    const sd_unet *unet;
    const sd_mlp *mlp;
    sd_params *p;
    const float *cond, *sigma;
} net_ctx;

static sd_tensor *build_unet(sd_graph *g, sd_tensor **in, void *ctx)
{
    net_ctx *c = ctx;
    return sd_unet_forward(c->unet, c->p, g, in[0], c->cond, c->sigma);
}

static sd_tensor *build_mlp(sd_graph *g, sd_tensor **in, void *ctx)
{
    net_ctx *c = ctx;
    return sd_mlp_forward(c->mlp, c->p, g, in[0], c->cond, c->sigma);
}

START_TEST(test_unet_grad_x)
{
    sd_unet net;
    sd_params *p = make_unet(&TINY, &net, 3);
    float cond[2] = {-0.7f, 1.2f}, sigma[2] = {0.5f, 3.3f};
    net_ctx ctx = {.unet = &net, .p = p, .cond = cond, .sigma = sigma};
    gc_input in = {.ndim = 4, .shape = {2, 1, 8, 8}, .lo = -2.0f, .hi = 2.0f};
    gc_options opt = {.max_probe = 16};
    gc_result res = gc_check(build_unet, &ctx, 1, &in, &opt);
    GC_ASSERT(res);
    sd_params_free(p);
}
END_TEST

START_TEST(test_mlp_grad_x)
{
    sd_mlp net;
    sd_mlp_config cfg = sd_mlp_reference(2);
    sd_params *p = make_mlp(&cfg, &net, 4);
    float cond[5] = {-3.0f, -1.0f, 0.0f, 1.0f, 2.0f}, sigma[5] = {0.05f, 0.37f, 1.0f, 2.7f, 7.4f};
    net_ctx ctx = {.mlp = &net, .p = p, .cond = cond, .sigma = sigma};
    gc_input in = {.ndim = 2, .shape = {5, 2}, .lo = -2.0f, .hi = 2.0f};
    gc_result res = gc_check(build_mlp, &ctx, 1, &in, NULL);
    GC_ASSERT(res);
    sd_params_free(p);
}
END_TEST

/* L = sum(r * out) as a double, for finite differences on parameters. */
static double unet_loss(const sd_unet *net, sd_params *p, sd_graph *g, const float *x,
                        const float *r, const float *cond, const float *sigma)
{
    sd_graph_reset(g);
    sd_tensor *xt = sd_tensor_wrap(g, 4, (int[]){2, 1, 8, 8}, (float *)x, NULL);
    sd_tensor *out = sd_unet_forward(net, p, g, xt, cond, sigma);
    ck_assert_ptr_nonnull(out);
    double l = 0;
    for (size_t i = 0; i < out->numel; i++) l += (double)r[i] * out->data[i];
    return l;
}

START_TEST(test_unet_grad_params)
{
    sd_unet net;
    sd_params *p = make_unet(&TINY, &net, 5);
    float cond[2] = {0.3f, -1.1f}, sigma[2] = {0.8f, 2.2f};
    float x[128], r[128];
    fill_normal(x, 128, 21);
    fill_normal(r, 128, 22);
    sd_graph *g = sd_graph_new();
    sd_graph_reset(g);
    sd_tensor *xt = sd_tensor_wrap(g, 4, (int[]){2, 1, 8, 8}, x, NULL);
    sd_tensor *out = sd_unet_forward(&net, p, g, xt, cond, sigma);
    ck_assert_ptr_nonnull(out);
    sd_params_zero_grad(p);
    ck_assert_int_eq(sd_graph_backward(g, out, r), SD_OK);
    /* One element of a parameter of every kind and position. */
    const char *names[] = {"temb.fc1.weight",          "temb.fc2.bias",
                           "conv_in.weight",           "down.0.block.0.norm1.weight",
                           "down.0.block.0.temb_proj.weight", "down.0.downsample.weight",
                           "down.1.block.0.skip.weight", "mid.1.conv2.weight",
                           "mid.0.norm2.bias",         "up.1.block.0.conv1.weight",
                           "up.1.upsample.bias",       "up.0.block.1.skip.bias",
                           "norm_out.weight",          "conv_out.weight"};
    const double eps = 1e-2;
    for (size_t k = 0; k < sizeof names / sizeof *names; k++) {
        int idx = sd_params_find(p, names[k]);
        ck_assert_msg(idx >= 0, "%s", names[k]);
        size_t j = (k * 7) % p->items[idx].numel;
        float *v = sd_params_data(p, idx) + j;
        double analytic = sd_params_grad(p, idx)[j];
        float v0 = *v;
        *v = v0 + (float)eps;
        double lp = unet_loss(&net, p, g, x, r, cond, sigma);
        *v = v0 - (float)eps;
        double lm = unet_loss(&net, p, g, x, r, cond, sigma);
        *v = v0;
        double numeric = (lp - lm) / (2 * eps);
        ck_assert_msg(fabs(analytic - numeric) <= 1e-3 * fmax(1.0, fabs(analytic)) +
                                                      1e-2 * fabs(numeric),
                      "%s[%zu]: analytic %g numeric %g", names[k], j, analytic, numeric);
    }
    /* The Fourier frequencies are a buffer: never given a gradient. */
    int w = sd_params_find(p, "fourier.W");
    for (int k = 0; k < 16; k++) ck_assert_float_eq(sd_params_grad(p, w)[k], 0.0f);
    sd_graph_free(g);
    sd_params_free(p);
}
END_TEST

/* ---- determinism, per-sample behaviour, initialisation -------------------- */

START_TEST(test_deterministic_and_per_sample)
{
    sd_unet net;
    sd_params *p = make_unet(&TINY, &net, 8);
    sd_params *p2 = make_unet(&TINY, &net, 8);
    ck_assert_mem_eq(p->data, p2->data, p->total * sizeof(float));
    sd_params_free(p2);
    p2 = make_unet(&TINY, &net, 9);
    ck_assert(memcmp(p->data, p2->data, p->total * sizeof(float)) != 0);
    sd_params_free(p2);

    sd_graph *g = sd_graph_new();
    float x[192];
    fill_normal(x, 192, 30);
    float cond[3] = {0.2f, -0.5f, 1.4f}, sigma[3] = {1.3f, 0.6f, 4.1f};
    float first[192];
    for (int rep = 0; rep < 2; rep++) {
        sd_graph_reset(g);
        sd_tensor *xt = sd_tensor_wrap(g, 4, (int[]){3, 1, 8, 8}, x, NULL);
        sd_tensor *out = sd_unet_forward(&net, p, g, xt, cond, sigma);
        ck_assert_ptr_nonnull(out);
        if (rep == 0) memcpy(first, out->data, sizeof first);
        else ck_assert_mem_eq(first, out->data, sizeof first);
    }
    /* Samples do not interact (GroupNorm is per sample): sample 1 alone gives
     * the batch's sample 1. And the output is divided by sigma: doubling
     * sigma with the same cond halves it exactly. */
    sd_graph_reset(g);
    sd_tensor *x1 = sd_tensor_wrap(g, 4, (int[]){1, 1, 8, 8}, x + 64, NULL);
    float s2 = 2.0f * sigma[1];
    sd_tensor *o1 = sd_unet_forward(&net, p, g, x1, cond + 1, sigma + 1);
    sd_tensor *o2 = sd_unet_forward(&net, p, g, x1, cond + 1, &s2);
    ck_assert_ptr_nonnull(o1);
    ck_assert_ptr_nonnull(o2);
    for (int i = 0; i < 64; i++) {
        ck_assert_float_eq_tol(o1->data[i], first[64 + i], 1e-5f * (1.0f + fabsf(first[64 + i])));
        ck_assert_float_eq(o2->data[i], 0.5f * o1->data[i]);
    }
    sd_graph_free(g);
    sd_params_free(p);
}
END_TEST

START_TEST(test_init_like_pytorch)
{
    bool ok;
    sd_unet_config cfg = sd_unet_preset("unet-28", &ok);
    sd_unet net;
    sd_params *p = make_unet(&cfg, &net, 1);
    for (size_t i = 0; i < p->count; i++) {
        const sd_param *it = &p->items[i];
        const float *v = p->data + it->offset;
        if (strstr(it->name, "norm")) {
            float want = strstr(it->name, ".weight") ? 1.0f : 0.0f;
            for (size_t j = 0; j < it->numel; j++) ck_assert_float_eq(v[j], want);
        } else if (strcmp(it->name, "fourier.W") == 0) {
            double ss = 0;
            for (size_t j = 0; j < it->numel; j++) ss += (double)v[j] * v[j];
            double sd = sqrt(ss / 16); /* ~16 with 16 samples: loose bounds */
            ck_assert(sd > 6.0 && sd < 30.0);
        } else {
            /* weight [out, in, (k, k)]: fan_in = in * k * k; the bias shares it. */
            const sd_param *w = strstr(it->name, ".bias") ? it - 1 : it;
            double bound = 1.0 / sqrt((double)(w->numel / (size_t)w->shape[0]));
            double mx = 0;
            for (size_t j = 0; j < it->numel; j++) mx = fmax(mx, fabs(v[j]));
            ck_assert_msg(mx <= bound, "%s: max %g > bound %g", it->name, mx, bound);
            if (it->numel >= 1000) ck_assert_msg(mx > 0.95 * bound, "%s", it->name);
        }
    }
    sd_params_free(p);
}
END_TEST

START_TEST(test_fourier_embedding)
{
    sd_params *p = sd_params_new();
    sd_fourier f;
    ck_assert_int_eq(sd_fourier_declare(p, "emb", &f), SD_OK);
    ck_assert_int_eq(sd_params_finalize(p), SD_OK);
    sd_rng rng;
    sd_rng_init(&rng, 3, SD_STREAM_INIT);
    sd_fourier_init(&f, p, &rng);
    sd_graph *g = sd_graph_new();
    float c[3] = {-2.0f, 0.0f, 0.5f};
    sd_tensor *e = sd_fourier_embed(&f, p, g, c, 3);
    ck_assert_ptr_nonnull(e);
    ck_assert_int_eq(e->shape[0], 3);
    ck_assert_int_eq(e->shape[1], 32);
    ck_assert(!e->requires_grad);
    const float *W = sd_params_data(p, f.w);
    for (int i = 0; i < 3; i++)
        for (int k = 0; k < 16; k++) {
            double a = 2.0 * M_PI * W[k] * c[i];
            ck_assert_double_eq_tol(e->data[i * 32 + k], sin(a), 1e-4);
            ck_assert_double_eq_tol(e->data[i * 32 + 16 + k], cos(a), 1e-4);
        }
    ck_assert_ptr_null(sd_fourier_embed(&f, p, g, c, 0));
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "fourier"));
    float bad = NAN;
    ck_assert_ptr_null(sd_fourier_embed(&f, p, g, &bad, 1));
    sd_graph_free(g);
    sd_params_free(p);
}
END_TEST

/* ---- errors ----------------------------------------------------------------- */

static void expect_bad_unet(sd_unet_config c, const char *needle)
{
    sd_params *p = sd_params_new();
    sd_unet net;
    ck_assert_int_eq(sd_unet_declare(&c, p, &net), SD_ERR_INVALID);
    ck_assert_msg(strstr(sd_error_message(), needle) != NULL, "message '%s' lacks '%s'",
                  sd_error_message(), needle);
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "unet"));
    ck_assert_uint_eq(p->count, 0); /* nothing declared */
    sd_params_free(p);
}

START_TEST(test_errors)
{
    bool ok = true;
    sd_unet_preset("unet-64", &ok);
    ck_assert(!ok);
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "unknown preset 'unet-64'"));

    sd_unet_config c = TINY;
    c.resolution = 6;
    c.n_levels = 3;
    c.mult[2] = 2;
    expect_bad_unet(c, "not divisible by 2^(n_levels - 1) = 4");
    c = TINY;
    c.groups = 3;
    expect_bad_unet(c, "groups = 3");
    c = TINY;
    c.mult[1] = 0;
    expect_bad_unet(c, "mult[1]");
    c = TINY;
    c.n_levels = 0;
    expect_bad_unet(c, "n_levels = 0");
    c = TINY;
    c.n_levels = SD_UNET_MAX_LEVELS + 1;
    expect_bad_unet(c, "n_levels");
    c = TINY;
    c.num_res_blocks = 0;
    expect_bad_unet(c, "num_res_blocks");
    c = TINY;
    c.channels = 0;
    expect_bad_unet(c, "channels");
    c = TINY;
    c.ch = 0;
    expect_bad_unet(c, "ch = 0");

    /* Forward: wrong input shape, bad sigma, NULL input. */
    sd_unet net;
    sd_params *p = make_unet(&TINY, &net, 1);
    sd_graph *g = sd_graph_new();
    float cond[2] = {0, 0}, sigma[2] = {1, 1}, zero[2] = {1, 0};
    sd_tensor *x = sd_tensor_zeros(g, 4, (int[]){2, 1, 8, 6});
    ck_assert_ptr_null(sd_unet_forward(&net, p, g, x, cond, sigma));
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "unet: x has shape [2, 1, 8, 6]"));
    sd_graph_reset(g);
    x = sd_tensor_zeros(g, 4, (int[]){2, 1, 8, 8});
    ck_assert_ptr_null(sd_unet_forward(&net, p, g, x, cond, zero));
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "sigma[1]"));
    ck_assert_ptr_null(sd_unet_forward(&net, p, g, x, NULL, sigma));
    ck_assert_ptr_null(sd_unet_forward(&net, p, g, NULL, cond, sigma));

    sd_mlp mlp;
    sd_mlp_config mc = {.dim = 0, .hidden = 128, .n_hidden_layers = 3};
    sd_params *q = sd_params_new();
    ck_assert_int_eq(sd_mlp_declare(&mc, q, &mlp), SD_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "mlp: dim = 0"));
    mc = (sd_mlp_config){.dim = 2, .hidden = 128, .n_hidden_layers = 0};
    ck_assert_int_eq(sd_mlp_declare(&mc, q, &mlp), SD_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "n_hidden_layers"));
    sd_params_free(q);
    mc = sd_mlp_reference(2);
    q = make_mlp(&mc, &mlp, 1);
    sd_graph_reset(g);
    x = sd_tensor_zeros(g, 2, (int[]){2, 3});
    ck_assert_ptr_null(sd_mlp_forward(&mlp, q, g, x, cond, sigma));
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "mlp: x has shape [2, 3]"));
    sd_params_free(q);
    sd_graph_free(g);
    sd_params_free(p);
}
END_TEST

int main(void)
{
    sd_threads_init(0);
    Suite *s = suite_create("models");
    TCase *tc = tcase_create("models");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_param_counts);
    tcase_add_test(tc, test_preset_shapes);
    tcase_add_test(tc, test_unet_reference_forward);
    tcase_add_test(tc, test_mlp_reference_forward);
    tcase_add_test(tc, test_unet_grad_x);
    tcase_add_test(tc, test_mlp_grad_x);
    tcase_add_test(tc, test_unet_grad_params);
    tcase_add_test(tc, test_deterministic_and_per_sample);
    tcase_add_test(tc, test_init_like_pytorch);
    tcase_add_test(tc, test_fourier_embedding);
    tcase_add_test(tc, test_errors);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
