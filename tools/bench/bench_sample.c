/* bench_sample.c - score evaluations per second of unet-28 at batch 256 (the
 * cost of every sampler step), scorediff beside its PyTorch mirror in the
 * same run (issue #4).
 *
 * scorediff side, on a randomly initialised unet-28 (the speed does not
 * depend on the weights) under the default VE family:
 *   score   sd_model_score on x ~ N(0, 1) [B, 1, 28, 28] at one time t
 *   sampler sd_sample with the PC sampler (reverse diffusion, no corrector)
 *           for a few steps: the same evaluations plus the sampler's own work
 *           (noise, updates, finiteness checks), through sd_scorer
 * PyTorch side: /usr/bin/python3 bench_sample_torch.py (torch_mirror.UNet,
 * no_grad forward), started from here with the same batch and thread count.
 * Each figure is the median over WINDOWS timed windows after one warm-up;
 * also CPU ms per evaluation (user + system of all threads), which is less
 * sensitive to other load on a shared machine.
 *
 * Usage: bench_sample [batch] [threads]    (default 256, all cores; ~1-2 min)
 */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "sd/blas_core.h"
#include "sd/sampler.h"
#include "sd/score_model.h"
#include "sd/rng.h"
#include "sd/tensor.h"

#ifndef SD_BENCH_DIR
#define SD_BENCH_DIR "tools/bench"
#endif

enum { WINDOWS = 5, CALLS = 2, PC_STEPS = 4 };

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double cpu_s(void)
{
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    return (double)r.ru_utime.tv_sec + 1e-6 * r.ru_utime.tv_usec + (double)r.ru_stime.tv_sec +
           1e-6 * r.ru_stime.tv_usec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static int fail(const char *what)
{
    fprintf(stderr, "bench_sample: %s: %s\n", what, sd_error_message());
    return 1;
}

int main(int argc, char **argv)
{
    sd_blas_restart_if_generic(argv); /* the CLI's kernels (sd/blas_core.h) */
    int B = argc > 1 ? atoi(argv[1]) : 256;
    int threads = argc > 2 ? atoi(argv[2]) : 0;
    if (B < 1) B = 256;
    sd_threads_init(threads);
    threads = sd_threads_get();
    sd_sde sde;
    if (sd_sde_parse("ve", &sde) != SD_OK) return fail("sde");
    sd_model *m;
    if (sd_model_new_network("unet-28", NULL, 1, 28, 28, &sde, &m) != SD_OK) return fail("model");
    sd_model_init(m, 0);
    sd_graph *g = sd_graph_new();
    size_t D = m->D;
    float *x = malloc((size_t)B * D * sizeof(float)), *s = malloc((size_t)B * D * sizeof(float));
    if (!g || !x || !s) return fail("allocation");
    sd_rng r;
    sd_rng_init(&r, 1, SD_STREAM_NOISE);
    sd_rng_fill_normal(&r, x, (size_t)B * D, 0.0f, 1.0f);

    /* 1. raw score evaluations */
    if (sd_model_score(m, g, x, (size_t)B, 0.5, s) != SD_OK) return fail("score");
    double rate[WINDOWS], cpu[WINDOWS];
    for (int w = 0; w < WINDOWS; w++) {
        double c0 = cpu_s(), t0 = now_s();
        for (int c = 0; c < CALLS; c++)
            if (sd_model_score(m, g, x, (size_t)B, 0.1 + 0.2 * c, s) != SD_OK) return fail("score");
        double dt = now_s() - t0;
        rate[w] = CALLS * B / dt;
        cpu[w] = 1e3 * (cpu_s() - c0) / (CALLS * B);
    }
    double sd_rate = median(rate, WINDOWS), sd_cpu = median(cpu, WINDOWS);
    printf("scorediff score    batch %d threads %d: %8.1f evals/s  %.3f cpu ms/eval  (arena %.0f "
           "MiB)\n", B, threads, sd_rate, sd_cpu, sd_graph_arena_bytes(g) / 1048576.0);
    fflush(stdout);

    /* 2. inside a sampler: PC reverse diffusion, PC_STEPS steps */
    sd_scorer sc;
    if (sd_scorer_from_model(m, &sc) != SD_OK) return fail("scorer");
    sd_sampler_opts o = sd_sampler_defaults(SD_SAMPLER_PC);
    o.corrector = false;
    o.steps = PC_STEPS;
    o.batch = (size_t)B;
    double srate[WINDOWS], scpu[WINDOWS];
    for (int w = 0; w < WINDOWS; w++) {
        sd_sample_stats st;
        double c0 = cpu_s();
        o.seed = (uint64_t)w;
        if (sd_sample(&sc, &o, (size_t)B, x, &st) != SD_OK) return fail("sampler");
        srate[w] = (double)st.points / st.seconds;
        scpu[w] = 1e3 * (cpu_s() - c0) / (double)st.points;
    }
    double smp_rate = median(srate, WINDOWS), smp_cpu = median(scpu, WINDOWS);
    printf("scorediff sampler  batch %d threads %d: %8.1f evals/s  %.3f cpu ms/eval  (pc, %d "
           "steps)\n", B, threads, smp_rate, smp_cpu, PC_STEPS);
    fflush(stdout);
    sd_scorer_release(&sc);

    /* 3. PyTorch in the same run */
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=%d /usr/bin/python3 %s/bench_sample_torch.py "
             "--batch %d --threads %d --windows %d --calls %d",
             threads, SD_BENCH_DIR, B, threads, WINDOWS, CALLS);
    FILE *p = popen(cmd, "r");
    double t_rate = NAN, t_cpu = NAN;
    char line[512];
    while (p && fgets(line, sizeof line, p)) {
        const char *a = strstr(line, "evals_per_s="), *c = strstr(line, "cpu_ms_per_eval=");
        if (strncmp(line, "RESULT", 6) == 0 && a && c) {
            t_rate = atof(a + 12);
            t_cpu = atof(c + 16);
        }
    }
    int prc = p ? pclose(p) : -1;
    if (prc != 0 || !isfinite(t_rate)) {
        fprintf(stderr, "bench_sample: the PyTorch side failed (%s)\n", cmd);
    } else {
        printf("pytorch forward    batch %d threads %d: %8.1f evals/s  %.3f cpu ms/eval\n", B,
               threads, t_rate, t_cpu);
        printf("ratio scorediff/pytorch: score %.2f, in sampler %.2f  (target >= 1)\n",
               sd_rate / t_rate, smp_rate / t_rate);
    }
    free(x);
    free(s);
    sd_graph_free(g);
    sd_model_free(m);
    return 0;
}
