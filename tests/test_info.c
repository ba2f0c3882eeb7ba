/* test_info.c - `scorediff info` shows everything a checkpoint holds (issue
 * 17 item 4): every metadata entry (score_param and, for dense, the stored
 * covariance sde_cov, which is what sampling uses, not the training-time
 * C=FILE), and --json output that is complete and machine-readable. The CLI
 * is run as a separate process ($SCOREDIFF_BIN) on runs trained here.
 */
#include <check.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

static char dir[64];

static const char *bin(void)
{
    const char *b = getenv("SCOREDIFF_BIN");
    ck_assert_msg(b && *b, "SCOREDIFF_BIN is not set (run through meson test)");
    return b;
}

/* Run `scorediff ARGS` in dir; stdout into a malloc'd string, exit code out. */
static char *run(int *code, const char *args)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "cd '%s' && '%s' %s 2>/dev/null", dir, bin(), args);
    FILE *p = popen(cmd, "r");
    ck_assert_ptr_nonnull(p);
    size_t cap = 1 << 16, len = 0;
    char *out = malloc(cap);
    ck_assert_ptr_nonnull(out);
    size_t k;
    while ((k = fread(out + len, 1, cap - 1 - len, p)) > 0) {
        len += k;
        if (len + 1 == cap) {
            out = realloc(out, cap *= 2);
            ck_assert_ptr_nonnull(out);
        }
    }
    out[len] = '\0';
    int st = pclose(p);
    *code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    return out;
}

static void write_file(const char *name, const char *text)
{
    char path[128];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    ck_assert_int_eq(fclose(f), 0);
}

START_TEST(test_info_dense_everything)
{
    snprintf(dir, sizeof dir, "/tmp/sd_info_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char pts[4096] = "";
    for (int i = 0; i < 64; i++) {
        char row[32];
        snprintf(row, sizeof row, "%d.25,%d.5\n", i % 5 - 2, i % 3 - 1);
        strcat(pts, row);
    }
    write_file("p.csv", pts);
    write_file("cov.json", "{\"C\": [[1.0, 0.25], [0.25, 0.5]]}\n");
    int rc;
    free(run(&rc, "train --data p.csv --model mlp --sde dense:C=cov.json --steps 3 --batch 16 "
                  "--threads 1 --out R --quiet"));
    ck_assert_int_eq(rc, 0);
    /* the training-time file is gone: the checkpoint must not need it */
    char path[128];
    snprintf(path, sizeof path, "%s/cov.json", dir);
    ck_assert_int_eq(unlink(path), 0);

    char *text = run(&rc, "info R");
    ck_assert_int_eq(rc, 0);
    ck_assert_msg(strstr(text, "score_param     sigma"), "%s", text);
    ck_assert_msg(strstr(text, "sde_cov         {\"C\""), "%s", text);
    ck_assert_msg(strstr(text, "the file is not read"), "%s", text);
    ck_assert_msg(strstr(text, "loads:          yes"), "%s", text);
    free(text);

    char *js = run(&rc, "info R --json --tensors");
    ck_assert_int_eq(rc, 0);
    cJSON *j = cJSON_Parse(js);
    ck_assert_msg(j != NULL, "not JSON: %s", js);
    const cJSON *meta = cJSON_GetObjectItemCaseSensitive(j, "metadata");
    ck_assert(cJSON_IsObject(meta));
    /* every entry the checkpoint writer stores (models/checkpoint.c) */
    static const char *const keys[] = {"format", "version", "model_config", "sde", "sde_cov",
                                       "score_param", "data_shape", "data_transform", "step",
                                       "seed", "batch", "optimizer", "train"};
    for (size_t k = 0; k < sizeof keys / sizeof *keys; k++)
        ck_assert_msg(cJSON_GetObjectItemCaseSensitive(meta, keys[k]), "no %s in %s", keys[k], js);
    const cJSON *C = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(meta, "sde_cov"), "C");
    ck_assert(cJSON_IsArray(C) && cJSON_GetArraySize(C) == 2);
    ck_assert_double_eq_tol(cJSON_GetArrayItem(cJSON_GetArrayItem(C, 0), 1)->valuedouble, 0.25,
                            1e-15);
    const cJSON *mc = cJSON_GetObjectItemCaseSensitive(meta, "model_config");
    ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(mc, "model")->valuestring, "mlp");
    ck_assert(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "loads")));
    ck_assert(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "resumable")));
    ck_assert(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(j, "error")));
    const cJSON *sec = cJSON_GetObjectItemCaseSensitive(j, "sections");
    int total = (int)cJSON_GetObjectItemCaseSensitive(sec, "total")->valuedouble;
    ck_assert_int_eq(total, 4 * (int)cJSON_GetObjectItemCaseSensitive(sec, "model")->valuedouble);
    ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(j, "tensors")), total);
    ck_assert_int_gt((int)cJSON_GetObjectItemCaseSensitive(j, "parameters")->valuedouble, 0);
    cJSON_Delete(j);
    free(js);

    /* a refused checkpoint: loads false, the reason, exit 2, still JSON */
    write_file("junk.safetensors", "not a checkpoint");
    js = run(&rc, "info junk.safetensors --json");
    ck_assert_int_eq(rc, 2);
    free(js);
    char cmd[160];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("info");
    TCase *tc = tcase_create("info");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_info_dense_everything);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
