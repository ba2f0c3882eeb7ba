/* tensor.h - float32 tensors and the graph (tape) that records them.
 *
 * Overview
 *   A tensor is a contiguous float32 array of up to 4 dimensions, row-major,
 *   conventionally (N, C, H, W). Tensors live in one of two places:
 *
 *   - Parameters and other long-lived leaves are made by sd_tensor_leaf_wrap()
 *     around memory the caller owns (sd_params hands out views into one flat
 *     buffer). The graph never frees them.
 *   - Everything an op produces is allocated from the graph's arena. An arena
 *     allocation lives until the next sd_graph_reset(); reset rewinds the arena
 *     but keeps its memory, so a training step that builds the same graph again
 *     allocates nothing after its first iteration (ggml-style ownership).
 *
 * Reverse mode
 *   Ops run eagerly (define-by-run). When gradients are enabled and any source
 *   of an op requires a gradient, the op's output is appended to the graph's
 *   tape with a backward function. sd_graph_backward() walks the tape in
 *   reverse and accumulates vector-Jacobian products into the .grad buffers of
 *   every tensor that requires a gradient: parameters (their grad memory is the
 *   caller's; it is accumulated into, so zero it yourself between steps) and
 *   inputs marked with sd_tensor_requires_grad() (their grad buffers come from
 *   the arena and are zeroed by backward).
 *
 *       sd_graph *g = sd_graph_new();
 *       for (int step = 0; step < n; step++) {
 *           sd_graph_reset(g);
 *           sd_tensor *x = sd_tensor_new(g, 2, (int[]){B, D});   // fill x->data
 *           sd_tensor *y = sd_linear(g, x, w, b);
 *           sd_tensor *loss = sd_mean(g, sd_square(g, y));
 *           if (!loss) { puts(sd_error_message()); break; }
 *           sd_graph_backward(g, loss, NULL);                    // d loss / d w
 *       }
 *       sd_graph_free(g);
 *
 * Errors
 *   Ops return NULL on failure (bad shapes, out of memory) and set the message
 *   (sd_error_message) and the graph's sticky status. Every op accepts NULL
 *   sources and then returns NULL at once, so a whole forward pass can be
 *   written without checks and tested once at the end.
 *
 * Threading
 *   A graph is used by one thread at a time. Ops parallelise internally with
 *   OpenMP; OpenBLAS is kept single-threaded (sd_threads_init) so the two
 *   never oversubscribe the cores. Results are deterministic for a given
 *   thread count.
 */
#ifndef SD_TENSOR_H
#define SD_TENSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sd/status.h"

#define SD_MAX_DIMS 4
#define SD_MAX_SRC 6
#define SD_OP_PARAMS 16

typedef struct sd_graph sd_graph;
typedef struct sd_tensor sd_tensor;

/* Backward of the op that produced `out`: reads out->grad, accumulates into
 * out->src[i]->grad for every source with a non-NULL grad. */
typedef sd_status (*sd_backward_fn)(sd_graph *g, sd_tensor *out);

struct sd_tensor {
    int ndim;
    int shape[SD_MAX_DIMS];
    size_t numel;
    float *data;  /* numel floats */
    float *grad;  /* numel floats or NULL; see the ownership rule above */
    bool requires_grad;
    bool is_leaf;
    bool grad_in_arena; /* grad memory came from the arena (zeroed by backward) */
    /* Autograd record; backward == NULL for leaves and no-grad results. */
    sd_backward_fn backward;
    sd_tensor *src[SD_MAX_SRC];
    union {
        float f[SD_OP_PARAMS];
        int i[SD_OP_PARAMS];
    } params;       /* op-specific scalars (stride, eps, ...) */
    void *saved;    /* op-specific saved buffers, in the arena */
    const char *op; /* op name for messages ("conv2d") */
    const char *name; /* optional, e.g. a parameter's full name */
};

/* ---- graph lifetime ---------------------------------------------------- */
sd_graph *sd_graph_new(void);
void sd_graph_free(sd_graph *g);
/* Drop every tensor made since the last reset and clear the tape and sticky
 * status. Keeps (and, after growth, consolidates) the arena memory. */
void sd_graph_reset(sd_graph *g);
/* Enable/disable recording (no-grad mode for inference). Returns the previous
 * setting. Default: enabled. */
bool sd_graph_set_grad_enabled(sd_graph *g, bool enabled);
bool sd_graph_grad_enabled(const sd_graph *g);
/* Sticky status: the first op failure since the last reset. */
sd_status sd_graph_status(const sd_graph *g);
/* Bytes currently held by the arena (for memory benchmarks). */
size_t sd_graph_arena_bytes(const sd_graph *g);
/* Most arena bytes in use at once during the current step, or the previous
 * one if that was more (the memory a step of this graph needs). */
size_t sd_graph_arena_peak(const sd_graph *g);

/* ---- tensors ----------------------------------------------------------- */
/* New arena tensor, data uninitialised / zeroed. NULL on bad shape or OOM. */
sd_tensor *sd_tensor_new(sd_graph *g, int ndim, const int *shape);
sd_tensor *sd_tensor_zeros(sd_graph *g, int ndim, const int *shape);
sd_tensor *sd_tensor_new_like(sd_graph *g, const sd_tensor *t);
/* A leaf that wraps caller-owned memory (data, and grad which may be NULL).
 * The tensor struct itself lives in the arena. */
sd_tensor *sd_tensor_wrap(sd_graph *g, int ndim, const int *shape, float *data, float *grad);
/* Mark an arena leaf as needing its gradient (input gradients for VJPs). */
void sd_tensor_requires_grad(sd_tensor *t);
/* Scratch memory from the arena, 64-byte aligned, valid until reset. */
void *sd_graph_alloc(sd_graph *g, size_t bytes);
float *sd_graph_alloc_floats(sd_graph *g, size_t n);

/* Fill shape[] of `t` into a printable "[2, 3, 4]" (buffer of >= 64 bytes). */
const char *sd_shape_str(const sd_tensor *t, char *buf, size_t len);
bool sd_same_shape(const sd_tensor *a, const sd_tensor *b);

/* ---- reverse mode ------------------------------------------------------ */
/* Vector-Jacobian product: sets out's cotangent (numel floats; NULL means all
 * ones, i.e. the gradient of sum(out), which for a scalar loss is d loss), then
 * runs every recorded backward in reverse order. Gradients of arena leaves
 * requiring grad are zeroed first; parameter grads are accumulated into.
 * Intermediate (recorded) tensors get gradient buffers only while they are
 * live and lose them again (grad == NULL afterwards): read gradients of
 * leaves and parameters, not of op outputs. */
sd_status sd_graph_backward(sd_graph *g, sd_tensor *out, const float *cotangent);

/* ---- failures of graph-building code --------------------------------------
 * Record a failure of op or layer `op` in the graph's sticky status and message
 * and return NULL, so a function that builds graph nodes (a layer in models/,
 * an op in lib/) fails the same way as the ops it calls. fmt names the op
 * first, e.g. sd_graph_fail(g, SD_ERR_INVALID, "fourier: need c[%d] values", n). */
sd_tensor *sd_graph_fail(sd_graph *g, sd_status st, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* ---- threads ------------------------------------------------------------ */
/* Set the number of worker threads for scorediff's own parallel loops (OpenMP)
 * and pin OpenBLAS to one thread. n <= 0 means all cores. Call once at start. */
void sd_threads_init(int n);
int sd_threads_get(void);

#endif
