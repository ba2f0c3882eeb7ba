/* cmd_train.c - `scorediff train`: options, config.json, --resume, signals.
 * The run itself is tools/train_loop.c. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "sd/file.h"
#include "image_grid.h"
#include "sampler.h"
#include "sd/membudget.h"
#include "train_loop.h"

#define CMD "train"

static void usage(FILE *f)
{
    fprintf(f,
"usage: scorediff train --data PATH --out RUN_DIR [options]\n"
"       scorediff train --resume RUN_DIR [--steps N] [--ckpt-every N] ...\n"
"       scorediff train --data PATH --dry-run [options]\n"
"\n"
"Data\n"
"  --data PATH            image folder (PNG, JPEG, BMP, PNM; recursive) or FILE.csv\n"
"                         of points; unreadable images are skipped with a warning\n"
"  --channels 1|3         image channels (default 1)\n"
"  --size S               area-resize and centre-crop images to SxS (default: keep\n"
"                         the native size, which must then be the same for all)\n"
"  --flip                 random left-right flips\n"
"  --data-transform T     images: unit ([0,1]) or centered ([-1,1]); default unit for\n"
"                         ncsn/ve and centered for vp/subvp (score_sde's choice)\n"
"Model\n"
"  --model NAME           unet-28, unet-32, unet or mlp (default: mlp for CSV,\n"
"                         unet-28 for 1x28x28, unet-32 for 3x32x32, else unet)\n"
"  --ch N, --mult 1,2,2, --num-res-blocks N\n"
"                         widths of --model unet (default 32, 1,2,2, 2); its\n"
"                         channels and resolution come from the data\n"
"Noise family and objective\n"
"  --sde SPEC             ncsn|ve|vp|subvp|dct|dense|state[:key=value,...] (default\n"
"                         ve). For ncsn and ve, sigma_max defaults to the largest\n"
"                         pairwise distance in the data and ncsn's L to NCSNv2's\n"
"                         rule (Song & Ermon 2020). Matrix-valued families (VE\n"
"                         schedule: sigma_min 0.01, sigma_max 50):\n"
"                         dct:blur_max=B  blurring diffusion, per-frequency damping\n"
"                           and noise in the DCT basis (B pixels of blur at t = 1,\n"
"                           default 2; shape=CxHxW taken from the data)\n"
"                         dense:C=FILE.json  noise covariance sigma^2 C, FILE\n"
"                           {\"C\": [[..],..]} (points, D <= 16; C is stored in\n"
"                           the checkpoint)\n"
"                         state  x = asinh(y) of a ve diffusion y: G(x, t) depends\n"
"                           on x (points)\n"
"  --objective dsm|ssm    denoising or sliced score matching (default dsm)\n"
"  --weighting W          variance or likelihood (default variance)\n"
"Optimisation (Adam)\n"
"  --lr X (2e-4)  --warmup N (min(5000, steps/10))  --cosine  --clip X (1; 0 = off)\n"
"  --ema X (0.999; warmed up as min(X, (1+step)/(10+step)))\n  --batch B (128 images, 256 points)  --steps N (10000)  --seed S (0)\n");
    /* two strings: C11 compilers need only take 4095 characters in one */
    fprintf(f,
"Run\n"
"  --out RUN_DIR          config.json, checkpoint.safetensors and metrics.csv go here\n"
"                         (not the data, nor inside an image folder); a directory\n"
"                         with a run that never wrote a checkpoint is started again;\n"
"                         every option is checked before the directory is made\n"
"  --resume RUN_DIR       continue a run; options fixed for a run may be repeated but\n"
"                         not changed; --steps, --ckpt-every, --log-every,\n"
"                         --sample-every and --threads may change\n"
"  --ckpt-every N (1000)  --log-every N (metrics.csv row interval, 1)\n"
"  --sample-every N       every N steps, RUN_DIR/samples/step_NNNNNN.png: a grid of\n"
"                         16 samples of the EMA model (100 reverse-diffusion steps,\n"
"                         same noise each time; images only; 0 = off, the default)\n"
"  --threads N            worker threads (default OMP_NUM_THREADS or all cores; a\n"
"                         resumed run reuses the stored count, since results are\n"
"                         bit-identical only for the same count)\n"
"  --dry-run              print the data summary, the model's parameter count and\n"
"                         NCSNv2's sigma_max, L and Langevin step size, then exit\n"
"  --quiet                no progress display\n");
    fprintf(f, /* two strings: C11 compilers need support only 4095 characters */
"  --max-memory SIZE      refuse (exit 1) a data set, batch or model whose memory,\n"
"                         estimated before allocating, exceeds SIZE (e.g. 4G, 512M);\n"
"                         the machine's available memory is always a limit\n"
"\n"
"SIGINT or SIGTERM finishes the current step, writes a checkpoint and exits with\n"
"128 + the signal number (130, 143); a second one kills at once (the checkpoint\n"
"file is replaced atomically, so the previous one survives). A NaN or Inf loss\n"
"stops the run with exit code 1, naming the step, before anything is written.\n"
"Exit codes: 0 done, 1 runtime failure, 2 bad options or data, 130/143 interrupted.\n");
}

/* ---- option parsing ------------------------------------------------------- */

static bool copy_str(char *dst, size_t cap, const char *src, const char *opt)
{
    if (strlen(src) >= cap) {
        cli_fail(CMD, 2, "%s: value too long", opt);
        return false;
    }
    memcpy(dst, src, strlen(src) + 1);
    return true;
}

static bool parse_mult(const char *s, int *mult, int *n)
{
    *n = 0;
    const char *p = s;
    while (*p) {
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 1 || v > 16 || *n >= SD_UNET_MAX_LEVELS) return false;
        mult[(*n)++] = (int)v;
        p = end;
        if (*p == ',') p++;
        else if (*p) return false;
    }
    return *n > 0;
}

static bool parse_seed(const char *v, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long s = strtoull(v, &end, 10);
    if (end == v || *end || errno || v[0] == '-') return false;
    *out = s;
    return true;
}

int sd_train_parse_args(int argc, char **argv, sd_train_opts *o, bool *help)
{
    sd_train_opts_default(o);
    sd_mem_set_budget(0); /* --max-memory applies to this command only */
    *help = false;
    bool err = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        long long n;
        double d;
        /* cli_opt and cli_parse_* print their own messages */
#define OPT(name) cli_opt(argc, argv, &i, name, &v, &err, CMD)
#define INT(name, bit, lo, hi, field)                                           \
    if (OPT(name)) {                                                           \
        if (err || !cli_parse_int(CMD, name, v, lo, hi, &n)) return 2;         \
        o->field = n;                                                          \
        o->given |= bit;                                                       \
        continue;                                                              \
    }
#define DBL(name, bit, lo, hi, field)                                           \
    if (OPT(name)) {                                                           \
        if (err || !cli_parse_double(CMD, name, v, lo, hi, &d)) return 2;      \
        o->field = d;                                                          \
        o->given |= bit;                                                       \
        continue;                                                              \
    }
#define STR(name, bit, field)                                                   \
    if (OPT(name)) {                                                           \
        if (err || !copy_str(o->field, sizeof o->field, v, name)) return 2;    \
        o->given |= bit;                                                       \
        continue;                                                              \
    }
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            *help = true;
            return 0;
        }
        if (!strcmp(a, "--flip")) { o->flip = 1; o->given |= SD_TOPT_FLIP; continue; }
        if (!strcmp(a, "--cosine")) { o->cosine = 1; o->given |= SD_TOPT_COSINE; continue; }
        if (!strcmp(a, "--dry-run")) { o->dry_run = true; continue; }
        if (!strcmp(a, "--quiet")) { o->quiet = true; continue; }
        STR("--data", SD_TOPT_DATA, data)
        STR("--out", SD_TOPT_OUT, out)
        STR("--model", SD_TOPT_MODEL, model)
        STR("--sde", SD_TOPT_SDE, sde)
        STR("--data-transform", SD_TOPT_TRANSFORM, transform)
        INT("--ch", SD_TOPT_CH, 1, 4096, ch)
        INT("--num-res-blocks", SD_TOPT_NRB, 1, SD_UNET_MAX_RES_BLOCKS, num_res_blocks)
        INT("--channels", SD_TOPT_CHANNELS, 1, 3, channels)
        INT("--size", SD_TOPT_SIZE, 1, 16384, size)
        INT("--warmup", SD_TOPT_WARMUP, 0, INT64_MAX / 2, warmup)
        INT("--batch", SD_TOPT_BATCH, 1, SD_TRAIN_MAX_BATCH, batch)
        INT("--steps", SD_TOPT_STEPS, 1, INT64_MAX / 2, steps)
        INT("--ckpt-every", SD_TOPT_CKPT, 1, INT64_MAX / 2, ckpt_every)
        INT("--log-every", SD_TOPT_LOG, 1, INT64_MAX / 2, log_every)
        INT("--sample-every", SD_TOPT_SAMPLE, 0, INT64_MAX / 2, sample_every)
        INT("--threads", SD_TOPT_THREADS, 1, 1024, threads)
        DBL("--lr", SD_TOPT_LR, 0.0, FLT_MAX, lr) /* finite as a float */
        DBL("--clip", SD_TOPT_CLIP, 0.0, FLT_MAX, clip)
        DBL("--ema", SD_TOPT_EMA, 0.0, 1.0, ema)
        if (OPT("--seed")) {
            if (err) return 2;
            if (!parse_seed(v, &o->seed))
                return cli_fail(CMD, 2, "--seed %s: expected an unsigned integer", v);
            o->given |= SD_TOPT_SEED;
            continue;
        }
        if (OPT("--mult")) {
            if (err) return 2;
            if (!parse_mult(v, o->mult, &o->n_mult))
                return cli_fail(CMD, 2, "--mult %s: expected level multipliers, e.g. 1,2,2", v);
            o->given |= SD_TOPT_MULT;
            continue;
        }
        if (OPT("--objective")) {
            if (err) return 2;
            if (!strcmp(v, "dsm")) o->objective = SD_OBJECTIVE_DSM;
            else if (!strcmp(v, "ssm")) o->objective = SD_OBJECTIVE_SSM;
            else return cli_fail(CMD, 2, "--objective %s: expected dsm or ssm", v);
            o->given |= SD_TOPT_OBJECTIVE;
            continue;
        }
        if (OPT("--weighting")) {
            if (err) return 2;
            if (!strcmp(v, "variance")) o->weighting = SD_WEIGHT_VARIANCE;
            else if (!strcmp(v, "likelihood")) o->weighting = SD_WEIGHT_LIKELIHOOD;
            else return cli_fail(CMD, 2, "--weighting %s: expected variance or likelihood", v);
            o->given |= SD_TOPT_WEIGHTING;
            continue;
        }
        if (OPT("--max-memory")) { /* process-wide budget: sd/membudget.h */
            uint64_t bytes;
            if (err || sd_mem_parse_size(v, &bytes))
                return cli_fail(CMD, 2, "--max-memory %s: expected a size, e.g. 4G or 512M", v);
            sd_mem_set_budget(bytes);
            continue;
        }
        if (OPT("--resume")) {
            if (err || !copy_str(o->out, sizeof o->out, v, "--resume")) return 2;
            o->resume = true;
            continue;
        }
#undef OPT
#undef INT
#undef DBL
#undef STR
        return cli_fail(CMD, 2, "unknown option '%s' (see scorediff train --help)", a);
    }
    if (!o->resume && !o->data[0]) return cli_fail(CMD, 2, "--data PATH is required");
    if (!o->resume && !o->dry_run && !o->out[0])
        return cli_fail(CMD, 2, "--out RUN_DIR is required (or --resume RUN_DIR, or --dry-run)");
    if ((o->given & SD_TOPT_OUT) && o->resume)
        return cli_fail(CMD, 2, "--out and --resume both name the run directory; give one");
    return 0;
}

/* ---- config.json ---------------------------------------------------------- */

static const char *objective_str(sd_objective_kind k) { return k == SD_OBJECTIVE_SSM ? "ssm" : "dsm"; }
static const char *weighting_str(sd_weighting w)
{
    return w == SD_WEIGHT_LIKELIHOOD ? "likelihood" : "variance";
}

static void set_item(cJSON *j, const char *key, cJSON *item, bool *ok)
{
    cJSON_DeleteItemFromObjectCaseSensitive(j, key);
    if (!item || !cJSON_AddItemToObject(j, key, item)) {
        cJSON_Delete(item);
        *ok = false;
    }
}

/* config.json is a few kB; a larger one is refused, never cut. */
#define CONFIG_MAX_BYTES ((size_t)1 << 20)

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
    char mult[64] = "", seed[32];
    for (int i = 0, off = 0; i < o->n_mult; i++)
        off += snprintf(mult + off, sizeof mult - (size_t)off, i ? ",%d" : "%d", o->mult[i]);
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)o->seed);
    set_item(j, "format", cJSON_CreateString("scorediff-run"), &ok);
    set_item(j, "version", cJSON_CreateNumber(1), &ok);
    set_item(j, "data", cJSON_CreateString(o->data), &ok);
    set_item(j, "channels", cJSON_CreateNumber(o->channels), &ok);
    set_item(j, "size", cJSON_CreateNumber(o->size), &ok);
    set_item(j, "flip", cJSON_CreateBool(o->flip), &ok);
    set_item(j, "data_transform", cJSON_CreateString(o->transform), &ok);
    set_item(j, "model", cJSON_CreateString(o->model), &ok);
    set_item(j, "ch", cJSON_CreateNumber(o->ch), &ok);
    set_item(j, "mult", cJSON_CreateString(mult), &ok);
    set_item(j, "num_res_blocks", cJSON_CreateNumber(o->num_res_blocks), &ok);
    set_item(j, "sde", cJSON_CreateString(o->sde), &ok);
    set_item(j, "objective", cJSON_CreateString(objective_str(o->objective)), &ok);
    set_item(j, "weighting", cJSON_CreateString(weighting_str(o->weighting)), &ok);
    set_item(j, "lr", cJSON_CreateNumber(o->lr), &ok);
    set_item(j, "warmup", cJSON_CreateNumber((double)o->warmup), &ok);
    set_item(j, "cosine", cJSON_CreateBool(o->cosine), &ok);
    set_item(j, "clip", cJSON_CreateNumber(o->clip), &ok);
    set_item(j, "ema", cJSON_CreateNumber(o->ema), &ok);
    set_item(j, "batch", cJSON_CreateNumber((double)o->batch), &ok);
    set_item(j, "steps", cJSON_CreateNumber((double)o->steps), &ok);
    set_item(j, "ckpt_every", cJSON_CreateNumber((double)o->ckpt_every), &ok);
    set_item(j, "log_every", cJSON_CreateNumber((double)o->log_every), &ok);
    set_item(j, "sample_every", cJSON_CreateNumber((double)o->sample_every), &ok);
    set_item(j, "threads", cJSON_CreateNumber(o->threads > 0 ? o->threads : sd_threads_get()), &ok);
    set_item(j, "seed", cJSON_CreateString(seed), &ok);
    char *text = ok ? cJSON_Print(j) : NULL;
    cJSON_Delete(j);
    if (!text) return sd_error(SD_ERR_NOMEM, "%s: cannot format the settings", path);
    sd_status st = sd_file_write_atomic(path, text, strlen(text));
    cJSON_free(text);
    return st;
}

static const cJSON *get(const cJSON *j, const char *key, int type)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
    return v && (v->type & 0xFF) == type ? v : NULL;
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
    const cJSON *v;
#define S(key, field)                                                                          \
    if (!bad) {                                                                                \
        if ((v = get(j, key, cJSON_String)) && strlen(v->valuestring) < sizeof o->field)       \
            memcpy(o->field, v->valuestring, strlen(v->valuestring) + 1);                      \
        else bad = key;                                                                        \
    }
#define N(key, field, lo, hi)                                                                  \
    if (!bad) {                                                                                \
        if ((v = get(j, key, cJSON_Number)) && v->valuedouble >= (lo) && v->valuedouble <= (hi)) \
            o->field = v->valuedouble;                                                         \
        else bad = key;                                                                        \
    }
#define B(key, field)                                                                          \
    if (!bad) {                                                                                \
        if ((v = cJSON_GetObjectItemCaseSensitive(j, key)) && cJSON_IsBool(v))                 \
            o->field = cJSON_IsTrue(v);                                                        \
        else bad = key;                                                                        \
    }
    v = get(j, "format", cJSON_String);
    if (!v || strcmp(v->valuestring, "scorediff-run") != 0) bad = "format";
    char mult[64] = "", seed[32] = "", obj[16] = "", wt[16] = "";
    S("data", data) S("data_transform", transform) S("model", model) S("sde", sde)
    N("channels", channels, 1, 3) N("size", size, 0, 16384) B("flip", flip)
    N("ch", ch, 1, 4096) N("num_res_blocks", num_res_blocks, 1, SD_UNET_MAX_RES_BLOCKS)
    N("lr", lr, 0, FLT_MAX) N("warmup", warmup, 0, 9e15) B("cosine", cosine)
    N("clip", clip, 0, FLT_MAX) N("ema", ema, 0, 1) N("batch", batch, 1, SD_TRAIN_MAX_BATCH)
    N("steps", steps, 1, 9e15) N("ckpt_every", ckpt_every, 1, 9e15)
    N("log_every", log_every, 1, 9e15) N("sample_every", sample_every, 0, 9e15)
    N("threads", threads, 1, 1024)
#undef S
#undef N
#undef B
    const char *strs[4] = {"mult", "seed", "objective", "weighting"};
    char *dst[4] = {mult, seed, obj, wt};
    const size_t cap[4] = {sizeof mult, sizeof seed, sizeof obj, sizeof wt};
    for (int k = 0; k < 4 && !bad; k++) {
        v = get(j, strs[k], cJSON_String);
        if (v && strlen(v->valuestring) < cap[k])
            memcpy(dst[k], v->valuestring, strlen(v->valuestring) + 1);
        else bad = strs[k];
    }
    cJSON_Delete(j);
    char *end;
    if (!bad && !parse_mult(mult, o->mult, &o->n_mult)) bad = "mult";
    if (!bad) {
        errno = 0;
        o->seed = strtoull(seed, &end, 10);
        if (!seed[0] || *end || errno) bad = "seed";
    }
    if (!bad) {
        if (!strcmp(obj, "dsm") || !strcmp(obj, "ssm"))
            o->objective = obj[0] == 's' ? SD_OBJECTIVE_SSM : SD_OBJECTIVE_DSM;
        else bad = "objective";
    }
    if (!bad) {
        if (!strcmp(wt, "variance") || !strcmp(wt, "likelihood"))
            o->weighting = wt[0] == 'l' ? SD_WEIGHT_LIKELIHOOD : SD_WEIGHT_VARIANCE;
        else bad = "weighting";
    }
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

static const struct { uint32_t bit; const char *name; } fixed_opts[] = {
    {SD_TOPT_DATA, "--data"}, {SD_TOPT_MODEL, "--model"}, {SD_TOPT_CH, "--ch"},
    {SD_TOPT_MULT, "--mult"}, {SD_TOPT_NRB, "--num-res-blocks"},
    {SD_TOPT_CHANNELS, "--channels"}, {SD_TOPT_SIZE, "--size"}, {SD_TOPT_FLIP, "--flip"},
    {SD_TOPT_SDE, "--sde"}, {SD_TOPT_TRANSFORM, "--data-transform"},
    {SD_TOPT_OBJECTIVE, "--objective"}, {SD_TOPT_WEIGHTING, "--weighting"},
    {SD_TOPT_LR, "--lr"}, {SD_TOPT_WARMUP, "--warmup"}, {SD_TOPT_COSINE, "--cosine"},
    {SD_TOPT_CLIP, "--clip"}, {SD_TOPT_EMA, "--ema"}, {SD_TOPT_BATCH, "--batch"},
    {SD_TOPT_SEED, "--seed"}};

/* Shortest "%.Ng" that reads back as exactly v. */
static void exact_g(char *b, size_t n, double v)
{
    for (int prec = 6; prec <= 17; prec++) {
        snprintf(b, n, "%.*g", prec, v);
        if (strtod(b, NULL) == v) return;
    }
}

/* The value of one fixed option as text (exact for numbers). */
static void opt_text(const sd_train_opts *o, uint32_t bit, char *b, size_t n)
{
    switch (bit) {
    case SD_TOPT_DATA:
        if (!realpath(o->data, b) || strlen(b) >= n) snprintf(b, n, "%s", o->data);
        break;
    case SD_TOPT_MODEL: snprintf(b, n, "%s", o->model); break;
    case SD_TOPT_CH: snprintf(b, n, "%d", o->ch); break;
    case SD_TOPT_MULT:
        b[0] = '\0';
        for (int i = 0, off = 0; i < o->n_mult; i++)
            off += snprintf(b + off, n - (size_t)off, i ? ",%d" : "%d", o->mult[i]);
        break;
    case SD_TOPT_NRB: snprintf(b, n, "%d", o->num_res_blocks); break;
    case SD_TOPT_CHANNELS: snprintf(b, n, "%d", o->channels); break;
    case SD_TOPT_SIZE: snprintf(b, n, "%d", o->size); break;
    case SD_TOPT_FLIP: snprintf(b, n, "%s", o->flip ? "on" : "off"); break;
    case SD_TOPT_SDE: snprintf(b, n, "%s", o->sde); break;
    case SD_TOPT_TRANSFORM: snprintf(b, n, "%s", o->transform); break;
    case SD_TOPT_OBJECTIVE: snprintf(b, n, "%s", objective_str(o->objective)); break;
    case SD_TOPT_WEIGHTING: snprintf(b, n, "%s", weighting_str(o->weighting)); break;
    case SD_TOPT_LR: exact_g(b, n, o->lr); break;
    case SD_TOPT_WARMUP: snprintf(b, n, "%lld", (long long)o->warmup); break;
    case SD_TOPT_COSINE: snprintf(b, n, "%s", o->cosine ? "on" : "off"); break;
    case SD_TOPT_CLIP: exact_g(b, n, o->clip); break;
    case SD_TOPT_EMA: exact_g(b, n, o->ema); break;
    case SD_TOPT_BATCH: snprintf(b, n, "%lld", (long long)o->batch); break;
    case SD_TOPT_SEED: snprintf(b, n, "%llu", (unsigned long long)o->seed); break;
    default: b[0] = '\0';
    }
}

int sd_train_prepare_resume(sd_train_opts *o)
{
    sd_train_opts s;
    sd_train_opts_default(&s);
    if (sd_run_config_read(o->out, &s) != SD_OK) return cli_fail(CMD, 2, "%s", sd_error_message());
    for (size_t i = 0; i < sizeof fixed_opts / sizeof *fixed_opts; i++) {
        uint32_t bit = fixed_opts[i].bit;
        if (!(o->given & bit)) continue;
        char a[PATH_MAX + 1], b[PATH_MAX + 1];
        opt_text(o, bit, a, sizeof a);
        opt_text(&s, bit, b, sizeof b);
        bool differ = strcmp(a, b) != 0;
        if (bit == SD_TOPT_SDE) differ = sde_conflicts(o->sde, s.sde);
        if ((bit == SD_TOPT_MODEL || bit == SD_TOPT_TRANSFORM) && !strcmp(a, "auto")) differ = false;
        if (differ)
            return cli_fail(CMD, 2, "--resume %s: %s %s conflicts with the run's %s (%s/config.json); "
                            "this option cannot change within a run", o->out, fixed_opts[i].name,
                            a, b, o->out);
    }
    if (o->given & SD_TOPT_STEPS) s.steps = o->steps;
    if (o->given & SD_TOPT_CKPT) s.ckpt_every = o->ckpt_every;
    if (o->given & SD_TOPT_LOG) s.log_every = o->log_every;
    if (o->given & SD_TOPT_SAMPLE) s.sample_every = o->sample_every;
    if ((o->given & SD_TOPT_THREADS) && o->threads != s.threads) {
        fprintf(stderr, "scorediff train: note: the run used %d threads, this part uses %d; its "
                        "losses may differ in the last bits from an uninterrupted run\n",
                s.threads, o->threads);
        s.threads = o->threads;
    }
    memcpy(s.out, o->out, sizeof s.out);
    s.given = o->given;
    s.resume = true;
    s.dry_run = o->dry_run;
    s.quiet = o->quiet;
    *o = s;
    return 0;
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
    if (o.resume && (rc = sd_train_prepare_resume(&o))) return rc;
    if (!o.resume) { /* stored absolute, so --resume works from any directory */
        char real[PATH_MAX];
        if (realpath(o.data, real) && strlen(real) < sizeof o.data) memcpy(o.data, real, strlen(real) + 1);
    }
    sd_train_hooks h = {.stop = &stop_signal, .quiet = o.quiet, .sample = sample_grid};
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
