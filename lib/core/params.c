/* params.c - named parameters in one flat buffer; see params.h. */
#include "sd/params.h"

#include <stdint.h>
#include <string.h>

#include "sd/rng.h"

sd_params *sd_params_new(void)
{
    return sd_calloc(1, sizeof(sd_params));
}

void sd_params_free(sd_params *p)
{
    if (!p) return;
    sd_free(p->items);
    sd_free(p->data);
    sd_free(p->grad);
    sd_free(p);
}

static int params_add(sd_params *p, const char *name, int ndim, const int *shape, bool trainable)
{
    if (p->finalized) {
        sd_error(SD_ERR_INVALID, "params: '%s' declared after finalize", name);
        return -1;
    }
    if (strlen(name) >= SD_PARAM_NAME_MAX) {
        sd_error(SD_ERR_INVALID, "params: name '%s' longer than %d bytes", name,
                 SD_PARAM_NAME_MAX - 1);
        return -1;
    }
    if (sd_params_find(p, name) >= 0) {
        sd_error(SD_ERR_INVALID, "params: duplicate name '%s'", name);
        return -1;
    }
    if (ndim < 1 || ndim > SD_MAX_DIMS) {
        sd_error(SD_ERR_INVALID, "params: '%s' has %d dimensions", name, ndim);
        return -1;
    }
    size_t numel = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 1 || sd_mul_size(numel, (size_t)shape[i], &numel)) {
            sd_error(SD_ERR_INVALID, "params: '%s' has a bad dimension %d", name, shape[i]);
            return -1;
        }
    }
    /* The flat array's length must not wrap: offsets past it would point
     * outside the allocation. */
    if (numel > SIZE_MAX - p->total) {
        sd_error(SD_ERR_INVALID, "params: '%s' (%zu floats) makes the total overflow", name,
                 numel);
        return -1;
    }
    if (p->count == p->cap) {
        size_t ncap = p->cap ? p->cap * 2 : 64;
        sd_param *bigger = sd_calloc(ncap, sizeof *bigger);
        if (!bigger) return -1;
        if (p->count) memcpy(bigger, p->items, p->count * sizeof *bigger);
        sd_free(p->items);
        p->items = bigger;
        p->cap = ncap;
    }
    sd_param *it = &p->items[p->count];
    memset(it, 0, sizeof *it);
    memcpy(it->name, name, strlen(name) + 1);
    it->ndim = ndim;
    for (int i = 0; i < ndim; i++) it->shape[i] = shape[i];
    it->numel = numel;
    it->offset = p->total;
    it->trainable = trainable;
    p->total += numel;
    return (int)p->count++;
}

int sd_params_add(sd_params *p, const char *name, int ndim, const int *shape)
{
    return params_add(p, name, ndim, shape, true);
}

int sd_params_add_buffer(sd_params *p, const char *name, int ndim, const int *shape)
{
    return params_add(p, name, ndim, shape, false);
}

sd_status sd_params_finalize(sd_params *p)
{
    if (p->finalized) return SD_OK;
    p->data = sd_calloc(p->total ? p->total : 1, sizeof(float));
    p->grad = sd_calloc(p->total ? p->total : 1, sizeof(float));
    if (!p->data || !p->grad) return SD_ERR_NOMEM;
    p->finalized = true;
    return SD_OK;
}

int sd_params_find(const sd_params *p, const char *name)
{
    for (size_t i = 0; i < p->count; i++)
        if (strcmp(p->items[i].name, name) == 0) return (int)i;
    return -1;
}

sd_tensor *sd_params_tensor(sd_graph *g, sd_params *p, int idx)
{
    if (!p->finalized || idx < 0 || (size_t)idx >= p->count)
        return sd_graph_fail(g, SD_ERR_INVALID, "params: no parameter %d (or not finalized)", idx);
    sd_param *it = &p->items[idx];
    sd_tensor *t = sd_tensor_wrap(g, it->ndim, it->shape, p->data + it->offset,
                                  it->trainable ? p->grad + it->offset : NULL);
    if (t) t->name = it->name;
    return t;
}

void sd_params_zero_grad(sd_params *p)
{
    if (p->grad) memset(p->grad, 0, p->total * sizeof(float));
}

size_t sd_params_trainable_count(const sd_params *p)
{
    size_t n = 0;
    for (size_t i = 0; i < p->count; i++)
        if (p->items[i].trainable) n += p->items[i].numel;
    return n;
}

void sd_params_init_uniform(sd_params *p, int idx, sd_rng *rng, float bound)
{
    float *x = sd_params_data(p, idx);
    for (size_t i = 0; i < p->items[idx].numel; i++)
        x[i] = (2.0f * sd_rng_uniform(rng) - 1.0f) * bound;
}

void sd_params_init_normal(sd_params *p, int idx, sd_rng *rng, float std)
{
    sd_rng_fill_normal(rng, sd_params_data(p, idx), p->items[idx].numel, 0.0f, std);
}

void sd_params_init_const(sd_params *p, int idx, float value)
{
    float *x = sd_params_data(p, idx);
    for (size_t i = 0; i < p->items[idx].numel; i++) x[i] = value;
}
