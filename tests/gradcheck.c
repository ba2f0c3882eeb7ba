/* gradcheck.c - see gradcheck.h for the method and its error model. */
#include "gradcheck.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static unsigned gc_next(unsigned *s)
{
    *s = *s * 1664525u + 1013904223u;
    return *s >> 8;
}

static float gc_uniform(unsigned *s) { return (float)gc_next(s) / (float)(1u << 24); }

typedef struct gc_state {
    gc_build_fn fn;
    void *ctx;
    int n;
    const gc_input *spec;
    float *data[GC_MAX_INPUTS];
    float *grad[GC_MAX_INPUTS];
    size_t numel[GC_MAX_INPUTS];
    sd_graph *g;
} gc_state;

static sd_tensor *gc_build(gc_state *st, bool with_grad)
{
    sd_tensor *in[GC_MAX_INPUTS];
    sd_graph_reset(st->g);
    for (int k = 0; k < st->n; k++) {
        float *grad = (with_grad && !st->spec[k].no_grad) ? st->grad[k] : NULL;
        in[k] = sd_tensor_wrap(st->g, st->spec[k].ndim, st->spec[k].shape, st->data[k], grad);
    }
    return st->fn(st->g, in, st->ctx);
}

gc_result gc_check(gc_build_fn fn, void *ctx, int n_inputs, const gc_input *spec,
                   const gc_options *opt_in)
{
    gc_options opt = {1e-2, 1e-2, 1e-3, 64, 1};
    if (opt_in) {
        if (opt_in->eps > 0) opt.eps = opt_in->eps;
        if (opt_in->rtol > 0) opt.rtol = opt_in->rtol;
        if (opt_in->atol > 0) opt.atol = opt_in->atol;
        if (opt_in->max_probe > 0) opt.max_probe = opt_in->max_probe;
        if (opt_in->seed) opt.seed = opt_in->seed;
    }
    gc_result res;
    memset(&res, 0, sizeof res);
    res.worst_input = -1;
    gc_state st = {.fn = fn, .ctx = ctx, .n = n_inputs, .spec = spec};
    unsigned seed = opt.seed;
    float *r = NULL, *out_ref = NULL, *out_plus = NULL;
    size_t n_out = 0;

    st.g = sd_graph_new();
    if (!st.g || n_inputs > GC_MAX_INPUTS) {
        snprintf(res.message, sizeof res.message, "gradcheck: setup failed");
        goto done;
    }
    for (int k = 0; k < n_inputs; k++) {
        size_t n = 1;
        for (int d = 0; d < spec[k].ndim; d++) n *= (size_t)spec[k].shape[d];
        st.numel[k] = n;
        st.data[k] = malloc(n * sizeof(float));
        st.grad[k] = calloc(n, sizeof(float));
        for (size_t i = 0; i < n; i++) {
            float v;
            do {
                v = spec[k].lo + (spec[k].hi - spec[k].lo) * gc_uniform(&seed);
            } while (spec[k].min_abs > 0 && fabsf(v) < spec[k].min_abs);
            st.data[k][i] = v;
        }
    }
    sd_tensor *out = gc_build(&st, true);
    if (!out) {
        snprintf(res.message, sizeof res.message, "gradcheck: forward failed: %s",
                 sd_error_message());
        goto done;
    }
    n_out = out->numel;
    r = malloc(n_out * sizeof(float));
    out_ref = malloc(n_out * sizeof(float));
    out_plus = malloc(n_out * sizeof(float));
    for (size_t i = 0; i < n_out; i++) r[i] = 2.0f * gc_uniform(&seed) - 1.0f;
    if (sd_graph_backward(st.g, out, r) != SD_OK) {
        snprintf(res.message, sizeof res.message, "gradcheck: backward failed: %s",
                 sd_error_message());
        goto done;
    }
    for (size_t i = 0; i < n_out; i++)
        if (!isfinite(out->data[i])) {
            snprintf(res.message, sizeof res.message, "gradcheck: non-finite output");
            goto done;
        }

    res.ok = true;
    for (int k = 0; k < n_inputs; k++) {
        if (spec[k].no_grad) continue;
        size_t n = st.numel[k];
        double gmax = 1.0;
        for (size_t i = 0; i < n; i++) {
            if (!isfinite(st.grad[k][i])) {
                res.ok = false;
                snprintf(res.message, sizeof res.message,
                         "gradcheck: input %d: non-finite analytic gradient at %zu", k, i);
                goto done;
            }
            if (fabs(st.grad[k][i]) > gmax) gmax = fabs(st.grad[k][i]);
        }
        int probes = n < (size_t)opt.max_probe ? (int)n : opt.max_probe;
        for (int p = 0; p < probes; p++) {
            size_t j = (n <= (size_t)opt.max_probe) ? (size_t)p : (size_t)gc_next(&seed) % n;
            float x0 = st.data[k][j];
            st.data[k][j] = x0 + (float)opt.eps;
            double h_plus = (double)st.data[k][j] - x0;
            sd_tensor *o = gc_build(&st, false);
            if (!o) goto fwd_fail;
            memcpy(out_plus, o->data, n_out * sizeof(float));
            st.data[k][j] = x0 - (float)opt.eps;
            double h_minus = x0 - (double)st.data[k][j];
            o = gc_build(&st, false);
            if (!o) goto fwd_fail;
            st.data[k][j] = x0;
            double dl = 0.0;
            for (size_t i = 0; i < n_out; i++)
                dl += (double)r[i] * ((double)out_plus[i] - (double)o->data[i]);
            double numeric = dl / (h_plus + h_minus);
            double analytic = st.grad[k][j];
            double err = fabs(analytic - numeric);
            double ratio = err / (opt.atol * gmax + opt.rtol * fabs(numeric));
            if (err > res.max_abs_err) res.max_abs_err = err;
            if (ratio > res.max_rel_err) {
                res.max_rel_err = ratio;
                res.worst_input = k;
                res.worst_index = (int)j;
                res.worst_analytic = analytic;
                res.worst_numeric = numeric;
            }
        }
    }
    res.ok = res.max_rel_err <= 1.0;
    snprintf(res.message, sizeof res.message,
             "gradcheck %s: worst input %d elem %d analytic %.6g numeric %.6g (err/tol %.3g)",
             res.ok ? "ok" : "FAILED", res.worst_input, res.worst_index, res.worst_analytic,
             res.worst_numeric, res.max_rel_err);
    goto done;
fwd_fail:
    res.ok = false;
    snprintf(res.message, sizeof res.message, "gradcheck: perturbed forward failed: %s",
             sd_error_message());
done:
    for (int k = 0; k < n_inputs && k < GC_MAX_INPUTS; k++) {
        free(st.data[k]);
        free(st.grad[k]);
    }
    free(r);
    free(out_ref);
    free(out_plus);
    sd_graph_free(st.g);
    return res;
}
