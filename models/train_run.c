/* train_run.c - a training run (train_run.h): what `scorediff train` runs.
 *
 * Order of work: check the options, load the data, resolve the noise family
 * (NCSNv2's data-driven sigma_max / L unless given), the data transform and
 * the model, set up the trainer (train_setup.c); then (unless --dry-run)
 * lock RUN_DIR, write config.json, restore the checkpoint when resuming, cut
 * metrics.csv back to its step, and run the steps. Everything that writes into RUN_DIR goes through a temporary file,
 * fsync and rename, so a crash at any point leaves each file either old or
 * new (metrics.csv is appended line by line and fsynced before every
 * checkpoint, so it always reaches at least the checkpoint's step).
 */
#include "train_internal.h"
#include "sd/blas_core.h"

#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/file.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "sd/checkpoint.h"
#include "sd/file.h"
#include "sd/membudget.h"
#include "sd/safetensors.h"

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
    if (!out[0]) return fail(R, 2, "%s", "--out RUN_DIR is required (or --resume RUN_DIR)");
    R->created_dir = !file_exists(out);
    if (make_dir(out) != SD_OK) return fail(R, 2, "%s", sd_error_message());
    char path[P];
    if (!join(path, out, "lock") || !join(R->ckpt, out, "checkpoint.safetensors") ||
        !join(R->metrics_path, out, "metrics.csv"))
        return fail(R, 2, "%s: path too long", out);
    R->lock_fd = open(path, O_RDWR | O_CREAT, 0644);
    if (R->lock_fd < 0)
        return fail(R, 2, "%s: cannot open the run's lock file: %s%s", path, strerror(errno),
                        errno == EISDIR ? " (remove that directory; the run creates the file)"
                                        : "");
    if (flock(R->lock_fd, LOCK_EX | LOCK_NB) != 0)
        return fail(R, 2, "%s: the run directory is in use by another scorediff train", out);
    join(path, out, "config.json");
    if (!R->o.resume && file_exists(R->ckpt))
        return fail(R, 2, "%s: already holds a run; continue it with --resume, or choose a new --out",
                    out);
    /* A run that never wrote a checkpoint (a start that failed, or a run
     * stopped before its first checkpoint) has nothing to continue: --out
     * starts it again in place, with the options given now. */
    if (!R->o.resume && file_exists(path))
        say(R, "%s holds a run without a checkpoint; starting it "
                        "again from step 0", R->eout);
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
    if (!given_json) return fail(R, 1, "%s: out of memory writing config.json", R->eout);
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
    /* the thread count as resolved (0: OMP_NUM_THREADS / all cores) */
    if (R->o.threads <= 0) R->o.threads = sd_threads_get();
    sd_status st = sd_run_config_write(out, &R->o, extra[0] ? extra : NULL);
    if (st != SD_OK) return fail(R, 1, "%s", sd_error_message());
    if (R->h->sample && R->o.sample_every > 0 && R->ds.kind == SD_DATA_IMAGES) {
        join(path, out, "samples");
        if (make_dir(path) != SD_OK) return fail(R, 1, "%s", sd_error_message());
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
    if (!keep) return fail(R, 1, "%s", sd_error_message());
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
                return fail(R, 1, "%s", sd_error_message());
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
    if (st != SD_OK) return fail(R, 1, "%s", sd_error_message());
    R->metrics = fopen(R->metrics_path, "a");
    if (!R->metrics) return fail(R, 1, "%s: %s", R->metrics_path, strerror(errno));
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
             sd__train_objective_name(o), sd__train_weighting_name(o), sd_threads_get());
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
        say(R, "\nwarning: sample grid at step %" PRId64 ": %s",
                R->tr->step, sd_error_message());
}

/* ---- the loop --------------------------------------------------------------- */

static int check_ckpt_matches(run *R)
{
    sd_safetensors *f = NULL;
    sd_status st = sd_safetensors_open(R->ckpt, &f);
    if (st != SD_OK) return fail(R, 2, "%s", sd_error_message());
    const char *sde = sd_safetensors_meta(f, "sde"), *tr = sd_safetensors_meta(f, "data_transform");
    char mine[256], cfg[P + 16];
    sd_sde_to_string(&R->m->sde, mine, sizeof mine);
    join(cfg, R->o.out, "config.json");
    int rc = 0;
    if (!sde || strcmp(sde, mine) != 0)
        rc = fail(R, 2, "%s: the checkpoint's noise family %s differs from the run's %s "
                      "(%s); it belongs to another run", R->ckpt, sde ? sde : "(missing)", mine,
                      cfg);
    else if (strcmp(tr ? tr : "identity", R->o.transform) != 0)
        rc = fail(R, 2, "%s: the checkpoint's data transform %s differs from the run's %s "
                      "(%s); it belongs to another run", R->ckpt, tr ? tr : "identity (missing)",
                      R->o.transform, cfg);
    sd_safetensors_close(f);
    return rc;
}

static void progress(const run *R, sd_train_progress *p, sd_train_event ev, int64_t step)
{
    if (R->h->quiet || !R->h->progress) return;
    p->event = ev;
    p->step = step;
    R->h->progress(R->h->progress_ctx, p);
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
            return fail(R, 2, "%s", sd_error_message());
        if (meta.seed != o->seed)
            return fail(R, 2, "%s: checkpoint seed differs from config.json", R->ckpt);
    } else if (o->resume) {
        say(R, "%s has no checkpoint yet; starting at step 0", R->eout);
    }
    const int64_t step0 = R->tr->step, B = o->batch;
    res->first_step = res->step = step0;
    if (step0 >= o->steps) {
        say(R, "already at step %" PRId64 " of %" PRId64
                        "; nothing to do (raise --steps to continue)", step0, o->steps);
        return 0;
    }
    double running, elapsed0;
    bool have_row;
    if ((rc = open_metrics(R, step0, &running, &elapsed0, &have_row)) != 0) return rc;
    if (step0 > 0 && !have_row)
        say(R, "warning: metrics.csv has no row for step %" PRId64
                        "; the running loss restarts", step0);
    sd_loader_seek(R->ld, (uint64_t)step0);
    const size_t D = R->m->D;
    const bool centered = strcmp(o->transform, "centered") == 0;
    say(R, "%s, %zu parameters, %s, batch %" PRId64 ", steps %" PRId64
                    "..%" PRId64 " -> %s", o->model, sd_params_trainable_count(R->m->params),
            o->sde, B, step0 + 1, o->steps, R->eout);
    char blas[256];
    sd_blas_describe(blas, sizeof blas);
    say(R, "%d threads, %s", sd_threads_get(), blas);

    R->started = true;
    const bool sampling = h->sample && o->sample_every > 0 && R->ds.kind == SD_DATA_IMAGES;
    if (o->sample_every > 0 && !sampling)
        say(R, "warning: --sample-every: sample grids are for image "
                        "data; none written");
    sd_train_progress prog = {.total = o->steps, .first = step0, .batch = B};
    progress(R, &prog, SD_TRAIN_START, step0);
    const double t0 = now_s();
    double t_row = t0;
    int64_t step_row = step0, last_ckpt = have_ckpt ? step0 : -1;
    while (R->tr->step < o->steps) {
        const float *x = sd_loader_next(R->ld);
        if (centered) { /* [0, 1] -> [-1, 1] */
            for (size_t i = 0; i < (size_t)B * D; i++) R->xbuf[i] = 2.0f * x[i] - 1.0f;
            x = R->xbuf;
        }
        st = sd_trainer_step(R->tr, x, (int)B);
        if (st != SD_OK) {
            progress(R, &prog, SD_TRAIN_ABORT, R->tr->step);
            char where[P + 64];
            if (last_ckpt >= 0)
                snprintf(where, sizeof where, "the last checkpoint %s (step %" PRId64
                         ") is untouched", R->ckpt, last_ckpt);
            else
                snprintf(where, sizeof where, "no checkpoint was written (start again in place "
                         "with --out %s)", o->out);
            fflush(R->metrics);
            if (st == SD_ERR_NOMEM) /* the step's memory grows with the batch */
                return fail(R, 1, "training stopped at step %" PRId64 ": %s, with batch %"
                                PRId64 " (try a smaller --batch); %s", R->tr->step + 1,
                                sd_error_message(), B, where);
            return fail(R, 1, "training stopped: %s; %s", sd_error_message(), where);
        }
        const int64_t step = R->tr->step;
        const float loss = R->tr->last_loss;
        /* mean of the losses so far for the first 100 steps, then an
         * exponential average with weight 1/100 */
        double k = (double)(step < RUNNING_WINDOW ? step : RUNNING_WINDOW);
        running = (step == 1 || (step == step0 + 1 && !have_row)) ? loss
                                                                  : running + (loss - running) / k;
        int sig = h->stop ? (int)*h->stop : 0;
        if (!sig && h->stop_fn) sig = h->stop_fn(h->stop_ctx, step);
        if (!sig && h->stop_at > 0 && step >= h->stop_at) sig = SIGINT;
        bool ckpt_now = step % o->ckpt_every == 0 || step == o->steps || sig;
        double now = now_s();
        if (step % o->log_every == 0 || ckpt_now) {
            double ips = now > t_row ? (double)(step - step_row) * (double)B / (now - t_row) : 0.0;
            if (fprintf(R->metrics, "%" PRId64 ",%.9g,%.17g,%.9g,%.9g,%.1f,%.3f\n", step,
                        (double)loss, running, (double)R->tr->last_grad_norm,
                        (double)R->tr->last_lr, ips, elapsed0 + (now - t0)) < 0 ||
                fflush(R->metrics) != 0)
                return fail(R, 1, "%s: cannot write: %s", R->metrics_path, strerror(errno));
            t_row = now;
            step_row = step;
        }
        if (ckpt_now) {
            if ((st = save_checkpoint(R)) != SD_OK) {
                progress(R, &prog, SD_TRAIN_ABORT, step);
                return fail(R, 1, "cannot write the checkpoint: %s", sd_error_message());
            }
            last_ckpt = step;
        }
        if (sampling && step % o->sample_every == 0) call_sampler(R);
        if (ckpt_now && h->checkpoint && !o->no_report &&
            h->checkpoint(h->checkpoint_ctx, o->out, step) != SD_OK)
            say(R, "\nwarning: after the checkpoint of step %" PRId64 ": %s", step,
                sd_error_message());
        res->step = step;
        res->last_loss = loss;
        res->images_per_s = (double)(step - step0) * (double)B / fmax(now - t0, 1e-9);
        prog.loss = loss;
        prog.running = running;
        /* the last step's line comes from SD_TRAIN_END below */
        if (!sig && step < o->steps) progress(R, &prog, SD_TRAIN_STEP, step);
        if (sig) {
            progress(R, &prog, SD_TRAIN_END, step);
            say(R, "interrupted (%s) after step %" PRId64 " of %" PRId64
                            "; checkpoint %s; continue with: scorediff train --resume %s",
                    sig == SIGINT ? "SIGINT" : sig == SIGTERM ? "SIGTERM" : "signal", step,
                    o->steps, R->eckpt, R->eout);
            return 128 + sig;
        }
    }
    progress(R, &prog, SD_TRAIN_END, R->tr->step);
    say(R, "done: step %" PRId64 ", loss %.5g (running %.5g), %.1f "
                    "images/s; checkpoint %s", R->tr->step, (double)res->last_loss, running,
            res->images_per_s, R->eckpt);
    return 0;
}

/* Every option in its range (the option table's) before any work and before
 * a run directory exists, for in-process callers and config.json; and the
 * run directory apart from the data. Returns 0 or 2 after logging the
 * problem. */
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
    if (!R.o.resume) { /* stored absolute, so --resume works from any directory */
        char real[PATH_MAX];
        if (realpath(R.o.data, real) && strlen(real) < sizeof R.o.data)
            memcpy(R.o.data, real, strlen(real) + 1);
    }
    snprintf(R.eout, sizeof R.eout, "%s", R.o.out);
    snprintf(R.edata, sizeof R.edata, "%s", R.o.data);
    snprintf(R.eckpt, sizeof R.eckpt, "%.*s/checkpoint.safetensors", (int)(sizeof R.eckpt - 32),
             R.eout);
    int rc = 0;
    /* --max-memory: the budget is process-wide; this run's only */
    const uint64_t budget0 = sd_mem_budget();
    if (R.o.max_memory) sd_mem_set_budget(R.o.max_memory);
    if ((rc = sd__train_validate(&R)) != 0) goto done;
    if (R.o.threads > 0) sd_threads_init(R.o.threads);
    if ((rc = sd__train_load_data(&R)) || (rc = sd__train_resolve_sde(&R)) ||
        (rc = sd__train_build_model(&R)))
        goto done;
    res->n_params = sd_params_trainable_count(R.m->params);
    snprintf(res->sde, sizeof res->sde, "%s", R.o.sde);
    if (R.o.dry_run) {
        sd__train_describe(&R, stdout);
        goto done;
    }
    if ((rc = sd__train_setup_training(&R)) || (rc = prepare_dir(&R))) goto done;
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
    sd_mem_set_budget(budget0);
    return rc;
}
