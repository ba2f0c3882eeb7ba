/* bench_conv.c - sd_conv2d speed on every convolution shape of unet-28.
 *
 * For each distinct shape, at batch 64, with 1 and 2 OpenMP threads:
 *   fwd   sd_conv2d forward, GFLOP/s (2 * N * Cout * Ho*Wo * Cin*K*K flops)
 *   bwd   its backward computing dx and dw (twice the forward flops; the
 *         small db reduction is included in the time but not in the count)
 *   sgemm one cblas_sgemm of the equivalent forward GEMM over the whole
 *         batch, M = Cout, N = B*Ho*Wo, K = Cin*K*K, on a prebuilt column
 *         matrix (no im2col), OpenBLAS with the same number of threads
 * and the ratios fwd/sgemm and bwd/sgemm (target: >= 0.70). Each figure is the
 * fastest of MIN_REPS..MAX_REPS timed runs after one warm-up: on a shared or virtualised
 * machine other work only ever adds time, and the median of 5 moved the
 * sgemm reference by +-30% between runs here; the minimum is what each code
 * can do, measured the same way on both sides. The last rows weight every
 * shape by how often unet-28 uses it (its share of a training step's convs).
 *
 * Usage: bench_conv [--cpu] [--only TEXT] [--rounds R] [batch]   (default 64; ~3 minutes)
 *   --only TEXT  just the shapes whose description contains TEXT
 *   --rounds R   measure every shape R times (default 1), interleaved with the
 *                other shapes, and keep the fastest conv and the fastest sgemm
 *                over the rounds: a slow phase of a shared host (seconds long,
 *                longer than one shape's runs) then spoils at most one round
 *   --cpu  one thread only, timed by process CPU time instead of the wall
 *          clock: on a machine shared with other jobs the wall clock of a
 *          thread that is descheduled counts the other jobs' time too, and
 *          2-thread runs are then meaningless. A load average above 1 is
 *          reported before the table.
 */
#include <cblas.h>
#include <omp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sd/blas_core.h"
#include "sd/ops.h"

/* Timed runs per figure: at least MIN_REPS, and more (up to MAX_REPS) until
 * the loop has run for MIN_SECONDS, so that small shapes get enough tries
 * for their fastest run to be the machine's, not the neighbours'. */
#define MIN_REPS 9
#define MAX_REPS 80
#define MIN_SECONDS 0.5

/* Distinct convolutions of unet-28 (shared/reference-model.md: ch 32,
 * mult (1,2,2), 2 ResBlocks per level, input 1x28x28, Down = 3x3 stride 2,
 * Up = nearest x2 then 3x3). Channels through the network:
 *   encoder  conv_in 1->32 @28; L0: 2 x RB(32,32) @28, Down 32 @28->14;
 *            L1: RB(32,64), RB(64,64) @14, Down 64 @14->7; L2: 2 x RB(64,64) @7
 *            skips pushed: 32@28 x3, 32@14, 64@14 x2, 64@7 x3
 *   middle   2 x RB(64,64) @7
 *   decoder  L2: 3 x RB(64+64 -> 64) @7, Up 64 @14
 *            L1: 2 x RB(64+64 -> 64) @14, RB(64+32 -> 64) @14, Up 64 @28
 *            L0: RB(64+32 -> 32), 2 x RB(32+32 -> 32) @28
 *   output   32->1 @28
 * RB(a,b) = conv3x3 a->b, conv3x3 b->b, plus a 1x1 a->b skip when a != b. */
typedef struct shape {
    const char *what;
    int cin, cout, k, stride, pad, hw, count;
} shape;

static const shape shapes[] = {
    {"conv_in", 1, 32, 3, 1, 1, 28, 1},
    {"RB 32 @28 (enc 4, dec 3)", 32, 32, 3, 1, 1, 28, 7},
    {"Down 32 @28->14", 32, 32, 3, 2, 1, 28, 1},
    {"RB(32,64) conv1 @14", 32, 64, 3, 1, 1, 14, 1},
    {"skip 32->64 @14", 32, 64, 1, 1, 0, 14, 1},
    {"64->64 @14 (enc 3, dec 3, Up)", 64, 64, 3, 1, 1, 14, 7},
    {"Down 64 @14->7", 64, 64, 3, 2, 1, 14, 1},
    {"64->64 @7 (enc 4, mid 4, dec 3)", 64, 64, 3, 1, 1, 7, 11},
    {"dec RB(128,64) conv1 @7", 128, 64, 3, 1, 1, 7, 3},
    {"dec skip 128->64 @7", 128, 64, 1, 1, 0, 7, 3},
    {"dec RB(128,64) conv1 @14", 128, 64, 3, 1, 1, 14, 2},
    {"dec skip 128->64 @14", 128, 64, 1, 1, 0, 14, 2},
    {"dec RB(96,64) conv1 @14", 96, 64, 3, 1, 1, 14, 1},
    {"dec skip 96->64 @14", 96, 64, 1, 1, 0, 14, 1},
    {"Up conv 64 @28", 64, 64, 3, 1, 1, 28, 1},
    {"dec RB(96,32) conv1 @28", 96, 32, 3, 1, 1, 28, 1},
    {"dec skip 96->32 @28", 96, 32, 1, 1, 0, 28, 1},
    {"dec RB(64,32) conv1 @28", 64, 32, 3, 1, 1, 28, 2},
    {"dec skip 64->32 @28", 64, 32, 1, 1, 0, 28, 2},
    {"conv_out 32->1 @28", 32, 1, 3, 1, 1, 28, 1},
};
#define N_SHAPES ((int)(sizeof shapes / sizeof shapes[0]))

static bool use_cpu_time;

static double now(void)
{
    struct timespec ts;
    clock_gettime(use_cpu_time ? CLOCK_PROCESS_CPUTIME_ID : CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Idle worker threads spin before they sleep: OpenBLAS's for about 2^28
 * cycles (~0.1 s) after each call, OpenMP's for GOMP_SPINCOUNT. Timing one
 * pool while the other still spins on the same two cores measured the
 * spinning, not the code (2-thread figures off by up to 40%), so each timed
 * loop starts after a pause longer than both. */
static void settle(void)
{
    struct timespec pause = {0, 300 * 1000 * 1000};
    nanosleep(&pause, NULL);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double fastest(double *t, int n)
{
    qsort(t, (size_t)n, sizeof *t, cmp_double);
    return t[0];
}

static float *random_floats(size_t n, unsigned *seed)
{
    float *p = malloc(n * sizeof *p);
    if (!p) {
        fprintf(stderr, "bench_conv: out of memory\n");
        exit(EXIT_FAILURE);
    }
    for (size_t i = 0; i < n; i++) {
        *seed = *seed * 1664525u + 1013904223u;
        p[i] = (float)(*seed >> 8) / (float)(1u << 24) - 0.5f;
    }
    return p;
}

typedef struct result {
    double fwd, bwd, gemm; /* seconds (fastest run) */
    double flops;          /* forward flops */
} result;

static result run_shape(const shape *s, int batch, int threads)
{
    unsigned seed = 12345;
    int ho = (s->hw + 2 * s->pad - s->k) / s->stride + 1;
    size_t nx = (size_t)batch * s->cin * s->hw * s->hw, nw = (size_t)s->cout * s->cin * s->k * s->k;
    size_t ny = (size_t)batch * s->cout * ho * ho;
    int M = s->cout, N = batch * ho * ho, K = s->cin * s->k * s->k;
    float *x = random_floats(nx, &seed), *w = random_floats(nw, &seed),
          *b = random_floats(s->cout, &seed);
    float *dy = random_floats(ny, &seed);
    float *dx = calloc(nx, sizeof(float)), *dw = calloc(nw, sizeof(float)),
          *db = calloc((size_t)s->cout, sizeof(float));
    float *colm = random_floats((size_t)K * N, &seed), *out = malloc((size_t)M * N * sizeof(float));
    sd_graph *g = sd_graph_new();
    if (!dx || !dw || !db || !out || !g) {
        fprintf(stderr, "bench_conv: out of memory\n");
        exit(EXIT_FAILURE);
    }
    omp_set_num_threads(threads);
    double tf[MAX_REPS], tb[MAX_REPS], tg[MAX_REPS];
    int nconv = 0, ngemm = 0;
    settle();
    double start = now();
    for (int r = -1; r < MAX_REPS && (r < MIN_REPS || now() - start < MIN_SECONDS); r++) {
        sd_graph_reset(g);
        sd_tensor *tx = sd_tensor_wrap(g, 4, (int[]){batch, s->cin, s->hw, s->hw}, x, dx);
        sd_tensor *tw = sd_tensor_wrap(g, 4, (int[]){s->cout, s->cin, s->k, s->k}, w, dw);
        sd_tensor *tb_ = sd_tensor_wrap(g, 1, (int[]){s->cout}, b, db);
        double t0 = now();
        sd_tensor *y = sd_conv2d(g, tx, tw, tb_, s->stride, s->pad);
        double t1 = now();
        if (!y || !y->backward) {
            fprintf(stderr, "bench_conv: %s: %s\n", s->what, sd_error_message());
            exit(EXIT_FAILURE);
        }
        /* Time the op's backward alone (not the tape walk or grad zeroing). */
        y->grad = dy;
        sd_status st = y->backward(g, y);
        double t2 = now();
        if (st != SD_OK) {
            fprintf(stderr, "bench_conv: %s backward: %s\n", s->what, sd_error_message());
            exit(EXIT_FAILURE);
        }
        if (r >= 0) {
            tf[r] = t1 - t0;
            tb[r] = t2 - t1;
            nconv = r + 1;
        } else {
            start = now();
        }
    }
    /* The sgemm reference runs in its own loop: OpenBLAS's worker threads
     * keep spinning for a while after a call (and OpenMP's after a region),
     * so interleaving the two pools lets each steal the other's cores, which
     * can make small shapes (conv_in) look slower with 2 threads. */
    openblas_set_num_threads(threads);
    settle();
    start = now();
    for (int r = -1; r < MAX_REPS && (r < MIN_REPS || now() - start < MIN_SECONDS); r++) {
        double t3 = now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, w, K, colm, N, 0.0f,
                    out, N);
        double t4 = now();
        if (r >= 0) {
            tg[r] = t4 - t3;
            ngemm = r + 1;
        } else {
            start = now();
        }
    }
    openblas_set_num_threads(1);
    result res = {fastest(tf, nconv), fastest(tb, nconv), fastest(tg, ngemm), 2.0 * M * (double)N * K};
    sd_graph_free(g);
    free(x), free(w), free(b), free(dy), free(dx), free(dw), free(db), free(colm), free(out);
    return res;
}

int main(int argc, char **argv)
{
    /* The kernels the scorediff CLI would run (sd/blas_core.h). */
    sd_blas_restart_if_generic(argv);
    int arg = 1;
    const char *only = NULL;
    int rounds = 1;
    for (; arg < argc && argv[arg][0] == '-'; arg++) {
        if (strcmp(argv[arg], "--cpu") == 0) {
            use_cpu_time = true;
        } else if (strcmp(argv[arg], "--only") == 0 && arg + 1 < argc) {
            only = argv[++arg];
        } else if (strcmp(argv[arg], "--rounds") == 0 && arg + 1 < argc && atoi(argv[arg + 1]) >= 1) {
            rounds = atoi(argv[++arg]);
        } else {
            fprintf(stderr, "usage: bench_conv [--cpu] [--only TEXT] [--rounds R] [batch >= 1]\n");
            return EXIT_FAILURE;
        }
    }
    int batch = arg < argc ? atoi(argv[arg]) : 64;
    if (batch < 1) {
        fprintf(stderr, "usage: bench_conv [--cpu] [--only TEXT] [--rounds R] [batch >= 1]\n");
        return EXIT_FAILURE;
    }
    int max_thr = use_cpu_time ? 1 : 2;
    sd_threads_init(2);
    double load[1];
    if (getloadavg(load, 1) == 1 && load[0] > 1.0)
        printf("note: load average %.1f on %d cores: other jobs share the machine%s\n", load[0],
               omp_get_num_procs(), use_cpu_time ? "" : " (try --cpu)");
    char blas[256];
    sd_blas_describe(blas, sizeof blas);
    printf("BLAS: %s\n", blas);
    printf("sd_conv2d vs one whole-batch cblas_sgemm, batch %d, GFLOP/s (fastest of >= %d runs, >= %.1f s each, "
           "%d round(s), %s)\n",
           batch, MIN_REPS, MIN_SECONDS, rounds, use_cpu_time ? "CPU time" : "wall clock");
    printf("%-32s %-20s %3s %3s %7s %7s %7s %6s %6s\n", "shape", "Cin>Cout KxK/s @HW", "n", "thr",
           "fwd", "bwd", "sgemm", "f/sg", "b/sg");
    double tot[3][3] = {{0}}; /* [threads][fwd, bwd, gemm] seconds weighted by count */
    double tot_flops = 0.0;
    static result best[N_SHAPES][3];
    for (int round = 0; round < rounds; round++)
        for (int i = 0; i < N_SHAPES; i++) {
            if (only && !strstr(shapes[i].what, only)) continue;
            for (int thr = 1; thr <= max_thr; thr++) {
                result r = run_shape(&shapes[i], batch, thr);
                result *b = &best[i][thr];
                if (round == 0) {
                    *b = r;
                } else {
                    if (r.fwd < b->fwd) b->fwd = r.fwd;
                    if (r.bwd < b->bwd) b->bwd = r.bwd;
                    if (r.gemm < b->gemm) b->gemm = r.gemm;
                }
            }
            if (rounds > 1) fprintf(stderr, "round %d/%d: %s\n", round + 1, rounds, shapes[i].what);
        }
    for (int i = 0; i < N_SHAPES; i++) {
        const shape *s = &shapes[i];
        if (only && !strstr(s->what, only)) continue;
        for (int thr = 1; thr <= max_thr; thr++) {
            result r = best[i][thr];
            char geo[32];
            snprintf(geo, sizeof geo, "%d>%d %dx%d/%d @%d", s->cin, s->cout, s->k, s->k, s->stride,
                     s->hw);
            double gf = r.flops * 1e-9;
            printf("%-32s %-20s %3d %3d %7.1f %7.1f %7.1f %6.2f %6.2f\n", s->what, geo, s->count,
                   thr, gf / r.fwd, 2 * gf / r.bwd, gf / r.gemm, r.gemm / r.fwd,
                   2 * r.gemm / r.bwd);
            tot[thr][0] += s->count * r.fwd;
            tot[thr][1] += s->count * r.bwd;
            tot[thr][2] += s->count * r.gemm;
            if (thr == 1) tot_flops += s->count * r.flops;
        }
    }
    for (int thr = 1; thr <= max_thr; thr++) {
        double gf = tot_flops * 1e-9;
        printf("%-32s %-20s %3s %3d %7.1f %7.1f %7.1f %6.2f %6.2f\n", "unet-28 weighted total", "",
               "", thr, gf / tot[thr][0], 2 * gf / tot[thr][1], gf / tot[thr][2],
               tot[thr][2] / tot[thr][0], 2 * tot[thr][2] / tot[thr][1]);
        printf("  %d thread(s): one step's convs take fwd %.1f ms, bwd %.1f ms\n", thr,
               1e3 * tot[thr][0], 1e3 * tot[thr][1]);
    }
    return EXIT_SUCCESS;
}
