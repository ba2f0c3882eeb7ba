/* likelihood.c - the probability-flow ODE likelihood, the score / Jacobian
 * oracles shared with the ELBO (elbo.c), data transforms, bits per dimension
 * and running statistics. See likelihood.h for the estimators' definitions.
 *
 * Vocabulary: n points (rows) of dimension D; P probes per point; t time.
 *
 * Hutchinson's estimator is applied to the whole drift Jacobian, as in FFJORD:
 *     v^T (grad f~) v = v^T F v - 1/2 q,   q = v^T G G^T (grad s) v,
 * so that for a probe v the F part and the score part cancel exactly where
 * they cancel in the true divergence (VP with unit-variance data); applying
 * it to the score part alone leaves |v|^2 tr(F)/D random and multiplies the
 * variance of Gaussian probes many times. Exact divergence is the case
 * "sum over the basis", where |v|^2 reads D.
 *
 * Control variate. The divergence integral is large (about
 * D log(sigma_max / sigma_min) in VE: 136 nats in 16-D, thousands for images)
 * while the state is float and RK45 controls its error relative to its size.
 * So the state holds only the residual against the divergence the drift has
 * for Gaussian data N(0, c I), whose score Jacobian is -I / v(t) with
 * v(t) = a(t)^2 c + sigma(t)^2 and whose integral is known: per probe,
 *     q_ref = -g^2 |v|^2 / v,
 *     v^T F v - 1/2 q_ref = |v|^2 (f + g^2 / (2 v)) = |v|^2 v' / (2 v)
 * (isotropic; v' = 2 f v + g^2 is the covariance ODE of a linear SDE,
 * Sarkka & Solin 2019, "Applied SDEs", eq. 5.51, as in Song et al. App. B),
 * hence
 *     dr/dt = -1/2 (q + g^2 |v|^2 / v(t)),
 *     log p_eps(x) = log p_T(x_T) + r(T) + |v|^2 / 2 log(v(T) / v(eps)).
 * The residual vanishes for Gaussian data of variance c and is small
 * otherwise. Measured on the 16-D mixture (VE, 100 points, tight tolerances),
 * the float floor is 7e-6 nats with it and 1.2e-5 without; at the default
 * rtol = atol = 1e-5 the integration error (< 6e-4) dominates either way, so
 * float state suffices for the 1e-3-nat target.
 *
 * Matrix-valued families (sde.h). dct and dense are diagonal in an
 * orthonormal basis B (sd_sde_modes / sd_sde_to_modes), and so is the
 * reference's covariance, v_k(t) = a_k(t)^2 c + var_k(t) per mode k. With the
 * probe's mode weights w_k = (B^T v)_k^2 (1 for every mode for the exact
 * divergence, the sum over the basis), the same algebra gives
 *     q_ref = -sum_k w_k gg_k / v_k,   dr/dt = -1/2 (q + sum_k w_k gg_k / v_k),
 *     log p_eps(x) = log p_T(x_T) + r(T) + sum_k w_k / 2 log(v_k(T) / v_k(eps)),
 * which reduces to the above when every mode is alike. The state family
 * (G depends on x) has no Gaussian reference; its integrand is the whole
 *     div f~ = div[f - 1/2 div(G G^T)] - 1/2 div(G G^T) . s - 1/2 tr(G G^T grad s)
 * (Song et al. 2021, App. D, eq. 38, and the product rule for div(G G^T s)):
 * the first term in closed form and the second with div(G G^T) by autodiff
 * (sd_sde_flow_divergence, sd_sde_div_GGT: exact, per point, also under
 * Hutchinson), the third the probes' q. Its integral is only about
 * D log(sigma_max / sigma_min), small in the low dimensions it is made for.
 *
 * Error control of the matrix families. RK45's norm is the RMS over a point's
 * group [x, r_1 .. r_P], so an accumulator's local error counts 1/(D + P) of
 * it. For dct, dense and state the accumulators are held scaled by
 * sqrt(D + P), which makes each one weigh as much as the whole group: the
 * divergence of dct's damped high frequencies is large in mid-range t, and
 * unscaled the 9-D dct test mixture's worst point was 1.1e-3 nats off at
 * rtol = atol = 1e-5 (8.3e-4 scaled; scaling further changes nothing, the rest
 * is the trajectory's own error). The isotropic families keep the unscaled
 * state so that their numbers stay as they were.
 */
#include "likelihood_internal.h"

#include <math.h>
#include <string.h>

#include "sd/ode.h"
#include "sd/rng.h"

/* Scratch slots (sd__lik_scratch): 0-5 the oracles below, 6-9 the ODE,
 * 10-15 elbo.c. */
enum { SL_COT = 0, SL_COT2, SL_HESS, SL_HF, SL_HF2, SL_HV, SL_Y, SL_X, SL_PROBES, SL_Q };
/* 16-19: the ODE's matrix-family terms (mode weights, per-time mode values,
 * div[G G^T] and the score-free divergence of the state family) */
enum { SL_MODEW = 16, SL_MODES, SL_DIVM, SL_CFLOW };

/* G G^T applied to `rows` vectors that all belong to the point x (x is only
 * read by the state-dependent family). */
static sd_status ggt_rows(const sd_sde *sde, double t, const float *x, const float *v, float *out,
                          size_t rows, size_t D)
{
    if (!sd_sde_state_dependent(sde)) return sd_sde_apply_GGT(sde, t, NULL, v, out, rows, D);
    for (size_t r = 0; r < rows; r++) {
        sd_status st = sd_sde_apply_GGT(sde, t, x, v + r * D, out + r * D, 1, D);
        if (st != SD_OK) return st;
    }
    return SD_OK;
}

struct sd_lik {
    sd_model *m;
    sd_lik_config cfg;
    sd_graph *g;
    bool *trainable; /* saved flags while parameters are frozen */
    void *scratch[SD__LIK_SLOTS];
    size_t scratch_cap[SD__LIK_SLOTS];
    sd_ode_work *ode_work;
    size_t ode_n;
};

sd_lik_config sd_lik_config_default(void)
{
    return (sd_lik_config){.eps = -1.0, .T = 1.0, .rtol = 1e-5, .atol = 1e-5,
                           .div = SD_LIK_DIV_AUTO, .probe = SD_LIK_PROBE_RADEMACHER,
                           .probes = 1, .ref_var = 1.0, .steps = 100,
                           .decoder = SD_LIK_DEC_AUTO, .prior = SD_LIK_PRIOR_AUTO,
                           .batch = 64, .seed = 0};
}

sd_status sd_lik_new(sd_model *m, const sd_lik_config *cfg, sd_lik **out)
{
    *out = NULL;
    sd_lik_config c = *cfg;
    if (c.eps < 0) c.eps = sd_sde_default_eps(&m->sde);
    if (!(c.T > 0 && c.T <= 1.0) || !(c.eps >= 0 && c.eps < c.T))
        return sd_error(SD_ERR_INVALID, "likelihood: need 0 <= eps < T <= 1 (eps %g, T %g)", c.eps,
                        c.T);
    if (c.eps == 0 && sd_sde_has(&m->sde, SD_SDE_DEGENERATE_AT_ZERO))
        return sd_error(SD_ERR_INVALID, "likelihood: eps must be > 0 for %s (the kernel is "
                                        "degenerate at t = 0)", sd_sde_name(&m->sde));
    if (!(c.rtol > 0 && c.atol > 0))
        return sd_error(SD_ERR_INVALID, "likelihood: rtol and atol must be > 0");
    if (c.probes < 1 || c.probes > 4096 || c.steps < 1 || c.steps > 1000000 || c.batch < 1 ||
        !(c.ref_var > 0))
        return sd_error(SD_ERR_INVALID, "likelihood: need probes in [1, 4096], steps >= 1, "
                                        "batch >= 1 and ref_var > 0");
    if (c.div == SD_LIK_DIV_AUTO) c.div = m->D <= 64 ? SD_LIK_DIV_EXACT : SD_LIK_DIV_HUTCHINSON;
    if (c.decoder == SD_LIK_DEC_AUTO) c.decoder = m->D <= 64 ? SD_LIK_DEC_FULL : SD_LIK_DEC_ISO;
    if (c.prior == SD_LIK_PRIOR_AUTO)
        c.prior = m->kind == SD_MODEL_GMM ? SD_LIK_PRIOR_MODEL : SD_LIK_PRIOR_FAMILY;
    if (c.prior == SD_LIK_PRIOR_MODEL && m->kind != SD_MODEL_GMM)
        return sd_error(SD_ERR_INVALID, "likelihood: only the gmm has its own prior density");
    if (c.decoder == SD_LIK_DEC_FULL && m->D > 1024)
        return sd_error(SD_ERR_INVALID, "likelihood: the full-covariance decoder needs D <= 1024 "
                                        "(D = %zu); use iso", m->D);
    sd_lik *lk = sd_calloc(1, sizeof *lk);
    if (!lk) return SD_ERR_NOMEM;
    lk->m = m;
    lk->cfg = c;
    if (m->kind != SD_MODEL_GMM) {
        lk->g = sd_graph_new();
        lk->trainable = sd_calloc(m->params->count + 1, sizeof(bool));
        if (!lk->g || !lk->trainable) {
            sd_lik_free(lk);
            return SD_ERR_NOMEM;
        }
    }
    *out = lk;
    return SD_OK;
}

void sd_lik_free(sd_lik *lk)
{
    if (!lk) return;
    sd_graph_free(lk->g);
    sd_free(lk->trainable);
    for (int i = 0; i < SD__LIK_SLOTS; i++) sd_free(lk->scratch[i]);
    sd_ode_work_free(lk->ode_work);
    sd_free(lk);
}

const sd_lik_config *sd_lik_get_config(const sd_lik *lk) { return &lk->cfg; }
sd_model *sd__lik_model(sd_lik *lk) { return lk->m; }

void *sd__lik_scratch(sd_lik *lk, int slot, size_t bytes)
{
    if (bytes <= lk->scratch_cap[slot]) return lk->scratch[slot];
    void *p = sd_malloc(bytes);
    if (!p) return NULL;
    sd_free(lk->scratch[slot]);
    lk->scratch[slot] = p;
    lk->scratch_cap[slot] = bytes;
    return p;
}

static sd_status check_finite(const float *s, size_t count, double t)
{
    for (size_t i = 0; i < count; i++)
        if (!isfinite(s[i]))
            return sd_error(SD_ERR_NUMERIC, "likelihood: the score is not finite at t = %g", t);
    return SD_OK;
}

sd_status sd__lik_score(sd_lik *lk, const float *x, size_t n, double t, float *s)
{
    size_t D = lk->m->D, B = (size_t)lk->cfg.batch;
    for (size_t p0 = 0; p0 < n; p0 += B) {
        size_t nb = n - p0 < B ? n - p0 : B;
        sd_status st = sd_model_score(lk->m, lk->g, x + p0 * D, nb, t, s + p0 * D);
        if (st != SD_OK) return st;
    }
    return check_finite(s, n * D, t);
}

/* ---- networks: vector-Jacobian products through the graph ---------------- */

/* Parameters leave the graph as plain leaves while frozen, so backward
 * computes d/dx only (no weight gradients, no writes to params->grad). */
static void freeze(sd_lik *lk)
{
    sd_params *p = lk->m->params;
    for (size_t i = 0; i < p->count; i++) {
        lk->trainable[i] = p->items[i].trainable;
        p->items[i].trainable = false;
    }
}

static void thaw(sd_lik *lk)
{
    sd_params *p = lk->m->params;
    for (size_t i = 0; i < p->count; i++) p->items[i].trainable = lk->trainable[i];
}

/* Record s(x, t) for nb rows with x requiring its gradient. */
static sd_status net_forward(sd_lik *lk, const float *x, size_t nb, double t, sd_tensor **xin,
                             sd_tensor **sout)
{
    sd_graph *g = lk->g;
    size_t D = lk->m->D;
    sd_graph_reset(g);
    sd_graph_set_grad_enabled(g, true);
    sd_tensor *xt = sd_tensor_new(g, 2, (int[]){(int)nb, (int)D});
    double *tt = sd_graph_alloc(g, nb * sizeof(double));
    if (!xt || !tt) return sd_graph_status(g) != SD_OK ? sd_graph_status(g) : SD_ERR_NOMEM;
    memcpy(xt->data, x, nb * D * sizeof(float));
    sd_tensor_requires_grad(xt);
    for (size_t i = 0; i < nb; i++) tt[i] = t;
    sd_tensor *s = sd_model_forward(lk->m, g, xt, tt);
    if (!s) return sd_graph_status(g) != SD_OK ? sd_graph_status(g) : SD_ERR_INTERNAL;
    *xin = xt;
    *sout = s;
    return check_finite(s->data, nb * D, t);
}

/* Quadratic forms for rows [0, nb) of x (see sd__lik_score_quad). */
static sd_status net_quad(sd_lik *lk, const float *x, size_t nb, double t, const float *probes,
                          int m, int weighted, float *s, double *q)
{
    size_t D = lk->m->D;
    const sd_sde *sde = &lk->m->sde;
    float *cot = sd__lik_scratch(lk, SL_COT, nb * D * sizeof(float));
    float *cot2 = sd__lik_scratch(lk, SL_COT2, nb * D * sizeof(float));
    if (!cot || !cot2) return SD_ERR_NOMEM;
    sd_tensor *xt, *st_;
    sd_status st = net_forward(lk, x, nb, t, &xt, &st_);
    if (st != SD_OK) return st;
    memcpy(s, st_->data, nb * D * sizeof(float));
    int nq = probes ? m : 1;
    for (size_t p = 0; p < nb * (size_t)nq; p++) q[p] = 0.0;
    size_t passes = probes ? (size_t)m : D;
    for (size_t j = 0; j < passes; j++) {
        /* cotangent u = (G G^T) e_j (exact) or (G G^T) v_j (probe j) per row */
        if (probes) {
            for (size_t p = 0; p < nb; p++)
                memcpy(cot + p * D, probes + (p * m + j) * D, D * sizeof(float));
        } else {
            memset(cot, 0, nb * D * sizeof(float));
            for (size_t p = 0; p < nb; p++) cot[p * D + j] = 1.0f;
        }
        const float *u = cot;
        if (weighted) {
            if ((st = sd_sde_apply_GGT(sde, t, x, cot, cot2, nb, D)) != SD_OK) return st;
            u = cot2;
        }
        st = sd_graph_backward(lk->g, st_, u);
        if (st != SD_OK) return st;
        const float *gx = xt->grad; /* u^T (grad s), per row */
        for (size_t p = 0; p < nb; p++) {
            if (probes) {
                const float *v = probes + (p * m + j) * D;
                double acc = 0.0;
                for (size_t i = 0; i < D; i++) acc += (double)gx[p * D + i] * v[i];
                q[p * m + j] = acc;
            } else {
                q[p] += gx[p * D + j];
            }
        }
    }
    return SD_OK;
}

/* ---- gmm: analytic Hessian ------------------------------------------------ */

static sd_status gmm_quad(sd_lik *lk, const float *x, size_t nb, double t, const float *probes,
                          int m, int weighted, float *s, double *q)
{
    size_t D = lk->m->D;
    const sd_sde *sde = &lk->m->sde;
    if (probes) {
        size_t rows = nb * (size_t)m;
        double *hv = sd__lik_scratch(lk, SL_HV, rows * D * sizeof(double));
        float *u = sd__lik_scratch(lk, SL_COT2, rows * D * sizeof(float));
        if (!hv || !u) return SD_ERR_NOMEM;
        sd_status st = sd_gmm_score_hvp(lk->m->gmm, sde, t, x, nb, probes, m, s, hv);
        if (st != SD_OK) return st;
        if (weighted) {
            for (size_t p = 0; p < nb && st == SD_OK; p++)
                st = ggt_rows(sde, t, x + p * D, probes + p * (size_t)m * D,
                              u + p * (size_t)m * D, (size_t)m, D);
            if (st != SD_OK) return st;
        } else {
            memcpy(u, probes, rows * D * sizeof(float));
        }
        /* H symmetric: u^T H v = u . (H v) */
        for (size_t r = 0; r < rows; r++) {
            double acc = 0.0;
            for (size_t i = 0; i < D; i++) acc += (double)u[r * D + i] * hv[r * D + i];
            q[r] = acc;
        }
        return check_finite(s, nb * D, t);
    }
    double *H = sd__lik_scratch(lk, SL_HESS, nb * D * D * sizeof(double));
    float *hf = sd__lik_scratch(lk, SL_HF, D * D * sizeof(float));
    float *hf2 = sd__lik_scratch(lk, SL_HF2, D * D * sizeof(float));
    if (!H || !hf || !hf2) return SD_ERR_NOMEM;
    sd_status st = sd_gmm_score_hessian(lk->m->gmm, sde, t, x, s, H, nb);
    if (st != SD_OK) return st;
    for (size_t p = 0; p < nb; p++) {
        const double *Hp = H + p * D * D;
        double tr = 0.0;
        if (weighted) {
            /* tr(G G^T H) = sum_i (G G^T h_i)_i with h_i = H e_i (row i) */
            for (size_t e = 0; e < D * D; e++) hf[e] = (float)Hp[e];
            if ((st = ggt_rows(sde, t, x + p * D, hf, hf2, D, D)) != SD_OK) return st;
            for (size_t i = 0; i < D; i++) tr += hf2[i * D + i];
        } else {
            for (size_t i = 0; i < D; i++) tr += Hp[i * D + i];
        }
        q[p] = tr;
    }
    return check_finite(s, nb * D, t);
}

sd_status sd__lik_score_quad(sd_lik *lk, const float *x, size_t n, double t, const float *probes,
                             int m, int weighted, float *s, double *q)
{
    size_t D = lk->m->D, B = (size_t)lk->cfg.batch;
    int nq = probes ? m : 1;
    if (lk->m->kind != SD_MODEL_GMM) freeze(lk);
    sd_status st = SD_OK;
    for (size_t p0 = 0; p0 < n && st == SD_OK; p0 += B) {
        size_t nb = n - p0 < B ? n - p0 : B;
        const float *pr = probes ? probes + p0 * (size_t)m * D : NULL;
        if (lk->m->kind == SD_MODEL_GMM)
            st = gmm_quad(lk, x + p0 * D, nb, t, pr, m, weighted, s + p0 * D, q + p0 * nq);
        else
            st = net_quad(lk, x + p0 * D, nb, t, pr, m, weighted, s + p0 * D, q + p0 * nq);
    }
    if (lk->m->kind != SD_MODEL_GMM) thaw(lk);
    return st;
}

sd_status sd__lik_score_jacobian(sd_lik *lk, const float *x, size_t n, double t, float *s,
                                 double *J)
{
    size_t D = lk->m->D, B = (size_t)lk->cfg.batch;
    if (lk->m->kind == SD_MODEL_GMM) {
        sd_status st = sd_gmm_score_hessian(lk->m->gmm, &lk->m->sde, t, x, s, J, n);
        return st != SD_OK ? st : check_finite(s, n * D, t);
    }
    float *cot = sd__lik_scratch(lk, SL_COT, B * D * sizeof(float));
    if (!cot) return SD_ERR_NOMEM;
    freeze(lk);
    sd_status st = SD_OK;
    for (size_t p0 = 0; p0 < n && st == SD_OK; p0 += B) {
        size_t nb = n - p0 < B ? n - p0 : B;
        sd_tensor *xt, *so;
        st = net_forward(lk, x + p0 * D, nb, t, &xt, &so);
        if (st != SD_OK) break;
        memcpy(s + p0 * D, so->data, nb * D * sizeof(float));
        /* row i of each point's Jacobian: e_i^T (grad s) = d s_i / dx */
        for (size_t i = 0; i < D && st == SD_OK; i++) {
            memset(cot, 0, nb * D * sizeof(float));
            for (size_t p = 0; p < nb; p++) cot[p * D + i] = 1.0f;
            st = sd_graph_backward(lk->g, so, cot);
            for (size_t p = 0; p < nb && st == SD_OK; p++)
                for (size_t j = 0; j < D; j++)
                    J[((p0 + p) * D + i) * D + j] = xt->grad[p * D + j];
        }
    }
    thaw(lk);
    if (st != SD_OK) return st;
    /* A learned score need not have a symmetric Jacobian; the Hessian it
     * stands for is symmetric, so use its symmetric part. */
    for (size_t p = 0; p < n; p++) {
        double *Jp = J + p * D * D;
        for (size_t i = 0; i < D; i++)
            for (size_t j = i + 1; j < D; j++) {
                double a = 0.5 * (Jp[i * D + j] + Jp[j * D + i]);
                Jp[i * D + j] = Jp[j * D + i] = a;
            }
    }
    return SD_OK;
}

sd_status sd__lik_prior_logp(sd_lik *lk, const float *x, size_t n, double *out)
{
    size_t D = lk->m->D;
    if (lk->cfg.prior == SD_LIK_PRIOR_MODEL)
        return sd_gmm_logp(lk->m->gmm, &lk->m->sde, lk->cfg.T, x, out, n);
    for (size_t p = 0; p < n; p++) out[p] = sd_sde_prior_logp(&lk->m->sde, x + p * D, D);
    return SD_OK;
}

/* ---- probability-flow ODE ------------------------------------------------- */

typedef struct ode_ctx {
    sd_lik *lk;
    size_t n, D;
    int P;               /* accumulators per point */
    const float *probes; /* [n, P, D] or NULL (exact) */
    const double *vnorm; /* |v_j|^2 [n, P] */
    float *x, *s, *gs;   /* [n, D] */
    double *q;           /* [n, P] */
    /* dct, dense: mode weights w [n, P, D] ((B^T v)_k^2; 1 for exact) and the
     * per-time mode values a, var, gg [3, D]; state: div[G G^T] [n, D] and
     * the score-free divergence [n] */
    const double *modew;
    double *modes;
    float *divm;
    double *cflow;
    double acc_scale; /* accumulators are held as acc_scale * r (see sd_lik_ode) */
} ode_ctx;

/* The three kinds of control variate (see the file comment). */
static bool mode_family(const sd_sde *sde)
{
    return !sd_sde_is_isotropic(sde) && !sd_sde_state_dependent(sde);
}

/* Reference variance v(t) = a^2 c + sigma^2 of the control variate. */
static double ref_var(const sd_sde *sde, double c, double t)
{
    double a = sd_sde_mean_coef(sde, t), sg = sd_sde_sigma(sde, t);
    return a * a * c + sg * sg;
}

/* State layout, one group per point (the solver's per-group error norm):
 * y[p] = [x_p (D floats), r_p1 .. r_pP]. */
static sd_status ode_rhs(void *vctx, double t, const float *y, float *dydt)
{
    ode_ctx *c = vctx;
    size_t D = c->D, G = D + (size_t)c->P;
    const sd_sde *sde = &c->lk->m->sde;
    for (size_t p = 0; p < c->n; p++) memcpy(c->x + p * D, y + p * G, D * sizeof(float));
    sd_status st = sd__lik_score_quad(c->lk, c->x, c->n, t, c->probes, c->P, 1, c->s, c->q);
    if (st != SD_OK) return st;
    bool state = sd_sde_state_dependent(sde), modes = mode_family(sde);
    if (state) {
        /* div f~ = div[f - 1/2 div M] - 1/2 (div M) . s - 1/2 tr(M grad s),
         * M = G G^T(x) (product rule on div(M s), M symmetric); the first
         * two terms are exact per point, the last is q. */
        if ((st = sd_sde_div_GGT(sde, t, c->x, c->divm, c->n, D)) != SD_OK ||
            (st = sd_sde_flow_divergence(sde, t, c->x, c->cflow, c->n, D)) != SD_OK)
            return st;
        for (size_t p = 0; p < c->n; p++) {
            double acc = 0.0;
            for (size_t i = 0; i < D; i++) acc += (double)c->divm[p * D + i] * c->s[p * D + i];
            c->cflow[p] -= 0.5 * acc;
        }
    }
    /* f~ = f(x, t) - 1/2 G G^T s (Song et al. 2021, eq. 13; state: App. D,
     * eq. 38, also - 1/2 div[G G^T]) */
    if ((st = sd_sde_apply_GGT(sde, t, c->x, c->s, c->gs, c->n, D)) != SD_OK ||
        (st = sd_sde_drift(sde, t, c->x, c->s, c->n, D)) != SD_OK)
        return st;
    double *ma = c->modes, *mv = ma + D, *mg = mv + D, cv = c->lk->cfg.ref_var;
    if (modes && (st = sd_sde_modes(sde, t, D, ma, mv, NULL, mg)) != SD_OK) return st;
    if (modes) /* gg_k / v_k(t), v_k = a_k^2 c + var_k: the reference's q_ref per mode */
        for (size_t k = 0; k < D; k++) mg[k] /= ma[k] * ma[k] * cv + mv[k];
    double g2v = sd_sde_g2(sde, t) / ref_var(sde, cv, t);
    for (size_t p = 0; p < c->n; p++) {
        float *dy = dydt + p * G;
        for (size_t i = 0; i < D; i++) dy[i] = c->s[p * D + i] - 0.5f * c->gs[p * D + i];
        if (state)
            for (size_t i = 0; i < D; i++) dy[i] -= 0.5f * c->divm[p * D + i];
        for (int j = 0; j < c->P; j++) {
            size_t k = p * (size_t)c->P + j;
            if (state) {
                dy[D + j] = (float)(c->acc_scale * (c->cflow[p] - 0.5 * c->q[k]));
            } else if (modes) {
                const double *w = c->modew + k * D;
                double ref = 0.0;
                for (size_t i = 0; i < D; i++) ref += w[i] * mg[i];
                dy[D + j] = (float)(c->acc_scale * -0.5 * (c->q[k] + ref));
            } else {
                dy[D + j] = (float)(-0.5 * (c->q[k] + g2v * c->vnorm[k]));
            }
        }
    }
    return SD_OK;
}

static sd_status ode_progress(void *ctx, double t, const float *y)
{
    (void)y;
    const sd_lik_config *cf = &((sd_lik *)ctx)->cfg;
    cf->progress(cf->progress_ctx, (t - cf->eps) / (cf->T - cf->eps));
    return SD_OK;
}

sd_status sd_lik_ode(sd_lik *lk, const float *x, size_t n, uint64_t index0, double *logp,
                     double *probe_se, int64_t *nfe)
{
    const sd_lik_config *cf = &lk->cfg;
    const sd_sde *sde = &lk->m->sde;
    size_t D = lk->m->D;
    int exact = cf->div == SD_LIK_DIV_EXACT;
    int P = exact ? 1 : cf->probes;
    size_t G = D + (size_t)P, ny = n * G;
    if (n == 0) return SD_OK;
    float *y = sd__lik_scratch(lk, SL_Y, ny * sizeof(float));
    float *buf = sd__lik_scratch(lk, SL_X, 3 * n * D * sizeof(float));
    float *probes =
        exact ? NULL : sd__lik_scratch(lk, SL_PROBES, n * (size_t)P * D * sizeof(float));
    double *q = sd__lik_scratch(lk, SL_Q, 3 * n * (size_t)P * sizeof(double) + n * sizeof(double));
    if (!y || !buf || (!exact && !probes) || !q) return SD_ERR_NOMEM;
    if (!lk->ode_work || lk->ode_n != ny) {
        sd_ode_work_free(lk->ode_work);
        lk->ode_work = NULL;
        sd_status st = sd_ode_work_new(ny, &lk->ode_work);
        if (st != SD_OK) return st;
        lk->ode_n = ny;
    }
    double *vnorm = q + n * P, *lpj = vnorm + n * P, *lpT = lpj + n * P;
    /* Probes fixed per trajectory (FFJORD), item i from split(probe, index0 + i). */
    sd_rng base;
    sd_rng_init(&base, cf->seed, SD_STREAM_PROBE);
    for (size_t p = 0; p < n; p++) {
        memcpy(y + p * G, x + p * D, D * sizeof(float));
        for (int j = 0; j < P; j++) y[p * G + D + j] = 0.0f;
        if (exact) {
            vnorm[p] = (double)D;
            continue;
        }
        sd_rng r;
        sd_rng_split(&base, index0 + p, &r);
        float *v = probes + p * (size_t)P * D;
        if (cf->probe == SD_LIK_PROBE_GAUSSIAN)
            sd_rng_fill_normal(&r, v, (size_t)P * D, 0.0f, 1.0f);
        else
            sd_rng_fill_rademacher(&r, v, (size_t)P * D);
        for (int j = 0; j < P; j++) {
            double ss = 0.0;
            for (size_t i = 0; i < D; i++) ss += (double)v[j * D + i] * v[j * D + i];
            vnorm[p * P + j] = ss;
        }
    }
    ode_ctx c = {.lk = lk, .n = n, .D = D, .P = P, .probes = probes, .vnorm = vnorm,
                 .x = buf, .s = buf + n * D, .gs = buf + 2 * n * D, .q = q};
    bool state = sd_sde_state_dependent(sde), modes = mode_family(sde);
    double *modew = NULL;
    c.acc_scale = 1.0;
    if (state || modes) c.acc_scale = sqrt((double)G);
    if (state) {
        c.divm = sd__lik_scratch(lk, SL_DIVM, n * D * sizeof(float));
        c.cflow = sd__lik_scratch(lk, SL_CFLOW, n * sizeof(double));
        if (!c.divm || !c.cflow) return SD_ERR_NOMEM;
    } else if (modes) {
        /* w_k = (B^T v)_k^2 per probe (exact: sum_j (B^T e_j)_k^2 = 1) */
        size_t rows = n * (size_t)P;
        modew = sd__lik_scratch(lk, SL_MODEW, rows * D * sizeof(double) +
                                                  (exact ? 0 : rows * D * sizeof(float)));
        c.modes = sd__lik_scratch(lk, SL_MODES, 3 * D * sizeof(double));
        if (!modew || !c.modes) return SD_ERR_NOMEM;
        if (exact) {
            for (size_t i = 0; i < rows * D; i++) modew[i] = 1.0;
        } else {
            float *bv = (float *)(modew + rows * D);
            sd_status st = sd_sde_to_modes(sde, probes, bv, rows, D);
            if (st != SD_OK) return st;
            for (size_t i = 0; i < rows * D; i++) modew[i] = (double)bv[i] * bv[i];
        }
        c.modew = modew;
    }
    sd_ode_opts o = sd_ode_defaults(SD_ODE_RK45);
    o.rtol = cf->rtol;
    o.atol = cf->atol;
    o.n_groups = n;
    if (cf->progress) {
        o.on_step = ode_progress;
        o.on_step_ctx = lk;
    }
    sd_ode_stats ost;
    sd_status st = sd_ode_solve(&o, ode_rhs, &c, cf->eps, cf->T, y, ny, lk->ode_work, &ost);
    if (st != SD_OK) return st;
    for (size_t p = 0; p < n; p++) memcpy(buf + p * D, y + p * G, D * sizeof(float));
    st = sd__lik_prior_logp(lk, buf, n, lpT);
    if (st != SD_OK) return st;
    /* Closed-form parts (see the file comment): per mode 1/2 log(v_k(T) / v_k(eps)) */
    double lv = 0.5 * log(ref_var(sde, cf->ref_var, cf->T) / ref_var(sde, cf->ref_var, cf->eps));
    if (modes) {
        double *ma = c.modes, *mv = ma + D, *lvk = mv + D, cv = cf->ref_var;
        if ((st = sd_sde_modes(sde, cf->T, D, ma, mv, NULL, NULL)) != SD_OK) return st;
        for (size_t k = 0; k < D; k++) lvk[k] = ma[k] * ma[k] * cv + mv[k];
        if ((st = sd_sde_modes(sde, cf->eps, D, ma, mv, NULL, NULL)) != SD_OK) return st;
        for (size_t k = 0; k < D; k++) lvk[k] = 0.5 * log(lvk[k] / (ma[k] * ma[k] * cv + mv[k]));
    }
    for (size_t p = 0; p < n; p++) {
        double sum = 0.0;
        for (int j = 0; j < P; j++) {
            size_t k = p * (size_t)P + j;
            double closed = vnorm[k] * lv;
            if (state) {
                closed = 0.0;
            } else if (modes) {
                closed = 0.0;
                for (size_t i = 0; i < D; i++) closed += modew[k * D + i] * c.modes[2 * D + i];
            }
            lpj[k] = lpT[p] + (double)y[p * G + D + j] / c.acc_scale + closed;
            sum += lpj[k];
        }
        double mean = sum / P, ss = 0.0;
        for (int j = 0; j < P; j++) ss += (lpj[p * P + j] - mean) * (lpj[p * P + j] - mean);
        logp[p] = mean;
        if (probe_se) probe_se[p] = P > 1 ? sqrt(ss / (P - 1) / P) : 0.0;
        if (!isfinite(mean))
            return sd_error(SD_ERR_NUMERIC, "likelihood: non-finite log-density (item %llu)",
                            (unsigned long long)(index0 + p));
    }
    if (nfe) *nfe = ost.nfe;
    return SD_OK;
}

/* ---- transforms, bits/dim, statistics ------------------------------------ */

sd_status sd_lik_xform_parse(const char *name, sd_lik_xform *out)
{
    if (!name || !*name || strcmp(name, "identity") == 0) *out = SD_LIK_XFORM_IDENTITY;
    else if (strcmp(name, "unit") == 0) *out = SD_LIK_XFORM_UNIT;
    else if (strcmp(name, "centred") == 0 || strcmp(name, "centered") == 0 ||
             strcmp(name, "symmetric") == 0)
        *out = SD_LIK_XFORM_CENTRED;
    else
        return sd_error(SD_ERR_INVALID, "unknown data_transform '%s' (identity, unit, centred)",
                        name);
    return SD_OK;
}

void sd_lik_xform_apply(sd_lik_xform xf, const float *x, float *y, size_t count)
{
    bool c = xf == SD_LIK_XFORM_CENTRED;
    for (size_t i = 0; i < count; i++) y[i] = c ? 2.0f * x[i] - 1.0f : x[i];
}

double sd_lik_xform_logdet(sd_lik_xform xf, size_t D)
{
    return xf == SD_LIK_XFORM_CENTRED ? (double)D * log(2.0) : 0.0;
}

double sd_lik_bits_per_dim(double logp_data, size_t D)
{
    /* A bin of [0, 1]^D has volume 256^-D: log P(k) >= E_u log p((k+u)/256) - D log 256
     * (Theis et al. 2016, Sec. 3.1). */
    return -(logp_data - (double)D * log(256.0)) / ((double)D * log(2.0));
}

void sd_lik_stats_add(sd_lik_stats *s, double v)
{
    s->n++;
    double d = v - s->mean;
    s->mean += d / (double)s->n;
    s->m2 += d * (v - s->mean);
}

double sd_lik_stats_se(const sd_lik_stats *s)
{
    if (s->n < 2) return 0.0;
    return sqrt(s->m2 / (double)(s->n - 1) / (double)s->n);
}

double sd_lik_iwae(const double *logw, int K, int k)
{
    if (k < 1 || k > K) return NAN;
    int groups = K / k;
    double total = 0.0;
    for (int gi = 0; gi < groups; gi++) {
        const double *w = logw + (size_t)gi * k;
        double mx = -INFINITY;
        for (int i = 0; i < k; i++) mx = w[i] > mx ? w[i] : mx;
        if (!isfinite(mx)) return mx;
        double sum = 0.0;
        for (int i = 0; i < k; i++) sum += exp(w[i] - mx);
        total += mx + log(sum / k);
    }
    return total / groups;
}
