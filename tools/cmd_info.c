/* cmd_info.c - `scorediff info CKPT|RUN_DIR [--tensors] [--json]`: describe a
 * checkpoint (models/include/sd/checkpoint.h): every metadata entry it holds, its
 * parameter count, which sections it holds, and whether it loads. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "sd/checkpoint.h"
#include "cli.h"
#include "sd/safetensors.h"

#define CMD "info"

static void usage(FILE *f)
{
    fprintf(f,
"usage: scorediff info CHECKPOINT|RUN_DIR [--tensors] [--json]\n"
"\n"
"Prints everything a checkpoint holds: every metadata entry (model configuration,\n"
"noise family, its stored covariance sde_cov for dense, score parameterisation,\n"
"data shape and transform, training step, seed, optimizer and training settings),\n"
"its parameter count and sections, and checks that it loads. The check is the one\n"
"sample and train --resume make (every tensor of every section it holds: name,\n"
"dtype F32, shape from model_config, finite values), before the model is built;\n"
"a checkpoint they would refuse is reported with the reason and exit code 2.\n"
"For a run directory the checkpoint is RUN_DIR/checkpoint.safetensors.\n"
"  --tensors   also list every tensor with its dtype and shape\n"
"  --json      one JSON object on stdout instead of text: \"metadata\" (every entry;\n"
"              values that are JSON objects or arrays are nested), \"sections\",\n"
"              \"values_per_section\", \"parameters\", \"loads\", \"error\",\n"
"              \"resumable\", and \"tensors\" (with --tensors)\n"
"Exit codes: 0 a loadable checkpoint, 2 missing, malformed or not a checkpoint.\n");
}

static const char *const section_prefix[4] = {"model.", "ema.", "opt.m.", "opt.v."};
static const char *const section_name[4] = {"model", "ema", "opt_m", "opt_v"};

/* What one pass over the tensor list finds. */
typedef struct tensor_summary {
    size_t n, counts[4], floats[4];
} tensor_summary;

static tensor_summary summarize(const sd_safetensors *f)
{
    tensor_summary s = {.n = sd_safetensors_count(f)};
    for (size_t i = 0; i < s.n; i++) {
        const sd_st_tensor *t = sd_safetensors_at(f, i);
        for (int k = 0; k < 4; k++)
            if (!strncmp(t->name, section_prefix[k], strlen(section_prefix[k]))) {
                s.counts[k]++;
                s.floats[k] += t->numel;
            }
    }
    return s;
}

/* A metadata value as JSON: nested when it is itself a JSON object or
 * array (model_config, train, sde_cov, ...), a string otherwise. */
static cJSON *meta_value_json(const char *v)
{
    if (v[0] == '{' || v[0] == '[') {
        cJSON *j = cJSON_Parse(v);
        if (j && (cJSON_IsObject(j) || cJSON_IsArray(j))) return j;
        cJSON_Delete(j);
    }
    return cJSON_CreateString(v);
}

static void print_text(const char *path, long long bytes, const sd_safetensors *f,
                       const tensor_summary *s, bool tensors)
{
    char esc[4 * 4096 + 1];
    printf("file:           %s (%lld bytes)\n", cli_escape(path, esc, sizeof esc), bytes);
    bool stored_cov = sd_safetensors_meta(f, "sde_cov") != NULL;
    for (size_t i = 0, n = sd_safetensors_meta_count(f); i < n; i++) {
        const char *k, *v;
        sd_safetensors_meta_at(f, i, &k, &v);
        printf("%-15s %s\n", k, cli_escape(v, esc, sizeof esc));
        /* a dense spec names the C=FILE read at training; sampling and
         * loglik use the copy stored in the checkpoint */
        if (!strcmp(k, "sde") && stored_cov && strstr(v, "C="))
            printf("%-15s (C=... names the file used at training; the covariance in sde_cov "
                   "below is what is used, the file is not read)\n", "");
    }
    if (tensors)
        for (size_t i = 0; i < s->n; i++) {
            const sd_st_tensor *t = sd_safetensors_at(f, i);
            printf("  %-48s %-4s [", cli_escape(t->name, esc, sizeof esc), t->dtype);
            for (int d = 0; d < t->ndim; d++) printf(d ? ", %" PRId64 : "%" PRId64, t->shape[d]);
            printf("]\n");
        }
    printf("tensors:        %zu (model %zu, ema %zu, adam moments %zu + %zu)\n", s->n,
           s->counts[0], s->counts[1], s->counts[2], s->counts[3]);
    printf("values:         %zu per section (model incl. fixed buffers)\n", s->floats[0]);
}

static cJSON *json_report(const char *path, long long bytes, const sd_safetensors *f,
                          const tensor_summary *s, bool tensors)
{
    cJSON *j = cJSON_CreateObject(), *meta = cJSON_CreateObject(),
          *sections = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "file", path);
    cJSON_AddNumberToObject(j, "bytes", (double)bytes);
    for (size_t i = 0, n = sd_safetensors_meta_count(f); i < n; i++) {
        const char *k, *v;
        sd_safetensors_meta_at(f, i, &k, &v);
        cJSON_AddItemToObject(meta, k, meta_value_json(v));
    }
    cJSON_AddItemToObject(j, "metadata", meta);
    cJSON_AddNumberToObject(sections, "total", (double)s->n);
    for (int k = 0; k < 4; k++) cJSON_AddNumberToObject(sections, section_name[k], (double)s->counts[k]);
    cJSON_AddItemToObject(j, "sections", sections);
    cJSON_AddNumberToObject(j, "values_per_section", (double)s->floats[0]);
    if (tensors) {
        cJSON *list = cJSON_AddArrayToObject(j, "tensors");
        for (size_t i = 0; i < s->n; i++) {
            const sd_st_tensor *t = sd_safetensors_at(f, i);
            cJSON *e = cJSON_CreateObject(), *shape = cJSON_CreateArray();
            cJSON_AddStringToObject(e, "name", t->name);
            cJSON_AddStringToObject(e, "dtype", t->dtype);
            for (int d = 0; d < t->ndim; d++)
                cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)t->shape[d]));
            cJSON_AddItemToObject(e, "shape", shape);
            cJSON_AddItemToArray(list, e);
        }
    }
    return j;
}

int sd_cmd_info(int argc, char **argv)
{
    const char *arg = NULL;
    bool tensors = false, json = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(argv[i], "--tensors")) tensors = true;
        else if (!strcmp(argv[i], "--json")) json = true;
        else if (argv[i][0] == '-' && argv[i][1])
            return cli_fail(CMD, 2, "unknown option '%s' (see scorediff info --help)", argv[i]);
        else if (arg) return cli_fail(CMD, 2, "one checkpoint at a time");
        else arg = argv[i];
    }
    if (!arg) {
        usage(stderr);
        return 2;
    }
    char path[4096];
    struct stat sb;
    if (stat(arg, &sb) == 0 && S_ISDIR(sb.st_mode))
        snprintf(path, sizeof path, "%s/checkpoint.safetensors", arg);
    else
        snprintf(path, sizeof path, "%s", arg);
    sd_safetensors *f;
    sd_status st = sd_safetensors_open(path, &f);
    if (st != SD_OK) return cli_fail(CMD, cli_exit_code(st), "%s", sd_error_message());
    long long bytes = stat(path, &sb) == 0 ? (long long)sb.st_size : 0;
    tensor_summary s = summarize(f);
    cJSON *j = NULL;
    if (json) j = json_report(path, bytes, f, &s, tensors);
    else print_text(path, bytes, f, &s, tensors);
    sd_safetensors_close(f);

    sd_model *m = NULL;
    sd_ckpt_meta meta;
    /* The loaders' own validation (checkpoint.c check_tensors), not a copy. */
    st = sd_checkpoint_load_model(path, true, &m, &meta);
    bool loads = st == SD_OK, resumable = loads && s.counts[1] > 0;
    /* Non-finite values make the file malformed, like a bad shape. */
    int rc = loads ? 0 : st == SD_ERR_NUMERIC ? 2 : cli_exit_code(st);
    if (json) {
        if (loads) cJSON_AddNumberToObject(j, "parameters",
                                           (double)sd_params_trainable_count(m->params));
        else cJSON_AddNullToObject(j, "parameters");
        cJSON_AddBoolToObject(j, "loads", loads);
        if (loads) cJSON_AddNullToObject(j, "error");
        else cJSON_AddStringToObject(j, "error", sd_error_message());
        cJSON_AddBoolToObject(j, "resumable", resumable);
        char *text = cJSON_Print(j);
        cJSON_Delete(j);
        if (!text) {
            sd_model_free(m);
            return cli_fail(CMD, 1, "%s: out of memory formatting JSON", path);
        }
        printf("%s\n", text);
        cJSON_free(text);
    } else if (loads) {
        printf("parameters:     %zu trainable\n", sd_params_trainable_count(m->params));
        printf("loads:          yes (%s weights; all %zu tensors checked)\n",
               s.counts[1] ? "EMA" : "raw", s.n);
        printf("resumable:      %s\n", resumable ? "yes (EMA and Adam moments present)"
                                                 : "no (weights only)");
    } else {
        printf("loads:          no\n");
    }
    sd_model_free(m);
    if (!loads) return cli_fail(CMD, rc, "%s", sd_error_message());
    return 0;
}
