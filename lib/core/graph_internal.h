/* graph_internal.h - the op-implementation API of the graph (not installed).
 *
 * What lib/'s op files (lib/ops, lib/conv, lib/gemm, lib/fft) need from the
 * graph beyond sd/tensor.h: output tensors recorded on the tape, views, and
 * scratch marks on the arena. Tests that exercise the op API itself
 * (tests/test_gradcheck.c, tests/test_core.c) include it too. Programs that
 * link libscorediff build graphs from the public ops in sd/ops.h instead. */
#ifndef SD_GRAPH_INTERNAL_H
#define SD_GRAPH_INTERNAL_H

#include <stdbool.h>

#include "sd/tensor.h"

/* Scratch that an op needs only while it runs: take a mark before allocating
 * it and rewind to the mark when done, so the next op reuses the bytes. Only
 * valid if nothing allocated after the mark is still referenced. */
typedef struct sd_arena_mark {
    void *chunk;
    size_t used;
} sd_arena_mark;
sd_arena_mark sd__arena_mark(sd_graph *g);
void sd__arena_rewind(sd_graph *g, sd_arena_mark m);
/* Create the output of an op: allocates the tensor, and if recording and any
 * source requires grad, puts it on the tape with `backward` and `srcs`.
 * srcs may contain NULL past n_src. Returns NULL (and sets the sticky status)
 * on failure. */
sd_tensor *sd__op_output(sd_graph *g, const char *op, int ndim, const int *shape,
                         sd_backward_fn backward, int n_src, sd_tensor *const *srcs);
/* As sd__op_output, but the output shares `data` (numel floats) with a source
 * instead of allocating: views such as reshape. */
sd_tensor *sd__op_view(sd_graph *g, const char *op, int ndim, const int *shape, float *data,
                       sd_backward_fn backward, int n_src, sd_tensor *const *srcs);
/* True if t was recorded (needs its backward run). */
static inline bool sd__recorded(const sd_tensor *t) { return t->backward != NULL; }

#endif
