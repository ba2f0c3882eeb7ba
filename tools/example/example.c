/* example.c - libscorediff from a C program: train a small score network on
 * 2-D points for 1,000 steps, draw samples from it, and estimate the
 * log-density of two points by the probability-flow ODE.
 *
 * Built outside the tree against the installed library (README "The C
 * library"); CI builds and runs it that way (tools/check-install.sh):
 *
 *     cc -std=c11 example.c $(pkg-config --cflags --libs scorediff) -o example
 *     ./example /tmp/example-run
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sd/checkpoint.h"
#include "sd/likelihood.h"
#include "sd/rng.h"
#include "sd/sampler.h"
#include "sd/status.h"
#include "sd/tensor.h"
#include "sd/train_run.h"
#include "sd/version.h"

/* 2,000 points from two Gaussian blobs at (-2, 0) and (2, 0), sd 0.3. */
static int write_points(const char *path)
{
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    sd_rng r;
    sd_rng_init(&r, 7, SD_STREAM_DATA);
    fprintf(f, "x,y\n");
    for (int i = 0; i < 2000; i++)
        fprintf(f, "%.6f,%.6f\n", (i % 2 ? 2.0 : -2.0) + 0.3 * sd_rng_normal(&r),
                0.3 * sd_rng_normal(&r));
    return fclose(f);
}

int main(int argc, char **argv)
{
    const char *dir = argc > 1 ? argv[1] : "example-run";
    printf("libscorediff %s (headers %s)\n", sd_version(), SD_VERSION_STRING);
    sd_threads_init(0); /* worker threads: OMP_NUM_THREADS, else all cores */

    /* 1. Train: the same run as `scorediff train --data DIR/points.csv --model
     *    mlp --steps 1000 --batch 128 --lr 2e-3 --out DIR` (sd/train_run.h). */
    char csv[4096];
    snprintf(csv, sizeof csv, "%s.csv", dir);
    if (write_points(csv) != 0) {
        fprintf(stderr, "example: cannot write %s\n", csv);
        return 1;
    }
    sd_train_opts o;
    sd_train_opts_default(&o);
    snprintf(o.data, sizeof o.data, "%s", csv);
    snprintf(o.out, sizeof o.out, "%s", dir);
    snprintf(o.model, sizeof o.model, "mlp");
    o.steps = 1000;
    o.batch = 128;
    o.lr = 2e-3;
    o.quiet = true;
    o.no_report = true;
    sd_train_result tr;
    int rc = sd_train_run(&o, NULL, &tr);
    if (rc != SD_TRAIN_OK) {
        fprintf(stderr, "example: training failed (%d): %s\n", rc, sd_error_message());
        return 1;
    }
    printf("trained %lld steps, last loss %.4f, family %s\n", (long long)tr.step,
           (double)tr.last_loss, tr.sde);

    /* 2. Load the checkpoint's EMA weights (sd/checkpoint.h). */
    char ckpt[4200];
    snprintf(ckpt, sizeof ckpt, "%s/checkpoint.safetensors", dir);
    sd_model *m = NULL;
    if (sd_checkpoint_load_model(ckpt, true, &m, NULL) != SD_OK) {
        fprintf(stderr, "example: %s: %s\n", ckpt, sd_error_message());
        return 1;
    }

    /* 3. Sample 8 points with the reverse-SDE predictor-corrector sampler
     *    (sd/sampler.h); every draw comes from the seed. */
    sd_scorer sc;
    if (sd_scorer_from_model(m, &sc) != SD_OK) {
        fprintf(stderr, "example: %s\n", sd_error_message());
        sd_model_free(m);
        return 1;
    }
    sd_sampler_opts so = sd_sampler_defaults(SD_SAMPLER_PC);
    so.seed = 1;
    float xs[8 * 2];
    sd_sample_stats st;
    if (sd_sample(&sc, &so, 8, xs, &st) != SD_OK) {
        fprintf(stderr, "example: sampling failed: %s\n", sd_error_message());
        sd_scorer_release(&sc);
        sd_model_free(m);
        return 1;
    }
    printf("8 samples (%lld score evaluations):\n", (long long)st.nfe);
    for (int i = 0; i < 8; i++) printf("  (%+.3f, %+.3f)\n", (double)xs[2 * i], (double)xs[2 * i + 1]);
    sd_scorer_release(&sc);

    /* 4. log p of a point on a blob and of one between them, by the
     *    probability-flow ODE (sd/likelihood.h): the first must be larger. */
    sd_lik_config lc = sd_lik_config_default();
    sd_lik *lk = NULL;
    const float pts[4] = {2.0f, 0.0f, 0.0f, 0.0f};
    double logp[2];
    int64_t nfe = 0;
    if (sd_lik_new(m, &lc, &lk) != SD_OK || sd_lik_ode(lk, pts, 2, 0, logp, NULL, &nfe) != SD_OK) {
        fprintf(stderr, "example: likelihood failed: %s\n", sd_error_message());
        sd_lik_free(lk);
        sd_model_free(m);
        return 1;
    }
    printf("log p(2, 0) = %.3f nats, log p(0, 0) = %.3f nats (%lld evaluations)\n", logp[0],
           logp[1], (long long)nfe);
    sd_lik_free(lk);
    sd_model_free(m);
    return logp[0] > logp[1] ? 0 : 1;
}
