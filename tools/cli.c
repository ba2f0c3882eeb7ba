/* cli.c - shared command-line helpers; see cli.h. */
#include "cli.h"

#include "checkpoint.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int cli_fail(const char *cmd, int code, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "scorediff %s: %s\n", cmd, msg);
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

bool cli_parse_double(const char *cmd, const char *opt, const char *s, double lo, double hi,
                      double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end || errno || !isfinite(v) || v < lo || v > hi) {
        cli_fail(cmd, 2, "%s %s: expected a number in [%g, %g]", opt, s, lo, hi);
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
