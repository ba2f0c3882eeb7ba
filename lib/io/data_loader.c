/* data_loader.c - deterministic mini-batches with a prefetch thread (sd/data.h).
 *
 * Batch k is a pure function of (data set, options, seed, k), computed by
 * make_batch():
 *   - order: an endless stream of per-epoch permutations; stream position p
 *     holds item perm_e[p mod N] with e = p / N, perm_e drawn by Fisher-Yates
 *     from sd_rng_split(data_base, e). Batch k is positions [k B, (k + 1) B).
 *   - dequantisation: x = (k + u) / 256 with u ~ U[0, 1) taken, in item-major
 *     (b, c, y, x) order, from sd_rng_split(dequant_base, k); without it
 *     x = (k + 0.5) / 256, the centre of the same bins.
 *   - flips: item b is mirrored left-right iff bit 63 of the b-th draw of
 *     sd_rng_split(flip_base, k) is set.
 * No state carries from one batch to the next except a cache of the last two
 * permutations, which is a pure function of e. That makes seek() trivial and
 * the threaded and unthreaded loaders bitwise identical.
 *
 * Threading: one POSIX worker thread and two batch buffers. After handing out
 * buffer P for step k, the consumer asks the worker to fill the other buffer
 * with step k + 1; the next call waits for it. The consumer never touches a
 * buffer the worker is writing, and the worker never touches the buffer just
 * handed out, so no copy is needed. All state the worker reads is written
 * only while it is idle (under the mutex).
 *
 * Dimension vocabulary: B batch, N items, F = C * H * W floats per item.
 */
#include "sd/data.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "sd/membudget.h"
#include "sd/rng.h"

struct sd_loader {
    const sd_dataset *ds;
    sd_loader_opts opts;
    size_t F;             /* floats per item */
    uint64_t step;        /* the step the next sd_loader_next returns */
    sd_rng data_base, dequant_base, flip_base;
    float *buf[2];        /* [B, F] each */
    uint32_t *perm[2];    /* [N] each: permutation of epoch perm_epoch[i] */
    uint64_t perm_epoch[2];
    int perm_valid[2];
    float lut[256];       /* (k + 0.5) / 256 */

    /* Prefetch state (threaded only). */
    int threaded;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int job;              /* 1 while the worker owns a job (posted or running) */
    int quit;
    uint64_t job_step;    /* step the worker computes / has computed */
    int job_buf;          /* into this buffer */
    int have_ahead;       /* buffer job_buf holds (or will hold) job_step */
};

/* Permutation of epoch e, from the two-entry cache (slot e mod 2). Called by
 * whichever thread is computing a batch; only one ever is. */
static const uint32_t *epoch_perm(sd_loader *ld, uint64_t e)
{
    int s = (int)(e & 1);
    if (!ld->perm_valid[s] || ld->perm_epoch[s] != e) {
        uint32_t *p = ld->perm[s];
        for (size_t i = 0; i < ld->ds->n; i++) p[i] = (uint32_t)i;
        sd_rng r;
        sd_rng_split(&ld->data_base, e, &r);
        sd_rng_shuffle_indices(&r, p, ld->ds->n);
        ld->perm_epoch[s] = e;
        ld->perm_valid[s] = 1;
    }
    return ld->perm[s];
}

/* out is (B, F): batch number `step`. */
static void make_batch(sd_loader *ld, uint64_t step, float *out)
{
    const sd_dataset *ds = ld->ds;
    const size_t B = ld->opts.batch, F = ld->F, N = ds->n;
    sd_rng dq, fl;
    sd_rng_split(&ld->dequant_base, step, &dq);
    sd_rng_split(&ld->flip_base, step, &fl);
    /* Stream position of item 0 of this batch: step * B, computed as
     * (epoch, offset) so that nothing overflows for any step < 2^64 / B. */
    uint64_t e = (step / N) * B + ((step % N) * B) / N;
    uint64_t off = ((step % N) * B) % N;
    for (size_t b = 0; b < B; b++) {
        const uint32_t *perm = epoch_perm(ld, e);
        size_t item = perm[off];
        if (++off == N) {
            off = 0;
            e++;
        }
        float *x = out + b * F;
        if (ds->kind == SD_DATA_POINTS) {
            memcpy(x, ds->points + item * F, F * sizeof *x);
            continue;
        }
        const uint8_t *px = ds->pixels + item * F;
        int flip = ld->opts.hflip ? (int)(sd_rng_u64(&fl) >> 63) : 0;
        const size_t W = (size_t)ds->w, rows = (size_t)ds->c * (size_t)ds->h;
        for (size_t r = 0; r < rows; r++) {
            const uint8_t *src = px + r * W;
            float *dst = x + r * W;
            for (size_t i = 0; i < W; i++) {
                uint8_t k = src[flip ? W - 1 - i : i];
                /* (k + u) / 256: u ~ U[0, 1) spreads each 8-bit level over its
                 * bin [k/256, (k+1)/256), giving a continuous density whose
                 * likelihood bounds the discrete one (Theis et al. 2016). */
                dst[i] = ld->opts.dequant ? ((float)k + sd_rng_uniform(&dq)) * (1.0f / 256.0f)
                                          : ld->lut[k];
            }
        }
    }
}

static void *worker_main(void *arg)
{
    sd_loader *ld = arg;
    pthread_mutex_lock(&ld->mu);
    for (;;) {
        while (!ld->quit && ld->job != 1) pthread_cond_wait(&ld->cv, &ld->mu);
        if (ld->quit) break;
        uint64_t step = ld->job_step;
        float *dst = ld->buf[ld->job_buf];
        pthread_mutex_unlock(&ld->mu);
        make_batch(ld, step, dst);
        pthread_mutex_lock(&ld->mu);
        ld->job = 0;
        pthread_cond_broadcast(&ld->cv);
    }
    pthread_mutex_unlock(&ld->mu);
    return NULL;
}

sd_status sd_loader_new(const sd_dataset *ds, const sd_loader_opts *opts, sd_loader **out)
{
    *out = NULL;
    if (!ds || !opts) return sd_error(SD_ERR_INVALID, "loader: NULL argument");
    if (ds->n == 0 || (ds->kind == SD_DATA_IMAGES && !ds->pixels) ||
        (ds->kind == SD_DATA_POINTS && !ds->points) ||
        (ds->kind != SD_DATA_IMAGES && ds->kind != SD_DATA_POINTS))
        return sd_error(SD_ERR_INVALID, "loader: empty or invalid data set");
    if (ds->n > UINT32_MAX)
        return sd_error(SD_ERR_INVALID, "loader: %zu items exceed the 2^32 - 1 limit", ds->n);
    if (opts->batch == 0 || opts->batch > ((size_t)1 << 24))
        return sd_error(SD_ERR_INVALID, "loader: batch size must be in [1, 2^24], got %zu",
                        opts->batch);
    size_t F = sd_dataset_item_size(ds), batch_floats;
    if (F == 0 || sd_mul_size(F, opts->batch, &batch_floats) ||
        batch_floats > SIZE_MAX / sizeof(float))
        return sd_error(SD_ERR_NOMEM, "loader: batch of %zu x %zu floats overflows", opts->batch, F);
    /* Two batch buffers and two permutations, checked against the memory
     * budget before allocating (sd/membudget.h): --batch 65536 of large
     * images asks for tens of GiB. */
    {
        char what[128];
        snprintf(what, sizeof what, "loader: a batch of %zu items of %zu values", opts->batch, F);
        uint64_t need = 2 * ((uint64_t)batch_floats * sizeof(float) + (uint64_t)ds->n * 4);
        sd_status mst = sd_mem_check(what, need);
        if (mst != SD_OK) return mst;
    }

    sd_loader *ld = sd_calloc(1, sizeof *ld);
    if (!ld) return SD_ERR_NOMEM;
    ld->ds = ds;
    ld->opts = *opts;
    ld->F = F;
    sd_rng_init(&ld->data_base, opts->seed, SD_STREAM_DATA);
    sd_rng_init(&ld->dequant_base, opts->seed, SD_STREAM_DEQUANT);
    sd_rng_init(&ld->flip_base, opts->seed, SD_STREAM_FLIP);
    for (int k = 0; k < 256; k++) ld->lut[k] = ((float)k + 0.5f) * (1.0f / 256.0f);
    for (int i = 0; i < 2; i++) {
        ld->buf[i] = sd_malloc(batch_floats * sizeof(float));
        ld->perm[i] = sd_calloc(ds->n, sizeof(uint32_t));
        if (!ld->buf[i] || !ld->perm[i]) {
            sd_loader_free(ld);
            return SD_ERR_NOMEM;
        }
    }
    if (opts->threaded) {
        if (pthread_mutex_init(&ld->mu, NULL) != 0) {
            sd_loader_free(ld);
            return sd_error(SD_ERR_INTERNAL, "loader: pthread_mutex_init failed");
        }
        if (pthread_cond_init(&ld->cv, NULL) != 0) {
            pthread_mutex_destroy(&ld->mu);
            sd_loader_free(ld);
            return sd_error(SD_ERR_INTERNAL, "loader: pthread_cond_init failed");
        }
        if (pthread_create(&ld->thread, NULL, worker_main, ld) != 0) {
            /* Not fatal: the same batches are computed on the caller's thread. */
            pthread_cond_destroy(&ld->cv);
            pthread_mutex_destroy(&ld->mu);
        } else {
            ld->threaded = 1;
        }
    }
    *out = ld;
    return SD_OK;
}

const float *sd_loader_next(sd_loader *ld)
{
    uint64_t step = ld->step++;
    if (!ld->threaded) {
        make_batch(ld, step, ld->buf[0]);
        return ld->buf[0];
    }
    pthread_mutex_lock(&ld->mu);
    while (ld->job) pthread_cond_wait(&ld->cv, &ld->mu); /* worker idle from here */
    int cur;
    if (ld->have_ahead && ld->job_step == step) {
        cur = ld->job_buf;
    } else {
        /* First call or after a seek: compute this step here (the worker is
         * idle, so the permutation cache is ours). */
        cur = 0;
        make_batch(ld, step, ld->buf[cur]);
    }
    ld->job_buf = 1 - cur;
    ld->job_step = step + 1;
    ld->have_ahead = 1;
    ld->job = 1;
    pthread_cond_broadcast(&ld->cv);
    pthread_mutex_unlock(&ld->mu);
    return ld->buf[cur];
}

void sd_loader_seek(sd_loader *ld, uint64_t step)
{
    ld->step = step; /* the prefetched batch is simply not used if it differs */
}

uint64_t sd_loader_step(const sd_loader *ld)
{
    return ld->step;
}

double sd_loader_epoch(const sd_loader *ld)
{
    return (double)ld->step * (double)ld->opts.batch / (double)ld->ds->n;
}

void sd_loader_free(sd_loader *ld)
{
    if (!ld) return;
    if (ld->threaded) {
        pthread_mutex_lock(&ld->mu);
        ld->quit = 1;
        pthread_cond_broadcast(&ld->cv);
        pthread_mutex_unlock(&ld->mu);
        pthread_join(ld->thread, NULL);
        pthread_cond_destroy(&ld->cv);
        pthread_mutex_destroy(&ld->mu);
    }
    for (int i = 0; i < 2; i++) {
        sd_free(ld->buf[i]);
        sd_free(ld->perm[i]);
    }
    sd_free(ld);
}
