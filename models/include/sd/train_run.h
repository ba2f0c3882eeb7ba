/* train_run.h - a training run: data, model, loop, checkpoints, metrics and
 * the run directory, callable by any C program that links the library
 * (`scorediff train` only parses argv into sd_train_opts through the option
 * table below, installs the signal handlers and prints):
 *
 *     sd_train_opts o;
 *     sd_train_opts_default(&o);
 *     snprintf(o.data, sizeof o.data, "points.csv");
 *     snprintf(o.out, sizeof o.out, "run1");
 *     o.steps = 2000;
 *     int rc = sd_train_run(&o, NULL, NULL);      // 0: done
 *     // later: o.resume = true (o.out = "run1"); sd_train_resume(&o, NULL);
 *     //        sd_train_run(&o, NULL, NULL) continues it bit for bit
 *
 * Options with o.dry_run set describe the run (data, model, NCSNv2's
 * settings) on stdout and return without writing anything.
 *
 * A run lives in one directory RUN_DIR (--out):
 *   RUN_DIR/config.json              every setting, resolved (written atomically)
 *   RUN_DIR/checkpoint.safetensors   the latest checkpoint (models/include/sd/checkpoint.h),
 *                                    replaced atomically every --ckpt-every steps,
 *                                    at the end, and when interrupted
 *   RUN_DIR/metrics.csv              one row per --log-every steps (and at every
 *                                    checkpoint): step, loss, running_loss,
 *                                    grad_norm, lr, images_per_s, elapsed_s
 *   RUN_DIR/samples/step_NNNNNN.png  sample grids, when a sampler hook is set
 *   RUN_DIR/lock                     flock()ed while a run uses the directory
 *
 * Reproducibility: every random draw is a function of (seed, step) (the
 * trainer's per-step child streams, the loader's per-epoch permutations and
 * per-step dequantisation), so a run resumed from its checkpoint at step k
 * computes bit for bit the losses of the uninterrupted run, given the same
 * thread count. On resume metrics.csv is cut back to the checkpoint's step
 * (atomically), and the running loss and elapsed time continue from that row.
 *
 * Data transform (stored in the checkpoint as data_transform): the loader
 * gives images in [0, 1]; the network sees them as they are ("unit") for the
 * ncsn and ve families, and as 2x - 1 ("centered") for vp and subvp, the
 * score_sde defaults (Song et al. 2021, configs: data.centered is False for
 * VE, True for VP / sub-VP). CSV points are used as they are ("identity").
 *
 * NCSNv2's data-driven settings (Song & Ermon 2020, "Improved techniques for
 * training score-based generative models", Sec. 3 and 4): for ncsn and ve,
 * sigma_max defaults to the largest pairwise distance in the (transformed)
 * data (Technique 1); for ncsn the number of levels L defaults to the one
 * that Technique 2's ratio gamma gives; Technique 4's Langevin step size is
 * reported (and stored in config.json as ncsnv2.langevin_eps, T = 5) for
 * the samplers: it is the eps of x <- x + alpha_i s + sqrt(2 alpha_i) z with
 * alpha_i = eps sigma_i^2 / sigma_L^2 (NCSNv2's Alg. 1, samplers/include/sd/sampler.h).
 */
#ifndef SD_TRAIN_RUN_H
#define SD_TRAIN_RUN_H

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>

#include "sd/objective.h"
#include "sd/option_table.h"
#include "sd/score_model.h"

#define SD_TRAIN_PATH_MAX 4096
#define SD_TRAIN_MAX_BATCH 65536

typedef struct sd_train_opts {
    char data[SD_TRAIN_PATH_MAX]; /* image folder or .csv file */
    char out[SD_TRAIN_PATH_MAX];  /* RUN_DIR */
    char model[32];               /* auto, unet-28, unet-32, unet, mlp */
    int ch, n_mult, mult[SD_UNET_MAX_LEVELS], num_res_blocks; /* --model unet */
    int channels, size, flip;     /* image loading (--channels 1|3, --size, --flip) */
    char sde[256];                /* as given ("ve"); resolved by sd_train_run */
    char transform[16];           /* "auto", "unit", "centered" ("identity" for CSV) */
    sd_objective_kind objective;
    sd_weighting weighting;
    double lr, clip, ema;
    int64_t warmup;               /* -1: min(5000, steps / 10) */
    int cosine;
    int64_t batch;                /* 0: 128 for images, 256 for points */
    int64_t steps, ckpt_every, log_every, sample_every;
    int threads;                  /* 0: OMP_NUM_THREADS / all cores */
    uint64_t seed;
    bool resume, dry_run, quiet;
    bool no_report;               /* do not call hooks->checkpoint (--no-report) */
    uint64_t max_memory;          /* 0: none; else the memory budget (sd/membudget.h)
                                     during sd_train_run, restored afterwards */
    uint64_t given;               /* bit i: sd_train_options[i] was given (command line) */
} sd_train_opts;

/* The defaults above (what `scorediff train --help` states). */
void sd_train_opts_default(sd_train_opts *o);

/* The options of a run, one entry each (option_table.h): the command line,
 * its help text, config.json, range checks and the --resume conflict check
 * all come from this table. */
extern const sd_option sd_train_options[];
extern const size_t sd_train_n_options;
/* Whether the option filling field `offset` of sd_train_opts was given. */
bool sd_train_given(const sd_train_opts *o, size_t offset);

/* The sample-grid hook: called every --sample-every steps with the model
 * holding its EMA weights (restored afterwards); writes a PNG grid of samples
 * to png_path, mapping the network's data space back with data_transform. It
 * must draw its randomness from its own streams (SD_STREAM_SAMPLER) so that
 * training is unaffected. Returns SD_OK or an error with the message set
 * (a failure is reported as a warning; training goes on). */
typedef sd_status (*sd_train_sample_fn)(void *ctx, sd_model *m, const char *data_transform,
                                        int64_t step, uint64_t seed, const char *png_path);

/* Progress of the loop, for a display: START before the first step, STEP
 * after each one, END after the last one (or an interruption), ABORT when
 * the loop stops with an error (a message follows through the log hook). */
typedef enum sd_train_event {
    SD_TRAIN_START, SD_TRAIN_STEP, SD_TRAIN_END, SD_TRAIN_ABORT
} sd_train_event;
typedef struct sd_train_progress {
    sd_train_event event;
    int64_t step, total, first; /* steps done, --steps, the step it (re)started from */
    int64_t batch;
    double loss, running;       /* this step's loss and the running average */
} sd_train_progress;
typedef void (*sd_train_progress_fn)(void *ctx, const sd_train_progress *p);

/* Every line the run reports (what it does, warnings, the error that ends
 * it): one line without a newline; a line that starts with '\n' asks to end
 * a progress line first. NULL: "train: LINE" on stderr, control bytes
 * escaped. An error's line is also left in sd_error_message(). */
typedef void (*sd_train_log_fn)(void *ctx, const char *line);

/* Stop hook: called after every step; nonzero (a signal number, say) =
 * finish the step, write a checkpoint, return 128 + the value. */
typedef int (*sd_train_stop_fn)(void *ctx, int64_t step);

typedef struct sd_train_hooks {
    /* Checked after every step, like stop_fn (a flag set by a signal
     * handler; the library installs none). */
    volatile sig_atomic_t *stop;
    sd_train_stop_fn stop_fn;
    void *stop_ctx;
    /* Tests: behave as if *stop were raised once this step is done (0: off). */
    int64_t stop_at;
    sd_train_sample_fn sample;
    void *sample_ctx;
    sd_train_progress_fn progress;
    void *progress_ctx;
    bool quiet; /* no progress calls */
    sd_train_log_fn log;
    void *log_ctx;
    /* Called after every checkpoint is written (and after that step's sample
     * grid), unless o->no_report: the CLI refreshes RUN_DIR/report.html
     * there. A failure is reported as a warning; training goes on. */
    sd_status (*checkpoint)(void *ctx, const char *run_dir, int64_t step);
    void *checkpoint_ctx;
} sd_train_hooks;

/* Exit codes of sd_train_run (the process exit codes of `scorediff train`). */
enum {
    SD_TRAIN_OK = 0,       /* all --steps done (or --dry-run) */
    SD_TRAIN_FAILED = 1,   /* runtime failure, e.g. a NaN loss or a failed write */
    SD_TRAIN_BAD_INPUT = 2 /* bad options, data or run directory */
    /* interrupted: 128 + the signal number (130 SIGINT, 143 SIGTERM), after the
     * checkpoint is written; a stop through stop_at returns 130 */
};

typedef struct sd_train_result {
    int64_t step;          /* steps done when the run returned */
    int64_t first_step;    /* step the run started (or resumed) from */
    float last_loss;
    double images_per_s;   /* over this invocation */
    size_t n_params;       /* trainable parameters */
    char sde[256];         /* the resolved noise family */
} sd_train_result;

/* Run (or, with o->dry_run, describe) a training run; hooks may be NULL.
 * Every option is checked against the table's ranges before any work. A
 * new run (not o->resume) stores o->data resolved to an absolute path, so
 * that it can be resumed from any directory. Lines go through hooks->log;
 * the return value is one of the codes above (the error's line is also in
 * sd_error_message()). For o->resume, call sd_train_resume first. res may
 * be NULL. */
int sd_train_run(const sd_train_opts *o, const sd_train_hooks *hooks, sd_train_result *res);

/* For o->resume: read o->out/config.json; refuse (SD_ERR_INVALID, naming the
 * option and both values) a given fixed option that differs from the run's;
 * otherwise replace o by the stored options, with the given ones that may
 * change (--steps, --ckpt-every, ...) and o's options that are not stored
 * (out, dry_run, quiet, max_memory) and given. A changed thread count is
 * reported through hooks->log. */
sd_status sd_train_resume(sd_train_opts *o, const sd_train_hooks *hooks);

/* Every option in its table range (0 allowed where it means "derive it");
 * SD_ERR_INVALID naming the option otherwise. */
sd_status sd_train_opts_check(const sd_train_opts *o);

/* config.json: write every option of the table that has a key, atomically,
 * plus `extra_json` (an object's members without braces, or NULL), keeping
 * keys of an existing file that o does not set (the first run's "ncsnv2"
 * report); read it back into o (fields only, `given` untouched). */
sd_status sd_run_config_write(const char *dir, const sd_train_opts *o, const char *extra_json);
sd_status sd_run_config_read(const char *dir, sd_train_opts *o);

#endif
