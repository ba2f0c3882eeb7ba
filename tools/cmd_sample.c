/* cmd_sample.c - `scorediff sample`: draw samples from a trained score model
 * or an analytic Gaussian mixture with any sampler (samplers/include/sd/sampler.h), and
 * inpaint or colorize images.
 *
 * Output: OUT.png is one near-square grid with 1-pixel borders; --out-dir
 * writes DIR/00000.png, ... one per sample; low-dimensional models (data
 * shape D x 1 x 1) write OUT as CSV, one sample per line. Image samples are
 * mapped back from the model's data space ("unit" [0,1] or "centered"
 * [-1,1]) and clamped to [0,1]. A summary line (time, NFE per sample, score
 * evaluations per second) goes to stdout. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "sd/checkpoint.h"
#include "cli.h"
#include "sd/image_grid.h"
#include "sd/sampler.h"
#include "sd/data.h"
#include "sd/file.h"

#define CMD "sample"

typedef struct opts {
    const char *ckpt, *gmm, *sde, *sampler, *out, *out_dir, *trajectory;
    const char *predictor, *corrector, *method, *image, *mask, *schedule;
    long long n, seed, batch, levels, steps_per_level, corrector_steps, steps, snapshots;
    double eps, step_eps, snr, rtol, atol;
    double rho, sigma_min, sigma_max, churn, s_tmin, s_tmax, s_noise; /* -1: default */
    int denoise; /* -1 default */
    bool raw, quiet, colorize;
} opts;

#define I(fl, f, lo, hi, a, h) SD_OPT_I(fl, NULL, opts, f, lo, hi, 0, a, h)
#define D(fl, f, lo, hi, a, h) SD_OPT_D(fl, NULL, opts, f, lo, hi, 0, a, h)
#define P(fl, f, a, h) SD_OPT_P(fl, opts, f, a, h)
static const sd_option options[] = {
    SD_OPT_HEAD("Model"),
    P("--ckpt", ckpt, "FILE|RUN_DIR", "a checkpoint, or a run directory (its checkpoint)"),
    P("--gmm", gmm, "SPEC.json", "an analytic Gaussian mixture, with --sde"),
    P("--sde", sde, "FAMILY", "the noise family of --gmm (see Noise families below)"),
    P("--sampler", sampler, "S", "langevin | pc | ode | heun (35 NFE) | dpm2m (20 NFE)"),
    I("--n", n, 1, 100000000, "N", "number of samples"),
    SD_OPT_HEAD("Output"),
    P("--out", out, "FILE.png", "a grid of the samples (images); for low-dimensional\n"
                                "models FILE is a CSV file, one sample per line"),
    P("--out-dir", out_dir, "DIR", "one PNG per sample, DIR/00000.png, ..."),
    P("--trajectory", trajectory, "FILE",
      "snapshots along the way of the first samples (PNG grid:\n"
      "one row per sample; CSV for low-dimensional models)"),
    I("--snapshots", snapshots, 2, 100, "K", "number of snapshots (default 8)"),
    SD_OPT_HEAD("  An output never replaces an input (--ckpt, --gmm, --image, --mask) or a file\n"
                "  inside a run directory; such names are refused before any work."),
    SD_OPT_HEAD("Common options"),
    I("--seed", seed, 0, 9223372036854775807LL, "S",
      "random seed (default 0); same seed, same samples"),
    I("--batch", batch, 1, 1 << 20, "B", "samples processed together (default 256; bounds memory)"),
    D("--eps", eps, 0.0, 0.999999, "T", "smallest time (default 1e-5; 0 for ncsn)"),
    SD_OPT_F("--denoise", opts, denoise, 1, "final noise-free step (default on; ode: off; the\n"
                                            "state family has no Tweedie step: use --no-denoise)"),
    SD_OPT_F("--no-denoise", opts, denoise, 0, "no final noise-free step"),
    SD_OPT_F("--ema", opts, raw, 0, "EMA weights (default, when present)"),
    SD_OPT_F("--raw", opts, raw, 1, "the raw weights instead of the EMA"),
    SD_OPT_F("--quiet", opts, quiet, 1, "no progress display"),
    SD_OPT_HEAD("Annealed Langevin (Song & Ermon 2019)"),
    I("--levels", levels, 1, 100000, "L", "levels of continuous families (default 10; ncsn: its own)"),
    I("--steps-per-level", steps_per_level, 1, 1000000, "T",
      "Langevin steps per level (default 100)"),
    D("--step-eps", step_eps, 1e-30, 1e30, "E",
      "eps in alpha_i = eps sigma_i^2 / sigma_L^2 (0.1 sigma_L^2)"),
    SD_OPT_HEAD("Predictor-corrector (Song et al. 2021)"),
    P("--predictor", predictor, "P", "em | rd (reverse diffusion, default) | ancestral | none;\n"
                                     "dct, dense and state take em (their default) or none"),
    P("--corrector", corrector, "C", "langevin (default) | none"),
    I("--corrector-steps", corrector_steps, 1, 100000, "M", "corrector steps per time (default 1)"),
    D("--snr", snr, 1e-12, 1e6, "R", "corrector target signal-to-noise ratio (default 0.16)"),
    I("--steps", steps, 1, 10000000, "N", "pc: time points (default 1000; ncsn: its levels);\n"
                                          "ode, fixed-step methods: steps (default 100);\n"
                                          "heun: steps, 2N - 1 NFE (default 18: 35 NFE);\n"
                                          "dpm2m: steps, N NFE (default 20)"),
    SD_OPT_HEAD("Probability flow ODE"),
    P("--method", method, "M", "euler | heun | rk4 | rk45 (default)"),
    /* floors: cli_check_tolerances */
    D("--rtol", rtol, 0.0, 1.0, "X", "rk45 relative tolerance (default 1e-5; >= 1e-6, the floor\n"
                                     "for float32)"),
    D("--atol", atol, 0.0, 1.0, "X", "rk45 absolute tolerance (default 1e-5; >= 1e-12); at most\n"
                                     "100000 evaluations per batch (the solver's budget), else\n"
                                     "it stops with an error"),
    SD_OPT_HEAD("  --schedule (below) also sets the grid of the fixed-step methods, mapped to\n"
                "  times (default: equal steps in t)"),
    SD_OPT_HEAD("Few-step samplers (isotropic families ncsn, ve, vp, subvp only)\n"
                "  heun: EDM Heun (Karras et al. 2022, Alg. 2); dpm2m: DPM-Solver++(2M)\n"
                "  (Lu et al. 2022). --steps noise levels from sigma_max to sigma_min, then 0."),
    P("--schedule", schedule, "S", "karras (default) | loglinear | uniform (equal steps in t)"),
    D("--rho", rho, 1e-3, 1e3, "R", "karras exponent (default 7)"),
    D("--sigma-min", sigma_min, 1e-30, 1e30, "X",
      "grid's low end in sigma/a(t) (default the model's at the\n"
      "smallest time; vp, subvp: at t = 1e-3)"),
    D("--sigma-max", sigma_max, 1e-30, 1e30, "X",
      "grid's high end (default the model's sigma(1)/a(1))"),
    D("--churn", churn, 0.0, 1e6, "S", "heun: stochastic churn S_churn (default 0)"),
    D("--s-tmin", s_tmin, 0.0, 1e30, "X", "heun: churn only for sigma >= X (default 0)"),
    D("--s-tmax", s_tmax, 0.0, 1e30, "X", "heun: churn only for sigma <= X (default inf)"),
    D("--s-noise", s_noise, 0.0, 1e3, "X", "heun: S_noise (default 1)"),
    SD_OPT_HEAD("Inpainting and colorization (Song et al. 2021, App. I; langevin or pc;\n"
                "isotropic families ncsn, ve, vp, subvp only)"),
    P("--image", image, "FILE", "the image to complete (PNG, JPEG, ...; resized to the model)"),
    P("--mask", mask, "FILE", "white (>= 128) = known pixels, black = to be sampled"),
    SD_OPT_F("--colorize", opts, colorize, 1,
             "sample the colours of --image's gray levels (3-channel model)"),
};
#undef I
#undef D
#undef P

static void usage(FILE *f)
{
    fprintf(f,
"usage: scorediff sample (--ckpt FILE|RUN_DIR | --gmm SPEC.json --sde FAMILY)\n"
"                        --sampler langevin|pc|ode|heun|dpm2m --n N\n"
"                        (--out OUT | --out-dir DIR) [options]\n"
"\n");
    cli_print_options(f, options, sizeof options / sizeof *options);
    fprintf(f,
"Noise families (--sde, with --gmm): ncsn, ve, vp, subvp, and the matrix-valued\n"
"  dct:blur_max=B,shape=CxHxW    blurring diffusion in the DCT basis (images)\n"
"  dense:C=FILE.json             VE noise with covariance C ({\"C\": [[..],..]})\n"
"  state                         asinh image of ve: G depends on x\n"
"  (all three also take sigma_min, sigma_max; see scorediff train --help)\n"
"Exit codes: 0 done, 1 runtime failure, 2 bad options or input.\n");
}

static int parse(int argc, char **argv, opts *o, bool *help)
{
    memset(o, 0, sizeof *o);
    o->n = -1;
    o->batch = 256;
    o->levels = o->steps_per_level = o->corrector_steps = o->steps = -1;
    o->snapshots = 8;
    o->eps = o->step_eps = o->snr = o->rtol = o->atol = -1.0;
    o->rho = o->sigma_min = o->sigma_max = o->churn = o->s_tmin = o->s_tmax = o->s_noise = -1.0;
    o->denoise = -1;
    int rc = cli_parse_options(CMD, options, sizeof options / sizeof *options, argc, argv, o, NULL,
                               help);
    if (rc || *help) return rc;
    if (cli_check_model_source(CMD, o->ckpt, o->gmm, o->sde)) return 2;
    if (!o->sampler) return cli_fail(CMD, 2, "--sampler langevin|pc|ode|heun|dpm2m is required");
    if (o->n < 1) return cli_fail(CMD, 2, "--n N is required");
    if (!o->out == !o->out_dir) return cli_fail(CMD, 2, "give exactly one of --out and --out-dir");
    if (o->mask && !o->image) return cli_fail(CMD, 2, "--mask needs --image");
    if (o->image && !o->mask && !o->colorize)
        return cli_fail(CMD, 2, "--image needs --mask (inpainting) or --colorize");
    if (o->colorize && (!o->image || o->mask))
        return cli_fail(CMD, 2, "--colorize needs --image and no --mask");
    if (cli_check_tolerances(CMD, o->rtol, o->atol)) return 2;
    if (o->out && o->trajectory && !strcmp(o->out, o->trajectory))
        return cli_fail(CMD, 2, "--out and --trajectory both name %s; give two files", o->out);
    return 0;
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* No output may replace an input or a run's files, and each name says what
 * it holds (PNG for images, CSV for points); see cli_check_output. Returns
 * an exit code. */
static int check_outputs(const opts *o, bool points, size_t n)
{
    char ckpt[4200], cov[4096];
    struct stat sb;
    if (o->ckpt && stat(o->ckpt, &sb) == 0 && S_ISDIR(sb.st_mode))
        snprintf(ckpt, sizeof ckpt, "%s/checkpoint.safetensors", o->ckpt);
    else
        snprintf(ckpt, sizeof ckpt, "%s", o->ckpt ? o->ckpt : "");
    const cli_input in[] = {{"--ckpt", o->ckpt ? ckpt : NULL}, {"--gmm", o->gmm},
                            {"--image", o->image}, {"--mask", o->mask},
                            {"--sde", cli_sde_file(o->sde, cov, sizeof cov)}};
    const size_t nin = sizeof in / sizeof *in;
    const char *ext = points ? ".csv" : ".png";
    if (o->out_dir && !points && cli_check_output_dir(CMD, "--out-dir", o->out_dir, n, in, nin))
        return 2;
    if (o->out && cli_check_output(CMD, "--out", o->out, ext, in, nin)) return 2;
    if (o->trajectory && cli_check_output(CMD, "--trajectory", o->trajectory, ext, in, nin))
        return 2;
    return 0;
}

/* The few-step samplers' options (and --schedule for the ODE's fixed-step
 * methods); an option that the chosen sampler does not use is refused
 * rather than ignored. Returns an exit code. */
static int configure_fewstep(const opts *o, sd_sampler_opts *so)
{
    bool fewstep = so->kind == SD_SAMPLER_HEUN || so->kind == SD_SAMPLER_DPM2M;
    bool fixed_ode = so->kind == SD_SAMPLER_ODE && so->ode_method != SD_ODE_RK45;
    const char *name = sd_sampler_kind_name(so->kind);
    if (o->schedule) {
        if (!fewstep && !fixed_ode)
            return cli_fail(CMD, 2, "--schedule: only heun, dpm2m and the ode's fixed-step "
                                    "methods (euler, heun, rk4) step on a grid, not %s%s", name,
                            so->kind == SD_SAMPLER_ODE ? " with rk45" : "");
        if (!sd_schedule_parse(o->schedule, &so->schedule))
            return cli_fail(CMD, 2, "--schedule %s: expected karras, loglinear or uniform",
                            o->schedule);
    }
    if (o->rho > 0) {
        if (!fewstep && !(fixed_ode && o->schedule))
            return cli_fail(CMD, 2, "--rho: the karras grid's exponent, for heun, dpm2m or "
                                    "ode --schedule karras (not %s)", name);
        so->rho = o->rho;
    }
    if ((o->sigma_min > 0 || o->sigma_max > 0) && !fewstep)
        return cli_fail(CMD, 2, "--sigma-min/--sigma-max: the grid range of heun and dpm2m "
                                "(%s: use --eps)", name);
    if (o->sigma_min > 0) so->sigma_min = o->sigma_min;
    if (o->sigma_max > 0) so->sigma_max = o->sigma_max;
    if ((o->churn >= 0 || o->s_tmin >= 0 || o->s_tmax >= 0 || o->s_noise >= 0) &&
        so->kind != SD_SAMPLER_HEUN)
        return cli_fail(CMD, 2, "--churn/--s-tmin/--s-tmax/--s-noise: heun's stochastic churn "
                                "(not %s)", name);
    if (o->churn >= 0) so->churn = o->churn;
    if (o->s_tmin >= 0) so->s_tmin = o->s_tmin;
    if (o->s_tmax >= 0) so->s_tmax = o->s_tmax;
    if (o->s_noise >= 0) so->s_noise = o->s_noise;
    return 0;
}

/* Sampler options from the command line; returns an exit code. */
static int configure(const opts *o, sd_sampler_opts *so)
{
    sd_sampler_kind kind;
    if (!sd_sampler_kind_parse(o->sampler, &kind))
        return cli_fail(CMD, 2, "--sampler %s: expected langevin, pc, ode, heun or dpm2m",
                        o->sampler);
    *so = sd_sampler_defaults(kind);
    so->seed = (uint64_t)o->seed;
    so->batch = (size_t)o->batch;
    if (o->eps >= 0) so->t_eps = o->eps;
    if (o->denoise >= 0) so->denoise = o->denoise == 1;
    if (o->levels > 0) so->levels = (int)o->levels;
    if (o->steps_per_level > 0) so->steps_per_level = (int)o->steps_per_level;
    if (o->step_eps > 0) so->step_eps = o->step_eps;
    if (o->predictor && !sd_predictor_parse(o->predictor, &so->predictor))
        return cli_fail(CMD, 2, "--predictor %s: expected em, rd, ancestral or none",
                        o->predictor);
    if (o->corrector) {
        if (!strcmp(o->corrector, "langevin")) so->corrector = true;
        else if (!strcmp(o->corrector, "none")) so->corrector = false;
        else return cli_fail(CMD, 2, "--corrector %s: expected langevin or none", o->corrector);
    }
    if (o->corrector_steps > 0) so->corrector_steps = (int)o->corrector_steps;
    if (o->snr > 0) so->snr = o->snr;
    if (o->steps > 0) so->steps = (int)o->steps;
    if (o->method && !sd_ode_method_parse(o->method, &so->ode_method))
        return cli_fail(CMD, 2, "--method %s: expected euler, heun, rk4 or rk45", o->method);
    if (o->rtol > 0) so->rtol = o->rtol;
    if (o->atol > 0) so->atol = o->atol;
    return configure_fewstep(o, so);
}

static sd_status load_model(const opts *o, sd_model **m, char *transform, size_t tlen)
{
    return cli_load_model(o->ckpt, o->gmm, o->sde, o->raw, m, transform, tlen);
}

static bool centered(const char *transform)
{
    return !strcmp(transform, "centered") || !strcmp(transform, "centred") ||
           !strcmp(transform, "symmetric");
}

/* Model space -> [0, 1] display space, in place. */
static void to_display(const char *transform, float *x, size_t count)
{
    if (centered(transform))
        for (size_t i = 0; i < count; i++) x[i] = 0.5f * (x[i] + 1.0f);
}

/* ---- input images (inpainting / colorization) ---------------------------------- */

static sd_status read_image(const char *path, int channels, int size, uint8_t *out)
{
    /* sd/file.h: a FIFO or directory is refused at once, a size cap */
    char *buf = NULL;
    size_t len = 0;
    sd_status st = sd_file_read_all(path, SD_IMAGE_MAX_FILE_BYTES, &buf, &len);
    if (st == SD_OK) {
        sd_image img;
        if ((st = sd_image_decode((const uint8_t *)buf, len, &img)) != SD_OK) {
            st = sd_error(st, "%s: %s", path, sd_error_message());
        } else {
            st = sd_image_prepare(&img, channels, size, out);
            sd_image_free(&img);
            if (st != SD_OK) st = sd_error(st, "%s: %s", path, sd_error_message());
        }
    }
    sd_free(buf);
    return st;
}

/* The known data for n samples: inpainting data + mask [n, D], or colorization
 * gray [n, H*W]; values mapped into model space. Returns an exit code. */
static int load_conditioning(const opts *o, const sd_model *m, const char *transform, size_t n,
                             float **data, float **mask)
{
    size_t D = m->D, HW = (size_t)m->H * m->W;
    if (m->H == 1 && m->W == 1)
        return cli_fail(CMD, 2, "--image needs an image model (this one has %zu-D points)", D);
    if (m->H != m->W) return cli_fail(CMD, 2, "--image: the model's images are not square");
    if (o->colorize && m->C != 3)
        return cli_fail(CMD, 2, "--colorize needs a 3-channel model (this one has %d)", m->C);
    uint8_t *px = sd_malloc(D), *mk = sd_malloc(HW);
    *data = sd_malloc(n * (o->colorize ? HW : D) * sizeof(float));
    *mask = o->colorize ? NULL : sd_malloc(n * D * sizeof(float));
    if (!px || !mk || !*data || (!o->colorize && !*mask)) {
        sd_free(px);
        sd_free(mk);
        return cli_fail(CMD, 1, "out of memory");
    }
    sd_status st = read_image(o->image, m->C, m->H, px);
    if (st == SD_OK && o->mask) st = read_image(o->mask, 1, m->H, mk);
    if (st != SD_OK) {
        sd_free(px);
        sd_free(mk);
        return cli_fail(CMD, cli_exit_code(st), "%s", sd_error_message());
    }
    bool cen = centered(transform);
    for (size_t i = 0; i < n; i++) {
        if (o->colorize) {
            /* gray = the channel mean: the known axis of the colour transform */
            for (size_t p = 0; p < HW; p++) {
                float g = (px[p] + px[HW + p] + px[2 * HW + p]) / (3.0f * 255.0f);
                (*data)[i * HW + p] = cen ? 2.0f * g - 1.0f : g;
            }
        } else {
            for (size_t j = 0; j < D; j++) {
                float v = px[j] / 255.0f;
                (*data)[i * D + j] = cen ? 2.0f * v - 1.0f : v;
                (*mask)[i * D + j] = mk[j % HW] >= 128 ? 1.0f : 0.0f;
            }
        }
    }
    sd_free(px);
    sd_free(mk);
    return 0;
}

/* ---- progress and trajectory ------------------------------------------------------ */

typedef struct observe_ctx {
    cli_progress *pr;
    bool quiet;
    /* trajectory: the first R samples of batch 0 at K snapshots */
    float *snap;  /* [R, K, D] */
    double *snap_t;
    int R, K, taken;
    size_t D;
} observe_ctx;

static sd_status on_progress(void *vctx, const sd_sample_progress *p)
{
    observe_ctx *c = vctx;
    if (c->snap && p->batch == 0) {
        /* snapshot k is taken the first time the batch is k/(K-1) done */
        while (c->taken < c->K && (p->final || p->frac >= (double)c->taken / (c->K - 1))) {
            for (int r = 0; r < c->R; r++)
                memcpy(c->snap + ((size_t)r * c->K + c->taken) * c->D, p->x + (size_t)r * c->D,
                       c->D * sizeof(float));
            c->snap_t[c->taken++] = p->t;
            if (!p->final) break;
        }
    }
    if (!c->quiet) {
        char extra[64];
        snprintf(extra, sizeof extra, "batch %zu/%zu  t %.4f  NFE %lld", p->batch + 1,
                 p->n_batches, p->t, (long long)p->nfe);
        cli_progress_update(c->pr, (int64_t)(p->first + (size_t)(p->frac * (double)p->n)),
                            extra, false);
    }
    return SD_OK;
}

static sd_status write_csv(const char *path, const float *x, size_t n, size_t D)
{
    /* sd/file.h: written beside path and renamed over it when complete */
    sd_file_writer *w;
    sd_status st = sd_file_writer_open(path, &w);
    if (st != SD_OK) return st;
    FILE *f = sd_file_writer_stream(w);
    if (!f) {
        sd_file_writer_abort(w);
        return SD_ERR_IO;
    }
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < D; j++) fprintf(f, "%.9g%c", x[i * D + j], j + 1 < D ? ',' : '\n');
    return sd_file_writer_commit(w);
}

static sd_status write_outputs(const opts *o, const sd_model *m, const char *transform, float *x,
                               size_t n)
{
    bool points = m->H == 1 && m->W == 1;
    size_t D = m->D;
    if (points) return write_csv(o->out, x, n, D);
    to_display(transform, x, n * D);
    if (o->out) return sd_image_grid_write(o->out, x, n, m->C, m->H, m->W, 0);
    sd_status st = cli_mkdir(o->out_dir);
    uint8_t *px = st == SD_OK ? sd_malloc(D) : NULL;
    if (st == SD_OK && !px) st = SD_ERR_NOMEM;
    for (size_t i = 0; i < n && st == SD_OK; i++) {
        char path[4200];
        snprintf(path, sizeof path, "%s/%05zu.png", o->out_dir, i);
        sd_image_to_u8(x + i * D, m->C, m->H, m->W, px);
        st = sd_image_write_png(path, m->W, m->H, m->C, px);
    }
    sd_free(px);
    return st;
}

static sd_status write_trajectory(const char *path, const sd_model *m, const char *transform,
                                  observe_ctx *c)
{
    size_t D = m->D, cnt = (size_t)c->R * c->taken;
    if (m->H == 1 && m->W == 1) {
        sd_file_writer *w; /* sd/file.h: renamed into place when complete */
        sd_status st = sd_file_writer_open(path, &w);
        if (st != SD_OK) return st;
        FILE *f = sd_file_writer_stream(w);
        if (!f) {
            sd_file_writer_abort(w);
            return SD_ERR_IO;
        }
        fprintf(f, "snapshot,t,sample");
        for (size_t j = 0; j < D; j++) fprintf(f, ",x%zu", j + 1);
        fputc('\n', f);
        for (int k = 0; k < c->taken; k++)
            for (int r = 0; r < c->R; r++) {
                fprintf(f, "%d,%.9g,%d", k, c->snap_t[k], r);
                const float *x = c->snap + ((size_t)r * c->K + k) * D;
                for (size_t j = 0; j < D; j++) fprintf(f, ",%.9g", x[j]);
                fputc('\n', f);
            }
        return sd_file_writer_commit(w);
    }
    to_display(transform, c->snap, (size_t)c->R * c->K * D);
    /* rows = samples, columns = snapshots (a short final batch may have fewer) */
    if (c->taken < c->K)
        for (int r = 0; r < c->R; r++)
            memmove(c->snap + (size_t)r * c->taken * D, c->snap + (size_t)r * c->K * D,
                    (size_t)c->taken * D * sizeof(float));
    return sd_image_grid_write(path, c->snap, cnt, m->C, m->H, m->W, c->taken);
}

int sd_cmd_sample(int argc, char **argv)
{
    opts o;
    bool help;
    int rc = parse(argc, argv, &o, &help);
    if (help) {
        usage(stdout);
        return 0;
    }
    if (rc) return rc;
    sd_sampler_opts so;
    if ((rc = configure(&o, &so)) != 0) return rc;
    sd_model *m = NULL;
    char transform[32];
    sd_status st = load_model(&o, &m, transform, sizeof transform);
    if (st != SD_OK) return cli_fail(CMD, cli_exit_code(st), "%s", sd_error_message());
    /* reverse diffusion needs an isotropic family: em is the default otherwise */
    if (!o.predictor && !sd_sde_is_isotropic(&m->sde)) so.predictor = SD_PRED_EULER_MARUYAMA;
    bool points = m->H == 1 && m->W == 1;
    size_t n = (size_t)o.n, D = m->D;
    sd_scorer sc;
    memset(&sc, 0, sizeof sc);
    float *x = NULL, *data = NULL, *mask = NULL;
    observe_ctx oc;
    memset(&oc, 0, sizeof oc);
    if (points && o.out_dir) {
        rc = cli_fail(CMD, 2, "--out-dir writes images; this model has %zu-D points (use --out "
                              "FILE.csv)", D);
        goto done;
    }
    if (points && o.out && ends_with(o.out, ".png")) {
        rc = cli_fail(CMD, 2, "%s: this model has %zu-D points; write a CSV file", o.out, D);
        goto done;
    }
    if (!points && o.out && !ends_with(o.out, ".png")) {
        rc = cli_fail(CMD, 2, "%s: image samples are written as a .png grid (or use --out-dir)",
                      o.out);
        goto done;
    }
    if ((rc = check_outputs(&o, points, n)) != 0) goto done;
    if (o.image && (rc = load_conditioning(&o, m, transform, n, &data, &mask)) != 0) goto done;
    if ((st = sd_scorer_from_model(m, &sc)) != SD_OK) {
        rc = cli_fail(CMD, cli_exit_code(st), "%s", sd_error_message());
        goto done;
    }
    if (!(x = sd_malloc(n * D * sizeof(float)))) {
        rc = cli_fail(CMD, 1, "out of memory");
        goto done;
    }
    cli_progress pr;
    oc.pr = &pr;
    oc.quiet = o.quiet;
    oc.D = D;
    if (o.trajectory) {
        oc.K = (int)o.snapshots;
        size_t first_batch = so.batch < n ? so.batch : n;
        oc.R = points ? (int)(first_batch < 1000 ? first_batch : 1000)
                      : (int)(first_batch < 8 ? first_batch : 8);
        oc.snap = sd_malloc((size_t)oc.R * oc.K * D * sizeof(float));
        oc.snap_t = sd_malloc((size_t)oc.K * sizeof(double));
        if (!oc.snap || !oc.snap_t) {
            rc = cli_fail(CMD, 1, "out of memory");
            goto done;
        }
    }
    so.observer = on_progress;
    so.observer_ctx = &oc;
    if (!o.quiet) cli_progress_start(&pr, "sample", (int64_t)n, 0, points ? "it/s" : "img/s", 1);
    sd_sample_stats stats;
    if (o.colorize) st = sd_colorize(&sc, &so, data, n, x, &stats);
    else if (o.image) st = sd_inpaint(&sc, &so, data, mask, n, x, &stats);
    else st = sd_sample(&sc, &so, n, x, &stats);
    if (!o.quiet) cli_progress_end(&pr, st == SD_OK ? (int64_t)n : 0, NULL);
    if (st != SD_OK) {
        rc = cli_fail(CMD, cli_exit_code(st), "%s", sd_error_message());
        goto done;
    }
    if ((st = write_outputs(&o, m, transform, x, n)) != SD_OK ||
        (o.trajectory && (st = write_trajectory(o.trajectory, m, transform, &oc)) != SD_OK)) {
        rc = cli_fail(CMD, cli_exit_code(st), "%s", sd_error_message());
        goto done;
    }
    char sde[256], method[96] = "", esc[4 * 4200];
    sd_sde_to_string(&m->sde, sde, sizeof sde);
    if (so.kind == SD_SAMPLER_PC)
        snprintf(method, sizeof method, " (%s%s)", sd_predictor_name(so.predictor),
                 so.corrector ? " + langevin corrector" : "");
    else if (so.kind == SD_SAMPLER_ODE)
        snprintf(method, sizeof method, " (%s%s%s)", sd_ode_method_name(so.ode_method),
                 so.schedule != SD_SCHEDULE_DEFAULT ? ", " : "",
                 so.schedule != SD_SCHEDULE_DEFAULT ? sd_schedule_name(so.schedule) : "");
    else if (so.kind == SD_SAMPLER_HEUN || so.kind == SD_SAMPLER_DPM2M)
        snprintf(method, sizeof method, " (%d steps, %s grid)", so.steps,
                 sd_schedule_name(so.schedule == SD_SCHEDULE_DEFAULT ? SD_SCHEDULE_KARRAS
                                                                     : so.schedule));
    printf("scorediff sample: %zu samples, %s%s, %s, %.2f s, NFE per sample %lld",
           n, sd_sampler_kind_name(so.kind), method, sde, stats.seconds,
           (long long)stats.nfe_max);
    if (stats.nfe_min != stats.nfe_max)
        printf(" (batches %lld..%lld, mean %.1f)", (long long)stats.nfe_min,
               (long long)stats.nfe_max, (double)stats.nfe / (double)stats.batches);
    if (so.kind == SD_SAMPLER_ODE && so.ode_method == SD_ODE_RK45)
        printf(", %lld steps + %lld rejected", (long long)stats.ode_accepted,
               (long long)stats.ode_rejected);
    printf(", %.0f score evaluations/s -> %s\n",
           stats.seconds > 0 ? (double)stats.points / stats.seconds : 0.0,
           cli_escape(o.out ? o.out : o.out_dir, esc, sizeof esc));
done:
    sd_free(x);
    sd_free(data);
    sd_free(mask);
    sd_free(oc.snap);
    sd_free(oc.snap_t);
    sd_scorer_release(&sc);
    sd_model_free(m);
    return rc;
}
