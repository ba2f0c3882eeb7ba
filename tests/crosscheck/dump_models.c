/* dump_models.c - C half of the PyTorch cross-check of the reference score
 * networks (tests/crosscheck/crosscheck_models.py runs it).
 *
 * Usage: dump_models OUTDIR
 *
 * For each model M in unet-28 (batch 2), unet-32 (batch 2), mlp (D = 2,
 * batch 5) it initialises the parameters from a fixed seed, draws x, sigma
 * (cond = log sigma) and a cotangent r, runs out = net(x, cond, sigma) and
 * the backward of L = sum(out * r), and writes into OUTDIR:
 *   M.manifest.txt  "trainable_count T" then one line per parameter:
 *                   "name trainable offset ndim d0 d1 ..." in declaration order
 *   M.params.npy    all parameter values, flat float32 (declaration order)
 *   M.grads.npy     dL/dparam, flat (buffers: 0)
 *   M.x.npy M.cond.npy M.sigma.npy M.r.npy M.out.npy M.dx.npy
 * Files are NumPy .npy v1.0, little-endian float32, C order.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sd/mlp.h"
#include "sd/ops.h"
#include "sd/params.h"
#include "sd/rng.h"
#include "sd/unet.h"

static int write_npy(const char *dir, const char *model, const char *what, const float *data,
                     int ndim, const int *shape)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.%s.npy", dir, model, what);
    char dict[256];
    int off = snprintf(dict, sizeof dict, "{'descr': '<f4', 'fortran_order': False, 'shape': (");
    size_t n = 1;
    for (int i = 0; i < ndim; i++) {
        off += snprintf(dict + off, sizeof dict - (size_t)off, "%d,%s", shape[i],
                        i + 1 < ndim ? " " : "");
        n *= (size_t)shape[i];
    }
    off += snprintf(dict + off, sizeof dict - (size_t)off, "), }");
    /* magic(6) + version(2) + header length(2) + dict, padded with spaces
     * and a final newline to a multiple of 64 bytes. */
    size_t total = 10 + (size_t)off + 1;
    size_t pad = (64 - total % 64) % 64;
    unsigned hlen = (unsigned)((size_t)off + pad + 1);
    FILE *f = fopen(path, "wb");
    if (!f) {
        fprintf(stderr, "dump_models: cannot write %s\n", path);
        return -1;
    }
    unsigned char head[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0,
                              (unsigned char)(hlen & 0xff), (unsigned char)(hlen >> 8)};
    int ok = fwrite(head, 1, 10, f) == 10 && fwrite(dict, 1, (size_t)off, f) == (size_t)off;
    for (size_t i = 0; ok && i < pad; i++) ok = fputc(' ', f) != EOF;
    ok = ok && fputc('\n', f) != EOF && fwrite(data, sizeof(float), n, f) == n;
    ok = (fclose(f) == 0) && ok;
    if (!ok) fprintf(stderr, "dump_models: write error on %s\n", path);
    return ok ? 0 : -1;
}

static int write_manifest(const char *dir, const char *model, const sd_params *p)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.manifest.txt", dir, model);
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "dump_models: cannot write %s\n", path);
        return -1;
    }
    fprintf(f, "trainable_count %zu\n", sd_params_trainable_count(p));
    for (size_t i = 0; i < p->count; i++) {
        const sd_param *it = &p->items[i];
        fprintf(f, "%s %d %zu %d", it->name, it->trainable ? 1 : 0, it->offset, it->ndim);
        for (int d = 0; d < it->ndim; d++) fprintf(f, " %d", it->shape[d]);
        fputc('\n', f);
    }
    if (fclose(f) != 0) return -1;
    return 0;
}

typedef struct job {
    const char *name;
    bool is_unet;
    sd_unet unet;
    sd_mlp mlp;
    int n, xdim, xshape[4];
    float sigma_lo, sigma_hi;
} job;

static int run(const char *dir, job *jb, uint64_t seed)
{
    int rc = -1;
    sd_params *p = sd_params_new();
    sd_graph *g = sd_graph_new();
    float *cond = NULL, *sigma = NULL, *r = NULL;
    if (!p || !g) goto done;
    sd_status st;
    if (jb->is_unet) {
        bool ok;
        sd_unet_config cfg = sd_unet_preset(jb->name, &ok);
        st = ok ? sd_unet_declare(&cfg, p, &jb->unet) : SD_ERR_INVALID;
    } else {
        sd_mlp_config cfg = sd_mlp_reference(2);
        st = sd_mlp_declare(&cfg, p, &jb->mlp);
    }
    if (st != SD_OK || sd_params_finalize(p) != SD_OK) goto done;
    sd_rng init, data;
    sd_rng_init(&init, seed, SD_STREAM_INIT);
    sd_rng_init(&data, seed, SD_STREAM_DATA);
    if (jb->is_unet) sd_unet_init(&jb->unet, p, &init);
    else sd_mlp_init(&jb->mlp, p, &init);

    int n = jb->n;
    cond = malloc((size_t)n * sizeof(float));
    sigma = malloc((size_t)n * sizeof(float));
    if (!cond || !sigma) goto done;
    /* sigma spread log-uniformly over [lo, hi] (strata (i + u) / n, so
     * small and large noise levels both occur), cond = log sigma (VE). */
    for (int i = 0; i < n; i++) {
        float u = ((float)i + sd_rng_uniform(&data)) / (float)n;
        sigma[i] = expf(logf(jb->sigma_lo) + u * (logf(jb->sigma_hi) - logf(jb->sigma_lo)));
        cond[i] = logf(sigma[i]);
    }
    sd_tensor *x = sd_tensor_new(g, jb->xdim, jb->xshape);
    if (!x) goto done;
    sd_rng_fill_normal(&data, x->data, x->numel, 0.0f, 1.0f);
    sd_tensor_requires_grad(x);
    sd_tensor *out = jb->is_unet ? sd_unet_forward(&jb->unet, p, g, x, cond, sigma)
                                 : sd_mlp_forward(&jb->mlp, p, g, x, cond, sigma);
    if (!out) goto done;
    r = malloc(out->numel * sizeof(float));
    if (!r) goto done;
    sd_rng_fill_normal(&data, r, out->numel, 0.0f, 1.0f);
    sd_params_zero_grad(p);
    if (sd_graph_backward(g, out, r) != SD_OK) goto done;

    int total = (int)p->total;
    if (write_manifest(dir, jb->name, p) || write_npy(dir, jb->name, "params", p->data, 1, &total) ||
        write_npy(dir, jb->name, "grads", p->grad, 1, &total) ||
        write_npy(dir, jb->name, "x", x->data, x->ndim, x->shape) ||
        write_npy(dir, jb->name, "cond", cond, 1, &n) ||
        write_npy(dir, jb->name, "sigma", sigma, 1, &n) ||
        write_npy(dir, jb->name, "r", r, out->ndim, out->shape) ||
        write_npy(dir, jb->name, "out", out->data, out->ndim, out->shape) ||
        write_npy(dir, jb->name, "dx", x->grad, x->ndim, x->shape))
        goto done;
    printf("%s: %zu trainable parameters, output [", jb->name, sd_params_trainable_count(p));
    for (int d = 0; d < out->ndim; d++) printf(d ? ", %d" : "%d", out->shape[d]);
    printf("]\n");
    rc = 0;
done:
    if (rc) fprintf(stderr, "dump_models: %s failed: %s\n", jb->name, sd_error_message());
    free(cond);
    free(sigma);
    free(r);
    sd_graph_free(g);
    sd_params_free(p);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: dump_models OUTDIR\n");
        return EXIT_FAILURE;
    }
    sd_threads_init(2);
    static job jobs[3] = {
        {.name = "unet-28", .is_unet = true, .n = 2, .xdim = 4, .xshape = {2, 1, 28, 28},
         .sigma_lo = 0.05f, .sigma_hi = 20.0f},
        {.name = "unet-32", .is_unet = true, .n = 2, .xdim = 4, .xshape = {2, 3, 32, 32},
         .sigma_lo = 0.05f, .sigma_hi = 20.0f},
        {.name = "mlp", .is_unet = false, .n = 5, .xdim = 2, .xshape = {5, 2},
         .sigma_lo = 0.01f, .sigma_hi = 10.0f},
    };
    for (int k = 0; k < 3; k++)
        if (run(argv[1], &jobs[k], 20240601u + (uint64_t)k)) return EXIT_FAILURE;
    return EXIT_SUCCESS;
}
