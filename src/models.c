/* Kernels of the exact models (see models.h).  Pure C: no lua.h, no aborts; scratch memory is
 * malloc'ed and freed within each call, failures come back as status codes. */
#include "fastexp.h"
#include "models.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "blas.h"

#define LOG_2PI 1.8378770664093454836

const char *df_models_strerror(int status) {
  switch (status) {
  case DF_MODELS_OK: return "ok";
  case DF_MODELS_ENOMEM: return "not enough memory";
  case DF_MODELS_ENOBLAS: return "no BLAS library is loaded (install OpenBLAS: sudo apt-get install libopenblas-dev)";
  case DF_MODELS_EPOINT: return "bad point: alpha and sigma must be finite, >= 0 and not both 0";
  case DF_MODELS_ESIZE: return "a size is too large for BLAS";
  default: return "unknown error";
  }
}

static int check_point(double alpha, double sigma) {
  if (!(alpha >= 0) || !(sigma >= 0) || !isfinite(alpha) || !isfinite(sigma)) return DF_MODELS_EPOINT;
  if (alpha == 0 && sigma == 0) return DF_MODELS_EPOINT;
  return DF_MODELS_OK;
}

static int gemm_status(int rc) {
  if (rc == -1) return DF_MODELS_ENOBLAS;
  if (rc != 0) return DF_MODELS_ESIZE;
  return DF_MODELS_OK;
}

/* Softmax over the k logits of one row (entries equal to -INFINITY get weight 0), written to
 * r (double); returns log sum exp. */
static double softmax_row(double *l, int64_t k) {
  double mx = -INFINITY;
  for (int64_t c = 0; c < k; c++)
    if (l[c] > mx) mx = l[c];
  if (mx == -INFINITY) { /* cannot happen with a valid weight table; keep it finite */
    for (int64_t c = 0; c < k; c++) l[c] = 0;
    return -INFINITY;
  }
  double z = 0;
  for (int64_t c = 0; c < k; c++) {
    double e = l[c] == -INFINITY ? 0 : exp(l[c] - mx);
    l[c] = e;
    z += e;
  }
  for (int64_t c = 0; c < k; c++) l[c] /= z;
  return mx + log(z);
}

/* ---------------------------------------------------------------------------------------- */
/* Gaussian mixture                                                                          */

int df_gmm_posterior(const float *x, int64_t n, int64_t d, const float *means, const float *vars,
                     int64_t k, const double *logw, int64_t g, const int32_t *group, double alpha,
                     double sigma, float *out, float *resp, double *lse, int path) {
  (void)g;
  int st = check_point(alpha, sigma);
  if (st) return st;
  if (n == 0 || k == 0) return DF_MODELS_OK;
  const double a = alpha, s2 = sigma * sigma;
  if (path == 0) path = (k >= 32 && d >= 32 && n >= 8 && df_blas_load()->loaded) ? 2 : 1;

  int64_t kd = k * d;
  double *prec = malloc(sizeof(double) * (size_t)kd);   /* 1 / (a^2 var + s^2) */
  double *gain = malloc(sizeof(double) * (size_t)kd);   /* a var / (a^2 var + s^2) */
  double *cst = malloc(sizeof(double) * (size_t)k);     /* -(sum log V + d log 2pi) / 2 */
  double *lrow = malloc(sizeof(double) * (size_t)k);
  if (!prec || !gain || !cst || !lrow) {
    free(prec); free(gain); free(cst); free(lrow);
    return DF_MODELS_ENOMEM;
  }
  for (int64_t c = 0; c < k; c++) {
    double ld = 0;
    for (int64_t j = 0; j < d; j++) {
      double v = (double)vars[c * d + j];
      double V = a * a * v + s2;
      prec[c * d + j] = 1.0 / V;
      gain[c * d + j] = a * v / V;
      ld += log(V);
    }
    cst[c] = -0.5 * (ld + (double)d * LOG_2PI);
  }

  if (path == 1) {
    for (int64_t i = 0; i < n; i++) {
      const float *xi = x + i * d;
      const double *lw = logw + (group ? (int64_t)group[i] : 0) * k;
      for (int64_t c = 0; c < k; c++) {
        if (lw[c] == -INFINITY) {
          lrow[c] = -INFINITY;
          continue;
        }
        const float *mu = means + c * d;
        const double *p = prec + c * d;
        double q = 0;
        for (int64_t j = 0; j < d; j++) {
          double e = (double)xi[j] - a * (double)mu[j];
          q += e * e * p[j];
        }
        lrow[c] = lw[c] + cst[c] - 0.5 * q;
      }
      double l = softmax_row(lrow, k);
      if (lse) lse[i] = l;
      if (resp)
        for (int64_t c = 0; c < k; c++) resp[i * k + c] = (float)lrow[c];
      if (out) {
        float *oi = out + i * d;
        for (int64_t j = 0; j < d; j++) {
          double acc = 0, xj = (double)xi[j];
          for (int64_t c = 0; c < k; c++) {
            double r = lrow[c];
            if (r == 0) continue;
            double mu = (double)means[c * d + j];
            acc += r * (mu + gain[c * d + j] * (xj - a * mu));
          }
          oi[j] = (float)acc;
        }
      }
    }
    free(prec); free(gain); free(cst); free(lrow);
    return DF_MODELS_OK;
  }

  /* GEMM path, on coordinates centred at the average mean c (smaller norms, less cancellation):
   * xc = x - a c, mc = mu - c.
   *   q_ik = sum_j xc_ij^2 P_kj - 2 sum_j xc_ij a mc_kj P_kj + sum_j a^2 mc_kj^2 P_kj
   *        = [xc^2 | xc] . [P | -2 a mc P]^T + e_k                      (one sgemm, inner 2d)
   *   out_ij = c_j + sum_k r_ik mc_kj (1 - a G_kj) + xc_ij sum_k r_ik G_kj
   *        = c_j + T_ij + xc_ij T_i,d+j,  T = R . [mc (1 - a G) | G]    (one sgemm, inner k) */
  st = DF_MODELS_OK;
  double *cen = calloc((size_t)d, sizeof(double));
  double *e = malloc(sizeof(double) * (size_t)k);
  float *xcat = malloc(sizeof(float) * (size_t)(n * 2 * d));
  float *wcat = malloc(sizeof(float) * (size_t)(k * 2 * d));
  float *q = malloc(sizeof(float) * (size_t)(n * k));
  float *rr = malloc(sizeof(float) * (size_t)(n * k));
  float *t = out ? malloc(sizeof(float) * (size_t)(n * 2 * d)) : NULL;
  if (!cen || !e || !xcat || !wcat || !q || !rr || (out && !t)) {
    st = DF_MODELS_ENOMEM;
    goto done;
  }
  for (int64_t c = 0; c < k; c++)
    for (int64_t j = 0; j < d; j++) cen[j] += (double)means[c * d + j];
  for (int64_t j = 0; j < d; j++) cen[j] /= (double)k;
  for (int64_t c = 0; c < k; c++) {
    double ec = 0;
    for (int64_t j = 0; j < d; j++) {
      double mc = (double)means[c * d + j] - cen[j], p = prec[c * d + j];
      wcat[c * 2 * d + j] = (float)p;
      wcat[c * 2 * d + d + j] = (float)(-2.0 * a * mc * p);
      ec += a * a * mc * mc * p;
    }
    e[c] = ec;
  }
  for (int64_t i = 0; i < n; i++)
    for (int64_t j = 0; j < d; j++) {
      double xc = (double)x[i * d + j] - a * cen[j];
      xcat[i * 2 * d + j] = (float)(xc * xc);
      xcat[i * 2 * d + d + j] = (float)xc;
    }
  st = gemm_status(df_sgemm(0, 1, n, k, 2 * d, 1.0f, xcat, 2 * d, wcat, 2 * d, 0.0f, q, k));
  if (st) goto done;
  for (int64_t i = 0; i < n; i++) {
    const double *lw = logw + (group ? (int64_t)group[i] : 0) * k;
    for (int64_t c = 0; c < k; c++) {
      double qq = (double)q[i * k + c] + e[c];
      if (qq < 0) qq = 0;
      lrow[c] = lw[c] == -INFINITY ? -INFINITY : lw[c] + cst[c] - 0.5 * qq;
    }
    double l = softmax_row(lrow, k);
    if (lse) lse[i] = l;
    for (int64_t c = 0; c < k; c++) rr[i * k + c] = (float)lrow[c];
  }
  if (resp) memcpy(resp, rr, sizeof(float) * (size_t)(n * k));
  if (out) {
    for (int64_t c = 0; c < k; c++)
      for (int64_t j = 0; j < d; j++) {
        double mc = (double)means[c * d + j] - cen[j], gg = gain[c * d + j];
        wcat[c * 2 * d + j] = (float)(mc * (1.0 - a * gg));
        wcat[c * 2 * d + d + j] = (float)gg;
      }
    st = gemm_status(df_sgemm(0, 0, n, 2 * d, k, 1.0f, rr, k, wcat, 2 * d, 0.0f, t, 2 * d));
    if (st) goto done;
    for (int64_t i = 0; i < n; i++)
      for (int64_t j = 0; j < d; j++) {
        double xc = (double)xcat[i * 2 * d + d + j];
        out[i * d + j] = (float)(cen[j] + (double)t[i * 2 * d + j] + xc * (double)t[i * 2 * d + d + j]);
      }
  }
done:
  free(prec); free(gain); free(cst); free(lrow);
  free(cen); free(e); free(xcat); free(wcat); free(q); free(rr); free(t);
  return st;
}

/* ---------------------------------------------------------------------------------------- */
/* Empirical-data denoiser                                                                   */

/* exp(x) for x <= 0 (NaN-free inputs): 0 below -87.3, where e^x leaves float's normal range. */
static inline float exp_nonpos(float x) {
  float keep = x >= -87.3f ? 1.0f : 0.0f;
  x = x >= -87.3f ? x : -87.3f;
  return df_fastexp_core(x) * keep;
}

int df_empirical_denoise(const float *x, int64_t n, int64_t d, const float *data, int64_t m,
                         const float *dnorm2, double alpha, double sigma, int64_t chunk, float *out) {
  int st = check_point(alpha, sigma);
  if (st) return st;
  if (n == 0) return DF_MODELS_OK;
  if (chunk <= 0 || chunk > m) chunk = m;
  const double a = alpha;
  const double scale = 1.0 / (2.0 * sigma * sigma); /* +inf when sigma is 0 or tiny */
  const int hard = !(scale < 1e30); /* also keeps (u - max) * scale finite in float */

  float *gbuf = malloc(sizeof(float) * (size_t)(n * chunk));
  double *xn2 = malloc(sizeof(double) * (size_t)n);
  double *mx = malloc(sizeof(double) * (size_t)n);  /* running max logit, or best distance */
  double *z = malloc(sizeof(double) * (size_t)n);   /* running sum, or best index */
  if (!gbuf || !xn2 || !mx || !z) {
    st = DF_MODELS_ENOMEM;
    goto done;
  }
  for (int64_t i = 0; i < n; i++) {
    double s = 0;
    for (int64_t j = 0; j < d; j++) s += (double)x[i * d + j] * (double)x[i * d + j];
    xn2[i] = s;
    mx[i] = hard ? INFINITY : -INFINITY;
    z[i] = hard ? -1 : 0;
  }
  if (!hard) memset(out, 0, sizeof(float) * (size_t)(n * d));

  for (int64_t m0 = 0; m0 < m; m0 += chunk) {
    int64_t c = m - m0 < chunk ? m - m0 : chunk;
    const float *dc = data + m0 * d;
    /* G = x . dc^T  (n x c) */
    st = gemm_status(df_sgemm(0, 1, n, c, d, 1.0f, x, d, dc, d, 0.0f, gbuf, c));
    if (st) goto done;
    for (int64_t i = 0; i < n; i++) {
      float *gi = gbuf + i * c;
      if (hard) {
        for (int64_t j = 0; j < c; j++) {
          double dist = xn2[i] - 2.0 * a * (double)gi[j] + a * a * (double)dnorm2[m0 + j];
          if (dist < mx[i]) {
            mx[i] = dist;
            z[i] = (double)(m0 + j);
          }
        }
        continue;
      }
      /* logits -|x - a d|^2 / (2 sigma^2) = (2a x.d - a^2 |d|^2) scale + const(row):
       * u = 2a x.d - a^2 |d|^2 in float (as precise as the float x.d), weights
       * exp((u - max u) scale) <= 1 by a vectorisable exponential. */
      const float a2 = (float)(2.0 * a), aa = (float)(a * a), sc = (float)scale;
      const float *dn = dnorm2 + m0;
      float umax = -INFINITY;
      for (int64_t j = 0; j < c; j++) {
        float u = a2 * gi[j] - aa * dn[j];
        gi[j] = u;
        umax = u > umax ? u : umax;
      }
      double nm = (double)umax > mx[i] ? (double)umax : mx[i];
      double rescale = mx[i] == -INFINITY ? 0.0 : exp((mx[i] - nm) * scale);
      const float nmf = (float)nm;
      double zs = 0;
      for (int64_t j = 0; j < c; j++) {
        float w = exp_nonpos((gi[j] - nmf) * sc);
        gi[j] = w;
        zs += (double)w;
      }
      z[i] = z[i] * rescale + zs;
      mx[i] = nm;
      if (rescale != 1.0) {
        float r = (float)rescale;
        for (int64_t j = 0; j < d; j++) out[i * d + j] *= r;
      }
    }
    if (!hard) {
      /* out += W . dc  (n x d) */
      st = gemm_status(df_sgemm(0, 0, n, d, c, 1.0f, gbuf, c, dc, d, 1.0f, out, d));
      if (st) goto done;
    }
  }
  for (int64_t i = 0; i < n; i++) {
    if (hard) {
      int64_t b = z[i] < 0 ? 0 : (int64_t)z[i];
      memcpy(out + i * d, data + b * d, sizeof(float) * (size_t)d);
    } else {
      float inv = (float)(1.0 / z[i]);
      for (int64_t j = 0; j < d; j++) out[i * d + j] *= inv;
    }
  }
done:
  free(gbuf); free(xn2); free(mx); free(z);
  return st;
}
