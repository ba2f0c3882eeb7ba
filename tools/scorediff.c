/* scorediff.c - the command-line program: dispatch to tools/cmd_<name>.c. */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "sd/blas_core.h"
#include "sd/tensor.h"
#include "sd/version.h"

typedef struct command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} command;

static const command commands[] = {
    {"train", sd_cmd_train, "train a score model on an image folder or a CSV file"},
    {"sample", sd_cmd_sample, "draw samples from a trained model or an analytic mixture"},
    {"loglik", sd_cmd_loglik, "estimate log-likelihoods / bits per dimension"},
    {"convert-idx", sd_cmd_convert_idx, "write (Fashion-)MNIST IDX files as a PNG folder"},
    {"info", sd_cmd_info, "describe a checkpoint"},
    {"report", sd_cmd_report, "write RUN_DIR/report.html: curves, sample grids, likelihoods"},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: scorediff <command> [options]   (scorediff <command> --help)\n\n"
               "commands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
        fprintf(f, "  %-12s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\nGlobal environment: OMP_NUM_THREADS sets the worker threads (default: all "
               "cores).\n"
               "OPENBLAS_CORETYPE picks OpenBLAS's kernels; when it is unset and OpenBLAS falls\n"
               "back to generic kernels on a CPU it does not know, scorediff restarts itself with\n"
               "the best set the CPU supports (SCOREDIFF_BLAS_AUTO=0 turns that off).\n"
               "scorediff --version shows the kernels in use.\n");
}

int main(int argc, char **argv)
{
    /* Before anything starts threads: generic OpenBLAS kernels cost ~4x
     * in GEMM speed on CPUs newer than the library (sd/blas_core.h). */
    sd_blas_restart_if_generic(argv);
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(argv[1], "--version") == 0) {
        char blas[256];
        sd_blas_describe(blas, sizeof blas);
        printf("scorediff %s (%s)\n", sd_version(), blas);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
        if (strcmp(argv[1], commands[i].name) == 0) {
            sd_threads_init(0);
            return commands[i].run(argc - 1, argv + 1);
        }
    fprintf(stderr, "scorediff: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
