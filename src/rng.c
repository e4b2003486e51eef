/* Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC11) and the
 * per-row normal / uniform fills.
 *
 * Speed: the fill computes LANES Philox blocks at once in structure-of-arrays form, one word
 * per 64-bit slot so that each 32x32->64 product is one pmuludq (SSE2 / AVX2 / AVX-512F
 * intrinsics; plain C elsewhere), then turns the words into values with a branch-free
 * Box-Muller in double precision that calls no libm function: the logarithm and sin / cos are
 * polynomials evaluated after exact reductions (see box_muller_lanes), in loops the compiler
 * vectorises.  The fill is compiled for SSE2 (the x86-64 baseline; plain C on other
 * architectures), AVX2 and AVX-512F and the best variant the CPU has is picked at run time.
 * Every variant performs the same IEEE operations (add, sub, mul, div, sqrt, exact
 * conversions; no fused multiply-add: no variant enables FMA, GCC does not contract under
 * -std=c99 and clang is told not to) on each element in the same order, so all variants give
 * the same bits, and so does any IEEE machine.  DIFFUSE_RNG_ISA=generic|avx2|avx512f
 * forces a variant (the specs use it to check exactly that). */
#include "rng.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* -DDF_RNG_NO_SIMD builds the portable C version alone (to test it on x86-64). */
#if defined(__GNUC__) && defined(__x86_64__) && !defined(DF_RNG_NO_SIMD)
#define RNG_X86 1
#include <immintrin.h>
#else
#define RNG_X86 0
#endif

/* No a * b + c may become a fused multiply-add (GCC does not contract under -std=c99). */
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

#if defined(__GNUC__)
#define RNG_INLINE static inline __attribute__((always_inline, unused))
#else
#define RNG_INLINE static inline
#endif

/* Round multipliers and the Weyl increments added to the key between rounds. */
#define PHILOX_M0 UINT32_C(0xD2511F53)
#define PHILOX_M1 UINT32_C(0xCD9E8D57)
#define PHILOX_W0 UINT32_C(0x9E3779B9)
#define PHILOX_W1 UINT32_C(0xBB67AE85)
#define PHILOX_ROUNDS 10

/* Philox blocks computed together (64 values). */
#define LANES 16
/* Work is split into units of this many consecutive blocks (1024 values), in row-major order
 * over (row, block of the row); units are what the threads share.  A unit may span rows. */
#define UNIT_BLOCKS 256
/* Below this many elements the fill stays on the calling thread. */
#define RNG_PARALLEL_MIN 16384

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

/* LANES Philox blocks in place, one 32-bit word per uint64_t (in its low half; the high half
 * may hold garbage while rounds run and is cleared at the end).  Word q of lane l lives in
 * a[l] (q = 0), b[l] (q = 1), a[LANES + l] (q = 2), b[LANES + l] (q = 3): the two
 * Box-Muller pairs of a block are then (a[l], b[l]) and (a[LANES + l], b[LANES + l]).
 * The 64-bit slots make each 32x32->64 product one pmuludq; compilers do not find that by
 * themselves, hence the intrinsics, with a plain C version for other architectures. */
RNG_INLINE void philox_lanes_c(uint64_t *a, uint64_t *b, uint32_t k0, uint32_t k1) {
  for (int l = 0; l < LANES; l++) {
    uint32_t w[4];
    philox((uint32_t)a[l], (uint32_t)b[l], (uint32_t)a[LANES + l], (uint32_t)b[LANES + l], k0,
           k1, w);
    a[l] = w[0]; b[l] = w[1]; a[LANES + l] = w[2]; b[LANES + l] = w[3];
  }
}

/* Square roots of n doubles in place (correctly rounded in every variant).  A plain sqrt()
 * loop is not vectorised under the default -fmath-errno, hence the intrinsics. */
RNG_INLINE void sqrt_c(double *x, int n) {
  for (int i = 0; i < n; i++) x[i] = sqrt(x[i]);
}

#if RNG_X86
/* One variant's Philox and sqrt: V vector type, W uint64 per vector, P intrinsic prefix. */
#define RNG_SIMD(ISA, ATTR, V, W, P, SI, SET1)                                                 \
  ATTR RNG_INLINE void philox_lanes_##ISA(uint64_t *a, uint64_t *b, uint32_t k0,            \
                                          uint32_t k1) {                                   \
    enum { G = LANES / W };                                                                \
    V x0[G], x1[G], x2[G], x3[G];                                                          \
    const V m0 = SET1(PHILOX_M0), m1 = SET1(PHILOX_M1);              \
    const V lo = SET1(0xffffffff);                                              \
    for (int g = 0; g < G; g++) {                                                          \
      x0[g] = P##_loadu_##SI((const void *)(a + g * W));                                  \
      x1[g] = P##_loadu_##SI((const void *)(b + g * W));                                  \
      x2[g] = P##_loadu_##SI((const void *)(a + LANES + g * W));                          \
      x3[g] = P##_loadu_##SI((const void *)(b + LANES + g * W));                          \
    }                                                                                      \
    for (int r = 0; r < PHILOX_ROUNDS; r++) {                                              \
      const V kk0 = SET1(k0), kk1 = SET1(k1);                        \
      for (int g = 0; g < G; g++) {                                                        \
        V p0 = P##_mul_epu32(x0[g], m0), p1 = P##_mul_epu32(x2[g], m1);                    \
        V n0 = P##_xor_##SI(P##_xor_##SI(P##_srli_epi64(p1, 32), x1[g]), kk0);             \
        V n2 = P##_xor_##SI(P##_xor_##SI(P##_srli_epi64(p0, 32), x3[g]), kk1);             \
        x1[g] = p1; x3[g] = p0; x0[g] = n0; x2[g] = n2;                                    \
      }                                                                                    \
      k0 += PHILOX_W0;                                                                     \
      k1 += PHILOX_W1;                                                                     \
    }                                                                                      \
    for (int g = 0; g < G; g++) {                                                          \
      P##_storeu_##SI((void *)(a + g * W), P##_and_##SI(x0[g], lo));                       \
      P##_storeu_##SI((void *)(b + g * W), P##_and_##SI(x1[g], lo));                       \
      P##_storeu_##SI((void *)(a + LANES + g * W), P##_and_##SI(x2[g], lo));               \
      P##_storeu_##SI((void *)(b + LANES + g * W), P##_and_##SI(x3[g], lo));               \
    }                                                                                      \
  }                                                                                        \
  ATTR RNG_INLINE void sqrt_##ISA(double *x, int n) {                                      \
    for (int i = 0; i < n; i += W) P##_storeu_pd(x + i, P##_sqrt_pd(P##_loadu_pd(x + i))); \
  }

#define RNG_NOATTR
RNG_SIMD(sse2, RNG_NOATTR, __m128i, 2, _mm, si128, _mm_set1_epi64x)
RNG_SIMD(avx2, __attribute__((target("avx2"))), __m256i, 4, _mm256, si256, _mm256_set1_epi64x)
RNG_SIMD(avx512, __attribute__((target("avx512f"))), __m512i, 8, _mm512, si512, _mm512_set1_epi64)
#endif

#define LN2 0.693147180559945309417232121458
#define TWO_PI_2M32 (6.283185307179586476925286766559 * 0x1p-32) /* 2 pi / 2^32 */
#define TWO52 4503599627370496.0                                 /* 2^52 */

RNG_INLINE double bits_double(uint64_t x) {
  double d;
  memcpy(&d, &x, sizeof d);
  return d;
}
RNG_INLINE uint64_t double_bits(double d) {
  uint64_t x;
  memcpy(&x, &d, sizeof x);
  return x;
}

/* Box-Muller on n = 2 * LANES pairs of words: zc = r cos(theta), zs = r sin(theta) with
 * r = sqrt(-2 log((a + 0.5) / 2^32)) and theta = 2 pi b / 2^32, each computed in double with
 * a relative error below 1e-14 and rounded once to float.  Only 64-bit lane operations, so
 * that the loops vectorise with doubles and words side by side.
 *
 * Radius: u = (a + 0.5) 2^-32 is exact in double.  u = 2^k m with m in [sqrt(1/2), sqrt(2))
 * (read from the bits), log m = 2 atanh(s) with s = (m - 1) / (m + 1), |s| < 0.1716, as the
 * odd series 2 s (1 + s^2/3 + ... + s^16/17) (truncation < 1e-15 relative); m - 1 is exact,
 * so u close to 1 keeps full relative accuracy.
 * Angle: the top bits of b give the quadrant exactly, b = q 2^30 + e with e in [-2^29, 2^29),
 * so theta = q pi/2 + x with x = 2 pi e / 2^32 in [-pi/4, pi/4) (e exact in double).  sin x
 * and cos x are their Taylor series up to x^15 and x^16 (truncation < 1e-15). */
RNG_INLINE void box_muller_lanes(const uint64_t *a, const uint64_t *b, float *zc, float *zs,
                                 void (*sqrt_n)(double *, int)) {
  enum { N = 2 * LANES };
  double r[N];
  for (int l = 0; l < N; l++) {
    /* (2^52 + a) - (2^52 - 1/2) = a + 1/2, exactly */
    double u = (bits_double(UINT64_C(0x4330000000000000) | a[l]) - (TWO52 - 0.5)) * 0x1p-32;
    uint64_t ix = double_bits(u) + (UINT64_C(0x3ff0000000000000) - UINT64_C(0x3fe6a09e667f3bcd));
    /* k = biased exponent of ix minus 1023, as a double: (2^52 + biased) - (2^52 + 1023) */
    double k = bits_double(UINT64_C(0x4330000000000000) | (ix >> 52)) - (TWO52 + 1023.0);
    double m = bits_double((ix & UINT64_C(0x000fffffffffffff)) + UINT64_C(0x3fe6a09e667f3bcd));
    double f = m - 1.0;
    double s = f / (2.0 + f);
    double z = s * s;
    double p = 1.0 / 17;
    p = p * z + 1.0 / 15;
    p = p * z + 1.0 / 13;
    p = p * z + 1.0 / 11;
    p = p * z + 1.0 / 9;
    p = p * z + 1.0 / 7;
    p = p * z + 1.0 / 5;
    p = p * z + 1.0 / 3;
    double logm = 2.0 * s + (2.0 * s) * (z * p);
    r[l] = -2.0 * (k * LN2 + logm);
  }
  sqrt_n(r, N);
  for (int l = 0; l < N; l++) {
    uint64_t t = b[l] + UINT64_C(0x20000000); /* b + 2^29, below 2^33 */
    uint64_t q = (t >> 30) & 3;               /* quadrant */
    /* e + 2^29 = t mod 2^30, exact as a double: x = 2 pi e / 2^32 */
    double e = bits_double(UINT64_C(0x4330000000000000) | (t & UINT64_C(0x3fffffff))) -
               (TWO52 + 536870912.0);
    double x = e * TWO_PI_2M32;
    double x2 = x * x;
    double sp = -1.0 / 1307674368000.0;  /* -1/15! */
    sp = sp * x2 + 1.0 / 6227020800.0;   /* 1/13! */
    sp = sp * x2 - 1.0 / 39916800.0;     /* 1/11! */
    sp = sp * x2 + 1.0 / 362880.0;       /* 1/9! */
    sp = sp * x2 - 1.0 / 5040.0;
    sp = sp * x2 + 1.0 / 120.0;
    sp = sp * x2 - 1.0 / 6.0;
    double sn = x + x * (x2 * sp);
    double cp = 1.0 / 20922789888000.0;  /* 1/16! */
    cp = cp * x2 - 1.0 / 87178291200.0;  /* 1/14! */
    cp = cp * x2 + 1.0 / 479001600.0;    /* 1/12! */
    cp = cp * x2 - 1.0 / 3628800.0;      /* 1/10! */
    cp = cp * x2 + 1.0 / 40320.0;
    cp = cp * x2 - 1.0 / 720.0;
    cp = cp * x2 + 1.0 / 24.0;
    cp = cp * x2 - 0.5;
    double cs = 1.0 + x2 * cp;
    /* cos(q pi/2 + x), sin(q pi/2 + x) for q = 0..3: (c, s), (-s, c), (-c, -s), (s, -c):
     * odd q swaps (a bit mask select), the signs are flipped with the sign bit */
    uint64_t swap = (uint64_t)0 - (q & 1);
    uint64_t cb = double_bits(cs), sb = double_bits(sn);
    uint64_t c1 = ((sb & swap) | (cb & ~swap)) ^ (((q + 1) & 2) << 62);
    uint64_t s1 = ((cb & swap) | (sb & ~swap)) ^ ((q & 2) << 62);
    zc[l] = (float)(r[l] * bits_double(c1));
    zs[l] = (float)(r[l] * bits_double(s1));
  }
}

/* What a fill needs to know about its tensor. */
typedef struct fill_ctx {
  df_rng_dist dist;
  uint32_t k0, k1, draw;
  uint64_t first_row;
  int64_t rowlen, nb; /* elements and Philox blocks per row */
  int64_t nblocks;    /* rows * nb */
  float *data;
  int contiguous;
  int64_t rstride, sh[3], st[3]; /* strided case: row stride, row dims padded to 3 */
} fill_ctx;

/* Position of the next element to write in a strided tensor. */
typedef struct cursor {
  int64_t r, j, a, b, c;
} cursor;

static inline void cursor_write(const fill_ctx *cx, cursor *p, float v) {
  cx->data[p->r * cx->rstride + p->a * cx->st[0] + p->b * cx->st[1] + p->c * cx->st[2]] = v;
  if (++p->j == cx->rowlen) {
    p->r++;
    p->j = p->a = p->b = p->c = 0;
  } else if (++p->c == cx->sh[2]) {
    p->c = 0;
    if (++p->b == cx->sh[1]) {
      p->b = 0;
      p->a++;
    }
  }
}

/* Fill blocks [t0, t1) (in row-major order over (row, block)) of the tensor. */
RNG_INLINE void fill_unit(const fill_ctx *cx, int64_t t0, int64_t t1,
                          void (*philox_n)(uint64_t *, uint64_t *, uint32_t, uint32_t),
                          void (*sqrt_n)(double *, int)) {
  int64_t row = t0 / cx->nb, blk = t0 % cx->nb;
  float *dst = NULL;
  cursor cur = {row, 4 * blk, 0, 0, 0};
  if (cx->contiguous) {
    dst = cx->data + row * cx->rowlen + 4 * blk;
  } else {
    int64_t plane = cx->sh[1] * cx->sh[2];
    cur.a = cur.j / plane;
    cur.b = cur.j % plane / cx->sh[2];
    cur.c = cur.j % cx->sh[2];
  }
  uint64_t a[2 * LANES], b[2 * LANES];
  int cnt[LANES];
  float p[2 * LANES], q[2 * LANES];
  for (int64_t t = t0; t < t1; t += LANES) {
    int n = t1 - t < LANES ? (int)(t1 - t) : LANES;
    int full;
    uint64_t grow = cx->first_row + (uint64_t)row;
    if (n == LANES && blk + LANES <= cx->nb) {
      /* the common case: LANES consecutive blocks of one row */
      for (int l = 0; l < LANES; l++) {
        a[l] = (uint32_t)(blk + l);
        b[l] = cx->draw;
        a[LANES + l] = (uint32_t)grow;
        b[LANES + l] = (uint32_t)(grow >> 32);
      }
      full = 4 * (blk + LANES) <= cx->rowlen;
      for (int l = 0; l < LANES; l++) cnt[l] = 4;
      if (!full) cnt[LANES - 1] = (int)(cx->rowlen - 4 * (blk + LANES - 1));
      blk += LANES;
      if (blk == cx->nb) {
        blk = 0;
        row++;
      }
    } else {
      full = n == LANES;
      for (int l = 0; l < LANES; l++) {
        /* lanes past n compute a copy of the last block and are not written */
        grow = cx->first_row + (uint64_t)row;
        a[l] = (uint32_t)blk;
        b[l] = cx->draw;
        a[LANES + l] = (uint32_t)grow;
        b[LANES + l] = (uint32_t)(grow >> 32);
        int64_t left = cx->rowlen - 4 * blk;
        cnt[l] = left < 4 ? (int)left : 4;
        full &= left >= 4;
        if (l < n - 1 && ++blk == cx->nb) {
          blk = 0;
          row++;
        }
      }
      if (++blk == cx->nb) { /* step past the last block used */
        blk = 0;
        row++;
      }
    }
    philox_n(a, b, cx->k0, cx->k1);
    if (cx->dist == DF_RNG_UNIFORM) {
      /* the top 24 bits of each word times 2^-24 (exact in float32, in [0, 1 - 2^-24]) */
      for (int l = 0; l < 2 * LANES; l++) {
        p[l] = (float)((bits_double(UINT64_C(0x4330000000000000) | (a[l] >> 8)) - TWO52) * 0x1p-24);
        q[l] = (float)((bits_double(UINT64_C(0x4330000000000000) | (b[l] >> 8)) - TWO52) * 0x1p-24);
      }
    } else {
      box_muller_lanes(a, b, p, q, sqrt_n);
    }
    /* block l holds p[l], q[l], p[LANES + l], q[LANES + l] */
    if (dst && full) {
      for (int l = 0; l < LANES; l++) {
        dst[4 * l] = p[l];
        dst[4 * l + 1] = q[l];
        dst[4 * l + 2] = p[LANES + l];
        dst[4 * l + 3] = q[LANES + l];
      }
      dst += 4 * LANES;
    } else {
      for (int l = 0; l < n; l++) {
        float v[4] = {p[l], q[l], p[LANES + l], q[LANES + l]};
        for (int i = 0; i < cnt[l]; i++) {
          if (dst)
            *dst++ = v[i];
          else
            cursor_write(cx, &cur, v[i]);
        }
      }
    }
  }
}

typedef void (*unit_fn)(const fill_ctx *, int64_t, int64_t);

static void unit_generic(const fill_ctx *cx, int64_t t0, int64_t t1) {
#if RNG_X86
  fill_unit(cx, t0, t1, philox_lanes_sse2, sqrt_sse2);
#else
  fill_unit(cx, t0, t1, philox_lanes_c, sqrt_c);
#endif
}

#if RNG_X86
__attribute__((target("avx2"))) static void unit_avx2(const fill_ctx *cx, int64_t t0,
                                                      int64_t t1) {
  fill_unit(cx, t0, t1, philox_lanes_avx2, sqrt_avx2);
}
#ifdef __clang__
#define RNG_AVX512 "avx512f"
#else
#define RNG_AVX512 "avx512f,prefer-vector-width=512" /* GCC would use 256-bit vectors */
#endif
__attribute__((target(RNG_AVX512))) static void unit_avx512(
    const fill_ctx *cx, int64_t t0, int64_t t1) {
  fill_unit(cx, t0, t1, philox_lanes_avx512, sqrt_avx512);
}
#endif

/* The variant to run: the best the CPU supports, or the one DIFFUSE_RNG_ISA names (a variant
 * the CPU lacks falls back to the best available below it). */
static const char *pick_variant(unit_fn *fn) {
  const char *want = getenv("DIFFUSE_RNG_ISA");
  int level = 2; /* 0 generic, 1 avx2, 2 avx512f */
  if (want && *want) {
    if (strcmp(want, "generic") == 0)
      level = 0;
    else if (strcmp(want, "avx2") == 0)
      level = 1;
    else if (strcmp(want, "avx512f") == 0)
      level = 2;
    else
      return "DIFFUSE_RNG_ISA must be generic, avx2 or avx512f";
  }
  *fn = unit_generic;
#if RNG_X86
  __builtin_cpu_init();
  if (level >= 2 && __builtin_cpu_supports("avx512f"))
    *fn = unit_avx512;
  else if (level >= 1 && __builtin_cpu_supports("avx2"))
    *fn = unit_avx2;
#else
  (void)level;
#endif
  return NULL;
}

const char *df_rng_fill(df_tensor *t, df_rng_dist dist, uint64_t seed, uint64_t first_row,
                        uint64_t draw) {
  if (dist != DF_RNG_NORMAL && dist != DF_RNG_UNIFORM) return "unknown distribution";
  if (draw > DF_RNG_MAX_DRAW) return "draw number must be below 2^32";
  if (t->ndim < 1 || t->ndim > DF_MAXDIM) return "tensor must have 1 to 4 dimensions";
  unit_fn fn;
  const char *err = pick_variant(&fn);
  if (err) return err;
  int64_t numel = df_numel(t);
  if (numel == 0) return NULL;
  int64_t rows = t->shape[0];
  int64_t rowlen = numel / rows;
  if ((uint64_t)rowlen > ((uint64_t)1 << 34)) return "rows longer than 2^34 elements are not supported";
  if (first_row > UINT64_MAX - (uint64_t)rows) return "row index overflows 64 bits";

  fill_ctx cx;
  memset(&cx, 0, sizeof cx);
  cx.dist = dist;
  cx.k0 = (uint32_t)seed;
  cx.k1 = (uint32_t)(seed >> 32);
  cx.draw = (uint32_t)draw;
  cx.first_row = first_row;
  cx.rowlen = rowlen;
  cx.nb = (rowlen + 3) / 4;
  cx.nblocks = rows * cx.nb;
  cx.data = t->data;
  cx.contiguous = df_is_contiguous(t);
  cx.rstride = t->stride[0];
  /* The row's own dimensions, padded in front to 3 with size-1 dims. */
  for (int d = 0; d < 3; d++) {
    cx.sh[d] = 1;
    cx.st[d] = 0;
  }
  int inner = t->ndim - 1;
  for (int d = 0; d < inner; d++) {
    cx.sh[3 - inner + d] = t->shape[1 + d];
    cx.st[3 - inner + d] = t->stride[1 + d];
  }
  int64_t units = (cx.nblocks + UNIT_BLOCKS - 1) / UNIT_BLOCKS;

#pragma omp parallel for schedule(static) if (numel >= RNG_PARALLEL_MIN)
  for (int64_t u = 0; u < units; u++) {
    int64_t t0 = u * UNIT_BLOCKS;
    int64_t t1 = t0 + UNIT_BLOCKS < cx.nblocks ? t0 + UNIT_BLOCKS : cx.nblocks;
    fn(&cx, t0, t1);
  }
  return NULL;
}
