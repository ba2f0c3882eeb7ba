/* bench_train.c - unet-28 training speed and memory: images/s and peak RSS of
 * the real training step (sd_trainer_step: DSM loss under the default VE
 * family, backward, clipping, Adam, EMA), the figures issue #3 compares with
 * the PyTorch mirror (bench_train_torch.py; run_bench_train.sh runs both).
 *
 * Usage
 *   bench_train [batch...]        re-exec itself once per batch size (default
 *                                 64 128) so each peak RSS is its own process's,
 *                                 and print a table
 *   bench_train --run B           one measurement in this process; prints a
 *                                 "RESULT key=value ..." line (parsed by the
 *                                 table mode and by run_bench_train.sh)
 *   bench_train --breakdown B     where one step's time and arena go, op by op
 *                                 (backward replayed node by node; see below)
 * Environment: BENCH_WARMUP (2), BENCH_WINDOWS (5), BENCH_STEPS (2) steps per
 * window; OMP_NUM_THREADS sets the thread count (sd_threads_init(0)).
 *
 * Timing: BENCH_WARMUP untimed steps (the first one grows and consolidates
 * the arena), then BENCH_WINDOWS windows of BENCH_STEPS steps; images/s is
 * the median over windows (min and max printed too: the machine may be
 * shared). Data: one fixed batch of uniform [0, 1) pixels [B, 1, 28, 28]; the
 * times and the noise are drawn per step by the trainer as in real training.
 *
 * Peak RSS: VmHWM of /proc/self/status (getrusage ru_maxrss if unavailable),
 * the high-water mark of the whole process including the parameters, Adam's
 * moments, the EMA and the arena. The arena size is sd_graph_arena_bytes.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "sd/score_model.h"
#include "sd/blas_core.h"
#include "sd/ops.h"
#include "sd/rng.h"
#include "sd/trainer.h"
#include "core/graph_internal.h"

#define MIB (1024.0 * 1024.0)
#define MAX_WINDOWS 64

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Arena bytes held (or peak in use) by the trainer's graph and, when the
 * step is sharded over threads (trainer.h), by every shard's graph. */
static double arena_total(const sd_trainer *t, bool peak)
{
    double sum = (double)(peak ? sd_graph_arena_peak(t->graph) : sd_graph_arena_bytes(t->graph));
    for (int k = 0; k < t->n_shards; k++)
        sum += (double)(peak ? sd_graph_arena_peak(t->shard_graph[k])
                             : sd_graph_arena_bytes(t->shard_graph[k]));
    return sum;
}

/* User + system CPU seconds of this process (all threads). */
static double cpu_seconds(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return 0.0;
    return (double)ru.ru_utime.tv_sec + 1e-6 * (double)ru.ru_utime.tv_usec +
           (double)ru.ru_stime.tv_sec + 1e-6 * (double)ru.ru_stime.tv_usec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int env_int(const char *name, int def, int lo, int hi)
{
    const char *s = getenv(name);
    if (!s || !*s) return def;
    int v = atoi(s);
    return v < lo ? lo : v > hi ? hi : v;
}

/* VmHWM / VmRSS of this process in bytes (key "VmHWM:" or "VmRSS:"); falls
 * back to ru_maxrss (KiB on Linux) for the peak. */
static double proc_status_bytes(const char *key)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    double v = -1.0;
    size_t kl = strlen(key);
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, key, kl) == 0) v = 1024.0 * atof(line + kl);
    if (f) fclose(f);
    if (v < 0 && strcmp(key, "VmHWM:") == 0) {
        struct rusage ru;
        if (getrusage(RUSAGE_SELF, &ru) == 0) v = 1024.0 * (double)ru.ru_maxrss;
    }
    return v;
}

typedef struct bench {
    sd_model *model;
    sd_trainer *trainer;
    float *x0;
    int B;
} bench;

static int bench_open(bench *b, int B)
{
    memset(b, 0, sizeof *b);
    b->B = B;
    sd_sde sde;
    sd_train_config cfg;
    sd_rng data;
    if (sd_sde_parse("ve", &sde) != SD_OK ||
        sd_model_new_network("unet-28", NULL, 1, 28, 28, &sde, &b->model) != SD_OK)
        goto fail;
    sd_model_init(b->model, 1);
    cfg = sd_train_config_default(&sde, 100000, 1);
    if (sd_trainer_new(b->model, &cfg, &b->trainer) != SD_OK) goto fail;
    b->x0 = sd_malloc((size_t)B * b->model->D * sizeof(float));
    if (!b->x0) goto fail;
    sd_rng_init(&data, 1, SD_STREAM_DATA);
    sd_rng_fill_uniform(&data, b->x0, (size_t)B * b->model->D);
    return 0;
fail:
    fprintf(stderr, "bench_train: setup failed: %s\n", sd_error_message());
    return -1;
}

static void bench_close(bench *b)
{
    sd_trainer_free(b->trainer);
    sd_model_free(b->model);
    sd_free(b->x0);
}

static int step(bench *b)
{
    if (sd_trainer_step(b->trainer, b->x0, b->B) != SD_OK) {
        fprintf(stderr, "bench_train: step failed: %s\n", sd_error_message());
        return -1;
    }
    return 0;
}

/* --run B: one measurement, one RESULT line. */
static int run_one(int B)
{
    int warm = env_int("BENCH_WARMUP", 2, 1, 1000), nw = env_int("BENCH_WINDOWS", 5, 1, MAX_WINDOWS);
    int ns = env_int("BENCH_STEPS", 2, 1, 1000);
    bench b;
    if (bench_open(&b, B)) return 1;
    double rss0 = proc_status_bytes("VmRSS:");
    for (int i = 0; i < warm; i++)
        if (step(&b)) return 1;
    /* For profilers attaching to the steady state (perf record -p). */
    fprintf(stderr, "bench_train: warm-up done (pid %ld)\n", (long)getpid());
    double ips[MAX_WINDOWS], cpu0 = cpu_seconds();
    for (int w = 0; w < nw; w++) {
        double t0 = now();
        for (int i = 0; i < ns; i++)
            if (step(&b)) return 1;
        ips[w] = (double)ns * B / (now() - t0);
    }
    double cpu_ms = 1e3 * (cpu_seconds() - cpu0) / ((double)nw * ns * B);
    qsort(ips, (size_t)nw, sizeof ips[0], cmp_double);
    double peak = proc_status_bytes("VmHWM:");
    printf("RESULT impl=scorediff batch=%d img_s=%.2f img_s_min=%.2f img_s_max=%.2f "
           "cpu_ms_img=%.2f peak_rss_mib=%.1f base_rss_mib=%.1f arena_mib=%.1f arena_peak_mib=%.1f params=%zu threads=%d "
           "loss=%.4g blas=%s\n",
           B, ips[nw / 2], ips[0], ips[nw - 1], cpu_ms, peak / MIB, rss0 / MIB,
           arena_total(b.trainer, false) / MIB, arena_total(b.trainer, true) / MIB,
           sd_params_trainable_count(b.model->params), sd_threads_get(),
           (double)b.trainer->last_loss, sd_blas_core());
    bench_close(&b);
    return 0;
}

/* ---- breakdown ------------------------------------------------------------
 * After a normal step, one more step is run by hand from the public pieces
 * sd_trainer_step uses (objective, backward, clip, Adam, EMA), timing each
 * phase. Its graph is then walked from the loss through src[] pointers:
 * every node's output and (if recorded) gradient is attributed to its op.
 * Arena scratch is found from addresses: after consolidation the arena is
 * one chunk, allocated in order, so the gap after an op's output data up to
 * the next tensor is that op's forward scratch (conv columns, norm stats).
 * Backward is replayed node by node in creation (= address) order, exactly
 * as sd_graph_backward does (zero every recorded node's gradient, seed the
 * loss with 1, call each backward in reverse), so each node's backward time
 * and backward scratch (arena growth during its call) are measured too. */

typedef struct node {
    sd_tensor *t;
    double bwd_s;
    size_t fwd_scratch, bwd_scratch;
} node;

typedef struct op_row {
    const char *op;
    int count, recorded;
    double out_b, grad_b, fscr_b, bscr_b, bwd_s;
} op_row;

static size_t align64(size_t n) { return (n + 63) & ~(size_t)63; }

/* Addresses compared as integers (relational comparison of pointers into
 * different objects is undefined in C). */
static uintptr_t addr(const void *p) { return (uintptr_t)p; }

static int cmp_node_addr(const void *a, const void *b)
{
    uintptr_t x = addr(((const node *)a)->t), y = addr(((const node *)b)->t);
    return (x > y) - (x < y);
}


/* Collect every tensor reachable from `root` (iterative DFS, linear dedup:
 * a unet-28 graph has a few hundred nodes). */
static int collect(sd_tensor *root, node **out, size_t *n_out)
{
    size_t cap = 1024, n = 0, sp = 0;
    node *v = sd_calloc(cap, sizeof *v);
    sd_tensor **stack = sd_calloc(cap * SD_MAX_SRC, sizeof *stack);
    if (!v || !stack) {
        sd_free(v);
        sd_free(stack);
        return -1;
    }
    stack[sp++] = root;
    while (sp) {
        sd_tensor *t = stack[--sp];
        bool seen = false;
        for (size_t i = 0; i < n && !seen; i++) seen = v[i].t == t;
        if (seen) continue;
        if (n == cap) {
            sd_free(v);
            sd_free(stack);
            return -1;
        }
        v[n++].t = t;
        for (int i = 0; i < SD_MAX_SRC; i++)
            if (t->src[i] && sp < cap * SD_MAX_SRC) stack[sp++] = t->src[i];
    }
    sd_free(stack);
    *out = v;
    *n_out = n;
    return 0;
}

static bool in_arena(const void *p, const char *lo, const char *hi)
{
    return addr(p) >= addr(lo) && addr(p) < addr(hi);
}

static op_row *row_of(op_row *rows, int *nr, const char *op)
{
    for (int i = 0; i < *nr; i++)
        if (strcmp(rows[i].op, op) == 0) return &rows[i];
    memset(&rows[*nr], 0, sizeof rows[0]);
    rows[*nr].op = op;
    return &rows[(*nr)++];
}

/* What-if: the arena peak if gradient buffers lived only from the first
 * backward that writes them (the node's last consumer in creation order) to
 * the end of the node's own backward (then recycled), and, further, if each
 * node's output were also released once its own backward has run (all its
 * consumers ran theirs before). Nodes are in creation order; views share
 * their source's data and count nothing. */
static size_t node_index(const node *v, size_t n, const sd_tensor *t)
{
    size_t a = 0, b = n;
    while (a < b) {
        size_t m = (a + b) / 2;
        if (addr(v[m].t) < addr(t)) a = m + 1;
        else b = m;
    }
    return a < n && v[a].t == t ? a : n;
}

static void liveness(const node *v, size_t n, const char *lo, const char *fwd_end)
{
    size_t *first = sd_calloc(n, sizeof *first);
    double *act = sd_calloc(n + 1, sizeof *act);
    if (!first || !act) {
        sd_free(first);
        sd_free(act);
        return;
    }
    for (size_t j = 0; j < n; j++) first[j] = j;
    for (size_t j = 0; j < n; j++) {
        if (!v[j].t->backward) continue;
        for (int i = 0; i < SD_MAX_SRC; i++) {
            size_t s = v[j].t->src[i] ? node_index(v, n, v[j].t->src[i]) : n;
            if (s < n && j > first[s]) first[s] = j;
        }
    }
    /* act[k]: output bytes of nodes created before k (arena, not views). */
    double fixed = 0.0;
    for (size_t k = 0; k < n; k++) {
        const sd_tensor *t = v[k].t;
        bool view = false;
        for (int i = 0; i < SD_MAX_SRC; i++)
            if (t->src[i] && t->src[i]->data == t->data) view = true;
        double bytes = in_arena(t->data, lo, fwd_end) && !view ? (double)t->numel * 4.0 : 0.0;
        if (!t->backward) {
            fixed += bytes; /* leaves (x_t, target, ...) live for the whole step */
            bytes = 0.0;
        }
        act[k + 1] = act[k] + bytes;
    }
    /* Outputs some backward actually reads (its consumers' or its own; by
     * op, from lib/ops_*.c): the rest are dead once their consumers' forward
     * ran, and exist only because ops are not fused. Conservative for the
     * ops whose backward may read their own output (silu, div). */
    double needed = 0.0, dead = 0.0, dead_by[8] = {0};
    static const char *const dead_ops[8] = {"conv2d", "add", "scale", "concat_channels",
                                            "upsample2x", "group_norm_silu", "linear", NULL};
    for (size_t k = 0; k < n; k++) {
        const sd_tensor *t = v[k].t;
        if (!t->backward || act[k + 1] == act[k]) continue;
        bool read = t->op && (strcmp(t->op, "silu") == 0 || strcmp(t->op, "div") == 0);
        for (size_t j = k + 1; j < n && !read; j++) {
            const sd_tensor *c = v[j].t;
            if (!c->backward || !c->op) continue;
            for (int i = 0; i < SD_MAX_SRC; i++) {
                if (c->src[i] != t) continue;
                if ((i == 0 && (strcmp(c->op, "conv2d") == 0 || strcmp(c->op, "linear") == 0 ||
                                strcmp(c->op, "group_norm_silu") == 0)) ||
                    strcmp(c->op, "mul") == 0 || strcmp(c->op, "div") == 0 ||
                    strcmp(c->op, "silu") == 0 || strcmp(c->op, "sq_norm") == 0 ||
                    strcmp(c->op, "reshape") == 0)
                    read = true;
            }
        }
        if (read) needed += (double)t->numel * 4.0;
        else {
            dead += (double)t->numel * 4.0;
            int o = 0;
            while (dead_ops[o] && (!t->op || strcmp(dead_ops[o], t->op) != 0)) o++;
            dead_by[o] += (double)t->numel * 4.0;
        }
    }
    printf("\nrecorded outputs read by some backward: %.1f MiB; never read by a backward "
           "(fusable): %.1f MiB =", needed / MIB, dead / MIB);
    for (int o = 0; o < 8; o++)
        if (dead_by[o] > 0) printf(" %s %.1f", dead_ops[o] ? dead_ops[o] : "other", dead_by[o] / MIB);
    printf("\n");
    double peak_g = 0.0, peak_both = 0.0, all_g = 0.0;
    for (size_t k = n; k-- > 0;) {
        if (!v[k].t->backward) continue;
        double live = 0.0;
        for (size_t i = 0; i <= k; i++)
            if (v[i].t->backward && first[i] >= k) live += (double)v[i].t->numel * 4.0;
        if (live > peak_g) peak_g = live;
        double both = fixed + act[k + 1] + live;
        if (both > peak_both) peak_both = both;
    }
    for (size_t k = 0; k < n; k++)
        if (v[k].t->backward) all_g += (double)v[k].t->numel * 4.0;
    printf("what-if (outputs + gradients, no scratch): now %.1f MiB (outputs %.1f + grads "
           "%.1f);\n  grads recycled after their node's backward: peak live grads %.1f MiB "
           "-> total %.1f MiB;\n  and outputs released after their node's backward too: "
           "peak %.1f MiB\n",
           (fixed + act[n] + all_g) / MIB, (fixed + act[n]) / MIB, all_g / MIB, peak_g / MIB,
           (fixed + act[n] + peak_g) / MIB, peak_both / MIB);
    sd_free(first);
    sd_free(act);
}

static int breakdown(int B)
{
    bench b;
    if (bench_open(&b, B)) return 1;
    sd_trainer *tr = b.trainer;
    sd_graph *g = tr->graph;
    sd_params *p = b.model->params;
    const int reps = env_int("BENCH_WINDOWS", 3, 1, 32);
    /* Two real steps: the arena grows, then is one consolidated chunk. */
    if (step(&b) || step(&b)) return 1;
    const size_t arena0 = sd_graph_arena_bytes(g); /* one consolidated chunk */
    double ph[5][32];
    node *nodes = NULL;
    size_t nn = 0;
    char *lo = NULL, *fwd_end = NULL, *grad_end = NULL;
    double zero_s = 0.0, replay_diff = -1.0;
    /* The replay must reproduce sd_graph_backward: the last step is first run
     * the normal way and its parameter gradients kept for comparison. */
    float *ref_grad = sd_malloc(p->total * sizeof(float));
    float *replay_grads = NULL;
    if (!ref_grad) return 1;
    for (int r = 0; r < reps; r++) {
        sd_rng trng, nrng;
        if (r == reps - 1) {
            sd_rng_split(&tr->time_base, (uint64_t)tr->step, &trng);
            sd_rng_split(&tr->noise_base, (uint64_t)tr->step, &nrng);
            sd_graph_reset(g);
            sd_params_zero_grad(p);
            sd_tensor *l = sd_objective_loss(&tr->cfg.objective, b.model, g, b.x0, B, &trng,
                                             &nrng, NULL);
            if (!l || sd_graph_backward(g, l, NULL) != SD_OK) return 1;
            memcpy(ref_grad, p->grad, p->total * sizeof(float));
        }
        sd_rng_split(&tr->time_base, (uint64_t)tr->step, &trng);
        sd_rng_split(&tr->noise_base, (uint64_t)tr->step, &nrng);
        double t0 = now();
        sd_graph_reset(g);
        sd_params_zero_grad(p);
        lo = sd_graph_alloc(g, 64); /* probe: start of this step's arena */
        sd_tensor *loss = sd_objective_loss(&tr->cfg.objective, b.model, g, b.x0, B, &trng,
                                            &nrng, NULL);
        if (!loss) {
            fprintf(stderr, "bench_train: forward failed: %s\n", sd_error_message());
            return 1;
        }
        fwd_end = sd_graph_alloc(g, 64);
        double t1 = now();
        bool last = r == reps - 1;
        if (!last) {
            if (sd_graph_backward(g, loss, NULL) != SD_OK) return 1;
        } else {
            /* Replay sd_graph_backward node by node (see the comment above). */
            if (collect(loss, &nodes, &nn)) return 1;
            qsort(nodes, nn, sizeof *nodes, cmp_node_addr);
            /* All gradients at once, outside the arena (which sd_graph_backward
             * sized for recycled gradients); backward scratch is rewound after
             * each node as sd_graph_backward does. */
            size_t all_grad = 0;
            for (size_t k = 0; k < nn; k++)
                if (nodes[k].t->backward) all_grad += nodes[k].t->numel;
            sd_free(replay_grads);
            replay_grads = sd_malloc((all_grad ? all_grad : 1) * sizeof(float));
            if (!replay_grads) return 1;
            double z0 = now();
            for (size_t k = 0, off = 0; k < nn; k++) {
                sd_tensor *t = nodes[k].t;
                if (!t->backward) continue;
                t->grad = replay_grads + off;
                off += t->numel;
                memset(t->grad, 0, t->numel * sizeof(float));
            }
            loss->grad[0] = 1.0f;
            zero_s = now() - z0;
            grad_end = sd_graph_alloc(g, 64);
            for (size_t k = nn; k-- > 0;) {
                sd_tensor *t = nodes[k].t;
                if (!t->backward) continue;
                sd_arena_mark mark = sd__arena_mark(g);
                char *a0 = sd_graph_alloc(g, 64);
                double s0 = now();
                if (t->backward(g, t) != SD_OK) return 1;
                nodes[k].bwd_s = now() - s0;
                char *a1 = sd_graph_alloc(g, 64);
                nodes[k].bwd_scratch = (size_t)(addr(a1) - addr(a0)) - 64;
                sd__arena_rewind(g, mark);
            }
        }
        double t2 = now();
        if (last) {
            double md = 0.0, mg = 0.0;
            for (size_t i = 0; i < p->total; i++) {
                double d = fabs((double)p->grad[i] - (double)ref_grad[i]);
                md = d > md ? d : md;
                mg = fabs((double)ref_grad[i]) > mg ? fabs((double)ref_grad[i]) : mg;
            }
            replay_diff = md / (mg > 0 ? mg : 1.0);
        }
        float norm = sd_clip_grad_norm(p->grad, p->total, tr->cfg.clip);
        double t3 = now();
        sd_optimizer_step(tr->opt, p->data, p->grad, tr->cfg.lr);
        double t4 = now();
        sd_ema_update(tr->ema, p->data, p->total, sd_ema_decay_warmup(tr->cfg.ema_decay, tr->step));
        double t5 = now();
        tr->step++;
        (void)norm;
        ph[0][r] = t1 - t0;
        ph[1][r] = t2 - t1;
        ph[2][r] = t3 - t2;
        ph[3][r] = t4 - t3;
        ph[4][r] = t5 - t4;
    }
    char *hi = sd_graph_alloc(g, 64);
    if (!lo || !fwd_end || !grad_end || !hi || addr(hi) < addr(lo) ||
        sd_graph_arena_bytes(g) != arena0) {
        fprintf(stderr, "bench_train: arena probes failed or the arena grew during the "
                        "measured step (addresses would not be in allocation order)\n");
        return 1;
    }
    static const char *phase[5] = {"forward (objective + unet)", "backward (all grads)",
                                   "clip grad norm", "Adam", "EMA"};
    double total = 0.0;
    printf("unet-28 training step, batch %d, %d threads, %zu parameters; median of %d steps\n", B,
           sd_threads_get(), sd_params_trainable_count(p), reps);
    for (int k = 0; k < 5; k++) {
        qsort(ph[k], (size_t)reps, sizeof(double), cmp_double);
        total += ph[k][reps / 2];
    }
    for (int k = 0; k < 5; k++)
        printf("  %-28s %8.1f ms  %5.1f%%\n", phase[k], 1e3 * ph[k][reps / 2],
               100.0 * ph[k][reps / 2] / total);
    printf("  %-28s %8.1f ms  (%.1f img/s)\n", "total", 1e3 * total, B / total);
    printf("  (last step: zeroing %zu-node gradients took %.1f ms of backward; the replayed "
           "parameter gradients differ from sd_graph_backward's by %.2g of their max)\n\n",
           nn, 1e3 * zero_s, replay_diff);
    sd_free(ref_grad);
    sd_free(replay_grads);

    /* Forward scratch: gap after each arena tensor's data to the next block. */
    typedef struct blk {
        const char *start, *end;
        size_t node;
    } blk;
    blk *bl = sd_calloc(3 * nn + 1, sizeof *bl);
    if (!bl) return 1;
    size_t nbk = 0;
    for (size_t k = 0; k < nn; k++) {
        sd_tensor *t = nodes[k].t;
        if (in_arena(t, lo, hi))
            bl[nbk++] = (blk){(const char *)t, (const char *)t + align64(sizeof *t), k};
        if (in_arena(t->data, lo, fwd_end) && (t->data != (void *)t))
            bl[nbk++] = (blk){(const char *)t->data,
                              (const char *)t->data + align64(t->numel * sizeof(float)), k};
    }
    /* sort blocks by start (insertion sort: nbk is small) */
    for (size_t i = 1; i < nbk; i++)
        for (size_t j = i; j > 0 && addr(bl[j].start) < addr(bl[j - 1].start); j--) {
            blk tmp = bl[j];
            bl[j] = bl[j - 1];
            bl[j - 1] = tmp;
        }
    size_t other_fwd = 0, dup = 0;
    for (size_t i = 0; i < nbk; i++) {
        const char *next = i + 1 < nbk ? bl[i + 1].start : fwd_end;
        if (addr(next) > addr(fwd_end)) next = fwd_end;
        if (addr(bl[i].end) > addr(next)) {
            dup++; /* views share data with their source */
            continue;
        }
        size_t gap = (size_t)(addr(next) - addr(bl[i].end));
        sd_tensor *t = nodes[bl[i].node].t;
        if (bl[i].start == (const char *)t->data) nodes[bl[i].node].fwd_scratch += gap;
        else other_fwd += gap; /* after a header: the op's own data lives elsewhere */
    }
    size_t first_gap = nbk ? (size_t)(addr(bl[0].start) - addr(lo)) : 0;
    sd_free(bl);

    op_row rows[64];
    int nr = 0;
    double tot_out = 0, tot_grad = 0, tot_fs = 0, tot_bs = 0, tot_bwd = 0;
    for (size_t k = 0; k < nn; k++) {
        sd_tensor *t = nodes[k].t;
        bool arena_data = in_arena(t->data, lo, fwd_end);
        bool view = false;
        for (int i = 0; i < SD_MAX_SRC; i++)
            if (t->src[i] && t->src[i]->data == t->data) view = true;
        const char *op = t->op ? t->op : (arena_data ? "(arena leaf)" : "(parameter leaf)");
        if (nr == 64) break;
        op_row *rw = row_of(rows, &nr, op);
        rw->count++;
        if (arena_data && !view) rw->out_b += (double)t->numel * sizeof(float);
        if (t->backward) {
            rw->recorded++;
            rw->grad_b += (double)t->numel * sizeof(float);
        }
        rw->fscr_b += (double)nodes[k].fwd_scratch;
        rw->bscr_b += (double)nodes[k].bwd_scratch;
        rw->bwd_s += nodes[k].bwd_s;
    }
    for (int i = 0; i < nr; i++) {
        tot_out += rows[i].out_b;
        tot_grad += rows[i].grad_b;
        tot_fs += rows[i].fscr_b;
        tot_bs += rows[i].bscr_b;
        tot_bwd += rows[i].bwd_s;
    }
    printf("per op (one step; MiB; backward ms from the node-by-node replay):\n");
    printf("  %-18s %5s %5s %9s %9s %9s %9s %9s\n", "op", "nodes", "rec", "outputs", "grads",
           "fwd scr", "bwd scr", "bwd ms");
    for (int i = 0; i < nr; i++)
        printf("  %-18s %5d %5d %9.1f %9.1f %9.1f %9.1f %9.1f\n", rows[i].op, rows[i].count,
               rows[i].recorded, rows[i].out_b / MIB, rows[i].grad_b / MIB, rows[i].fscr_b / MIB,
               rows[i].bscr_b / MIB, 1e3 * rows[i].bwd_s);
    printf("  %-18s %5zu %5s %9.1f %9.1f %9.1f %9.1f %9.1f\n", "total", nn, "", tot_out / MIB,
           tot_grad / MIB, tot_fs / MIB, tot_bs / MIB, 1e3 * tot_bwd);
    double fwd_used = (double)(addr(fwd_end) - addr(lo)), max_bscr = 0.0;
    for (size_t k = 0; k < nn; k++)
        if ((double)nodes[k].bwd_scratch > max_bscr) max_bscr = (double)nodes[k].bwd_scratch;
    printf("\narena: %.1f MiB held, %.1f MiB peak in sd_graph_backward's step = forward %.1f "
           "(outputs %.1f, scratch kept %.1f, headers/other %.1f) + recycled gradients and "
           "backward scratch (rewound after each node; largest %.1f)\n"
           "       the replay holds all %.1f MiB of gradients at once, outside the arena\n",
           (double)sd_graph_arena_bytes(g) / MIB, (double)sd_graph_arena_peak(g) / MIB,
           fwd_used / MIB, tot_out / MIB, tot_fs / MIB, (fwd_used - tot_out - tot_fs) / MIB,
           max_bscr / MIB, tot_grad / MIB);
    printf("       (%zu view blocks shared, %.2f MiB before the first tensor, %.2f MiB after "
           "headers)\n", dup, (double)first_gap / MIB, (double)other_fwd / MIB);
    printf("process: peak RSS %.1f MiB, current %.1f MiB\n", proc_status_bytes("VmHWM:") / MIB,
           proc_status_bytes("VmRSS:") / MIB);

    liveness(nodes, nn, lo, fwd_end);

    /* Largest individual backward scratch and slowest backward nodes. */
    printf("\nslowest backward nodes (ms, bwd scratch MiB, output shape):\n");
    for (int shown = 0; shown < 12; shown++) {
        size_t best = nn;
        for (size_t k = 0; k < nn; k++)
            if (nodes[k].t->backward && nodes[k].bwd_s >= 0 &&
                (best == nn || nodes[k].bwd_s > nodes[best].bwd_s))
                best = k;
        if (best == nn) break;
        char sb[64], sx[64] = "";
        sd_tensor *t = nodes[best].t;
        if (t->src[0]) sd_shape_str(t->src[0], sx, sizeof sx);
        printf("  %-16s %7.1f %7.1f  out %s  src0 %s\n", t->op, 1e3 * nodes[best].bwd_s,
               (double)nodes[best].bwd_scratch / MIB, sd_shape_str(t, sb, sizeof sb), sx);
        nodes[best].bwd_s = -1.0;
    }
    sd_free(nodes);
    bench_close(&b);
    return 0;
}

/* ---- table mode: one child process per batch size -------------------------- */

static double field(const char *line, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof pat, " %s=", key);
    const char *s = strstr(line, pat);
    return s ? atof(s + strlen(pat)) : -1.0;
}

static int run_child(const char *self, int B, char *line, size_t len)
{
    int fd[2];
    if (pipe(fd)) return -1;
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        char arg[32];
        snprintf(arg, sizeof arg, "%d", B);
        dup2(fd[1], STDOUT_FILENO);
        close(fd[0]);
        close(fd[1]);
        execl(self, self, "--run", arg, (char *)NULL);
        _exit(127);
    }
    close(fd[1]);
    FILE *f = fdopen(fd[0], "r");
    char buf[1024];
    int found = -1;
    while (f && fgets(buf, sizeof buf, f))
        if (strncmp(buf, "RESULT", 6) == 0) {
            snprintf(line, len, "%s", buf);
            found = 0;
        }
    if (f) fclose(f);
    int status;
    waitpid(pid, &status, 0);
    return (WIFEXITED(status) && WEXITSTATUS(status) == 0) ? found : -1;
}

int main(int argc, char **argv)
{
    /* Measure the kernels the scorediff CLI would run (sd/blas_core.h). */
    sd_blas_restart_if_generic(argv);
    sd_threads_init(0);
    if (argc == 3 && strcmp(argv[1], "--run") == 0) return run_one(atoi(argv[2]) > 0 ? atoi(argv[2]) : 64);
    if (argc == 3 && strcmp(argv[1], "--breakdown") == 0)
        return breakdown(atoi(argv[2]) > 0 ? atoi(argv[2]) : 128);
    int sizes[16] = {64, 128}, n = 2;
    if (argc > 1) {
        n = 0;
        for (int i = 1; i < argc && n < 16; i++) {
            int v = atoi(argv[i]);
            if (v < 1) {
                fprintf(stderr, "usage: bench_train [batch...] | --run B | --breakdown B\n");
                return 2;
            }
            sizes[n++] = v;
        }
    }
    printf("%6s %10s %10s %10s %10s %10s\n", "batch", "img/s", "min", "max", "peakRSS", "arena");
    for (int i = 0; i < n; i++) {
        char line[1024];
        if (run_child("/proc/self/exe", sizes[i], line, sizeof line)) {
            fprintf(stderr, "bench_train: batch %d failed\n", sizes[i]);
            return 1;
        }
        printf("%6d %10.1f %10.1f %10.1f %7.0f MiB %6.0f MiB\n", sizes[i], field(line, "img_s"),
               field(line, "img_s_min"), field(line, "img_s_max"), field(line, "peak_rss_mib"),
               field(line, "arena_mib"));
        fflush(stdout);
    }
    return 0;
}
