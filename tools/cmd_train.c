/* cmd_train.c - `scorediff train`: argv through the option table of the
 * training run (models/include/sd/train_run.h), --resume, signals, progress display and
 * the sample-grid hook. The run itself is models/train_run.c. */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "report.h"
#include "sd/image_grid.h"
#include "sd/sampler.h"
#include "sd/train_run.h"

#define CMD "train"

static void usage(FILE *f)
{
    fprintf(f,
"usage: scorediff train --data PATH --out RUN_DIR [options]\n"
"       scorediff train --resume RUN_DIR [--steps N] [--ckpt-every N] ...\n"
"       scorediff train --data PATH --dry-run [options]\n"
"\n");
    cli_print_options(f, sd_train_options, sd_train_n_options);
    fprintf(f,
"\n"
"SIGINT or SIGTERM finishes the current step, writes a checkpoint and exits with\n"
"128 + the signal number (130, 143); a second one kills at once (the checkpoint\n"
"file is replaced atomically, so the previous one survives). A NaN or Inf loss\n"
"stops the run with exit code 1, naming the step, before anything is written.\n"
"Exit codes: 0 done, 1 runtime failure, 2 bad options or data, 130/143 interrupted.\n");
}

/* argv (argv[0] = "train") into o, with defaults; returns 0 or an exit code
 * (2) after printing the error; *help is set by --help. */
int sd_train_parse_args(int argc, char **argv, sd_train_opts *o, bool *help)
{
    sd_train_opts_default(o);
    int rc = cli_parse_options(CMD, sd_train_options, sd_train_n_options, argc, argv, o, &o->given,
                               help);
    if (rc || *help) return rc;
    if (!o->resume && !o->data[0]) return cli_fail(CMD, 2, "--data PATH is required");
    if (!o->resume && !o->dry_run && !o->out[0])
        return cli_fail(CMD, 2, "--out RUN_DIR is required (or --resume RUN_DIR, or --dry-run)");
    /* --out is the first entry for the field out (--resume the second) */
    if (o->resume && sd_train_given(o, offsetof(sd_train_opts, out)))
        return cli_fail(CMD, 2, "--out and --resume both name the run directory; give one");
    return 0;
}

/* The run's lines: "scorediff train: LINE", control bytes escaped. */
static void log_line(void *ctx, const char *line)
{
    (void)ctx;
    static char esc[4 * 4096 + 4096];
    if (line[0] == '\n') {
        fputc('\n', stderr);
        line++;
    }
    fprintf(stderr, "scorediff " CMD ": %s\n", cli_escape(line, esc, sizeof esc));
}

static void show_progress(void *ctx, const sd_train_progress *p)
{
    cli_progress *prog = ctx;
    char extra[128];
    snprintf(extra, sizeof extra, "loss %.4f (avg %.4f)", p->loss, p->running);
    switch (p->event) {
    case SD_TRAIN_START:
        cli_progress_start(prog, "train", p->total, p->first, "img/s", (double)p->batch);
        break;
    case SD_TRAIN_STEP: cli_progress_update(prog, p->step, extra, false); break;
    case SD_TRAIN_END: cli_progress_end(prog, p->step, extra); break;
    case SD_TRAIN_ABORT:
        if (prog->tty) fputc('\n', stderr);
        break;
    }
}

/* ---- sample grids ------------------------------------------------------------ */

/* The --sample-every hook: GRID_N samples of the EMA model by the
 * predictor-only reverse-diffusion sampler (Song et al. 2021, Alg. 2 without
 * corrector; Euler-Maruyama for the matrix-valued families) on GRID_STEPS times, with the final denoising step, always from
 * the run's seed, so that the grids of successive steps show the same noise
 * developing. */
enum { GRID_N = 16, GRID_STEPS = 100 };

static sd_status sample_grid(void *ctx, sd_model *m, const char *transform, int64_t step,
                             uint64_t seed, const char *png)
{
    (void)ctx;
    (void)step;
    sd_scorer sc;
    sd_status st = sd_scorer_from_model(m, &sc);
    if (st != SD_OK) return st;
    sd_sampler_opts so = sd_sampler_defaults(SD_SAMPLER_PC);
    /* reverse diffusion exists for the isotropic families only */
    if (!sd_sde_is_isotropic(&m->sde)) so.predictor = SD_PRED_EULER_MARUYAMA;
    so.steps = GRID_STEPS;
    so.corrector = false;
    so.denoise = true;
    so.seed = seed;
    so.batch = GRID_N;
    float *x = sd_malloc(GRID_N * sc.D * sizeof(float));
    if (!x) st = SD_ERR_NOMEM;
    if (st == SD_OK) st = sd_sample(&sc, &so, GRID_N, x, NULL);
    if (st == SD_OK) {
        if (strcmp(transform, "centered") == 0) /* [-1, 1] -> [0, 1] */
            for (size_t i = 0; i < GRID_N * sc.D; i++) x[i] = 0.5f * (x[i] + 1.0f);
        st = sd_image_grid_write(png, x, GRID_N, m->C, m->H, m->W, 0);
    }
    sd_free(x);
    sd_scorer_release(&sc);
    return st;
}

/* ---- the command ------------------------------------------------------------ */

/* Set by SIGINT / SIGTERM to the signal number; the loop finishes its step,
 * writes a checkpoint and returns 128 + it. SA_RESETHAND: a second signal
 * takes the default action (the atomic checkpoint write makes that safe). */
static volatile sig_atomic_t stop_signal;
static void on_signal(int sig) { stop_signal = sig; }

/* After every checkpoint: RUN_DIR/report.html (tools/report.h) with the
 * metrics and grids so far. */
static sd_status refresh_report(void *ctx, const char *run_dir, int64_t step)
{
    (void)ctx;
    (void)step;
    return sd_report_write(run_dir, NULL);
}

int sd_cmd_train(int argc, char **argv)
{
    sd_train_opts o;
    bool help;
    int rc = sd_train_parse_args(argc, argv, &o, &help);
    if (help) {
        usage(stdout);
        return 0;
    }
    if (rc) return rc;
    cli_progress prog;
    sd_train_hooks h = {.stop = &stop_signal, .quiet = o.quiet, .sample = sample_grid,
                        .log = log_line, .progress = show_progress, .progress_ctx = &prog,
                        .checkpoint = refresh_report};
    if (o.resume && sd_train_resume(&o, &h) != SD_OK) return cli_fail(CMD, 2, "%s", sd_error_message());
    if (o.dry_run) return sd_train_run(&o, &h, NULL);
    stop_signal = 0;
    struct sigaction sa, old_int, old_term;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESETHAND;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    rc = sd_train_run(&o, &h, NULL);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    return rc;
}
