/* test_cli_safety.c - the command-line program never destroys an input, a
 * failed start leaves nothing behind, and its messages say what went wrong
 * (issue 12 items 5, 6, 8, 9 and 10).
 *
 * Every case runs the built program ($SCOREDIFF_BIN, set by meson) in a
 * child process, as a user would, and checks its exit code, its one-line
 * message on stderr and the files around it (an input's bytes must be
 * unchanged after a refused command). The runs are tiny: a 2-D mlp run on 200
 * points and an 8x8 U-Net run on 8 PNGs, a few steps each. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "sd/data.h"
#include "sd/ops.h"
#include "sd/rng.h"

static char tmpdir[PATH_MAX];
static char err_buf[16384];

static const char *at(const char *name)
{
    static char buf[8][PATH_MAX + 64];
    static int k;
    k = (k + 1) % 8;
    snprintf(buf[k], sizeof buf[k], "%s/%s", tmpdir, name);
    return buf[k];
}

static const char *scorediff_bin(void)
{
    static char path[PATH_MAX + 32];
    const char *env = getenv("SCOREDIFF_BIN");
    if (env && *env) return env;
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    ck_assert_int_gt(n, 0);
    self[n] = '\0';
    *strrchr(self, '/') = '\0';
    snprintf(path, sizeof path, "%s/../tools/scorediff", self);
    return path;
}

/* The whole file (NUL-terminated) or NULL; *len its size. */
static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 16, n = 0;
    char *b = malloc(cap + 1);
    size_t r;
    while (b && (r = fread(b + n, 1, cap - n, f)) > 0) {
        n += r;
        if (n == cap) {
            char *b2 = realloc(b, 2 * cap + 1);
            if (!b2) {
                free(b);
                b = NULL;
                break;
            }
            b = b2;
            cap *= 2;
        }
    }
    fclose(f);
    if (!b) return NULL;
    b[n] = '\0';
    if (len) *len = n;
    return b;
}

/* Run `scorediff ARGS...` (NULL-terminated) in tmpdir with stdout to
 * /dev/null and stderr into err_buf; `as_limit` > 0 caps the child's address
 * space (bytes). Returns the exit code (1000 + signal if killed). */
static int run_limited(long long as_limit, const char *first, ...)
{
    const char *argv[48];
    int argc = 0;
    argv[argc++] = scorediff_bin();
    va_list ap;
    va_start(ap, first);
    for (const char *a = first; a && argc < 47; a = va_arg(ap, const char *)) argv[argc++] = a;
    va_end(ap);
    argv[argc] = NULL;
    const char *errp = at("stderr.txt");
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        if (chdir(tmpdir) != 0) _exit(126);
        int fe = open(errp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int fo = open("/dev/null", O_WRONLY);
        if (fe < 0 || fo < 0) _exit(126);
        dup2(fe, 2);
        dup2(fo, 1);
        if (as_limit > 0) {
            struct rlimit rl = {(rlim_t)as_limit, (rlim_t)as_limit};
            if (setrlimit(RLIMIT_AS, &rl) != 0) _exit(126);
        }
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    int status;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    char *e = slurp(errp, NULL);
    snprintf(err_buf, sizeof err_buf, "%s", e ? e : "");
    free(e);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 1000 + WTERMSIG(status);
}

#define RUN(...) run_limited(0, __VA_ARGS__, NULL)

/* The command is refused with exit code 2 and a message holding every
 * NULL-terminated needle. */
static void expect_refused(int rc, const char *what, ...)
{
    ck_assert_msg(rc == 2, "%s: exit %d, want 2; stderr: %s", what, rc, err_buf);
    va_list ap;
    va_start(ap, what);
    for (const char *n; (n = va_arg(ap, const char *));)
        ck_assert_msg(strstr(err_buf, n), "%s: stderr lacks '%s': %s", what, n, err_buf);
    va_end(ap);
}

static bool exists(const char *path)
{
    struct stat sb;
    return lstat(path, &sb) == 0;
}

/* ---- fixtures ------------------------------------------------------------------ */

static void write_points(const char *path, int n)
{
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    sd_rng r;
    sd_rng_init(&r, 3, SD_STREAM_DATA);
    for (int i = 0; i < n; i++) {
        double c = sd_rng_below(&r, 2) ? 2.0 : -2.0;
        fprintf(f, "%.6g,%.6g\n", c + 0.3 * sd_rng_normal(&r), 0.3 * sd_rng_normal(&r));
    }
    fclose(f);
}

static void write_pngs(const char *dir, int n)
{
    mkdir(dir, 0755);
    uint8_t px[64];
    for (int i = 0; i < n; i++) {
        for (int k = 0; k < 64; k++) px[k] = (uint8_t)((k * 30 + i * 7) % 256);
        char path[PATH_MAX + 32];
        snprintf(path, sizeof path, "%s/i%d.png", dir, i);
        ck_assert_int_eq(sd_image_write_png(path, 8, 8, 1, px), SD_OK);
    }
}

static void setup(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/sd_cli_safety_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
    write_points(at("pts.csv"), 200);
    write_pngs(at("imgs"), 8);
}

static void teardown(void)
{
    char cmd[PATH_MAX + 16];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
}

static void points_run(const char *dir, const char *sde)
{
    ck_assert_msg(RUN("train", "--data", "pts.csv", "--model", "mlp", "--steps", "3", "--batch",
                      "16", "--threads", "1", "--sde", sde, "--out", dir, "--quiet") == 0,
                  "%s", err_buf);
}

static void image_run(const char *dir, const char *transform)
{
    ck_assert_msg(RUN("train", "--data", "imgs", "--model", "unet", "--ch", "8", "--mult", "1",
                      "--num-res-blocks", "1", "--steps", "2", "--batch", "4", "--threads", "1",
                      "--sde", "ve:sigma_max=10", "--data-transform", transform, "--out", dir,
                      "--quiet") == 0,
                  "%s", err_buf);
}

/* A snapshot of the files a refused command must leave alone. */
typedef struct snap {
    const char *path;
    char *bytes;
    size_t len;
} snap;

static void snap_take(snap *s, const char *path)
{
    s->path = path;
    s->bytes = slurp(path, &s->len);
    ck_assert_msg(s->bytes != NULL, "cannot read %s", path);
}

static void snap_check(snap *s, const char *what)
{
    size_t len;
    char *now = slurp(s->path, &len);
    ck_assert_msg(now && len == s->len && memcmp(now, s->bytes, len) == 0,
                  "%s: %s was changed", what, s->path);
    free(now);
}

/* ---- item 5: an output never destroys an input ---------------------------------- */

START_TEST(test_outputs_never_replace_inputs)
{
    points_run("R", "ve");
    image_run("IR", "unit");
    snap ck, metrics, cfg, pts, ick;
    /* path strings of at() rotate: keep our own copies */
    char p_ck[PATH_MAX + 64], p_m[PATH_MAX + 64], p_c[PATH_MAX + 64], p_p[PATH_MAX + 64],
        p_i[PATH_MAX + 64];
    snprintf(p_ck, sizeof p_ck, "%s", at("R/checkpoint.safetensors"));
    snprintf(p_m, sizeof p_m, "%s", at("R/metrics.csv"));
    snprintf(p_c, sizeof p_c, "%s", at("R/config.json"));
    snprintf(p_p, sizeof p_p, "%s", at("pts.csv"));
    snprintf(p_i, sizeof p_i, "%s", at("IR/checkpoint.safetensors"));
    snap_take(&ck, p_ck);
    snap_take(&metrics, p_m);
    snap_take(&cfg, p_c);
    snap_take(&pts, p_p);
    snap_take(&ick, p_i);

    /* loglik: the checkpoint read, the run's log, the data */
    expect_refused(RUN("loglik", "--ckpt", "R", "--data", "pts.csv", "--method", "ode", "--limit",
                       "2", "--quiet", "--out", "R/checkpoint.safetensors"),
                   "loglik --out the checkpoint", "R/checkpoint.safetensors", "input", NULL);
    expect_refused(RUN("loglik", "--ckpt", "R/checkpoint.safetensors", "--data", "pts.csv",
                       "--method", "ode", "--limit", "2", "--quiet", "--out", "R/metrics.csv"),
                   "loglik --out metrics.csv", "R/metrics.csv", "run directory", NULL);
    expect_refused(RUN("loglik", "--ckpt", "R", "--data", "pts.csv", "--method", "ode", "--limit",
                       "2", "--quiet", "--out", "pts.csv"),
                   "loglik --out the data", "--data pts.csv", NULL);
    expect_refused(RUN("loglik", "--ckpt", "R", "--data", "pts.csv", "--method", "ode", "--limit",
                       "2", "--quiet", "--out", "rows.txt"),
                   "loglik --out without .csv", "rows.txt", ".csv", NULL);
    /* sample: trajectory and --out over the checkpoint, a new file in the run
     * directory, a symlink to the checkpoint, the same file twice */
    expect_refused(RUN("sample", "--ckpt", "R", "--sampler", "ode", "--n", "4", "--quiet", "--out",
                       "s.csv", "--trajectory", "R/checkpoint.safetensors"),
                   "sample --trajectory the checkpoint", "--trajectory R/checkpoint.safetensors",
                   "input", NULL);
    expect_refused(RUN("sample", "--ckpt", "R", "--sampler", "ode", "--n", "4", "--quiet", "--out",
                       "R/checkpoint.safetensors"),
                   "sample --out the checkpoint (points)", "input", NULL);
    expect_refused(RUN("sample", "--ckpt", "R", "--sampler", "ode", "--n", "4", "--quiet", "--out",
                       "R/samples.csv"),
                   "sample --out into a run directory", "run directory", NULL);
    ck_assert(!exists(at("R/samples.csv")));
    ck_assert_int_eq(symlink(p_ck, at("link.csv")), 0);
    expect_refused(RUN("sample", "--ckpt", "R", "--sampler", "ode", "--n", "4", "--quiet", "--out",
                       "link.csv"),
                   "sample --out a symlink to the checkpoint", "input", NULL);
    expect_refused(RUN("sample", "--ckpt", "R", "--sampler", "ode", "--n", "4", "--quiet", "--out",
                       "s.csv", "--trajectory", "s.csv"),
                   "sample --out = --trajectory", "s.csv", NULL);
    expect_refused(RUN("sample", "--ckpt", "R", "--sampler", "ode", "--n", "4", "--quiet", "--out",
                       "s.csv", "--trajectory", "traj.png"),
                   "points trajectory as .png", "traj.png", ".csv", NULL);
    expect_refused(RUN("sample", "--ckpt", "IR", "--sampler", "ode", "--n", "2", "--quiet",
                       "--out", "g.png", "--trajectory", "IR/checkpoint.safetensors"),
                   "image trajectory over the checkpoint", "input", NULL);
    expect_refused(RUN("sample", "--ckpt", "IR", "--sampler", "ode", "--n", "2", "--quiet",
                       "--out", "g.png", "--trajectory", "traj.csv"),
                   "image trajectory as .csv", "traj.csv", ".png", NULL);
    expect_refused(RUN("sample", "--ckpt", "IR", "--sampler", "ode", "--n", "2", "--quiet",
                       "--out-dir", "IR"),
                   "sample --out-dir the run directory", "run directory", NULL);
    /* a subfolder of a run directory (RUN/samples/) is inside it too */
    ck_assert_int_eq(mkdir(at("IR/samples"), 0755), 0);
    expect_refused(RUN("sample", "--ckpt", "IR", "--sampler", "ode", "--n", "2", "--quiet",
                       "--out", "IR/samples/g.png"),
                   "sample --out into RUN/samples", "run directory", NULL);
    /* --out-dir would write 00000.png over the --image being inpainted */
    ck_assert_int_eq(mkdir(at("od"), 0755), 0);
    uint8_t px[64];
    memset(px, 200, sizeof px);
    ck_assert_int_eq(sd_image_write_png(at("od/00000.png"), 8, 8, 1, px), SD_OK);
    ck_assert_int_eq(sd_image_write_png(at("mask.png"), 8, 8, 1, px), SD_OK);
    snap img;
    char p_img[PATH_MAX + 64];
    snprintf(p_img, sizeof p_img, "%s", at("od/00000.png"));
    snap_take(&img, p_img);
    expect_refused(RUN("sample", "--ckpt", "IR", "--sampler", "pc", "--steps", "5", "--n", "2",
                       "--quiet", "--image", "od/00000.png", "--mask", "mask.png", "--out-dir",
                       "od"),
                   "sample --out-dir over --image", "--image od/00000.png", NULL);
    snap_check(&img, "sample --out-dir");
    free(img.bytes);
    snap_check(&ck, "sample/loglik");
    snap_check(&metrics, "sample/loglik");
    snap_check(&cfg, "sample/loglik");
    snap_check(&pts, "sample/loglik");
    snap_check(&ick, "sample/loglik");

    /* train: the run directory is not the data, not inside an image folder,
     * and does not hold the data */
    expect_refused(RUN("train", "--data", "imgs", "--out", "imgs", "--steps", "2", "--quiet"),
                   "train --out the data", "--out imgs", NULL);
    expect_refused(RUN("train", "--data", "imgs", "--out", "imgs/run", "--steps", "2", "--quiet"),
                   "train --out inside the data", "inside the data folder", NULL);
    ck_assert(!exists(at("imgs/run")) && !exists(at("imgs/config.json")));
    expect_refused(RUN("train", "--data", "R/metrics.csv", "--out", "R", "--steps", "2", "--quiet"),
                   "train --data inside --out", "inside the run directory", NULL);
    snap_check(&metrics, "train");

    /* what is allowed still works */
    ck_assert_msg(RUN("sample", "--ckpt", "R", "--sampler", "ode", "--n", "4", "--quiet", "--out",
                      "s.csv", "--trajectory", "traj.csv") == 0, "%s", err_buf);
    ck_assert(exists(at("s.csv")) && exists(at("traj.csv")));
    ck_assert_msg(RUN("loglik", "--ckpt", "R", "--data", "pts.csv", "--method", "ode", "--limit",
                      "2", "--quiet", "--out", "rows.csv") == 0, "%s", err_buf);
    free(ck.bytes);
    free(metrics.bytes);
    free(cfg.bytes);
    free(pts.bytes);
    free(ick.bytes);
}
END_TEST

/* ---- item 6: tolerances a float32 state can meet --------------------------------- */

START_TEST(test_tolerance_floor)
{
    points_run("R", "ve");
    expect_refused(RUN("sample", "--ckpt", "R", "--sampler", "ode", "--n", "4", "--quiet", "--out",
                       "s.csv", "--rtol", "1e-12", "--atol", "1e-12"),
                   "sample --rtol 1e-12", "--rtol 1e-12", "float32", "1e-06", NULL);
    ck_assert(!exists(at("s.csv")));
    expect_refused(RUN("loglik", "--ckpt", "R", "--data", "pts.csv", "--method", "ode", "--quiet",
                       "--rtol", "1e-7"),
                   "loglik --rtol 1e-7", "--rtol 1e-07", "float32", NULL);
    expect_refused(RUN("loglik", "--ckpt", "R", "--data", "pts.csv", "--method", "ode", "--quiet",
                       "--atol", "1e-13"),
                   "loglik --atol 1e-13", "--atol 1e-13", "floor", NULL);
    ck_assert_msg(RUN("sample", "--ckpt", "R", "--sampler", "ode", "--n", "4", "--quiet", "--out",
                      "s.csv", "--rtol", "1e-6", "--atol", "1e-12") == 0, "%s", err_buf);
}
END_TEST

/* ---- item 8: --resume with another run's checkpoint -------------------------------- */

START_TEST(test_resume_foreign_checkpoint)
{
    points_run("R", "ve");
    points_run("V", "vp");
    char cmd[3 * PATH_MAX];
    snprintf(cmd, sizeof cmd, "cp '%s' '%s'", at("R/checkpoint.safetensors"),
             at("V/checkpoint.safetensors"));
    ck_assert_int_eq(system(cmd), 0);
    expect_refused(RUN("train", "--resume", "V", "--steps", "6", "--quiet"),
                   "resume with a ve checkpoint in a vp run", "noise family ve:", "run's vp:",
                   NULL);
    /* same family, other data transform */
    image_run("U", "unit");
    image_run("C", "centered");
    snprintf(cmd, sizeof cmd, "cp '%s' '%s'", at("U/checkpoint.safetensors"),
             at("C/checkpoint.safetensors"));
    ck_assert_int_eq(system(cmd), 0);
    expect_refused(RUN("train", "--resume", "C", "--steps", "4", "--quiet"),
                   "resume with a unit checkpoint in a centered run",
                   "data transform unit differs from the run's centered", NULL);
    /* the run's own checkpoint resumes */
    ck_assert_msg(RUN("train", "--resume", "U", "--steps", "3", "--quiet") == 0, "%s", err_buf);
}
END_TEST

/* ---- item 9: failed starts leave nothing behind ---------------------------------------- */

/* config.json records the --sde spec as given; a dense C=FILE path with a
 * quote once made it invalid JSON (and the run could not be resumed). */
START_TEST(test_config_quotes_spec)
{
    FILE *f = fopen(at("c\"q.json"), "w");
    ck_assert_ptr_nonnull(f);
    fputs("{\"C\": [[1.0, 0.2], [0.2, 0.5]]}\n", f);
    ck_assert_int_eq(fclose(f), 0);
    points_run("Q", "dense:C=c\"q.json");
    char *text = slurp(at("Q/config.json"), NULL);
    ck_assert_ptr_nonnull(text);
    cJSON *j = cJSON_Parse(text);
    ck_assert_msg(j != NULL, "config.json is not valid JSON: %s", text);
    const cJSON *given = cJSON_GetObjectItemCaseSensitive(j, "sde_given");
    ck_assert(cJSON_IsString(given));
    ck_assert_str_eq(given->valuestring, "dense:C=c\"q.json");
    cJSON_Delete(j);
    free(text);
    ck_assert_msg(RUN("train", "--resume", "Q", "--steps", "5", "--quiet") == 0, "%s", err_buf);
}
END_TEST

START_TEST(test_failed_start_leaves_nothing)
{
    /* out-of-range options are refused before the run directory exists */
    expect_refused(RUN("train", "--data", "pts.csv", "--lr", "1e300", "--out", "D", "--quiet"),
                   "--lr 1e300", "--lr 1e300", NULL);
    ck_assert_msg(!exists(at("D")), "a refused start left D behind");
    expect_refused(RUN("train", "--data", "pts.csv", "--clip", "1e300", "--out", "D", "--quiet"),
                   "--clip 1e300", "--clip", NULL);
    ck_assert(!exists(at("D")));
    /* and D can then be used */
    ck_assert_msg(RUN("train", "--data", "pts.csv", "--steps", "2", "--batch", "16", "--threads",
                      "1", "--out", "D", "--quiet") == 0, "%s", err_buf);
    ck_assert(exists(at("D/checkpoint.safetensors")));

    /* A run that stops before its first checkpoint (a NaN loss at step 2)
     * can be started again in place with --out. */
    ck_assert_int_eq(RUN("train", "--data", "pts.csv", "--steps", "10", "--ckpt-every", "100",
                         "--lr", "1e30", "--warmup", "0", "--batch", "16", "--threads", "1",
                         "--sde", "ve:sigma_max=5", "--out", "N", "--quiet"), 1);
    ck_assert_msg(strstr(err_buf, "no checkpoint was written") && strstr(err_buf, "--out N"),
                  "%s", err_buf);
    ck_assert(!exists(at("N/checkpoint.safetensors")));
    ck_assert_msg(RUN("train", "--data", "pts.csv", "--steps", "2", "--batch", "16", "--threads",
                      "1", "--out", "N", "--quiet") == 0, "%s", err_buf);
    ck_assert_msg(strstr(err_buf, "without a checkpoint"), "%s", err_buf);
    ck_assert(exists(at("N/checkpoint.safetensors")));
    char *cfg = slurp(at("N/config.json"), NULL);
    ck_assert_msg(cfg && strstr(cfg, "\"lr\":\t0.0002"), "config.json of the restart: %s", cfg);
    free(cfg);
    /* a run with a checkpoint is still protected */
    expect_refused(RUN("train", "--data", "pts.csv", "--out", "N", "--quiet"), "--out a run",
                   "already holds a run", NULL);
}
END_TEST

/* ---- item 10: messages ------------------------------------------------------------- */

START_TEST(test_messages)
{
    points_run("R", "ve");
    image_run("IR", "unit");
    /* a directory where the lock file goes: named, with the system's reason */
    ck_assert_int_eq(mkdir(at("L"), 0755), 0);
    ck_assert_int_eq(mkdir(at("L/lock"), 0755), 0);
    expect_refused(RUN("train", "--data", "pts.csv", "--steps", "2", "--out", "L", "--quiet"),
                   "lock is a directory", "L/lock", "Is a directory", NULL);
    /* data of the wrong kind for the model, both ways */
    expect_refused(RUN("loglik", "--ckpt", "R", "--data", "imgs", "--method", "ode", "--quiet"),
                   "images against a points model", "imgs: is an image folder", "2-D points",
                   NULL);
    expect_refused(RUN("loglik", "--ckpt", "IR", "--data", "pts.csv", "--method", "ode", "--quiet"),
                   "points against an image model", "pts.csv", "image model (1x8x8)", NULL);
    /* an output that cannot be written: the system's reason, before any work */
    expect_refused(RUN("sample", "--ckpt", "R", "--sampler", "ode", "--n", "4", "--quiet", "--out",
                       "nodir/s.csv"),
                   "sample --out in a missing directory", "nodir", "No such file or directory",
                   NULL);
    expect_refused(RUN("loglik", "--ckpt", "R", "--data", "pts.csv", "--method", "ode", "--quiet",
                       "--out", "nodir/rows.csv"),
                   "loglik --out in a missing directory", "No such file or directory", NULL);
    /* control characters in a name are escaped, never sent raw */
    expect_refused(RUN("sample", "--ckpt", "bad\x1b[31mname\x07", "--sampler", "ode", "--n", "4",
                       "--quiet", "--out", "s.csv"),
                   "control characters", "bad\\x1b[31mname\\x07", NULL);
    ck_assert_msg(!strchr(err_buf, '\x1b') && !strchr(err_buf, '\x07'), "raw control bytes: %s",
                  err_buf);
    ck_assert_msg(strchr(err_buf, '\n') == err_buf + strlen(err_buf) - 1, "not one line: %s",
                  err_buf);
    /* ... also in the warning about an unreadable image of a data folder */
    write_pngs(at("imgs2"), 4);
    FILE *f = fopen(at("imgs2/bad\x1b]0;title\x07.png"), "wb");
    ck_assert_ptr_nonnull(f);
    fputs("not a png", f);
    fclose(f);
    ck_assert_msg(RUN("train", "--data", "imgs2", "--model", "unet", "--ch", "8", "--mult", "1",
                      "--num-res-blocks", "1", "--steps", "1", "--batch", "2", "--threads", "1",
                      "--out", "W", "--quiet") == 0, "%s", err_buf);
    ck_assert_msg(strstr(err_buf, "bad\\x1b]0;title\\x07.png"), "%s", err_buf);
    ck_assert_msg(!strchr(err_buf, '\x1b') && !strchr(err_buf, '\x07'), "raw control bytes: %s",
                  err_buf);
}
END_TEST

/* A batch that does not fit: refused before the run directory exists, with
 * the figure (the child's address space is capped at 1 GiB so that nothing
 * else on the machine feels it; the step needs ~2.4 GB). */
START_TEST(test_batch_memory_estimate)
{
#if defined(__SANITIZE_ADDRESS__)
    printf("test_batch_memory_estimate: not run under AddressSanitizer (its shadow memory "
           "needs more address space than the cap)\n");
    return;
#endif
    int rc = run_limited(1LL << 30, "train", "--data", "imgs", "--model", "unet", "--ch", "8",
                         "--mult", "1", "--num-res-blocks", "1", "--steps", "2", "--batch",
                         "65536", "--threads", "1", "--out", "B", "--quiet", NULL);
    expect_refused(rc, "--batch 65536 under 1 GiB", "--batch 65536", "needs about", " GB",
                   "smaller --batch", NULL);
    ck_assert_msg(!exists(at("B")), "a refused start left B behind");
}
END_TEST

/* When memory runs out inside a step anyway, the message is the first
 * failure's, with the size, not "not run, an earlier op failed" of a later op
 * (what `train --batch 65536` printed). In a child with a capped address
 * space, a tensor too large for it fails, then an op on the same graph. */
START_TEST(test_out_of_memory_message)
{
#if defined(__SANITIZE_ADDRESS__)
    printf("test_out_of_memory_message: not run under AddressSanitizer (its shadow memory "
           "needs more address space than the cap)\n");
    return;
#endif
    int pipefd[2];
    ck_assert_int_eq(pipe(pipefd), 0);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        close(pipefd[0]);
        struct rlimit rl = {512u << 20, 512u << 20};
        if (setrlimit(RLIMIT_AS, &rl) != 0) _exit(126);
        sd_graph *g = sd_graph_new();
        sd_tensor *big = g ? sd_tensor_new(g, 2, (int[]){1 << 20, 256}) : NULL; /* 1 GiB */
        sd_tensor *s = g ? sd_tensor_zeros(g, 1, (int[]){4}) : NULL;
        sd_tensor *sum = s ? sd_add(g, s, s) : NULL;
        char msg[600];
        int n = snprintf(msg, sizeof msg, "%d %d %d %s", big == NULL, s != NULL, sum == NULL,
                         sd_error_message());
        if (write(pipefd[1], msg, (size_t)n) != n) _exit(125);
        _exit(0);
    }
    close(pipefd[1]);
    char got[700] = "";
    ssize_t n, off = 0;
    while ((n = read(pipefd[0], got + off, sizeof got - 1 - (size_t)off)) > 0) off += n;
    got[off] = '\0';
    close(pipefd[0]);
    int status;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %d", status);
    ck_assert_msg(strncmp(got, "1 1 1 ", 6) == 0, "big failed, small made, add failed: %s", got);
    ck_assert_msg(strstr(got, "out of memory") && strstr(got, "MB") && !strstr(got, "not run"),
                  "message: %s", got);
}
END_TEST

int main(void)
{
    if (access(scorediff_bin(), X_OK) != 0) {
        printf("test_cli_safety: %s is not an executable; skipped\n", scorediff_bin());
        return 77;
    }
    Suite *su = suite_create("cli_safety");
    TCase *tc = tcase_create("cli_safety");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 0);
    tcase_add_test(tc, test_outputs_never_replace_inputs);
    tcase_add_test(tc, test_tolerance_floor);
    tcase_add_test(tc, test_resume_foreign_checkpoint);
    tcase_add_test(tc, test_failed_start_leaves_nothing);
    tcase_add_test(tc, test_config_quotes_spec);
    tcase_add_test(tc, test_messages);
    tcase_add_test(tc, test_batch_memory_estimate);
    tcase_add_test(tc, test_out_of_memory_message);
    suite_add_tcase(su, tc);
    SRunner *sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed != 0;
}
