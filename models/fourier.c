/* fourier.c - Gaussian Fourier features of the noise level; see fourier.h. */
#include "sd/fourier.h"

#include <math.h>
#include <stdio.h>

#include "sd/rng.h"

#define SD_TWO_PI 6.283185307179586476925286766559

sd_status sd_fourier_declare(sd_params *p, const char *prefix, sd_fourier *f)
{
    char name[SD_PARAM_NAME_MAX];
    int len = snprintf(name, sizeof name, "%s.W", prefix);
    if (len < 0 || (size_t)len >= sizeof name)
        return sd_error(SD_ERR_INVALID, "fourier: prefix '%s' too long", prefix);
    f->w = sd_params_add_buffer(p, name, 1, (int[]){SD_FOURIER_HALF});
    return f->w < 0 ? SD_ERR_INVALID : SD_OK;
}

void sd_fourier_init(const sd_fourier *f, sd_params *p, sd_rng *rng)
{
    sd_params_init_normal(p, f->w, rng, SD_FOURIER_SCALE);
}

sd_tensor *sd_fourier_embed(const sd_fourier *f, sd_params *p, sd_graph *g, const float *c,
                            int n)
{
    if (!c || n < 1) return sd_graph_fail(g, SD_ERR_INVALID, "fourier: need c[%d] values", n);
    if (!p->finalized || f->w < 0 || (size_t)f->w >= p->count)
        return sd_graph_fail(g, SD_ERR_INVALID, "fourier: parameters not declared/finalized");
    /* e0 is [N, 32]: columns 0..15 sin, 16..31 cos. */
    sd_tensor *e = sd_tensor_new(g, 2, (int[]){n, SD_FOURIER_DIM});
    if (!e) return NULL;
    const float *w = sd_params_data(p, f->w);
    float w2[SD_FOURIER_HALF];
    for (int k = 0; k < SD_FOURIER_HALF; k++) w2[k] = w[k] * (float)SD_TWO_PI;
    for (int i = 0; i < n; i++) {
        if (!isfinite(c[i]))
            return sd_graph_fail(g, SD_ERR_INVALID, "fourier: c[%d] = %g is not finite", i,
                               (double)c[i]);
        float *row = e->data + (size_t)i * SD_FOURIER_DIM;
        for (int k = 0; k < SD_FOURIER_HALF; k++) {
            /* The float32 product c * (2 pi W) is the argument (as in the
             * mirror); sin/cos of it are evaluated in double and rounded. */
            float arg = c[i] * w2[k];
            row[k] = (float)sin((double)arg);
            row[SD_FOURIER_HALF + k] = (float)cos((double)arg);
        }
    }
    return e;
}
