/* Pure C kernels of the exact models: the Gaussian-mixture posterior (denoiser, responsibilities,
 * log-density) and the empirical-data denoiser.  Never includes lua.h.
 *
 * Both work with a point (alpha, sigma) of a noise schedule, x = alpha x0 + sigma eps, in the
 * un-normalised form, which equals the sigma-space form with xh = x / alpha, s = sigma / alpha
 * but stays defined at alpha = 0 (pure noise: the prior mean) and at sigma = 0 (the data).
 * All matrices are dense row-major float32; x is (n x d). */
#ifndef DIFFUSE_MODELS_H
#define DIFFUSE_MODELS_H

#include <stdint.h>

enum {
  DF_MODELS_OK = 0,
  DF_MODELS_ENOMEM = -1,  /* a scratch allocation failed */
  DF_MODELS_ENOBLAS = -2, /* the GEMM path needs a BLAS and none is loaded */
  DF_MODELS_EPOINT = -3,  /* alpha and sigma both 0, negative, or not finite */
  DF_MODELS_ESIZE = -4    /* a size does not fit BLAS's int */
};

/* A short message for a status code. */
const char *df_models_strerror(int status);

/* Gaussian mixture with diagonal covariances.  Component k has mean means[k, :] and per-coordinate
 * variances vars[k, :] (> 0; an isotropic component repeats its variance).  Each row of x uses the
 * log-weights logw[group[i], :] (a g x k table; -INFINITY drops a component; group == NULL means
 * row 0 for every sample).  Given x_t = x, for every row:
 *   x | k ~ N(alpha mu_k, alpha^2 var_k + sigma^2)  (per coordinate)
 *   r_k   = p(k | x)
 *   out   = E[x0 | x] = sum_k r_k (mu_k + g_k (x - alpha mu_k)),  g_k = alpha var_k / (alpha^2 var_k + sigma^2)
 *   lse   = log p(x)  (the density of x, constants included)
 * out (n x d), resp (n x k) and lse (n) are each optional (NULL).  path: 0 chooses, 1 is the direct
 * double-precision loop, 2 uses sgemm for the distance terms and the weighted sums (on centred
 * coordinates).  Returns DF_MODELS_OK or a negative status. */
int df_gmm_posterior(const float *x, int64_t n, int64_t d, const float *means, const float *vars,
                     int64_t k, const double *logw, int64_t g, const int32_t *group, double alpha,
                     double sigma, float *out, float *resp, double *lse, int path);

/* Empirical-data denoiser: the exact posterior mean for the uniform distribution over the m rows
 * of data (m x d), with dnorm2[j] = |data_j|^2:
 *   w_j = softmax_j(-|x - alpha data_j|^2 / (2 sigma^2)),   out = sum_j w_j data_j
 * streamed over chunks of `chunk` data rows (an online log-sum-exp), each chunk two sgemm calls.
 * sigma = 0 (or so small that 1/sigma^2 overflows) gives the nearest row (first on ties).
 * Returns DF_MODELS_OK or a negative status. */
int df_empirical_denoise(const float *x, int64_t n, int64_t d, const float *data, int64_t m,
                         const float *dnorm2, double alpha, double sigma, int64_t chunk, float *out);

#endif
