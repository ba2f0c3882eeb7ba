/* test_alloc.c - a repeated forward + backward of a fixed graph allocates
 * nothing after its first iteration.
 *
 * Two counters: sd_alloc_count() sees every allocation made by scorediff
 * itself; outside sanitizer builds the test also interposes the C library's
 * malloc family for the whole process, so allocations inside OpenBLAS, FFTW
 * or libgomp are caught too. (ASan provides its own malloc, so there only the
 * library counter is used.) */
#include <check.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sd/ops.h"
#include "sd/params.h"
#include "sd/rng.h"
#include "test_util.h"

/* ASan interposes malloc itself: the counting interposer is off there. */
#define SD_TEST_INTERPOSE (!SD_TEST_ASAN)

static atomic_ulong process_allocs;

#if SD_TEST_INTERPOSE
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
void *malloc(size_t n)
{
    atomic_fetch_add(&process_allocs, 1);
    return __libc_malloc(n);
}
void *calloc(size_t a, size_t b)
{
    atomic_fetch_add(&process_allocs, 1);
    return __libc_calloc(a, b);
}
void *realloc(void *p, size_t n)
{
    atomic_fetch_add(&process_allocs, 1);
    return __libc_realloc(p, n);
}
void *aligned_alloc(size_t al, size_t n)
{
    atomic_fetch_add(&process_allocs, 1);
    return __libc_memalign(al, n);
}
int posix_memalign(void **out, size_t al, size_t n)
{
    atomic_fetch_add(&process_allocs, 1);
    void *p = __libc_memalign(al, n);
    if (!p) return 12; /* ENOMEM */
    *out = p;
    return 0;
}
#endif

/* A miniature of the U-Net's step: convolutions (3x3, stride-2, 1x1),
 * fused GroupNorm+SiLU, broadcast add of an embedding, upsampling, concat,
 * a DCT, linear layers and an MSE loss. */
typedef struct {
    sd_params *p;
    int conv_in, gn_w, gn_b, down, skip, fc, up;
} mini_net;

static sd_tensor *mini_step(sd_graph *g, mini_net *m, float *x, float *target, float *emb)
{
    sd_params *p = m->p;
    sd_tensor *xt = sd_tensor_wrap(g, 4, (int[]){4, 1, 8, 8}, x, NULL);
    sd_tensor *h = sd_conv2d(g, xt, sd_params_tensor(g, p, m->conv_in), NULL, 1, 1); /* [4,8,8,8] */
    h = sd_group_norm_silu(g, h, 2, sd_params_tensor(g, p, m->gn_w), sd_params_tensor(g, p, m->gn_b), 1e-5f);
    sd_tensor *e = sd_linear(g, sd_tensor_wrap(g, 2, (int[]){4, 3}, emb, NULL),
                             sd_params_tensor(g, p, m->fc), NULL);           /* [4,8] */
    h = sd_add(g, h, sd_reshape(g, e, 4, (int[]){4, 8, 1, 1}));
    sd_tensor *d = sd_conv2d(g, h, sd_params_tensor(g, p, m->down), NULL, 2, 1); /* [4,8,4,4] */
    sd_tensor *u = sd_upsample2x(g, d);
    sd_tensor *c = sd_concat_channels(g, u, h);                               /* [4,16,8,8] */
    sd_tensor *o = sd_conv2d(g, c, sd_params_tensor(g, p, m->skip), NULL, 1, 0); /* 1x1 -> [4,1,8,8] */
    o = sd_idct2(g, sd_dct2(g, o));
    o = sd_add(g, o, sd_avgpool2x(g, sd_upsample2x(g, o)));
    sd_tensor *tt = sd_tensor_wrap(g, 4, (int[]){4, 1, 8, 8}, target, NULL);
    return sd_mse(g, o, tt);
}

START_TEST(test_repeated_step_allocates_nothing)
{
    mini_net m = {.p = sd_params_new()};
    m.conv_in = sd_params_add(m.p, "conv_in.weight", 4, (int[]){8, 1, 3, 3});
    m.gn_w = sd_params_add(m.p, "gn.weight", 1, (int[]){8});
    m.gn_b = sd_params_add(m.p, "gn.bias", 1, (int[]){8});
    m.down = sd_params_add(m.p, "down.weight", 4, (int[]){8, 8, 3, 3});
    m.skip = sd_params_add(m.p, "skip.weight", 4, (int[]){1, 16, 1, 1});
    m.fc = sd_params_add(m.p, "fc.weight", 2, (int[]){8, 3});
    ck_assert_int_eq(sd_params_finalize(m.p), SD_OK);
    sd_rng r;
    sd_rng_init(&r, 5, SD_STREAM_INIT);
    sd_rng_fill_normal(&r, m.p->data, m.p->total, 0.0f, 0.3f);
    float x[4 * 64], target[4 * 64], emb[12];
    sd_rng_fill_normal(&r, x, 256, 0.0f, 1.0f);
    sd_rng_fill_normal(&r, target, 256, 0.0f, 1.0f);
    sd_rng_fill_normal(&r, emb, 12, 0.0f, 1.0f);

    sd_graph *g = sd_graph_new();
    float first_loss = 0.0f;
    uint64_t lib_before = 0;
    unsigned long proc_before = 0;
    /* No Check assertions inside the measured loop: Check itself allocates
     * when it records an assertion. Failures are collected and asserted after. */
    bool all_ok = true, same_loss = true;
    for (int it = 0; it < 6; it++) {
        if (it == 2) { /* iteration 0 grows the arena, 1 consolidates it */
            lib_before = sd_alloc_count();
            proc_before = atomic_load(&process_allocs);
        }
        sd_graph_reset(g);
        sd_params_zero_grad(m.p);
        sd_tensor *loss = mini_step(g, &m, x, target, emb);
        if (!loss || sd_graph_backward(g, loss, NULL) != SD_OK) {
            all_ok = false;
            break;
        }
        if (it == 0) first_loss = loss->data[0];
        same_loss &= loss->data[0] == first_loss; /* same graph, same numbers */
    }
    uint64_t lib_after = sd_alloc_count();
    unsigned long proc_after = atomic_load(&process_allocs);
    ck_assert_msg(all_ok, "%s", sd_error_message());
    ck_assert(same_loss);
    ck_assert_uint_eq(lib_after - lib_before, 0);
#if SD_TEST_INTERPOSE
    ck_assert_uint_gt(proc_before, 0); /* the interposer is live */
    ck_assert_uint_eq(proc_after - proc_before, 0);
#else
    (void)proc_before; /* ASan replaces malloc: no interposed count to compare */
    (void)proc_after;
#endif
    /* The counter can fail: one more tensor does allocate in a fresh graph. */
    sd_graph *g2 = sd_graph_new();
    ck_assert_uint_gt(sd_alloc_count(), lib_before);
    sd_graph_free(g2);
    sd_graph_free(g);
    sd_params_free(m.p);
}
END_TEST

int main(void)
{
    sd_threads_init(2);
    Suite *s = suite_create("alloc");
    TCase *tc = tcase_create("alloc");
    tcase_add_test(tc, test_repeated_step_allocates_nothing);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    if (!SD_TEST_INTERPOSE) /* the reduced part, said rather than passed silently */
        printf("SKIPPED PART: sanitizer build: ASan owns malloc, so the process-wide malloc "
               "interposer is off and only the library's own allocation counter was checked\n");
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
