/* test_checkpoint.c - score-model checkpoints (models/checkpoint.c).
 *
 * The promises of models/include/sd/checkpoint.h: the tensor names and sections
 * (model., ema., opt.m., opt.v.), the metadata keys, round trips of a
 * model-only and of a training checkpoint (load_model takes the EMA weights
 * when asked and present, else the raw ones; load_trainer restores
 * parameters, EMA, moments and step), and every refusal: wrong or missing
 * format and version, missing sde or model_config, a bad sde spec or model
 * config, a score parameterisation from another version, bad step or seed,
 * missing, renamed and extra tensors, wrong shapes and dtypes, non-finite
 * values in every section, a config that does not match the tensors, and a
 * run whose configuration differs from the checkpoint's. Each refusal returns
 * an error with a message naming the file, and builds no model.
 *
 * The bad files are made here: a good checkpoint is read back into memory
 * (ck_file), changed (a tensor dropped, renamed, reshaped, set to NaN; a
 * metadata value changed or removed) and written again through the
 * safetensors writer; a wrong dtype is patched into the header bytes.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sd/checkpoint.h"
#include "sd/safetensors.h"

#define ASSERT_MSG_HAS(s)                                                                  \
    ck_assert_msg(strstr(sd_error_message(), (s)) != NULL, "message '%s' lacks '%s'",     \
                  sd_error_message(), (s))

static char g_dir[64];

static void setup_dir(void)
{
    strcpy(g_dir, "/tmp/sd_test_ckpt_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(g_dir));
}

static void teardown_dir(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    ck_assert_int_eq(system(cmd), 0);
}

static const char *P(const char *name)
{
    static char bufs[4][256];
    static int k;
    char *b = bufs[k++ & 3];
    snprintf(b, 256, "%s/%s", g_dir, name);
    return b;
}

/* ---- a small training run's state ------------------------------------- */

/* The reference mlp on 2-D points under vp (a few thousand parameters),
 * with a trainer; every float of each section set to a distinct pattern so
 * that a load shows which section it read. */
typedef struct run {
    sd_model *m;
    sd_trainer *t;
} run;

static float pattern(int section, size_t i)
{
    return (float)(section + 1) * 1e-3f * (float)(i % 997) - 0.5f;
}

static run make_run(int dim)
{
    sd_sde sde;
    ck_assert_int_eq(sd_sde_parse("vp", &sde), SD_OK);
    run r;
    ck_assert_int_eq(sd_model_new_network("mlp", NULL, dim, 1, 1, &sde, &r.m), SD_OK);
    sd_train_config tc = sd_train_config_default(&sde, 100, 3);
    ck_assert_int_eq(sd_trainer_new(r.m, &tc, &r.t), SD_OK);
    size_t n = r.m->params->total;
    float *bufs[4] = {r.m->params->data, r.t->ema, sd_optimizer_state(r.t->opt, 0),
                      sd_optimizer_state(r.t->opt, 1)};
    for (int s = 0; s < 4; s++) {
        ck_assert_ptr_nonnull(bufs[s]);
        for (size_t i = 0; i < n; i++) bufs[s][i] = s == 3 ? fabsf(pattern(s, i)) : pattern(s, i);
    }
    r.t->step = 7;
    return r;
}

static void free_run(run *r)
{
    sd_trainer_free(r->t);
    sd_model_free(r->m);
}

static const sd_ckpt_meta good_meta = {
    .step = 7, .seed = 42, .batch = 16, .data_transform = "identity",
    .train_json = "{\"batch\":16,\"steps\":100}"};

/* A model-only checkpoint ("model.pt") and a training one ("train.pt"). */
static run save_both(void)
{
    run r = make_run(2);
    ck_assert_msg(sd_checkpoint_save(P("model.pt"), r.m, NULL, &good_meta) == SD_OK, "%s",
                  sd_error_message());
    ck_assert_msg(sd_checkpoint_save(P("train.pt"), r.m, r.t, &good_meta) == SD_OK, "%s",
                  sd_error_message());
    return r;
}

/* ---- a checkpoint file in memory, to be changed and written again ------ */

enum { MAX_T = 256, MAX_M = 32 };
typedef struct ck_file {
    size_t n;
    char *name[MAX_T];
    int ndim[MAX_T];
    int64_t shape[MAX_T][SD_ST_MAX_DIMS];
    float *data[MAX_T];
    size_t numel[MAX_T];
    size_t n_meta;
    char *key[MAX_M], *val[MAX_M];
} ck_file;

static void ck_read(const char *path, ck_file *f)
{
    memset(f, 0, sizeof *f);
    sd_safetensors *st;
    ck_assert_msg(sd_safetensors_open(path, &st) == SD_OK, "%s", sd_error_message());
    f->n = sd_safetensors_count(st);
    ck_assert_uint_le(f->n, MAX_T);
    for (size_t i = 0; i < f->n; i++) {
        const sd_st_tensor *t = sd_safetensors_at(st, i);
        f->name[i] = strdup(t->name);
        f->ndim[i] = t->ndim;
        memcpy(f->shape[i], t->shape, sizeof f->shape[i]);
        f->numel[i] = t->numel;
        f->data[i] = malloc((t->numel ? t->numel : 1) * sizeof(float));
        ck_assert_int_eq(sd_safetensors_read_f32(t, f->data[i], t->numel), SD_OK);
    }
    static const char *keys[] = {"format", "version", "model_config", "sde", "data_shape",
                                 "data_transform", "step", "seed", "batch", "optimizer",
                                 "train", "score_param", "sde_cov"};
    for (size_t k = 0; k < sizeof keys / sizeof *keys; k++) {
        const char *v = sd_safetensors_meta(st, keys[k]);
        if (!v) continue;
        f->key[f->n_meta] = strdup(keys[k]);
        f->val[f->n_meta++] = strdup(v);
    }
    sd_safetensors_close(st);
}

static void ck_write(const char *path, const ck_file *f)
{
    sd_st_entry e[MAX_T];
    for (size_t i = 0; i < f->n; i++)
        e[i] = (sd_st_entry){.name = f->name[i], .ndim = f->ndim[i], .shape = f->shape[i],
                             .data = f->data[i]};
    ck_assert_msg(sd_safetensors_write(path, e, f->n, (const char *const *)f->key,
                                       (const char *const *)f->val, f->n_meta) == SD_OK,
                  "%s", sd_error_message());
}

/* The writer refuses non-finite values (a diverged run must not replace a
 * good checkpoint), so a NaN is planted afterwards: element elem of tensor
 * `name` is written as a sentinel whose bytes (0x4996b438, not ASCII, so
 * never in the header; the patterns stay in [-1, 4]) are then replaced. */
#define SENTINEL 1234567.0f
static void ck_write_poisoned(const char *path, ck_file *f, const char *name, size_t elem,
                              float value)
{
    size_t n = 0;
    for (; n < f->n && strcmp(f->name[n], name) != 0; n++) {}
    ck_assert_msg(n < f->n, "no tensor %s", name);
    float keep = f->data[n][elem];
    f->data[n][elem] = SENTINEL;
    ck_write(path, f);
    f->data[n][elem] = keep;
    FILE *fp = fopen(path, "r+b");
    ck_assert_ptr_nonnull(fp);
    static unsigned char bytes[1 << 22];
    size_t len = fread(bytes, 1, sizeof bytes, fp);
    ck_assert_uint_lt(len, sizeof bytes);
    float s = SENTINEL;
    int hits = 0;
    for (size_t i = 0; i + 4 <= len; i++)
        if (memcmp(bytes + i, &s, 4) == 0) {
            ck_assert_int_eq(fseek(fp, (long)i, SEEK_SET), 0);
            ck_assert_uint_eq(fwrite(&value, 4, 1, fp), 1);
            hits++;
        }
    ck_assert_int_eq(hits, 1);
    ck_assert_int_eq(fclose(fp), 0);
}

static void ck_free(ck_file *f)
{
    for (size_t i = 0; i < f->n; i++) free(f->name[i]), free(f->data[i]);
    for (size_t i = 0; i < f->n_meta; i++) free(f->key[i]), free(f->val[i]);
}

static int ck_find(const ck_file *f, const char *name)
{
    for (size_t i = 0; i < f->n; i++)
        if (strcmp(f->name[i], name) == 0) return (int)i;
    ck_abort_msg("no tensor %s", name);
    return -1;
}

static void ck_drop(ck_file *f, int i)
{
    free(f->name[i]);
    free(f->data[i]);
    for (size_t j = (size_t)i; j + 1 < f->n; j++) {
        f->name[j] = f->name[j + 1];
        f->ndim[j] = f->ndim[j + 1];
        memcpy(f->shape[j], f->shape[j + 1], sizeof f->shape[j]);
        f->data[j] = f->data[j + 1];
        f->numel[j] = f->numel[j + 1];
    }
    f->n--;
}

static void ck_rename(ck_file *f, int i, const char *name)
{
    free(f->name[i]);
    f->name[i] = strdup(name);
}

static void ck_add(ck_file *f, const char *name, int64_t numel)
{
    ck_assert_uint_lt(f->n, MAX_T);
    size_t i = f->n++;
    f->name[i] = strdup(name);
    f->ndim[i] = 1;
    f->shape[i][0] = numel;
    f->numel[i] = (size_t)numel;
    f->data[i] = calloc((size_t)numel, sizeof(float));
}

/* Set metadata key to value, or remove it (value NULL). */
static void ck_meta(ck_file *f, const char *key, const char *value)
{
    for (size_t i = 0; i < f->n_meta; i++)
        if (strcmp(f->key[i], key) == 0) {
            free(f->val[i]);
            if (value) {
                f->val[i] = strdup(value);
                return;
            }
            free(f->key[i]);
            f->key[i] = f->key[f->n_meta - 1];
            f->val[i] = f->val[f->n_meta - 1];
            f->n_meta--;
            return;
        }
    ck_assert_ptr_nonnull(value);
    f->key[f->n_meta] = strdup(key);
    f->val[f->n_meta++] = strdup(value);
}

static const char *ck_get_meta(const ck_file *f, const char *key)
{
    for (size_t i = 0; i < f->n_meta; i++)
        if (strcmp(f->key[i], key) == 0) return f->val[i];
    return NULL;
}

/* ---- expectations ------------------------------------------------------ */

/* load_model refuses path with status st and a message naming the file and
 * containing what; no model comes back. */
static void refuse_model(const char *path, bool use_ema, sd_status st, const char *what)
{
    sd_model *m = (sd_model *)&m; /* not NULL: the call must clear it */
    sd_ckpt_meta meta;
    sd_status got = sd_checkpoint_load_model(path, use_ema, &m, &meta);
    ck_assert_msg(got == st, "%s: status %d, expected %d (%s)", path, (int)got, (int)st,
                  sd_error_message());
    ck_assert_ptr_null(m);
    ASSERT_MSG_HAS(path);
    ASSERT_MSG_HAS(what);
}

/* load_trainer refuses path into a fresh run of dimension dim. */
static void refuse_trainer(const char *path, int dim, sd_status st, const char *what)
{
    run r = make_run(dim);
    sd_status got = sd_checkpoint_load_trainer(path, r.m, r.t, NULL);
    ck_assert_msg(got == st, "%s: status %d, expected %d (%s)", path, (int)got, (int)st,
                  sd_error_message());
    ASSERT_MSG_HAS(path);
    ASSERT_MSG_HAS(what);
    free_run(&r);
}

/* Read src, let change() alter it, write it as dst. */
#define REWRITE(src, dst, f, change)                                                       \
    do {                                                                                   \
        ck_file f;                                                                         \
        ck_read(P(src), &f);                                                               \
        change;                                                                            \
        ck_write(P(dst), &f);                                                              \
        ck_free(&f);                                                                       \
    } while (0)

/* ---- round trips -------------------------------------------------------- */

START_TEST(test_layout_and_metadata)
{
    run r = save_both();
    size_t np = r.m->params->count;
    ck_file f;
    ck_read(P("model.pt"), &f);
    ck_assert_uint_eq(f.n, np);
    for (size_t i = 0; i < np; i++) {
        const sd_param *p = &r.m->params->items[i];
        char name[SD_PARAM_NAME_MAX + 8];
        snprintf(name, sizeof name, "model.%s", p->name);
        int k = ck_find(&f, name);
        ck_assert_int_eq(f.ndim[k], p->ndim);
        for (int d = 0; d < p->ndim; d++) ck_assert_int_eq(f.shape[k][d], p->shape[d]);
        ck_assert(memcmp(f.data[k], r.m->params->data + p->offset, p->numel * sizeof(float)) == 0);
    }
    ck_assert_str_eq(ck_get_meta(&f, "format"), "scorediff-checkpoint");
    ck_assert_str_eq(ck_get_meta(&f, "version"), "1");
    ck_assert_str_eq(ck_get_meta(&f, "model_config"),
                     "{\"model\":\"mlp\",\"dim\":2,\"hidden\":128,\"layers\":3}");
    ck_assert_ptr_nonnull(strstr(ck_get_meta(&f, "sde"), "vp"));
    ck_assert_str_eq(ck_get_meta(&f, "data_shape"), "2,1,1");
    ck_assert_str_eq(ck_get_meta(&f, "data_transform"), "identity");
    ck_assert_str_eq(ck_get_meta(&f, "step"), "7");
    ck_assert_str_eq(ck_get_meta(&f, "seed"), "42");
    ck_assert_str_eq(ck_get_meta(&f, "batch"), "16");
    ck_assert_str_eq(ck_get_meta(&f, "optimizer"), "none");
    ck_assert_str_eq(ck_get_meta(&f, "train"), good_meta.train_json);
    ck_assert_ptr_null(ck_get_meta(&f, "sde_cov")); /* only for the dense family */
    ck_free(&f);

    /* A training checkpoint: the four sections, and Adam's settings. */
    ck_read(P("train.pt"), &f);
    ck_assert_uint_eq(f.n, 4 * np);
    static const char *prefix[] = {"model.", "ema.", "opt.m.", "opt.v."};
    float *base[] = {r.m->params->data, r.t->ema, sd_optimizer_state(r.t->opt, 0),
                     sd_optimizer_state(r.t->opt, 1)};
    for (int s = 0; s < 4; s++)
        for (size_t i = 0; i < np; i++) {
            const sd_param *p = &r.m->params->items[i];
            char name[SD_PARAM_NAME_MAX + 8];
            snprintf(name, sizeof name, "%s%s", prefix[s], p->name);
            int k = ck_find(&f, name);
            ck_assert(memcmp(f.data[k], base[s] + p->offset, p->numel * sizeof(float)) == 0);
        }
    ck_assert_ptr_nonnull(strstr(ck_get_meta(&f, "optimizer"), "adam lr="));
    ck_free(&f);
    free_run(&r);
}
END_TEST

START_TEST(test_round_trips)
{
    run r = save_both();
    size_t n = r.m->params->total;
    sd_model *m;
    sd_ckpt_meta meta;
    /* Model-only: the raw parameters whether or not EMA is asked for; meta
     * may be NULL. */
    for (int ema = 0; ema <= 1; ema++) {
        ck_assert_int_eq(sd_checkpoint_load_model(P("model.pt"), ema, &m, NULL), SD_OK);
        ck_assert_uint_eq(m->params->total, n);
        ck_assert(memcmp(m->params->data, r.m->params->data, n * sizeof(float)) == 0);
        sd_model_free(m);
    }
    /* Training: EMA when asked, else raw; the metadata back. */
    ck_assert_int_eq(sd_checkpoint_load_model(P("train.pt"), true, &m, &meta), SD_OK);
    ck_assert(memcmp(m->params->data, r.t->ema, n * sizeof(float)) == 0);
    ck_assert_int_eq(m->kind, SD_MODEL_MLP);
    ck_assert_int_eq(m->C, 2);
    sd_model_free(m);
    ck_assert_int_eq(sd_checkpoint_load_model(P("train.pt"), false, &m, &meta), SD_OK);
    ck_assert(memcmp(m->params->data, r.m->params->data, n * sizeof(float)) == 0);
    sd_model_free(m);
    ck_assert_int_eq(meta.step, 7);
    ck_assert_uint_eq(meta.seed, 42);
    ck_assert_int_eq(meta.batch, 16);
    ck_assert_str_eq(meta.data_transform, "identity");
    ck_assert_str_eq(meta.train_json, good_meta.train_json);

    /* load_trainer: parameters, EMA, both moments and the step. */
    run back = make_run(2);
    float *bufs[4] = {back.m->params->data, back.t->ema, sd_optimizer_state(back.t->opt, 0),
                      sd_optimizer_state(back.t->opt, 1)};
    for (int s = 0; s < 4; s++) memset(bufs[s], 0, n * sizeof(float));
    back.t->step = 0;
    ck_assert_msg(sd_checkpoint_load_trainer(P("train.pt"), back.m, back.t, &meta) == SD_OK, "%s",
                  sd_error_message());
    float *want[4] = {r.m->params->data, r.t->ema, sd_optimizer_state(r.t->opt, 0),
                      sd_optimizer_state(r.t->opt, 1)};
    for (int s = 0; s < 4; s++)
        ck_assert_msg(memcmp(bufs[s], want[s], n * sizeof(float)) == 0, "section %d", s);
    ck_assert_int_eq(back.t->step, 7);
    ck_assert_int_eq(sd_optimizer_step_count(back.t->opt), 7);
    free_run(&back);
    free_run(&r);
}
END_TEST

/* ---- refusals ------------------------------------------------------------ */

START_TEST(test_refuse_not_a_checkpoint)
{
    run r = save_both();
    /* No file, a directory, and a file that is not safetensors at all. */
    refuse_model(P("absent.pt"), false, SD_ERR_IO, "absent.pt");
    FILE *fp = fopen(P("text.pt"), "w");
    ck_assert_ptr_nonnull(fp);
    fputs("this is not a checkpoint\n", fp);
    fclose(fp);
    refuse_model(P("text.pt"), false, SD_ERR_FORMAT, "text.pt");
    /* A valid safetensors file that is no scorediff checkpoint. */
    REWRITE("model.pt", "fmt_none.pt", f, ck_meta(&f, "format", NULL));
    refuse_model(P("fmt_none.pt"), false, SD_ERR_FORMAT,
                 "not a scorediff checkpoint (metadata format is missing)");
    REWRITE("model.pt", "fmt_other.pt", f, ck_meta(&f, "format", "pytorch"));
    refuse_model(P("fmt_other.pt"), false, SD_ERR_FORMAT, "metadata format is pytorch");
    refuse_trainer(P("fmt_other.pt"), 2, SD_ERR_FORMAT, "not a scorediff checkpoint");
    free_run(&r);
}
END_TEST

START_TEST(test_refuse_version)
{
    run r = save_both();
    REWRITE("train.pt", "v2.pt", f, ck_meta(&f, "version", "2"));
    refuse_model(P("v2.pt"), true, SD_ERR_FORMAT,
                 "checkpoint version 2 is not supported (expected 1)");
    refuse_trainer(P("v2.pt"), 2, SD_ERR_FORMAT, "version 2 is not supported");
    REWRITE("train.pt", "v_none.pt", f, ck_meta(&f, "version", NULL));
    refuse_model(P("v_none.pt"), true, SD_ERR_FORMAT, "checkpoint version missing");
    free_run(&r);
}
END_TEST

START_TEST(test_refuse_metadata)
{
    run r = save_both();
    REWRITE("model.pt", "no_sde.pt", f, ck_meta(&f, "sde", NULL));
    refuse_model(P("no_sde.pt"), false, SD_ERR_FORMAT, "metadata lacks sde or model_config");
    REWRITE("model.pt", "no_cfg.pt", f, ck_meta(&f, "model_config", NULL));
    refuse_model(P("no_cfg.pt"), false, SD_ERR_FORMAT, "metadata lacks sde or model_config");
    refuse_trainer(P("no_cfg.pt"), 2, SD_ERR_FORMAT, "model configuration (missing)");
    REWRITE("model.pt", "bad_sde.pt", f, ck_meta(&f, "sde", "warp:speed=9"));
    refuse_model(P("bad_sde.pt"), false, SD_ERR_FORMAT, "warp");
    REWRITE("model.pt", "bad_cfg.pt", f, ck_meta(&f, "model_config", "{\"model\":"));
    refuse_model(P("bad_cfg.pt"), false, SD_ERR_FORMAT, "model config is not valid JSON");
    REWRITE("model.pt", "cfg_kind.pt", f, ck_meta(&f, "model_config", "{\"model\":\"resnet\"}"));
    refuse_model(P("cfg_kind.pt"), false, SD_ERR_FORMAT, "model config");
    /* A parameterisation of the score this version does not use for an mlp. */
    REWRITE("model.pt", "param.pt", f, ck_meta(&f, "score_param", "dct-tweedie"));
    refuse_model(P("param.pt"), false, SD_ERR_FORMAT,
                 "score parameterisation 'dct-tweedie' does not match");
    /* step and seed: missing, not a number, negative, trailing text. */
    static const char *bad_steps[] = {NULL, "abc", "-1", "7x", ""};
    for (size_t i = 0; i < sizeof bad_steps / sizeof *bad_steps; i++) {
        REWRITE("train.pt", "step.pt", f, ck_meta(&f, "step", bad_steps[i]));
        refuse_model(P("step.pt"), false, SD_ERR_FORMAT, "bad or missing step");
        refuse_trainer(P("step.pt"), 2, SD_ERR_FORMAT, "bad or missing step");
    }
    static const char *bad_seeds[] = {NULL, "x", "42z", "99999999999999999999999", "-5", ""};
    for (size_t i = 0; i < sizeof bad_seeds / sizeof *bad_seeds; i++) {
        REWRITE("train.pt", "seed.pt", f, ck_meta(&f, "seed", bad_seeds[i]));
        refuse_model(P("seed.pt"), false, SD_ERR_FORMAT, "bad or missing seed");
    }
    free_run(&r);
}
END_TEST

START_TEST(test_refuse_missing_and_extra_tensors)
{
    run r = save_both();
    const char *first = r.m->params->items[0].name;
    char name[SD_PARAM_NAME_MAX + 8], renamed[SD_PARAM_NAME_MAX + 16];
    snprintf(name, sizeof name, "model.%s", first);
    snprintf(renamed, sizeof renamed, "model.%s.old", first);

    /* One parameter missing, model-only and training. */
    REWRITE("model.pt", "miss.pt", f, ck_drop(&f, ck_find(&f, name)));
    refuse_model(P("miss.pt"), false, SD_ERR_FORMAT, "tensors, the model expects");
    REWRITE("train.pt", "miss_t.pt", f, ck_drop(&f, ck_find(&f, name)));
    refuse_model(P("miss_t.pt"), false, SD_ERR_FORMAT, "tensors, the model expects");
    refuse_trainer(P("miss_t.pt"), 2, SD_ERR_FORMAT, "tensors, the model expects");
    /* Renamed: the count is right, the name is not. */
    REWRITE("model.pt", "ren.pt", f, ck_rename(&f, ck_find(&f, name), renamed));
    refuse_model(P("ren.pt"), false, SD_ERR_FORMAT, "is missing");
    ASSERT_MSG_HAS(name);
    REWRITE("train.pt", "ren_t.pt", f, ck_rename(&f, ck_find(&f, name), renamed));
    refuse_model(P("ren_t.pt"), true, SD_ERR_FORMAT, "is missing");
    refuse_trainer(P("ren_t.pt"), 2, SD_ERR_FORMAT, "is missing");
    /* A renamed tensor in a section the load does not copy (an optimizer
     * moment, loading the EMA weights) is still refused: the file is not the
     * checkpoint it claims to be. */
    snprintf(name, sizeof name, "opt.m.%s", first);
    snprintf(renamed, sizeof renamed, "opt.m.%s.old", first);
    REWRITE("train.pt", "ren_m.pt", f, ck_rename(&f, ck_find(&f, name), renamed));
    refuse_model(P("ren_m.pt"), true, SD_ERR_FORMAT, "is missing");
    refuse_model(P("ren_m.pt"), false, SD_ERR_FORMAT, "is missing");
    refuse_trainer(P("ren_m.pt"), 2, SD_ERR_FORMAT, "is missing");
    /* Extra tensors. */
    REWRITE("model.pt", "extra.pt", f, ck_add(&f, "model.extra", 3));
    refuse_model(P("extra.pt"), false, SD_ERR_FORMAT, "tensors, the model expects");
    REWRITE("train.pt", "extra_t.pt", f, ck_add(&f, "notes", 1));
    refuse_model(P("extra_t.pt"), true, SD_ERR_FORMAT, "tensors, the model expects");
    refuse_trainer(P("extra_t.pt"), 2, SD_ERR_FORMAT, "tensors, the model expects");
    /* A training run cannot resume from a model-only checkpoint. */
    refuse_trainer(P("model.pt"), 2, SD_ERR_FORMAT, "tensors, the model expects");
    free_run(&r);
}
END_TEST

START_TEST(test_refuse_shapes_and_dtypes)
{
    run r = save_both();
    /* A 2-D weight: transposed (same count), flattened, and one row short. */
    int w = -1;
    for (size_t i = 0; i < r.m->params->count && w < 0; i++)
        if (r.m->params->items[i].ndim == 2 &&
            r.m->params->items[i].shape[0] != r.m->params->items[i].shape[1])
            w = (int)i;
    ck_assert_int_ge(w, 0);
    const sd_param *p = &r.m->params->items[w];
    char name[SD_PARAM_NAME_MAX + 8];
    snprintf(name, sizeof name, "model.%s", p->name);
    REWRITE("model.pt", "transp.pt", f, {
        int k = ck_find(&f, name);
        int64_t a = f.shape[k][0];
        f.shape[k][0] = f.shape[k][1];
        f.shape[k][1] = a;
    });
    refuse_model(P("transp.pt"), false, SD_ERR_FORMAT, "has a shape that does not match");
    ASSERT_MSG_HAS(name);
    REWRITE("train.pt", "flat.pt", f, {
        int k = ck_find(&f, name);
        f.ndim[k] = 1;
        f.shape[k][0] = (int64_t)f.numel[k];
    });
    refuse_model(P("flat.pt"), false, SD_ERR_FORMAT, "has a shape that does not match");
    refuse_trainer(P("flat.pt"), 2, SD_ERR_FORMAT, "has a shape that does not match");
    REWRITE("model.pt", "short.pt", f, {
        int k = ck_find(&f, name);
        f.shape[k][0]--;
        f.numel[k] -= (size_t)f.shape[k][1];
    });
    refuse_model(P("short.pt"), false, SD_ERR_FORMAT, "has a shape that does not match");

    /* A tensor stored as I32 (same size as F32, so the file itself is
     * valid): the header's dtype of that tensor patched in place. */
    FILE *fp = fopen(P("model.pt"), "rb");
    ck_assert_ptr_nonnull(fp);
    static unsigned char bytes[1 << 22];
    size_t len = fread(bytes, 1, sizeof bytes, fp);
    fclose(fp);
    ck_assert_uint_lt(len, sizeof bytes);
    bytes[len] = 0;
    char *at = strstr((char *)bytes + 8, name);
    ck_assert_ptr_nonnull(at);
    char *dt = strstr(at, "\"F32\"");
    ck_assert_ptr_nonnull(dt);
    memcpy(dt, "\"I32\"", 5);
    fp = fopen(P("i32.pt"), "wb");
    ck_assert_uint_eq(fwrite(bytes, 1, len, fp), len);
    fclose(fp);
    refuse_model(P("i32.pt"), false, SD_ERR_FORMAT, "has dtype I32, expected F32");
    ASSERT_MSG_HAS(name);
    free_run(&r);
}
END_TEST

/* NaN and Inf in every section, for every load that reads the file. */
START_TEST(test_refuse_non_finite)
{
    run r = save_both();
    static const char *prefix[] = {"model.", "ema.", "opt.m.", "opt.v."};
    const sd_param *p = &r.m->params->items[r.m->params->count - 1];
    for (int s = 0; s < 4; s++) {
        char name[SD_PARAM_NAME_MAX + 8];
        snprintf(name, sizeof name, "%s%s", prefix[s], p->name);
        ck_file f;
        ck_read(P("train.pt"), &f);
        ck_write_poisoned(P("nan.pt"), &f, name, 0, NAN);
        ck_write_poisoned(P("inf.pt"), &f, name, 1, -INFINITY);
        ck_free(&f);
        refuse_model(P("nan.pt"), true, SD_ERR_NUMERIC, "is NaN");
        ASSERT_MSG_HAS(name);
        refuse_model(P("nan.pt"), false, SD_ERR_NUMERIC, "is NaN");
        refuse_trainer(P("nan.pt"), 2, SD_ERR_NUMERIC, "is NaN");
        refuse_model(P("inf.pt"), true, SD_ERR_NUMERIC, "is -Inf");
        refuse_trainer(P("inf.pt"), 2, SD_ERR_NUMERIC, "is -Inf");
    }
    char name[SD_PARAM_NAME_MAX + 8];
    snprintf(name, sizeof name, "model.%s", p->name);
    ck_file f;
    ck_read(P("model.pt"), &f);
    ck_write_poisoned(P("nan_m.pt"), &f, name, 0, INFINITY);
    ck_free(&f);
    refuse_model(P("nan_m.pt"), false, SD_ERR_NUMERIC, "is +Inf");
    free_run(&r);
}
END_TEST

/* The stored config and the tensors disagree (metadata edited: a wider
 * model, or another data dimension), and a run whose configuration differs
 * from the checkpoint's. */
START_TEST(test_refuse_mismatched_config)
{
    run r = save_both();
    REWRITE("train.pt", "dim3.pt", f,
            ck_meta(&f, "model_config",
                    "{\"model\":\"mlp\",\"dim\":3,\"hidden\":128,\"layers\":3}"));
    refuse_model(P("dim3.pt"), true, SD_ERR_FORMAT, "does not match");
    REWRITE("train.pt", "hidden.pt", f,
            ck_meta(&f, "model_config",
                    "{\"model\":\"mlp\",\"dim\":2,\"hidden\":256,\"layers\":3}"));
    refuse_model(P("hidden.pt"), true, SD_ERR_FORMAT, "hidden 256");
    /* The run is built for 3-D data; the checkpoint is of 2-D data. */
    refuse_trainer(P("train.pt"), 3, SD_ERR_FORMAT, "differs from this run's");
    /* Unchanged, the same run resumes (the refusals above were the edits). */
    run back = make_run(2);
    ck_assert_int_eq(sd_checkpoint_load_trainer(P("train.pt"), back.m, back.t, NULL), SD_OK);
    free_run(&back);
    free_run(&r);
}
END_TEST

/* The analytic mixture has no parameters to save. */
START_TEST(test_refuse_saving_gmm)
{
    double w[1] = {1.0}, mu[2] = {0.0, 0.0}, cov[4] = {1.0, 0.0, 0.0, 1.0};
    sd_gmm *gmm;
    ck_assert_int_eq(sd_gmm_new(1, 2, w, mu, cov, &gmm), SD_OK);
    sd_sde sde;
    ck_assert_int_eq(sd_sde_parse("vp", &sde), SD_OK);
    sd_model *m;
    ck_assert_int_eq(sd_model_new_gmm(gmm, &sde, &m), SD_OK);
    ck_assert_int_eq(sd_checkpoint_save(P("gmm.pt"), m, NULL, NULL), SD_ERR_INVALID);
    ASSERT_MSG_HAS("gmm.pt: only networks have checkpoints");
    ck_assert_int_ne(access(P("gmm.pt"), F_OK), 0);
    sd_model_free(m);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("checkpoint");
    TCase *tc = tcase_create("checkpoint");
    tcase_set_timeout(tc, 120);
    tcase_add_checked_fixture(tc, setup_dir, teardown_dir);
    tcase_add_test(tc, test_layout_and_metadata);
    tcase_add_test(tc, test_round_trips);
    tcase_add_test(tc, test_refuse_not_a_checkpoint);
    tcase_add_test(tc, test_refuse_version);
    tcase_add_test(tc, test_refuse_metadata);
    tcase_add_test(tc, test_refuse_missing_and_extra_tensors);
    tcase_add_test(tc, test_refuse_shapes_and_dtypes);
    tcase_add_test(tc, test_refuse_non_finite);
    tcase_add_test(tc, test_refuse_mismatched_config);
    tcase_add_test(tc, test_refuse_saving_gmm);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
