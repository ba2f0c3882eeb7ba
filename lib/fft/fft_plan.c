/* fft_plan.c - the FFTW plan cache and the raw-array orthonormal 2-D DCT.
 *
 * FFTW's planner is not thread-safe; only fftwf_execute* is (FFTW manual,
 * "Thread safety"). Every planner call (create, destroy, cleanup) therefore
 * happens under one process-wide mutex, and the plans are kept for the life of
 * the process in a small list keyed by (kind, H, W): a model uses a handful of
 * plane sizes, so a linear search under the lock is cheaper than the fork of
 * the parallel loop that follows it. Ops fetch a plan once per call and then
 * run the new-array execute functions on each plane from OpenMP workers.
 *
 * Planning flags: FFTW_ESTIMATE | FFTW_UNALIGNED (see sd/fft.h for why).
 * FFTW_MEASURE was not adopted: it would need scratch arrays at planning time,
 * makes the chosen algorithm (and so the rounding) vary between runs, and the
 * planes used here (<= 256 x 256) are too small for the difference to matter
 * against the per-plane scaling loops.
 *
 * Dimension vocabulary: H x W plane, Wh = W/2 + 1 complex columns of a half
 * spectrum, `planes` independent planes laid out one after another.
 */
#include "sd/fft.h"

#include <math.h>
#include <pthread.h>
#include <string.h>

/* Below this many floats the OpenMP fork/join costs more than the work. */
#define SD_FFT_PAR_MIN 32768

#define SD_FFT_FLAGS (FFTW_ESTIMATE | FFTW_UNALIGNED)

typedef struct sd_fft_entry {
    struct sd_fft_entry *next;
    sd_fft_kind kind;
    int H, W;
    fftwf_plan plan;
} sd_fft_entry;

static pthread_mutex_t sd_fft_lock = PTHREAD_MUTEX_INITIALIZER;
static sd_fft_entry *sd_fft_cache; /* guarded by sd_fft_lock */
static size_t sd_fft_count;        /* guarded by sd_fft_lock */

static const char *kind_name(sd_fft_kind kind)
{
    switch (kind) {
    case SD_FFT_R2C: return "r2c";
    case SD_FFT_C2R: return "c2r";
    case SD_FFT_DCT2: return "dct2";
    case SD_FFT_DCT3: return "dct3";
    }
    return "?";
}

/* Make a plan; caller holds the lock. FFTW needs real arrays at planning time
 * to see the in-place/out-of-place choice; with FFTW_ESTIMATE it never reads
 * or writes them, and with FFTW_UNALIGNED their alignment is not baked in, so
 * temporary buffers are freed right after. */
static fftwf_plan plan_create(sd_fft_kind kind, int H, int W)
{
    size_t real_n = (size_t)H * (size_t)W;
    size_t cplx_n = (size_t)H * (size_t)(W / 2 + 1) * 2;
    fftwf_plan p = NULL;
    float *a = sd_malloc(real_n * sizeof(float));
    float *b = sd_malloc(cplx_n * sizeof(float));
    if (!a || !b) goto done;
    switch (kind) {
    case SD_FFT_R2C:
        p = fftwf_plan_dft_r2c_2d(H, W, a, (fftwf_complex *)b, SD_FFT_FLAGS);
        break;
    case SD_FFT_C2R:
        p = fftwf_plan_dft_c2r_2d(H, W, (fftwf_complex *)b, a, SD_FFT_FLAGS);
        break;
    case SD_FFT_DCT2:
        p = fftwf_plan_r2r_2d(H, W, a, a, FFTW_REDFT10, FFTW_REDFT10, SD_FFT_FLAGS);
        break;
    case SD_FFT_DCT3:
        p = fftwf_plan_r2r_2d(H, W, a, a, FFTW_REDFT01, FFTW_REDFT01, SD_FFT_FLAGS);
        break;
    }
done:
    sd_free(a);
    sd_free(b);
    return p;
}

/* Lookup-or-create under the lock; *out is the plan on SD_OK. */
static sd_status plan_lookup(sd_fft_kind kind, int H, int W, fftwf_plan *out)
{
    *out = NULL;
    if (kind != SD_FFT_R2C && kind != SD_FFT_C2R && kind != SD_FFT_DCT2 && kind != SD_FFT_DCT3)
        return sd_error(SD_ERR_INVALID, "fft_plan: unknown transform kind %d", (int)kind);
    if (H < 1 || W < 1)
        return sd_error(SD_ERR_INVALID, "fft_plan: %s plane of %d x %d (both sizes must be >= 1)",
                        kind_name(kind), H, W);
    sd_status st = SD_OK;
    pthread_mutex_lock(&sd_fft_lock);
    for (sd_fft_entry *e = sd_fft_cache; e; e = e->next) {
        if (e->kind == kind && e->H == H && e->W == W) {
            *out = e->plan;
            goto unlock;
        }
    }
    sd_fft_entry *e = sd_malloc(sizeof *e);
    if (!e) {
        st = sd_error(SD_ERR_NOMEM, "fft_plan: out of memory for a %s %d x %d plan",
                      kind_name(kind), H, W);
        goto unlock;
    }
    e->plan = plan_create(kind, H, W);
    if (!e->plan) {
        sd_free(e);
        st = sd_error(SD_ERR_NOMEM, "fft_plan: FFTW could not plan a %s transform of %d x %d",
                      kind_name(kind), H, W);
        goto unlock;
    }
    e->kind = kind;
    e->H = H;
    e->W = W;
    e->next = sd_fft_cache;
    sd_fft_cache = e;
    sd_fft_count++;
    *out = e->plan;
unlock:
    pthread_mutex_unlock(&sd_fft_lock);
    return st;
}

fftwf_plan sd_fft_plan_get(sd_fft_kind kind, int H, int W)
{
    fftwf_plan p;
    return plan_lookup(kind, H, W, &p) == SD_OK ? p : NULL;
}

size_t sd_fft_cache_size(void)
{
    pthread_mutex_lock(&sd_fft_lock);
    size_t n = sd_fft_count;
    pthread_mutex_unlock(&sd_fft_lock);
    return n;
}

void sd_fft_cache_clear(void)
{
    pthread_mutex_lock(&sd_fft_lock);
    sd_fft_entry *e = sd_fft_cache;
    while (e) {
        sd_fft_entry *next = e->next;
        fftwf_destroy_plan(e->plan);
        sd_free(e);
        e = next;
    }
    sd_fft_cache = NULL;
    sd_fft_count = 0;
    /* Frees FFTW's accumulated wisdom and twiddle tables (valgrind-clean
     * exit); valid because no plan exists any more. */
    fftwf_cleanup();
    pthread_mutex_unlock(&sd_fft_lock);
}

/* ---- orthonormal DCT on raw planes -------------------------------------- */

/* Per-axis factors turning FFTW's unnormalised transforms into orthonormal
 * ones (s_N(0) = sqrt(1/N), s_N(k>0) = sqrt(2/N) are the ortho weights):
 *   DCT-II:  REDFT10 gives 2 sum_n x[n] cos(pi k (2n+1) / 2N), so
 *            y[k] = s_N(k)/2 * REDFT10[k]: sqrt(1/(4N)) for k = 0, sqrt(1/(2N)) else.
 *   DCT-III: x[n] = sum_k s_N(k) y[k] cos(pi k (2n+1) / 2N), while REDFT01 gives
 *            Y[0] + 2 sum_{k>0} Y[k] cos(...), so pre-scale Y[0] = sqrt(1/N) y[0]
 *            and Y[k] = s_N(k)/2 y[k] = sqrt(1/(2N)) y[k].
 * The 2-D factor is the product of the row and column factors; the four
 * combinations (row 0 or not) x (column 0 or not) are formed in double. */
typedef struct dct_scale {
    float f00, f0k, fk0, fkk; /* [row k1 == 0 ?][column k2 == 0 ?] */
} dct_scale;

static dct_scale dct_scale_make(int H, int W, bool inverse)
{
    double h0 = inverse ? sqrt(1.0 / H) : sqrt(1.0 / (4.0 * H));
    double w0 = inverse ? sqrt(1.0 / W) : sqrt(1.0 / (4.0 * W));
    double hk = sqrt(1.0 / (2.0 * H));
    double wk = sqrt(1.0 / (2.0 * W));
    dct_scale s = {(float)(h0 * w0), (float)(h0 * wk), (float)(hk * w0), (float)(hk * wk)};
    return s;
}

/* plane[H][W] *= f(k1) f(k2), in place. */
static void dct_apply_scale(float *plane, int H, int W, dct_scale s)
{
    for (int k1 = 0; k1 < H; k1++) {
        float *row = plane + (size_t)k1 * (size_t)W;
        float first = k1 ? s.fk0 : s.f00;
        float rest = k1 ? s.fkk : s.f0k;
        row[0] *= first;
        for (int k2 = 1; k2 < W; k2++) row[k2] *= rest;
    }
}

sd_status sd_dct2_planes(const float *in, float *out, int planes, int H, int W, bool inverse)
{
    if (!in || !out) return sd_error(SD_ERR_INVALID, "dct2_planes: NULL array");
    if (planes < 0 || H < 1 || W < 1)
        return sd_error(SD_ERR_INVALID, "dct2_planes: bad sizes planes = %d, H = %d, W = %d",
                        planes, H, W);
    size_t hw = (size_t)H * (size_t)W, total;
    if (sd_mul_size(hw, (size_t)planes, &total))
        return sd_error(SD_ERR_NOMEM, "dct2_planes: %d planes of %d x %d overflow", planes, H, W);
    fftwf_plan plan;
    sd_status st = plan_lookup(inverse ? SD_FFT_DCT3 : SD_FFT_DCT2, H, W, &plan);
    if (st != SD_OK) return st;
    dct_scale s = dct_scale_make(H, W, inverse);

    /* The plans are in place: copy (and for DCT-III pre-scale) into out first,
     * then transform out. Each plane is written by one thread only. */
#pragma omp parallel for schedule(static) if (total > SD_FFT_PAR_MIN)
    for (int p = 0; p < planes; p++) {
        const float *src = in + (size_t)p * hw;
        float *dst = out + (size_t)p * hw;
        if (dst != src) memcpy(dst, src, hw * sizeof(float));
        if (inverse) dct_apply_scale(dst, H, W, s); /* pre-scale, then REDFT01 */
        fftwf_execute_r2r(plan, dst, dst);
        if (!inverse) dct_apply_scale(dst, H, W, s); /* REDFT10, then post-scale */
    }
    return SD_OK;
}
