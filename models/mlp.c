/* mlp.c - the reference MLP score network; see mlp.h. */
#include "sd/mlp.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "sd/ops.h"

#define MLP_MAX_WIDTH (1 << 20)

sd_mlp_config sd_mlp_reference(int dim)
{
    return (sd_mlp_config){.dim = dim, .hidden = 128, .n_hidden_layers = 3};
}

sd_status sd_mlp_config_check(const sd_mlp_config *c)
{
    if (!c) return sd_error(SD_ERR_INVALID, "mlp: NULL config");
    if (c->dim < 1 || c->dim > MLP_MAX_WIDTH)
        return sd_error(SD_ERR_INVALID, "mlp: dim = %d must be in [1, %d]", c->dim, MLP_MAX_WIDTH);
    if (c->hidden < 1 || c->hidden > MLP_MAX_WIDTH)
        return sd_error(SD_ERR_INVALID, "mlp: hidden = %d must be in [1, %d]", c->hidden,
                        MLP_MAX_WIDTH);
    if (c->n_hidden_layers < 1 || c->n_hidden_layers > SD_MLP_MAX_LAYERS)
        return sd_error(SD_ERR_INVALID, "mlp: n_hidden_layers = %d must be in [1, %d]",
                        c->n_hidden_layers, SD_MLP_MAX_LAYERS);
    return SD_OK;
}

sd_status sd_mlp_declare(const sd_mlp_config *cfg, sd_params *p, sd_mlp *net)
{
    sd_status st = sd_mlp_config_check(cfg);
    if (st != SD_OK) return st;
    if (!p || !net) return sd_error(SD_ERR_INVALID, "mlp: NULL params or net");
    if (p->finalized) return sd_error(SD_ERR_INVALID, "mlp: params already finalized");
    memset(net, 0, sizeof *net);
    net->cfg = *cfg;
    if (sd_fourier_declare(p, "fourier", &net->fourier) != SD_OK) return SD_ERR_INVALID;
    char name[SD_PARAM_NAME_MAX];
    int in = cfg->dim + SD_FOURIER_DIM; /* [x, e0] */
    for (int i = 0; i < cfg->n_hidden_layers; i++) {
        snprintf(name, sizeof name, "layers.%d.weight", i);
        net->w[i] = sd_params_add(p, name, 2, (int[]){cfg->hidden, in});
        snprintf(name, sizeof name, "layers.%d.bias", i);
        net->b[i] = sd_params_add(p, name, 1, (int[]){cfg->hidden});
        if (net->w[i] < 0 || net->b[i] < 0) return SD_ERR_INVALID;
        in = cfg->hidden;
    }
    net->out_w = sd_params_add(p, "out.weight", 2, (int[]){cfg->dim, in});
    net->out_b = sd_params_add(p, "out.bias", 1, (int[]){cfg->dim});
    return (net->out_w < 0 || net->out_b < 0) ? SD_ERR_INVALID : SD_OK;
}

/* PyTorch Linear.reset_parameters: weight and bias U(-1/sqrt(in), 1/sqrt(in)). */
static void init_linear(sd_params *p, int w, int b, sd_rng *rng)
{
    float bound = 1.0f / sqrtf((float)p->items[w].shape[1]);
    sd_params_init_uniform(p, w, rng, bound);
    sd_params_init_uniform(p, b, rng, bound);
}

void sd_mlp_init(const sd_mlp *net, sd_params *p, sd_rng *rng)
{
    sd_fourier_init(&net->fourier, p, rng);
    for (int i = 0; i < net->cfg.n_hidden_layers; i++) init_linear(p, net->w[i], net->b[i], rng);
    init_linear(p, net->out_w, net->out_b, rng);
}

sd_tensor *sd_mlp_forward(const sd_mlp *net, sd_params *p, sd_graph *g, sd_tensor *x,
                          const float *cond, const float *sigma)
{
    if (!x) return NULL;
    const int D = net->cfg.dim;
    char sb[64];
    if (x->ndim != 2 || x->shape[1] != D)
        return sd_graph_fail(g, SD_ERR_INVALID, "mlp: x has shape %s, expected [N, %d]",
                           sd_shape_str(x, sb, sizeof sb), D);
    if (!cond || !sigma) return sd_graph_fail(g, SD_ERR_INVALID, "mlp: NULL cond or sigma");
    const int n = x->shape[0];
    sd_tensor *sig = sd_tensor_new(g, 2, (int[]){n, 1}); /* per-sample divisor, [N, 1] */
    if (!sig) return NULL;
    for (int i = 0; i < n; i++) {
        if (!(sigma[i] > 0.0f) || !isfinite(sigma[i]))
            return sd_graph_fail(g, SD_ERR_INVALID, "mlp: sigma[%d] = %g must be positive and finite",
                               i, (double)sigma[i]);
        sig->data[i] = sigma[i];
    }
    sd_tensor *e0 = sd_fourier_embed(&net->fourier, p, g, cond, n);
    /* [x, e0] along features: the concat op works on NCHW channels, so view
     * the rows as [N, D, 1, 1] and [N, 32, 1, 1]. */
    sd_tensor *h = sd_concat_channels(g, sd_reshape(g, x, 4, (int[]){n, D, 1, 1}),
                                      sd_reshape(g, e0, 4, (int[]){n, SD_FOURIER_DIM, 1, 1}));
    h = sd_reshape(g, h, 2, (int[]){n, D + SD_FOURIER_DIM});
    for (int i = 0; i < net->cfg.n_hidden_layers; i++)
        h = sd_silu(g, sd_linear(g, h, sd_params_tensor(g, p, net->w[i]),
                                 sd_params_tensor(g, p, net->b[i])));
    h = sd_linear(g, h, sd_params_tensor(g, p, net->out_w), sd_params_tensor(g, p, net->out_b));
    return sd_div(g, h, sig);
}
