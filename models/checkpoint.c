/* checkpoint.c - see checkpoint.h. */
#include "sd/checkpoint.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sd/safetensors.h"

#define CKPT_FORMAT "scorediff-checkpoint"
#define CKPT_VERSION "1"

enum { SECTION_MODEL, SECTION_EMA, SECTION_M, SECTION_V, N_SECTIONS };
static const char *section_prefix[N_SECTIONS] = {"model.", "ema.", "opt.m.", "opt.v."};

/* How the network's output becomes the score (score_model.c): "sigma"
 * (output / sigma) or, for a U-Net under the dct family, "dct-tweedie".
 * dct checkpoints written before that parameterisation lack the key and
 * are refused on load rather than silently mis-read. */
static const char *score_param(const sd_model *m)
{
    return m->kind == SD_MODEL_UNET && sd_sde_has(&m->sde, SD_SDE_TWEEDIE_SCORE) ? "dct-tweedie"
                                                                              : "sigma";
}

sd_status sd_checkpoint_save(const char *path, const sd_model *m, const sd_trainer *t,
                             const sd_ckpt_meta *meta)
{
    const sd_params *p = m->params;
    if (!p) return sd_error(SD_ERR_INVALID, "%s: only networks have checkpoints", path);
    int sections = t ? N_SECTIONS : 1;
    size_t n = p->count * (size_t)sections;
    sd_st_entry *e = sd_calloc(n, sizeof *e);
    char *names = sd_calloc(n, SD_PARAM_NAME_MAX + 8);
    int64_t *shapes = sd_calloc(n, SD_MAX_DIMS * sizeof(int64_t));
    sd_status st = SD_OK;
    if (!e || !names || !shapes) {
        st = SD_ERR_NOMEM;
        goto done;
    }
    for (int s = 0; s < sections; s++) {
        const float *base = p->data;
        if (s == SECTION_EMA) base = t->ema;
        if (s == SECTION_M) base = sd_optimizer_state(t->opt, 0);
        if (s == SECTION_V) base = sd_optimizer_state(t->opt, 1);
        if (!base) {
            st = sd_error(SD_ERR_INTERNAL, "%s: optimizer has no state %d", path, s);
            goto done;
        }
        for (size_t i = 0; i < p->count; i++) {
            size_t k = (size_t)s * p->count + i;
            char *name = names + k * (SD_PARAM_NAME_MAX + 8);
            snprintf(name, SD_PARAM_NAME_MAX + 8, "%s%s", section_prefix[s], p->items[i].name);
            int64_t *shape = shapes + k * SD_MAX_DIMS;
            for (int d = 0; d < p->items[i].ndim; d++) shape[d] = p->items[i].shape[d];
            e[k] = (sd_st_entry){.name = name, .ndim = p->items[i].ndim, .shape = shape,
                                 .data = base + p->items[i].offset};
        }
    }
    char config[1024], sde[256], shape[64], step[32], seed[32], batch[32], optim[256];
    if ((st = sd_model_config_json(m, config, sizeof config)) != SD_OK) goto done;
    sd_sde_to_string(&m->sde, sde, sizeof sde);
    snprintf(shape, sizeof shape, "%d,%d,%d", m->C, m->H, m->W);
    snprintf(step, sizeof step, "%" PRId64, meta ? meta->step : (t ? t->step : 0));
    snprintf(seed, sizeof seed, "%" PRIu64, meta ? meta->seed : 0);
    snprintf(batch, sizeof batch, "%d", meta ? meta->batch : 0);
    if (t) {
        sd_opt_config oc = sd_optimizer_config(t->opt);
        snprintf(optim, sizeof optim, "adam lr=%.9g beta1=%.9g beta2=%.9g eps=%.9g", oc.lr,
                 oc.beta1, oc.beta2, oc.eps);
    } else {
        snprintf(optim, sizeof optim, "none");
    }
    /* A dense family's spec names its C file; the matrix itself is stored as
     * "sde_cov" so that the checkpoint does not depend on that file. */
    char cov[SD_SDE_DENSE_MAX * SD_SDE_DENSE_MAX * 26 + 64];
    bool dense = sd_sde_has(&m->sde, SD_SDE_STORED_COV);
    if (dense && (st = sd_sde_cov_json(&m->sde, cov, sizeof cov)) != SD_OK) goto done;
    /* sde_cov must stay last (dropped unless dense). */
    const char *keys[] = {"format", "version", "model_config", "sde", "data_shape",
                          "data_transform", "step", "seed", "batch", "optimizer", "train",
                          "score_param", "sde_cov"};
    const char *vals[] = {CKPT_FORMAT, CKPT_VERSION, config, sde, shape,
                          meta && meta->data_transform[0] ? meta->data_transform : "identity",
                          step, seed, batch, optim,
                          meta && meta->train_json[0] ? meta->train_json : "{}",
                          score_param(m), cov};
    size_t n_keys = sizeof keys / sizeof *keys - (dense ? 0 : 1);
    st = sd_safetensors_write(path, e, n, keys, vals, n_keys);
done:
    sd_free(e);
    sd_free(names);
    sd_free(shapes);
    return st;
}

static sd_status read_meta(const sd_safetensors *f, const char *path, sd_ckpt_meta *meta)
{
    const char *fmt = sd_safetensors_meta(f, "format"), *ver = sd_safetensors_meta(f, "version");
    if (!fmt || strcmp(fmt, CKPT_FORMAT) != 0)
        return sd_error(SD_ERR_FORMAT, "%s: not a scorediff checkpoint (metadata format is %s)",
                        path, fmt ? fmt : "missing");
    if (!ver || strcmp(ver, CKPT_VERSION) != 0)
        return sd_error(SD_ERR_FORMAT, "%s: checkpoint version %s is not supported (expected %s)",
                        path, ver ? ver : "missing", CKPT_VERSION);
    if (!meta) return SD_OK;
    memset(meta, 0, sizeof *meta);
    const char *step = sd_safetensors_meta(f, "step"), *seed = sd_safetensors_meta(f, "seed");
    const char *batch = sd_safetensors_meta(f, "batch");
    const char *tr = sd_safetensors_meta(f, "data_transform"), *tj = sd_safetensors_meta(f, "train");
    char *end;
    errno = 0;
    /* Digits only: strtoll takes "" as 0 and strtoull wraps "-5". */
    meta->step = step ? strtoll(step, &end, 10) : -1;
    if (!step || !isdigit((unsigned char)step[0]) || *end || errno || meta->step < 0)
        return sd_error(SD_ERR_FORMAT, "%s: bad or missing step in metadata", path);
    meta->seed = seed ? strtoull(seed, &end, 10) : 0;
    if (!seed || !isdigit((unsigned char)seed[0]) || *end || errno)
        return sd_error(SD_ERR_FORMAT, "%s: bad or missing seed", path);
    meta->batch = batch ? atoi(batch) : 0;
    snprintf(meta->data_transform, sizeof meta->data_transform, "%s", tr ? tr : "identity");
    snprintf(meta->train_json, sizeof meta->train_json, "%s", tj ? tj : "{}");
    return SD_OK;
}

/* Copy section s of every parameter into base (flat layout). The file was
 * validated by check_tensors first. */
static sd_status load_section(const sd_safetensors *f, const char *path, const sd_params *p, int s,
                              float *base)
{
    for (size_t i = 0; i < p->count; i++) {
        char name[SD_PARAM_NAME_MAX + 8];
        snprintf(name, sizeof name, "%s%s", section_prefix[s], p->items[i].name);
        const sd_st_tensor *t = sd_safetensors_find(f, name);
        if (!t) return sd_error(SD_ERR_FORMAT, "%s: tensor %s is missing", path, name);
        sd_status st = sd_safetensors_read_f32(t, base + p->items[i].offset, p->items[i].numel);
        if (st != SD_OK) return st;
    }
    return SD_OK;
}

/* The one validation of a checkpoint's tensors, shared by every loader and
 * by `scorediff info` (through sd_checkpoint_load_model), so that "info says
 * it loads" and "it loads" cannot disagree. Against the model's declared
 * (not yet allocated) parameters: the file holds either the model section
 * alone or all four sections (need_training: all four), and every tensor of
 * every section it holds is present under its expected name, F32, of the
 * declared shape, and finite, including the optimizer state a resume would
 * use. Nothing is allocated: the model's memory is requested only once the
 * file is known to match it. */
static sd_status check_tensors(const sd_safetensors *f, const char *path, const sd_params *p,
                               bool need_training)
{
    size_t n = sd_safetensors_count(f);
    if (n != p->count * (size_t)N_SECTIONS && (need_training || n != p->count)) {
        if (need_training)
            return sd_error(SD_ERR_FORMAT, "%s: holds %zu tensors, the model expects %zu", path, n,
                            p->count * (size_t)N_SECTIONS);
        return sd_error(SD_ERR_FORMAT, "%s: holds %zu tensors, the model expects %zu (weights "
                                       "only) or %zu (with training state)",
                        path, n, p->count, p->count * (size_t)N_SECTIONS);
    }
    int sections = n == p->count ? 1 : N_SECTIONS;
    for (int s = 0; s < sections; s++) {
        for (size_t i = 0; i < p->count; i++) {
            const sd_param *it = &p->items[i];
            char name[SD_PARAM_NAME_MAX + 8];
            snprintf(name, sizeof name, "%s%s", section_prefix[s], it->name);
            const sd_st_tensor *t = sd_safetensors_find(f, name);
            if (!t)
                return sd_error(SD_ERR_FORMAT, "%s: tensor %s is missing (renamed, or another "
                                               "model's checkpoint)", path, name);
            if (strcmp(t->dtype, "F32") != 0)
                return sd_error(SD_ERR_FORMAT, "%s: tensor %s has dtype %s, expected F32", path,
                                name, t->dtype);
            bool same = t->ndim == it->ndim;
            for (int d = 0; same && d < t->ndim; d++) same = t->shape[d] == it->shape[d];
            if (!same || t->numel != it->numel)
                return sd_error(SD_ERR_FORMAT, "%s: tensor %s has a shape that does not match the "
                                               "model", path, name);
            const unsigned char *b = t->data;
            for (size_t k = 0; k < t->numel; k++) {
                float v;
                memcpy(&v, b + k * sizeof v, sizeof v);
                if (!isfinite(v))
                    return sd_error(SD_ERR_NUMERIC, "%s: tensor '%s' element %zu is %s "
                                                    "(non-finite values are refused)",
                                    path, name, k, isnan(v) ? "NaN" : v > 0 ? "+Inf" : "-Inf");
            }
        }
    }
    return SD_OK;
}

sd_status sd_checkpoint_load_model(const char *path, bool use_ema, sd_model **out,
                                   sd_ckpt_meta *meta)
{
    *out = NULL;
    sd_safetensors *f = NULL;
    sd_model *m = NULL;
    sd_status st = sd_safetensors_open(path, &f);
    if (st != SD_OK) return st;
    if ((st = read_meta(f, path, meta)) != SD_OK) goto fail;
    const char *sde_spec = sd_safetensors_meta(f, "sde");
    const char *config = sd_safetensors_meta(f, "model_config");
    sd_sde sde;
    if (!sde_spec || !config) {
        st = sd_error(SD_ERR_FORMAT, "%s: metadata lacks sde or model_config", path);
        goto fail;
    }
    if ((st = sd_sde_parse_with_cov(sde_spec, sd_safetensors_meta(f, "sde_cov"), &sde)) !=
        SD_OK) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", sd_error_message());
        st = sd_error(SD_ERR_FORMAT, "%s: %s", path, msg);
        goto fail;
    }
    /* Declared only: the shapes are checked against the file before the
     * parameters are allocated (an edited config must not make us build a
     * huge model first). */
    if ((st = sd_model_declare_from_config_json(config, &sde, &m)) != SD_OK) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", sd_error_message());
        st = sd_error(SD_ERR_FORMAT, "%s: %s", path, msg);
        goto fail;
    }
    const char *param = sd_safetensors_meta(f, "score_param");
    if (strcmp(param ? param : "sigma", score_param(m)) != 0) {
        st = sd_error(SD_ERR_FORMAT,
                      "%s: score parameterisation '%s' does not match this version's '%s' for "
                      "a %s model under %s (a dct checkpoint from before the Tweedie form: "
                      "retrain it)",
                      path, param ? param : "sigma", score_param(m),
                      m->kind == SD_MODEL_UNET ? "unet" : "non-unet", sd_sde_name(&m->sde));
        goto fail;
    }
    if ((st = check_tensors(f, path, m->params, false)) != SD_OK) goto fail;
    if ((st = sd_model_finalize(m, path)) != SD_OK) goto fail;
    bool has_ema = sd_safetensors_count(f) == m->params->count * N_SECTIONS;
    st = load_section(f, path, m->params, use_ema && has_ema ? SECTION_EMA : SECTION_MODEL,
                      m->params->data);
    if (st != SD_OK) goto fail;
    sd_safetensors_close(f);
    *out = m;
    return SD_OK;
fail:
    sd_model_free(m);
    sd_safetensors_close(f);
    return st;
}

sd_status sd_checkpoint_load_trainer(const char *path, sd_model *m, sd_trainer *t,
                                     sd_ckpt_meta *meta)
{
    sd_safetensors *f = NULL;
    sd_status st = sd_safetensors_open(path, &f);
    if (st != SD_OK) return st;
    sd_ckpt_meta local;
    if (!meta) meta = &local;
    if ((st = read_meta(f, path, meta)) != SD_OK) goto done;
    char config[1024];
    const char *saved = sd_safetensors_meta(f, "model_config");
    if ((st = sd_model_config_json(m, config, sizeof config)) != SD_OK) goto done;
    if (!saved || strcmp(saved, config) != 0) {
        st = sd_error(SD_ERR_FORMAT, "%s: model configuration %s differs from this run's %s", path,
                      saved ? saved : "(missing)", config);
        goto done;
    }
    if ((st = check_tensors(f, path, m->params, true)) != SD_OK) goto done;
    float *mom = sd_optimizer_state(t->opt, 0), *vel = sd_optimizer_state(t->opt, 1);
    if ((st = load_section(f, path, m->params, SECTION_MODEL, m->params->data)) != SD_OK ||
        (st = load_section(f, path, m->params, SECTION_EMA, t->ema)) != SD_OK ||
        (st = load_section(f, path, m->params, SECTION_M, mom)) != SD_OK ||
        (st = load_section(f, path, m->params, SECTION_V, vel)) != SD_OK)
        goto done;
    t->step = meta->step;
    if ((st = sd_optimizer_set_step_count(t->opt, meta->step)) != SD_OK) goto done;
done:
    sd_safetensors_close(f);
    return st;
}
