/* graph.c - the arena, the tape and reverse-mode differentiation.
 *
 * Ownership rule (see tensor.h): everything an op creates lives in the graph's
 * arena until sd_graph_reset(). The arena is a list of chunks; when a step
 * needed more than one chunk, reset replaces them by one chunk of the total
 * size, so from the second identical step on nothing is allocated.
 */
#include "sd/tensor.h"
#include "core/graph_internal.h"

#include <cblas.h>
#include <omp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#ifdef __linux__
#include <sys/mman.h>
#endif

#define SD_ARENA_MIN_CHUNK ((size_t)1 << 20)
#define SD_ALIGN 64

typedef struct sd_chunk {
    struct sd_chunk *next;
    size_t size;
    size_t used;
    unsigned char *mem;
} sd_chunk;

struct sd_graph {
    sd_chunk *chunks;   /* current chunk first */
    size_t total_bytes; /* sum of chunk sizes */
    size_t used_bytes;  /* sum of the chunks' used bytes */
    size_t peak_bytes;  /* high-water mark of used_bytes since the last reset */
    size_t last_peak;   /* peak_bytes of the step before the last reset */
    sd_tensor **tape;   /* recorded nodes in creation order */
    size_t n_tape, cap_tape;
    sd_tensor **grad_leaves; /* arena leaves marked requires_grad */
    size_t n_leaves, cap_leaves;
    /* Gradient buffers of recorded nodes released during backward, for reuse
     * by later nodes of the same backward pass (arena memory; see
     * grad_acquire). Emptied by reset with the arena they point into. */
    float **pool_ptr;
    size_t *pool_len;
    size_t n_pool, cap_pool;
    bool grad_enabled;
    sd_status status;
};

/* Chunks of at least this size are asked to be backed by transparent huge
 * pages (Linux, THP in "madvise" mode, Debian's default): a training step
 * walks hundreds of MB of activations, and with 4 KB pages the convolution
 * kernels' speed varied by 25% from process to process (page placement);
 * 2 MB pages also cut TLB misses. Only a hint: where THP is off nothing
 * changes. */
#define SD_ARENA_HUGE_MIN ((size_t)8 << 20)
#define SD_HUGE_PAGE ((size_t)2 << 20)

static sd_chunk *chunk_new(size_t size)
{
    sd_chunk *c = sd_malloc(sizeof *c);
    if (!c) return NULL;
#ifdef MADV_HUGEPAGE
    if (size >= SD_ARENA_HUGE_MIN) {
        size = (size + SD_HUGE_PAGE - 1) & ~(SD_HUGE_PAGE - 1);
        c->mem = sd_malloc_aligned(SD_HUGE_PAGE, size);
        if (c->mem) madvise(c->mem, size, MADV_HUGEPAGE);
    } else
#endif
        c->mem = sd_malloc(size);
    if (!c->mem) {
        sd_free(c);
        return NULL;
    }
    c->size = size;
    c->used = 0;
    c->next = NULL;
    return c;
}

static void chunks_free(sd_chunk *c)
{
    while (c) {
        sd_chunk *next = c->next;
        sd_free(c->mem);
        sd_free(c);
        c = next;
    }
}

sd_graph *sd_graph_new(void)
{
    sd_graph *g = sd_calloc(1, sizeof *g);
    if (!g) return NULL;
    g->chunks = chunk_new(SD_ARENA_MIN_CHUNK);
    if (!g->chunks) {
        sd_free(g);
        return NULL;
    }
    g->total_bytes = SD_ARENA_MIN_CHUNK;
    g->grad_enabled = true;
    return g;
}

void sd_graph_free(sd_graph *g)
{
    if (!g) return;
    chunks_free(g->chunks);
    sd_free(g->tape);
    sd_free(g->grad_leaves);
    sd_free(g->pool_ptr);
    sd_free(g->pool_len);
    sd_free(g);
}

void sd_graph_reset(sd_graph *g)
{
    if (g->chunks->next) {
        /* Consolidate: one chunk as big as the last step's high-water mark
         * (what an identical step needs in one chunk: chunk tails left unused
         * are not counted). If that allocation fails keep the old chunks. */
        size_t size = g->peak_bytes > SD_ARENA_MIN_CHUNK ? g->peak_bytes : SD_ARENA_MIN_CHUNK;
        sd_chunk *one = chunk_new(size);
        if (one) {
            chunks_free(g->chunks);
            g->chunks = one;
            g->total_bytes = size;
        }
    }
    for (sd_chunk *c = g->chunks; c; c = c->next) c->used = 0;
    g->last_peak = g->peak_bytes;
    g->used_bytes = 0;
    g->peak_bytes = 0;
    g->n_tape = 0;
    g->n_leaves = 0;
    g->n_pool = 0;
    g->status = SD_OK;
}

bool sd_graph_set_grad_enabled(sd_graph *g, bool enabled)
{
    bool old = g->grad_enabled;
    g->grad_enabled = enabled;
    return old;
}

bool sd_graph_grad_enabled(const sd_graph *g) { return g->grad_enabled; }
sd_status sd_graph_status(const sd_graph *g) { return g->status; }
size_t sd_graph_arena_bytes(const sd_graph *g) { return g->total_bytes; }
size_t sd_graph_arena_peak(const sd_graph *g)
{
    return g->peak_bytes > g->last_peak ? g->peak_bytes : g->last_peak;
}

static void note_used(sd_graph *g, size_t delta)
{
    g->used_bytes += delta;
    if (g->used_bytes > g->peak_bytes) g->peak_bytes = g->used_bytes;
}

void *sd_graph_alloc(sd_graph *g, size_t bytes)
{
    size_t need = (bytes + SD_ALIGN - 1) & ~(size_t)(SD_ALIGN - 1);
    if (need < bytes) {
        g->status = sd_error(SD_ERR_NOMEM, "arena allocation of %zu bytes overflows", bytes);
        return NULL;
    }
    /* Search every chunk: after a consolidation there is just one. */
    for (sd_chunk *c = g->chunks; c; c = c->next) {
        if (c->size - c->used >= need) {
            void *p = c->mem + c->used;
            c->used += need;
            note_used(g, need);
            return p;
        }
    }
    size_t size = g->chunks->size * 2;
    if (size < need) size = need;
    sd_chunk *c = chunk_new(size);
    if (!c) {
        g->status = sd_error(SD_ERR_NOMEM, "out of memory: the graph arena could not grow by "
                             "%zu bytes (%.1f MB; it holds %.1f MB)", size, size / 1048576.0,
                             g->total_bytes / 1048576.0);
        return NULL;
    }
    c->next = g->chunks;
    g->chunks = c;
    g->total_bytes += size;
    c->used = need;
    note_used(g, need);
    return c->mem;
}

sd_arena_mark sd__arena_mark(sd_graph *g)
{
    sd_arena_mark m = {g->chunks, g->chunks->used};
    return m;
}

void sd__arena_rewind(sd_graph *g, sd_arena_mark m)
{
    /* Allocations after the mark went to the head chunk, or to a new head if
     * it was full (then the older head keeps its bytes until reset: only the
     * first step of a graph grows chunks). */
    if (g->chunks == (sd_chunk *)m.chunk && g->chunks->used >= m.used) {
        g->used_bytes -= g->chunks->used - m.used;
        g->chunks->used = m.used;
    }
}

float *sd_graph_alloc_floats(sd_graph *g, size_t n)
{
    size_t bytes;
    if (sd_mul_size(n, sizeof(float), &bytes)) {
        g->status = sd_error(SD_ERR_NOMEM, "arena allocation of %zu floats overflows", n);
        return NULL;
    }
    return sd_graph_alloc(g, bytes);
}

sd_tensor *sd_graph_fail(sd_graph *g, sd_status st, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (g && st == SD_ERR_NOMEM && g->status == SD_ERR_NOMEM) {
        /* the arena just failed and said how many bytes it needed: keep that */
        char prev[512];
        snprintf(prev, sizeof prev, "%s", sd_error_message());
        sd_error(st, "%s (%s)", msg, prev);
        return NULL;
    }
    sd_error(st, "%s", msg);
    if (g && g->status == SD_OK) g->status = st;
    return NULL;
}

static sd_tensor *tensor_header(sd_graph *g, int ndim, const int *shape)
{
    if (ndim < 1 || ndim > SD_MAX_DIMS)
        return sd_graph_fail(g, SD_ERR_INVALID, "tensor: %d dimensions (1 to %d allowed)", ndim,
                           SD_MAX_DIMS);
    size_t numel = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 1)
            return sd_graph_fail(g, SD_ERR_INVALID, "tensor: dimension %d has size %d", i, shape[i]);
        if (sd_mul_size(numel, (size_t)shape[i], &numel))
            return sd_graph_fail(g, SD_ERR_NOMEM, "tensor: element count overflows");
    }
    sd_tensor *t = sd_graph_alloc(g, sizeof *t);
    if (!t) return NULL; /* sd_graph_alloc set the status and said why */
    memset(t, 0, sizeof *t);
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
    t->numel = numel;
    t->is_leaf = true;
    return t;
}

sd_tensor *sd_tensor_new(sd_graph *g, int ndim, const int *shape)
{
    sd_tensor *t = tensor_header(g, ndim, shape);
    if (!t) return NULL;
    t->data = sd_graph_alloc_floats(g, t->numel);
    if (!t->data) return sd_graph_fail(g, SD_ERR_NOMEM, "tensor: out of memory for %zu floats", t->numel);
    return t;
}

sd_tensor *sd_tensor_zeros(sd_graph *g, int ndim, const int *shape)
{
    sd_tensor *t = sd_tensor_new(g, ndim, shape);
    if (t) memset(t->data, 0, t->numel * sizeof(float));
    return t;
}

sd_tensor *sd_tensor_new_like(sd_graph *g, const sd_tensor *t)
{
    if (!t) return NULL;
    return sd_tensor_new(g, t->ndim, t->shape);
}

sd_tensor *sd_tensor_wrap(sd_graph *g, int ndim, const int *shape, float *data, float *grad)
{
    if (!data) return sd_graph_fail(g, SD_ERR_INVALID, "tensor_wrap: NULL data");
    sd_tensor *t = tensor_header(g, ndim, shape);
    if (!t) return NULL;
    t->data = data;
    t->grad = grad;
    t->requires_grad = grad != NULL;
    return t;
}

static bool push_ptr(sd_tensor ***arr, size_t *n, size_t *cap, sd_tensor *t)
{
    if (*n == *cap) {
        size_t ncap = *cap ? *cap * 2 : 256;
        sd_tensor **bigger = sd_calloc(ncap, sizeof *bigger);
        if (!bigger) return false;
        if (*n) memcpy(bigger, *arr, *n * sizeof *bigger);
        sd_free(*arr);
        *arr = bigger;
        *cap = ncap;
    }
    (*arr)[(*n)++] = t;
    return true;
}

void sd_tensor_requires_grad(sd_tensor *t)
{
    if (t) t->requires_grad = true;
}

const char *sd_shape_str(const sd_tensor *t, char *buf, size_t len)
{
    size_t off = 0;
    off += (size_t)snprintf(buf + off, len - off, "[");
    for (int i = 0; i < t->ndim && off < len; i++)
        off += (size_t)snprintf(buf + off, len - off, i ? ", %d" : "%d", t->shape[i]);
    if (off < len) snprintf(buf + off, len - off, "]");
    return buf;
}

bool sd_same_shape(const sd_tensor *a, const sd_tensor *b)
{
    if (a->ndim != b->ndim) return false;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i]) return false;
    return true;
}

static sd_tensor *op_output_impl(sd_graph *g, const char *op, int ndim, const int *shape,
                                 float *view, sd_backward_fn backward, int n_src,
                                 sd_tensor *const *srcs)
{
    if (g->status != SD_OK && g->status != SD_ERR_INVALID && g->status != SD_ERR_NUMERIC) {
        /* Out of memory earlier in this step: do not pile up more failures,
         * and keep the first one's message (it says what ran out). */
        (void)op;
        return NULL;
    }
    bool needs_grad = false;
    if (g->grad_enabled && backward)
        for (int i = 0; i < n_src; i++)
            if (srcs[i] && srcs[i]->requires_grad) needs_grad = true;
    sd_tensor *t = view ? tensor_header(g, ndim, shape) : sd_tensor_new(g, ndim, shape);
    if (!t) return NULL;
    if (view) t->data = view;
    t->op = op;
    t->is_leaf = false;
    for (int i = 0; i < n_src && i < SD_MAX_SRC; i++) t->src[i] = srcs[i];
    if (needs_grad) {
        t->requires_grad = true;
        t->backward = backward;
        if (!push_ptr(&g->tape, &g->n_tape, &g->cap_tape, t)) {
            g->status = SD_ERR_NOMEM;
            return NULL;
        }
    }
    return t;
}

sd_tensor *sd__op_output(sd_graph *g, const char *op, int ndim, const int *shape,
                         sd_backward_fn backward, int n_src, sd_tensor *const *srcs)
{
    return op_output_impl(g, op, ndim, shape, NULL, backward, n_src, srcs);
}

sd_tensor *sd__op_view(sd_graph *g, const char *op, int ndim, const int *shape, float *data,
                       sd_backward_fn backward, int n_src, sd_tensor *const *srcs)
{
    return op_output_impl(g, op, ndim, shape, data, backward, n_src, srcs);
}

/* Arena leaves that need their gradient must be found by backward; they are
 * exactly the requires_grad sources of recorded nodes that are not recorded
 * themselves and whose grad is not caller-owned memory. */
static sd_status collect_leaves(sd_graph *g, size_t end)
{
    g->n_leaves = 0;
    for (size_t k = 0; k < end; k++) {
        sd_tensor *t = g->tape[k];
        for (int i = 0; i < SD_MAX_SRC; i++) {
            sd_tensor *s = t->src[i];
            if (!s || !s->requires_grad || s->backward) continue;
            if (s->grad && !s->grad_in_arena) continue; /* caller-owned */
            bool seen = false;
            for (size_t j = 0; j < g->n_leaves; j++) seen |= g->grad_leaves[j] == s;
            if (!seen && !push_ptr(&g->grad_leaves, &g->n_leaves, &g->cap_leaves, s))
                return SD_ERR_NOMEM;
        }
    }
    return SD_OK;
}

static sd_status ensure_zero_grad(sd_graph *g, sd_tensor *t)
{
    if (!t->grad) {
        t->grad = sd_graph_alloc_floats(g, t->numel);
        if (!t->grad) return sd_error(SD_ERR_NOMEM, "backward: out of memory for gradients");
    }
    memset(t->grad, 0, t->numel * sizeof(float));
    return SD_OK;
}

/* Gradient buffers of intermediate nodes live only from the backward of
 * their last consumer to their own backward. Taking them from a pool of
 * released arena blocks instead of giving every node its own makes the
 * gradient memory of a pass close to its peak of live gradients rather than
 * their sum: for a U-Net that is the skip connections' gradients, not every
 * layer's. The pool is a tiny allocator over arena memory: free blocks sorted
 * by address, best fit with the remainder split off, neighbours coalesced on
 * release, and a free block at the top of the arena grown in place. Requests
 * come in tape order, so the same graph gets the same buffers every step and
 * nothing is allocated after the first. Blocks are multiples of SD_ALIGN. */
#define GRAD_QUANTUM (SD_ALIGN / sizeof(float))

static size_t grad_span(size_t numel) { return (numel + GRAD_QUANTUM - 1) / GRAD_QUANTUM * GRAD_QUANTUM; }

static sd_status pool_reserve(sd_graph *g)
{
    if (g->n_pool < g->cap_pool) return SD_OK;
    size_t ncap = g->cap_pool ? g->cap_pool * 2 : 64;
    float **ptr = sd_malloc(ncap * sizeof *ptr);
    size_t *len = sd_malloc(ncap * sizeof *len);
    if (!ptr || !len) {
        sd_free(ptr);
        sd_free(len);
        return sd_error(SD_ERR_NOMEM, "backward: out of memory for the gradient pool");
    }
    if (g->n_pool) {
        memcpy(ptr, g->pool_ptr, g->n_pool * sizeof *ptr);
        memcpy(len, g->pool_len, g->n_pool * sizeof *len);
    }
    sd_free(g->pool_ptr);
    sd_free(g->pool_len);
    g->pool_ptr = ptr;
    g->pool_len = len;
    g->cap_pool = ncap;
    return SD_OK;
}

static void pool_remove(sd_graph *g, size_t i)
{
    memmove(g->pool_ptr + i, g->pool_ptr + i + 1, (g->n_pool - i - 1) * sizeof *g->pool_ptr);
    memmove(g->pool_len + i, g->pool_len + i + 1, (g->n_pool - i - 1) * sizeof *g->pool_len);
    g->n_pool--;
}

/* Return a block, merging it with free neighbours. */
static sd_status pool_insert(sd_graph *g, float *ptr, size_t len)
{
    size_t i = 0;
    while (i < g->n_pool && g->pool_ptr[i] < ptr) i++;
    bool joins_prev = i > 0 && g->pool_ptr[i - 1] + g->pool_len[i - 1] == ptr;
    bool joins_next = i < g->n_pool && ptr + len == g->pool_ptr[i];
    if (joins_prev && joins_next) {
        g->pool_len[i - 1] += len + g->pool_len[i];
        pool_remove(g, i);
    } else if (joins_prev) {
        g->pool_len[i - 1] += len;
    } else if (joins_next) {
        g->pool_ptr[i] = ptr;
        g->pool_len[i] += len;
    } else {
        sd_status st = pool_reserve(g);
        if (st != SD_OK) return st;
        memmove(g->pool_ptr + i + 1, g->pool_ptr + i, (g->n_pool - i) * sizeof *g->pool_ptr);
        memmove(g->pool_len + i + 1, g->pool_len + i, (g->n_pool - i) * sizeof *g->pool_len);
        g->pool_ptr[i] = ptr;
        g->pool_len[i] = len;
        g->n_pool++;
    }
    return SD_OK;
}

static sd_status grad_acquire(sd_graph *g, sd_tensor *t)
{
    const size_t span = grad_span(t->numel);
    size_t best = SIZE_MAX;
    for (size_t i = 0; i < g->n_pool; i++)
        if (g->pool_len[i] >= span && (best == SIZE_MAX || g->pool_len[i] < g->pool_len[best]))
            best = i;
    float *p = NULL;
    if (best != SIZE_MAX) {
        p = g->pool_ptr[best];
        if (g->pool_len[best] > span) {
            g->pool_ptr[best] += span;
            g->pool_len[best] -= span;
        } else {
            pool_remove(g, best);
        }
    } else if (g->n_pool > 0) {
        /* Grow the highest free block in place if it ends at the arena top. */
        size_t last = g->n_pool - 1;
        float *end = g->pool_ptr[last] + g->pool_len[last];
        sd_chunk *c = g->chunks;
        if ((unsigned char *)end == c->mem + c->used &&
            (span - g->pool_len[last]) * sizeof(float) <= c->size - c->used) {
            float *more = sd_graph_alloc_floats(g, span - g->pool_len[last]);
            if (more == end) {
                p = g->pool_ptr[last];
                pool_remove(g, last);
            }
        }
    }
    if (!p) p = sd_graph_alloc_floats(g, span);
    if (!p) return sd_error(SD_ERR_NOMEM, "backward: out of memory for gradients");
    t->grad = p;
    memset(t->grad, 0, t->numel * sizeof(float));
    return SD_OK;
}

static sd_status grad_release(sd_graph *g, sd_tensor *t)
{
    sd_status st = pool_insert(g, t->grad, grad_span(t->numel));
    t->grad = NULL;
    return st;
}

sd_status sd_graph_backward(sd_graph *g, sd_tensor *out, const float *cotangent)
{
    if (!out) return sd_error(SD_ERR_INVALID, "backward: NULL output (an op failed: %s)", sd_error_message());
    if (g->status != SD_OK)
        return sd_error(g->status, "backward: the graph holds a failed op: %s", sd_error_message());
    if (!out->backward)
        return sd_error(SD_ERR_INVALID,
                        "backward: output '%s' was not recorded (no input requires a gradient, or "
                        "gradients were disabled)", out->op ? out->op : "leaf");
    size_t end = g->n_tape;
    while (end > 0 && g->tape[end - 1] != out) end--;
    if (end == 0) return sd_error(SD_ERR_INVALID, "backward: output is not on this graph's tape");

    sd_status st = collect_leaves(g, end);
    if (st != SD_OK) return sd_error(st, "backward: out of memory");
    /* Arena leaves get zeroed arena gradients; wrapped parameters (grad memory
     * owned by the caller) are accumulated into. */
    for (size_t j = 0; j < g->n_leaves; j++) {
        sd_tensor *s = g->grad_leaves[j];
        if (!s->grad || s->grad_in_arena) {
            st = ensure_zero_grad(g, s);
            if (st != SD_OK) return st;
            s->grad_in_arena = true;
        }
    }
    /* Recorded nodes start without gradients (a previous backward on this
     * graph released them). */
    for (size_t k = 0; k < end; k++) g->tape[k]->grad = NULL;
    st = grad_acquire(g, out);
    if (st != SD_OK) return st;
    if (cotangent) {
        memcpy(out->grad, cotangent, out->numel * sizeof(float));
    } else {
        for (size_t i = 0; i < out->numel; i++) out->grad[i] = 1.0f;
    }
    for (size_t k = end; k-- > 0;) {
        sd_tensor *t = g->tape[k];
        /* No gradient reached t: it does not feed `out`, its VJP is zero. */
        if (!t->grad) continue;
        for (int i = 0; i < SD_MAX_SRC; i++) {
            sd_tensor *s = t->src[i];
            if (s && s->backward && s->requires_grad && !s->grad) {
                st = grad_acquire(g, s);
                if (st != SD_OK) return st;
            }
        }
        /* Whatever the backward allocates is scratch (its gradients exist). */
        sd_arena_mark scratch = sd__arena_mark(g);
        st = t->backward(g, t);
        sd__arena_rewind(g, scratch);
        if (st != SD_OK) return st;
        st = grad_release(g, t);
        if (st != SD_OK) return st;
    }
    return SD_OK;
}

static int sd_num_threads = 1;

void sd_threads_init(int n)
{
    if (n <= 0) n = omp_get_max_threads(); /* honours OMP_NUM_THREADS */
    sd_num_threads = n;
    omp_set_num_threads(n);
    /* An op inside a parallel region (data-parallel training shards, one
     * per thread) runs single-threaded rather than spawning n more. */
    omp_set_max_active_levels(1);
    /* Our parallel loops call sgemm from inside OpenMP regions; a multi-
     * threaded OpenBLAS there would oversubscribe the cores. */
    openblas_set_num_threads(1);
}

int sd_threads_get(void) { return sd_num_threads; }
