/* unet.c - the reference U-Net score network; see unet.h and
 * ../shared/reference-model.md for the architecture.
 *
 * Parameters are declared in the PyTorch mirror's state_dict order (module
 * registration order: fourier, temb, conv_in, down.0..L-1, mid, up.0..L-1,
 * norm_out, conv_out), so a checkpoint maps 1:1 onto the mirror. The forward
 * pass walks the decoder from the deepest level up, so the decoder blocks are
 * stored in forward order and declared in level order.
 *
 * Non-goals: attention, dropout, FIR resampling, skip rescaling variants of
 * the full NCSN++; they are not part of the reference network.
 */
#include "sd/unet.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "sd/ops.h"
#include "sd/rng.h"

/* Caps that keep every shape product far from int overflow. */
#define UNET_MAX_WIDTH 65536
#define UNET_MAX_RES 16384

sd_unet_config sd_unet_preset(const char *name, bool *ok)
{
    sd_unet_config c;
    memset(&c, 0, sizeof c);
    bool found = true;
    if (name && strcmp(name, "unet-28") == 0) {
        c = (sd_unet_config){.channels = 1, .resolution = 28, .ch = 32, .n_levels = 3,
                             .mult = {1, 2, 2}, .num_res_blocks = 2, .groups = 8};
    } else if (name && strcmp(name, "unet-32") == 0) {
        c = (sd_unet_config){.channels = 3, .resolution = 32, .ch = 64, .n_levels = 4,
                             .mult = {1, 2, 2, 2}, .num_res_blocks = 2, .groups = 8};
    } else {
        found = false;
        sd_error(SD_ERR_INVALID, "unet: unknown preset '%s' (known: unet-28, unet-32)",
                 name ? name : "(null)");
    }
    if (ok) *ok = found;
    return c;
}

sd_status sd_unet_config_check(const sd_unet_config *c)
{
    if (!c) return sd_error(SD_ERR_INVALID, "unet: NULL config");
    if (c->channels < 1 || c->channels > UNET_MAX_WIDTH)
        return sd_error(SD_ERR_INVALID, "unet: channels = %d must be in [1, %d]", c->channels,
                        UNET_MAX_WIDTH);
    if (c->resolution < 1 || c->resolution > UNET_MAX_RES)
        return sd_error(SD_ERR_INVALID, "unet: resolution = %d must be in [1, %d]", c->resolution,
                        UNET_MAX_RES);
    if (c->n_levels < 1 || c->n_levels > SD_UNET_MAX_LEVELS)
        return sd_error(SD_ERR_INVALID, "unet: n_levels = %d must be in [1, %d]", c->n_levels,
                        SD_UNET_MAX_LEVELS);
    if (c->num_res_blocks < 1 || c->num_res_blocks > SD_UNET_MAX_RES_BLOCKS)
        return sd_error(SD_ERR_INVALID, "unet: num_res_blocks = %d must be in [1, %d]",
                        c->num_res_blocks, SD_UNET_MAX_RES_BLOCKS);
    if (c->groups < 1) return sd_error(SD_ERR_INVALID, "unet: groups = %d must be >= 1", c->groups);
    if (c->ch < 1 || c->ch > UNET_MAX_WIDTH)
        return sd_error(SD_ERR_INVALID, "unet: ch = %d must be in [1, %d]", c->ch, UNET_MAX_WIDTH);
    if (c->ch % c->groups != 0)
        return sd_error(SD_ERR_INVALID, "unet: ch = %d is not a multiple of groups = %d", c->ch,
                        c->groups);
    for (int i = 0; i < c->n_levels; i++) {
        if (c->mult[i] < 1 || c->mult[i] > UNET_MAX_WIDTH / c->ch)
            return sd_error(SD_ERR_INVALID, "unet: mult[%d] = %d must be in [1, %d] for ch = %d", i,
                            c->mult[i], UNET_MAX_WIDTH / c->ch, c->ch);
        /* Every GroupNorm input is a level width or a sum of level widths. */
        if ((c->ch * c->mult[i]) % c->groups != 0)
            return sd_error(SD_ERR_INVALID,
                            "unet: level %d width ch * mult = %d is not a multiple of groups = %d",
                            i, c->ch * c->mult[i], c->groups);
    }
    int div = 1 << (c->n_levels - 1);
    if (c->resolution % div != 0)
        return sd_error(SD_ERR_INVALID,
                        "unet: resolution %d is not divisible by 2^(n_levels - 1) = %d "
                        "(each level but the last halves it)", c->resolution, div);
    return SD_OK;
}

/* ---- declaration ---------------------------------------------------------- */

/* Declare "<prefix>.<leaf>" with the given shape; -1 on failure. */
static int add(sd_params *p, const char *prefix, const char *leaf, int ndim, const int *shape)
{
    char name[SD_PARAM_NAME_MAX];
    int len = snprintf(name, sizeof name, "%s.%s", prefix, leaf);
    if (len < 0 || (size_t)len >= sizeof name) {
        sd_error(SD_ERR_INVALID, "unet: parameter name '%s.%s' too long", prefix, leaf);
        return -1;
    }
    return sd_params_add(p, name, ndim, shape);
}

/* Conv2d(cin -> cout, k x k): weight [cout, cin, k, k], bias [cout]. */
static bool add_conv(sd_params *p, const char *prefix, int cout, int cin, int k, int *w, int *b)
{
    *w = add(p, prefix, "weight", 4, (int[]){cout, cin, k, k});
    *b = add(p, prefix, "bias", 1, (int[]){cout});
    return *w >= 0 && *b >= 0;
}

/* Linear(in -> out): weight [out, in], bias [out]. */
static bool add_linear(sd_params *p, const char *prefix, int out, int in, int *w, int *b)
{
    *w = add(p, prefix, "weight", 2, (int[]){out, in});
    *b = add(p, prefix, "bias", 1, (int[]){out});
    return *w >= 0 && *b >= 0;
}

/* GroupNorm affine: weight [c], bias [c]. */
static bool add_norm(sd_params *p, const char *prefix, int c, int *w, int *b)
{
    *w = add(p, prefix, "weight", 1, (int[]){c});
    *b = add(p, prefix, "bias", 1, (int[]){c});
    return *w >= 0 && *b >= 0;
}

/* A ResBlock's parameters in the mirror's registration order:
 * norm1, conv1, temb_proj, norm2, conv2, skip (only if cin != cout). */
static bool add_block(sd_params *p, const char *prefix, int tdim, sd_unet_block *b)
{
    char sub[SD_PARAM_NAME_MAX];
#define SUB(leaf) (snprintf(sub, sizeof sub, "%s.%s", prefix, leaf), sub)
    bool ok = add_norm(p, SUB("norm1"), b->cin, &b->norm1_w, &b->norm1_b) &&
              add_conv(p, SUB("conv1"), b->cout, b->cin, 3, &b->conv1_w, &b->conv1_b) &&
              add_linear(p, SUB("temb_proj"), b->cout, tdim, &b->temb_w, &b->temb_b) &&
              add_norm(p, SUB("norm2"), b->cout, &b->norm2_w, &b->norm2_b) &&
              add_conv(p, SUB("conv2"), b->cout, b->cout, 3, &b->conv2_w, &b->conv2_b);
    b->skip_w = b->skip_b = -1;
    if (ok && b->cin != b->cout) ok = add_conv(p, SUB("skip"), b->cout, b->cin, 1, &b->skip_w, &b->skip_b);
#undef SUB
    return ok;
}

/* Index of decoder block j of level i in forward order. */
static int dec_index(const sd_unet_config *c, int i, int j)
{
    return c->n_levels * c->num_res_blocks + 2 + (c->n_levels - 1 - i) * (c->num_res_blocks + 1) + j;
}

sd_status sd_unet_declare(const sd_unet_config *cfg, sd_params *p, sd_unet *net)
{
    sd_status st = sd_unet_config_check(cfg);
    if (st != SD_OK) return st;
    if (!p || !net) return sd_error(SD_ERR_INVALID, "unet: NULL params or net");
    if (p->finalized) return sd_error(SD_ERR_INVALID, "unet: params already finalized");
    memset(net, 0, sizeof *net);
    net->cfg = *cfg;
    const int L = cfg->n_levels, R = cfg->num_res_blocks, ch = cfg->ch, tdim = 4 * ch;

    /* Channel plan, in forward order. The stack mirrors the encoder's hs. */
    int stack[1 + SD_UNET_MAX_LEVELS * (SD_UNET_MAX_RES_BLOCKS + 1)];
    int ns = 0, cur = ch, nb = 0;
    stack[ns++] = cur;
    for (int i = 0; i < L; i++) {
        for (int j = 0; j < R; j++) {
            net->blocks[nb++] = (sd_unet_block){.cin = cur, .cout = ch * cfg->mult[i]};
            cur = ch * cfg->mult[i];
            stack[ns++] = cur;
        }
        if (i != L - 1) stack[ns++] = cur;
    }
    for (int j = 0; j < 2; j++) net->blocks[nb++] = (sd_unet_block){.cin = cur, .cout = cur};
    for (int i = L - 1; i >= 0; i--) {
        for (int j = 0; j <= R; j++) {
            int skip = stack[--ns];
            net->blocks[nb++] = (sd_unet_block){.cin = cur + skip, .cout = ch * cfg->mult[i]};
            cur = ch * cfg->mult[i];
        }
    }
    net->n_blocks = nb;

    /* Declaration, in state_dict order. */
    char pre[SD_PARAM_NAME_MAX];
    bool ok = sd_fourier_declare(p, "fourier", &net->fourier) == SD_OK &&
              add_linear(p, "temb.fc1", tdim, SD_FOURIER_DIM, &net->fc1_w, &net->fc1_b) &&
              add_linear(p, "temb.fc2", tdim, tdim, &net->fc2_w, &net->fc2_b) &&
              add_conv(p, "conv_in", ch, cfg->channels, 3, &net->conv_in_w, &net->conv_in_b);
    for (int i = 0; ok && i < L; i++) {
        for (int j = 0; ok && j < R; j++) {
            snprintf(pre, sizeof pre, "down.%d.block.%d", i, j);
            ok = add_block(p, pre, tdim, &net->blocks[i * R + j]);
        }
        net->down_w[i] = net->down_b[i] = -1;
        if (ok && i != L - 1) {
            snprintf(pre, sizeof pre, "down.%d.downsample", i);
            int c = ch * cfg->mult[i];
            ok = add_conv(p, pre, c, c, 3, &net->down_w[i], &net->down_b[i]);
        }
    }
    for (int j = 0; ok && j < 2; j++) {
        snprintf(pre, sizeof pre, "mid.%d", j);
        ok = add_block(p, pre, tdim, &net->blocks[L * R + j]);
    }
    for (int i = 0; ok && i < L; i++) {
        for (int j = 0; ok && j <= R; j++) {
            snprintf(pre, sizeof pre, "up.%d.block.%d", i, j);
            ok = add_block(p, pre, tdim, &net->blocks[dec_index(cfg, i, j)]);
        }
        net->up_w[i] = net->up_b[i] = -1;
        if (ok && i != 0) {
            snprintf(pre, sizeof pre, "up.%d.upsample", i);
            int c = ch * cfg->mult[i];
            ok = add_conv(p, pre, c, c, 3, &net->up_w[i], &net->up_b[i]);
        }
    }
    /* The decoder ends at level 0's width (ch when mult[0] = 1, as in the
     * reference, whose text says GroupNorm(8, ch)). */
    int cout0 = ch * cfg->mult[0];
    ok = ok && add_norm(p, "norm_out", cout0, &net->norm_out_w, &net->norm_out_b) &&
         add_conv(p, "conv_out", cfg->channels, cout0, 3, &net->conv_out_w, &net->conv_out_b);
    return ok ? SD_OK : SD_ERR_INVALID;
}

/* ---- initialisation ------------------------------------------------------- */

/* PyTorch's Linear/Conv2d reset_parameters: kaiming_uniform(a = sqrt(5))
 * gives bound sqrt(6 / ((1 + 5) fan_in)) = 1 / sqrt(fan_in) for the weight,
 * and the bias uses the same bound. fan_in = in features x kernel area. */
static void init_affine(sd_params *p, int w, int b, sd_rng *rng)
{
    const sd_param *it = &p->items[w];
    size_t fan_in = it->numel / (size_t)it->shape[0];
    float bound = 1.0f / sqrtf((float)fan_in);
    sd_params_init_uniform(p, w, rng, bound);
    sd_params_init_uniform(p, b, rng, bound);
}

static void init_norm(sd_params *p, int w, int b)
{
    sd_params_init_const(p, w, 1.0f);
    sd_params_init_const(p, b, 0.0f);
}

static void init_block(sd_params *p, const sd_unet_block *b, sd_rng *rng)
{
    init_norm(p, b->norm1_w, b->norm1_b);
    init_affine(p, b->conv1_w, b->conv1_b, rng);
    init_affine(p, b->temb_w, b->temb_b, rng);
    init_norm(p, b->norm2_w, b->norm2_b);
    init_affine(p, b->conv2_w, b->conv2_b, rng);
    if (b->skip_w >= 0) init_affine(p, b->skip_w, b->skip_b, rng);
}

void sd_unet_init(const sd_unet *net, sd_params *p, sd_rng *rng)
{
    const sd_unet_config *c = &net->cfg;
    const int L = c->n_levels, R = c->num_res_blocks;
    sd_fourier_init(&net->fourier, p, rng);
    init_affine(p, net->fc1_w, net->fc1_b, rng);
    init_affine(p, net->fc2_w, net->fc2_b, rng);
    init_affine(p, net->conv_in_w, net->conv_in_b, rng);
    for (int i = 0; i < L; i++) {
        for (int j = 0; j < R; j++) init_block(p, &net->blocks[i * R + j], rng);
        if (net->down_w[i] >= 0) init_affine(p, net->down_w[i], net->down_b[i], rng);
    }
    for (int j = 0; j < 2; j++) init_block(p, &net->blocks[L * R + j], rng);
    for (int i = 0; i < L; i++) {
        for (int j = 0; j <= R; j++) init_block(p, &net->blocks[dec_index(c, i, j)], rng);
        if (net->up_w[i] >= 0) init_affine(p, net->up_w[i], net->up_b[i], rng);
    }
    init_norm(p, net->norm_out_w, net->norm_out_b);
    init_affine(p, net->conv_out_w, net->conv_out_b, rng);
}

/* ---- forward -------------------------------------------------------------- */

#define P(idx) sd_params_tensor(g, p, (idx))

/* ResBlock: x [N, cin, H, W], temb_act = SiLU(temb) [N, 4 ch] -> [N, cout, H, W].
 *   h = conv1(SiLU(GN(x))) + temb_proj(SiLU(temb)) broadcast over H, W
 *   h = conv2(SiLU(GN(h)));  out = (skip(x) + h) / sqrt(2) */
static sd_tensor *resblock(const sd_unet *net, sd_params *p, sd_graph *g, const sd_unet_block *b,
                           sd_tensor *x, sd_tensor *temb_act)
{
    if (!x) return NULL;
    const int G = net->cfg.groups;
    /* GN + SiLU + conv fused: the activation is recomputed in backward. */
    sd_tensor *h = sd_group_norm_silu_conv2d(g, x, G, P(b->norm1_w), P(b->norm1_b), SD_UNET_GN_EPS,
                                             P(b->conv1_w), P(b->conv1_b), 1, 1);
    sd_tensor *t = sd_linear(g, temb_act, P(b->temb_w), P(b->temb_b));
    t = sd_reshape(g, t, 4, (int[]){x->shape[0], b->cout, 1, 1});
    h = sd_add_into(g, h, t, 1.0f); /* conv1's output is read by no backward */
    h = sd_group_norm_silu_conv2d(g, h, G, P(b->norm2_w), P(b->norm2_b), SD_UNET_GN_EPS,
                                  P(b->conv2_w), P(b->conv2_b), 1, 1);
    sd_tensor *skip = b->skip_w >= 0 ? sd_conv2d(g, x, P(b->skip_w), P(b->skip_b), 1, 0) : x;
    /* The mirror writes (skip + h) * (1 / sqrt(2)) with the same float factor;
     * computed in conv2's output buffer (x is still read by GN1's backward). */
    return sd_add_into(g, h, skip, (float)(1.0 / sqrt(2.0)));
}

sd_tensor *sd_unet_forward(const sd_unet *net, sd_params *p, sd_graph *g, sd_tensor *x,
                           const float *cond, const float *sigma)
{
    if (!x) return NULL;
    const sd_unet_config *c = &net->cfg;
    const int L = c->n_levels, R = c->num_res_blocks;
    char sb[64];
    if (x->ndim != 4 || x->shape[1] != c->channels || x->shape[2] != c->resolution ||
        x->shape[3] != c->resolution)
        return sd_graph_fail(g, SD_ERR_INVALID, "unet: x has shape %s, expected [N, %d, %d, %d]",
                           sd_shape_str(x, sb, sizeof sb), c->channels, c->resolution,
                           c->resolution);
    if (!cond || !sigma) return sd_graph_fail(g, SD_ERR_INVALID, "unet: NULL cond or sigma");
    const int n = x->shape[0];
    /* sigma as [N, 1, 1, 1] for the per-sample division (not differentiated). */
    sd_tensor *sig = sd_tensor_new(g, 4, (int[]){n, 1, 1, 1});
    if (!sig) return NULL;
    for (int i = 0; i < n; i++) {
        if (!(sigma[i] > 0.0f) || !isfinite(sigma[i]))
            return sd_graph_fail(g, SD_ERR_INVALID, "unet: sigma[%d] = %g must be positive and finite",
                               i, (double)sigma[i]);
        sig->data[i] = sigma[i];
    }

    /* temb = fc2(SiLU(fc1(e0))); every block uses SiLU(temb). */
    sd_tensor *e0 = sd_fourier_embed(&net->fourier, p, g, cond, n);
    sd_tensor *temb = sd_linear(g, e0, P(net->fc1_w), P(net->fc1_b));
    temb = sd_linear(g, sd_silu(g, temb), P(net->fc2_w), P(net->fc2_b));
    sd_tensor *tact = sd_silu(g, temb);

    sd_tensor *hs[1 + SD_UNET_MAX_LEVELS * (SD_UNET_MAX_RES_BLOCKS + 1)];
    int nh = 0, nb = 0;
    sd_tensor *h = sd_conv2d(g, x, P(net->conv_in_w), P(net->conv_in_b), 1, 1);
    hs[nh++] = h;
    for (int i = 0; i < L; i++) {
        for (int j = 0; j < R; j++) {
            h = resblock(net, p, g, &net->blocks[nb++], h, tact);
            hs[nh++] = h;
        }
        if (i != L - 1) {
            h = sd_conv2d(g, h, P(net->down_w[i]), P(net->down_b[i]), 2, 1);
            hs[nh++] = h;
        }
    }
    h = resblock(net, p, g, &net->blocks[nb++], h, tact);
    h = resblock(net, p, g, &net->blocks[nb++], h, tact);
    for (int i = L - 1; i >= 0; i--) {
        for (int j = 0; j <= R; j++) {
            h = sd_concat_channels(g, h, hs[--nh]);
            h = resblock(net, p, g, &net->blocks[nb++], h, tact);
        }
        if (i != 0) h = sd_conv2d(g, sd_upsample2x(g, h), P(net->up_w[i]), P(net->up_b[i]), 1, 1);
    }
    h = sd_group_norm_silu_conv2d(g, h, c->groups, P(net->norm_out_w), P(net->norm_out_b),
                                  SD_UNET_GN_EPS, P(net->conv_out_w), P(net->conv_out_b), 1, 1);
    return sd_div(g, h, sig);
}
