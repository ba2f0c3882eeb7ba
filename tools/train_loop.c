/* train_loop.c - the training run of `scorediff train`; see train_loop.h.
 *
 * Order of work: load the data; resolve the noise family (NCSNv2's
 * data-driven sigma_max / L unless given), the data transform and the model;
 * then (unless --dry-run) lock RUN_DIR, write config.json, restore the
 * checkpoint when resuming, cut metrics.csv back to its step, and run the
 * steps. Everything that writes into RUN_DIR goes through a temporary file,
 * fsync and rename, so a crash at any point leaves each file either old or
 * new (metrics.csv is appended line by line and fsynced before every
 * checkpoint, so it always reaches at least the checkpoint's step).
 */
#include "train_loop.h"
#include "sd/blas_core.h"
#include "sd/file.h"

#include <dirent.h>
#include <errno.h>
#include <float.h>
#include <limits.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "checkpoint.h"
#include "cli.h"
#include "sd/data.h"
#include "sd/gemm.h"
#include "sd/safetensors.h"
#include "trainer.h"

#define CMD "train"
#define P SD_TRAIN_PATH_MAX
/* Technique 1 on at most this many items (evenly spaced in the data's
 * sorted order) and at most NCSNV2_MAX_FLOATS floats: the maximum over a
 * subset of 2000 is within a few percent of the full one on image data and
 * takes about a second. */
enum { NCSNV2_SUBSET = 2000, LANGEVIN_T = 5, RUNNING_WINDOW = 100 };
#define NCSNV2_MAX_FLOATS ((size_t)1 << 26)

typedef struct run {
    const sd_train_opts *in;
    const sd_train_hooks *h;
    sd_train_opts o; /* resolved copy */
    sd_dataset ds;
    sd_sde sde;
    sd_model *m;
    sd_trainer *tr;
    sd_loader *ld;
    float *xbuf; /* [B, D] transformed batch */
    float *stash; /* parameters while the sample hook sees the EMA */
    FILE *metrics;
    int lock_fd;
    bool created_dir; /* this invocation made RUN_DIR (removed again on a failed start) */
    bool started;     /* the first step began: the run's files tell its story from here */
    /* out, data and the checkpoint path as printed: control bytes escaped */
    char eout[4 * P], edata[4 * P], eckpt[4 * P];
    char ckpt[P], metrics_path[P];
    /* NCSNv2 report */
    bool have_dist, sigma_from_data, levels_from_data;
    double dist, gamma, eps;
    size_t dist_items;
    int levels;
} run;

static int fail(int code, const char *fmt, const char *msg)
{
    return cli_fail(CMD, code, fmt, msg);
}

/* buf [P] = dir/name; false if too long. */
static bool join(char *buf, const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    if (a + b + 2 > P) return false;
    memcpy(buf, dir, a);
    buf[a] = '/';
    memcpy(buf + a + 1, name, b + 1);
    return true;
}

static bool file_exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

void sd_train_opts_default(sd_train_opts *o)
{
    memset(o, 0, sizeof *o);
    snprintf(o->model, sizeof o->model, "auto");
    o->ch = 32;
    o->n_mult = 3;
    o->mult[0] = 1;
    o->mult[1] = o->mult[2] = 2;
    o->num_res_blocks = 2;
    o->channels = 1;
    snprintf(o->sde, sizeof o->sde, "ve");
    snprintf(o->transform, sizeof o->transform, "auto");
    o->objective = SD_OBJECTIVE_DSM;
    o->weighting = SD_WEIGHT_VARIANCE;
    o->lr = 2e-4;
    o->clip = 1.0;
    o->ema = 0.999;
    o->warmup = -1;
    o->steps = 10000;
    o->ckpt_every = 1000;
    o->log_every = 1;
}

/* ---- NCSNv2 (Song & Ermon 2020) ------------------------------------------ */

sd_status sd_ncsnv2_max_distance(const float *x, size_t n, size_t D, double *out)
{
    *out = 0.0;
    if (n < 2 || D == 0) return SD_OK;
    enum { ROWS = 256 };
    double *norm = sd_malloc(n * sizeof *norm);
    float *g = sd_malloc(ROWS * n * sizeof *g);
    if (!norm || !g) {
        sd_free(norm);
        sd_free(g);
        return SD_ERR_NOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        double s = 0.0;
        for (size_t k = 0; k < D; k++) s += (double)x[i * D + k] * x[i * D + k];
        norm[i] = s;
    }
    /* ||a - b||^2 = |a|^2 + |b|^2 - 2 a.b, with a.b from one GEMM per block of
     * rows; the winning pair is then recomputed directly in double, so the
     * float Gram matrix only has to rank the pairs. */
    double best = -1.0;
    size_t bi = 0, bj = 1;
    for (size_t i0 = 0; i0 < n; i0 += ROWS) {
        int rows = (int)(n - i0 < ROWS ? n - i0 : ROWS);
        sd_gemm(false, true, rows, (int)n, (int)D, 1.0f, x + i0 * D, (int)D, x, (int)D, 0.0f, g,
                (int)n);
        for (int r = 0; r < rows; r++)
            for (size_t j = i0 + (size_t)r + 1; j < n; j++) {
                double d2 = norm[i0 + r] + norm[j] - 2.0 * g[(size_t)r * n + j];
                if (d2 > best) {
                    best = d2;
                    bi = i0 + (size_t)r;
                    bj = j;
                }
            }
    }
    double s = 0.0;
    for (size_t k = 0; k < D; k++) {
        double d = (double)x[bi * D + k] - x[bj * D + k];
        s += d * d;
    }
    *out = sqrt(s);
    sd_free(norm);
    sd_free(g);
    return SD_OK;
}

static double phi(double x) { return 0.5 * erfc(-x / sqrt(2.0)); }

/* Technique 2: with x ~ N(0, sigma_i^2 I), ||x|| is close to
 * N(sqrt(D) sigma_i, sigma_i^2 / 2); the criterion is the probability that it
 * falls within 3 standard deviations of the next larger shell,
 * sqrt(D) sigma_{i-1} +- 3 sigma_{i-1} / sqrt(2). */
double sd_ncsnv2_criterion(size_t D, double gamma)
{
    double r = sqrt(2.0 * (double)D) * (gamma - 1.0);
    return phi(r + 3.0 * gamma) - phi(r - 3.0 * gamma);
}

double sd_ncsnv2_gamma(size_t D)
{
    /* For sqrt(2D) <= 3 both arguments' slopes allow the criterion to stay
     * above 0.5 for every gamma: Technique 2 gives no answer. */
    if (sqrt(2.0 * (double)D) <= 3.0) return 0.0;
    double lo = 1.0, hi = 2.0;
    while (sd_ncsnv2_criterion(D, hi) > 0.5) {
        lo = hi;
        hi *= 2.0;
        if (hi > 1e6) return 0.0;
    }
    for (int it = 0; it < 200 && hi - lo > 1e-15 * hi; it++) {
        double mid = 0.5 * (lo + hi);
        if (sd_ncsnv2_criterion(D, mid) > 0.5) lo = mid;
        else hi = mid;
    }
    return 0.5 * (lo + hi);
}

int sd_ncsnv2_levels(double sigma_max, double sigma_min, double gamma)
{
    if (!(gamma > 1.0) || !(sigma_max > sigma_min) || !(sigma_min > 0)) return 0;
    double L = 1.0 + ceil(log(sigma_max / sigma_min) / log(gamma) - 1e-9);
    return L > 100000 ? 100000 : (int)L;
}

/* Technique 4, the paper's eq. for s_T^2 / sigma_i^2 after T steps of
 * annealed Langevin dynamics at level i started from N(0, sigma_{i-1}^2 I). */
double sd_ncsnv2_step_criterion(double gamma, double sigma_min, int T, double eps)
{
    double s2 = sigma_min * sigma_min, a = 1.0 - eps / s2;
    double c = 2.0 * eps / (s2 - s2 * a * a);
    return pow(a, 2.0 * T) * (gamma * gamma - c) + c;
}

double sd_ncsnv2_step_size(double gamma, double sigma_min, int T)
{
    if (!(gamma > 1.0) || !(sigma_min > 0) || T < 1) return 0.0;
    /* A log grid of eps in (0, sigma_min^2), then golden-section refinement
     * of |f - 1| between the best point's neighbours. */
    enum { N = 4000 };
    double s2 = sigma_min * sigma_min, lo_e = log(1e-9 * s2), hi_e = log(s2 * (1.0 - 1e-9));
    int best = 0;
    double bv = INFINITY;
    for (int k = 0; k <= N; k++) {
        double e = exp(lo_e + (hi_e - lo_e) * k / N);
        double v = fabs(sd_ncsnv2_step_criterion(gamma, sigma_min, T, e) - 1.0);
        if (v < bv) {
            bv = v;
            best = k;
        }
    }
    double a = lo_e + (hi_e - lo_e) * (best > 0 ? best - 1 : 0) / N;
    double b = lo_e + (hi_e - lo_e) * (best < N ? best + 1 : N) / N;
    const double gr = (sqrt(5.0) - 1.0) / 2.0;
    for (int it = 0; it < 100; it++) {
        double c = b - gr * (b - a), d = a + gr * (b - a);
        if (fabs(sd_ncsnv2_step_criterion(gamma, sigma_min, T, exp(c)) - 1.0) <
            fabs(sd_ncsnv2_step_criterion(gamma, sigma_min, T, exp(d)) - 1.0))
            b = d;
        else
            a = c;
    }
    return exp(0.5 * (a + b));
}

/* ---- setup ----------------------------------------------------------------- */

static void warn_cb(void *ctx, const char *path, const char *reason)
{
    (void)ctx;
    char e[4 * P], r[1024];
    fprintf(stderr, "scorediff train: warning: %s: %s\n", cli_escape(path, e, sizeof e),
            cli_escape(reason, r, sizeof r));
}

static int load_data(run *R)
{
    sd_train_opts *o = &R->o;
    sd_image_opts io = {.channels = o->channels, .size = o->size, .warn = warn_cb};
    sd_status st = sd_data_load(o->data, &io, &R->ds);
    if (st != SD_OK) return fail(cli_exit_code(st), "%s", sd_error_message());
    const sd_dataset *ds = &R->ds;
    if (ds->kind == SD_DATA_POINTS) {
        if (o->given & (SD_TOPT_CHANNELS | SD_TOPT_SIZE | SD_TOPT_FLIP))
            return fail(2, "%s: --channels, --size and --flip apply to image folders only", o->data);
        if (!o->dry_run)
            fprintf(stderr, "scorediff train: data %s: %zu points of dimension %d\n", R->edata,
                    ds->n, ds->c);
    } else if (!o->dry_run) {
        fprintf(stderr, "scorediff train: data %s: %zu images %dx%dx%d (%zu skipped, %zu other "
                        "files ignored)\n", R->edata, ds->n, ds->c, ds->h, ds->w,
                ds->summary.skipped, ds->summary.ignored);
    }
    return 0;
}

static int resolve_transform(run *R)
{
    char *t = R->o.transform;
    bool points = R->ds.kind == SD_DATA_POINTS;
    if (strcmp(t, "auto") == 0) {
        snprintf(t, sizeof R->o.transform, "%s",
                 points ? "identity"
                        : sd_sde_has(&R->sde, SD_SDE_CENTERED_DATA) ? "centered"
                                                                    : "unit");
        return 0;
    }
    if (points && strcmp(t, "identity") != 0)
        return fail(2, "--data-transform %s: CSV points are used as they are (identity)", t);
    if (!points && strcmp(t, "unit") != 0 && strcmp(t, "centered") != 0)
        return fail(2, "--data-transform %s: images take unit or centered", t);
    return 0;
}

/* One item (transformed as the network sees it) into x [D]. */
static void item_floats(const run *R, size_t i, float *x)
{
    const sd_dataset *ds = &R->ds;
    size_t D = sd_dataset_item_size(ds);
    if (ds->kind == SD_DATA_POINTS) {
        memcpy(x, ds->points + i * D, D * sizeof *x);
        return;
    }
    bool centered = strcmp(R->o.transform, "centered") == 0;
    for (size_t k = 0; k < D; k++) {
        float v = ((float)ds->pixels[i * D + k] + 0.5f) / 256.0f;
        x[k] = centered ? 2.0f * v - 1.0f : v;
    }
}

static int data_distance(run *R)
{
    size_t n = R->ds.n, D = sd_dataset_item_size(&R->ds);
    size_t m = n < NCSNV2_SUBSET ? n : NCSNV2_SUBSET;
    if (m > NCSNV2_MAX_FLOATS / D) m = NCSNV2_MAX_FLOATS / D;
    if (m < 2) m = n < 2 ? n : 2;
    float *x = sd_malloc(m * D * sizeof *x);
    if (!x) return fail(1, "%s", sd_error_message());
    for (size_t i = 0; i < m; i++) item_floats(R, (size_t)((uint64_t)i * n / m), x + i * D);
    sd_status st = sd_ncsnv2_max_distance(x, m, D, &R->dist);
    sd_free(x);
    if (st != SD_OK) return fail(1, "%s", sd_error_message());
    R->dist_items = m;
    R->have_dist = true;
    return 0;
}

/* The noise family, with NCSNv2's sigma_max (Technique 1) and, for ncsn, L
 * (Technique 2) unless the spec gives them; then canonicalised (printed and
 * re-parsed) so that a resumed run parses exactly the same numbers. */
static int resolve_sde(run *R)
{
    sd_train_opts *o = &R->o;
    if (sd_sde_parse(o->sde, &R->sde) != SD_OK) return fail(2, "%s", sd_error_message());
    int rc = resolve_transform(R);
    if (rc) return rc;
    bool sigma_family = sd_sde_has(&R->sde, SD_SDE_NCSNV2_SIGMA);
    R->sigma_from_data = sigma_family && !strstr(o->sde, "sigma_max=");
    R->levels_from_data = sd_sde_has(&R->sde, SD_SDE_DISCRETE_LEVELS) && !strstr(o->sde, "L=");
    if ((R->sigma_from_data || o->dry_run) && (rc = data_distance(R))) return rc;
    if (R->sigma_from_data) {
        if (R->dist > R->sde.sigma_min) {
            R->sde.sigma_max = R->dist;
        } else {
            fprintf(stderr, "scorediff train: warning: the data's largest pairwise distance %g "
                            "is not above sigma_min %g; keeping sigma_max %g\n", R->dist,
                    R->sde.sigma_min, R->sde.sigma_max);
            R->sigma_from_data = false;
        }
    }
    size_t D = sd_dataset_item_size(&R->ds);
    R->gamma = sd_ncsnv2_gamma(D);
    if (sigma_family) {
        R->levels = sd_ncsnv2_levels(R->sde.sigma_max, R->sde.sigma_min, R->gamma);
        if (R->levels_from_data && R->levels >= 2) R->sde.levels = R->levels;
        else R->levels_from_data = false;
        if (R->levels < 2) /* no Technique 2 (D < 5): the family's or 10 levels */
            R->levels = sd_sde_has(&R->sde, SD_SDE_DISCRETE_LEVELS) ? R->sde.levels : 10;
        /* The Langevin step follows the ladder the sampler will walk: the
         * family's own for ncsn, Technique 2's for ve. */
        int L = sd_sde_has(&R->sde, SD_SDE_DISCRETE_LEVELS) ? R->sde.levels : R->levels;
        double ratio = L >= 2 ? pow(R->sde.sigma_max / R->sde.sigma_min, 1.0 / (L - 1)) : 0.0;
        R->eps = sd_ncsnv2_step_size(ratio, R->sde.sigma_min, LANGEVIN_T);
    }
    char spec[256];
    sd_sde_to_string(&R->sde, spec, sizeof spec);
    if (sd_sde_parse(spec, &R->sde) != SD_OK) return fail(1, "%s", sd_error_message());
    snprintf(o->sde, sizeof o->sde, "%s", spec);
    return 0;
}

static int build_model(run *R)
{
    sd_train_opts *o = &R->o;
    const sd_dataset *ds = &R->ds;
    if (strcmp(o->model, "auto") == 0) {
        const char *name = ds->kind == SD_DATA_POINTS                      ? "mlp"
                           : (ds->c == 1 && ds->h == 28 && ds->w == 28) ? "unet-28"
                           : (ds->c == 3 && ds->h == 32 && ds->w == 32) ? "unet-32"
                                                                          : "unet";
        snprintf(o->model, sizeof o->model, "%s", name);
    }
    if (strcmp(o->model, "unet") != 0 && (o->given & (SD_TOPT_CH | SD_TOPT_MULT | SD_TOPT_NRB)))
        return fail(2, "--ch, --mult and --num-res-blocks apply to --model unet only (not %s)",
                    o->model);
    sd_unet_config uc = {.channels = ds->c, .resolution = ds->h, .ch = o->ch,
                         .n_levels = o->n_mult, .num_res_blocks = o->num_res_blocks, .groups = 8};
    for (int i = 0; i < o->n_mult; i++) uc.mult[i] = o->mult[i];
    sd_status st = sd_model_new_network(o->model, &uc, ds->c, ds->h, ds->w, &R->sde, &R->m);
    if (st != SD_OK) return fail(cli_exit_code(st), "%s", sd_error_message());
    if (o->batch == 0) o->batch = ds->kind == SD_DATA_POINTS ? 256 : 128;
    if (o->warmup < 0) o->warmup = o->steps / 10 < 5000 ? o->steps / 10 : 5000;
    return 0;
}

static const char *objective_name(const sd_train_opts *o)
{
    return o->objective == SD_OBJECTIVE_SSM ? "ssm" : "dsm";
}
static const char *weighting_name(const sd_train_opts *o)
{
    return o->weighting == SD_WEIGHT_LIKELIHOOD ? "likelihood" : "variance";
}

static void describe(const run *R, FILE *f)
{
    const sd_train_opts *o = &R->o;
    const sd_dataset *ds = &R->ds;
    if (ds->kind == SD_DATA_POINTS)
        fprintf(f, "data:       %s: %zu points of dimension %d\n", R->edata, ds->n, ds->c);
    else
        fprintf(f, "data:       %s: %zu images, %dx%dx%d (%zu of %zu image files skipped, %zu "
                   "other files ignored)\n", R->edata, ds->n, ds->c, ds->h, ds->w,
                ds->summary.skipped, ds->summary.candidates, ds->summary.ignored);
    char cfg[1024] = "";
    sd_model_config_json(R->m, cfg, sizeof cfg);
    fprintf(f, "model:      %s, %zu parameters %s\n", o->model,
            sd_params_trainable_count(R->m->params), cfg);
    fprintf(f, "sde:        %s%s%s\n", o->sde, R->sigma_from_data ? " (sigma_max from the data)" : "",
            R->levels_from_data ? " (L from Technique 2)" : "");
    fprintf(f, "transform:  %s\n", o->transform);
    fprintf(f, "NCSNv2:     (Song & Ermon 2020, Techniques 1, 2, 4)\n");
    if (R->have_dist)
        fprintf(f, "  sigma_max  = %.6g, the largest pairwise distance (over %zu of %zu items)\n",
                R->dist, R->dist_items, ds->n);
    if (R->gamma > 0)
        fprintf(f, "  gamma      = %.6f (D = %zu) -> L = %d levels from sigma_max %.6g to "
                   "sigma_min %.6g\n", R->gamma, sd_dataset_item_size(ds), R->levels,
                R->sde.sigma_max, R->sde.sigma_min);
    else
        fprintf(f, "  gamma      = n/a (D = %zu < 5: Technique 2's criterion never reaches 0.5); "
                   "L = %d\n", sd_dataset_item_size(ds), R->levels);
    if (R->eps > 0)
        fprintf(f, "  Langevin step size eps = %.6g (T = %d steps per level)\n", R->eps, LANGEVIN_T);
    fprintf(f, "training:   batch %" PRId64 ", steps %" PRId64 ", lr %g (warm-up %" PRId64
               "%s), clip %g, ema %g, %s with %s weighting, seed %" PRIu64 ", threads %d\n",
            o->batch, o->steps, o->lr, o->warmup, o->cosine ? ", cosine decay" : "", o->clip,
            o->ema, objective_name(o), weighting_name(o), o->seed, sd_threads_get());
    char blas[256];
    sd_blas_describe(blas, sizeof blas);
    fprintf(f, "BLAS:       %s\n", blas);
}

/* ---- run directory ------------------------------------------------------- */

/* Temporary files left by a killed run (sd/file.h names them
 * "<file>.tmp.<pid>.<n>"; older versions wrote "<file>.tmp.<pid>" and
 * "<file>.tmp") are garbage once we hold the lock. */
static bool is_stale_temp(const char *name)
{
    static const char *const files[] = {"checkpoint.safetensors", "metrics.csv", "config.json"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        size_t n = strlen(files[i]);
        if (strncmp(name, files[i], n) != 0 || strncmp(name + n, ".tmp", 4) != 0) continue;
        const char *c = name + n + 4;
        if (*c && *c != '.') continue;
        while (*c && (*c == '.' || (*c >= '0' && *c <= '9'))) c++;
        if (!*c) return true;
    }
    return false;
}

static void remove_stale_temps(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    char path[P];
    while ((e = readdir(d)))
        if (is_stale_temp(e->d_name) && join(path, dir, e->d_name)) unlink(path);
    closedir(d);
}

static int prepare_dir(run *R)
{
    const char *out = R->o.out;
    if (!out[0]) return fail(2, "%s", "--out RUN_DIR is required (or --resume RUN_DIR)");
    R->created_dir = !file_exists(out);
    if (cli_mkdir(out) != SD_OK) return fail(2, "%s", sd_error_message());
    char path[P];
    if (!join(path, out, "lock") || !join(R->ckpt, out, "checkpoint.safetensors") ||
        !join(R->metrics_path, out, "metrics.csv"))
        return fail(2, "%s: path too long", out);
    R->lock_fd = open(path, O_RDWR | O_CREAT, 0644);
    if (R->lock_fd < 0)
        return cli_fail(CMD, 2, "%s: cannot open the run's lock file: %s%s", path, strerror(errno),
                        errno == EISDIR ? " (remove that directory; the run creates the file)"
                                        : "");
    if (flock(R->lock_fd, LOCK_EX | LOCK_NB) != 0)
        return fail(2, "%s: the run directory is in use by another scorediff train", out);
    join(path, out, "config.json");
    if (!R->o.resume && file_exists(R->ckpt))
        return fail(2, "%s: already holds a run; continue it with --resume, or choose a new --out",
                    out);
    /* A run that never wrote a checkpoint (a start that failed, or a run
     * stopped before its first checkpoint) has nothing to continue: --out
     * starts it again in place, with the options given now. */
    if (!R->o.resume && file_exists(path))
        fprintf(stderr, "scorediff train: %s holds a run without a checkpoint; starting it "
                        "again from step 0\n", R->eout);
    remove_stale_temps(out);
    /* A resumed run keeps the NCSNv2 and data entries of the first one. */
    char extra[1536] = "";
    char dist[32] = "null"; /* not computed when sigma_max was given */
    if (R->have_dist) snprintf(dist, sizeof dist, "%.17g", R->dist);
    /* the spec as the user wrote it, as a JSON string (a dense C=FILE path
     * may hold quotes or backslashes) */
    cJSON *given = cJSON_CreateString(R->in->sde);
    char *given_json = given ? cJSON_PrintUnformatted(given) : NULL;
    cJSON_Delete(given);
    if (!given_json) return fail(1, "%s: out of memory writing config.json", R->eout);
    if (!R->o.resume)
        snprintf(extra, sizeof extra, "\"sde_given\":%s,\"ncsnv2\":{\"max_pairwise_distance\":%s,"
                 "\"distance_items\":%zu,"
                 "\"gamma\":%.17g,\"levels\":%d,\"langevin_eps\":%.17g,\"langevin_T\":%d},"
                 "\"data_items\":%zu,\"data_shape\":[%d,%d,%d]",
                 given_json, dist, R->dist_items, R->gamma, R->levels, R->eps, LANGEVIN_T, R->ds.n,
                 R->ds.c, R->ds.h, R->ds.w);
    cJSON_free(given_json);
    /* a restarted run's config.json is a new one, not a merge with the old */
    if (!R->o.resume) unlink(path);
    sd_status st = sd_run_config_write(out, &R->o, extra[0] ? extra : NULL);
    if (st != SD_OK) return fail(1, "%s", sd_error_message());
    if (R->h->sample && R->o.sample_every > 0 && R->ds.kind == SD_DATA_IMAGES) {
        join(path, out, "samples");
        if (cli_mkdir(path) != SD_OK) return fail(1, "%s", sd_error_message());
    }
    return 0;
}

/* Parse one metrics row "step,loss,running,...,elapsed". */
static bool parse_row(const char *line, int64_t *step, double *running, double *elapsed)
{
    double v[7];
    char *end;
    const char *s = line;
    for (int k = 0; k < 7; k++) {
        errno = 0;
        v[k] = strtod(s, &end);
        if (end == s || errno) return false;
        s = end;
        if (k < 6) {
            if (*s != ',') return false;
            s++;
        }
    }
    *step = (int64_t)v[0];
    *running = v[2];
    *elapsed = v[6];
    return true;
}

#define METRICS_HEADER "step,loss,running_loss,grad_norm,lr,images_per_s,elapsed_s\n"

/* metrics.csv cut back to the rows of steps <= step0 (atomically), then
 * opened for appending; running/elapsed continue from the row of step0. */
static int open_metrics(run *R, int64_t step0, double *running, double *elapsed, bool *have)
{
    *have = false;
    *running = 0.0;
    *elapsed = 0.0;
    size_t cap = 1 << 16, len = 0;
    char *keep = sd_malloc(cap);
    if (!keep) return fail(1, "%s", sd_error_message());
    memcpy(keep, METRICS_HEADER, sizeof METRICS_HEADER - 1);
    len = sizeof METRICS_HEADER - 1;
    /* A missing or unreadable log restarts from its header, as before. */
    FILE *f = NULL;
    if (step0 > 0 && sd_file_fopen_read(R->metrics_path, &f) != SD_OK) f = NULL;
    char line[512];
    bool first = true;
    while (f && fgets(line, sizeof line, f)) {
        if (first) { /* the header */
            first = false;
            continue;
        }
        int64_t s;
        double run_v, el;
        if (!parse_row(line, &s, &run_v, &el) || s > step0) break;
        size_t l = strlen(line);
        if (line[l - 1] != '\n') break; /* a torn last line */
        if (len + l > cap) {
            char *k2 = sd_malloc(cap * 2);
            if (!k2) {
                sd_free(keep);
                fclose(f);
                return fail(1, "%s", sd_error_message());
            }
            memcpy(k2, keep, len);
            sd_free(keep);
            keep = k2;
            cap *= 2;
        }
        memcpy(keep + len, line, l);
        len += l;
        if (s == step0) {
            *running = run_v;
            *elapsed = el;
            *have = true;
        }
    }
    if (f) fclose(f);
    sd_status st = sd_file_write_atomic(R->metrics_path, keep, len);
    sd_free(keep);
    if (st != SD_OK) return fail(1, "%s", sd_error_message());
    R->metrics = fopen(R->metrics_path, "a");
    if (!R->metrics) return cli_fail(CMD, 1, "%s: %s", R->metrics_path, strerror(errno));
    return 0;
}

static void train_json(const run *R, char *buf, size_t len)
{
    const sd_train_opts *o = &R->o;
    snprintf(buf, len,
             "{\"batch\":%" PRId64 ",\"steps\":%" PRId64 ",\"warmup\":%" PRId64 ",\"lr\":%.9g,"
             "\"cosine\":%s,\"clip\":%.9g,\"ema\":%.9g,\"objective\":\"%s\",\"weighting\":\"%s\","
             "\"threads\":%d}",
             o->batch, o->steps, o->warmup, o->lr, o->cosine ? "true" : "false", o->clip, o->ema,
             objective_name(o), weighting_name(o), sd_threads_get());
}

static sd_status save_checkpoint(run *R)
{
    /* metrics.csv reaches the checkpoint's step before the checkpoint exists */
    if (fflush(R->metrics) != 0 || fsync(fileno(R->metrics)) != 0)
        return sd_error(SD_ERR_IO, "%s: cannot write: %s", R->metrics_path, strerror(errno));
    sd_ckpt_meta meta = {.step = R->tr->step, .seed = R->o.seed, .batch = (int)R->o.batch};
    snprintf(meta.data_transform, sizeof meta.data_transform, "%s", R->o.transform);
    train_json(R, meta.train_json, sizeof meta.train_json);
    return sd_checkpoint_save(R->ckpt, R->m, R->tr, &meta);
}

/* The sample hook sees the EMA weights; the raw ones are restored bit for bit. */
static void call_sampler(run *R)
{
    sd_params *p = R->m->params;
    char name[64], path[P];
    snprintf(name, sizeof name, "samples/step_%06" PRId64 ".png", R->tr->step);
    if (!join(path, R->o.out, name)) return;
    if (!R->stash && !(R->stash = sd_malloc(p->total * sizeof(float)))) return;
    memcpy(R->stash, p->data, p->total * sizeof(float));
    memcpy(p->data, R->tr->ema, p->total * sizeof(float));
    sd_status st = R->h->sample(R->h->sample_ctx, R->m, R->o.transform, R->tr->step, R->o.seed,
                                path);
    memcpy(p->data, R->stash, p->total * sizeof(float));
    if (st != SD_OK)
        fprintf(stderr, "\nscorediff train: warning: sample grid at step %" PRId64 ": %s\n",
                R->tr->step, sd_error_message());
}

/* ---- the loop --------------------------------------------------------------- */

/* ---- memory of a training step ---------------------------------------------- */

/* Peak arena bytes of one forward + backward of the loss on b items, on a
 * scratch graph with a scratch gradient buffer and fixed streams: the run's
 * parameters, gradients and random numbers are untouched. 0 on failure. */
static size_t trial_step_bytes(run *R, const sd_objective *obj, int b, float *x, float *grad)
{
    sd_params pc = *R->m->params;
    pc.grad = grad;
    sd_model mc = *R->m;
    mc.params = &pc;
    sd_graph *g = sd_graph_new();
    if (!g) return 0;
    size_t D = R->m->D, n = R->ds.n;
    for (int i = 0; i < b; i++) item_floats(R, (size_t)i % n, x + (size_t)i * D);
    sd_rng tr, nr;
    sd_rng_init(&tr, 0x5eed, SD_STREAM_TIME);
    sd_rng_init(&nr, 0x5eed, SD_STREAM_NOISE);
    size_t peak = 0;
    sd_tensor *loss = sd_objective_loss(obj, &mc, g, x, b, &tr, &nr, NULL);
    if (loss && sd_graph_backward(g, loss, NULL) == SD_OK) peak = sd_graph_arena_peak(g);
    sd_graph_free(g);
    return peak;
}

/* Bytes this process can still get: MemAvailable, and the room left under an
 * address-space limit (RLIMIT_AS) if one is set. 0 if unknown. */
static double available_bytes(void)
{
    double avail = 0.0;
    FILE *f = fopen("/proc/meminfo", "r");
    char line[256];
    while (f && fgets(line, sizeof line, f)) {
        unsigned long long kb;
        if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) avail = (double)kb * 1024.0;
    }
    if (f) fclose(f);
    struct rlimit rl;
    if (getrlimit(RLIMIT_AS, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
        unsigned long long pages = 0;
        FILE *s = fopen("/proc/self/statm", "r");
        if (s && fscanf(s, "%llu", &pages) != 1) pages = 0;
        if (s) fclose(s);
        double room = (double)rl.rlim_cur - (double)pages * (double)sysconf(_SC_PAGESIZE);
        if (room < 0) room = 0;
        if (avail == 0.0 || room < avail) avail = room;
    }
    return avail;
}

/* A step of B items needs about T * fixed + B * per_item arena bytes (T
 * shards; per_item and fixed from trial steps of 1 and 2 items), plus a
 * gradient buffer per shard and the loader's batches. Refused before the run
 * directory exists when that is more than the process can get, naming the
 * figure. It is a lower bound (the arena grows by doubling, and some ops
 * take scratch memory outside it), so a batch under it can still run out:
 * the step then stops with an out-of-memory message naming the batch. */
static int check_batch_memory(run *R)
{
    const sd_train_opts *o = &R->o;
    const size_t D = R->m->D, total = R->m->params->total;
    float *x = sd_malloc(2 * D * sizeof(float)), *grad = sd_malloc(total * sizeof(float));
    sd_objective obj = R->tr->cfg.objective;
    size_t p1 = x && grad ? trial_step_bytes(R, &obj, 1, x, grad) : 0;
    size_t p2 = p1 ? trial_step_bytes(R, &obj, 2, x, grad) : 0;
    sd_free(x);
    sd_free(grad);
    if (!p1 || !p2 || p2 <= p1) return 0; /* no estimate; the step will tell */
    double per_item = (double)(p2 - p1), fixed = (double)p1 - per_item;
    if (fixed < 0) fixed = 0;
    /* the trainer's shards: one per thread, at most 64 (models/trainer.c) */
    int T = sd_threads_get() < 64 ? sd_threads_get() : 64;
    if (T < 1 || o->batch < 2 * T) T = 1;
    double B = (double)o->batch, item_bytes = (double)D * sizeof(float);
    double need = T * (fixed + (double)total * sizeof(float)) + B * per_item + 3 * B * item_bytes;
    double avail = available_bytes();
    if (avail <= 0 || need <= avail) return 0;
    return cli_fail(CMD, 2, "--batch %" PRId64 ": a training step needs about %.2f GB (%.1f KB per "
                    "item, measured on a trial step), more than the %.2f GB this process can get; "
                    "use a smaller --batch", o->batch, need / 1e9, per_item / 1e3, avail / 1e9);
}

/* Everything that can fail before the first step and needs no run
 * directory: the trainer (optimizer state), the loader and the batch buffer.
 * Runs before prepare_dir, so that a failed start leaves no directory. */
static int setup_training(run *R)
{
    sd_train_opts *o = &R->o;
    sd_model_init(R->m, o->seed);
    sd_train_config tc = sd_train_config_default(&R->sde, o->steps, o->seed);
    tc.lr = (float)o->lr;
    tc.warmup = o->warmup;
    tc.cosine = o->cosine != 0;
    tc.clip = (float)o->clip;
    tc.ema_decay = (float)o->ema;
    tc.objective.kind = o->objective;
    tc.objective.weighting = o->weighting;
    sd_status st = sd_trainer_new(R->m, &tc, &R->tr);
    if (st != SD_OK) return fail(cli_exit_code(st), "%s", sd_error_message());
    const int64_t B = o->batch;
    sd_loader_opts lo = {.batch = (size_t)B, .seed = o->seed, .dequant = 1, .hflip = o->flip,
                         .threaded = 1};
    if ((st = sd_loader_new(&R->ds, &lo, &R->ld)) != SD_OK)
        return fail(st == SD_ERR_NOMEM ? 1 : cli_exit_code(st), "%s", sd_error_message());
    const size_t D = R->m->D;
    size_t bytes;
    if (strcmp(o->transform, "centered") == 0 &&
        (sd_mul_size((size_t)B, D * sizeof(float), &bytes) || !(R->xbuf = sd_malloc(bytes))))
        return cli_fail(CMD, 1, "out of memory: a batch of %" PRId64 " items of %zu floats",
                        B, D);
    return check_batch_memory(R);
}

/* The checkpoint of the run being resumed was made by this run's settings:
 * the model configuration is checked by the loader; the noise family and the
 * data transform are compared here (another run's checkpoint copied into
 * RUN_DIR would otherwise continue under settings it was not trained with). */
static int check_ckpt_matches(run *R)
{
    sd_safetensors *f = NULL;
    sd_status st = sd_safetensors_open(R->ckpt, &f);
    if (st != SD_OK) return fail(2, "%s", sd_error_message());
    const char *sde = sd_safetensors_meta(f, "sde"), *tr = sd_safetensors_meta(f, "data_transform");
    char mine[256], cfg[P + 16];
    sd_sde_to_string(&R->m->sde, mine, sizeof mine);
    join(cfg, R->o.out, "config.json");
    int rc = 0;
    if (!sde || strcmp(sde, mine) != 0)
        rc = cli_fail(CMD, 2, "%s: the checkpoint's noise family %s differs from the run's %s "
                      "(%s); it belongs to another run", R->ckpt, sde ? sde : "(missing)", mine,
                      cfg);
    else if (strcmp(tr ? tr : "identity", R->o.transform) != 0)
        rc = cli_fail(CMD, 2, "%s: the checkpoint's data transform %s differs from the run's %s "
                      "(%s); it belongs to another run", R->ckpt, tr ? tr : "identity (missing)",
                      R->o.transform, cfg);
    sd_safetensors_close(f);
    return rc;
}

static int train(run *R, sd_train_result *res)
{
    sd_train_opts *o = &R->o;
    const sd_train_hooks *h = R->h;
    sd_status st;
    int rc;
    bool have_ckpt = o->resume && file_exists(R->ckpt);
    if (have_ckpt) {
        if ((rc = check_ckpt_matches(R)) != 0) return rc;
        sd_ckpt_meta meta;
        if ((st = sd_checkpoint_load_trainer(R->ckpt, R->m, R->tr, &meta)) != SD_OK)
            return fail(2, "%s", sd_error_message());
        if (meta.seed != o->seed)
            return fail(2, "%s: checkpoint seed differs from config.json", R->ckpt);
    } else if (o->resume) {
        fprintf(stderr, "scorediff train: %s has no checkpoint yet; starting at step 0\n", R->eout);
    }
    const int64_t step0 = R->tr->step, B = o->batch;
    res->first_step = res->step = step0;
    if (step0 >= o->steps) {
        fprintf(stderr, "scorediff train: already at step %" PRId64 " of %" PRId64
                        "; nothing to do (raise --steps to continue)\n", step0, o->steps);
        return 0;
    }
    double running, elapsed0;
    bool have_row;
    if ((rc = open_metrics(R, step0, &running, &elapsed0, &have_row)) != 0) return rc;
    if (step0 > 0 && !have_row)
        fprintf(stderr, "scorediff train: warning: metrics.csv has no row for step %" PRId64
                        "; the running loss restarts\n", step0);
    sd_loader_seek(R->ld, (uint64_t)step0);
    const size_t D = R->m->D;
    const bool centered = strcmp(o->transform, "centered") == 0;
    fprintf(stderr, "scorediff train: %s, %zu parameters, %s, batch %" PRId64 ", steps %" PRId64
                    "..%" PRId64 " -> %s\n", o->model, sd_params_trainable_count(R->m->params),
            o->sde, B, step0 + 1, o->steps, R->eout);
    char blas[256];
    sd_blas_describe(blas, sizeof blas);
    fprintf(stderr, "scorediff train: %d threads, %s\n", sd_threads_get(), blas);

    R->started = true;
    const bool sampling = h->sample && o->sample_every > 0 && R->ds.kind == SD_DATA_IMAGES;
    if (o->sample_every > 0 && !sampling)
        fprintf(stderr, "scorediff train: warning: --sample-every: sample grids are for image "
                        "data; none written\n");
    cli_progress prog;
    if (!h->quiet) cli_progress_start(&prog, "train", o->steps, step0, "img/s", (double)B);
    const double t0 = cli_now();
    double t_row = t0;
    int64_t step_row = step0, last_ckpt = have_ckpt ? step0 : -1;
    char extra[128] = "";
    while (R->tr->step < o->steps) {
        const float *x = sd_loader_next(R->ld);
        if (centered) { /* [0, 1] -> [-1, 1] */
            for (size_t i = 0; i < (size_t)B * D; i++) R->xbuf[i] = 2.0f * x[i] - 1.0f;
            x = R->xbuf;
        }
        st = sd_trainer_step(R->tr, x, (int)B);
        if (st != SD_OK) {
            if (!h->quiet && prog.tty) fputc('\n', stderr);
            char where[P + 64];
            if (last_ckpt >= 0)
                snprintf(where, sizeof where, "the last checkpoint %s (step %" PRId64
                         ") is untouched", R->ckpt, last_ckpt);
            else
                snprintf(where, sizeof where, "no checkpoint was written (start again in place "
                         "with --out %s)", o->out);
            fflush(R->metrics);
            if (st == SD_ERR_NOMEM) /* the step's memory grows with the batch */
                return cli_fail(CMD, 1, "training stopped at step %" PRId64 ": %s, with batch %"
                                PRId64 " (try a smaller --batch); %s", R->tr->step + 1,
                                sd_error_message(), B, where);
            return cli_fail(CMD, 1, "training stopped: %s; %s", sd_error_message(), where);
        }
        const int64_t step = R->tr->step;
        const float loss = R->tr->last_loss;
        /* mean of the losses so far for the first 100 steps, then an
         * exponential average with weight 1/100 */
        double k = (double)(step < RUNNING_WINDOW ? step : RUNNING_WINDOW);
        running = (step == 1 || (step == step0 + 1 && !have_row)) ? loss
                                                                  : running + (loss - running) / k;
        int sig = h->stop ? (int)*h->stop : 0;
        if (!sig && h->stop_at > 0 && step >= h->stop_at) sig = SIGINT;
        bool ckpt_now = step % o->ckpt_every == 0 || step == o->steps || sig;
        double now = cli_now();
        if (step % o->log_every == 0 || ckpt_now) {
            double ips = now > t_row ? (double)(step - step_row) * (double)B / (now - t_row) : 0.0;
            if (fprintf(R->metrics, "%" PRId64 ",%.9g,%.17g,%.9g,%.9g,%.1f,%.3f\n", step,
                        (double)loss, running, (double)R->tr->last_grad_norm,
                        (double)R->tr->last_lr, ips, elapsed0 + (now - t0)) < 0 ||
                fflush(R->metrics) != 0)
                return cli_fail(CMD, 1, "%s: cannot write: %s", R->metrics_path, strerror(errno));
            t_row = now;
            step_row = step;
        }
        if (ckpt_now) {
            if ((st = save_checkpoint(R)) != SD_OK) {
                if (!h->quiet && prog.tty) fputc('\n', stderr);
                return fail(1, "cannot write the checkpoint: %s", sd_error_message());
            }
            last_ckpt = step;
        }
        if (sampling && step % o->sample_every == 0) call_sampler(R);
        snprintf(extra, sizeof extra, "loss %.4f (avg %.4f)", (double)loss, running);
        res->step = step;
        res->last_loss = loss;
        res->images_per_s = (double)(step - step0) * (double)B / fmax(now - t0, 1e-9);
        /* the last step's line comes from cli_progress_end below */
        if (!h->quiet && !sig && step < o->steps) cli_progress_update(&prog, step, extra, false);
        if (sig) {
            if (!h->quiet) cli_progress_end(&prog, step, extra);
            fprintf(stderr, "scorediff train: interrupted (%s) after step %" PRId64 " of %" PRId64
                            "; checkpoint %s; continue with: scorediff train --resume %s\n",
                    sig == SIGINT ? "SIGINT" : sig == SIGTERM ? "SIGTERM" : "signal", step,
                    o->steps, R->eckpt, R->eout);
            return 128 + sig;
        }
    }
    if (!h->quiet) cli_progress_end(&prog, R->tr->step, extra);
    fprintf(stderr, "scorediff train: done: step %" PRId64 ", loss %.5g (running %.5g), %.1f "
                    "images/s; checkpoint %s\n", R->tr->step, (double)res->last_loss, running,
            res->images_per_s, R->eckpt);
    return 0;
}

/* Every option in its range before any work (and before a run directory
 * exists); the parser checks the same ranges, this covers in-process callers
 * and config.json. Returns 0 or 2 after printing the problem. */
static int validate(const sd_train_opts *o)
{
    if (o->steps <= 0 || o->ckpt_every <= 0 || o->log_every <= 0)
        return fail(2, "%s", "--steps, --ckpt-every and --log-every must be positive");
    if (o->batch < 0 || o->batch > SD_TRAIN_MAX_BATCH)
        return cli_fail(CMD, 2, "--batch %" PRId64 ": expected 1 to %d", o->batch,
                        SD_TRAIN_MAX_BATCH);
    /* the optimizer works in float: a rate beyond float's range is infinite */
    if (!(o->lr >= 0 && o->lr <= FLT_MAX))
        return cli_fail(CMD, 2, "--lr %g: expected a number in [0, %g] (finite as a float)",
                        o->lr, (double)FLT_MAX);
    if (!(o->clip >= 0 && o->clip <= FLT_MAX))
        return cli_fail(CMD, 2, "--clip %g: expected a number in [0, %g]", o->clip,
                        (double)FLT_MAX);
    if (!(o->ema >= 0 && o->ema <= 1)) return cli_fail(CMD, 2, "--ema %g: expected [0, 1]", o->ema);
    if (o->warmup < -1 || o->sample_every < 0)
        return fail(2, "%s", "--warmup and --sample-every must be >= 0");
    if (o->threads < 0 || o->threads > 1024)
        return cli_fail(CMD, 2, "--threads %d: expected 1 to 1024", o->threads);
    if (o->channels < 1 || o->channels > 3 || o->size < 0 || o->size > 16384)
        return fail(2, "%s", "--channels takes 1 or 3, --size 1 to 16384");
    if (!o->resume && !o->dry_run && o->out[0] && o->data[0]) {
        /* The run directory is neither the data nor inside an image folder
         * (whose recursive walk would read its sample grids as data next
         * time), and the data is not a file of the run directory. */
        char rd[PATH_MAX], ro[PATH_MAX], parent[PATH_MAX];
        const char *slash;
        if (realpath(o->data, rd)) {
            bool have_out = realpath(o->out, ro) != NULL;
            if (!have_out && (slash = strrchr(o->out, '/'))) {
                size_t n = slash == o->out ? 1 : (size_t)(slash - o->out);
                if (n < sizeof parent) {
                    memcpy(parent, o->out, n);
                    parent[n] = '\0';
                    char rp[PATH_MAX];
                    if (realpath(parent, rp) &&
                        snprintf(ro, sizeof ro, "%s/%s", rp, slash + 1) < (int)sizeof ro)
                        have_out = true;
                }
            } else if (!have_out && getcwd(parent, sizeof parent) &&
                       snprintf(ro, sizeof ro, "%s/%s", parent, o->out) < (int)sizeof ro) {
                have_out = true;
            }
            size_t ld = strlen(rd), lo = have_out ? strlen(ro) : 0;
            if (have_out && strcmp(rd, ro) == 0)
                return cli_fail(CMD, 2, "--out %s: is the data (--data %s); the run directory "
                                "must be another path", o->out, o->data);
            if (have_out && lo > ld && strncmp(ro, rd, ld) == 0 && ro[ld] == '/')
                return cli_fail(CMD, 2, "--out %s: is inside the data folder %s; its files "
                                "would be read as data: choose a run directory outside it",
                                o->out, o->data);
            if (have_out && ld > lo && strncmp(rd, ro, lo) == 0 && rd[lo] == '/')
                return cli_fail(CMD, 2, "--data %s: is inside the run directory %s, whose files "
                                "the run rewrites", o->data, o->out);
        }
    }
    return 0;
}

/* A start that failed before its first step leaves nothing behind: the files
 * this invocation made in RUN_DIR, and RUN_DIR itself if it made it. A
 * directory that already held something keeps it. */
static void remove_failed_start(run *R)
{
    if (!R->created_dir || R->o.resume || !R->o.out[0]) return;
    char path[P];
    const char *names[] = {"config.json", "config.json.tmp", "metrics.csv", "metrics.csv.tmp",
                           "lock", "samples"};
    if (R->metrics) {
        fclose(R->metrics);
        R->metrics = NULL;
    }
    if (file_exists(R->ckpt)) return;
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        /* unlink of a directory fails with EISDIR (Linux) or EPERM (POSIX) */
        if (join(path, R->o.out, names[i]) && unlink(path) != 0 &&
            (errno == EISDIR || errno == EPERM))
            rmdir(path);
    if (R->lock_fd >= 0) {
        close(R->lock_fd);
        R->lock_fd = -1;
    }
    rmdir(R->o.out);
}

int sd_train_run(const sd_train_opts *in, const sd_train_hooks *hooks, sd_train_result *res)
{
    static const sd_train_hooks no_hooks;
    sd_train_result local;
    if (!res) res = &local;
    memset(res, 0, sizeof *res);
    run R;
    memset(&R, 0, sizeof R);
    R.in = in;
    R.h = hooks ? hooks : &no_hooks;
    R.o = *in;
    R.lock_fd = -1;
    cli_escape(R.o.out, R.eout, sizeof R.eout);
    cli_escape(R.o.data, R.edata, sizeof R.edata);
    snprintf(R.eckpt, sizeof R.eckpt, "%.*s/checkpoint.safetensors", (int)(sizeof R.eckpt - 32),
             R.eout);
    int rc = 0;
    if ((rc = validate(&R.o)) != 0) goto done;
    if (R.o.threads > 0) sd_threads_init(R.o.threads);
    if ((rc = load_data(&R)) || (rc = resolve_sde(&R)) || (rc = build_model(&R))) goto done;
    res->n_params = sd_params_trainable_count(R.m->params);
    snprintf(res->sde, sizeof res->sde, "%s", R.o.sde);
    if (R.o.dry_run) {
        describe(&R, stdout);
        goto done;
    }
    if ((rc = setup_training(&R)) || (rc = prepare_dir(&R))) goto done;
    rc = train(&R, res);
done:
    if (rc != 0 && rc < 128 && !R.started) remove_failed_start(&R);
    if (R.metrics) fclose(R.metrics);
    sd_loader_free(R.ld);
    sd_trainer_free(R.tr);
    sd_model_free(R.m);
    sd_dataset_free(&R.ds);
    sd_free(R.xbuf);
    sd_free(R.stash);
    if (R.lock_fd >= 0) close(R.lock_fd);
    return rc;
}
