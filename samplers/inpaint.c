/* inpaint.c - inpainting and colorization by replacement (Song et al. 2021,
 * "Score-Based Generative Modeling through SDEs", App. I.2).
 *
 * The known part of each sample is a linear projection P x of the image: a
 * pixel mask for inpainting, or for colorization the first axis of an
 * orthogonal colour transform, u = (1, 1, 1)/sqrt(3) per pixel (the
 * reference code's decoupling matrix M has this first column; its other two
 * columns span the chroma plane). After every sampler update at time t,
 *     x <- x - P x + P (A(t) y + Sigma(t)^{1/2} z),    z ~ N(0, I),
 * i.e. the known part is replaced by a fresh draw of the forward process from
 * the data y, and at the end by the data itself. Because the transform is
 * orthogonal and the noise isotropic, replacing the decoupled coordinate u^T x
 * is the same as replacing the per-pixel channel mean, which is what
 * colorize_constrain does (no explicit M needed): P x = (u u^T x) = mean(x) 1.
 * The forward draw uses the family's operators on the whole image, and its
 * noise comes from each sample's own stream.
 *
 * Works with the langevin and pc samplers (the ODE has no noise to hold the
 * known part to the forward process, so it is refused).
 */
#include <string.h>

#include "sd/sampler.h"

typedef struct replace_ctx {
    const float *data; /* [N, D]: the known values (colorization: gray in all channels) */
    const float *mask; /* [N, D] or NULL (colorization) */
    float *gray3;      /* colorization: owned replicated gray images */
    int C;
    size_t HW;
} replace_ctx;

/* target = A(t) y + Sigma^{1/2} z for the batch's samples (into b->tmp), or y. */
static sd_status forward_draw(sd__batch *b, const float *y, double t)
{
    size_t total = b->n * b->D;
    if (t < 0) {
        memcpy(b->tmp, y, total * sizeof(float));
        return SD_OK;
    }
    const sd_sde *sde = &b->sc->sde;
    sd__noise(b, b->z);
    sd_status st = sd_sde_apply_mean(sde, t, y, b->tmp, b->n, b->D);
    /* s is free between updates */
    if (st == SD_OK) st = sd_sde_apply_std(sde, t, b->z, b->s, b->n, b->D);
    for (size_t j = 0; j < total && st == SD_OK; j++) b->tmp[j] += b->s[j];
    return st;
}

static sd_status inpaint_constrain(void *ctx, sd__batch *b, double t)
{
    replace_ctx *r = ctx;
    size_t off = b->prog.first * b->D, total = b->n * b->D;
    sd_status st = forward_draw(b, r->data + off, t);
    if (st != SD_OK) return st;
    const float *m = r->mask + off;
    for (size_t j = 0; j < total; j++) b->x[j] += m[j] * (b->tmp[j] - b->x[j]);
    return SD_OK;
}

static sd_status colorize_constrain(void *ctx, sd__batch *b, double t)
{
    replace_ctx *r = ctx;
    size_t off = b->prog.first * b->D, HW = r->HW;
    sd_status st = forward_draw(b, r->data + off, t);
    if (st != SD_OK) return st;
    for (size_t i = 0; i < b->n; i++) {
        float *x = b->x + i * b->D;
        const float *f = b->tmp + i * b->D;
        for (size_t p = 0; p < HW; p++) {
            /* shift every channel by mean(f) - mean(x): replaces u^T x only */
            float d = 0.0f;
            for (int c = 0; c < r->C; c++) d += f[c * HW + p] - x[c * HW + p];
            d /= (float)r->C;
            for (int c = 0; c < r->C; c++) x[c * HW + p] += d;
        }
    }
    return SD_OK;
}

static sd_status check_kind(const sd_scorer *s, const sd_sampler_opts *o, const char *what)
{
    /* Replacement by a forward draw of the known part is the method for
     * isotropic noise (App. I); for dct, dense or state the known and unknown
     * coordinates' noise is coupled, so the known part's draw would have to be
     * conditioned on the rest: refused rather than approximated silently. */
    if (!sd_sde_is_isotropic(&s->sde))
        return sd_error(SD_ERR_INVALID, "%s: needs an isotropic noise family (ncsn, ve, vp, "
                                        "subvp), not %s", what, sd_sde_name(&s->sde));
    if (o->kind != SD_SAMPLER_LANGEVIN && o->kind != SD_SAMPLER_PC)
        return sd_error(SD_ERR_INVALID, "%s: needs the langevin or pc sampler (got %s)", what,
                        sd_sampler_kind_name(o->kind));
    return SD_OK;
}

sd_status sd_inpaint(sd_scorer *s, const sd_sampler_opts *o, const float *data, const float *mask,
                     size_t n, float *out, sd_sample_stats *stats)
{
    if (!s || !o || (n && (!data || !mask)))
        return sd_error(SD_ERR_INVALID, "inpaint: missing data or mask");
    sd_status st = check_kind(s, o, "inpaint");
    if (st != SD_OK) return st;
    replace_ctx r = {.data = data, .mask = mask};
    return sd__run(s, o, n, NULL, out, 0, inpaint_constrain, &r, stats);
}

sd_status sd_colorize(sd_scorer *s, const sd_sampler_opts *o, const float *gray, size_t n,
                      float *out, sd_sample_stats *stats)
{
    if (!s || !o || (n && !gray)) return sd_error(SD_ERR_INVALID, "colorize: missing images");
    sd_status st = check_kind(s, o, "colorize");
    if (st != SD_OK) return st;
    if (s->C != 3)
        return sd_error(SD_ERR_INVALID, "colorize: needs a 3-channel model (this one has %d)",
                        s->C);
    size_t HW = (size_t)s->H * (size_t)s->W, bytes;
    if (sd_mul_size(n, s->D * sizeof(float), &bytes))
        return sd_error(SD_ERR_NOMEM, "colorize: %zu images overflow", n);
    replace_ctx r = {.C = 3, .HW = HW};
    r.gray3 = sd_malloc(bytes);
    if (!r.gray3) return SD_ERR_NOMEM;
    for (size_t i = 0; i < n; i++)
        for (int c = 0; c < 3; c++)
            memcpy(r.gray3 + i * s->D + (size_t)c * HW, gray + i * HW, HW * sizeof(float));
    r.data = r.gray3;
    st = sd__run(s, o, n, NULL, out, 0, colorize_constrain, &r, stats);
    sd_free(r.gray3);
    return st;
}
