/* train_internal.h - shared by the files of the training run (train_run.c:
 * the run directory and the loop; train_setup.c: data, noise family, model,
 * memory check). Not a public header: the API is train_run.h. */
#ifndef SD_TRAIN_INTERNAL_H
#define SD_TRAIN_INTERNAL_H

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "sd/data.h"
#include "sd/train_run.h"
#include "sd/trainer.h"

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
    /* out, data and the checkpoint path as printed (emit escapes control bytes) */
    char eout[4 * P], edata[4 * P], eckpt[4 * P];
    char ckpt[P], metrics_path[P];
    /* NCSNv2 report */
    bool have_dist, sigma_from_data, levels_from_data;
    double dist, gamma, eps;
    size_t dist_items;
    int levels;
} run;
/* One line to the log hook, or "train: LINE" on stderr with control bytes
 * escaped (a file name cannot drive the terminal); a leading '\n' ends a
 * progress line first. */
static inline void emit(const sd_train_hooks *h, const char *line)
{
    if (h->log) {
        h->log(h->log_ctx, line);
        return;
    }
    if (line[0] == '\n') {
        fputc('\n', stderr);
        line++;
    }
    fputs("train: ", stderr);
    for (const unsigned char *c = (const unsigned char *)line; *c; c++)
        if (*c < 0x20 || *c == 0x7f) fprintf(stderr, "\\x%02x", *c);
        else fputc(*c, stderr);
    fputc('\n', stderr);
}

static inline void say(const run *R, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
static inline void say(const run *R, const char *fmt, ...)
{
    char line[4 * P + 1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    emit(R->h, line);
    va_end(ap);
}

/* An error that ends the run: logged, left in sd_error_message(), and
 * returned as the exit code (2 bad input, 1 runtime failure). */
static inline int fail(const run *R, int code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
static inline int fail(const run *R, int code, const char *fmt, ...)
{
    char line[4 * P + 1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    emit(R->h, line);
    /* the status is not returned (the exit code is); the message is kept */
    sd_error(code == SD_TRAIN_BAD_INPUT ? SD_ERR_INVALID : SD_ERR_IO, "%s", line);
    return code;
}

/* Exit code for a library status: 2 for bad input, 1 otherwise. */
static inline int exit_code(sd_status st)
{
    return (st == SD_ERR_INVALID || st == SD_ERR_FORMAT || st == SD_ERR_IO) ? 2 : 1;
}

static inline double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static inline sd_status make_dir(const char *path)
{
    if (mkdir(path, 0777) == 0 || errno == EEXIST) {
        struct stat st;
        if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) return SD_OK;
        return sd_error(SD_ERR_IO, "%s: exists and is not a directory", path);
    }
    return sd_error(SD_ERR_IO, "%s: cannot create directory: %s", path, strerror(errno));
}

/* buf [P] = dir/name; false if too long. */
static inline bool join(char *buf, const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    if (a + b + 2 > P) return false;
    memcpy(buf, dir, a);
    buf[a] = '/';
    memcpy(buf + a + 1, name, b + 1);
    return true;
}

static inline bool file_exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

/* train_setup.c: each returns 0 or an exit code after logging the problem. */
int sd__train_validate(run *R);       /* ranges; the run directory apart from the data */
int sd__train_load_data(run *R);
int sd__train_resolve_sde(run *R);    /* with NCSNv2's sigma_max / L and the transform */
int sd__train_build_model(run *R);
int sd__train_setup_training(run *R); /* trainer, loader, batch buffer, memory check */
void sd__train_describe(const run *R, FILE *f);
const char *sd__train_objective_name(const sd_train_opts *o);
const char *sd__train_weighting_name(const sd_train_opts *o);

#endif
