/* sample.c - the common sampler driver: score oracles over models, options,
 * batching with per-sample random streams, progress, NFE statistics, and the
 * small helpers every sampler shares (exact transitions, Tweedie denoising).
 * See sampler.h for the contract.
 *
 * Vocabulary: N samples in the run, B batch size, n samples in this batch,
 * D = C*H*W values per sample, t time of the forward process (t = 1 prior).
 */
#include "sd/sampler.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

/* ---- score oracles ----------------------------------------------------- */

typedef struct model_adapter {
    sd_model *m;
    sd_graph *g;      /* networks */
    int n_clones;     /* gmm: one copy per thread (sd_gmm is not thread-safe) */
    sd_gmm **clones;
} model_adapter;

/* Points per parallel chunk of the analytic mixture: fixed, so the split and
 * hence the result do not depend on the thread count. Batches under
 * GMM_PAR_MIN points stay on one thread: a parallel region costs a scheduler
 * wake-up, which on a loaded machine outweighs a small batch's work. */
#define GMM_CHUNK 64
#define GMM_PAR_MIN 1024

static sd_status gmm_score_parallel(model_adapter *a, const float *x, size_t n, double t,
                                    float *out)
{
    size_t D = a->m->D, n_chunks = (n + GMM_CHUNK - 1) / GMM_CHUNK;
    sd_status st = SD_OK;
    char msg[256] = "";
    int nt = omp_get_max_threads();
    if (nt > a->n_clones) nt = a->n_clones;
    if (n < GMM_PAR_MIN) nt = 1;
#pragma omp parallel num_threads(nt)
    {
        sd_gmm *g = a->clones[omp_get_thread_num()];
#pragma omp for schedule(static)
        for (long c = 0; c < (long)n_chunks; c++) {
            size_t lo = (size_t)c * GMM_CHUNK, hi = lo + GMM_CHUNK < n ? lo + GMM_CHUNK : n;
            sd_status s = sd_gmm_score(g, &a->m->sde, t, x + lo * D, out + lo * D, hi - lo);
            if (s != SD_OK) {
#pragma omp critical(sd_gmm_score_error)
                if (st == SD_OK) {
                    st = s;
                    snprintf(msg, sizeof msg, "%s", sd_error_message());
                }
            }
        }
    }
    /* the message was recorded on a worker thread: set it on this one */
    if (st != SD_OK) return sd_error(st, "%s", msg);
    return SD_OK;
}

static sd_status model_score(void *ctx, const float *x, size_t n, double t, float *out)
{
    model_adapter *a = ctx;
    if (a->m->kind == SD_MODEL_GMM) return gmm_score_parallel(a, x, n, t, out);
    return sd_model_score(a->m, a->g, x, n, t, out);
}

static void adapter_free(model_adapter *a)
{
    if (!a) return;
    sd_graph_free(a->g);
    for (int i = 0; i < a->n_clones; i++) sd_gmm_free(a->clones[i]);
    sd_free(a->clones);
    sd_free(a);
}

sd_status sd_scorer_from_model(sd_model *m, sd_scorer *out)
{
    memset(out, 0, sizeof *out);
    if (!m) return sd_error(SD_ERR_INVALID, "sampler: no model");
    model_adapter *a = sd_calloc(1, sizeof *a);
    if (!a) return SD_ERR_NOMEM;
    a->m = m;
    sd_status st = SD_OK;
    if (m->kind == SD_MODEL_GMM) {
        int nt = omp_get_max_threads();
        a->clones = sd_calloc((size_t)nt, sizeof *a->clones);
        if (!a->clones) st = SD_ERR_NOMEM;
        const sd_gmm *g = m->gmm;
        for (int i = 0; i < nt && st == SD_OK; i++) {
            st = sd_gmm_new(sd_gmm_components(g), sd_gmm_dim(g), sd_gmm_weights(g),
                            sd_gmm_means(g), sd_gmm_covs(g), &a->clones[i]);
            if (st == SD_OK) a->n_clones = i + 1;
        }
    } else {
        a->g = sd_graph_new();
        if (!a->g) st = sd_error(SD_ERR_NOMEM, "sampler: cannot create a graph");
    }
    if (st != SD_OK) {
        adapter_free(a);
        return st;
    }
    sd_scorer_from_fn(out, model_score, a, &m->sde, m->C, m->H, m->W);
    out->priv = a;
    return SD_OK;
}

void sd_scorer_from_fn(sd_scorer *out, sd_score_fn fn, void *ctx, const sd_sde *sde, int C, int H,
                       int W)
{
    memset(out, 0, sizeof *out);
    out->fn = fn;
    out->ctx = ctx;
    out->sde = *sde;
    out->C = C;
    out->H = H;
    out->W = W;
    out->D = (size_t)C * (size_t)H * (size_t)W;
}

void sd_scorer_release(sd_scorer *s)
{
    if (!s) return;
    adapter_free(s->priv);
    s->priv = NULL;
}

sd_status sd_scorer_eval(sd_scorer *s, const float *x, size_t n, double t, float *out)
{
    s->nfe++;
    s->points += (int64_t)n;
    sd_status st = s->fn(s->ctx, x, n, t, out);
    if (st != SD_OK) return st;
    size_t total = n * s->D;
    for (size_t i = 0; i < total; i++)
        if (!isfinite(out[i]))
            return sd_error(SD_ERR_NUMERIC, "sampler: the score is not finite at t = %.6g "
                                            "(sample %zu)", t, i / s->D);
    return SD_OK;
}

/* ---- options ---------------------------------------------------------------- */

sd_sampler_opts sd_sampler_defaults(sd_sampler_kind kind)
{
    sd_sampler_opts o;
    memset(&o, 0, sizeof o);
    o.kind = kind;
    o.t_eps = -1.0;
    o.denoise = kind != SD_SAMPLER_ODE; /* as Song et al.'s samplers: pc yes, ode no */
    o.levels = 10;
    o.steps_per_level = 100;
    o.step_eps = 0.0;
    o.predictor = SD_PRED_REVERSE_DIFFUSION;
    o.corrector = true;
    o.corrector_steps = 1;
    o.snr = 0.16;
    o.steps = kind == SD_SAMPLER_PC      ? 1000
              : kind == SD_SAMPLER_HEUN  ? 18 /* 35 NFE */
              : kind == SD_SAMPLER_DPM2M ? 20 /* 20 NFE */
                                         : 100;
    o.schedule = SD_SCHEDULE_DEFAULT;
    o.rho = 7.0;
    o.s_tmin = 0.0;
    o.s_tmax = INFINITY;
    o.s_noise = 1.0;
    o.ode_method = SD_ODE_RK45;
    o.rtol = 1e-5;
    o.atol = 1e-5;
    o.batch = 256;
    return o;
}

int sd_sampler_kind_parse(const char *name, sd_sampler_kind *out)
{
    if (strcmp(name, "langevin") == 0) *out = SD_SAMPLER_LANGEVIN;
    else if (strcmp(name, "pc") == 0) *out = SD_SAMPLER_PC;
    else if (strcmp(name, "ode") == 0) *out = SD_SAMPLER_ODE;
    else if (strcmp(name, "heun") == 0) *out = SD_SAMPLER_HEUN;
    else if (strcmp(name, "dpm2m") == 0) *out = SD_SAMPLER_DPM2M;
    else return 0;
    return 1;
}

int sd_predictor_parse(const char *name, sd_predictor *out)
{
    if (strcmp(name, "euler_maruyama") == 0 || strcmp(name, "em") == 0)
        *out = SD_PRED_EULER_MARUYAMA;
    else if (strcmp(name, "reverse_diffusion") == 0 || strcmp(name, "rd") == 0)
        *out = SD_PRED_REVERSE_DIFFUSION;
    else if (strcmp(name, "ancestral") == 0) *out = SD_PRED_ANCESTRAL;
    else if (strcmp(name, "none") == 0) *out = SD_PRED_NONE;
    else return 0;
    return 1;
}

const char *sd_sampler_kind_name(sd_sampler_kind k)
{
    switch (k) {
    case SD_SAMPLER_LANGEVIN: return "langevin";
    case SD_SAMPLER_PC: return "pc";
    case SD_SAMPLER_ODE: return "ode";
    case SD_SAMPLER_HEUN: return "heun";
    case SD_SAMPLER_DPM2M: return "dpm2m";
    }
    return "?";
}

const char *sd_predictor_name(sd_predictor p)
{
    switch (p) {
    case SD_PRED_NONE: return "none";
    case SD_PRED_EULER_MARUYAMA: return "euler_maruyama";
    case SD_PRED_REVERSE_DIFFUSION: return "reverse_diffusion";
    case SD_PRED_ANCESTRAL: return "ancestral";
    }
    return "?";
}

double sd__t_eps(const sd_sde *sde, const sd_sampler_opts *o)
{
    return o->t_eps >= 0 ? o->t_eps : sd_sde_default_eps(sde);
}

static sd_status validate(const sd_scorer *sc, const sd_sampler_opts *o, int mode)
{
    const sd_sde *sde = &sc->sde;
    double eps = sd__t_eps(sde, o);
    if (!sc->fn || sc->D == 0) return sd_error(SD_ERR_INVALID, "sampler: no score model");
    if (o->batch < 1) return sd_error(SD_ERR_INVALID, "sampler: batch must be >= 1");
    if (!(eps >= 0 && eps < 1))
        return sd_error(SD_ERR_INVALID, "sampler: the smallest time must be in [0, 1) (got %g)",
                        eps);
    bool vp_like = sd_sde_has(sde, SD_SDE_DEGENERATE_AT_ZERO);
    sd_sampler_kind kind = mode == 0 ? o->kind : SD_SAMPLER_ODE;
    /* Tweedie's denoiser needs a Gaussian kernel (sd_sde_tweedie): the
     * langevin sampler, pc without predictor and ode use it when denoise is on. */
    bool tweedie = mode == 0 && o->denoise &&
                   (kind == SD_SAMPLER_LANGEVIN || kind == SD_SAMPLER_ODE ||
                    (kind == SD_SAMPLER_PC && o->predictor == SD_PRED_NONE));
    if (tweedie && sd_sde_state_dependent(sde))
        return sd_error(SD_ERR_INVALID, "%s: the final denoising step (Tweedie) needs a Gaussian "
                                        "kernel, which %s does not have; turn denoising off",
                        sd_sampler_kind_name(kind), sd_sde_name(sde));
    if (kind == SD_SAMPLER_LANGEVIN) {
        if (o->steps_per_level < 1)
            return sd_error(SD_ERR_INVALID, "langevin: steps per level must be >= 1");
        if (!sd_sde_has(sde, SD_SDE_DISCRETE_LEVELS) && o->levels < 1)
            return sd_error(SD_ERR_INVALID, "langevin: levels must be >= 1");
        if (!(o->step_eps >= 0) || !isfinite(o->step_eps))
            return sd_error(SD_ERR_INVALID, "langevin: step eps must be >= 0");
        if (vp_like && eps <= 0)
            return sd_error(SD_ERR_INVALID, "langevin: %s needs a smallest time > 0 (sigma(0) = "
                                            "0)", sd_sde_name(sde));
    } else if (kind == SD_SAMPLER_PC) {
        if (o->predictor < SD_PRED_NONE || o->predictor > SD_PRED_ANCESTRAL)
            return sd_error(SD_ERR_INVALID, "pc: unknown predictor");
        if (o->predictor == SD_PRED_NONE && !o->corrector)
            return sd_error(SD_ERR_INVALID, "pc: predictor none needs the corrector");
        if (o->corrector && (o->corrector_steps < 1 || !(o->snr > 0) || !isfinite(o->snr)))
            return sd_error(SD_ERR_INVALID, "pc: the corrector needs steps >= 1 and snr > 0");
        if (!sd_sde_has(sde, SD_SDE_DISCRETE_LEVELS) && o->steps < 1)
            return sd_error(SD_ERR_INVALID, "pc: steps must be >= 1");
        if (!sd_sde_is_isotropic(sde) && (o->predictor == SD_PRED_REVERSE_DIFFUSION ||
                                          o->predictor == SD_PRED_ANCESTRAL))
            return sd_error(SD_ERR_INVALID, "pc: the %s predictor uses the exact scalar "
                                            "transitions of an isotropic family (ncsn, ve, vp, "
                                            "subvp), not %s; use euler_maruyama (em)",
                            sd_predictor_name(o->predictor), sd_sde_name(sde));
    } else if (kind == SD_SAMPLER_ODE) {
        if (o->ode_method == SD_ODE_RK45) {
            if (!(o->rtol > 0) || !(o->atol > 0))
                return sd_error(SD_ERR_INVALID, "ode: rtol and atol must be > 0");
        } else if (o->ode_method >= SD_ODE_EULER && o->ode_method <= SD_ODE_RK4) {
            if (o->steps < 1) return sd_error(SD_ERR_INVALID, "ode: steps must be >= 1");
        } else {
            return sd_error(SD_ERR_INVALID, "ode: unknown method");
        }
        if (o->schedule != SD_SCHEDULE_DEFAULT) {
            double lo, hi;
            if (o->ode_method == SD_ODE_RK45)
                return sd_error(SD_ERR_INVALID, "ode: a schedule is a grid of fixed steps; rk45 "
                                                "chooses its own (use euler, heun or rk4)");
            if (o->sigma_min > 0 || o->sigma_max > 0)
                return sd_error(SD_ERR_INVALID, "ode: the flow runs from t = 1 to the smallest "
                                                "time; set that (t_eps) instead of a sigma range");
            if (!(o->rho > 0) || !isfinite(o->rho))
                return sd_error(SD_ERR_INVALID, "ode: rho must be > 0");
            sd_status st = sd_schedule_range(sde, o, &lo, &hi);
            if (st != SD_OK) return st;
        }
    } else if (kind == SD_SAMPLER_HEUN || kind == SD_SAMPLER_DPM2M) {
        const char *nm = sd_sampler_kind_name(kind);
        double lo, hi;
        if (!sd_sde_is_isotropic(sde))
            return sd_error(SD_ERR_INVALID, "%s: needs an isotropic noise family (ncsn, ve, vp, "
                                            "subvp), not %s, whose noise is not a multiple of I; "
                                            "use pc or ode", nm, sd_sde_name(sde));
        if (o->steps < 1) return sd_error(SD_ERR_INVALID, "%s: steps must be >= 1", nm);
        if (o->schedule < SD_SCHEDULE_DEFAULT || o->schedule > SD_SCHEDULE_UNIFORM)
            return sd_error(SD_ERR_INVALID, "%s: unknown schedule", nm);
        if (!(o->rho > 0) || !isfinite(o->rho))
            return sd_error(SD_ERR_INVALID, "%s: rho must be > 0", nm);
        if (!(o->churn >= 0) || !isfinite(o->churn) || !(o->s_noise >= 0) ||
            !isfinite(o->s_noise) || !(o->s_tmin >= 0) || !(o->s_tmin <= o->s_tmax))
            return sd_error(SD_ERR_INVALID, "%s: need churn >= 0, s_noise >= 0 and "
                                            "0 <= s_tmin <= s_tmax", nm);
        if (kind == SD_SAMPLER_DPM2M && o->churn > 0)
            return sd_error(SD_ERR_INVALID, "dpm2m: churn is heun's (dpm2m is deterministic)");
        sd_status st = sd_schedule_range(sde, o, &lo, &hi);
        if (st != SD_OK) return st;
    } else {
        return sd_error(SD_ERR_INVALID, "sampler: unknown kind %d", (int)o->kind);
    }
    return SD_OK;
}

/* ---- shared helpers ----------------------------------------------------------- */

void sd__transition(const sd_sde *sde, double t, double s, double *a_ts, double *v,
                    double *sig_t2, double *sig_s2)
{
    double at = sd_sde_mean_coef(sde, t), st = sd_sde_sigma(sde, t);
    double as = s < 0 ? 1.0 : sd_sde_mean_coef(sde, s), ss = s < 0 ? 0.0 : sd_sde_sigma(sde, s);
    double a = at / as, var = st * st - a * a * ss * ss;
    *a_ts = a;
    *v = var > 0 ? var : 0.0;
    if (sig_t2) *sig_t2 = st * st;
    if (sig_s2) *sig_s2 = ss * ss;
}

sd_status sd__score(sd__batch *b, const float *x, double t, float *out)
{
    b->nfe++;
    b->prog.nfe = b->nfe;
    return sd_scorer_eval(b->sc, x, b->n, t, out);
}

/* Noise for every sample from its own stream; samples are independent, so
 * splitting them over threads changes nothing. Only large batches are split
 * (a parallel region must have ~1 ms of work to pay for its wake-up). */
void sd__noise(sd__batch *b, float *z)
{
    size_t D = b->D;
    long n = (long)b->n;
#pragma omp parallel for schedule(static) if (b->n * D >= 65536)
    for (long i = 0; i < n; i++) sd_rng_fill_normal(&b->rng[i], z + (size_t)i * D, D, 0.0f, 1.0f);
}

sd_status sd__observe(sd__batch *b, double t, double frac, bool final)
{
    if (!b->o->observer) return SD_OK;
    b->prog.t = t;
    b->prog.frac = frac;
    b->prog.x = b->x;
    b->prog.final = final;
    return b->o->observer(b->o->observer_ctx, &b->prog);
}

sd_status sd__check_finite(sd__batch *b, double t)
{
    size_t total = b->n * b->D;
    for (size_t i = 0; i < total; i++)
        if (!isfinite(b->x[i]))
            return sd_error(SD_ERR_NUMERIC, "sampler (%s): sample %zu diverged at t = %.6g; "
                                            "try smaller steps", sd_sampler_kind_name(b->o->kind),
                            b->prog.first + i / b->D, t);
    return SD_OK;
}

sd_status sd__denoise(sd__batch *b, double t)
{
    sd_status st = sd__score(b, b->x, t, b->s);
    if (st != SD_OK) return st;
    /* Tweedie: E[x_0 | x_t] = A^-1 (x + Sigma s) (Efron 2011; NCSNv2's x + sigma^2 s) */
    if (!sd_sde_is_isotropic(&b->sc->sde))
        return sd_sde_tweedie(&b->sc->sde, t, b->x, b->s, b->x, b->n, b->D);
    double a = sd_sde_mean_coef(&b->sc->sde, t), sig = sd_sde_sigma(&b->sc->sde, t);
    float c1 = (float)(1.0 / a), c2 = (float)(sig * sig / a);
    size_t total = b->n * b->D;
    for (size_t i = 0; i < total; i++) b->x[i] = c1 * b->x[i] + c2 * b->s[i];
    return SD_OK;
}

sd_status sd__constrain(sd__batch *b, double t)
{
    return b->constrain ? b->constrain(b->constrain_ctx, b, t) : SD_OK;
}

/* ---- driver --------------------------------------------------------------------- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

sd_status sd__run(sd_scorer *sc, const sd_sampler_opts *o, size_t n, const float *init, float *out,
                  int mode, sd__constrain_fn constrain, void *constrain_ctx,
                  sd_sample_stats *stats)
{
    sd_sample_stats local;
    sd_sample_stats *ss = stats ? stats : &local;
    memset(ss, 0, sizeof *ss);
    if (!sc || !o || (!out && n)) return sd_error(SD_ERR_INVALID, "sampler: missing arguments");
    sd_status st = validate(sc, o, mode);
    if (st != SD_OK || n == 0) return st;
    double t0 = now_s();
    size_t D = sc->D, B = o->batch < n ? o->batch : n, bytes;
    if (sd_mul_size(B, D * sizeof(float), &bytes))
        return sd_error(SD_ERR_NOMEM, "sampler: batch of %zu x %zu overflows", B, D);
    sd__batch b;
    memset(&b, 0, sizeof b);
    b.sc = sc;
    b.o = o;
    b.D = D;
    b.constrain = constrain;
    b.constrain_ctx = constrain_ctx;
    b.x = sd_malloc(bytes);
    b.s = sd_malloc(bytes);
    b.z = sd_malloc(bytes);
    b.tmp = sd_malloc(bytes);
    b.rng = sd_calloc(B, sizeof *b.rng);
    if (!b.x || !b.s || !b.z || !b.tmp || !b.rng) {
        st = SD_ERR_NOMEM;
        goto done;
    }
    sd_rng parent;
    sd_rng_init(&parent, o->seed, SD_STREAM_SAMPLER);
    size_t n_batches = (n + B - 1) / B;
    double eps = sd__t_eps(&sc->sde, o);
    for (size_t bi = 0; bi < n_batches && st == SD_OK; bi++) {
        size_t first = bi * B, nb = first + B <= n ? B : n - first;
        b.n = nb;
        b.nfe = 0;
        b.ode_accepted = b.ode_rejected = 0;
        b.prog = (sd_sample_progress){.batch = bi, .n_batches = n_batches, .first = first,
                                      .n = nb, .total = n};
        for (size_t i = 0; i < nb; i++) sd_rng_split(&parent, first + i, &b.rng[i]);
        if (init) {
            memcpy(b.x, init + first * D, nb * D * sizeof(float));
        } else {
            for (size_t i = 0; i < nb && st == SD_OK; i++)
                st = sd_sde_prior_sample(&sc->sde, &b.rng[i], b.x + i * D, 1, D);
            if (st != SD_OK || (st = sd__constrain(&b, 1.0)) != SD_OK) break;
        }
        double t_start = mode == 1 ? eps : 1.0;
        if ((st = sd__observe(&b, t_start, 0.0, false)) != SD_OK) break;
        if (mode == 1) {
            st = sd__flow_batch(&b, eps, 1.0);
        } else if (mode == 2) {
            st = sd__flow_batch(&b, 1.0, eps);
        } else if (o->kind == SD_SAMPLER_LANGEVIN) {
            st = sd__langevin_batch(&b);
        } else if (o->kind == SD_SAMPLER_PC) {
            st = sd__pc_batch(&b);
        } else if (o->kind == SD_SAMPLER_HEUN) {
            st = sd__heun_batch(&b);
            if (st == SD_OK) st = sd__constrain(&b, -1.0);
        } else if (o->kind == SD_SAMPLER_DPM2M) {
            st = sd__dpm2m_batch(&b);
            if (st == SD_OK) st = sd__constrain(&b, -1.0);
        } else {
            st = sd__flow_batch(&b, 1.0, eps);
            if (st == SD_OK && o->denoise) st = sd__denoise(&b, eps);
            if (st == SD_OK) st = sd__constrain(&b, -1.0);
        }
        if (st == SD_OK) st = sd__check_finite(&b, mode == 1 ? 1.0 : eps);
        if (st == SD_OK) st = sd__observe(&b, mode == 1 ? 1.0 : eps, 1.0, true);
        if (st != SD_OK) break;
        memcpy(out + first * D, b.x, nb * D * sizeof(float));
        ss->batches++;
        ss->nfe += b.nfe;
        ss->points += b.nfe * (int64_t)nb;
        if (bi == 0 || b.nfe < ss->nfe_min) ss->nfe_min = b.nfe;
        if (b.nfe > ss->nfe_max) ss->nfe_max = b.nfe;
        ss->ode_accepted += b.ode_accepted;
        ss->ode_rejected += b.ode_rejected;
    }
done:
    sd_free(b.x);
    sd_free(b.s);
    sd_free(b.z);
    sd_free(b.tmp);
    sd_free(b.rng);
    ss->seconds = now_s() - t0;
    return st;
}

sd_status sd_sample(sd_scorer *s, const sd_sampler_opts *o, size_t n, float *out,
                    sd_sample_stats *stats)
{
    return sd__run(s, o, n, NULL, out, 0, NULL, NULL, stats);
}

sd_status sd_flow_encode(sd_scorer *s, const sd_sampler_opts *o, float *x, size_t n,
                         sd_sample_stats *stats)
{
    return sd__run(s, o, n, x, x, 1, NULL, NULL, stats);
}

sd_status sd_flow_decode(sd_scorer *s, const sd_sampler_opts *o, float *x, size_t n,
                         sd_sample_stats *stats)
{
    return sd__run(s, o, n, x, x, 2, NULL, NULL, stats);
}
