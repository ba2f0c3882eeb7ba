/* gradcheck.h - central finite-difference gradient checks for sd ops.
 *
 * The harness builds `fn(g, inputs, ctx)` on freshly wrapped inputs, takes the
 * scalar L = sum_i r_i * out_i with fixed random weights r (a plain sum would
 * hide errors in ops whose outputs sum to a constant, such as normalisation),
 * and compares the analytic dL/dx from sd_graph_backward (cotangent r) with
 *     (L(x + eps e_j) - L(x - eps e_j)) / (2 eps)
 * for every element j (or a fixed random subset of `max_probe` elements).
 * The difference L(+) - L(-) is accumulated in double from element-wise output
 * differences, so outputs that do not depend on x_j contribute exactly zero
 * and float32 rounding only enters through the affected outputs.
 *
 * Error model: the central difference has truncation error O(eps^2 f''') and
 * rounding error ~ 6e-8 |out| / eps per affected output. With eps = 1e-2 on
 * inputs of order 1 both are ~1e-4 relative, so a tolerance of
 * rtol = 1e-2, atol = 1e-3 * max(1, max |grad|) separates a correct gradient
 * from a wrong one (a wrong rule is typically off by O(1)).
 */
#ifndef SD_TEST_GRADCHECK_H
#define SD_TEST_GRADCHECK_H

#include "sd/tensor.h"

#define GC_MAX_INPUTS 6

typedef sd_tensor *(*gc_build_fn)(sd_graph *g, sd_tensor **inputs, void *ctx);

typedef struct gc_input {
    int ndim;
    int shape[SD_MAX_DIMS];
    float lo, hi;        /* inputs drawn uniformly from [lo, hi] */
    float min_abs;       /* resample values with |x| < min_abs (away from kinks); 0 = off */
    bool no_grad;        /* input is not differentiated (e.g. held constant) */
} gc_input;

typedef struct gc_result {
    double max_abs_err;  /* worst |analytic - numeric| */
    double max_rel_err;  /* worst error / (atol + rtol |numeric|) ratio; <= 1 passes */
    int worst_input, worst_index;
    double worst_analytic, worst_numeric;
    bool ok;
    char message[256];
} gc_result;

typedef struct gc_options {
    double eps;          /* default 1e-2 */
    double rtol, atol;   /* defaults 1e-2, 1e-3 (atol scaled by max(1, max|grad|)) */
    int max_probe;       /* elements probed per input, default 64 */
    unsigned seed;       /* default 1 */
} gc_options;

/* Run the check; result->ok tells whether every probed element passed. */
gc_result gc_check(gc_build_fn fn, void *ctx, int n_inputs, const gc_input *inputs,
                   const gc_options *opt);

/* Convenience for Check tests: fail with the result's message. */
#define GC_ASSERT(res) ck_assert_msg((res).ok, "%s", (res).message)

#endif
