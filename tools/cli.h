/* cli.h - shared pieces of the scorediff command-line program: command
 * dispatch, option parsing helpers, progress display, error reporting.
 *
 * Conventions for every command (tools/cmd_<name>.c):
 *   - `int sd_cmd_<name>(int argc, char **argv)` with argv[0] the command name;
 *     returns the process exit code: 0 success, 1 runtime failure, 2 bad usage
 *     or bad input (a clear one-line message naming the file and the problem).
 *   - `--help` prints usage to stdout and returns 0.
 *   - Errors go through cli_fail(), which prints "scorediff <cmd>: <message>".
 *   - Long work shows progress on stderr through cli_progress_*.
 */
#ifndef SD_CLI_H
#define SD_CLI_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "sd/option_table.h"
#include "sd/status.h"

int sd_cmd_train(int argc, char **argv);
int sd_cmd_sample(int argc, char **argv);
int sd_cmd_loglik(int argc, char **argv);
int sd_cmd_convert_idx(int argc, char **argv);
int sd_cmd_info(int argc, char **argv);
int sd_cmd_report(int argc, char **argv);

/* cmd_train.c: argv (argv[0] = "train") into o through the training run's
 * option table, with defaults; returns 0 or an exit code (2) after printing
 * the error; *help is set by --help. */
typedef struct sd_train_opts sd_train_opts;
int sd_train_parse_args(int argc, char **argv, sd_train_opts *o, bool *help);

/* Print "scorediff <cmd>: <formatted message>\n" to stderr; returns `code`.
 * Control characters in the message (from a file name, say) are printed
 * escaped (cli_escape), so the message stays one line and a name cannot
 * drive the terminal. */
int cli_fail(const char *cmd, int code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
/* Copy s into buf (cap bytes, always terminated) with every control byte
 * (0x00-0x1f, 0x7f) written as \xNN; returns buf. For every path or
 * user-given string printed outside cli_fail. */
const char *cli_escape(const char *s, char *buf, size_t cap);

/* Exit code for a library status: 2 for bad input (INVALID, FORMAT, IO), 1 otherwise. */
int cli_exit_code(sd_status st);

/* Strict number parsing for option values; on failure print an error naming
 * the option and return false. */
bool cli_parse_int(const char *cmd, const char *opt, const char *s, long long lo, long long hi,
                   long long *out);
/* If argv[*i] equals `name`, take its value (argv[*i + 1]) into *val, advance
 * *i and return true; a missing value prints an error and sets *err. */
bool cli_opt(int argc, char **argv, int *i, const char *name, const char **val, bool *err,
             const char *cmd);

/* Parse argv (argv[0] the command) by an option table (models/include/sd/option_table.h)
 * into the options struct at base: every entry's flag, its value checked by
 * type and range; bit i of *given (if not NULL) set for entry i. --help / -h
 * sets *help and stops. Returns 0, or 2 after printing the problem (an
 * unknown option, a missing or bad value). */
int cli_parse_options(const char *cmd, const sd_option *tab, size_t n, int argc, char **argv,
                      void *base, uint64_t *given, bool *help);
/* The table as help text: "  --flag ARG  help", continuation lines
 * indented; SD_OPT_TEXT entries as they are. */
void cli_print_options(FILE *f, const sd_option *tab, size_t n);

/* Progress: redrawn in place on a terminal, one line every `interval_s`
 * seconds otherwise (logs). `extra` is appended (e.g. "loss 0.1234"). */
typedef struct cli_progress {
    const char *label;
    int64_t total;
    double start, last_print;
    bool tty;
    double interval_s;
    int64_t first; /* progress already done at start (resume), excluded from the rate */
    const char *unit; /* "it/s", "img/s", ... per unit of `done` */
    double unit_scale; /* units per step (e.g. batch size for img/s) */
} cli_progress;
void cli_progress_start(cli_progress *p, const char *label, int64_t total, int64_t first,
                        const char *unit, double unit_scale);
void cli_progress_update(cli_progress *p, int64_t done, const char *extra, bool force);
void cli_progress_end(cli_progress *p, int64_t done, const char *extra);
double cli_now(void); /* monotonic seconds */

/* The model of `sample` and `loglik`: a checkpoint (a file, or a run
 * directory holding checkpoint.safetensors; EMA weights unless `raw`) or an
 * analytic mixture (gmm JSON + sde spec). `transform` receives the data
 * transform stored in the checkpoint ("identity" for a gmm). */
typedef struct sd_model sd_model;
/* The options naming that model are consistent: exactly one of ckpt and
 * gmm, --sde with --gmm only. Returns 0, or prints the problem and returns 2. */
int cli_check_model_source(const char *cmd, const char *ckpt, const char *gmm, const char *sde);
sd_status cli_load_model(const char *ckpt, const char *gmm, const char *sde, bool raw,
                         sd_model **m, char *transform, size_t tlen);

/* ---- outputs never destroy inputs ---------------------------------------- */

/* An input of the command, for cli_check_output: the option that named it and
 * its path (NULL: not given). */
typedef struct cli_input {
    const char *opt;
    const char *path;
} cli_input;

/* True if dir is a run directory of `scorediff train`: it holds
 * checkpoint.safetensors or metrics.csv, or config.json next to a lock file. */
bool cli_is_run_dir(const char *dir);

/* Check, before any work, that the output file `out` (given as option `opt`)
 * may be written. Refused (one line naming the path and the reason, returns
 * 2; 0 when fine):
 *   - a name that does not end in `ext` (".png", ".csv"; NULL: any);
 *   - an existing path that is not a regular file (a directory, a FIFO, ...);
 *   - one of the inputs: the same file (st_dev, st_ino) when it exists, or the
 *     same resolved path;
 *   - a file inside a run directory (its directory, or that directory's
 *     parent, is one; see cli_is_run_dir): a run's checkpoint, config.json
 *     and metrics.csv are never overwritten by an output;
 *   - a directory that does not exist or cannot be written (with the
 *     system's reason).
 * Writes still go through a temporary file and a rename; this check is what
 * keeps a wrong name from replacing something valuable. */
int cli_check_output(const char *cmd, const char *opt, const char *out, const char *ext,
                     const cli_input *inputs, size_t n_inputs);

/* The same for an output directory (sample --out-dir): it may exist; it must
 * not be a run directory or lie inside one, and no input may be one of the
 * files DIR/00000.png .. written into it (n of them). */
int cli_check_output_dir(const char *cmd, const char *opt, const char *dir, size_t n,
                         const cli_input *inputs, size_t n_inputs);

/* The file named by "C=FILE" in a dense noise-family spec ("dense:C=x.json,..."),
 * into buf; NULL if the spec names none. An input like any other. */
const char *cli_sde_file(const char *spec, char *buf, size_t cap);

/* The lowest --rtol the ODE solvers accept, with the reason (samplers/include/sd/ode.h). */
int cli_check_tolerances(const char *cmd, double rtol, double atol);

/* Ensure a directory exists (mkdir -p semantics for one level). */
sd_status cli_mkdir(const char *path);

#endif
