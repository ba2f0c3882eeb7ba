/* train_loop.h - the training run behind `scorediff train`, callable in
 * process (tests drive it directly; cmd_train.c only parses argv into
 * sd_train_opts, handles --resume and signals, and calls sd_train_run).
 *
 * A run lives in one directory RUN_DIR (--out):
 *   RUN_DIR/config.json              every setting, resolved (written atomically)
 *   RUN_DIR/checkpoint.safetensors   the latest checkpoint (models/checkpoint.h),
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
 * alpha_i = eps sigma_i^2 / sigma_L^2 (NCSNv2's Alg. 1, samplers/sampler.h).
 */
#ifndef SD_TRAIN_LOOP_H
#define SD_TRAIN_LOOP_H

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>

#include "score_model.h"
#include "objective.h"

#define SD_TRAIN_PATH_MAX 4096
#define SD_TRAIN_MAX_BATCH 65536

/* Bits of sd_train_opts.given: options set on the command line. On --resume
 * a given option that is fixed for a run must equal the stored value. */
enum {
    SD_TOPT_DATA = 1u << 0, SD_TOPT_OUT = 1u << 1, SD_TOPT_MODEL = 1u << 2,
    SD_TOPT_CH = 1u << 3, SD_TOPT_MULT = 1u << 4, SD_TOPT_NRB = 1u << 5,
    SD_TOPT_CHANNELS = 1u << 6, SD_TOPT_SIZE = 1u << 7, SD_TOPT_FLIP = 1u << 8,
    SD_TOPT_SDE = 1u << 9, SD_TOPT_TRANSFORM = 1u << 10, SD_TOPT_OBJECTIVE = 1u << 11,
    SD_TOPT_WEIGHTING = 1u << 12, SD_TOPT_LR = 1u << 13, SD_TOPT_WARMUP = 1u << 14,
    SD_TOPT_COSINE = 1u << 15, SD_TOPT_CLIP = 1u << 16, SD_TOPT_EMA = 1u << 17,
    SD_TOPT_BATCH = 1u << 18, SD_TOPT_SEED = 1u << 19,
    /* may change on resume */
    SD_TOPT_STEPS = 1u << 20, SD_TOPT_CKPT = 1u << 21, SD_TOPT_LOG = 1u << 22,
    SD_TOPT_SAMPLE = 1u << 23, SD_TOPT_THREADS = 1u << 24
};

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
    uint32_t given;               /* SD_TOPT_* */
} sd_train_opts;

void sd_train_opts_default(sd_train_opts *o);

/* The sample-grid hook: called every --sample-every steps with the model
 * holding its EMA weights (restored afterwards); writes a PNG grid of samples
 * to png_path, mapping the network's data space back with data_transform. It
 * must draw its randomness from its own streams (SD_STREAM_SAMPLER) so that
 * training is unaffected. Returns SD_OK or an error with the message set
 * (a failure is reported as a warning; training goes on). */
typedef sd_status (*sd_train_sample_fn)(void *ctx, sd_model *m, const char *data_transform,
                                        int64_t step, uint64_t seed, const char *png_path);

typedef struct sd_train_hooks {
    /* Checked after every step; nonzero (a signal number) = finish the step,
     * write a checkpoint, return 128 + the value. */
    volatile sig_atomic_t *stop;
    /* Tests: behave as if *stop were raised once this step is done (0: off). */
    int64_t stop_at;
    sd_train_sample_fn sample;
    void *sample_ctx;
    bool quiet; /* no progress display */
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

/* Run (or, with o->dry_run, describe) a training run. Errors are printed as
 * "scorediff train: ..." on stderr; the return value is the exit code above.
 * For o->resume the caller has merged RUN_DIR/config.json into o
 * (sd_run_config_read) and checked conflicts. res may be NULL. */
int sd_train_run(const sd_train_opts *o, const sd_train_hooks *h, sd_train_result *res);

/* cmd_train.c: argv (argv[0] = "train") into o, with defaults; returns 0 or
 * an exit code (2) after printing the error; *help is set by --help. */
int sd_train_parse_args(int argc, char **argv, sd_train_opts *o, bool *help);
/* For o->resume: read o->out/config.json, refuse (exit code 2) a given fixed
 * option that differs from the run's, and merge the ones that may change. */
int sd_train_prepare_resume(sd_train_opts *o);

/* config.json (defined in cmd_train.c, next to the option table): write all
 * of o atomically, plus `extra_json` (an object's members without braces, or
 * NULL), keeping keys of an existing file that o does not set (the first
 * run's "ncsnv2" report); read it back into o (fields only, `given`
 * untouched). */
sd_status sd_run_config_write(const char *dir, const sd_train_opts *o, const char *extra_json);
sd_status sd_run_config_read(const char *dir, sd_train_opts *o);

/* ---- NCSNv2's data-driven choices (Song & Ermon 2020) ---------------------- */
/* Technique 1: the largest Euclidean distance between two of the n points
 * x [n, D] (exact pairs, Gram-matrix computation with the winner recomputed
 * in double). */
sd_status sd_ncsnv2_max_distance(const float *x, size_t n, size_t D, double *out);
/* Technique 2: the ratio gamma = sigma_{i-1} / sigma_i > 1 that solves
 *   Phi(sqrt(2D)(gamma - 1) + 3 gamma) - Phi(sqrt(2D)(gamma - 1) - 3 gamma) = 0.5;
 * 0 if no gamma does (D < 5: the left side then stays above 0.5). */
double sd_ncsnv2_gamma(size_t D);
double sd_ncsnv2_criterion(size_t D, double gamma); /* the left side above */
/* Levels of a geometric ladder from sigma_max down to sigma_min with ratio
 * at most gamma: 1 + ceil(log(sigma_max / sigma_min) / log gamma). */
int sd_ncsnv2_levels(double sigma_max, double sigma_min, double gamma);
/* Technique 4: the step size eps of annealed Langevin dynamics (step
 * alpha_i = eps sigma_i^2 / sigma_L^2, T steps per level) that brings
 *   f(eps) = (1 - eps/sL^2)^(2T) (gamma^2 - 2 eps / (sL^2 - sL^2 (1 - eps/sL^2)^2))
 *            + 2 eps / (sL^2 - sL^2 (1 - eps/sL^2)^2)
 * closest to 1 (f > 1 for all eps in (0, sL^2), so: its minimiser). */
double sd_ncsnv2_step_size(double gamma, double sigma_min, int T);
double sd_ncsnv2_step_criterion(double gamma, double sigma_min, int T, double eps);

#endif
