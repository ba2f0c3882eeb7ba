/* optim.c - optimizers over one flat parameter buffer (see sd/optim.h).
 *
 * Each update is elementwise, so the loops are split across OpenMP threads
 * with a static schedule (and auto-vectorised where possible); the result of every element is the
 * same whatever the thread count. The only reduction (the clipping norm) uses
 * a fixed partition into blocks that does not depend on the thread count.
 */
#include "sd/optim.h"

#include <math.h>

#ifdef _OPENMP
#define SD_PRAGMA(x) _Pragma(#x)
/* Below ~32k floats the fork/join costs more than the loop. The clause only
 * changes who computes each element, never the value. Loops using it must
 * call their length `n`. No `simd` clause: clang reports every forced-simd
 * loop it cannot vectorise (-Wpass-failed), which breaks warning-free builds;
 * the loops are plain enough for the auto-vectoriser. */
#define SD_PAR_FOR SD_PRAGMA(omp parallel for schedule(static) if(n >= 32768))
#else
#define SD_PAR_FOR
#endif

#define SD_PI 3.14159265358979323846

struct sd_optimizer {
    sd_opt_config cfg;
    size_t n;
    int64_t t;       /* steps taken */
    size_t n_state;  /* number of state buffers in use */
    float *state[2]; /* n floats each, zero-initialised */
};

sd_opt_config sd_opt_defaults(sd_opt_kind kind)
{
    /* torch.optim defaults (PyTorch 2.x). */
    sd_opt_config c;
    c.kind = kind;
    c.lr = 1e-3f;
    c.momentum = 0.0f;
    c.beta1 = 0.9f;
    c.beta2 = 0.999f;
    c.eps = 1e-8f;
    c.weight_decay = 0.0f;
    c.rmsprop_alpha = 0.99f;
    switch (kind) {
    case SD_OPT_MOMENTUM:
    case SD_OPT_NESTEROV: c.momentum = 0.9f; break;
    case SD_OPT_ADAGRAD: c.lr = 1e-2f; c.eps = 1e-10f; break;
    case SD_OPT_RMSPROP: c.lr = 1e-2f; break;
    case SD_OPT_ADAMW: c.weight_decay = 1e-2f; break;
    case SD_OPT_SGD:
    case SD_OPT_ADAM: break;
    }
    return c;
}

static const char *kind_name(sd_opt_kind k)
{
    switch (k) {
    case SD_OPT_SGD: return "sgd";
    case SD_OPT_MOMENTUM: return "momentum";
    case SD_OPT_NESTEROV: return "nesterov";
    case SD_OPT_ADAGRAD: return "adagrad";
    case SD_OPT_RMSPROP: return "rmsprop";
    case SD_OPT_ADAM: return "adam";
    case SD_OPT_ADAMW: return "adamw";
    }
    return "?";
}

/* Validate the fields the kind uses, with the ranges torch.optim enforces
 * (plus alpha <= 1, beyond which RMSProp's average of squares can go negative). */
static sd_status check_config(const sd_opt_config *c)
{
    if ((int)c->kind < (int)SD_OPT_SGD || (int)c->kind > (int)SD_OPT_ADAMW)
        return sd_error(SD_ERR_INVALID, "optimizer: unknown kind %d", (int)c->kind);
    const char *k = kind_name(c->kind);
    if (!isfinite(c->lr) || c->lr < 0.0f)
        return sd_error(SD_ERR_INVALID, "optimizer %s: lr %g must be finite and >= 0", k,
                        (double)c->lr);
    if (!isfinite(c->weight_decay) || c->weight_decay < 0.0f)
        return sd_error(SD_ERR_INVALID, "optimizer %s: weight_decay %g must be finite and >= 0",
                        k, (double)c->weight_decay);
    switch (c->kind) {
    case SD_OPT_MOMENTUM:
    case SD_OPT_NESTEROV:
        if (!isfinite(c->momentum) || c->momentum < 0.0f)
            return sd_error(SD_ERR_INVALID, "optimizer %s: momentum %g must be finite and >= 0",
                            k, (double)c->momentum);
        if (c->kind == SD_OPT_NESTEROV && c->momentum == 0.0f)
            return sd_error(SD_ERR_INVALID, "optimizer nesterov: requires momentum > 0");
        break;
    case SD_OPT_RMSPROP:
        if (!(c->rmsprop_alpha >= 0.0f && c->rmsprop_alpha <= 1.0f))
            return sd_error(SD_ERR_INVALID, "optimizer rmsprop: alpha %g must be in [0, 1]",
                            (double)c->rmsprop_alpha);
        break;
    case SD_OPT_ADAM:
    case SD_OPT_ADAMW:
        if (!(c->beta1 >= 0.0f && c->beta1 < 1.0f) || !(c->beta2 >= 0.0f && c->beta2 < 1.0f))
            return sd_error(SD_ERR_INVALID, "optimizer %s: betas (%g, %g) must be in [0, 1)", k,
                            (double)c->beta1, (double)c->beta2);
        break;
    case SD_OPT_SGD:
    case SD_OPT_ADAGRAD: break;
    }
    if (c->kind == SD_OPT_ADAGRAD || c->kind == SD_OPT_RMSPROP || c->kind == SD_OPT_ADAM ||
        c->kind == SD_OPT_ADAMW) {
        if (!isfinite(c->eps) || c->eps < 0.0f)
            return sd_error(SD_ERR_INVALID, "optimizer %s: eps %g must be finite and >= 0", k,
                            (double)c->eps);
    }
    return SD_OK;
}

static size_t state_count(sd_opt_kind k)
{
    switch (k) {
    case SD_OPT_SGD: return 0;
    case SD_OPT_MOMENTUM:
    case SD_OPT_NESTEROV:
    case SD_OPT_ADAGRAD:
    case SD_OPT_RMSPROP: return 1;
    case SD_OPT_ADAM:
    case SD_OPT_ADAMW: return 2;
    }
    return 0;
}

sd_optimizer *sd_optimizer_new(const sd_opt_config *cfg, size_t n)
{
    if (!cfg) {
        sd_error(SD_ERR_INVALID, "sd_optimizer_new: config is NULL");
        return NULL;
    }
    if (check_config(cfg) != SD_OK) return NULL;
    sd_optimizer *o = sd_calloc(1, sizeof *o);
    if (!o) return NULL;
    o->cfg = *cfg;
    o->n = n;
    o->t = 0;
    o->n_state = state_count(cfg->kind);
    for (size_t k = 0; k < o->n_state; k++) {
        /* Zero state is PyTorch's initial state for Adagrad (initial
         * accumulator 0), RMSProp and Adam; the momentum buffer is overwritten
         * with g on the first step. */
        o->state[k] = sd_calloc(n, sizeof(float));
        if (!o->state[k]) {
            sd_optimizer_free(o);
            return NULL;
        }
    }
    return o;
}

void sd_optimizer_free(sd_optimizer *opt)
{
    if (!opt) return;
    sd_free(opt->state[0]);
    sd_free(opt->state[1]);
    sd_free(opt);
}

int64_t sd_optimizer_step_count(const sd_optimizer *opt)
{
    return opt ? opt->t : 0;
}

sd_status sd_optimizer_set_step_count(sd_optimizer *opt, int64_t t)
{
    if (!opt) return sd_error(SD_ERR_INVALID, "sd_optimizer_set_step_count: optimizer is NULL");
    if (t < 0)
        return sd_error(SD_ERR_INVALID, "sd_optimizer_set_step_count: negative step %lld",
                        (long long)t);
    opt->t = t;
    return SD_OK;
}

size_t sd_optimizer_n_state(const sd_optimizer *opt)
{
    return opt ? opt->n_state : 0;
}

float *sd_optimizer_state(sd_optimizer *opt, int k)
{
    if (!opt || k < 0 || (size_t)k >= opt->n_state) return NULL;
    return opt->state[k];
}

size_t sd_optimizer_size(const sd_optimizer *opt)
{
    return opt ? opt->n : 0;
}

sd_opt_config sd_optimizer_config(const sd_optimizer *opt)
{
    if (!opt) {
        sd_opt_config zero = {0};
        return zero;
    }
    return opt->cfg;
}

/* --- update kernels: one per kind, straight from the torch.optim pseudo-code.
 * `wd` is the coupled L2 coefficient (g <- g + wd p), applied only when
 * nonzero as in PyTorch (so that 0 * inf parameters do not become NaN). */

static void step_sgd(float *restrict p, const float *restrict g, size_t n, float lr, float wd)
{
    SD_PAR_FOR
    for (size_t i = 0; i < n; i++) {
        float gi = wd != 0.0f ? g[i] + wd * p[i] : g[i];
        p[i] -= lr * gi;
    }
}

/* SGD with momentum, dampening 0 (torch.optim.SGD):
 *   b_1 = g_1,  b_t = mu b_{t-1} + g_t,
 *   heavy ball: p -= lr b_t;  Nesterov: p -= lr (g_t + mu b_t). */
static void step_momentum(float *restrict p, const float *restrict g, float *restrict b, size_t n,
                          float lr, float wd, float mu, int first, int nesterov)
{
    SD_PAR_FOR
    for (size_t i = 0; i < n; i++) {
        float gi = wd != 0.0f ? g[i] + wd * p[i] : g[i];
        float bi = first ? gi : mu * b[i] + gi;
        b[i] = bi;
        p[i] -= lr * (nesterov ? gi + mu * bi : bi);
    }
}

/* Adagrad (Duchi et al. 2011, diagonal form; torch.optim.Adagrad):
 *   s_t = s_{t-1} + g_t^2,  p -= lr g_t / (sqrt(s_t) + eps). */
static void step_adagrad(float *restrict p, const float *restrict g, float *restrict s, size_t n,
                         float lr, float wd, float eps)
{
    SD_PAR_FOR
    for (size_t i = 0; i < n; i++) {
        float gi = wd != 0.0f ? g[i] + wd * p[i] : g[i];
        float si = s[i] + gi * gi;
        s[i] = si;
        p[i] -= lr * gi / (sqrtf(si) + eps);
    }
}

/* RMSProp (Tieleman & Hinton 2012; torch.optim.RMSprop, not centred):
 *   v_t = a v_{t-1} + (1 - a) g_t^2,  p -= lr g_t / (sqrt(v_t) + eps). */
static void step_rmsprop(float *restrict p, const float *restrict g, float *restrict v, size_t n,
                         float lr, float wd, float alpha, float eps)
{
    const float one_minus_alpha = 1.0f - alpha;
    SD_PAR_FOR
    for (size_t i = 0; i < n; i++) {
        float gi = wd != 0.0f ? g[i] + wd * p[i] : g[i];
        float vi = alpha * v[i] + one_minus_alpha * gi * gi;
        v[i] = vi;
        p[i] -= lr * gi / (sqrtf(vi) + eps);
    }
}

/* Adam (Kingma & Ba 2015, Alg. 1) in torch.optim.Adam's arrangement:
 *   m_t = b1 m + (1 - b1) g,  v_t = b2 v + (1 - b2) g^2,
 *   p -= [lr / (1 - b1^t)] m_t / (sqrt(v_t) / sqrt(1 - b2^t) + eps),
 * which is lr m_hat / (sqrt(v_hat) + eps) with m_hat = m_t / (1 - b1^t),
 * v_hat = v_t / (1 - b2^t). step_size and sqrt(1 - b2^t) come in from double.
 * decay (AdamW only) is the decoupled factor 1 - lr wd applied to p first. */
static void step_adam(float *restrict p, const float *restrict g, float *restrict m,
                      float *restrict v, size_t n, float wd, float decay, float b1, float b2,
                      float eps, float step_size, float bc2_sqrt)
{
    const float omb1 = 1.0f - b1, omb2 = 1.0f - b2;
    SD_PAR_FOR
    for (size_t i = 0; i < n; i++) {
        float pi = p[i] * decay;
        float gi = wd != 0.0f ? g[i] + wd * pi : g[i];
        float mi = b1 * m[i] + omb1 * gi;
        float vi = b2 * v[i] + omb2 * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] = pi - step_size * mi / (sqrtf(vi) / bc2_sqrt + eps);
    }
}

sd_status sd_optimizer_step(sd_optimizer *opt, float *p, const float *g, float lr)
{
    if (!opt) return sd_error(SD_ERR_INVALID, "sd_optimizer_step: optimizer is NULL");
    const size_t n = opt->n;
    if (n > 0 && (!p || !g))
        return sd_error(SD_ERR_INVALID, "sd_optimizer_step: NULL parameter or gradient buffer");
    if (!isfinite(lr) || lr < 0.0f)
        return sd_error(SD_ERR_INVALID, "sd_optimizer_step: lr %g must be finite and >= 0",
                        (double)lr);
    if (opt->t == INT64_MAX)
        return sd_error(SD_ERR_INVALID, "sd_optimizer_step: step counter overflow");
    const int64_t t = ++opt->t;
    const sd_opt_config *c = &opt->cfg;
    const float wd = c->weight_decay;

    switch (c->kind) {
    case SD_OPT_SGD: step_sgd(p, g, n, lr, wd); break;
    case SD_OPT_MOMENTUM:
    case SD_OPT_NESTEROV:
        step_momentum(p, g, opt->state[0], n, lr, wd, c->momentum, t == 1,
                      c->kind == SD_OPT_NESTEROV);
        break;
    case SD_OPT_ADAGRAD: step_adagrad(p, g, opt->state[0], n, lr, wd, c->eps); break;
    case SD_OPT_RMSPROP:
        step_rmsprop(p, g, opt->state[0], n, lr, wd, c->rmsprop_alpha, c->eps);
        break;
    case SD_OPT_ADAM:
    case SD_OPT_ADAMW: {
        /* Bias corrections in double: for b2 = 0.999 and small t, 1 - b2^t
         * loses most of its digits in float. */
        const double bc1 = 1.0 - pow((double)c->beta1, (double)t);
        const double bc2 = 1.0 - pow((double)c->beta2, (double)t);
        const float step_size = (float)((double)lr / bc1);
        const float bc2_sqrt = (float)sqrt(bc2);
        const int decoupled = c->kind == SD_OPT_ADAMW;
        const float decay = decoupled ? (float)(1.0 - (double)lr * (double)wd) : 1.0f;
        step_adam(p, g, opt->state[0], opt->state[1], n, decoupled ? 0.0f : wd, decay, c->beta1,
                  c->beta2, c->eps, step_size, bc2_sqrt);
        break;
    }
    }
    return SD_OK;
}

/* --- gradient clipping ------------------------------------------------- */

/* The sum of squares is split into SD_CLIP_BLOCKS contiguous blocks whose
 * boundaries depend only on n. Threads compute whole blocks (each summed
 * sequentially in double with 4 interleaved accumulators combined in a fixed
 * order), and the block sums are added in index order on one thread: the
 * result is bit-identical for any thread count. */
#define SD_CLIP_BLOCKS 256

float sd_clip_grad_norm(float *g, size_t n, float max_norm)
{
    double part[SD_CLIP_BLOCKS];
    const size_t bs = n / SD_CLIP_BLOCKS + (n % SD_CLIP_BLOCKS != 0);
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if(n >= 65536)
#endif
    for (int b = 0; b < SD_CLIP_BLOCKS; b++) {
        size_t lo = (size_t)b * bs, hi = lo + bs;
        if (lo > n) lo = n;
        if (hi > n) hi = n;
        double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0;
        size_t i = lo;
        for (; i + 4 <= hi; i += 4) {
            a0 += (double)g[i] * g[i];
            a1 += (double)g[i + 1] * g[i + 1];
            a2 += (double)g[i + 2] * g[i + 2];
            a3 += (double)g[i + 3] * g[i + 3];
        }
        for (; i < hi; i++) a0 += (double)g[i] * g[i];
        part[b] = (a0 + a1) + (a2 + a3);
    }
    double total = 0.0;
    for (int b = 0; b < SD_CLIP_BLOCKS; b++) total += part[b];
    const double norm = sqrt(total);
    if (!isfinite(norm)) return (float)norm;
    /* torch.nn.utils.clip_grad_norm_: coef = max_norm / (norm + 1e-6). PyTorch
     * multiplies by min(coef, 1) unconditionally; scaling only when
     * norm > max_norm differs from that by < 1e-6 relative and leaves
     * in-bound gradients bit-exact. */
    if (max_norm >= 0.0f && norm > (double)max_norm) {
        const float coef = (float)((double)max_norm / (norm + 1e-6));
        SD_PAR_FOR
        for (size_t i = 0; i < n; i++) g[i] *= coef;
    }
    return (float)norm;
}

/* --- learning-rate schedule and EMA -------------------------------------- */

float sd_lr_at(const sd_lr_schedule *s, int64_t step)
{
    if (!s) return 0.0f;
    if (step < 0) step = 0;
    const double base = s->base_lr, lo = s->min_lr;
    if (s->warmup_steps > 0 && step < s->warmup_steps)
        return (float)(base * (double)(step + 1) / (double)s->warmup_steps);
    if (!s->cosine) return s->base_lr;
    const int64_t w = s->warmup_steps > 0 ? s->warmup_steps : 0;
    if (step >= s->total_steps) return s->min_lr;
    /* SGDR Eq. 5 (one cycle, T_cur = step - w, T_i = total - w):
     * lr = min + (base - min) (1 + cos(pi T_cur / T_i)) / 2. Here step >= w and
     * step < total, so T_i > 0 and the progress is in [0, 1). */
    const double progress = (double)(step - w) / (double)(s->total_steps - w);
    return (float)(lo + 0.5 * (base - lo) * (1.0 + cos(SD_PI * progress)));
}

void sd_ema_update(float *ema, const float *p, size_t n, float decay)
{
    const float omd = 1.0f - decay;
    SD_PAR_FOR
    for (size_t i = 0; i < n; i++) ema[i] = decay * ema[i] + omd * p[i];
}

float sd_ema_decay_warmup(float decay, int64_t step)
{
    if (step < 0) step = 0;
    const double w = (1.0 + (double)step) / (10.0 + (double)step);
    return (double)decay < w ? decay : (float)w;
}
