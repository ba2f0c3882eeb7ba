/* cmd_loglik.c - `scorediff loglik`: log-likelihoods and bits per dimension of
 * held-out data under a trained model or an analytic mixture, by the
 * probability-flow ODE or by ELBO / IWAE (samplers/include/sd/likelihood.h).
 *
 * Per item (image or CSV point) one CSV row: index, log p in nats (data
 * space: the data transform's log|det| included), bits/dim for images, NFE,
 * and the Hutchinson probe standard error; at the end the mean and its
 * standard error over the items. Images are dequantised as x = (k + u) / 256
 * with u from (seed, SD_STREAM_DEQUANT) split by item and draw, so any subset
 * (--limit) reproduces the same numbers per item. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "sd/checkpoint.h"
#include "cli.h"
#include "sd/likelihood.h"
#include "sd/data.h"
#include "sd/file.h"
#include "sd/rng.h"

#define CMD "loglik"

typedef struct opts {
    const char *ckpt, *gmm, *sde, *data, *out, *method;
    const char *divergence, *probe, *decoder;
    long long probes, K, steps, limit, dequant, batch, seed;
    double eps, rtol, atol;
    bool raw, quiet;
} opts;

#define I(fl, f, lo, hi, a, h) SD_OPT_I(fl, NULL, opts, f, lo, hi, 0, a, h)
#define D(fl, f, lo, hi, a, h) SD_OPT_D(fl, NULL, opts, f, lo, hi, 0, a, h)
#define P(fl, f, a, h) SD_OPT_P(fl, opts, f, a, h)
static const sd_option options[] = {
    SD_OPT_HEAD("Estimates log p_eps(x), the model's density at the time eps where sampling\n"
                "ends, for every item of the data set, and its mean +- standard error."),
    P("--ckpt", ckpt, "FILE|RUN_DIR", "a checkpoint, or a run directory (its checkpoint)"),
    P("--gmm", gmm, "SPEC.json", "an analytic Gaussian mixture, with --sde"),
    P("--sde", sde, "FAMILY", "the noise family of --gmm (see below)"),
    P("--data", data, "DIR|FILE.csv", "the held-out images or points"),
    P("--method", method, "M",
      "ode: probability-flow ODE, RK45 on [x, divergence] (Song et\n"
      "al. 2021, App. D.2): an estimate of log p itself\n"
      "with every family, including dct, dense and state;\n"
      "elbo|iwae: lower bounds through an N-step Gaussian chain: the mean\n"
      "of K log-weights, or log (1/K) sum of K weights\n"
      "(Burda et al. 2016); IWAE_K approaches log p as K, N grow;\n"
      "isotropic families (ncsn, ve, vp, subvp) only"),
    SD_OPT_HEAD("Options"),
    P("--divergence", divergence, "exact|hutchinson", "ODE divergence (default exact if D <= 64)"),
    I("--probes", probes, 1, 4096, "n", "Hutchinson probes per item, fixed along its path (1)"),
    P("--probe", probe, "rademacher|gaussian", "Hutchinson probe distribution (default rademacher)"),
    /* floors: cli_check_tolerances */
    D("--rtol", rtol, 0.0, 1.0, "X", "RK45 relative tolerance (1e-5; >= 1e-6, the floor for float32)"),
    D("--atol", atol, 0.0, 1.0, "X", "RK45 absolute tolerance (1e-5; >= 1e-12); at most 100000\n"
                                     "evaluations per batch"),
    I("--K", K, 1, 1000000, "k", "chains per item (elbo 1, iwae 50)"),
    I("--steps", steps, 1, 1000000, "N", "chain steps between eps and 1 (100)"),
    P("--decoder", decoder, "full|iso|em", "reverse step: moment-matched full covariance (D <= 64\n"
                                           "default), isotropic, or Euler-Maruyama (see likelihood.h)"),
    D("--eps", eps, 0.0, 1.0, "E", "start time (default 1e-5; 0 for ncsn)"),
    I("--limit", limit, 1, 1LL << 40, "M", "only the first M items"),
    I("--dequant", dequant, 1, 1000, "n", "dequantisation draws per image, log p averaged (1)"),
    I("--batch", batch, 1, 1 << 20, "B", "items per model evaluation (16 images, 256 points)"),
    I("--seed", seed, 0, 9223372036854775807LL, "S", "probes, chains and dequantisation noise (0)"),
    SD_OPT_F("--raw", opts, raw, 1, "use the raw weights instead of the EMA"),
    P("--out", out, "FILE.csv", "per-item rows (default: stdout, summary as # lines); never\n"
                                "an input or a file inside a run directory"),
    SD_OPT_F("--quiet", opts, quiet, 1, "no progress display"),
};
#undef I
#undef D
#undef P

static void usage(FILE *f)
{
    fprintf(f,
"usage: scorediff loglik (--ckpt FILE|RUN_DIR | --gmm SPEC.json --sde FAMILY)\n"
"                        --data DIR|FILE.csv --method ode|elbo|iwae [options]\n"
"\n");
    cli_print_options(f, options, sizeof options / sizeof *options);
    fprintf(f,
"Bits/dim = -(log p(x) - D log 256) / (D ln 2) for x in [0,1]^D (images only).\n"
"--sde (with --gmm) as in scorediff sample --help: ncsn, ve, vp, subvp,\n"
"dct:...,shape=CxHxW, dense:...,C=FILE.json, state:...\n"
"Exit codes: 0 done, 1 runtime failure, 2 bad options or data.\n");
}

static int parse(int argc, char **argv, opts *o, bool *help)
{
    memset(o, 0, sizeof *o);
    o->probes = 1;
    o->K = -1;
    o->steps = 100;
    o->limit = -1;
    o->dequant = 1;
    o->batch = -1;
    o->eps = -1.0;
    o->rtol = o->atol = 1e-5;
    int rc = cli_parse_options(CMD, options, sizeof options / sizeof *options, argc, argv, o, NULL,
                               help);
    if (rc || *help) return rc;
    if (cli_check_model_source(CMD, o->ckpt, o->gmm, o->sde)) return 2;
    if (!o->data) return cli_fail(CMD, 2, "--data DIR|FILE.csv is required");
    if (!o->method) return cli_fail(CMD, 2, "--method ode|elbo|iwae is required");
    if (strcmp(o->method, "ode") && strcmp(o->method, "elbo") && strcmp(o->method, "iwae"))
        return cli_fail(CMD, 2, "--method %s: expected ode, elbo or iwae", o->method);
    if (cli_check_tolerances(CMD, o->rtol, o->atol)) return 2;
    if (o->out) {
        /* the per-item rows never replace the model, the data or a run's files */
        char ckpt[4200], cov[4096];
        struct stat sb;
        if (o->ckpt && stat(o->ckpt, &sb) == 0 && S_ISDIR(sb.st_mode))
            snprintf(ckpt, sizeof ckpt, "%s/checkpoint.safetensors", o->ckpt);
        else
            snprintf(ckpt, sizeof ckpt, "%s", o->ckpt ? o->ckpt : "");
        const cli_input in[] = {{"--ckpt", o->ckpt ? ckpt : NULL}, {"--gmm", o->gmm},
                                {"--data", o->data},
                                {"--sde", cli_sde_file(o->sde, cov, sizeof cov)}};
        if (cli_check_output(CMD, "--out", o->out, ".csv", in, sizeof in / sizeof *in)) return 2;
    }
    return 0;
}

/* Resolve the string options into the estimator's configuration. */
static int configure(const opts *o, bool images, sd_lik_config *cfg)
{
    *cfg = sd_lik_config_default();
    cfg->eps = o->eps;
    cfg->rtol = o->rtol;
    cfg->atol = o->atol;
    cfg->probes = (int)o->probes;
    cfg->steps = (int)o->steps;
    cfg->seed = (uint64_t)o->seed;
    cfg->batch = o->batch > 0 ? (int)o->batch : images ? 16 : 256;
    if (o->divergence) {
        if (!strcmp(o->divergence, "exact")) cfg->div = SD_LIK_DIV_EXACT;
        else if (!strcmp(o->divergence, "hutchinson")) cfg->div = SD_LIK_DIV_HUTCHINSON;
        else
            return cli_fail(CMD, 2, "--divergence %s: expected exact or hutchinson",
                            o->divergence);
    }
    if (o->probe) {
        if (!strcmp(o->probe, "rademacher")) cfg->probe = SD_LIK_PROBE_RADEMACHER;
        else if (!strcmp(o->probe, "gaussian")) cfg->probe = SD_LIK_PROBE_GAUSSIAN;
        else return cli_fail(CMD, 2, "--probe %s: expected rademacher or gaussian", o->probe);
    }
    if (o->decoder) {
        if (!strcmp(o->decoder, "full")) cfg->decoder = SD_LIK_DEC_FULL;
        else if (!strcmp(o->decoder, "iso")) cfg->decoder = SD_LIK_DEC_ISO;
        else if (!strcmp(o->decoder, "em")) cfg->decoder = SD_LIK_DEC_EM;
        else return cli_fail(CMD, 2, "--decoder %s: expected full, iso or em", o->decoder);
    }
    return 0;
}

static sd_status load_model(const opts *o, sd_model **m, sd_lik_xform *xf)
{
    *xf = SD_LIK_XFORM_IDENTITY;
    char transform[32];
    sd_status st = cli_load_model(o->ckpt, o->gmm, o->sde, o->raw, m, transform, sizeof transform);
    if (st != SD_OK || o->gmm) return st;
    st = sd_lik_xform_parse(transform, xf);
    if (st != SD_OK) {
        sd_model_free(*m);
        *m = NULL;
        char msg[512];
        snprintf(msg, sizeof msg, "%s", sd_error_message());
        return sd_error(st, "%s: %s", o->ckpt, msg);
    }
    return SD_OK;
}

/* Progress within a batch (one ODE solve or chain run can take minutes). */
typedef struct progress_ctx {
    cli_progress *pr;
    int64_t done;   /* items finished before this batch */
    int draw, draws;
    char extra[96]; /* running mean so far */
} progress_ctx;

static void on_progress(void *vctx, double frac)
{
    progress_ctx *c = vctx;
    char buf[160];
    snprintf(buf, sizeof buf, "batch %3.0f%%%s%s", 100.0 * (c->draw + frac) / c->draws,
             c->extra[0] ? "  " : "", c->extra);
    cli_progress_update(c->pr, c->done, buf, false);
}

/* Dequantised, transformed copies of items [i0, i0 + nb) for draw d into y. */
static void prepare_items(const sd_dataset *ds, size_t i0, size_t nb, int d, int draws,
                          uint64_t seed, sd_lik_xform xf, float *y)
{
    size_t D = sd_dataset_item_size(ds);
    if (ds->kind == SD_DATA_POINTS) {
        memcpy(y, ds->points + i0 * D, nb * D * sizeof(float));
        return;
    }
    sd_rng base, r;
    sd_rng_init(&base, seed, SD_STREAM_DEQUANT);
    for (size_t p = 0; p < nb; p++) {
        sd_rng_split(&base, (uint64_t)(i0 + p) * (uint64_t)draws + (uint64_t)d, &r);
        const uint8_t *k = ds->pixels + (i0 + p) * D;
        float *yp = y + p * D;
        for (size_t i = 0; i < D; i++) yp[i] = ((float)k[i] + sd_rng_uniform(&r)) / 256.0f;
        sd_lik_xform_apply(xf, yp, yp, D);
    }
}

int sd_cmd_loglik(int argc, char **argv)
{
    opts o;
    bool help;
    int rc = parse(argc, argv, &o, &help);
    if (help) {
        usage(stdout);
        return 0;
    }
    if (rc) return rc;
    sd_model *m = NULL;
    sd_lik *lk = NULL;
    sd_dataset ds;
    memset(&ds, 0, sizeof ds);
    float *y = NULL;
    double *lp = NULL, *se = NULL, *acc = NULL, *acc_se = NULL;
    FILE *out = stdout;
    sd_file_writer *outw = NULL; /* --out: renamed into place when complete */
    sd_lik_xform xf;
    sd_status st = load_model(&o, &m, &xf);
    if (st != SD_OK) return cli_fail(CMD, cli_exit_code(st), "%s", sd_error_message());
    if (strcmp(o.method, "ode") != 0 && !sd_sde_is_isotropic(&m->sde)) {
        /* the chains' Gaussian transitions are written for scalar a(t), sigma(t) */
        char spec[256];
        sd_sde_to_string(&m->sde, spec, sizeof spec);
        sd_model_free(m);
        return cli_fail(CMD, 2, "--method %s needs an isotropic noise family (ncsn, ve, vp, "
                                "subvp), not %s; use --method ode", o.method, spec);
    }
    /* An image folder against a points model (or the reverse) would be loaded
     * at the model's shape and fail with a confusing size message. */
    struct stat dsb;
    bool points_model = m->H == 1 && m->W == 1;
    bool folder = stat(o.data, &dsb) == 0 && S_ISDIR(dsb.st_mode);
    if (points_model && folder) {
        rc = cli_fail(CMD, 2, "%s: is an image folder, but the model (%s) is a model of %zu-D "
                      "points; give a CSV file of %zu-D points", o.data, o.ckpt ? o.ckpt : o.gmm,
                      m->D, m->D);
        goto done;
    }
    if (!points_model && !folder) {
        rc = cli_fail(CMD, 2, "%s: is not an image folder, but the model (%s) is an image model "
                      "(%dx%dx%d); give a folder of images", o.data, o.ckpt ? o.ckpt : o.gmm,
                      m->C, m->H, m->W);
        goto done;
    }
    sd_image_opts io = {.channels = m->C, .size = m->H};
    if (m->C != 1 && m->C != 3) io.channels = 1; /* points: the CSV loader ignores io */
    if ((st = sd_data_load(o.data, &io, &ds)) != SD_OK) {
        rc = cli_fail(CMD, cli_exit_code(st), "%s", sd_error_message());
        goto done;
    }
    bool images = ds.kind == SD_DATA_IMAGES;
    size_t D = m->D;
    if (sd_dataset_item_size(&ds) != D ||
        (images && (ds.c != m->C || ds.h != m->H || ds.w != m->W))) {
        rc = cli_fail(CMD, 2, "%s: items are %dx%dx%d but the model expects %dx%dx%d", o.data,
                      ds.c, ds.h, ds.w, m->C, m->H, m->W);
        goto done;
    }
    if (!images && o.dequant != 1) {
        rc = cli_fail(CMD, 2, "--dequant applies to images only");
        goto done;
    }
    sd_lik_config cfg;
    cli_progress pr;
    progress_ctx pc = {.pr = &pr, .draws = (int)o.dequant};
    if ((rc = configure(&o, images, &cfg)) != 0) goto done;
    if (!o.quiet) {
        cfg.progress = on_progress;
        cfg.progress_ctx = &pc;
    }
    if ((st = sd_lik_new(m, &cfg, &lk)) != SD_OK) {
        rc = cli_fail(CMD, cli_exit_code(st), "%s", sd_error_message());
        goto done;
    }
    const sd_lik_config *rcfg = sd_lik_get_config(lk);
    bool ode = !strcmp(o.method, "ode"), iwae = !strcmp(o.method, "iwae");
    int K = o.K > 0 ? (int)o.K : iwae ? 50 : 1, draws = (int)o.dequant;
    size_t n = o.limit > 0 && (size_t)o.limit < ds.n ? (size_t)o.limit : ds.n;
    size_t B = (size_t)cfg.batch;
    y = sd_malloc(B * D * sizeof(float));
    lp = sd_malloc(B * (size_t)K * sizeof(double));
    se = sd_malloc(B * sizeof(double));
    acc = sd_calloc(B, sizeof(double));
    acc_se = sd_calloc(B, sizeof(double));
    if (!y || !lp || !se || !acc || !acc_se) {
        rc = cli_fail(CMD, 1, "out of memory");
        goto done;
    }
    if (o.out && (sd_file_writer_open(o.out, &outw) != SD_OK ||
                  !(out = sd_file_writer_stream(outw)))) {
        out = stdout;
        rc = cli_fail(CMD, 2, "%s", sd_error_message());
        goto done;
    }
    const char *c = o.out ? "" : "# ";
    double logdet = sd_lik_xform_logdet(xf, D);
    char desc[256];
    if (ode)
        snprintf(desc, sizeof desc, "ode, %s divergence%s, rtol %g atol %g",
                 rcfg->div == SD_LIK_DIV_EXACT ? "exact" : "hutchinson",
                 rcfg->div == SD_LIK_DIV_EXACT ? ""
                 : rcfg->probe == SD_LIK_PROBE_GAUSSIAN ? " (gaussian probes)"
                                                        : " (rademacher probes)",
                 rcfg->rtol, rcfg->atol);
    else
        snprintf(desc, sizeof desc, "%s, K = %d, N = %d steps, %s decoder", o.method, K,
                 rcfg->steps, rcfg->decoder == SD_LIK_DEC_FULL  ? "full"
                              : rcfg->decoder == SD_LIK_DEC_ISO ? "iso" : "em");
    if (!o.out) printf("# scorediff loglik: %s, eps %g, %zu items of dimension %zu\n", desc,
                       rcfg->eps, n, D);
    fprintf(out, "index,logp_nats,bits_per_dim,nfe,probe_se\n");
    sd_lik_stats s_lp = {0}, s_nfe = {0};
    if (!o.quiet) cli_progress_start(&pr, "loglik", (int64_t)n, 0, images ? "img/s" : "it/s", 1);
    double t0 = cli_now();
    for (size_t i0 = 0; i0 < n; i0 += B) {
        size_t nb = n - i0 < B ? n - i0 : B;
        int64_t nfe_sum = 0;
        for (size_t p = 0; p < nb; p++) acc[p] = acc_se[p] = 0.0;
        pc.done = (int64_t)i0;
        for (int d = 0; d < draws; d++) {
            pc.draw = d;
            prepare_items(&ds, i0, nb, d, draws, (uint64_t)o.seed, xf, y);
            /* probes / chains of item i in draw d: stream index d * N_dataset + i */
            uint64_t index0 = (uint64_t)d * ds.n + i0;
            int64_t nfe = 0;
            if (ode) st = sd_lik_ode(lk, y, nb, index0, lp, se, &nfe);
            else st = sd_lik_elbo(lk, y, nb, index0, K, lp, &nfe);
            if (st != SD_OK) {
                if (!o.quiet) cli_progress_end(&pr, (int64_t)i0, NULL);
                rc = cli_fail(CMD, 1, "item %zu: %s", i0, sd_error_message());
                goto done;
            }
            nfe_sum += nfe;
            for (size_t p = 0; p < nb; p++) {
                double v = ode ? lp[p] : sd_lik_iwae(lp + p * (size_t)K, K, iwae ? K : 1);
                acc[p] += v / draws;
                if (ode) acc_se[p] += se[p] * se[p] / ((double)draws * draws);
            }
        }
        for (size_t p = 0; p < nb; p++) {
            double lpd = acc[p] + logdet;
            sd_lik_stats_add(&s_lp, lpd);
            sd_lik_stats_add(&s_nfe, (double)nfe_sum);
            fprintf(out, "%zu,%.6f,", i0 + p, lpd);
            if (images) fprintf(out, "%.6f", sd_lik_bits_per_dim(lpd, D));
            fprintf(out, ",%lld,", (long long)nfe_sum);
            if (ode && rcfg->div == SD_LIK_DIV_HUTCHINSON && rcfg->probes > 1)
                fprintf(out, "%.6f", sqrt(acc_se[p]));
            fputc('\n', out);
        }
        if (!o.quiet) {
            if (images)
                snprintf(pc.extra, sizeof pc.extra, "%.4f bits/dim",
                         sd_lik_bits_per_dim(s_lp.mean, D));
            else
                snprintf(pc.extra, sizeof pc.extra, "log p %.4f", s_lp.mean);
            cli_progress_update(&pr, (int64_t)(i0 + nb), pc.extra, false);
        }
    }
    double secs = cli_now() - t0;
    if (!o.quiet) cli_progress_end(&pr, (int64_t)n, NULL);
    out = stdout;
    if (outw) {
        sd_status cst = sd_file_writer_commit(outw);
        outw = NULL;
        if (cst != SD_OK) {
            rc = cli_fail(CMD, 1, "%s", sd_error_message());
            goto done;
        }
    }
    double se_lp = sd_lik_stats_se(&s_lp);
    printf("%smethod:    %s, eps %g\n", c, desc, rcfg->eps);
    printf("%sitems:     %zu (dimension %zu%s)\n", c, n, D,
           images ? (draws > 1 ? ", dequantised, several draws" : ", dequantised") : "");
    printf("%slog p:     %.4f +- %.4f nats (mean +- standard error over the items)\n", c,
           s_lp.mean, se_lp);
    if (images)
        printf("%sbits/dim:  %.4f +- %.4f\n", c, sd_lik_bits_per_dim(s_lp.mean, D),
               se_lp / ((double)D * log(2.0)));
    printf("%sNFE:       %.1f per item (mean)\n", c, s_nfe.mean);
    printf("%stime:      %.2f s (%.3f s per item)\n", c, secs, n ? secs / (double)n : 0.0);
    rc = 0;
done:
    sd_file_writer_abort(outw); /* a failed run leaves no partial --out */
    sd_free(y);
    sd_free(lp);
    sd_free(se);
    sd_free(acc);
    sd_free(acc_se);
    sd_lik_free(lk);
    sd_dataset_free(&ds);
    sd_model_free(m);
    return rc;
}
