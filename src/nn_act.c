/* Activation kernels of diffuse.nn (SiLU with FiLM, GELU), see nn.h.  These loops must
 * vectorise: exp is a polynomial (relative error about 2e-7) instead of libm's expf, which gcc
 * does not vectorise, and this file is compiled with finite-math-only and no-signed-zeros so
 * the clamps become min/max instructions (without them gcc keeps a branch per element: 4x
 * slower).  Consequence: a NaN input gives an unspecified (finite or NaN) output here; the
 * layers around (LayerNorm, Linear) still propagate NaN. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("finite-math-only", "no-signed-zeros")
#endif

#include <stddef.h>
#include <stdint.h>

#include "fastexp.h"
#include "nn.h"

/* e^x for any float x: clamped to [-87.3, 88.7] first. */
static inline float fexp(float x) {
  x = x < -87.3f ? -87.3f : x;
  x = x > 88.7f ? 88.7f : x;
  return df_fastexp_core(x);
}

static inline float fsigmoid(float x) { return 1.0f / (1.0f + fexp(-x)); }

/* ---------------------------------------------------------------- activations */

void df_nn_film_silu_fwd(const float *h, const float *ss, int64_t n, int64_t d, float *a) {
  for (int64_t i = 0; i < n; i++) {
    const float *hi = h + i * d;
    float *ai = a + i * d;
    if (ss) {
      const float *sc = ss + i * 2 * d, *sh = sc + d;
      for (int64_t j = 0; j < d; j++) {
        float z = hi[j] * (1.0f + sc[j]) + sh[j];
        ai[j] = z * fsigmoid(z);
      }
    } else {
      for (int64_t j = 0; j < d; j++) {
        float z = hi[j];
        ai[j] = z * fsigmoid(z);
      }
    }
  }
}

void df_nn_film_silu_bwd(const float *h, const float *ss, const float *da, int64_t n, int64_t d,
                         float *dh, float *dss) {
  for (int64_t i = 0; i < n; i++) {
    const float *hi = h + i * d, *gi = da + i * d;
    float *dhi = dh + i * d;
    if (ss) {
      const float *sc = ss + i * 2 * d, *sh = sc + d;
      float *dsc = dss + i * 2 * d, *dsh = dsc + d;
      for (int64_t j = 0; j < d; j++) {
        float z = hi[j] * (1.0f + sc[j]) + sh[j];
        float s = fsigmoid(z);
        float dz = gi[j] * (s * (1.0f + z * (1.0f - s)));
        dhi[j] = dz * (1.0f + sc[j]);
        dsc[j] = dz * hi[j];
        dsh[j] = dz;
      }
    } else {
      for (int64_t j = 0; j < d; j++) {
        float z = hi[j];
        float s = fsigmoid(z);
        dhi[j] = gi[j] * (s * (1.0f + z * (1.0f - s)));
      }
    }
  }
}

#define GELU_C 0.7978845608028654f /* sqrt(2 / pi) */
#define GELU_A 0.044715f

static inline float ftanh(float u) {
  /* tanh u = 1 - 2 / (1 + e^(2u)); fexp clamps, so large |u| gives exactly +-1 */
  return 1.0f - 2.0f / (1.0f + fexp(2.0f * u));
}

void df_nn_gelu_fwd(const float *x, int64_t n, float *y) {
  for (int64_t i = 0; i < n; i++) {
    float v = x[i];
    float u = GELU_C * (v + GELU_A * v * v * v);
    y[i] = 0.5f * v * (1.0f + ftanh(u));
  }
}

void df_nn_gelu_bwd(const float *x, const float *dy, int64_t n, float *dx) {
  for (int64_t i = 0; i < n; i++) {
    float v = x[i];
    float u = GELU_C * (v + GELU_A * v * v * v);
    float th = ftanh(u);
    float g = 0.5f * (1.0f + th) + 0.5f * v * (1.0f - th * th) * GELU_C * (1.0f + 3.0f * GELU_A * v * v);
    dx[i] = dy[i] * g;
  }
}

