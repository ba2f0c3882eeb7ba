/* test_train_cli.c - `scorediff train`, `convert-idx` and `info` (issue #3):
 * interrupt-and-resume reproduces an uninterrupted run bit for bit (in
 * process through the loop's stop hook, and through real SIGINT / SIGTERM
 * sent to the built program), a NaN loss stops the run without touching the
 * last checkpoint, a process killed while writing a checkpoint leaves a
 * loadable one, bad input is exit code 2 with a clear message, NCSNv2's
 * data-driven choices against the paper's own numbers, and the IDX
 * converter and `info` on small files written here.
 *
 * Every test works in its own mkdtemp directory, on data it makes: 2-D points
 * from sd_rng, 8x8 PNGs written with sd_image_write_png, IDX bytes by hand.
 * Training runs use --threads 1: results are bit-identical only for a fixed
 * thread count, and one thread is also the fastest on a shared machine.
 */
#define _XOPEN_SOURCE 700
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "sd/checkpoint.h"
#include "cli.h"
#include "sd/image_grid.h"
#include "sd/data.h"
#include "sd/file.h"
#include "sd/rng.h"
#include "sd/safetensors.h"
#include "sd/ncsnv2.h"
#include "sd/train_run.h"
#include "test_tmp.h"

/* ---- helpers ---------------------------------------------------------------- */

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
}

/* Redirect stdout and stderr into files while a command runs in process;
 * capture_end() reads them into cap_out / cap_err. */
static char cap_err[1 << 16], cap_out[1 << 16];
static int save_err = -1, save_out = -1;

static void capture_begin(void)
{
    fflush(stdout);
    fflush(stderr);
    save_err = dup(2);
    save_out = dup(1);
    int fe = open(tu_at("stderr.txt"), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int fo = open(tu_at("stdout.txt"), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fe, 2);
    dup2(fo, 1);
    close(fe);
    close(fo);
}

static void capture_end(void)
{
    fflush(stdout);
    fflush(stderr);
    dup2(save_err, 2);
    dup2(save_out, 1);
    close(save_err);
    close(save_out);
    char *e = tu_read_all(tu_at("stderr.txt"), NULL), *o = tu_read_all(tu_at("stdout.txt"), NULL);
    snprintf(cap_err, sizeof cap_err, "%s", e ? e : "");
    snprintf(cap_out, sizeof cap_out, "%s", o ? o : "");
    free(e);
    free(o);
}

/* Run a command in process with argv from the NULL-terminated list,
 * capturing its output. */
static int run_cmd(int (*fn)(int, char **), ...)
{
    char *argv[64];
    int argc = 0;
    va_list ap;
    va_start(ap, fn);
    for (const char *a; (a = va_arg(ap, const char *)) && argc < 63;) argv[argc++] = (char *)a;
    va_end(ap);
    argv[argc] = NULL;
    capture_begin();
    int rc = fn(argc, argv);
    capture_end();
    return rc;
}

/* sd_train_run with hooks, capturing its output. */
static int run_loop(const sd_train_opts *o, const sd_train_hooks *h, sd_train_result *res)
{
    capture_begin();
    int rc = sd_train_run(o, h, res);
    capture_end();
    return rc;
}

/* n 2-D points: 4 Gaussian blobs (std 0.3) at (+-2, +-2), from a fixed seed. */
static void write_points(const char *path, int n, double scale)
{
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fprintf(f, "x,y\n");
    sd_rng r;
    sd_rng_init(&r, 5, SD_STREAM_DATA);
    for (int i = 0; i < n; i++) {
        int k = (int)sd_rng_below(&r, 4);
        double x = (k & 1 ? 2.0 : -2.0) + 0.3 * sd_rng_normal(&r);
        double y = (k & 2 ? 2.0 : -2.0) + 0.3 * sd_rng_normal(&r);
        fprintf(f, "%.6g,%.6g\n", scale * x, scale * y);
    }
    fclose(f);
}

/* n gray 8x8 PNGs with a bright square at a position that depends on i. */
static void write_pngs(const char *dir, int n, int w, int h)
{
    mkdir(dir, 0755);
    uint8_t px[64 * 64];
    for (int i = 0; i < n; i++) {
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
                px[y * w + x] = (uint8_t)((abs(x - i % w) < 2 && abs(y - (i / 2) % h) < 2) ? 230
                                                                                          : 20 + 3 * x);
        char path[600];
        snprintf(path, sizeof path, "%s/img%03d.png", dir, i);
        ck_assert_int_eq(sd_image_write_png(path, w, h, 1, px), SD_OK);
    }
}

/* The columns step,loss,running_loss,grad_norm,lr of every row (the others
 * are timings). */
static char *metrics_det(const char *run_dir, int *rows)
{
    char path[600];
    snprintf(path, sizeof path, "%s/metrics.csv", run_dir);
    char *all = tu_read_all(path, NULL);
    ck_assert_msg(all != NULL, "no %s", path);
    char *out = malloc(strlen(all) + 1), *o = out;
    *rows = -1; /* header */
    for (char *line = strtok(all, "\n"); line; line = strtok(NULL, "\n")) {
        int commas = 0;
        for (char *c = line; *c && commas < 5; c++) {
            if (*c == ',') commas++;
            if (commas < 5) *o++ = *c;
        }
        *o++ = '\n';
        (*rows)++;
    }
    *o = '\0';
    free(all);
    return out;
}

/* Check's messages are short: report the first differing line only. */
static void assert_same_rows(const char *a, const char *b)
{
    int line = 1;
    while (*a && *a == *b) {
        line += *a == '\n';
        a++;
        b++;
    }
    if (*a == *b) return;
    char la[128], lb[128];
    snprintf(la, sizeof la, "%.*s", (int)strcspn(a, "\n"), a);
    snprintf(lb, sizeof lb, "%.*s", (int)strcspn(b, "\n"), b);
    ck_abort_msg("metrics differ at line %d: ...%s vs ...%s", line, la, lb);
}

static int64_t ckpt_step(const char *run_dir)
{
    char path[600];
    snprintf(path, sizeof path, "%s/checkpoint.safetensors", run_dir);
    sd_model *m;
    sd_ckpt_meta meta;
    if (sd_checkpoint_load_model(path, true, &m, &meta) != SD_OK) return -1;
    sd_model_free(m);
    return meta.step;
}

static bool same_file(const char *a, const char *b)
{
    size_t la, lb;
    char *x = tu_read_all(a, &la), *y = tu_read_all(b, &lb);
    bool same = x && y && la == lb && memcmp(x, y, la) == 0;
    free(x);
    free(y);
    return same;
}

/* ---- interrupt and resume ------------------------------------------------- */

/* Options of a small run, parsed as the command line would be, plus the
 * NULL-terminated extra arguments. */
static void small_opts(sd_train_opts *o, const char *data, const char *out,
                       const char *const *extra)
{
    char *argv[48];
    int argc = 0;
    const char *a[] = {"train", "--data", data, "--out", out, "--steps", "40", "--ckpt-every",
                       "10", "--batch", "32", "--threads", "1", "--seed", "7", "--quiet"};
    for (size_t i = 0; i < sizeof a / sizeof *a; i++) argv[argc++] = (char *)a[i];
    for (; extra && *extra; extra++) argv[argc++] = (char *)*extra;
    bool help;
    ck_assert_int_eq(sd_train_parse_args(argc, argv, o, &help), 0);
}

/* Uninterrupted 40 steps vs. stopped after 15 (not a checkpoint step) and
 * resumed: metrics rows and the final checkpoint file must be identical,
 * byte for byte. A stray row past the checkpoint (as a crash leaves) must be
 * cut on resume. */
static void check_resume(const char *data, const char *const *extra)
{
    sd_train_opts o;
    small_opts(&o, data, tu_at("full"), extra);
    ck_assert_int_eq(run_loop(&o, &(sd_train_hooks){.quiet = true}, NULL), 0);

    small_opts(&o, data, tu_at("part"), extra);
    sd_train_result res;
    int rc = run_loop(&o, &(sd_train_hooks){.quiet = true, .stop_at = 15}, &res);
    ck_assert_int_eq(rc, 130);
    ck_assert_msg(strstr(cap_err, "interrupted (SIGINT) after step 15 of 40"), "%s", cap_err);
    ck_assert_int_eq(res.step, 15);
    ck_assert_int_eq(ckpt_step(tu_at("part")), 15);
    FILE *f = fopen(tu_at("part/metrics.csv"), "a");
    fputs("16,123.5,1,1,1,1,1\n", f);
    fclose(f);

    ck_assert_int_eq(run_cmd(sd_cmd_train, "train", "--resume", tu_at("part"), "--quiet", NULL), 0);
    int ra, rb;
    char *a = metrics_det(tu_at("full"), &ra), *b = metrics_det(tu_at("part"), &rb);
    ck_assert_int_eq(ra, 40);
    ck_assert_int_eq(rb, 40);
    assert_same_rows(a, b);
    free(a);
    free(b);
    ck_assert_msg(same_file(tu_at("full/checkpoint.safetensors"), tu_at("part/checkpoint.safetensors")),
                  "final checkpoints differ");
}

START_TEST(test_resume_points)
{
    tu_make_tmpdir("sd_train_cli");
    write_points(tu_at("pts.csv"), 300, 1.0);
    check_resume(tu_at("pts.csv"), NULL);
    tu_remove_tmpdir();
}
END_TEST

/* Images: the tiny unet, dequantisation noise, random flips and the centered
 * transform of vp all have to line up after a resume. */
START_TEST(test_resume_images)
{
    tu_make_tmpdir("sd_train_cli");
    write_pngs(tu_at("imgs"), 12, 8, 8);
    const char *extra[] = {"--model", "unet", "--ch", "8", "--mult", "1,2", "--num-res-blocks",
                           "1", "--flip", "--sde", "vp", NULL};
    check_resume(tu_at("imgs"), extra);
    tu_remove_tmpdir();
}
END_TEST

/* The built program, for real signals: $SCOREDIFF_BIN (set by meson), else
 * ../tools/scorediff next to this test's build directory. */
static const char *scorediff_bin(void)
{
    static char path[PATH_MAX + 32];
    const char *env = getenv("SCOREDIFF_BIN");
    if (env && *env) return env;
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    ck_assert_int_gt(n, 0);
    self[n] = '\0';
    char *slash = strrchr(self, '/');
    *slash = '\0';
    snprintf(path, sizeof path, "%s/../tools/scorediff", self);
    return path;
}

static int count_lines(const char *path)
{
    char *s = tu_read_all(path, NULL);
    int n = 0;
    for (char *c = s; c && *c; c++) n += *c == '\n';
    free(s);
    return n;
}

/* Start `scorediff train ...` and send `sig` once metrics.csv has `rows`
 * rows; returns the exit status. There is no wall-clock bound on the wait (a
 * slow sanitizer build on a busy machine takes what it takes; meson's timeout
 * bounds a real hang), but a child that exits before the rows exist fails the
 * test at once, with its stderr. */
static int run_and_signal(char *const argv[], const char *metrics, int rows, int sig)
{
    char err_path[600];
    snprintf(err_path, sizeof err_path, "%s", tu_at("signal_stderr.txt"));
    fflush(NULL);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        int fd = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(fd, 2);
        execv(argv[0], argv);
        _exit(127);
    }
    int status;
    while (count_lines(metrics) < rows + 1) {
        pid_t w = waitpid(pid, &status, WNOHANG);
        ck_assert_int_ge(w, 0);
        if (w == pid) {
            char *err = tu_read_all(err_path, NULL);
            ck_abort_msg("train exited (status 0x%x) before %s had %d rows: %s", status, metrics,
                         rows, err ? err : "");
        }
        struct timespec ts = {0, 5000000}; /* a polling interval, not a bound */
        nanosleep(&ts, NULL);
    }
    kill(pid, sig);
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 1000 + WTERMSIG(status);
}

START_TEST(test_resume_signals)
{
    tu_make_tmpdir("sd_train_cli");
    write_points(tu_at("pts.csv"), 300, 1.0);
    const char *bin = scorediff_bin();
    ck_assert_msg(access(bin, X_OK) == 0, "%s is not executable", bin);
    /* A long run (warm-up given, so the schedule does not depend on the
     * total), interrupted by SIGTERM and then by SIGINT. */
    char *argv1[] = {(char *)bin, "train", "--data", (char *)tu_at("pts.csv"), "--out",
                     (char *)tu_at("sig"), "--steps", "100000", "--warmup", "20", "--batch", "16",
                     "--ckpt-every", "7", "--threads", "1", "--seed", "3", NULL};
    ck_assert_int_eq(run_and_signal(argv1, tu_at("sig/metrics.csv"), 10, SIGTERM), 143);
    int64_t k1 = ckpt_step(tu_at("sig"));
    char *argv2[] = {(char *)bin, "train", "--resume", (char *)tu_at("sig"), NULL};
    ck_assert_int_eq(run_and_signal(argv2, tu_at("sig/metrics.csv"), (int)k1 + 10, SIGINT), 130);
    int64_t k2 = ckpt_step(tu_at("sig"));
    ck_assert_int_gt(k1, 0);
    ck_assert_int_gt(k2, k1);
    /* finish at k2 + 5 in process; compare with one uninterrupted run */
    char total[32];
    snprintf(total, sizeof total, "%lld", (long long)k2 + 5);
    ck_assert_int_eq(run_cmd(sd_cmd_train, "train", "--resume", tu_at("sig"), "--steps", total,
                             "--quiet", NULL), 0);
    ck_assert_int_eq(run_cmd(sd_cmd_train, "train", "--data", tu_at("pts.csv"), "--out", tu_at("ref"),
                             "--steps", total, "--warmup", "20", "--batch", "16", "--threads", "1",
                             "--seed", "3", "--quiet", NULL), 0);
    int ra, rb;
    char *a = metrics_det(tu_at("ref"), &ra), *b = metrics_det(tu_at("sig"), &rb);
    ck_assert_int_eq(ra, k2 + 5);
    ck_assert_int_eq(rb, k2 + 5);
    assert_same_rows(a, b);
    free(a);
    free(b);
    tu_remove_tmpdir();
}
END_TEST

/* ---- NaN ------------------------------------------------------------------- */

START_TEST(test_nan_keeps_checkpoint)
{
    tu_make_tmpdir("sd_train_cli");
    write_points(tu_at("pts.csv"), 200, 1.0);
    ck_assert_int_eq(run_cmd(sd_cmd_train, "train", "--data", tu_at("pts.csv"), "--out", tu_at("r"),
                             "--steps", "10", "--ckpt-every", "5", "--batch", "16", "--threads",
                             "1", "--sde", "ve:sigma_max=5", "--quiet", NULL), 0);
    size_t len;
    char *before = tu_read_all(tu_at("r/checkpoint.safetensors"), &len);
    /* The same file now holds points of 1e30: the next step's loss
     * overflows. */
    write_points(tu_at("pts.csv"), 200, 1e30);
    ck_assert_int_eq(run_cmd(sd_cmd_train, "train", "--resume", tu_at("r"), "--steps", "20",
                             "--quiet", NULL), 1);
    ck_assert_msg(strstr(cap_err, "at step 11") && strstr(cap_err, "untouched"), "%s", cap_err);
    size_t len2;
    char *after = tu_read_all(tu_at("r/checkpoint.safetensors"), &len2);
    ck_assert(len == len2 && memcmp(before, after, len) == 0);
    free(before);
    free(after);
    int rows;
    free(metrics_det(tu_at("r"), &rows));
    ck_assert_int_eq(rows, 10);

    /* A learning rate of 1e30: Adam's first step moves every weight by ~1e30
     * and the second forward pass overflows. The checkpoint of step 1 stays. */
    write_points(tu_at("pts2.csv"), 200, 1.0);
    ck_assert_int_eq(run_cmd(sd_cmd_train, "train", "--data", tu_at("pts2.csv"), "--out", tu_at("lr"),
                             "--steps", "10", "--ckpt-every", "1", "--lr", "1e30", "--warmup",
                             "0", "--batch", "16", "--threads", "1", "--sde", "ve:sigma_max=5",
                             "--quiet", NULL), 1);
    ck_assert_msg(strstr(cap_err, "at step 2;"), "%s", cap_err);
    ck_assert_int_eq(ckpt_step(tu_at("lr")), 1);
    tu_remove_tmpdir();
}
END_TEST

/* ---- crash while writing a checkpoint -------------------------------------- */

/* Every float of model, EMA and moments set to `v`. */
static void fill_all(sd_model *m, sd_trainer *t, float v)
{
    size_t n = m->params->total;
    float *bufs[4] = {m->params->data, t->ema, sd_optimizer_state(t->opt, 0),
                      sd_optimizer_state(t->opt, 1)};
    for (int b = 0; b < 4; b++)
        for (size_t i = 0; i < n; i++) bufs[b][i] = v;
}

/* Deterministic crash points (sd/file.h's fault hook): the child stops itself
 * with SIGSTOP at an exact stage and byte count of a checkpoint write, the
 * parent sees it stopped and SIGKILLs it there. No timing is involved. */
typedef struct stop_at {
    sd_file_stage stage;
    uint64_t bytes; /* SD_FILE_STAGE_CHUNK: the first piece reaching this count */
    int report;     /* pipe: the byte count where the child stopped */
} stop_at;

static int stop_hook(void *ctx, sd_file_stage stage, const char *path, uint64_t bytes)
{
    const stop_at *s = ctx;
    (void)path;
    if (stage == s->stage && (stage != SD_FILE_STAGE_CHUNK || bytes >= s->bytes)) {
        if (write(s->report, &bytes, sizeof bytes) != (ssize_t)sizeof bytes) _exit(4);
        raise(SIGSTOP);
        _exit(5); /* never reached: the parent kills a stopped child */
    }
    return 0;
}

/* Entries of dir with ".tmp." in their name (the writer's temporary files);
 * removed after counting, as a restarted run would. */
static int take_temps(const char *dir)
{
    DIR *d = opendir(dir);
    ck_assert_ptr_nonnull(d);
    int n = 0;
    struct dirent *e;
    char p[1024];
    while ((e = readdir(d)))
        if (strstr(e->d_name, ".tmp.")) {
            n++;
            snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
            unlink(p);
        }
    closedir(d);
    return n;
}

/* A child writes a checkpoint of a small mlp (model, EMA, Adam moments) with
 * every value equal to the new step and is killed at one stage: inside the
 * 8-byte length, inside the JSON header, inside the first and the last
 * tensor, after the last byte, after fsync+close before the rename, after the
 * rename before the directory fsync. The file at the path must load and hold
 * exactly one complete version, the old one before the rename and the new one
 * after it, and a temporary file must be left exactly when the kill came
 * before the rename. */
START_TEST(test_checkpoint_crash)
{
    tu_make_tmpdir("sd_train_cli");
    sd_sde sde;
    sd_sde_parse("ve", &sde);
    sd_model *m;
    ck_assert_int_eq(sd_model_new_network("mlp", NULL, 2, 1, 1, &sde, &m), SD_OK);
    sd_train_config tc = sd_train_config_default(&sde, 10, 0);
    sd_trainer *t;
    ck_assert_int_eq(sd_trainer_new(m, &tc, &t), SD_OK);
    const char *path = tu_at("ckpt.safetensors");
    sd_ckpt_meta meta = {.step = 1};
    fill_all(m, t, 1.0f);
    ck_assert_int_eq(sd_checkpoint_save(path, m, t, &meta), SD_OK);
    /* the layout of every version (steps 1..9 keep the header's length) */
    size_t total;
    unsigned char *file = (unsigned char *)tu_read_all(path, &total);
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++) hlen |= (uint64_t)file[i] << (8 * i);
    free(file);
    const uint64_t data0 = 8 + hlen;
    ck_assert_uint_lt(data0 + 200, total);
    const struct {
        sd_file_stage stage;
        uint64_t bytes, lo, hi; /* stop at `bytes`; it must land in [lo, hi) */
    } cases[] = {
        {SD_FILE_STAGE_CHUNK, 4, 4, 8},                       /* the length prefix */
        {SD_FILE_STAGE_CHUNK, 8 + hlen / 2, 9, data0},        /* the JSON header */
        {SD_FILE_STAGE_CHUNK, data0 + 100, data0 + 1, total}, /* the first tensor */
        {SD_FILE_STAGE_CHUNK, total - 40, data0 + 1, total},  /* the last tensor */
        {SD_FILE_STAGE_WRITTEN, 0, total, total + 1},
        {SD_FILE_STAGE_SYNCED, 0, total, total + 1},
        {SD_FILE_STAGE_RENAMED, 0, total, total + 1},
        {SD_FILE_STAGE_CHUNK, data0 + 100, data0 + 1, total}, /* and again after it */
        {SD_FILE_STAGE_SYNCED, 0, total, total + 1},
    };
    enum { CHUNK = 4 }; /* pieces of 4 bytes: a stop lands within 4 of its aim */
    int64_t current = 1;
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        const int64_t next = current + 1;
        int fds[2];
        ck_assert_int_eq(pipe(fds), 0);
        fflush(NULL);
        pid_t pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
            close(fds[0]);
            stop_at s = {cases[k].stage, cases[k].bytes, fds[1]};
            fill_all(m, t, (float)next);
            meta.step = next;
            sd_file_set_fault_hook(stop_hook, &s, CHUNK);
            sd_checkpoint_save(path, m, t, &meta);
            _exit(3); /* the stage was never reached */
        }
        close(fds[1]);
        int status;
        ck_assert_int_eq(waitpid(pid, &status, WUNTRACED), pid);
        ck_assert_msg(WIFSTOPPED(status), "case %zu (%s): the child did not stop (status 0x%x)", k,
                      sd_file_stage_name(cases[k].stage), status);
        uint64_t at_bytes = 0;
        ck_assert_int_eq(read(fds[0], &at_bytes, sizeof at_bytes), (ssize_t)sizeof at_bytes);
        close(fds[0]);
        ck_assert_msg(at_bytes >= cases[k].lo && at_bytes < cases[k].hi,
                      "case %zu: stopped at byte %llu, not in [%llu, %llu)", k,
                      (unsigned long long)at_bytes, (unsigned long long)cases[k].lo,
                      (unsigned long long)cases[k].hi);
        ck_assert_int_eq(kill(pid, SIGKILL), 0);
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        ck_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);

        const bool renamed = cases[k].stage == SD_FILE_STAGE_RENAMED;
        ck_assert_int_eq(take_temps(tu_tmpdir), (renamed ? 0 : 1));
        if (renamed) current = next;
        sd_model *loaded;
        sd_ckpt_meta got;
        ck_assert_msg(sd_checkpoint_load_model(path, false, &loaded, &got) == SD_OK,
                      "case %zu: %s", k, sd_error_message());
        ck_assert_int_eq(got.step, current);
        size_t wrong = 0;
        for (size_t i = 0; i < loaded->params->total; i++)
            wrong += loaded->params->data[i] != (float)current;
        ck_assert_uint_eq(wrong, 0);
        sd_model_free(loaded);
        /* the full training state too: model, EMA and both moments */
        ck_assert_int_eq(sd_checkpoint_load_trainer(path, m, t, &got), SD_OK);
        float *bufs[4] = {m->params->data, t->ema, sd_optimizer_state(t->opt, 0),
                          sd_optimizer_state(t->opt, 1)};
        for (int b = 0; b < 4; b++)
            for (size_t i = 0; i < m->params->total; i++) wrong += bufs[b][i] != (float)current;
        ck_assert_uint_eq(wrong, 0);
    }
    ck_assert_int_eq(current, 2); /* one rename reached, as planned */
    sd_trainer_free(t);
    sd_model_free(m);
    tu_remove_tmpdir();
}
END_TEST

/* ---- bad input ---------------------------------------------------------------- */

static void expect_fail(const char *needle, int code, const char *a1, const char *a2,
                        const char *a3, const char *a4, const char *a5, const char *a6)
{
    int rc = run_cmd(sd_cmd_train, "train", a1, a2, a3, a4, a5, a6, NULL);
    ck_assert_msg(rc == code && strstr(cap_err, needle),
                  "expected exit %d and '%s', got %d: %s", code, needle, rc, cap_err);
}

START_TEST(test_bad_input)
{
    tu_make_tmpdir("sd_train_cli");
    mkdir(tu_at("empty"), 0755);
    expect_fail("no PNG, JPEG", 2, "--data", tu_at("empty"), "--out", tu_at("o1"), NULL, NULL);
    mkdir(tu_at("text"), 0755);
    write_text(tu_at("text/readme.txt"), "hello");
    expect_fail("1 other files ignored", 2, "--data", tu_at("text"), "--out", tu_at("o1"), NULL, NULL);
    /* one corrupt PNG among good ones: a warning naming it, counted */
    write_pngs(tu_at("mixed"), 3, 8, 8);
    write_text(tu_at("mixed/broken.png"), "not a png at all");
    ck_assert_int_eq(run_cmd(sd_cmd_train, "train", "--data", tu_at("mixed"), "--dry-run", NULL), 0);
    ck_assert_msg(strstr(cap_err, "warning: ") && strstr(cap_err, "mixed/broken.png: "), "%s",
                  cap_err);
    ck_assert_msg(strstr(cap_out, "3 images") && strstr(cap_out, "1 of 4 image files skipped"),
                  "%s", cap_out);
    /* only corrupt images */
    mkdir(tu_at("broken"), 0755);
    write_text(tu_at("broken/a.png"), "garbage");
    expect_fail("none of the 1 image files could be decoded", 2, "--data", tu_at("broken"),
                "--dry-run", NULL, NULL, NULL);
    /* mismatched sizes without --size */
    write_pngs(tu_at("sizes"), 2, 8, 8);
    uint8_t px[100] = {0};
    ck_assert_int_eq(sd_image_write_png(tu_at("sizes/z.png"), 10, 10, 1, px), SD_OK);
    expect_fail("differs from 8x8", 2, "--data", tu_at("sizes"), "--dry-run", NULL, NULL, NULL);
    write_text(tu_at("bad.csv"), "1,2\n3,4\n5,6,7\n");
    expect_fail("bad.csv:3: expected 2 values, got 3", 2, "--data", tu_at("bad.csv"), "--dry-run",
                NULL, NULL, NULL);
    expect_fail("missing: No such file", 2, "--data", tu_at("missing"), "--dry-run", NULL, NULL, NULL);
    write_points(tu_at("pts.csv"), 50, 1.0);
    expect_fail("unknown model 'resnet'", 2, "--data", tu_at("pts.csv"), "--model", "resnet",
                "--dry-run", NULL);
    expect_fail("unknown family 'sde9'", 2, "--data", tu_at("pts.csv"), "--sde", "sde9",
                "--dry-run", NULL);
    expect_fail("needs flat data", 2, "--data", tu_at("mixed"), "--model", "mlp", "--dry-run", NULL);
    expect_fail("--size and --flip apply to image folders only", 2, "--data", tu_at("pts.csv"), "--size",
                "28", "--dry-run", NULL);
    expect_fail("unknown option '--bogus'", 2, "--data", tu_at("pts.csv"), "--bogus", NULL, NULL,
                NULL);
    expect_fail("--batch 0", 2, "--data", tu_at("pts.csv"), "--batch", "0", "--dry-run", NULL);
    expect_fail("--out RUN_DIR is required", 2, "--data", tu_at("pts.csv"), NULL, NULL, NULL, NULL);

    /* a run, then conflicting and compatible resumes */
    ck_assert_int_eq(run_cmd(sd_cmd_train, "train", "--data", tu_at("pts.csv"), "--out", tu_at("run"),
                             "--steps", "3", "--batch", "8", "--threads", "1", "--quiet", NULL),
                     0);
    expect_fail("already holds a run", 2, "--data", tu_at("pts.csv"), "--out", tu_at("run"), NULL, NULL);
    expect_fail("--lr 0.001 conflicts with the run's 0.0002 ", 2, "--resume",
                tu_at("run"), "--lr", "0.001", NULL, NULL);
    expect_fail("--model unet-28 conflicts", 2, "--resume", tu_at("run"), "--model", "unet-28", NULL,
                NULL);
    expect_fail("--sde vp conflicts", 2, "--resume", tu_at("run"), "--sde", "vp", NULL, NULL);
    expect_fail("--batch 9 conflicts", 2, "--resume", tu_at("run"), "--batch", "9", NULL, NULL);
    expect_fail("config.json: cannot open", 2, "--resume", tu_at("empty"), NULL, NULL, NULL, NULL);
    ck_assert_int_eq(run_cmd(sd_cmd_train, "train", "--resume", tu_at("run"), "--batch", "8",
                             "--sde", "ve", "--lr", "2e-4", "--quiet", NULL), 0);
    ck_assert_msg(strstr(cap_err, "nothing to do"), "%s", cap_err);
    tu_remove_tmpdir();
}
END_TEST

/* ---- inputs that are FIFOs --------------------------------------------------- */

/* `$SCOREDIFF_BIN args...` (NULL-terminated) with stderr captured into
 * cap_err; returns the exit code. */
static int run_bin(const char *first, ...)
{
    const char *argv[32] = {scorediff_bin(), first};
    int argc = 2;
    va_list ap;
    va_start(ap, first);
    for (const char *a; (a = va_arg(ap, const char *)) && argc < 31;) argv[argc++] = a;
    va_end(ap);
    argv[argc] = NULL;
    char err_path[600];
    snprintf(err_path, sizeof err_path, "%s", tu_at("bin_stderr.txt"));
    fflush(NULL);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        int fd = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int null = open("/dev/null", O_WRONLY);
        dup2(fd, 2);
        dup2(null, 1);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    int status;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    char *e = tu_read_all(err_path, NULL);
    snprintf(cap_err, sizeof cap_err, "%s", e ? e : "");
    free(e);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 1000 + WTERMSIG(status);
}

/* A FIFO named as an input (with no writer: opening it for reading would
 * wait forever) is refused at once with "not a regular file", exit code 2:
 * CSV data, a run's config.json, an IDX file, the image and the mixture
 * given to `sample`, a dense covariance; inside an image folder it is not a
 * candidate. A hang here is bounded by the suite's meson timeout. */
START_TEST(test_fifo_inputs)
{
    tu_make_tmpdir("sd_train_cli");
    const char *bin = scorediff_bin();
    ck_assert_msg(access(bin, X_OK) == 0, "%s is not executable", bin);
    ck_assert_int_eq(mkfifo(tu_at("pipe.csv"), 0644), 0);
    expect_fail("pipe.csv: not a regular file", 2, "--data", tu_at("pipe.csv"), "--dry-run", NULL,
                NULL, NULL);
    write_points(tu_at("pts.csv"), 50, 1.0);
    char dense[600];
    snprintf(dense, sizeof dense, "dense:C=%s", tu_at("pipe.csv"));
    expect_fail("pipe.csv: not a regular file", 2, "--data", tu_at("pts.csv"), "--sde", dense,
                "--dry-run", NULL);

    write_pngs(tu_at("imgs"), 3, 8, 8);
    ck_assert_int_eq(mkfifo(tu_at("imgs/zz.png"), 0644), 0);
    ck_assert_int_eq(run_cmd(sd_cmd_train, "train", "--data", tu_at("imgs"), "--dry-run", NULL), 0);
    ck_assert_msg(strstr(cap_out, "3 images"), "%s", cap_out);

    ck_assert_int_eq(run_cmd(sd_cmd_train, "train", "--data", tu_at("pts.csv"), "--out", tu_at("r"),
                             "--steps", "2", "--batch", "8", "--threads", "1", "--quiet", NULL),
                     0);
    ck_assert_int_eq(unlink(tu_at("r/config.json")), 0);
    ck_assert_int_eq(mkfifo(tu_at("r/config.json"), 0644), 0);
    expect_fail("config.json: not a regular file", 2, "--resume", tu_at("r"), NULL, NULL, NULL, NULL);

    ck_assert_int_eq(mkfifo(tu_at("pipe.idx"), 0644), 0);
    ck_assert_int_eq(run_cmd(sd_cmd_convert_idx, "convert-idx", tu_at("pipe.idx"), tu_at("o"), NULL), 2);
    ck_assert_msg(strstr(cap_err, "pipe.idx: not a regular file"), "%s", cap_err);

    ck_assert_int_eq(run_bin("sample", "--gmm", tu_at("pipe.csv"), "--sde", "ve", "--sampler", "ode",
                             "--n", "1", "--out", tu_at("g.csv"), "--quiet", NULL),
                     2);
    ck_assert_msg(strstr(cap_err, "pipe.csv: not a regular file"), "%s", cap_err);

    /* an image model of one step, then --image naming a FIFO */
    ck_assert_int_eq(run_cmd(sd_cmd_train, "train", "--data", tu_at("imgs"), "--out", tu_at("ir"),
                             "--model", "unet", "--ch", "8", "--mult", "1,2", "--num-res-blocks",
                             "1", "--steps", "1", "--batch", "2", "--threads", "1", "--sde", "ve",
                             "--quiet", NULL),
                     0);
    ck_assert_int_eq(run_bin("sample", "--ckpt", tu_at("ir"), "--sampler", "pc", "--steps", "2",
                             "--n", "1", "--out", tu_at("s.png"), "--image", tu_at("imgs/zz.png"),
                             "--mask", tu_at("imgs/img000.png"), "--quiet", NULL),
                     2);
    ck_assert_msg(strstr(cap_err, "zz.png: not a regular file"), "%s", cap_err);
    ck_assert(access(tu_at("s.png"), F_OK) != 0);
    tu_remove_tmpdir();
}
END_TEST

/* Temporary files of a killed run (sd/file.h: "<file>.tmp.<pid>.<n>", and
 * the older "<file>.tmp.<pid>" / "<file>.tmp") are removed when the run is
 * resumed under its lock; other files are left alone. */
START_TEST(test_stale_temps)
{
    tu_make_tmpdir("sd_train_cli");
    write_points(tu_at("pts.csv"), 50, 1.0);
    ck_assert_int_eq(run_cmd(sd_cmd_train, "train", "--data", tu_at("pts.csv"), "--out", tu_at("r"),
                             "--steps", "2", "--batch", "8", "--threads", "1", "--quiet", NULL),
                     0);
    static const char *const stale[] = {"r/checkpoint.safetensors.tmp.123.0",
                                        "r/config.json.tmp.123.1", "r/metrics.csv.tmp.77.2",
                                        "r/checkpoint.safetensors.tmp.99", "r/config.json.tmp"};
    static const char *const kept[] = {"r/notes.tmp.1", "r/config.json.tmp.bak",
                                       "r/config.json.tmpx"};
    for (size_t i = 0; i < 5; i++) write_text(tu_at(stale[i]), "torn");
    for (size_t i = 0; i < 3; i++) write_text(tu_at(kept[i]), "mine");
    ck_assert_int_eq(run_cmd(sd_cmd_train, "train", "--resume", tu_at("r"), "--steps", "3",
                             "--quiet", NULL), 0);
    for (size_t i = 0; i < 5; i++) ck_assert_msg(access(tu_at(stale[i]), F_OK) != 0, "%s", stale[i]);
    for (size_t i = 0; i < 3; i++) ck_assert_msg(access(tu_at(kept[i]), F_OK) == 0, "%s", kept[i]);
    ck_assert_int_eq(ckpt_step(tu_at("r")), 3);
    tu_remove_tmpdir();
}
END_TEST

/* A config.json over the 1 MiB cap is refused with both sizes; it used to
 * be cut at 1 MiB silently (a padded file then parsed as its first part). */
START_TEST(test_config_cap)
{
    tu_make_tmpdir("sd_train_cli");
    write_points(tu_at("pts.csv"), 50, 1.0);
    ck_assert_int_eq(run_cmd(sd_cmd_train, "train", "--data", tu_at("pts.csv"), "--out", tu_at("r"),
                             "--steps", "2", "--batch", "8", "--threads", "1", "--quiet", NULL),
                     0);
    FILE *f = fopen(tu_at("r/config.json"), "a");
    ck_assert_ptr_nonnull(f);
    for (int i = 0; i < (1 << 20); i += 64) fprintf(f, "%63s\n", "");
    fclose(f);
    expect_fail("config.json: file of ", 2, "--resume", tu_at("r"), "--steps", "3", NULL, NULL);
    ck_assert_msg(strstr(cap_err, "exceeds the 1048576-byte limit"), "%s", cap_err);
    ck_assert_int_eq(ckpt_step(tu_at("r")), 2);
    tu_remove_tmpdir();
}
END_TEST

/* ---- dry run, info, images end to end ---------------------------------------- */

START_TEST(test_images_run_and_info)
{
    tu_make_tmpdir("sd_train_cli");
    write_pngs(tu_at("imgs"), 10, 8, 8);
    ck_assert_int_eq(run_cmd(sd_cmd_train, "train", "--data", tu_at("imgs"), "--model", "unet",
                             "--ch", "8", "--mult", "1,2", "--num-res-blocks", "1", "--dry-run",
                             NULL), 0);
    ck_assert_msg(strstr(cap_out, "10 images, 1x8x8") && strstr(cap_out, "parameters") &&
                      strstr(cap_out, "largest pairwise distance") &&
                      strstr(cap_out, "gamma") && strstr(cap_out, "Langevin step size"),
                  "%s", cap_out);
    ck_assert_int_eq(run_cmd(sd_cmd_train, "train", "--data", tu_at("imgs"), "--out", tu_at("r"),
                             "--model", "unet", "--ch", "8", "--mult", "1,2", "--num-res-blocks",
                             "1", "--steps", "4", "--batch", "4", "--ckpt-every", "2",
                             "--threads", "1", "--sde", "ncsn", "--sample-every", "2", "--quiet",
                             NULL), 0);
    /* sample grids at steps 2 and 4 (16 tiles of 8x8 with 1-pixel borders),
     * and training unaffected by them: same rows as a run without */
    int cols, rows_g, gw, gh;
    sd_image_grid_size(16, 0, 8, 8, &cols, &rows_g, &gw, &gh);
    for (int k = 2; k <= 4; k += 2) {
        char name[64];
        snprintf(name, sizeof name, "r/samples/step_%06d.png", k);
        size_t len;
        char *buf = tu_read_all(tu_at(name), &len);
        ck_assert_msg(buf != NULL, "no %s: %s", name, cap_err);
        sd_image img;
        ck_assert_int_eq(sd_image_decode((uint8_t *)buf, len, &img), SD_OK);
        ck_assert(img.w == gw && img.h == gh && gw == 4 * 8 + 5);
        sd_image_free(&img);
        free(buf);
    }
    ck_assert(access(tu_at("r/samples/step_000003.png"), F_OK) != 0);
    ck_assert_int_eq(run_cmd(sd_cmd_train, "train", "--data", tu_at("imgs"), "--out", tu_at("r2"),
                             "--model", "unet", "--ch", "8", "--mult", "1,2", "--num-res-blocks",
                             "1", "--steps", "4", "--batch", "4", "--ckpt-every", "2",
                             "--threads", "1", "--sde", "ncsn", "--quiet", NULL), 0);
    int n1, n2;
    char *m1 = metrics_det(tu_at("r"), &n1), *m2 = metrics_det(tu_at("r2"), &n2);
    ck_assert_int_eq(n1, 4);
    assert_same_rows(m1, m2);
    free(m1);
    free(m2);
    ck_assert_int_eq(run_cmd(sd_cmd_info, "info", tu_at("r"), NULL), 0);
    ck_assert_msg(strstr(cap_out, "step            4\n") &&
                      strstr(cap_out, "data_transform  unit\n") &&
                      strstr(cap_out, "data_shape      1,8,8\n") &&
                      strstr(cap_out, "sde             ncsn:sigma_min=0.01,sigma_max=") &&
                      strstr(cap_out, "adam moments") && strstr(cap_out, "loads:          yes"),
                  "%s", cap_out);
    ck_assert_int_eq(run_cmd(sd_cmd_info, "info", tu_at("r/config.json"), NULL), 2);
    ck_assert_int_eq(run_cmd(sd_cmd_info, "info", tu_at("nothing"), NULL), 2);

    /* mlp on points: the parameter count, worked out by hand from
     * reference-model.md: [x (2) + 32 Fourier features] -> 128 -> 128 -> 128 -> 2 */
    write_points(tu_at("pts.csv"), 60, 1.0);
    ck_assert_int_eq(run_cmd(sd_cmd_train, "train", "--data", tu_at("pts.csv"), "--out", tu_at("p"),
                             "--steps", "2", "--batch", "8", "--threads", "1", "--quiet", NULL), 0);
    ck_assert_int_eq(run_cmd(sd_cmd_info, "info", tu_at("p/checkpoint.safetensors"), NULL), 0);
    char expect[64];
    snprintf(expect, sizeof expect, "parameters:     %d trainable",
             34 * 128 + 128 + 2 * (128 * 128 + 128) + 128 * 2 + 2);
    ck_assert_msg(strstr(cap_out, expect) && strstr(cap_out, "data_transform  identity"), "%s",
                  cap_out);
    tu_remove_tmpdir();
}
END_TEST

/* ---- NCSNv2 ----------------------------------------------------------------- */

START_TEST(test_ncsnv2)
{
    /* Technique 2 is solved: the criterion is 0.5 at gamma, and the paper's
     * settings (Song & Ermon 2020, App. C: CIFAR-10 D = 3072, sigma 50 ->
     * 0.01 in L = 232; CelebA 64x64 D = 12288, sigma 90 -> 0.01 in L = 500)
     * are reproduced to within 10% (the paper rounds the criterion "~0.5"). */
    double g = sd_ncsnv2_gamma(3072);
    ck_assert_double_eq_tol(sd_ncsnv2_criterion(3072, g), 0.5, 1e-9);
    ck_assert(g > 1.0 && sd_ncsnv2_criterion(3072, g * 0.999) > 0.5);
    int L = sd_ncsnv2_levels(50, 0.01, g);
    ck_assert_msg(abs(L - 232) < 24, "CIFAR-10 L = %d", L);
    L = sd_ncsnv2_levels(90, 0.01, sd_ncsnv2_gamma(12288));
    ck_assert_msg(abs(L - 500) < 50, "CelebA L = %d", L);
    ck_assert(sd_ncsnv2_gamma(2) == 0.0); /* 2-D: no solution */
    /* a ladder of L levels has ratio <= gamma and L - 1 would exceed it */
    ck_assert(pow(50 / 0.01, 1.0 / (L - 1)) <= sd_ncsnv2_gamma(12288) * (1 + 1e-12) ||
              L == 0);
    /* Technique 4: the paper's CIFAR-10 step size 6.2e-6 for T = 5 on its own
     * ladder (ratio (50/0.01)^(1/231)). */
    double ratio = pow(50 / 0.01, 1.0 / 231), eps = sd_ncsnv2_step_size(ratio, 0.01, 5);
    ck_assert_msg(fabs(eps - 6.2e-6) < 0.62e-6, "eps = %g", eps);
    double f = sd_ncsnv2_step_criterion(ratio, 0.01, 5, eps);
    ck_assert(f > 1.0);
    ck_assert(f <= sd_ncsnv2_step_criterion(ratio, 0.01, 5, eps * 1.05));
    ck_assert(f <= sd_ncsnv2_step_criterion(ratio, 0.01, 5, eps / 1.05));

    /* Technique 1: max pairwise distance equals a brute-force double scan */
    enum { N = 300, D = 17 };
    static float x[N * D];
    sd_rng r;
    sd_rng_init(&r, 11, SD_STREAM_DATA);
    sd_rng_fill_normal(&r, x, N * D, 3.0f, 1.0f);
    double best = 0.0;
    for (int i = 0; i < N; i++)
        for (int j = i + 1; j < N; j++) {
            double s = 0;
            for (int k = 0; k < D; k++) s += pow((double)x[i * D + k] - x[j * D + k], 2);
            best = fmax(best, sqrt(s));
        }
    double got;
    ck_assert_int_eq(sd_ncsnv2_max_distance(x, N, D, &got), SD_OK);
    ck_assert_double_eq_tol(got, best, 1e-9 * best);
    ck_assert_int_eq(sd_ncsnv2_max_distance(x, 1, D, &got), SD_OK);
    ck_assert(got == 0.0);
}
END_TEST

/* ---- convert-idx --------------------------------------------------------------- */

static void write_idx(const char *path, bool gz, int ndim, const uint32_t *dims, const uint8_t *data,
                      size_t n)
{
    uint8_t hdr[4 + 16] = {0, 0, 8, (uint8_t)ndim};
    for (int i = 0; i < ndim; i++)
        for (int b = 0; b < 4; b++) hdr[4 + 4 * i + b] = (uint8_t)(dims[i] >> (24 - 8 * b));
    if (gz) {
        gzFile f = gzopen(path, "wb");
        gzwrite(f, hdr, 4 + 4 * (unsigned)ndim);
        gzwrite(f, data, (unsigned)n);
        gzclose(f);
    } else {
        FILE *f = fopen(path, "wb");
        fwrite(hdr, 1, 4 + 4 * (size_t)ndim, f);
        fwrite(data, 1, n, f);
        fclose(f);
    }
}

START_TEST(test_convert_idx)
{
    tu_make_tmpdir("sd_train_cli");
    enum { N = 3, H = 4, W = 5 };
    uint8_t data[N * H * W];
    for (int i = 0; i < N * H * W; i++) data[i] = (uint8_t)(i * 7 + 3);
    write_idx(tu_at("imgs.gz"), true, 3, (uint32_t[]){N, H, W}, data, sizeof data);
    ck_assert_int_eq(run_cmd(sd_cmd_convert_idx, "convert-idx", tu_at("imgs.gz"), tu_at("out"),
                             "--limit", "2", NULL), 0);
    ck_assert(access(tu_at("out/00002.png"), F_OK) != 0);
    for (int i = 0; i < 2; i++) {
        char name[32];
        snprintf(name, sizeof name, "out/%05d.png", i);
        size_t len;
        char *buf = tu_read_all(tu_at(name), &len);
        ck_assert_ptr_nonnull(buf);
        sd_image img;
        ck_assert_int_eq(sd_image_decode((uint8_t *)buf, len, &img), SD_OK);
        ck_assert(img.w == W && img.h == H && img.comp == 1);
        ck_assert_int_eq(memcmp(img.pixels, data + i * H * W, H * W), 0);
        sd_image_free(&img);
        free(buf);
    }
    write_idx(tu_at("plain"), false, 3, (uint32_t[]){N, H, W}, data, sizeof data);
    ck_assert_int_eq(run_cmd(sd_cmd_convert_idx, "convert-idx", tu_at("plain"), tu_at("all"), NULL), 0);
    ck_assert(access(tu_at("all/00002.png"), F_OK) == 0);
    write_idx(tu_at("labels"), false, 1, (uint32_t[]){N}, data, N);
    ck_assert_int_eq(run_cmd(sd_cmd_convert_idx, "convert-idx", tu_at("labels"), tu_at("l"), NULL), 2);
    ck_assert_msg(strstr(cap_err, "expected an IDX image file"), "%s", cap_err);
    write_idx(tu_at("short"), false, 3, (uint32_t[]){N, H, W}, data, sizeof data - 1);
    ck_assert_int_eq(run_cmd(sd_cmd_convert_idx, "convert-idx", tu_at("short"), tu_at("s"), NULL), 2);
    ck_assert_msg(strstr(cap_err, "truncated"), "%s", cap_err);
    ck_assert_int_eq(run_cmd(sd_cmd_convert_idx, "convert-idx", tu_at("plain"), NULL), 2);
    ck_assert_int_eq(run_cmd(sd_cmd_convert_idx, "convert-idx", tu_at("plain"), tu_at("x"), "--limit",
                             "0", NULL), 2);
    tu_remove_tmpdir();
}
END_TEST

static Suite *train_cli_suite(void)
{
    Suite *s = suite_create("train_cli");
    TCase *tc = tcase_create("train_cli");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_ncsnv2);
    tcase_add_test(tc, test_convert_idx);
    tcase_add_test(tc, test_bad_input);
    tcase_add_test(tc, test_images_run_and_info);
    tcase_add_test(tc, test_resume_points);
    tcase_add_test(tc, test_resume_images);
    tcase_add_test(tc, test_nan_keeps_checkpoint);
    tcase_add_test(tc, test_resume_signals);
    tcase_add_test(tc, test_checkpoint_crash);
    tcase_add_test(tc, test_fifo_inputs);
    tcase_add_test(tc, test_stale_temps);
    tcase_add_test(tc, test_config_cap);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(train_cli_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed != 0;
}
