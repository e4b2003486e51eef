/* Reductions over strided float32 views.
 *
 * Every reduction is seen as [outer O, reduced n, inner I] with one stride each (dimensions
 * before and after the reduced one are merged when the layout allows; otherwise the caller
 * passes a contiguous copy).  Two loop orders:
 *   - row mode: each output element walks its own run of n values (used when the reduced
 *     dimension is the one with the smallest stride, e.g. the last dim of a dense tensor, or
 *     for a whole-tensor reduction);
 *   - column mode: a block of up to COLBLOCK neighbouring outputs is accumulated row after
 *     row in local double buffers, so memory is read in contiguous runs (e.g. dim 1 of a
 *     dense (N, D) tensor).
 * Long single runs are split into fixed blocks reduced in parallel and combined in block
 * order, so results do not depend on the number of threads. */
#include "reduce.h"

#include <math.h>
#include <stdlib.h>

enum { K_SUM, K_SUMABS, K_SUMSQ, K_DEV, K_EXP, K_POW, K_MAX, K_MIN, K_MAXABS };

typedef struct {
  double a, b;  /* sums (b only for K_DEV), or the extremum */
  int64_t idx;  /* K_MAX / K_MIN: 0-based position in the run */
} pres;

#define BLOCK ((int64_t)1 << 16)   /* elements per parallel block of a long run */
#define NBLK 256                   /* blocks combined per round (stack array) */
#define PAR_MIN ((int64_t)1 << 17) /* below this many elements, stay on one thread */
#define COLBLOCK 1024              /* outputs per column-mode task (whole 4 KB rows stream) */
#define SHORT_RUN 16               /* runs shorter than this go column mode anyway */

/* Sums with eight independent double accumulators on unit stride (so the compiler can keep
 * several additions in flight and vectorise), one accumulator otherwise. */
#define DEF_SUM(name, EXPR)                                                                 \
  static double name(const float *x, int64_t n, int64_t s, double c, double p) {            \
    double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0}, r = 0;                                        \
    int64_t i = 0;                                                                          \
    if (s == 1)                                                                             \
      for (; i + 8 <= n; i += 8)                                                            \
        for (int j = 0; j < 8; j++) {                                                       \
          double v = x[i + j];                                                              \
          acc[j] += (EXPR);                                                                 \
        }                                                                                   \
    for (; i < n; i++) {                                                                    \
      double v = x[i * s];                                                                  \
      r += (EXPR);                                                                          \
    }                                                                                       \
    return (((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))) + r; \
  }

DEF_SUM(sum_plain, v)
DEF_SUM(sum_abs, fabs(v))
DEF_SUM(sum_sq, v * v)
DEF_SUM(sum_dev, v - c)
DEF_SUM(sum_devsq, (v - c) * (v - c))
DEF_SUM(sum_exp, exp(v - c))
DEF_SUM(sum_pow, pow(fabs(v) / c, p))

/* First extremum of a non-empty run; the first NaN wins outright. */
static pres extremum(const float *x, int64_t n, int64_t s, int want_max) {
  pres r = {x[0], 0, 0};
  float best = x[0];
  int64_t bi = 0;
  if (best != best) return r;
  if (want_max) {
    for (int64_t i = 1; i < n; i++) {
      float v = x[i * s];
      if (v > best) { best = v; bi = i; }
      else if (v != v) { r.a = v; r.idx = i; return r; }
    }
  } else {
    for (int64_t i = 1; i < n; i++) {
      float v = x[i * s];
      if (v < best) { best = v; bi = i; }
      else if (v != v) { r.a = v; r.idx = i; return r; }
    }
  }
  r.a = best;
  r.idx = bi;
  return r;
}

/* Largest |x|, NaN if any element is NaN; 0 for an empty run. */
static double max_abs(const float *x, int64_t n, int64_t s) {
  float m = 0;
  int nan = 0;
  for (int64_t i = 0; i < n; i++) {
    float a = fabsf(x[i * s]);
    m = a > m ? a : m;
    nan |= a != a;
  }
  return nan ? NAN : (double)m;
}

static pres run_pass(const float *x, int64_t n, int64_t s, int kind, double c, double p) {
  pres r = {0, 0, -1};
  switch (kind) {
  case K_SUM: r.a = sum_plain(x, n, s, c, p); break;
  case K_SUMABS: r.a = sum_abs(x, n, s, c, p); break;
  case K_SUMSQ: r.a = sum_sq(x, n, s, c, p); break;
  case K_DEV:
    r.a = sum_devsq(x, n, s, c, p);
    r.b = sum_dev(x, n, s, c, p);
    break;
  case K_EXP: r.a = sum_exp(x, n, s, c, p); break;
  case K_POW: r.a = sum_pow(x, n, s, c, p); break;
  case K_MAX: r = extremum(x, n, s, 1); break;
  case K_MIN: r = extremum(x, n, s, 0); break;
  case K_MAXABS: r.a = max_abs(x, n, s); break;
  default: break;
  }
  return r;
}

/* Fold block result b (whose indices start at offset) into acc, in block order. */
static void combine(int kind, pres *acc, pres b, int64_t offset, int first) {
  if (first) {
    *acc = b;
    if (b.idx >= 0) acc->idx = b.idx + offset;
    return;
  }
  switch (kind) {
  case K_MAX:
  case K_MIN:
    if (acc->a != acc->a) return;
    if (b.a != b.a || (kind == K_MAX ? b.a > acc->a : b.a < acc->a)) {
      acc->a = b.a;
      acc->idx = b.idx + offset;
    }
    break;
  case K_MAXABS:
    if (acc->a != acc->a) return;
    if (b.a != b.a || b.a > acc->a) acc->a = b.a;
    break;
  default:
    acc->a += b.a;
    acc->b += b.b;
    break;
  }
}

/* One pass over a non-empty run; long runs go block-parallel when allowed. */
static pres pass(const float *x, int64_t n, int64_t s, int kind, double c, double p, int parallel) {
  if (!parallel || n < PAR_MIN) return run_pass(x, n, s, kind, c, p);
  pres res = {0, 0, -1};
  int first = 1;
  for (int64_t base = 0; base < n; base += BLOCK * NBLK) {
    int64_t len = n - base < BLOCK * NBLK ? n - base : BLOCK * NBLK;
    int nb = (int)((len + BLOCK - 1) / BLOCK);
    pres part[NBLK];
#pragma omp parallel for schedule(static)
    for (int b = 0; b < nb; b++) {
      int64_t lo = (int64_t)b * BLOCK, m = len - lo < BLOCK ? len - lo : BLOCK;
      part[b] = run_pass(x + (base + lo) * s, m, s, kind, c, p);
    }
    for (int b = 0; b < nb; b++) {
      combine(kind, &res, part[b], base + (int64_t)b * BLOCK, first);
      first = 0;
    }
  }
  return res;
}

static double finish_var(double ss, double dev, int64_t n, double correction, int want_std) {
  double q = ss - dev * dev / (double)n; /* corrected two-pass: removes the mean's rounding */
  if (q < 0) q = 0;
  double den = (double)n - correction;
  if (den < 0) den = 0;
  double v = q / den;
  return want_std ? sqrt(v) : v;
}

/* Reduce one run of n values with stride s. */
static double reduce_run(const float *x, int64_t n, int64_t s, const df_reduce_spec *sp,
                         int parallel, int64_t *index) {
  if (index) *index = -1;
  switch (sp->op) {
  case DF_RED_SUM:
    return n ? pass(x, n, s, K_SUM, 0, 0, parallel).a : 0.0;
  case DF_RED_MEAN:
    return n ? pass(x, n, s, K_SUM, 0, 0, parallel).a / (double)n : NAN;
  case DF_RED_MIN:
  case DF_RED_MAX: {
    if (!n) return NAN;
    pres r = pass(x, n, s, sp->op == DF_RED_MAX ? K_MAX : K_MIN, 0, 0, parallel);
    if (index) *index = r.idx;
    return r.a;
  }
  case DF_RED_NORM: {
    double p = sp->p;
    if (!n) return 0.0;
    if (p == 1) return pass(x, n, s, K_SUMABS, 0, 0, parallel).a;
    if (p == 2) return sqrt(pass(x, n, s, K_SUMSQ, 0, 0, parallel).a);
    double m = pass(x, n, s, K_MAXABS, 0, 0, parallel).a;
    if (isinf(p) || m == 0 || !isfinite(m)) return m;
    /* scale by the largest magnitude so |x|^p neither overflows nor underflows */
    return m * pow(pass(x, n, s, K_POW, m, p, parallel).a, 1.0 / p);
  }
  case DF_RED_LOGSUMEXP: {
    if (!n) return -INFINITY;
    double m = pass(x, n, s, K_MAX, 0, 0, parallel).a;
    if (!isfinite(m)) return m; /* NaN, all -inf, or a +inf */
    return m + log(pass(x, n, s, K_EXP, m, 0, parallel).a);
  }
  case DF_RED_VAR:
  case DF_RED_STD: {
    if (!n) return NAN;
    double mean = pass(x, n, s, K_SUM, 0, 0, parallel).a / (double)n;
    pres d = pass(x, n, s, K_DEV, mean, 0, parallel);
    return finish_var(d.a, d.b, n, sp->correction, sp->op == DF_RED_STD);
  }
  }
  return NAN;
}

/* Column mode: m neighbouring outputs (element j at x + j*si), each reducing n values spaced
 * sn apart; rows are read in order.  Result j goes to out[j * os]. */
#define COLS(K0, BODY)                                                                      \
  do {                                                                                      \
    for (int64_t k = (K0); k < n; k++) {                                                    \
      const float *row = x + k * sn;                                                        \
      if (si == 1)                                                                          \
        for (int64_t j = 0; j < m; j++) { double v = row[j]; BODY; }                        \
      else                                                                                  \
        for (int64_t j = 0; j < m; j++) { double v = row[j * si]; BODY; }                   \
    }                                                                                       \
  } while (0)

static void reduce_cols(const float *x, int64_t n, int64_t sn, int64_t m, int64_t si,
                        const df_reduce_spec *sp, float *out, float *outi, int64_t os) {
  double acc[COLBLOCK], acc2[COLBLOCK], cen[COLBLOCK];
  double pos[COLBLOCK]; /* index of the extremum so far */
  double dn = (double)n;
  for (int64_t j = 0; j < m; j++) { acc[j] = 0; acc2[j] = 0; cen[j] = 0; pos[j] = -1; }
  switch (sp->op) {
  case DF_RED_SUM:
  case DF_RED_MEAN:
    COLS(0, acc[j] += v);
    if (sp->op == DF_RED_MEAN)
      for (int64_t j = 0; j < m; j++) acc[j] = n ? acc[j] / dn : NAN;
    break;
  case DF_RED_MAX:
  case DF_RED_MIN:
    if (!n) {
      for (int64_t j = 0; j < m; j++) acc[j] = NAN;
      break;
    }
    for (int64_t j = 0; j < m; j++) { acc[j] = x[j * si]; pos[j] = 0; }
    if (sp->op == DF_RED_MAX)
      COLS(1, if (v > acc[j] || (v != v && acc[j] == acc[j])) { acc[j] = v; pos[j] = (double)k; });
    else
      COLS(1, if (v < acc[j] || (v != v && acc[j] == acc[j])) { acc[j] = v; pos[j] = (double)k; });
    break;
  case DF_RED_NORM: {
    double p = sp->p;
    if (p == 1) {
      COLS(0, acc[j] += fabs(v));
    } else if (p == 2) {
      COLS(0, acc[j] += v * v);
      for (int64_t j = 0; j < m; j++) acc[j] = sqrt(acc[j]);
    } else {
      COLS(0, double a = fabs(v); if (a > cen[j] || a != a) cen[j] = a);
      if (!isinf(p)) {
        COLS(0, acc[j] += pow(fabs(v) / cen[j], p));
        for (int64_t j = 0; j < m; j++)
          if (cen[j] != 0 && isfinite(cen[j])) cen[j] *= pow(acc[j], 1.0 / p);
      }
      for (int64_t j = 0; j < m; j++) acc[j] = cen[j];
    }
    break;
  }
  case DF_RED_LOGSUMEXP:
    for (int64_t j = 0; j < m; j++) cen[j] = -INFINITY;
    COLS(0, if (v > cen[j] || v != v) cen[j] = v);
    COLS(0, acc[j] += exp(v - cen[j]));
    for (int64_t j = 0; j < m; j++) acc[j] = isfinite(cen[j]) ? cen[j] + log(acc[j]) : cen[j];
    break;
  case DF_RED_VAR:
  case DF_RED_STD:
    if (!n) {
      for (int64_t j = 0; j < m; j++) acc[j] = NAN;
      break;
    }
    COLS(0, acc[j] += v);
    for (int64_t j = 0; j < m; j++) { cen[j] = acc[j] / dn; acc[j] = 0; }
    COLS(0, double d = v - cen[j]; acc[j] += d * d; acc2[j] += d);
    for (int64_t j = 0; j < m; j++)
      acc[j] = finish_var(acc[j], acc2[j], n, sp->correction, sp->op == DF_RED_STD);
    break;
  }
  if (out)
    for (int64_t j = 0; j < m; j++) out[j * os] = (float)acc[j];
  if (outi)
    for (int64_t j = 0; j < m; j++) outi[j * os] = (float)pos[j];
}

/* Merge dimensions [a, b) of t into one run: *size elements, *stride apart.  Returns -1 when
 * the layout does not allow it. */
static int merge_dims(const df_tensor *t, int a, int b, int64_t *size, int64_t *stride) {
  int64_t sz = 1, st = 0;
  int inner = -1;
  for (int i = a; i < b; i++) sz *= t->shape[i];
  *size = sz;
  *stride = 0;
  if (sz == 0) return 0;
  for (int i = b - 1; i >= a; i--) {
    if (t->shape[i] == 1) continue;
    if (inner < 0) st = t->stride[i];
    else if (t->stride[i] != t->stride[inner] * t->shape[inner]) return -1;
    inner = i;
  }
  *stride = st;
  return 0;
}

int df_reduce_all(const df_tensor *t, const df_reduce_spec *s, double *value, int64_t *index) {
  int64_t n, st;
  if (merge_dims(t, 0, t->ndim, &n, &st) != 0) {
    /* Order does not matter except for the position of an extremum: try the dimensions
     * sorted by decreasing stride (a transposed tensor is one run again). */
    if (s->op == DF_RED_MIN || s->op == DF_RED_MAX) return -1;
    df_tensor p = *t;
    for (int i = 1; i < p.ndim; i++)
      for (int j = i; j > 0 && llabs(p.stride[j]) > llabs(p.stride[j - 1]); j--) {
        int64_t a = p.stride[j], b = p.shape[j];
        p.stride[j] = p.stride[j - 1]; p.shape[j] = p.shape[j - 1];
        p.stride[j - 1] = a; p.shape[j - 1] = b;
      }
    if (merge_dims(&p, 0, p.ndim, &n, &st) != 0) return -1;
  }
  *value = reduce_run(t->data, n, st, s, 1, index);
  return 0;
}

int df_reduce_dim(const df_tensor *t, int dim, const df_reduce_spec *s, float *values,
                  float *indices) {
  int64_t O, so, I, si, n = t->shape[dim], sn = t->stride[dim];
  if (merge_dims(t, 0, dim, &O, &so) != 0 || merge_dims(t, dim + 1, t->ndim, &I, &si) != 0)
    return -1;
  if (s->op != DF_RED_MIN && s->op != DF_RED_MAX) indices = NULL;
  int64_t nout = O * I;
  if (nout == 0) return 0;
  const float *x = t->data;
  int big = nout * n >= PAR_MIN;
  /* Output q = o*I + j reads x + o*so + j*si + k*sn.  Column mode runs along whichever of
   * o, j has the smaller stride, when that beats walking each run (or runs are short). */
  int64_t aso = O > 1 ? llabs(so) : INT64_MAX, asi = I > 1 ? llabs(si) : INT64_MAX;
  int64_t acol = aso < asi ? aso : asi;
  if (nout > 1 && (acol < llabs(sn) || n < SHORT_RUN)) {
    int col_is_o = aso < asi;
    int64_t ncol = col_is_o ? O : I, scol = col_is_o ? so : si, ocol = col_is_o ? I : 1;
    int64_t nrest = col_is_o ? I : O, srest = col_is_o ? si : so, orest = col_is_o ? 1 : I;
    int64_t nb = (ncol + COLBLOCK - 1) / COLBLOCK;
#pragma omp parallel for schedule(static) if (big)
    for (int64_t task = 0; task < nrest * nb; task++) {
      int64_t r = task / nb, c0 = (task % nb) * COLBLOCK;
      int64_t m = ncol - c0 < COLBLOCK ? ncol - c0 : COLBLOCK;
      int64_t q = r * orest + c0 * ocol;
      reduce_cols(x + r * srest + c0 * scol, n, sn, m, scol, s, values ? values + q : NULL,
                  indices ? indices + q : NULL, ocol);
    }
  } else if (nout == 1) {
    int64_t idx;
    double v = reduce_run(x, n, sn, s, 1, &idx);
    if (values) values[0] = (float)v;
    if (indices) indices[0] = (float)idx;
  } else {
#pragma omp parallel for schedule(static) if (big)
    for (int64_t q = 0; q < nout; q++) {
      int64_t idx;
      double v = reduce_run(x + (q / I) * so + (q % I) * si, n, sn, s, 0, &idx);
      if (values) values[q] = (float)v;
      if (indices) indices[q] = (float)idx;
    }
  }
  return 0;
}
