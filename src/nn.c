/* Kernels of diffuse.nn (see nn.h); the activations are in nn_act.c. */
#include "nn.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "blas.h"
#include "rng.h"

const char *df_nn_strerror(int st) {
  switch (st) {
  case DF_NN_OK: return "ok";
  case DF_NN_ENOMEM: return "not enough memory";
  case DF_NN_EBLAS: return "no BLAS library loaded, or sizes too large for BLAS";
  default: return "unknown error";
  }
}

static int gemm(int ta, int tb, int64_t m, int64_t n, int64_t k, float alpha, const float *a,
                int64_t lda, const float *b, int64_t ldb, float beta, float *c, int64_t ldc) {
  return df_sgemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc) ? DF_NN_EBLAS : DF_NN_OK;
}

/* ---------------------------------------------------------------- Linear */

int df_nn_linear_fwd(const float *x, int64_t n, int64_t in, const float *w, int64_t out,
                     const float *b, const float *r, float *y) {
  float beta = 0.0f;
  if (b || r) {
    beta = 1.0f;
    for (int64_t i = 0; i < n; i++) {
      float *yi = y + i * out;
      const float *ri = r ? r + i * out : NULL;
      if (b && ri)
        for (int64_t j = 0; j < out; j++) yi[j] = b[j] + ri[j];
      else if (b)
        memcpy(yi, b, sizeof(float) * (size_t)out);
      else
        memcpy(yi, ri, sizeof(float) * (size_t)out);
    }
  }
  if (n == 0 || out == 0) return DF_NN_OK;
  return gemm(0, 1, n, out, in, 1.0f, x, in > 0 ? in : 1, w, in > 0 ? in : 1, beta, y, out);
}

int df_nn_linear_bwd(const float *x, const float *dy, int64_t n, int64_t in, const float *w,
                     int64_t out, float *dx, float *dw, float *db) {
  int st = DF_NN_OK;
  if (dx && n > 0 && in > 0) st |= gemm(0, 0, n, in, out, 1.0f, dy, out > 0 ? out : 1, w, in, 0.0f, dx, in);
  if (dw && out > 0 && in > 0 && n > 0) st |= gemm(1, 0, out, in, n, 1.0f, dy, out, x, in, 1.0f, dw, in);
  if (db) {
    for (int64_t i = 0; i < n; i++) {
      const float *r = dy + i * out;
      for (int64_t j = 0; j < out; j++) db[j] += r[j];
    }
  }
  return st ? DF_NN_EBLAS : DF_NN_OK;
}

/* ---------------------------------------------------------------- normalisation */

/* mean and 1/sqrt(var + eps) of m values: float partial sums in SIMD lanes (relative error
 * about 1e-6 for thousands of values), the variance from the centred values. */
static void moments(const float *x, int64_t m, float eps, float *mean, float *rstd) {
  float s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < m; j++) s += x[j];
  float mu = m > 0 ? s / (float)m : 0.0f;
  float q = 0;
#pragma omp simd reduction(+ : q)
  for (int64_t j = 0; j < m; j++) q += (x[j] - mu) * (x[j] - mu);
  double var = m > 0 ? (double)q / (double)m : 0.0;
  *mean = mu;
  *rstd = (float)(1.0 / sqrt(var + eps));
}

void df_nn_layernorm_fwd(const float *x, int64_t n, int64_t d, const float *g, const float *b,
                         float eps, float *y, float *mean, float *rstd) {
  for (int64_t i = 0; i < n; i++) {
    const float *xi = x + i * d;
    float *yi = y + i * d;
    float mu, rs;
    moments(xi, d, eps, &mu, &rs);
    mean[i] = mu;
    rstd[i] = rs;
    for (int64_t j = 0; j < d; j++) yi[j] = (xi[j] - mu) * rs * g[j] + b[j];
  }
}

void df_nn_layernorm_bwd(const float *x, const float *dy, int64_t n, int64_t d, const float *g,
                         const float *mean, const float *rstd, float *dx, float *dg, float *db) {
  for (int64_t i = 0; i < n; i++) {
    const float *xi = x + i * d, *gi = dy + i * d;
    float mu = mean[i], rs = rstd[i];
    float s1 = 0, s2 = 0; /* sums of dxhat and dxhat * xhat */
#pragma omp simd reduction(+ : s1, s2)
    for (int64_t j = 0; j < d; j++) {
      float xh = (xi[j] - mu) * rs;
      float dxh = gi[j] * g[j];
      s1 += dxh;
      s2 += dxh * xh;
    }
    if (dg)
      for (int64_t j = 0; j < d; j++) dg[j] += gi[j] * (xi[j] - mu) * rs;
    if (db)
      for (int64_t j = 0; j < d; j++) db[j] += gi[j];
    if (dx) {
      float m1 = s1 / (float)d, m2 = s2 / (float)d;
      float *dxi = dx + i * d;
      for (int64_t j = 0; j < d; j++) {
        float xh = (xi[j] - mu) * rs;
        dxi[j] = rs * (gi[j] * g[j] - m1 - xh * m2);
      }
    }
  }
}

void df_nn_groupnorm_fwd(const float *x, int64_t n, int64_t c, int64_t hw, int64_t groups,
                         const float *gm, const float *b, float eps, float *y, float *mean,
                         float *rstd) {
  int64_t cg = c / groups, m = cg * hw;
  for (int64_t i = 0; i < n; i++)
    for (int64_t g = 0; g < groups; g++) {
      int64_t base = (i * c + g * cg) * hw;
      float mu, rs;
      moments(x + base, m, eps, &mu, &rs);
      mean[i * groups + g] = mu;
      rstd[i * groups + g] = rs;
      for (int64_t ch = 0; ch < cg; ch++) {
        int64_t cc = g * cg + ch;
        float a = rs * gm[cc], off = b[cc] - mu * rs * gm[cc];
        const float *xs = x + base + ch * hw;
        float *ys = y + base + ch * hw;
        for (int64_t j = 0; j < hw; j++) ys[j] = xs[j] * a + off;
      }
    }
}

void df_nn_groupnorm_bwd(const float *x, const float *dy, int64_t n, int64_t c, int64_t hw,
                         int64_t groups, const float *gm, const float *mean, const float *rstd,
                         float *dx, float *dg, float *db) {
  int64_t cg = c / groups, m = cg * hw;
  for (int64_t i = 0; i < n; i++)
    for (int64_t g = 0; g < groups; g++) {
      int64_t base = (i * c + g * cg) * hw;
      float mu = mean[i * groups + g], rs = rstd[i * groups + g];
      double s1 = 0, s2 = 0;
      for (int64_t ch = 0; ch < cg; ch++) {
        int64_t cc = g * cg + ch;
        const float *xs = x + base + ch * hw, *gs = dy + base + ch * hw;
        double sg = 0, sgx = 0;
        for (int64_t j = 0; j < hw; j++) {
          float xh = (xs[j] - mu) * rs;
          sg += gs[j];
          sgx += (double)gs[j] * xh;
        }
        if (dg) dg[cc] += (float)sgx;
        if (db) db[cc] += (float)sg;
        s1 += sg * gm[cc];
        s2 += sgx * gm[cc];
      }
      if (dx) {
        float m1 = (float)(s1 / (double)m), m2 = (float)(s2 / (double)m);
        for (int64_t ch = 0; ch < cg; ch++) {
          int64_t cc = g * cg + ch;
          const float *xs = x + base + ch * hw, *gs = dy + base + ch * hw;
          float *dxs = dx + base + ch * hw;
          for (int64_t j = 0; j < hw; j++) {
            float xh = (xs[j] - mu) * rs;
            dxs[j] = rs * (gs[j] * gm[cc] - m1 - xh * m2);
          }
        }
      }
    }
}

/* ---------------------------------------------------------------- embeddings, dropout */

void df_nn_sinusoidal(const float *t, int64_t n, int64_t dim, double max_period, float *out) {
  int64_t half = dim / 2;
  double step = half > 0 ? -log(max_period) / (double)half : 0.0;
  for (int64_t i = 0; i < n; i++) {
    float *o = out + i * dim;
    if (i > 0 && t[i] == t[i - 1]) { /* samplers give one time to the whole batch */
      memcpy(o, o - dim, sizeof(float) * (size_t)dim);
      continue;
    }
    for (int64_t k = 0; k < half; k++) {
      double a = (double)t[i] * exp(step * (double)k);
      o[k] = (float)cos(a);
      o[half + k] = (float)sin(a);
    }
    if (dim % 2) o[dim - 1] = 0.0f;
  }
}

void df_nn_embedding_fwd(const float *table, const int64_t *idx, int64_t n, int64_t d, float *out) {
  for (int64_t i = 0; i < n; i++) memcpy(out + i * d, table + idx[i] * d, sizeof(float) * (size_t)d);
}

void df_nn_embedding_bwd(const int64_t *idx, const float *dout, int64_t n, int64_t d, float *dtable) {
  for (int64_t i = 0; i < n; i++) {
    float *r = dtable + idx[i] * d;
    const float *g = dout + i * d;
    for (int64_t j = 0; j < d; j++) r[j] += g[j];
  }
}

const char *df_nn_dropout(const float *x, int64_t n, int64_t d, float p, uint64_t seed,
                          uint64_t draw, float *y) {
  df_tensor u;
  memset(&u, 0, sizeof u);
  u.data = y;
  u.ndim = 2;
  u.shape[0] = n;
  u.shape[1] = d;
  df_set_contiguous_strides(&u);
  const char *err = df_rng_fill(&u, DF_RNG_UNIFORM, seed, 0, draw);
  if (err) return err;
  float scale = 1.0f / (1.0f - p);
  int64_t m = n * d;
  for (int64_t i = 0; i < m; i++) y[i] = y[i] >= p ? x[i] * scale : 0.0f;
  return NULL;
}

/* ---------------------------------------------------------------- pooling, channel adds */

void df_nn_avgpool_fwd(const float *x, int64_t nc, int64_t h, int64_t w, int64_t k, float *y) {
  int64_t ho = h / k, wo = w / k;
  float inv = 1.0f / (float)(k * k);
  for (int64_t p = 0; p < nc; p++) {
    const float *xp = x + p * h * w;
    float *yp = y + p * ho * wo;
    for (int64_t i = 0; i < ho; i++)
      for (int64_t j = 0; j < wo; j++) {
        float s = 0;
        for (int64_t a = 0; a < k; a++)
          for (int64_t b = 0; b < k; b++) s += xp[(i * k + a) * w + j * k + b];
        yp[i * wo + j] = s * inv;
      }
  }
}

void df_nn_avgpool_bwd(const float *dy, int64_t nc, int64_t h, int64_t w, int64_t k, float *dx) {
  int64_t ho = h / k, wo = w / k;
  float inv = 1.0f / (float)(k * k);
  memset(dx, 0, sizeof(float) * (size_t)(nc * h * w));
  for (int64_t p = 0; p < nc; p++) {
    float *xp = dx + p * h * w;
    const float *yp = dy + p * ho * wo;
    for (int64_t i = 0; i < ho; i++)
      for (int64_t j = 0; j < wo; j++) {
        float g = yp[i * wo + j] * inv;
        for (int64_t a = 0; a < k; a++)
          for (int64_t b = 0; b < k; b++) xp[(i * k + a) * w + j * k + b] = g;
      }
  }
}

void df_nn_add_channel(float *x, const float *v, int64_t nc, int64_t hw) {
  for (int64_t p = 0; p < nc; p++) {
    float a = v[p];
    float *xp = x + p * hw;
    for (int64_t j = 0; j < hw; j++) xp[j] += a;
  }
}

void df_nn_channel_sum(const float *dy, int64_t nc, int64_t hw, float *dv) {
  for (int64_t p = 0; p < nc; p++) {
    const float *g = dy + p * hw;
    double s = 0;
    for (int64_t j = 0; j < hw; j++) s += g[j];
    dv[p] = (float)s;
  }
}

/* ---------------------------------------------------------------- Conv2d */

typedef struct {
  int64_t n, c, h, w, o, k, s, p, ho, wo, kk, pp;
} conv_geom;

static conv_geom geom(int64_t n, int64_t c, int64_t h, int64_t w, int64_t o, int64_t k, int64_t s,
                      int64_t p) {
  conv_geom g = {n, c, h, w, o, k, s, p, 0, 0, 0, 0};
  g.ho = (h + 2 * p - k) / s + 1;
  g.wo = (w + 2 * p - k) / s + 1;
  g.kk = c * k * k;
  g.pp = g.ho * g.wo;
  return g;
}

/* Samples per chunk so the column buffer stays near 4M floats. */
static int64_t chunk_of(const conv_geom *g) {
  int64_t per = g->kk * g->pp;
  int64_t nb = per > 0 ? ((int64_t)1 << 22) / per : g->n;
  if (nb < 1) nb = 1;
  if (nb > g->n) nb = g->n;
  return nb;
}

/* cols (kk, nb * pp) from samples n0 .. n0+nb-1. */
static void im2col(const float *x, const conv_geom *g, int64_t n0, int64_t nb, float *cols) {
  int64_t ld = nb * g->pp;
  for (int64_t ci = 0; ci < g->c; ci++)
    for (int64_t a = 0; a < g->k; a++)
      for (int64_t b = 0; b < g->k; b++) {
        float *row = cols + ((ci * g->k + a) * g->k + b) * ld;
        for (int64_t nl = 0; nl < nb; nl++) {
          const float *xp = x + ((n0 + nl) * g->c + ci) * g->h * g->w;
          float *r = row + nl * g->pp;
          for (int64_t i = 0; i < g->ho; i++) {
            int64_t y = i * g->s - g->p + a;
            float *ri = r + i * g->wo;
            if (y < 0 || y >= g->h) {
              for (int64_t j = 0; j < g->wo; j++) ri[j] = 0.0f;
              continue;
            }
            const float *xr = xp + y * g->w;
            for (int64_t j = 0; j < g->wo; j++) {
              int64_t xx = j * g->s - g->p + b;
              ri[j] = (xx >= 0 && xx < g->w) ? xr[xx] : 0.0f;
            }
          }
        }
      }
}

static void col2im(const float *cols, const conv_geom *g, int64_t n0, int64_t nb, float *dx) {
  int64_t ld = nb * g->pp;
  for (int64_t ci = 0; ci < g->c; ci++)
    for (int64_t a = 0; a < g->k; a++)
      for (int64_t b = 0; b < g->k; b++) {
        const float *row = cols + ((ci * g->k + a) * g->k + b) * ld;
        for (int64_t nl = 0; nl < nb; nl++) {
          float *xp = dx + ((n0 + nl) * g->c + ci) * g->h * g->w;
          const float *r = row + nl * g->pp;
          for (int64_t i = 0; i < g->ho; i++) {
            int64_t y = i * g->s - g->p + a;
            if (y < 0 || y >= g->h) continue;
            float *xr = xp + y * g->w;
            const float *ri = r + i * g->wo;
            for (int64_t j = 0; j < g->wo; j++) {
              int64_t xx = j * g->s - g->p + b;
              if (xx >= 0 && xx < g->w) xr[xx] += ri[j];
            }
          }
        }
      }
}

int df_nn_conv2d_fwd(const float *x, int64_t n, int64_t c, int64_t h, int64_t w,
                     const float *wt, int64_t o, int64_t k, int64_t s, int64_t p,
                     const float *b, float *y) {
  conv_geom g = geom(n, c, h, w, o, k, s, p);
  if (n == 0 || g.pp <= 0 || o == 0) return DF_NN_OK;
  int64_t nb = chunk_of(&g);
  float *cols = malloc(sizeof(float) * (size_t)(g.kk * nb * g.pp));
  float *out = malloc(sizeof(float) * (size_t)(o * nb * g.pp));
  if (!cols || !out) {
    free(cols);
    free(out);
    return DF_NN_ENOMEM;
  }
  int st = DF_NN_OK;
  for (int64_t n0 = 0; n0 < n && st == DF_NN_OK; n0 += nb) {
    int64_t m = n - n0 < nb ? n - n0 : nb;
    im2col(x, &g, n0, m, cols);
    st = gemm(0, 0, o, m * g.pp, g.kk, 1.0f, wt, g.kk, cols, m * g.pp, 0.0f, out, m * g.pp);
    for (int64_t oc = 0; oc < o; oc++)
      for (int64_t nl = 0; nl < m; nl++) {
        const float *src = out + oc * m * g.pp + nl * g.pp;
        float *dst = y + ((n0 + nl) * o + oc) * g.pp;
        float bb = b ? b[oc] : 0.0f;
        for (int64_t j = 0; j < g.pp; j++) dst[j] = src[j] + bb;
      }
  }
  free(cols);
  free(out);
  return st;
}

int df_nn_conv2d_bwd(const float *x, const float *dy, int64_t n, int64_t c, int64_t h,
                     int64_t w, const float *wt, int64_t o, int64_t k, int64_t s, int64_t p,
                     float *dx, float *dw, float *db) {
  conv_geom g = geom(n, c, h, w, o, k, s, p);
  if (dx) memset(dx, 0, sizeof(float) * (size_t)(n * c * h * w));
  if (n == 0 || g.pp <= 0 || o == 0) return DF_NN_OK;
  if (db)
    for (int64_t i = 0; i < n; i++)
      for (int64_t oc = 0; oc < o; oc++) {
        const float *r = dy + (i * o + oc) * g.pp;
        double sum = 0;
        for (int64_t j = 0; j < g.pp; j++) sum += r[j];
        db[oc] += (float)sum;
      }
  if (!dx && !dw) return DF_NN_OK;
  int64_t nb = chunk_of(&g);
  float *cols = malloc(sizeof(float) * (size_t)(g.kk * nb * g.pp));
  float *dyc = malloc(sizeof(float) * (size_t)(o * nb * g.pp));
  if (!cols || !dyc) {
    free(cols);
    free(dyc);
    return DF_NN_ENOMEM;
  }
  int st = DF_NN_OK;
  for (int64_t n0 = 0; n0 < n && st == DF_NN_OK; n0 += nb) {
    int64_t m = n - n0 < nb ? n - n0 : nb, ld = m * g.pp;
    for (int64_t oc = 0; oc < o; oc++)
      for (int64_t nl = 0; nl < m; nl++)
        memcpy(dyc + oc * ld + nl * g.pp, dy + ((n0 + nl) * o + oc) * g.pp, sizeof(float) * (size_t)g.pp);
    if (dw) {
      im2col(x, &g, n0, m, cols);
      st = gemm(0, 1, o, g.kk, ld, 1.0f, dyc, ld, cols, ld, 1.0f, dw, g.kk);
    }
    if (dx && st == DF_NN_OK) {
      st = gemm(1, 0, g.kk, ld, o, 1.0f, wt, g.kk, dyc, ld, 0.0f, cols, ld);
      col2im(cols, &g, n0, m, dx);
    }
  }
  free(cols);
  free(dyc);
  return st;
}

/* ---------------------------------------------------------------- losses */

double df_nn_mse(const float *pred, const float *target, int64_t n, float *grad) {
  double s = 0;
  float gs = n > 0 ? 2.0f / (float)n : 0.0f;
  for (int64_t i = 0; i < n; i++) {
    float e = pred[i] - target[i];
    s += (double)e * e;
    if (grad) grad[i] = gs * e;
  }
  return n > 0 ? s / (double)n : 0.0;
}

double df_nn_cross_entropy(const float *logits, const int64_t *labels, int64_t n, int64_t c,
                           float *grad) {
  double total = 0;
  for (int64_t i = 0; i < n; i++) {
    const float *z = logits + i * c;
    double mx = z[0];
    for (int64_t j = 1; j < c; j++) if (z[j] > mx) mx = z[j];
    double se = 0;
    for (int64_t j = 0; j < c; j++) se += exp((double)z[j] - mx);
    double lse = mx + log(se);
    total += lse - z[labels[i]];
    if (grad) {
      float *gi = grad + i * c;
      for (int64_t j = 0; j < c; j++)
        gi[j] = (float)((exp((double)z[j] - lse) - (j == labels[i] ? 1.0 : 0.0)) / (double)n);
    }
  }
  return n > 0 ? total / (double)n : 0.0;
}

/* ---------------------------------------------------------------- optimizer */

void df_nn_adamw(float *p, const float *g, float *m, float *v, int64_t n, double lr, double b1,
                 double b2, double eps, double wd, double bc1, double bc2) {
  float decay = (float)(1.0 - lr * wd), fb1 = (float)b1, fb2 = (float)b2;
  float c1 = (float)(1.0 - b1), c2 = (float)(1.0 - b2);
  float step = (float)(lr / bc1), isb2 = (float)(1.0 / sqrt(bc2)), feps = (float)eps;
  for (int64_t i = 0; i < n; i++) {
    float gi = g[i];
    float mi = fb1 * m[i] + c1 * gi;
    float vi = fb2 * v[i] + c2 * gi * gi;
    m[i] = mi;
    v[i] = vi;
    p[i] = p[i] * decay - step * mi / (sqrtf(vi) * isb2 + feps);
  }
}

double df_nn_sumsq(const float *x, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; i++) s += (double)x[i] * x[i];
  return s;
}

void df_nn_scale(float *x, int64_t n, float s) {
  for (int64_t i = 0; i < n; i++) x[i] *= s;
}

void df_nn_ema(float *e, const float *p, int64_t n, double decay) {
  float d = (float)decay, c = (float)(1.0 - decay);
  for (int64_t i = 0; i < n; i++) e[i] = d * e[i] + c * p[i];
}

void df_nn_acc(float *y, const float *x, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] += x[i];
}
