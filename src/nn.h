/* Pure C kernels of diffuse.nn: forward and backward passes of the layers, losses and the
 * optimizer update.  Every array is dense row-major float32 given by pointer and sizes; matrix
 * products go through df_sgemm (blas.h).  Backward kernels ACCUMULATE parameter gradients
 * (dW += ...) and OVERWRITE input gradients (dx = ...).  A NULL gradient pointer skips that
 * gradient.  Functions returning int give 0, or DF_NN_ENOMEM / DF_NN_EBLAS.  Never includes
 * lua.h, never aborts. */
#ifndef DIFFUSE_NN_H
#define DIFFUSE_NN_H

#include <stdint.h>

enum { DF_NN_OK = 0, DF_NN_ENOMEM = -1, DF_NN_EBLAS = -2 };
const char *df_nn_strerror(int st);

/* Linear: y (N, out) = x (N, in) W^T + b + r, W stored (out, in); b and r may be NULL
 * (r, (N, out), is a residual added in the same pass; it may not alias y). */
int df_nn_linear_fwd(const float *x, int64_t n, int64_t in, const float *w, int64_t out,
                     const float *b, const float *r, float *y);
/* dx = dy W; dW += dy^T x; db += column sums of dy. */
int df_nn_linear_bwd(const float *x, const float *dy, int64_t n, int64_t in, const float *w,
                     int64_t out, float *dx, float *dw, float *db);

/* a = silu(h * (1 + scale) + shift), ss (N, 2D) holds [scale | shift] per row; ss NULL gives
 * a = silu(h).  Backward: dh = d a/d h * da; dss = [da' * h | da'] (both required, overwritten;
 * dss only with ss). */
void df_nn_film_silu_fwd(const float *h, const float *ss, int64_t n, int64_t d, float *a);
void df_nn_film_silu_bwd(const float *h, const float *ss, const float *da, int64_t n, int64_t d,
                         float *dh, float *dss);
/* GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). */
void df_nn_gelu_fwd(const float *x, int64_t n, float *y);
void df_nn_gelu_bwd(const float *x, const float *dy, int64_t n, float *dx);

/* LayerNorm over the last dimension d of (n, d); mean and rstd (n) are saved for backward. */
void df_nn_layernorm_fwd(const float *x, int64_t n, int64_t d, const float *g, const float *b,
                         float eps, float *y, float *mean, float *rstd);
void df_nn_layernorm_bwd(const float *x, const float *dy, int64_t n, int64_t d, const float *g,
                         const float *mean, const float *rstd, float *dx, float *dg, float *db);
/* GroupNorm of (n, c, hw) with g groups; mean and rstd (n * g). */
void df_nn_groupnorm_fwd(const float *x, int64_t n, int64_t c, int64_t hw, int64_t groups,
                         const float *gm, const float *b, float eps, float *y, float *mean,
                         float *rstd);
void df_nn_groupnorm_bwd(const float *x, const float *dy, int64_t n, int64_t c, int64_t hw,
                         int64_t groups, const float *gm, const float *mean, const float *rstd,
                         float *dx, float *dg, float *db);

/* out (n, dim): [cos(t f_k) | sin(t f_k)], f_k = max_period^(-k / half), half = dim / 2 (an odd
 * dim gets a trailing zero column). */
void df_nn_sinusoidal(const float *t, int64_t n, int64_t dim, double max_period, float *out);
/* out[i] = table[idx[i]] (rows of length d); backward dtable[idx[i]] += dout[i]. */
void df_nn_embedding_fwd(const float *table, const int64_t *idx, int64_t n, int64_t d, float *out);
void df_nn_embedding_bwd(const int64_t *idx, const float *dout, int64_t n, int64_t d, float *dtable);

/* Dropout of (n, d) rows: u = Philox uniforms (seed, row first_row + i, draw); kept where
 * u >= p, scaled by 1 / (1 - p).  The backward pass regenerates the same mask. */
const char *df_nn_dropout(const float *x, int64_t n, int64_t d, float p, uint64_t seed,
                          uint64_t draw, float *y);

/* Average pooling k x k with stride k of (n*c, h, w) planes (h, w multiples of k not needed:
 * the trailing rows/columns are dropped like torch's floor mode). */
void df_nn_avgpool_fwd(const float *x, int64_t nc, int64_t h, int64_t w, int64_t k, float *y);
void df_nn_avgpool_bwd(const float *dy, int64_t nc, int64_t h, int64_t w, int64_t k, float *dx);
/* x (n, c, hw) += v (n, c) broadcast over hw; backward dv (n, c) = sums over hw (overwritten). */
void df_nn_add_channel(float *x, const float *v, int64_t nc, int64_t hw);
void df_nn_channel_sum(const float *dy, int64_t nc, int64_t hw, float *dv);

/* Conv2d, NCHW, square kernel k, stride s, zero padding p, by im2col + df_sgemm in chunks of
 * samples.  x (n, c, h, w), w (o, c, k, k), b (o) or NULL -> y (n, o, ho, wo). */
int df_nn_conv2d_fwd(const float *x, int64_t n, int64_t c, int64_t h, int64_t w,
                     const float *wt, int64_t o, int64_t k, int64_t s, int64_t p,
                     const float *b, float *y);
int df_nn_conv2d_bwd(const float *x, const float *dy, int64_t n, int64_t c, int64_t h,
                     int64_t w, const float *wt, int64_t o, int64_t k, int64_t s, int64_t p,
                     float *dx, float *dw, float *db);

/* Losses: mean over all elements / rows; grad (same shape as the input) may be NULL. */
double df_nn_mse(const float *pred, const float *target, int64_t n, float *grad);
/* cross_entropy of logits (n, c) against labels 0..c-1; grad = (softmax - onehot) / n. */
double df_nn_cross_entropy(const float *logits, const int64_t *labels, int64_t n, int64_t c,
                           float *grad);

/* AdamW (decoupled decay, torch semantics): p *= 1 - lr wd; m, v moments; p -= lr / bc1 * m /
 * (sqrt(v) / sqrt(bc2) + eps), bc_i = 1 - beta_i^step. */
void df_nn_adamw(float *p, const float *g, float *m, float *v, int64_t n, double lr, double b1,
                 double b2, double eps, double wd, double bc1, double bc2);
double df_nn_sumsq(const float *x, int64_t n);
void df_nn_scale(float *x, int64_t n, float s);
/* e = decay e + (1 - decay) p */
void df_nn_ema(float *e, const float *p, int64_t n, double decay);
/* y += x */
void df_nn_acc(float *y, const float *x, int64_t n);

#endif
