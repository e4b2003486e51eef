/* Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC11) and the
 * per-row normal / uniform fills. */
#include "rng.h"

#include <math.h>

/* Round multipliers and the Weyl increments added to the key between rounds. */
#define PHILOX_M0 UINT32_C(0xD2511F53)
#define PHILOX_M1 UINT32_C(0xCD9E8D57)
#define PHILOX_W0 UINT32_C(0x9E3779B9)
#define PHILOX_W1 UINT32_C(0xBB67AE85)
#define PHILOX_ROUNDS 10

/* Work is split into units of one row segment of this many elements (a multiple of 4, so a
 * unit never starts inside a Philox block); units are what the threads share. */
#define RNG_CHUNK 1024
/* Below this many elements the fill stays on the calling thread. */
#define RNG_PARALLEL_MIN 16384

#define TWO_PI 6.283185307179586476925286766559

static inline void philox(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                          uint32_t k1, uint32_t out[4]) {
  for (int r = 0; r < PHILOX_ROUNDS; r++) {
    if (r > 0) {
      k0 += PHILOX_W0;
      k1 += PHILOX_W1;
    }
    uint64_t p0 = (uint64_t)PHILOX_M0 * c0;
    uint64_t p1 = (uint64_t)PHILOX_M1 * c2;
    uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0;
    uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
    c1 = (uint32_t)p1;
    c3 = (uint32_t)p0;
    c0 = n0;
    c2 = n2;
  }
  out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

void df_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]) {
  philox(ctr[0], ctr[1], ctr[2], ctr[3], key[0], key[1], out);
}

/* Two normals from two 32-bit words.  The radius word maps to (0, 1) (offset by half a
 * step), so the logarithm never sees 0; the angle word maps to [0, 2 pi). */
static inline void box_muller(uint32_t a, uint32_t b, float *z0, float *z1) {
  double u = ((double)a + 0.5) * 0x1p-32;
  double theta = (double)b * (TWO_PI * 0x1p-32);
  double r = sqrt(-2.0 * log(u));
  *z0 = (float)(r * cos(theta));
  *z1 = (float)(r * sin(theta));
}

/* The 4 values of block `block` of a row: uniforms are the top 24 bits of each word times
 * 2^-24 (exact in float32, in [0, 1 - 2^-24]). */
static inline void gen_block(df_rng_dist dist, uint32_t block, uint32_t draw, uint64_t row,
                             uint32_t k0, uint32_t k1, int need, float v[4]) {
  uint32_t w[4];
  philox(block, draw, (uint32_t)row, (uint32_t)(row >> 32), k0, k1, w);
  if (dist == DF_RNG_UNIFORM) {
    for (int q = 0; q < 4; q++) v[q] = (float)(w[q] >> 8) * 0x1p-24f;
  } else {
    box_muller(w[0], w[1], &v[0], &v[1]);
    if (need > 2) box_muller(w[2], w[3], &v[2], &v[3]); /* rows of 1 or 2 skip the 2nd pair */
  }
}

const char *df_rng_fill(df_tensor *t, df_rng_dist dist, uint64_t seed, uint64_t first_row,
                        uint64_t draw) {
  if (dist != DF_RNG_NORMAL && dist != DF_RNG_UNIFORM) return "unknown distribution";
  if (draw > DF_RNG_MAX_DRAW) return "draw number must be below 2^32";
  if (t->ndim < 1 || t->ndim > DF_MAXDIM) return "tensor must have 1 to 4 dimensions";
  int64_t numel = df_numel(t);
  if (numel == 0) return NULL;
  int64_t rows = t->shape[0];
  int64_t rowlen = numel / rows;
  if ((uint64_t)rowlen > ((uint64_t)1 << 34)) return "rows longer than 2^34 elements are not supported";
  if (first_row > UINT64_MAX - (uint64_t)rows) return "row index overflows 64 bits";

  /* The row's own dimensions, padded in front to 3 with size-1 dims. */
  int64_t sh[3] = {1, 1, 1}, st[3] = {0, 0, 0};
  int inner = t->ndim - 1;
  for (int d = 0; d < inner; d++) {
    sh[3 - inner + d] = t->shape[1 + d];
    st[3 - inner + d] = t->stride[1 + d];
  }
  int64_t plane = sh[1] * sh[2];
  int64_t chunks = (rowlen + RNG_CHUNK - 1) / RNG_CHUNK;
  int64_t units = rows * chunks;
  uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
  float *data = t->data;
  int64_t rstride = t->stride[0];

#pragma omp parallel for schedule(static) if (numel >= RNG_PARALLEL_MIN)
  for (int64_t u = 0; u < units; u++) {
    int64_t r = u / chunks;
    int64_t j0 = (u % chunks) * RNG_CHUNK;
    int64_t j1 = j0 + RNG_CHUNK < rowlen ? j0 + RNG_CHUNK : rowlen;
    uint64_t grow = first_row + (uint64_t)r;
    float *base = data + r * rstride;
    int64_t a = j0 / plane, rem = j0 % plane;
    int64_t b = rem / sh[2], c = rem % sh[2];
    float v[4];
    for (int64_t j = j0; j < j1; j++) {
      if ((j & 3) == 0)
        gen_block(dist, (uint32_t)(j >> 2), (uint32_t)draw, grow, k0, k1, (int)(j1 - j), v);
      base[a * st[0] + b * st[1] + c * st[2]] = v[j & 3];
      if (++c == sh[2]) {
        c = 0;
        if (++b == sh[1]) {
          b = 0;
          a++;
        }
      }
    }
  }
  return NULL;
}
