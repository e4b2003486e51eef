/* A vectorisable float e^x: Cody-Waite reduction x = n ln2 + r, a degree-6 polynomial for e^r
 * on |r| <= ln2/2, and 2^n built in the exponent bits; relative error about 2e-7.  libm's
 * expf is not vectorised by gcc, so the kernels that evaluate exp per element (activations,
 * the empirical denoiser's softmax) use this instead.  The input must lie in [-87.3, 88.7]
 * (callers clamp): outside it the exponent bits overflow. */
#ifndef DIFFUSE_FASTEXP_H
#define DIFFUSE_FASTEXP_H

#include <stdint.h>

static inline float df_fastexp_core(float x) {
  float t = x * 1.44269504088896341f;
  float n = (t + 12582912.0f) - 12582912.0f; /* round to nearest */
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  union {
    int32_t i;
    float f;
  } b;
  b.i = ((int32_t)n + 127) << 23;
  return p * b.f;
}

#endif
