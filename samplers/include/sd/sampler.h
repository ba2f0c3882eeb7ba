/* sampler.h - turn a score model into samples.
 *
 * Five samplers, all driven by a score oracle s(x, t) ~ grad log
 * p_t(x) (a trained network or the analytic mixture, through sd_scorer):
 *
 *   langevin  annealed Langevin dynamics (Song & Ermon 2019, Alg. 1): T steps
 *             per noise level sigma_i with alpha_i = eps sigma_i^2 / sigma_L^2,
 *                 x <- x + alpha_i s(x, sigma_i) + sqrt(2 alpha_i) z,
 *             optionally followed by the denoising step x + sigma_L^2 s(x,
 *             sigma_L) (Song & Ermon 2020, "Improved techniques", NCSNv2).
 *             (Alg. 1 writes alpha/2 and sqrt(alpha); this is the same
 *             algorithm with alpha halved, so eps here is half theirs.)
 *   pc        predictor-corrector for the reverse-time SDE (Song et al. 2021,
 *             "Score-Based Generative Modeling through SDEs", Alg. 1-3,
 *             App. E-G): predictor Euler-Maruyama, reverse diffusion or
 *             ancestral sampling (or none), optional Langevin corrector with
 *             M steps at a target signal-to-noise ratio.
 *   ode       the probability flow ODE dx/dt = F(t) x - 1/2 G G^T(t) s(x, t)
 *             (their eq. 13) with Euler, Heun, RK4 or adaptive RK45
 *             (samplers/include/sd/ode.h); also integrates data -> latent (encoding).
 *   heun      few-step: EDM's Heun sampler (Karras et al. 2022, Alg. 2,
 *             samplers/edm.c), N steps = 2N - 1 NFE, optional churn.
 *   dpm2m     few-step: DPM-Solver++(2M) (Lu et al. 2022,
 *             samplers/dpm_solver.c), N steps = N NFE.
 *             Both run on a noise-level grid (schedule.c) in the scaled
 *             form x = a x^ of an isotropic family and end with Tweedie's
 *             step to sigma = 0; the matrix-valued families are refused.
 *
 * Every sampler but heun and dpm2m works with every noise family (sde.h) and
 * score model, runs N
 * samples in batches of opts.batch (memory is bounded by the batch), reports
 * progress through an observer callback and counts score evaluations (NFE)
 * exactly: NFE is the number of batched calls of s, i.e. the evaluations each
 * sample went through; a corrector that is off costs nothing.
 *
 * Time grids
 *   ncsn (discrete ladder sigma_1 > ... > sigma_L): langevin and pc visit the
 *   L levels of the family (the network was trained on them); the ode solver
 *   integrates the matching VE process in continuous time. Continuous families
 *   (ve, vp, subvp) run from t = 1 to t_eps (sd_sde_default_eps unless
 *   opts.t_eps >= 0): pc on `steps` equally spaced times, langevin on `levels`
 *   times whose noise-to-signal ratio sigma(t)/a(t) is geometric (Song & Ermon's ladder).
 *   The last pc predictor step goes from the smallest time to clean data.
 *
 * Reproducibility
 *   Sample i (0-based, over the whole run) draws all its noise - prior, steps,
 *   inpainting - from its own stream sd_rng_split(seed/SD_STREAM_SAMPLER, i),
 *   so results do not depend on the thread count, and for the samplers whose
 *   steps do not mix samples (langevin, pc without corrector, fixed-step ode)
 *   not on the batch size either. The Langevin corrector sets its step from
 *   batch means of ||s|| and ||z|| (as Song et al.'s code) and RK45 chooses one
 *   step size per batch, so those depend on the batch composition (RK45 within
 *   its tolerance: its error norm is the worst per-sample norm, ode.h groups).
 *
 * Isotropy
 *   Drift and diffusion are used through the sde operators (F x, G z, G G^T v)
 *   in Euler-Maruyama, the probability flow and the corrector. The exact
 *   discrete transitions used by reverse diffusion, ancestral sampling,
 *   inpainting and colorization need A(t) A(s)^-1 and the transition
 *   covariance, which sde.h exposes only as the scalars a(t), sigma(t) of the
 *   isotropic families; those are confined to sd__transition() in sample.c,
 *   and these samplers refuse the matrix-valued families (dct, dense, state)
 *   with SD_ERR_INVALID. Tweedie denoising goes through sd_sde_tweedie (every
 *   linear family; refused for state). For state, whose G depends on x,
 *   Euler-Maruyama and the probability flow add the div[G G^T] term (Song et
 *   al. 2021, App. D, eq. 37-38); the corrector is plain Langevin dynamics
 *   and needs nothing family-specific.
 *
 * Usage:
 *     sd_scorer sc;
 *     if (sd_scorer_from_model(model, &sc) != SD_OK) ...
 *     sd_sampler_opts o = sd_sampler_defaults(SD_SAMPLER_PC);
 *     o.seed = 42;
 *     float *x = sd_malloc(n * sc.D * sizeof(float));
 *     sd_sample_stats st;
 *     if (sd_sample(&sc, &o, n, x, &st) != SD_OK) puts(sd_error_message());
 *     printf("NFE per sample %lld\n", (long long)st.nfe_max);
 *     sd_scorer_release(&sc);
 *
 * Errors: SD_ERR_INVALID (bad options), SD_ERR_NOMEM, SD_ERR_NUMERIC (a sample
 * became non-finite, ODE step underflow), and whatever the score model or an
 * observer returns. Threading: one call at a time per sd_scorer; the work is
 * parallel inside (OpenMP over points for the analytic mixture, inside the ops
 * for networks, over samples for the noise).
 */
#ifndef SD_SAMPLER_H
#define SD_SAMPLER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sd/ode.h"
#include "sd/score_model.h"
#include "sd/rng.h"
#include "sd/sde.h"

/* ---- score oracle -------------------------------------------------------- */

/* s(x, t) at n points x [n, D] at one time t into out [n, D]. */
typedef sd_status (*sd_score_fn)(void *ctx, const float *x, size_t n, double t, float *out);

typedef struct sd_scorer {
    sd_score_fn fn;
    void *ctx;
    sd_sde sde;       /* the family the score belongs to */
    int C, H, W;      /* data shape; D = C * H * W */
    size_t D;
    int64_t nfe;      /* batched evaluations since init */
    int64_t points;   /* point evaluations (sum of n) since init */
    void *priv;       /* adapter state of sd_scorer_from_model */
} sd_scorer;

/* Adapter over a score model (not owned; must outlive the scorer). A gmm is
 * evaluated in parallel on per-thread copies (sd_gmm caches per time and is
 * not thread-safe); networks use one graph in no-grad mode. */
sd_status sd_scorer_from_model(sd_model *m, sd_scorer *out);
/* Wrap any score function (tests, analytic models). */
void sd_scorer_from_fn(sd_scorer *out, sd_score_fn fn, void *ctx, const sd_sde *sde, int C, int H,
                       int W);
void sd_scorer_release(sd_scorer *s);
/* One counted evaluation; checks that the result is finite. */
sd_status sd_scorer_eval(sd_scorer *s, const float *x, size_t n, double t, float *out);

/* ---- options --------------------------------------------------------------- */

typedef enum sd_sampler_kind {
    SD_SAMPLER_LANGEVIN,
    SD_SAMPLER_PC,
    SD_SAMPLER_ODE,
    SD_SAMPLER_HEUN,  /* few-step: EDM Heun (samplers/edm.c) */
    SD_SAMPLER_DPM2M  /* few-step: DPM-Solver++(2M) (samplers/dpm_solver.c) */
} sd_sampler_kind;

/* Noise-level grids of the few-step samplers and of the ODE's fixed-step
 * methods (samplers/schedule.c). DEFAULT: karras for heun and dpm2m; for the
 * ODE the equal steps in t it always took. */
typedef enum sd_schedule {
    SD_SCHEDULE_DEFAULT,
    SD_SCHEDULE_KARRAS,    /* (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho */
    SD_SCHEDULE_LOGLINEAR, /* geometric from smax to smin */
    SD_SCHEDULE_UNIFORM    /* equal steps in the family's time t between t(smax), t(smin) */
} sd_schedule;

typedef enum sd_predictor {
    SD_PRED_NONE,
    SD_PRED_EULER_MARUYAMA,
    SD_PRED_REVERSE_DIFFUSION,
    SD_PRED_ANCESTRAL
} sd_predictor;

/* Progress of one batch, passed to the observer after every step. */
typedef struct sd_sample_progress {
    size_t batch, n_batches; /* current batch (0-based) and their number */
    size_t first, n;         /* this batch holds samples [first, first + n) */
    size_t total;            /* samples in the run */
    double t;                /* time of the current state */
    double frac;             /* progress through this batch, 0 .. 1 */
    int64_t nfe;             /* evaluations so far in this batch */
    const float *x;          /* current state [n, D], valid during the call (heun,
                                dpm2m: the scaled state x^ = x / a until the end) */
    bool final;              /* x is this batch's output */
} sd_sample_progress;
typedef sd_status (*sd_sample_observer)(void *ctx, const sd_sample_progress *p);

typedef struct sd_sampler_opts {
    sd_sampler_kind kind;
    double t_eps;         /* smallest time; < 0: sd_sde_default_eps (continuous families) */
    bool denoise;         /* final noise-free step (see each sampler; default on,
                             off for ode) */
    /* langevin */
    int levels;           /* continuous families: number of levels L (default 10) */
    int steps_per_level;  /* T (default 100) */
    double step_eps;      /* eps; <= 0: 0.1 sigma_L^2 (= Song & Ermon's 2e-5 at 0.01) */
    /* pc */
    sd_predictor predictor; /* default reverse diffusion */
    bool corrector;       /* Langevin corrector on (default true) */
    int corrector_steps;  /* M (default 1) */
    double snr;           /* target signal-to-noise ratio r (default 0.16) */
    int steps;            /* pc: time points N of continuous families (default 1000);
                             ode fixed-step methods: steps (default 100) */
    /* ode */
    sd_ode_method ode_method; /* default RK45 */
    double rtol, atol;        /* default 1e-5 */
    /* few-step samplers (heun, dpm2m; steps = N steps, default 18 for heun =
       35 NFE, 20 for dpm2m = 20 NFE) and the ODE's fixed-step grid */
    sd_schedule schedule;     /* default SD_SCHEDULE_DEFAULT */
    double rho;               /* karras exponent (default 7) */
    double sigma_min, sigma_max; /* grid range in sigma^ = sigma/a; <= 0: the model's,
                                    sigma^(t_eps) (vp, subvp: t = 1e-3 unless t_eps is
                                    set) and sigma^(1) */
    double churn;             /* heun: S_churn (default 0: deterministic) */
    double s_tmin, s_tmax;    /* heun: churn only where s_tmin <= sigma <= s_tmax
                                 (defaults 0 and infinity) */
    double s_noise;           /* heun: S_noise (default 1) */
    /* driver */
    size_t batch;         /* samples per batch (default 256) */
    uint64_t seed;
    sd_sample_observer observer; /* may be NULL */
    void *observer_ctx;
} sd_sampler_opts;

typedef struct sd_sample_stats {
    size_t batches;
    int64_t nfe;              /* batched evaluations over all batches */
    int64_t nfe_min, nfe_max; /* evaluations per sample (per batch): smallest, largest */
    int64_t points;           /* point evaluations */
    int64_t ode_accepted, ode_rejected; /* RK45 steps */
    double seconds;
} sd_sample_stats;

sd_sampler_opts sd_sampler_defaults(sd_sampler_kind kind);
/* Names: "langevin", "pc", "ode", "heun", "dpm2m"; predictors "euler_maruyama" (or "em"),
 * "reverse_diffusion" (or "rd"), "ancestral", "none". Return 0 if unknown. */
int sd_sampler_kind_parse(const char *name, sd_sampler_kind *out);
int sd_predictor_parse(const char *name, sd_predictor *out);
const char *sd_sampler_kind_name(sd_sampler_kind k);
const char *sd_predictor_name(sd_predictor p);

/* ---- noise-level grids (samplers/schedule.c) ----------------------------------
 * The few-step samplers run on the scaled form of an isotropic family (Karras
 * et al. 2022, Table 1): x = a(t) x^ with x^ = x_0 + sigma^(t) z,
 * sigma^(t) = sigma(t) / a(t) (ve, ncsn: sigma; vp: sqrt(1 - a^2)/a =
 * sqrt(e^{int beta} - 1); subvp: (1 - a^2)/a), a plain VE process in x^ whose
 * score is a s(a x^, t) and whose denoiser is D(x^, sigma^) = x^ + sigma^2 a s.
 * For the matrix-valued families sd_sde_sigma and sd_sde_mean_coef give VE's
 * sigma and 1, so the same grid maps to times for the ODE. */
/* Smallest time of heun and dpm2m for vp and subvp unless opts.t_eps is set
 * (schedule.c). */
#define SD_FEWSTEP_VP_EPS 1e-3
int sd_schedule_parse(const char *name, sd_schedule *out);
const char *sd_schedule_name(sd_schedule s);
/* sigma^(t) = sd_sde_sigma / sd_sde_mean_coef. */
double sd_schedule_sigma(const sd_sde *sde, double t);
/* Its inverse on [0, 1] (bisection; sigma^ is increasing in t); clamped. */
double sd_schedule_time(const sd_sde *sde, double sigma);
/* The grid's range: o->sigma_min/max or sigma^(t_eps), sigma^(1); refused
 * (SD_ERR_INVALID) outside [sigma^(0), sigma^(1)] or if min >= max. */
sd_status sd_schedule_range(const sd_sde *sde, const sd_sampler_opts *o, double *smin,
                            double *smax);
/* n >= 1 noise levels from smax down to smin (n = 1: smax) by o->schedule
 * (DEFAULT = karras) into sig [n]; callers append the final 0. */
sd_status sd_schedule_sigmas(const sd_sde *sde, const sd_sampler_opts *o, int n, double *sig);

/* ---- entry points ---------------------------------------------------------- */

/* n samples from the prior through the sampler into out [n, D]. */
sd_status sd_sample(sd_scorer *s, const sd_sampler_opts *o, size_t n, float *out,
                    sd_sample_stats *stats);

/* Probability flow ODE (kind ignored; ode_method, steps, rtol, atol used):
 * encode maps data x (in/out [n, D]) at t_eps to latents at t = 1; decode maps
 * latents at t = 1 to data at t_eps (no denoising). */
sd_status sd_flow_encode(sd_scorer *s, const sd_sampler_opts *o, float *x, size_t n,
                         sd_sample_stats *stats);
sd_status sd_flow_decode(sd_scorer *s, const sd_sampler_opts *o, float *x, size_t n,
                         sd_sample_stats *stats);

/* Inpainting (Song et al. 2021, App. I): data [n, D] and mask [n, D] (1 =
 * known, 0 = to sample); after every update the known part is replaced by a
 * draw of the forward process at the current time, and by the data itself at
 * the end. langevin or pc; out [n, D]. */
sd_status sd_inpaint(sd_scorer *s, const sd_sampler_opts *o, const float *data, const float *mask,
                     size_t n, float *out, sd_sample_stats *stats);
/* Colorization (App. I): gray [n, H*W] is the channel mean of the wanted
 * images (C = 3). The known coordinate is the first axis of an orthogonal
 * colour transform, (1,1,1)/sqrt(3) - the per-pixel channel mean - and the
 * two chroma axes are sampled; out [n, D]. */
sd_status sd_colorize(sd_scorer *s, const sd_sampler_opts *o, const float *gray, size_t n,
                      float *out, sd_sample_stats *stats);

/* ---- internals shared by the sampler files (not a public API) -------------- */

typedef struct sd__batch sd__batch;
/* Replace the known part of b->x at time t (data at the end when t < 0). */
typedef sd_status (*sd__constrain_fn)(void *ctx, sd__batch *b, double t);

struct sd__batch {
    sd_scorer *sc;
    const sd_sampler_opts *o;
    size_t n, D;
    float *x, *s, *z, *tmp; /* [n, D] each */
    sd_rng *rng;            /* [n] per-sample streams */
    int64_t nfe;            /* evaluations in this batch */
    int64_t ode_accepted, ode_rejected;
    sd_sample_progress prog;
    sd__constrain_fn constrain; /* may be NULL */
    void *constrain_ctx;
};

/* Exact transition of an isotropic family from time t down to time s (s < 0
 * means clean data: a = 1, sigma = 0): x_t = a_ts x_s + sqrt(v) z, with
 * a_ts = a(t)/a(s), v = sigma(t)^2 - a_ts^2 sigma(s)^2. */
void sd__transition(const sd_sde *sde, double t, double s, double *a_ts, double *v,
                    double *sig_t2, double *sig_s2);
sd_status sd__score(sd__batch *b, const float *x, double t, float *out);
void sd__noise(sd__batch *b, float *z);
sd_status sd__observe(sd__batch *b, double t, double frac, bool final);
sd_status sd__check_finite(sd__batch *b, double t);
/* Tweedie's posterior mean E[x_0 | x_t] = (x + sigma^2 s(x, t)) / a(t); 1 NFE. */
sd_status sd__denoise(sd__batch *b, double t);
sd_status sd__constrain(sd__batch *b, double t);
/* The smallest time: opts.t_eps if >= 0, else the family's default. */
double sd__t_eps(const sd_sde *sde, const sd_sampler_opts *o);

sd_status sd__langevin_batch(sd__batch *b);
sd_status sd__pc_batch(sd__batch *b);
sd_status sd__heun_batch(sd__batch *b);
sd_status sd__dpm2m_batch(sd__batch *b);
/* Few-step samplers: the isotropic family's check, the grid of o->steps
 * levels plus the final 0 (sig [steps + 1], caller-allocated). */
sd_status sd__fewstep_grid(sd__batch *b, double *sig);
/* D(x^, sigma^) of the scaled form at n points xh into out (uses b->tmp, b->s). */
sd_status sd__denoiser(sd__batch *b, const float *xh, double sigma, float *out);
/* Integrate b->x from t0 to t1 with the probability flow ODE. */
sd_status sd__flow_batch(sd__batch *b, double t0, double t1);

/* The driver: n samples in batches. init [n, D] (may be NULL: prior draws)
 * gives start states; mode 0 samples with o->kind, 1 encodes, 2 decodes. */
sd_status sd__run(sd_scorer *s, const sd_sampler_opts *o, size_t n, const float *init, float *out,
                  int mode, sd__constrain_fn constrain, void *constrain_ctx,
                  sd_sample_stats *stats);

#endif
