/* train_setup.c - everything a training run does before its first step and
 * without its run directory: option checks, the data, the noise family with
 * NCSNv2's data-driven settings, the data transform, the model, the trainer
 * and loader, and the memory a step will need (train_internal.h). */
#include "train_internal.h"

#include <float.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <unistd.h>

#include "sd/ncsnv2.h"
#include "sd/blas_core.h"

/* ---- setup ----------------------------------------------------------------- */

static void warn_cb(void *ctx, const char *path, const char *reason)
{
    say(ctx, "warning: %s: %s", path, reason);
}

int sd__train_load_data(run *R)
{
    sd_train_opts *o = &R->o;
    sd_image_opts io = {.channels = o->channels, .size = o->size, .warn = warn_cb,
                        .warn_ctx = R};
    sd_status st = sd_data_load(o->data, &io, &R->ds);
    if (st != SD_OK) return fail(R, exit_code(st), "%s", sd_error_message());
    const sd_dataset *ds = &R->ds;
    if (ds->kind == SD_DATA_POINTS) {
        if (sd_train_given(o, offsetof(sd_train_opts, channels)) ||
            sd_train_given(o, offsetof(sd_train_opts, size)) ||
            sd_train_given(o, offsetof(sd_train_opts, flip)))
            return fail(R, 2, "%s: --channels, --size and --flip apply to image folders only", o->data);
        if (!o->dry_run)
            say(R, "data %s: %zu points of dimension %d", R->edata,
                    ds->n, ds->c);
    } else if (!o->dry_run) {
        say(R, "data %s: %zu images %dx%dx%d (%zu skipped, %zu other "
                        "files ignored)", R->edata, ds->n, ds->c, ds->h, ds->w,
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
        return fail(R, 2, "--data-transform %s: CSV points are used as they are (identity)", t);
    if (!points && strcmp(t, "unit") != 0 && strcmp(t, "centered") != 0)
        return fail(R, 2, "--data-transform %s: images take unit or centered", t);
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
    if (!x) return fail(R, 1, "%s", sd_error_message());
    for (size_t i = 0; i < m; i++) item_floats(R, (size_t)((uint64_t)i * n / m), x + i * D);
    sd_status st = sd_ncsnv2_max_distance(x, m, D, &R->dist);
    sd_free(x);
    if (st != SD_OK) return fail(R, 1, "%s", sd_error_message());
    R->dist_items = m;
    R->have_dist = true;
    return 0;
}

/* The noise family, with NCSNv2's sigma_max (Technique 1) and, for ncsn, L
 * (Technique 2) unless the spec gives them; then canonicalised (printed and
 * re-parsed) so that a resumed run parses exactly the same numbers. */
int sd__train_resolve_sde(run *R)
{
    sd_train_opts *o = &R->o;
    if (sd_sde_parse(o->sde, &R->sde) != SD_OK) return fail(R, 2, "%s", sd_error_message());
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
            say(R, "warning: the data's largest pairwise distance %g "
                            "is not above sigma_min %g; keeping sigma_max %g", R->dist,
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
    if (sd_sde_parse(spec, &R->sde) != SD_OK) return fail(R, 1, "%s", sd_error_message());
    snprintf(o->sde, sizeof o->sde, "%s", spec);
    return 0;
}

int sd__train_build_model(run *R)
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
    if (strcmp(o->model, "unet") != 0 && (sd_train_given(o, offsetof(sd_train_opts, ch)) ||
                                       sd_train_given(o, offsetof(sd_train_opts, mult)) ||
                                       sd_train_given(o, offsetof(sd_train_opts, num_res_blocks))))
        return fail(R, 2, "--ch, --mult and --num-res-blocks apply to --model unet only (not %s)",
                    o->model);
    sd_unet_config uc = {.channels = ds->c, .resolution = ds->h, .ch = o->ch,
                         .n_levels = o->n_mult, .num_res_blocks = o->num_res_blocks, .groups = 8};
    for (int i = 0; i < o->n_mult; i++) uc.mult[i] = o->mult[i];
    sd_status st = sd_model_new_network(o->model, &uc, ds->c, ds->h, ds->w, &R->sde, &R->m);
    if (st != SD_OK) return fail(R, exit_code(st), "%s", sd_error_message());
    if (o->batch == 0) o->batch = ds->kind == SD_DATA_POINTS ? 256 : 128;
    if (o->warmup < 0) o->warmup = o->steps / 10 < 5000 ? o->steps / 10 : 5000;
    return 0;
}

const char *sd__train_objective_name(const sd_train_opts *o)
{
    return o->objective == SD_OBJECTIVE_SSM ? "ssm" : "dsm";
}
const char *sd__train_weighting_name(const sd_train_opts *o)
{
    return o->weighting == SD_WEIGHT_LIKELIHOOD ? "likelihood" : "variance";
}

void sd__train_describe(const run *R, FILE *f)
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
            o->ema, sd__train_objective_name(o), sd__train_weighting_name(o), o->seed, sd_threads_get());
    char blas[256];
    sd_blas_describe(blas, sizeof blas);
    fprintf(f, "BLAS:       %s\n", blas);
}

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
    return fail(R, 2, "--batch %" PRId64 ": a training step needs about %.2f GB (%.1f KB per "
                    "item, measured on a trial step), more than the %.2f GB this process can get; "
                    "use a smaller --batch", o->batch, need / 1e9, per_item / 1e3, avail / 1e9);
}

/* Everything that can fail before the first step and needs no run
 * directory: the trainer (optimizer state), the loader and the batch buffer.
 * Runs before prepare_dir, so that a failed start leaves no directory. */
int sd__train_setup_training(run *R)
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
    if (st != SD_OK) return fail(R, exit_code(st), "%s", sd_error_message());
    const int64_t B = o->batch;
    sd_loader_opts lo = {.batch = (size_t)B, .seed = o->seed, .dequant = 1, .hflip = o->flip,
                         .threaded = 1};
    if ((st = sd_loader_new(&R->ds, &lo, &R->ld)) != SD_OK)
        return fail(R, st == SD_ERR_NOMEM ? 1 : exit_code(st), "%s", sd_error_message());
    const size_t D = R->m->D;
    size_t bytes;
    if (strcmp(o->transform, "centered") == 0 &&
        (sd_mul_size((size_t)B, D * sizeof(float), &bytes) || !(R->xbuf = sd_malloc(bytes))))
        return fail(R, 1, "out of memory: a batch of %" PRId64 " items of %zu floats",
                        B, D);
    return check_batch_memory(R);
}

/* The checkpoint of the run being resumed was made by this run's settings:
 * the model configuration is checked by the loader; the noise family and the
 * data transform are compared here (another run's checkpoint copied into
 * RUN_DIR would otherwise continue under settings it was not trained with). */
int sd__train_validate(run *R)
{
    const sd_train_opts *o = &R->o;
    if (sd_train_opts_check(o) != SD_OK) return fail(R, 2, "%s", sd_error_message());
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
                return fail(R, 2, "--out %s: is the data (--data %s); the run directory "
                                "must be another path", o->out, o->data);
            if (have_out && lo > ld && strncmp(ro, rd, ld) == 0 && ro[ld] == '/')
                return fail(R, 2, "--out %s: is inside the data folder %s; its files "
                                "would be read as data: choose a run directory outside it",
                                o->out, o->data);
            if (have_out && ld > lo && strncmp(rd, ro, lo) == 0 && rd[lo] == '/')
                return fail(R, 2, "--data %s: is inside the run directory %s, whose files "
                                "the run rewrites", o->data, o->out);
        }
    }
    return 0;
}

/* A start that failed before its first step leaves nothing behind: the files
 * this invocation made in RUN_DIR, and RUN_DIR itself if it made it. A
 * directory that already held something keeps it. */
