/* cmd_info.c - `scorediff info CKPT|RUN_DIR [--tensors]`: describe a
 * checkpoint (models/checkpoint.h): its metadata, parameter count, which
 * sections it holds, and whether it loads. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "checkpoint.h"
#include "cli.h"
#include "sd/safetensors.h"

#define CMD "info"

static void usage(FILE *f)
{
    fprintf(f,
"usage: scorediff info CHECKPOINT|RUN_DIR [--tensors]\n"
"\n"
"Prints a checkpoint's metadata (model configuration, noise family, data shape\n"
"and transform, training step, seed, optimizer and training settings), its\n"
"parameter count and sections, and checks that it loads. The check is the one\n"
"sample and train --resume make (every tensor of every section it holds: name,\n"
"dtype F32, shape from model_config, finite values), before the model is built;\n"
"a checkpoint they would refuse is reported with the reason and exit code 2.\n"
"For a run directory the checkpoint is RUN_DIR/checkpoint.safetensors.\n"
"  --tensors   also list every tensor with its dtype and shape\n"
"Exit codes: 0 a loadable checkpoint, 2 missing, malformed or not a checkpoint.\n");
}

static const char *const meta_keys[] = {"format", "version", "model_config", "sde", "data_shape",
                                        "data_transform", "step", "seed", "batch", "optimizer",
                                        "train"};

int sd_cmd_info(int argc, char **argv)
{
    const char *arg = NULL;
    bool tensors = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(argv[i], "--tensors")) tensors = true;
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
    if (stat(path, &sb) != 0) sb.st_size = 0;
    printf("file:           %s (%lld bytes)\n", path, (long long)sb.st_size);
    for (size_t k = 0; k < sizeof meta_keys / sizeof *meta_keys; k++) {
        const char *v = sd_safetensors_meta(f, meta_keys[k]);
        if (v) printf("%-15s %s\n", meta_keys[k], v);
    }
    size_t n = sd_safetensors_count(f), counts[4] = {0, 0, 0, 0}, floats[4] = {0, 0, 0, 0};
    static const char *const prefix[4] = {"model.", "ema.", "opt.m.", "opt.v."};
    for (size_t i = 0; i < n; i++) {
        const sd_st_tensor *t = sd_safetensors_at(f, i);
        for (int s = 0; s < 4; s++)
            if (!strncmp(t->name, prefix[s], strlen(prefix[s]))) {
                counts[s]++;
                floats[s] += t->numel;
            }
        if (tensors) {
            printf("  %-48s %-4s [", t->name, t->dtype);
            for (int d = 0; d < t->ndim; d++)
                printf(d ? ", %" PRId64 : "%" PRId64, t->shape[d]);
            printf("]\n");
        }
    }
    printf("tensors:        %zu (model %zu, ema %zu, adam moments %zu + %zu)\n", n, counts[0],
           counts[1], counts[2], counts[3]);
    printf("values:         %zu per section (model incl. fixed buffers)\n", floats[0]);
    sd_safetensors_close(f);

    sd_model *m;
    sd_ckpt_meta meta;
    /* The loaders' own validation (checkpoint.c check_tensors), not a copy. */
    st = sd_checkpoint_load_model(path, true, &m, &meta);
    if (st != SD_OK) {
        printf("loads:          no\n");
        /* Non-finite values make the file malformed, like a bad shape. */
        return cli_fail(CMD, st == SD_ERR_NUMERIC ? 2 : cli_exit_code(st), "%s",
                        sd_error_message());
    }
    printf("parameters:     %zu trainable\n", sd_params_trainable_count(m->params));
    printf("loads:          yes (%s weights; all %zu tensors checked)\n", counts[1] ? "EMA" : "raw",
           n);
    printf("resumable:      %s\n", counts[1] ? "yes (EMA and Adam moments present)"
                                              : "no (weights only)");
    sd_model_free(m);
    return 0;
}
