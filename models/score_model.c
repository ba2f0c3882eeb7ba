/* score_model.c - the common interface over unet, mlp and gmm. */
#include "sd/score_model.h"

#include <cjson/cJSON.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "sd/membudget.h"
#include "sd/ops.h"
#include "sd/rng.h"

static sd_model *model_alloc(const sd_sde *sde)
{
    sd_model *m = sd_calloc(1, sizeof *m);
    if (m) m->sde = *sde;
    return m;
}

/* Sane ranges for a network's configuration (checkpoint metadata can say
 * anything): documented in score_model.h. */
static sd_status check_caps(const char *name, const sd_unet_config *c)
{
    if (c->ch < 1 || c->ch > SD_MODEL_MAX_WIDTH)
        return sd_error(SD_ERR_INVALID, "model %s: ch = %d must be in [1, %d]", name, c->ch,
                        SD_MODEL_MAX_WIDTH);
    if (c->n_levels < 1 || c->n_levels > SD_UNET_MAX_LEVELS)
        return sd_error(SD_ERR_INVALID, "model %s: %d levels (mult entries) must be in [1, %d]",
                        name, c->n_levels, SD_UNET_MAX_LEVELS);
    for (int i = 0; i < c->n_levels; i++)
        if (c->mult[i] < 1 || c->mult[i] > SD_MODEL_MAX_WIDTH / c->ch)
            return sd_error(SD_ERR_INVALID,
                            "model %s: level width ch * mult[%d] = %d * %d must be in [1, %d]",
                            name, i, c->ch, c->mult[i], SD_MODEL_MAX_WIDTH);
    if (c->num_res_blocks < 1 || c->num_res_blocks > SD_UNET_MAX_RES_BLOCKS)
        return sd_error(SD_ERR_INVALID, "model %s: num_res_blocks = %d must be in [1, %d]", name,
                        c->num_res_blocks, SD_UNET_MAX_RES_BLOCKS);
    return SD_OK;
}

/* sd_model_new_network without the allocation of the parameters. */
static sd_status network_declare(const char *name, const sd_unet_config *ucfg, int C, int H, int W,
                                 const sd_sde *sde, sd_model **out)
{
    *out = NULL;
    sd_model *m = model_alloc(sde);
    if (!m) return SD_ERR_NOMEM;
    sd_status st = SD_OK;
    m->params = sd_params_new();
    if (!m->params) {
        st = SD_ERR_NOMEM;
        goto fail;
    }
    if (strcmp(name, "mlp") == 0) {
        if (H != 1 || W != 1) {
            st = sd_error(SD_ERR_INVALID, "model mlp: needs flat data (got %dx%dx%d); use a unet "
                                          "for images", C, H, W);
            goto fail;
        }
        if (C < 1 || C > SD_MODEL_MAX_DIM) {
            st = sd_error(SD_ERR_INVALID, "model mlp: dimension %d must be in [1, %d]", C,
                          SD_MODEL_MAX_DIM);
            goto fail;
        }
        m->kind = SD_MODEL_MLP;
        sd_mlp_config cfg = sd_mlp_reference(C);
        if ((st = sd_mlp_declare(&cfg, m->params, &m->mlp)) != SD_OK) goto fail;
    } else if (strncmp(name, "unet", 4) == 0) {
        m->kind = SD_MODEL_UNET;
        sd_unet_config cfg;
        if (strcmp(name, "unet") == 0) {
            if (!ucfg) {
                st = sd_error(SD_ERR_INVALID, "model unet: needs a configuration");
                goto fail;
            }
            cfg = *ucfg;
        } else {
            bool ok;
            cfg = sd_unet_preset(name, &ok);
            if (!ok) {
                st = SD_ERR_INVALID;
                goto fail;
            }
        }
        if (H != W || cfg.resolution != H || cfg.channels != C) {
            st = sd_error(SD_ERR_INVALID,
                          "model %s: built for %dx%dx%d images but the data is %dx%dx%d "
                          "(use --size/--channels, or --model unet with --resolution)",
                          name, cfg.channels, cfg.resolution, cfg.resolution, C, H, W);
            goto fail;
        }
        if ((st = check_caps(name, &cfg)) != SD_OK) goto fail;
        if ((st = sd_unet_declare(&cfg, m->params, &m->unet)) != SD_OK) goto fail;
    } else {
        st = sd_error(SD_ERR_INVALID, "unknown model '%s' (unet-28, unet-32, unet, mlp)", name);
        goto fail;
    }
    if ((st = sd_sde_bind_shape(&m->sde, C, H, W)) != SD_OK) goto fail;
    m->C = C;
    m->H = H;
    m->W = W;
    m->D = (size_t)C * H * W;
    *out = m;
    return SD_OK;
fail:
    sd_model_free(m);
    return st;
}

uint64_t sd_model_param_bytes(const sd_model *m)
{
    return m && m->params ? (uint64_t)m->params->total * sizeof(float) : 0;
}

sd_status sd_model_finalize(sd_model *m, const char *what)
{
    if (!m || !m->params) return sd_error(SD_ERR_INVALID, "model finalize: not a network");
    if (m->params->finalized) return SD_OK;
    /* Values and gradients. */
    char label[600];
    snprintf(label, sizeof label, "%s: the model's %zu parameters", what ? what : "model",
             m->params->total);
    sd_status st = sd_mem_check(label, 2 * sd_model_param_bytes(m));
    if (st != SD_OK) return st;
    return sd_params_finalize(m->params);
}

sd_status sd_model_new_network(const char *name, const sd_unet_config *ucfg, int C, int H, int W,
                               const sd_sde *sde, sd_model **out)
{
    sd_status st = network_declare(name, ucfg, C, H, W, sde, out);
    if (st != SD_OK) return st;
    if ((st = sd_model_finalize(*out, name)) != SD_OK) {
        sd_model_free(*out);
        *out = NULL;
    }
    return st;
}

sd_status sd_model_new_gmm(sd_gmm *gmm, const sd_sde *sde, sd_model **out)
{
    *out = NULL;
    sd_model *m = model_alloc(sde);
    if (!m) return SD_ERR_NOMEM;
    m->kind = SD_MODEL_GMM;
    m->C = sd_gmm_dim(gmm);
    m->H = m->W = 1;
    m->D = (size_t)m->C;
    sd_status st = SD_OK;
    if (sd_sde_has(sde, SD_SDE_NEEDS_SHAPE)) {
        /* The mixture's points are flat: the image shape comes from the spec,
         * and the model takes it (samples are then images). */
        if (sde->shape_c < 1)
            st = sd_error(SD_ERR_INVALID, "model gmm: the %s family needs shape=CxHxW (the "
                                          "mixture has %zu flat dimensions)", sd_sde_name(sde),
                          m->D);
        else if ((size_t)sde->shape_c * sde->shape_h * sde->shape_w != m->D)
            st = sd_error(SD_ERR_INVALID, "model gmm: %s shape=%dx%dx%d does not hold the "
                                          "mixture's %zu dimensions", sd_sde_name(sde),
                          sde->shape_c, sde->shape_h,
                          sde->shape_w, m->D);
        else
            m->C = sde->shape_c, m->H = sde->shape_h, m->W = sde->shape_w;
    }
    if (st == SD_OK) st = sd_sde_bind_shape(&m->sde, m->C, m->H, m->W);
    if (st != SD_OK) {
        sd_free(m); /* the caller keeps the gmm on failure */
        return st;
    }
    m->gmm = gmm;
    *out = m;
    return SD_OK;
}

void sd_model_free(sd_model *m)
{
    if (!m) return;
    sd_params_free(m->params);
    sd_gmm_free(m->gmm);
    sd_free(m);
}

void sd_model_init(sd_model *m, uint64_t seed)
{
    sd_rng rng;
    sd_rng_init(&rng, seed, SD_STREAM_INIT);
    if (m->kind == SD_MODEL_UNET) sd_unet_init(&m->unet, m->params, &rng);
    if (m->kind == SD_MODEL_MLP) sd_mlp_init(&m->mlp, m->params, &rng);
}

/* The U-Net's score under the dct family, through Tweedie's formula.
 * x_t | x_0 = N(A x_0, sigma^2 I) gives the exact score
 *     s(x) = (A E[x_0 | x] - x) / sigma^2
 * (Song et al. 2021, App. D; the matrix form of Tweedie). The network's
 * sigma-scaled output u (what it returns under VE) is read as the denoiser
 * E[x_0 | x] ~ x + sigma^2 u, so
 *     s = A (u + x / sigma^2) - x / sigma^2,       A = B diag(a_k(t)) B^T.
 * Where a_k ~ 1 (low frequencies, small t) this is u, as under VE. Where the
 * heat equation has damped frequency k away (a_k -> 0) the score tends to
 * the exact -x_k / sigma^2 whatever the network says: the probability
 * flow multiplies the score error there by 1/2 g_k^2, up to ~10x VE's at
 * the top frequency, and with the plain sigma-scaled output an under-trained
 * network's error there showed as checkerboard samples. A, x/sigma^2 and
 * a_k(t) carry no parameters; the input gradient flows through them. */
static sd_tensor *dct_tweedie_score(sd_model *m, sd_graph *g, sd_tensor *x, sd_tensor *u,
                                    const double *t)
{
    if (!u) return NULL;
    int n = x->shape[0];
    sd_tensor *inv_var = sd_tensor_new(g, 4, (int[]){n, 1, 1, 1});
    sd_tensor *a = sd_tensor_new(g, 4, (int[]){n, m->C, m->H, m->W});
    double *ak = sd_graph_alloc(g, m->D * sizeof(double));
    if (!inv_var || !a || !ak) return NULL;
    for (int i = 0; i < n; i++) {
        double sig = sd_sde_sigma(&m->sde, t[i]);
        inv_var->data[i] = (float)(1.0 / (sig * sig));
        sd_status st = sd_sde_modes(&m->sde, t[i], m->D, ak, NULL, NULL, NULL);
        if (st != SD_OK) return sd_graph_fail(g, st, "%s", sd_error_message());
        for (size_t k = 0; k < m->D; k++) a->data[(size_t)i * m->D + k] = (float)ak[k];
    }
    sd_tensor *xs = sd_mul(g, x, inv_var);
    sd_tensor *Av = sd_idct2(g, sd_mul(g, sd_dct2(g, sd_add(g, u, xs)), a));
    return sd_sub(g, Av, xs);
}

sd_tensor *sd_model_forward(sd_model *m, sd_graph *g, sd_tensor *x, const double *t)
{
    if (!x) return NULL;
    if (m->kind == SD_MODEL_GMM)
        return sd_graph_fail(g, SD_ERR_INVALID, "model: the gmm has no differentiable forward");
    int n = x->shape[0];
    if (x->numel != (size_t)n * m->D)
        return sd_graph_fail(g, SD_ERR_INVALID, "model: input has %zu values per batch of %d, "
                                              "expected %zu per item", x->numel, n, m->D);
    float *cond = sd_graph_alloc_floats(g, (size_t)n);
    float *sigma = sd_graph_alloc_floats(g, (size_t)n);
    if (!cond || !sigma) return NULL;
    for (int i = 0; i < n; i++) {
        cond[i] = (float)sd_sde_cond(&m->sde, t[i]);
        sigma[i] = (float)sd_sde_sigma(&m->sde, t[i]);
    }
    if (m->kind == SD_MODEL_UNET) {
        sd_tensor *x4 = x->ndim == 4 ? x : sd_reshape(g, x, 4, (int[]){n, m->C, m->H, m->W});
        sd_tensor *u = sd_unet_forward(&m->unet, m->params, g, x4, cond, sigma);
        return sd_sde_has(&m->sde, SD_SDE_TWEEDIE_SCORE) ? dct_tweedie_score(m, g, x4, u, t) : u;
    }
    sd_tensor *x2 = x->ndim == 2 ? x : sd_reshape(g, x, 2, (int[]){n, (int)m->D});
    return sd_mlp_forward(&m->mlp, m->params, g, x2, cond, sigma);
}

sd_status sd_model_score(sd_model *m, sd_graph *g, const float *x, size_t n, double t, float *out)
{
    if (m->kind == SD_MODEL_GMM) return sd_gmm_score(m->gmm, &m->sde, t, x, out, n);
    sd_graph_reset(g);
    bool old = sd_graph_set_grad_enabled(g, false);
    sd_status st = SD_OK;
    double *tt = sd_graph_alloc(g, n * sizeof(double));
    sd_tensor *xt = tt ? sd_tensor_wrap(g, 2, (int[]){(int)n, (int)m->D}, (float *)x, NULL) : NULL;
    if (tt)
        for (size_t i = 0; i < n; i++) tt[i] = t;
    sd_tensor *s = sd_model_forward(m, g, xt, tt);
    if (!s) st = sd_graph_status(g) != SD_OK ? sd_graph_status(g) : SD_ERR_INTERNAL;
    else memcpy(out, s->data, n * m->D * sizeof(float));
    sd_graph_set_grad_enabled(g, old);
    return st;
}

sd_status sd_model_config_json(const sd_model *m, char *buf, size_t len)
{
    int w = 0;
    if (m->kind == SD_MODEL_MLP) {
        const sd_mlp_config *c = &m->mlp.cfg;
        w = snprintf(buf, len, "{\"model\":\"mlp\",\"dim\":%d,\"hidden\":%d,\"layers\":%d}", c->dim,
                     c->hidden, c->n_hidden_layers);
    } else if (m->kind == SD_MODEL_UNET) {
        const sd_unet_config *c = &m->unet.cfg;
        char mult[128] = "";
        size_t off = 0;
        for (int i = 0; i < c->n_levels; i++)
            off += (size_t)snprintf(mult + off, sizeof mult - off, i ? ",%d" : "%d", c->mult[i]);
        w = snprintf(buf, len,
                     "{\"model\":\"unet\",\"channels\":%d,\"resolution\":%d,\"ch\":%d,"
                     "\"mult\":[%s],\"num_res_blocks\":%d,\"groups\":%d}",
                     c->channels, c->resolution, c->ch, mult, c->num_res_blocks, c->groups);
    } else {
        w = snprintf(buf, len, "{\"model\":\"gmm\",\"dim\":%d}", m->C);
    }
    if (w < 0 || (size_t)w >= len) return sd_error(SD_ERR_INVALID, "model config: buffer too small");
    return SD_OK;
}

static int json_int(const cJSON *o, const char *key, int *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    /* Range first: (int) of a double out of int's range is undefined. */
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= INT_MIN && v->valuedouble <= INT_MAX) ||
        v->valuedouble != (double)(int)v->valuedouble)
        return -1;
    *out = (int)v->valuedouble;
    return 0;
}

sd_status sd_model_declare_from_config_json(const char *json, const sd_sde *sde, sd_model **out)
{
    *out = NULL;
    cJSON *o = cJSON_Parse(json);
    if (!o) return sd_error(SD_ERR_FORMAT, "model config is not valid JSON");
    sd_status st = SD_OK;
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(o, "model");
    if (!cJSON_IsString(name)) {
        st = sd_error(SD_ERR_FORMAT, "model config: missing \"model\"");
    } else if (strcmp(name->valuestring, "mlp") == 0) {
        int dim, hidden, layers;
        if (json_int(o, "dim", &dim) || json_int(o, "hidden", &hidden) ||
            json_int(o, "layers", &layers))
            st = sd_error(SD_ERR_FORMAT, "model config: mlp needs integer dim, hidden, layers");
        else if (hidden != 128 || layers != 3)
            st = sd_error(SD_ERR_FORMAT, "model config: mlp with hidden %d, layers %d is not "
                                         "supported (128, 3)", hidden, layers);
        else
            st = network_declare("mlp", NULL, dim, 1, 1, sde, out);
    } else if (strcmp(name->valuestring, "unet") == 0) {
        sd_unet_config c;
        memset(&c, 0, sizeof c);
        const cJSON *mult = cJSON_GetObjectItemCaseSensitive(o, "mult");
        if (json_int(o, "channels", &c.channels) || json_int(o, "resolution", &c.resolution) ||
            json_int(o, "ch", &c.ch) || json_int(o, "num_res_blocks", &c.num_res_blocks) ||
            json_int(o, "groups", &c.groups) || !cJSON_IsArray(mult) ||
            cJSON_GetArraySize(mult) < 1 || cJSON_GetArraySize(mult) > SD_UNET_MAX_LEVELS) {
            st = sd_error(SD_ERR_FORMAT, "model config: unet fields missing or malformed");
        } else {
            c.n_levels = cJSON_GetArraySize(mult);
            for (int i = 0; i < c.n_levels && st == SD_OK; i++) {
                const cJSON *v = cJSON_GetArrayItem(mult, i);
                /* Range first: (int) of a double out of int's range is
                 * undefined behaviour. */
                if (!cJSON_IsNumber(v) || !(v->valuedouble >= 1 && v->valuedouble <= SD_MODEL_MAX_WIDTH) ||
                    v->valuedouble != (double)(int)v->valuedouble)
                    st = sd_error(SD_ERR_FORMAT, "model config: mult[%d] must be an integer in "
                                                 "[1, %d]", i, SD_MODEL_MAX_WIDTH);
                else c.mult[i] = (int)v->valuedouble;
            }
            if (st == SD_OK)
                st = network_declare("unet", &c, c.channels, c.resolution, c.resolution, sde,
                                     out);
        }
    } else {
        st = sd_error(SD_ERR_FORMAT, "model config: unknown model \"%s\"", name->valuestring);
    }
    cJSON_Delete(o);
    return st;
}

sd_status sd_model_from_config_json(const char *json, const sd_sde *sde, sd_model **out)
{
    sd_status st = sd_model_declare_from_config_json(json, sde, out);
    if (st != SD_OK) return st;
    if ((st = sd_model_finalize(*out, "model config")) != SD_OK) {
        sd_model_free(*out);
        *out = NULL;
    }
    return st;
}
