/* test_train_run.c - the training run as a library (models/include/sd/train_run.h),
 * linked without any tools/ source: defaults, the option table's config.json
 * round trip and range checks, the progress, log and stop hooks, and a run
 * stopped by its stop hook and resumed through sd_train_resume, which must
 * end bit for bit where the uninterrupted run ends. */
#define _XOPEN_SOURCE 700
#include <check.h>
#include <ftw.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sd/checkpoint.h"
#include "sd/option_table.h"
#include "sd/rng.h"
#include "sd/train_run.h"
#include "test_tmp.h"

static bool same_file(const char *a, const char *b)
{
    size_t la = 0, lb = 0;
    char *x = tu_read_all(a, &la), *y = tu_read_all(b, &lb);
    bool same = x && y && la == lb && memcmp(x, y, la) == 0;
    free(x);
    free(y);
    return same;
}

static void write_points(const char *path, int n)
{
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    sd_rng r;
    sd_rng_init(&r, 11, SD_STREAM_DATA);
    fprintf(f, "x,y\n");
    for (int i = 0; i < n; i++)
        fprintf(f, "%.6g,%.6g\n", (i % 2 ? 1.5 : -1.5) + 0.2 * sd_rng_normal(&r),
                0.2 * sd_rng_normal(&r));
    fclose(f);
}

/* ---- the option table ------------------------------------------------------- */

START_TEST(test_table_flags_unique)
{
    /* each flag and each key once; every option has help text */
    for (size_t i = 0; i < sd_train_n_options; i++) {
        const sd_option *a = &sd_train_options[i];
        if (a->type == SD_OPT_TEXT) continue;
        ck_assert_msg(a->flag && a->flag[0] == '-' && a->help && a->help[0], "entry %zu", i);
        for (size_t j = i + 1; j < sd_train_n_options; j++) {
            const sd_option *b = &sd_train_options[j];
            if (b->type == SD_OPT_TEXT) continue;
            ck_assert_msg(strcmp(a->flag, b->flag) != 0, "%s twice", a->flag);
            ck_assert_msg(!a->key || !b->key || strcmp(a->key, b->key) != 0, "key %s twice",
                          a->key);
        }
    }
    ck_assert_uint_le(sd_train_n_options, 64); /* bits of `given` */
}
END_TEST

/* config.json written from one set of non-default values reads back as the
 * same values, option by option (as text: exact for doubles). */
START_TEST(test_config_round_trip)
{
    tu_make_tmpdir("sd_train_run");
    sd_train_opts a, b;
    sd_train_opts_default(&a);
    snprintf(a.data, sizeof a.data, "/data/x \"quoted\".csv");
    snprintf(a.model, sizeof a.model, "unet");
    snprintf(a.sde, sizeof a.sde, "ncsn:L=7,sigma_max=3.25");
    snprintf(a.transform, sizeof a.transform, "centered");
    a.ch = 48;
    a.n_mult = 2;
    a.mult[0] = 1;
    a.mult[1] = 3;
    a.num_res_blocks = 3;
    a.channels = 3;
    a.size = 20;
    a.flip = 1;
    a.cosine = 1;
    a.objective = SD_OBJECTIVE_SSM;
    a.weighting = SD_WEIGHT_LIKELIHOOD;
    a.lr = 3e-4;
    a.clip = 0.5;
    a.ema = 0.9999;
    a.warmup = 17;
    a.batch = 24;
    a.steps = 123456789012LL;
    a.ckpt_every = 5;
    a.log_every = 3;
    a.sample_every = 9;
    a.threads = 2;
    a.seed = 18446744073709551615ULL; /* beyond a double's exact integers */
    ck_assert_int_eq(sd_run_config_write(tu_tmpdir, &a, "\"extra\":1"), SD_OK);
    sd_train_opts_default(&b);
    ck_assert_int_eq(sd_run_config_read(tu_tmpdir, &b), SD_OK);
    int keyed = 0;
    for (size_t i = 0; i < sd_train_n_options; i++) {
        const sd_option *op = &sd_train_options[i];
        if (!op->key) continue;
        char x[4200], y[4200];
        sd_option_format(op, &a, x, sizeof x);
        sd_option_format(op, &b, y, sizeof y);
        ck_assert_msg(strcmp(x, y) == 0, "%s: wrote %s, read %s", op->key, x, y);
        keyed++;
    }
    ck_assert_int_ge(keyed, 20);
    tu_remove_tmpdir();
}
END_TEST

START_TEST(test_opts_check_ranges)
{
    sd_train_opts o;
    sd_train_opts_default(&o);
    ck_assert_int_eq(sd_train_opts_check(&o), SD_OK); /* defaults: 0 / -1 mean "derive" */
    o.ema = 1.5;
    ck_assert_int_eq(sd_train_opts_check(&o), SD_ERR_INVALID);
    ck_assert_msg(strstr(sd_error_message(), "--ema"), "%s", sd_error_message());
    sd_train_opts_default(&o);
    o.batch = SD_TRAIN_MAX_BATCH + 1;
    ck_assert_int_eq(sd_train_opts_check(&o), SD_ERR_INVALID);
    ck_assert_msg(strstr(sd_error_message(), "--batch"), "%s", sd_error_message());
}
END_TEST

/* ---- a run through the library API ------------------------------------------ */

typedef struct watch {
    int starts, steps, ends, lines;
    int64_t last_step;
    char last_line[512];
} watch;

static void on_progress(void *ctx, const sd_train_progress *p)
{
    watch *w = ctx;
    if (p->event == SD_TRAIN_START) w->starts++;
    if (p->event == SD_TRAIN_STEP) w->steps++;
    if (p->event == SD_TRAIN_END) w->ends++;
    w->last_step = p->step;
}

static void on_log(void *ctx, const char *line)
{
    watch *w = ctx;
    w->lines++;
    snprintf(w->last_line, sizeof w->last_line, "%s", line);
}

static int stop_at_7(void *ctx, int64_t step)
{
    (void)ctx;
    return step == 7 ? 15 : 0; /* "SIGTERM" */
}

static void small(sd_train_opts *o, const char *out)
{
    sd_train_opts_default(o);
    snprintf(o->data, sizeof o->data, "%s", tu_at("pts.csv"));
    snprintf(o->out, sizeof o->out, "%s", out);
    o->steps = 12;
    o->ckpt_every = 4;
    o->batch = 16;
    o->threads = 1;
    o->seed = 3;
}

START_TEST(test_run_stop_resume)
{
    tu_make_tmpdir("sd_train_run");
    write_points(tu_at("pts.csv"), 64);
    sd_train_opts o;
    watch w = {0};
    sd_train_hooks h = {.progress = on_progress, .progress_ctx = &w, .log = on_log,
                        .log_ctx = &w};
    small(&o, tu_at("full"));
    sd_train_result res;
    ck_assert_int_eq(sd_train_run(&o, &h, &res), SD_TRAIN_OK);
    ck_assert_int_eq(res.step, 12);
    ck_assert_int_eq(w.starts, 1);
    ck_assert_int_eq(w.steps, 11); /* the last step's report is END */
    ck_assert_int_eq(w.ends, 1);
    ck_assert_int_eq(w.last_step, 12);
    ck_assert_msg(strstr(w.last_line, "done: step 12"), "%s", w.last_line);

    memset(&w, 0, sizeof w);
    sd_train_hooks hs = h;
    hs.stop_fn = stop_at_7;
    small(&o, tu_at("part"));
    ck_assert_int_eq(sd_train_run(&o, &hs, &res), 128 + 15);
    ck_assert_int_eq(res.step, 7);
    ck_assert_msg(strstr(w.last_line, "after step 7 of 12"), "%s", w.last_line);

    /* resume: only out and resume set, everything else from config.json */
    sd_train_opts r;
    sd_train_opts_default(&r);
    snprintf(r.out, sizeof r.out, "%s", tu_at("part"));
    r.resume = true;
    r.max_memory = (uint64_t)1 << 40; /* not stored with the run: this invocation's */
    ck_assert_int_eq(sd_train_resume(&r, &h), SD_OK);
    ck_assert_uint_eq(r.max_memory, (uint64_t)1 << 40);
    ck_assert_int_eq(r.steps, 12);
    ck_assert_int_eq(r.seed, 3);
    ck_assert_int_eq(sd_train_run(&r, &h, &res), SD_TRAIN_OK);
    ck_assert_int_eq(res.first_step, 7);
    ck_assert_msg(same_file(tu_at("full/checkpoint.safetensors"), tu_at("part/checkpoint.safetensors")),
                  "resumed checkpoint differs from the uninterrupted run's");

    /* a fixed option given with another value is refused, naming it */
    sd_train_opts_default(&r);
    snprintf(r.out, sizeof r.out, "%s", tu_at("part"));
    r.resume = true;
    r.batch = 8;
    int k = sd_option_index(sd_train_options, sd_train_n_options, offsetof(sd_train_opts, batch));
    ck_assert_int_ge(k, 0);
    r.given |= (uint64_t)1 << k;
    ck_assert_int_eq(sd_train_resume(&r, &h), SD_ERR_INVALID);
    ck_assert_msg(strstr(sd_error_message(), "--batch 8 conflicts with the run's 16"), "%s",
                  sd_error_message());
    tu_remove_tmpdir();
}
END_TEST

static Suite *train_run_suite(void)
{
    Suite *s = suite_create("train_run");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_table_flags_unique);
    tcase_add_test(tc, test_config_round_trip);
    tcase_add_test(tc, test_opts_check_ranges);
    tcase_add_test(tc, test_run_stop_resume);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(train_run_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed != 0;
}
