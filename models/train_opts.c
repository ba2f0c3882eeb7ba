/* train_opts.c - the options of a training run: their table (flags, config.json
 * keys, ranges, help), defaults, config.json, and --resume (train_run.h). */
#include "sd/train_run.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sd/file.h"
#include "sd/sde.h"

#define O sd_train_opts
#define FIX SD_OPTF_FIXED
#define BIG (INT64_MAX / 2)

/* The order of the keyed entries is the order of config.json's keys. */
const sd_option sd_train_options[] = {
    SD_OPT_HEAD("Data"),
    SD_OPT_S("--data", "data", O, data, FIX | SD_OPTF_PATH, "PATH",
             "image folder (PNG, JPEG, BMP, PNM; recursive) or FILE.csv\n"
             "of points; unreadable images are skipped with a warning"),
    SD_OPT_I("--channels", "channels", O, channels, 1, 3, FIX, "1|3", "image channels (default 1)"),
    SD_OPT_I("--size", "size", O, size, 1, 16384, FIX | SD_OPTF_ZERO, "S",
             "area-resize and centre-crop images to SxS (default: keep\n"
             "the native size, which must then be the same for all)"),
    {.flag = "--flip", .key = "flip", .type = SD_OPT_FLAG, .offset = offsetof(O, flip),
     .size = sizeof(int), .imin = 1, .flags = FIX, .help = "random left-right flips"},
    SD_OPT_S("--data-transform", "data_transform", O, transform, FIX | SD_OPTF_AUTO, "T",
             "images: unit ([0,1]) or centered ([-1,1]); default unit for\n"
             "ncsn/ve and centered for vp/subvp (score_sde's choice)"),
    SD_OPT_HEAD("Model"),
    SD_OPT_S("--model", "model", O, model, FIX | SD_OPTF_AUTO, "NAME",
             "unet-28, unet-32, unet or mlp (default: mlp for CSV,\n"
             "unet-28 for 1x28x28, unet-32 for 3x32x32, else unet)"),
    SD_OPT_I("--ch", "ch", O, ch, 1, 4096, FIX, "N",
             "base width of --model unet (default 32); its channels and\n"
             "resolution come from the data"),
    {.flag = "--mult", .key = "mult", .type = SD_OPT_LIST, .offset = offsetof(O, mult),
     .size = sizeof(((O *)0)->mult), .imin = 1, .imax = 16, .flags = FIX,
     .aux = offsetof(O, n_mult), .arg = "1,2,2",
     .help = "width multipliers of --model unet's levels (default 1,2,2)"},
    SD_OPT_I("--num-res-blocks", "num_res_blocks", O, num_res_blocks, 1, SD_UNET_MAX_RES_BLOCKS,
             FIX, "N", "residual blocks per level of --model unet (default 2)"),
    SD_OPT_HEAD("Noise family and objective"),
    SD_OPT_S("--sde", "sde", O, sde, FIX, "SPEC",
             "ncsn|ve|vp|subvp|dct|dense|state[:key=value,...] (default\n"
             "ve). For ncsn and ve, sigma_max defaults to the largest\n"
             "pairwise distance in the data and ncsn's L to NCSNv2's\n"
             "rule (Song & Ermon 2020). Matrix-valued families (VE\n"
             "schedule: sigma_min 0.01, sigma_max 50):\n"
             "dct:blur_max=B  blurring diffusion, per-frequency damping\n"
             "  and noise in the DCT basis (B pixels of blur at t = 1,\n"
             "  default 2; shape=CxHxW taken from the data)\n"
             "dense:C=FILE.json  noise covariance sigma^2 C, FILE\n"
             "  {\"C\": [[..],..]} (points, D <= 16; C is stored in\n"
             "  the checkpoint)\n"
             "state  x = asinh(y) of a ve diffusion y: G(x, t) depends\n"
             "  on x (points)"),
    {.flag = "--objective", .key = "objective", .type = SD_OPT_CHOICE,
     .offset = offsetof(O, objective), .size = sizeof(sd_objective_kind), .flags = FIX,
     .choices = "dsm|ssm", .arg = "dsm|ssm",
     .help = "denoising or sliced score matching (default dsm)"},
    {.flag = "--weighting", .key = "weighting", .type = SD_OPT_CHOICE,
     .offset = offsetof(O, weighting), .size = sizeof(sd_weighting), .flags = FIX,
     .choices = "variance|likelihood", .arg = "W", .help = "variance or likelihood (default variance)"},
    SD_OPT_HEAD("Optimisation (Adam)"),
    /* finite as a float: the optimizer works in float */
    SD_OPT_D("--lr", "lr", O, lr, 0.0, FLT_MAX, FIX, "X", "learning rate (default 2e-4)"),
    SD_OPT_I("--warmup", "warmup", O, warmup, 0, BIG, FIX, "N",
             "linear warm-up steps (default min(5000, steps/10))"),
    {.flag = "--cosine", .key = "cosine", .type = SD_OPT_FLAG, .offset = offsetof(O, cosine),
     .size = sizeof(int), .imin = 1, .flags = FIX, .help = "cosine decay of the rate after warm-up"},
    SD_OPT_D("--clip", "clip", O, clip, 0.0, FLT_MAX, FIX, "X",
             "gradient-norm clipping (default 1; 0 = off)"),
    SD_OPT_D("--ema", "ema", O, ema, 0.0, 1.0, FIX, "X",
             "EMA decay (default 0.999; warmed up as\n"
             "min(X, (1+step)/(10+step)))"),
    SD_OPT_I("--batch", "batch", O, batch, 1, SD_TRAIN_MAX_BATCH, FIX | SD_OPTF_ZERO, "B",
             "batch size (default 128 images, 256 points)"),
    SD_OPT_I("--steps", "steps", O, steps, 1, BIG, 0, "N", "training steps (default 10000)"),
    SD_OPT_HEAD("Run"),
    {.flag = "--out", .type = SD_OPT_STR, .offset = offsetof(O, out), .size = sizeof(((O *)0)->out),
     .arg = "RUN_DIR",
     .help = "config.json, checkpoint.safetensors and metrics.csv go here\n"
             "(not the data, nor inside an image folder); a directory\n"
             "with a run that never wrote a checkpoint is started again;\n"
             "every option is checked before the directory is made"},
    {.flag = "--resume", .type = SD_OPT_STR, .offset = offsetof(O, out),
     .size = sizeof(((O *)0)->out), .flags = SD_OPTF_MARK, .aux = offsetof(O, resume),
     .arg = "RUN_DIR",
     .help = "continue a run; options fixed for a run may be repeated but\n"
             "not changed; --steps, --ckpt-every, --log-every,\n"
             "--sample-every and --threads may change"},
    SD_OPT_I("--ckpt-every", "ckpt_every", O, ckpt_every, 1, BIG, 0, "N",
             "checkpoint interval (default 1000)"),
    SD_OPT_I("--log-every", "log_every", O, log_every, 1, BIG, 0, "N",
             "metrics.csv row interval (default 1)"),
    SD_OPT_I("--sample-every", "sample_every", O, sample_every, 0, BIG, 0, "N",
             "every N steps, RUN_DIR/samples/step_NNNNNN.png: a grid of\n"
             "16 samples of the EMA model (100 reverse-diffusion steps,\n"
             "same noise each time; images only; 0 = off, the default)"),
    SD_OPT_I("--threads", "threads", O, threads, 1, 1024, SD_OPTF_ZERO, "N",
             "worker threads (default OMP_NUM_THREADS or all cores; a\n"
             "resumed run reuses the stored count, since results are\n"
             "bit-identical only for the same count)"),
    {.flag = "--seed", .key = "seed", .type = SD_OPT_U64, .offset = offsetof(O, seed),
     .size = sizeof(uint64_t), .flags = FIX, .arg = "S", .help = "random seed (default 0)"},
    {.flag = "--dry-run", .type = SD_OPT_FLAG, .offset = offsetof(O, dry_run), .size = sizeof(bool),
     .imin = 1,
     .help = "print the data summary, the model's parameter count and\n"
             "NCSNv2's sigma_max, L and Langevin step size, then exit"},
    SD_OPT_F("--quiet", O, quiet, 1, "no progress display"),
    SD_OPT_F("--no-report", O, no_report, 1,
             "do not refresh RUN_DIR/report.html at each checkpoint\n"
             "(scorediff report RUN_DIR writes it on demand)"),
    {.flag = "--max-memory", .type = SD_OPT_BYTES, .offset = offsetof(O, max_memory),
     .size = sizeof(uint64_t), .arg = "SIZE",
     .help = "refuse (exit 1) a data set, batch or model whose memory,\n"
             "estimated before allocating, exceeds SIZE (e.g. 4G, 512M);\n"
             "the machine's available memory is always a limit"},
};
const size_t sd_train_n_options = sizeof sd_train_options / sizeof *sd_train_options;

#undef O

void sd_train_opts_default(sd_train_opts *o)
{
    memset(o, 0, sizeof *o);
    snprintf(o->model, sizeof o->model, "auto");
    o->ch = 32;
    o->n_mult = 3;
    o->mult[0] = 1;
    o->mult[1] = o->mult[2] = 2;
    o->num_res_blocks = 2;
    o->channels = 1;
    snprintf(o->sde, sizeof o->sde, "ve");
    snprintf(o->transform, sizeof o->transform, "auto");
    o->objective = SD_OBJECTIVE_DSM;
    o->weighting = SD_WEIGHT_VARIANCE;
    o->lr = 2e-4;
    o->clip = 1.0;
    o->ema = 0.999;
    o->warmup = -1;
    o->steps = 10000;
    o->ckpt_every = 1000;
    o->log_every = 1;
}

bool sd_train_given(const sd_train_opts *o, size_t offset)
{
    int i = sd_option_index(sd_train_options, sd_train_n_options, offset);
    return i >= 0 && i < 64 && (o->given >> i & 1u);
}

sd_status sd_train_opts_check(const sd_train_opts *o)
{
    char msg[256];
    for (size_t i = 0; i < sd_train_n_options; i++) {
        const sd_option *op = &sd_train_options[i];
        /* warmup -1: derived from --steps */
        if (op->offset == offsetof(sd_train_opts, warmup) && o->warmup == -1) continue;
        if (!sd_option_in_range(op, o, msg, sizeof msg)) return sd_error(SD_ERR_INVALID, "%s", msg);
    }
    return SD_OK;
}

/* ---- config.json ---------------------------------------------------------- */

/* config.json is a few kB; a larger one is refused, never cut. */
#define CONFIG_MAX_BYTES ((size_t)1 << 20)

static void set_item(cJSON *j, const char *key, cJSON *item, bool *ok)
{
    cJSON_DeleteItemFromObjectCaseSensitive(j, key);
    if (!item || !cJSON_AddItemToObject(j, key, item)) {
        cJSON_Delete(item);
        *ok = false;
    }
}

sd_status sd_run_config_write(const char *dir, const sd_train_opts *o, const char *extra_json)
{
    char path[SD_TRAIN_PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/config.json", dir);
    /* Keys this function does not own (the first run's NCSNv2 report) survive
     * a rewrite on --resume. */
    cJSON *j = NULL;
    char *buf;
    size_t n;
    if (sd_file_read_all(path, CONFIG_MAX_BYTES, &buf, &n) == SD_OK) {
        j = cJSON_Parse(buf);
        sd_free(buf);
    } else if (access(path, F_OK) == 0) {
        return SD_ERR_IO; /* there but unreadable (too large, a FIFO): keep it */
    }
    if (!j) j = cJSON_CreateObject();
    if (!j) return sd_error(SD_ERR_NOMEM, "config.json: out of memory");
    bool ok = true;
    if (extra_json) {
        size_t len = strlen(extra_json) + 3;
        char *wrapped = sd_malloc(len);
        cJSON *x = NULL;
        if (wrapped) {
            snprintf(wrapped, len, "{%s}", extra_json);
            x = cJSON_Parse(wrapped);
        }
        sd_free(wrapped);
        if (!x) ok = false;
        while (x && x->child) {
            cJSON *c = cJSON_DetachItemViaPointer(x, x->child);
            set_item(j, c->string, c, &ok);
        }
        cJSON_Delete(x);
    }
    set_item(j, "format", cJSON_CreateString("scorediff-run"), &ok);
    set_item(j, "version", cJSON_CreateNumber(1), &ok);
    for (size_t i = 0; i < sd_train_n_options; i++)
        if (sd_train_options[i].key)
            set_item(j, sd_train_options[i].key, sd_option_to_json(&sd_train_options[i], o), &ok);
    char *text = ok ? cJSON_Print(j) : NULL;
    cJSON_Delete(j);
    if (!text) return sd_error(SD_ERR_NOMEM, "%s: cannot format the settings", path);
    sd_status st = sd_file_write_atomic(path, text, strlen(text));
    cJSON_free(text);
    return st;
}

sd_status sd_run_config_read(const char *dir, sd_train_opts *o)
{
    char path[SD_TRAIN_PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/config.json", dir);
    char *buf;
    size_t n;
    sd_status rs = sd_file_read_all(path, CONFIG_MAX_BYTES, &buf, &n);
    if (rs == SD_ERR_IO && access(path, F_OK) != 0)
        return sd_error(SD_ERR_IO, "%s: cannot open: %s (is %s a run directory?)", path,
                        strerror(ENOENT), dir);
    if (rs != SD_OK) return rs;
    cJSON *j = cJSON_Parse(buf);
    sd_free(buf);
    if (!j) return sd_error(SD_ERR_FORMAT, "%s: not valid JSON", path);
    const char *bad = NULL;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, "format");
    if (!cJSON_IsString(v) || strcmp(v->valuestring, "scorediff-run") != 0) bad = "format";
    for (size_t i = 0; i < sd_train_n_options && !bad; i++) {
        const sd_option *op = &sd_train_options[i];
        if (op->key && !sd_option_from_json(op, cJSON_GetObjectItemCaseSensitive(j, op->key), o))
            bad = op->key;
    }
    cJSON_Delete(j);
    if (bad) return sd_error(SD_ERR_FORMAT, "%s: missing or bad \"%s\"", path, bad);
    return SD_OK;
}

/* ---- --resume ---------------------------------------------------------------- */

/* A given --sde conflicts with the run's resolved one if the family differs
 * or a key it spells out has another value (keys it leaves out were
 * defaulted or derived from the data). */
static bool sde_conflicts(const char *given, const char *stored)
{
    sd_sde g, s;
    if (sd_sde_parse(given, &g) != SD_OK || sd_sde_parse(stored, &s) != SD_OK) return true;
    if (strcmp(sd_sde_name(&g), sd_sde_name(&s)) != 0) return true;
    const struct { const char *key; double a, b; } k[] = {
        {"sigma_min=", g.sigma_min, s.sigma_min}, {"sigma_max=", g.sigma_max, s.sigma_max},
        {"L=", g.levels, s.levels}, {"beta_min=", g.beta_min, s.beta_min},
        {"beta_max=", g.beta_max, s.beta_max}};
    for (size_t i = 0; i < sizeof k / sizeof *k; i++)
        if (strstr(given, k[i].key) && fabs(k[i].a - k[i].b) > 1e-8 * fabs(k[i].b)) return true;
    return false;
}

/* The value of one option as text, for the conflict check and its message. */
static void opt_text(const sd_option *op, const sd_train_opts *o, char *b, size_t n)
{
    if ((op->flags & SD_OPTF_PATH) && op->type == SD_OPT_STR) {
        const char *p = (const char *)o + op->offset;
        if (realpath(p, b) && strlen(b) < n) return;
    }
    sd_option_format(op, o, b, n);
}

static void log_line(const sd_train_hooks *h, const char *line)
{
    if (h && h->log) h->log(h->log_ctx, line);
    else fprintf(stderr, "train: %s\n", line);
}

sd_status sd_train_resume(sd_train_opts *o, const sd_train_hooks *hooks)
{
    sd_train_opts s;
    sd_train_opts_default(&s);
    sd_status st = sd_run_config_read(o->out, &s);
    if (st != SD_OK) return st;
    /* fixed options: a given one must agree with the run's */
    for (size_t i = 0; i < sd_train_n_options && i < 64; i++) {
        const sd_option *op = &sd_train_options[i];
        if (!(o->given >> i & 1u) || !op->key || !(op->flags & SD_OPTF_FIXED)) continue;
        char a[PATH_MAX + 1], b[PATH_MAX + 1];
        opt_text(op, o, a, sizeof a);
        opt_text(op, &s, b, sizeof b);
        bool differ = strcmp(a, b) != 0;
        if (op->offset == offsetof(sd_train_opts, sde)) differ = sde_conflicts(o->sde, s.sde);
        if ((op->flags & SD_OPTF_AUTO) && !strcmp(a, "auto")) differ = false;
        if (differ)
            return sd_error(SD_ERR_INVALID, "--resume %s: %s %s conflicts with the run's %s "
                            "(%s/config.json); this option cannot change within a run", o->out,
                            op->flag, a, b, o->out);
    }
    /* the others: a given value wins */
    for (size_t i = 0; i < sd_train_n_options && i < 64; i++) {
        const sd_option *op = &sd_train_options[i];
        if (!(o->given >> i & 1u) || !op->key || (op->flags & SD_OPTF_FIXED)) continue;
        if (op->offset == offsetof(sd_train_opts, threads) && o->threads != s.threads) {
            char line[256];
            snprintf(line, sizeof line, "note: the run used %d threads, this part uses %d; "
                     "its losses may differ in the last bits from an uninterrupted run",
                     s.threads, o->threads);
            log_line(hooks, line);
        }
        memcpy((char *)&s + op->offset, (const char *)o + op->offset, op->size);
    }
    /* options not stored with the run (--out, --dry-run, --quiet, --max-memory)
     * are this invocation's */
    for (size_t i = 0; i < sd_train_n_options; i++) {
        const sd_option *op = &sd_train_options[i];
        if (op->type != SD_OPT_TEXT && !op->key)
            memcpy((char *)&s + op->offset, (const char *)o + op->offset, op->size);
    }
    s.given = o->given;
    s.resume = true;
    *o = s;
    return SD_OK;
}
