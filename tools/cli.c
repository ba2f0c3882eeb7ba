/* cli.c - shared command-line helpers; see cli.h. */
#include "cli.h"

#include "sd/checkpoint.h"
#include "sd/ode.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

const char *cli_escape(const char *s, char *buf, size_t cap)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    if (cap == 0) return buf;
    for (const unsigned char *p = (const unsigned char *)(s ? s : "(null)"); *p; p++) {
        if (*p < 0x20 || *p == 0x7f) {
            if (o + 4 >= cap) break;
            buf[o++] = '\\';
            buf[o++] = 'x';
            buf[o++] = hex[*p >> 4];
            buf[o++] = hex[*p & 15];
        } else {
            if (o + 1 >= cap) break;
            buf[o++] = (char)*p;
        }
    }
    buf[o] = '\0';
    return buf;
}

int cli_fail(const char *cmd, int code, const char *fmt, ...)
{
    char msg[1024], esc[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* the whole message is one line: any control byte came from a name */
    fprintf(stderr, "scorediff %s: %s\n", cmd, cli_escape(msg, esc, sizeof esc));
    return code;
}

int cli_exit_code(sd_status st)
{
    return (st == SD_ERR_INVALID || st == SD_ERR_FORMAT || st == SD_ERR_IO) ? 2 : 1;
}

bool cli_parse_int(const char *cmd, const char *opt, const char *s, long long lo, long long hi,
                   long long *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (end == s || *end || errno || v < lo || v > hi) {
        cli_fail(cmd, 2, "%s %s: expected an integer in [%lld, %lld]", opt, s, lo, hi);
        return false;
    }
    *out = v;
    return true;
}

bool cli_opt(int argc, char **argv, int *i, const char *name, const char **val, bool *err,
             const char *cmd)
{
    if (strcmp(argv[*i], name) != 0) return false;
    if (*i + 1 >= argc) {
        cli_fail(cmd, 2, "%s needs a value", name);
        *err = true;
        return true;
    }
    *val = argv[++*i];
    return true;
}

int cli_parse_options(const char *cmd, const sd_option *tab, size_t n, int argc, char **argv,
                      void *base, uint64_t *given, bool *help)
{
    *help = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            *help = true;
            return 0;
        }
        size_t k = 0;
        while (k < n && !(tab[k].flag && !strcmp(tab[k].flag, a))) k++;
        if (k == n) return cli_fail(cmd, 2, "unknown option '%s' (see scorediff %s --help)", a, cmd);
        const sd_option *op = &tab[k];
        const char *v = NULL;
        if (op->type != SD_OPT_FLAG) {
            if (i + 1 >= argc) return cli_fail(cmd, 2, "%s needs a value", a);
            v = argv[++i];
        }
        char msg[1024];
        if (!sd_option_parse(op, v, base, msg, sizeof msg)) return cli_fail(cmd, 2, "%s", msg);
        if (given && k < 64) *given |= (uint64_t)1 << k;
    }
    return 0;
}

void cli_print_options(FILE *f, const sd_option *tab, size_t n)
{
    enum { COL = 25 };
    for (size_t k = 0; k < n; k++) {
        const sd_option *op = &tab[k];
        if (op->type == SD_OPT_TEXT) {
            fprintf(f, "%s\n", op->help);
            continue;
        }
        char left[128];
        int len = snprintf(left, sizeof left, "  %s%s%s", op->flag, op->arg ? " " : "",
                           op->arg ? op->arg : "");
        fputs(left, f);
        const char *h = op->help ? op->help : "";
        if (len >= COL - 1) fputc(' ', f);
        else fprintf(f, "%*s", COL - len, "");
        for (const char *line = h;;) {
            size_t l = strcspn(line, "\n");
            fprintf(f, "%.*s\n", (int)l, line);
            if (!line[l]) break;
            line += l + 1;
            fprintf(f, "%*s", COL, "");
        }
    }
}

double cli_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void cli_progress_start(cli_progress *p, const char *label, int64_t total, int64_t first,
                        const char *unit, double unit_scale)
{
    p->label = label;
    p->total = total;
    p->first = first;
    p->start = cli_now();
    p->last_print = 0.0;
    p->tty = isatty(fileno(stderr));
    p->interval_s = p->tty ? 0.2 : 10.0;
    p->unit = unit ? unit : "it/s";
    p->unit_scale = unit_scale > 0 ? unit_scale : 1.0;
}

static void format_eta(double s, char *buf, size_t len)
{
    if (!isfinite(s) || s < 0) {
        snprintf(buf, len, "--:--");
        return;
    }
    long t = (long)(s + 0.5);
    if (t >= 3600) snprintf(buf, len, "%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
    else snprintf(buf, len, "%02ld:%02ld", t / 60, t % 60);
}

void cli_progress_update(cli_progress *p, int64_t done, const char *extra, bool force)
{
    double now = cli_now();
    if (!force && now - p->last_print < p->interval_s) return;
    p->last_print = now;
    double elapsed = now - p->start;
    double rate = elapsed > 0 ? (double)(done - p->first) / elapsed : 0.0;
    char eta[32];
    format_eta(rate > 0 ? (double)(p->total - done) / rate : NAN, eta, sizeof eta);
    int pct = p->total > 0 ? (int)(100.0 * (double)done / (double)p->total) : 0;
    fprintf(stderr, "%s%s %lld/%lld (%3d%%) %.1f %s ETA %s%s%s%s", p->tty ? "\r" : "", p->label,
            (long long)done, (long long)p->total, pct, rate * p->unit_scale, p->unit, eta,
            extra ? "  " : "", extra ? extra : "", p->tty ? "\033[K" : "\n");
    fflush(stderr);
}

void cli_progress_end(cli_progress *p, int64_t done, const char *extra)
{
    cli_progress_update(p, done, extra, true);
    if (p->tty) fputc('\n', stderr);
}

sd_status cli_mkdir(const char *path)
{
    if (mkdir(path, 0777) == 0 || errno == EEXIST) {
        struct stat st;
        if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) return SD_OK;
        return sd_error(SD_ERR_IO, "%s: exists and is not a directory", path);
    }
    return sd_error(SD_ERR_IO, "%s: cannot create directory: %s", path, strerror(errno));
}

int cli_check_model_source(const char *cmd, const char *ckpt, const char *gmm, const char *sde)
{
    if (!ckpt == !gmm) return cli_fail(cmd, 2, "give either --ckpt or --gmm (with --sde)");
    if (gmm && !sde) return cli_fail(cmd, 2, "--gmm needs --sde FAMILY");
    if (ckpt && sde) return cli_fail(cmd, 2, "--sde comes from the checkpoint; drop it or use --gmm");
    return 0;
}

sd_status cli_load_model(const char *ckpt, const char *gmm, const char *sde, bool raw,
                         sd_model **m, char *transform, size_t tlen)
{
    snprintf(transform, tlen, "identity");
    if (gmm) {
        sd_sde family;
        sd_status st = sd_sde_parse(sde, &family);
        if (st != SD_OK) return st;
        sd_gmm *g;
        if ((st = sd_gmm_load_json(gmm, &g)) != SD_OK) return st;
        if ((st = sd_model_new_gmm(g, &family, m)) != SD_OK) sd_gmm_free(g);
        return st;
    }
    char path[4096];
    struct stat sb;
    if (stat(ckpt, &sb) == 0 && S_ISDIR(sb.st_mode))
        snprintf(path, sizeof path, "%s/checkpoint.safetensors", ckpt);
    else
        snprintf(path, sizeof path, "%s", ckpt);
    sd_ckpt_meta meta;
    sd_status st = sd_checkpoint_load_model(path, !raw, m, &meta);
    if (st == SD_OK) snprintf(transform, tlen, "%s", meta.data_transform);
    return st;
}

/* ---- outputs never destroy inputs ------------------------------------------ */

/* dir = the directory part of path ("." if none), base = the rest. */
static bool split_path(const char *path, char *dir, size_t dcap, const char **base)
{
    const char *slash = strrchr(path, '/');
    *base = slash ? slash + 1 : path;
    if (!slash) return snprintf(dir, dcap, ".") < (int)dcap;
    size_t n = slash == path ? 1 : (size_t)(slash - path); /* "/x": the root */
    if (n >= dcap) return false;
    memcpy(dir, path, n);
    dir[n] = '\0';
    return true;
}

/* The absolute, symlink-free name of path, which need not exist (its
 * directory must). False if it cannot be resolved. */
static bool resolve_path(const char *path, char *out)
{
    char tmp[PATH_MAX];
    if (realpath(path, tmp)) {
        memcpy(out, tmp, strlen(tmp) + 1);
        return true;
    }
    char dir[PATH_MAX];
    const char *base;
    if (!split_path(path, dir, sizeof dir, &base) || !realpath(dir, tmp)) return false;
    return snprintf(out, PATH_MAX, "%s/%s", strcmp(tmp, "/") ? tmp : "", base) < PATH_MAX;
}

static bool exists_in(const char *dir, const char *name)
{
    char p[PATH_MAX + 64];
    struct stat sb;
    if (snprintf(p, sizeof p, "%s/%s", dir, name) >= (int)sizeof p) return false;
    return stat(p, &sb) == 0;
}

bool cli_is_run_dir(const char *dir)
{
    return exists_in(dir, "checkpoint.safetensors") || exists_in(dir, "metrics.csv") ||
           (exists_in(dir, "config.json") && exists_in(dir, "lock"));
}

/* The run directory that the resolved path `rpath` lies in (its directory or
 * that one's parent, which covers RUN/samples/...), into run; false if none. */
static bool inside_run_dir(const char *rpath, char *run)
{
    char dir[PATH_MAX];
    const char *base;
    if (!split_path(rpath, dir, sizeof dir, &base)) return false;
    for (int up = 0; up < 2; up++) {
        if (cli_is_run_dir(dir)) {
            memcpy(run, dir, strlen(dir) + 1);
            return true;
        }
        char parent[PATH_MAX];
        if (!strcmp(dir, "/") || !split_path(dir, parent, sizeof parent, &base)) return false;
        memcpy(dir, parent, strlen(parent) + 1);
    }
    return false;
}

static const char *file_kind(mode_t m)
{
    return S_ISDIR(m) ? "a directory" : S_ISFIFO(m) ? "a FIFO" : S_ISCHR(m) ? "a character device"
           : S_ISBLK(m) ? "a block device" : S_ISSOCK(m) ? "a socket" : "not a regular file";
}

static bool ends_with_ci(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcasecmp(s + a - b, suffix) == 0;
}

/* An input that is the output: same inode when both exist, else the same
 * resolved name. */
static const cli_input *same_as_input(const char *out, const char *rout, const cli_input *in,
                                      size_t n)
{
    struct stat so, si;
    bool out_exists = stat(out, &so) == 0;
    for (size_t i = 0; i < n; i++) {
        if (!in[i].path) continue;
        if (out_exists && stat(in[i].path, &si) == 0) {
            if (si.st_dev == so.st_dev && si.st_ino == so.st_ino) return &in[i];
            continue;
        }
        char rin[PATH_MAX];
        if (rout && resolve_path(in[i].path, rin) && strcmp(rin, rout) == 0) return &in[i];
    }
    return NULL;
}

int cli_check_output(const char *cmd, const char *opt, const char *out, const char *ext,
                     const cli_input *inputs, size_t n_inputs)
{
    if (!out || !*out) return cli_fail(cmd, 2, "%s needs a file name", opt);
    char rout[PATH_MAX], run[PATH_MAX], dir[PATH_MAX];
    bool resolved = resolve_path(out, rout);
    const cli_input *in = same_as_input(out, resolved ? rout : NULL, inputs, n_inputs);
    if (in)
        return cli_fail(cmd, 2, "%s %s: is the input given as %s %s; writing it would destroy "
                        "it: choose another name", opt, out, in->opt, in->path);
    if (resolved && inside_run_dir(rout, run))
        return cli_fail(cmd, 2, "%s %s: is inside the run directory %s (it holds a training "
                        "run's checkpoint, config.json and metrics.csv); write outputs "
                        "elsewhere", opt, out, run);
    struct stat sb;
    if (stat(out, &sb) == 0 && !S_ISREG(sb.st_mode))
        return cli_fail(cmd, 2, "%s %s: exists and is %s; give a file name", opt, out,
                        file_kind(sb.st_mode));
    if (out[strlen(out) - 1] == '/') return cli_fail(cmd, 2, "%s %s: names a directory", opt, out);
    if (ext && !ends_with_ci(out, ext))
        return cli_fail(cmd, 2, "%s %s: this output is written as %s; give a name ending in %s",
                        opt, out, !strcmp(ext, ".png") ? "a PNG image"
                                  : !strcmp(ext, ".csv") ? "CSV text" : ext, ext);
    const char *base;
    if (!split_path(out, dir, sizeof dir, &base))
        return cli_fail(cmd, 2, "%s %s: name too long", opt, out);
    if (stat(dir, &sb) != 0)
        return cli_fail(cmd, 2, "%s %s: cannot write into %s: %s", opt, out, dir, strerror(errno));
    if (!S_ISDIR(sb.st_mode))
        return cli_fail(cmd, 2, "%s %s: %s is not a directory", opt, out, dir);
    if (access(dir, W_OK) != 0)
        return cli_fail(cmd, 2, "%s %s: cannot write into %s: %s", opt, out, dir, strerror(errno));
    return 0;
}

/* "NNNNN.png" (at least 5 digits) with a value below n: a file --out-dir writes. */
static bool is_sample_name(const char *base, size_t n)
{
    size_t d = 0;
    unsigned long long v = 0;
    while (base[d] >= '0' && base[d] <= '9' && d < 19) v = v * 10 + (unsigned)(base[d++] - '0');
    if (d < 5 || strcmp(base + d, ".png") != 0 || v >= n) return false;
    char again[32];
    snprintf(again, sizeof again, "%05llu.png", v);
    return strcmp(again, base) == 0;
}

int cli_check_output_dir(const char *cmd, const char *opt, const char *dir, size_t n,
                         const cli_input *inputs, size_t n_inputs)
{
    if (!dir || !*dir) return cli_fail(cmd, 2, "%s needs a directory name", opt);
    struct stat sb;
    bool exists = stat(dir, &sb) == 0;
    if (exists && !S_ISDIR(sb.st_mode))
        return cli_fail(cmd, 2, "%s %s: exists and is %s, not a directory", opt, dir,
                        file_kind(sb.st_mode));
    char rdir[PATH_MAX], run[PATH_MAX], probe[PATH_MAX + 16];
    if (!resolve_path(dir, rdir)) {
        char parent[PATH_MAX];
        const char *base;
        if (split_path(dir, parent, sizeof parent, &base) && stat(parent, &sb) != 0)
            return cli_fail(cmd, 2, "%s %s: cannot create it in %s: %s", opt, dir, parent,
                            strerror(errno));
        return cli_fail(cmd, 2, "%s %s: cannot resolve the path", opt, dir);
    }
    /* the run check looks at the directory itself and its parent */
    snprintf(probe, sizeof probe, "%s/00000.png", rdir);
    if (inside_run_dir(probe, run))
        return cli_fail(cmd, 2, "%s %s: %s is a run directory (it holds a training run's "
                        "checkpoint, config.json and metrics.csv); write outputs elsewhere", opt,
                        dir, run);
    for (size_t i = 0; i < n_inputs; i++) {
        char rin[PATH_MAX], idir[PATH_MAX];
        const char *base;
        if (!inputs[i].path || !resolve_path(inputs[i].path, rin) ||
            !split_path(rin, idir, sizeof idir, &base))
            continue;
        if (strcmp(idir, rdir) == 0 && is_sample_name(base, n))
            return cli_fail(cmd, 2, "%s %s: would overwrite %s %s with a sample; choose another "
                            "directory", opt, dir, inputs[i].opt, inputs[i].path);
    }
    return 0;
}

const char *cli_sde_file(const char *spec, char *buf, size_t cap)
{
    if (!spec || strncmp(spec, "dense", 5) != 0) return NULL;
    for (const char *p = strchr(spec, ':'); p && *p; p = strchr(p + 1, ',')) {
        if (strncmp(p + 1, "C=", 2) != 0) continue;
        const char *v = p + 3, *end = strchr(v, ',');
        size_t n = end ? (size_t)(end - v) : strlen(v);
        if (n == 0 || n >= cap) return NULL;
        memcpy(buf, v, n);
        buf[n] = '\0';
        return buf;
    }
    return NULL;
}

int cli_check_tolerances(const char *cmd, double rtol, double atol)
{
    if (rtol >= 0 && rtol < SD_ODE_RTOL_MIN)
        return cli_fail(cmd, 2, "--rtol %g: below %g, the floor for a float32 state: float32 "
                        "resolves relative changes of 1.2e-7 (epsilon) only, so RK45's error "
                        "estimate cannot meet a smaller tolerance and its steps would shrink "
                        "without end", rtol, SD_ODE_RTOL_MIN);
    if (atol >= 0 && atol < SD_ODE_ATOL_MIN)
        return cli_fail(cmd, 2, "--atol %g: below %g, the ODE solver's floor (the absolute "
                        "term only matters where the state is near 0; elsewhere rtol >= %g "
                        "carries the accuracy)", atol, SD_ODE_ATOL_MIN, SD_ODE_RTOL_MIN);
    return 0;
}
