/* Elementwise kernels over strided float32 views (see ops.h).
 *
 * Every kernel first reduces its views to a canonical 4-d layout: size-1 dimensions are
 * dropped and neighbouring dimensions that are contiguous in every view are merged, so a
 * dense tensor becomes one long row and a row broadcast over a matrix becomes rows with a
 * stride-0 outer dimension.  The work is then a list of tasks (a chunk of one row each);
 * the inner loops have stride-1 specialisations the compiler vectorises. */
#include "ops.h"

#include <math.h>
#include <stdlib.h>
#if defined(__SSE__)
#include <xmmintrin.h>
#define DF_HAVE_STREAM 1
#endif

/* Elements per task: big enough to amortise the per-task offset arithmetic, small enough
 * to split a single long row between threads. */
#define CHUNK 16384
/* Every kernel runs on the calling thread.  Measured on the 2-core development machine
 * (4M floats): for memory-bound work (arithmetic, lincomb) a second OpenMP thread gained
 * about 25% when the machine was idle; for exp, sigmoid, tanh and pow it gained nothing or
 * lost 1.1-1.7x while the other core was busy, and memory-bound ones lost 3-8x, the second
 * thread waiting for a scheduler time slice.  Threads may come back as an opt-in. */

/* Kernels that are bound by arithmetic rather than memory get AVX2 and AVX-512 versions
 * chosen at load time (GCC function multi-versioning); the build itself stays baseline
 * x86-64.  Without contraction (-std=c99 turns it off) every version rounds alike. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define DF_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define DF_CLONES
#endif

typedef struct {
  int64_t sh[4]; /* canonical shape; sh[3] is the contiguous-most row */
  int64_t rows;  /* sh[0] * sh[1] * sh[2] */
  int64_t nchunk; /* chunks per row */
} layout;

static const df_tensor *view_k(const df_tensor *out, const df_tensor *in, int k) {
  return k ? &in[k - 1] : out;
}

/* Canonical layout of out and its nin inputs (all of out's shape); st[k] gets view k's
 * strides (view 0 is out). */
static void layout_of(const df_tensor *out, const df_tensor *in, int nin, layout *lay,
                      int64_t (*st)[4]) {
  int nt = nin + 1, gi = 4;
  for (int g = 0; g < 4; g++) {
    lay->sh[g] = 1;
    for (int k = 0; k < nt; k++) st[k][g] = 0;
  }
  for (int d = out->ndim - 1; d >= 0; d--) {
    int64_t n = out->shape[d];
    if (n == 1) continue;
    int merge = gi < 4;
    for (int k = 0; merge && k < nt; k++)
      if (view_k(out, in, k)->stride[d] != st[k][gi] * lay->sh[gi]) merge = 0;
    if (merge) {
      lay->sh[gi] *= n;
    } else {
      gi--; /* at most one group per dimension, so gi stays >= 0 */
      lay->sh[gi] = n;
      for (int k = 0; k < nt; k++) st[k][gi] = view_k(out, in, k)->stride[d];
    }
  }
  lay->rows = lay->sh[0] * lay->sh[1] * lay->sh[2];
  lay->nchunk = (lay->sh[3] + CHUNK - 1) / CHUNK;
}

static int64_t row_offset(const layout *lay, const int64_t *st, int64_t r) {
  int64_t i2 = r % lay->sh[2];
  r /= lay->sh[2];
  int64_t i1 = r % lay->sh[1], i0 = r / lay->sh[1];
  return i0 * st[0] + i1 * st[1] + i2 * st[2];
}

/* Task t -> offset of its first element in view k's strides, and its length. */
static int64_t task_offset(const layout *lay, const int64_t *st, int64_t t) {
  int64_t r = t / lay->nchunk, c = t % lay->nchunk;
  return row_offset(lay, st, r) + c * CHUNK * st[3];
}

static int64_t task_len(const layout *lay, int64_t t) {
  int64_t c = t % lay->nchunk, rest = lay->sh[3] - c * CHUNK;
  return rest < CHUNK ? rest : CHUNK;
}

/* ---- binary ---- */

static inline float fmax_nan(float x, float y) { return (x != x || x > y) ? x : y; }
static inline float fmin_nan(float x, float y) { return (x != x || x < y) ? x : y; }

/* The loop over one chunk for expression E of x (from a) and y (from b). */
#define BIN_LOOPS(E)                                                             \
  do {                                                                           \
    if (so == 1 && sa == 1 && sb == 1) {                                         \
      for (int64_t i = 0; i < n; i++) { float x = a[i], y = b[i]; o[i] = (E); }  \
    } else if (so == 1 && sa == 1 && sb == 0) {                                  \
      const float y = b[0];                                                      \
      for (int64_t i = 0; i < n; i++) { float x = a[i]; o[i] = (E); }            \
    } else if (so == 1 && sa == 0 && sb == 1) {                                  \
      const float x = a[0];                                                      \
      for (int64_t i = 0; i < n; i++) { float y = b[i]; o[i] = (E); }            \
    } else {                                                                     \
      for (int64_t i = 0; i < n; i++) {                                          \
        float x = a[i * sa], y = b[i * sb];                                      \
        o[i * so] = (E);                                                         \
      }                                                                          \
    }                                                                            \
  } while (0)

static void bin_chunk(df_binop op, int64_t n, float *o, int64_t so, const float *a, int64_t sa,
                      const float *b, int64_t sb, float alpha) {
  switch (op) {
    case DF_OP_ADD: if (alpha == 1.0f) BIN_LOOPS(x + y); else BIN_LOOPS(x + alpha * y); break;
    case DF_OP_SUB: if (alpha == 1.0f) BIN_LOOPS(x - y); else BIN_LOOPS(x - alpha * y); break;
    case DF_OP_MUL: BIN_LOOPS(x * y); break;
    case DF_OP_DIV: BIN_LOOPS(x / y); break;
    case DF_OP_POW: BIN_LOOPS(powf(x, y)); break;
    case DF_OP_MAX: BIN_LOOPS(fmax_nan(x, y)); break;
    case DF_OP_MIN: BIN_LOOPS(fmin_nan(x, y)); break;
  }
}

void df_binary(df_tensor *out, const df_tensor *a, const df_tensor *b, df_binop op, float alpha) {
  int64_t numel = df_numel(out);
  if (numel == 0) return;
  df_tensor in[2] = {*a, *b};
  layout lay;
  int64_t st[3][4];
  layout_of(out, in, 2, &lay, st);
  int64_t ntask = lay.rows * lay.nchunk;
  for (int64_t t = 0; t < ntask; t++)
    bin_chunk(op, task_len(&lay, t), out->data + task_offset(&lay, st[0], t), st[0][3],
              a->data + task_offset(&lay, st[1], t), st[1][3],
              b->data + task_offset(&lay, st[2], t), st[2][3], alpha);
}

/* ---- unary ---- */

/* 1/(1+e^-|x|) never overflows; for x < 0 use e^x/(1+e^x) = e^-|x| * that. */
static inline float sigmoidf(float x) {
  float e = expf(-fabsf(x));
  float r = 1.0f / (1.0f + e);
  return x >= 0.0f ? r : e * r;
}

static inline float clampf(float x, float lo, float hi) {
  return x < lo ? lo : (x > hi ? hi : x);
}

#define UN_LOOPS(E)                                                              \
  do {                                                                           \
    if (so == 1 && sa == 1) {                                                    \
      for (int64_t i = 0; i < n; i++) { float x = a[i]; o[i] = (E); }            \
    } else {                                                                     \
      for (int64_t i = 0; i < n; i++) { float x = a[i * sa]; o[i * so] = (E); }  \
    }                                                                            \
  } while (0)

static void un_chunk(df_unop op, int64_t n, float *o, int64_t so, const float *a, int64_t sa,
                     float p0, float p1) {
  switch (op) {
    case DF_OP_NEG: UN_LOOPS(-x); break;
    case DF_OP_EXP: UN_LOOPS(expf(x)); break;
    case DF_OP_LOG: UN_LOOPS(logf(x)); break;
    case DF_OP_SQRT: UN_LOOPS(sqrtf(x)); break;
    case DF_OP_ABS: UN_LOOPS(fabsf(x)); break;
    case DF_OP_TANH: UN_LOOPS(tanhf(x)); break;
    case DF_OP_SIGMOID: UN_LOOPS(sigmoidf(x)); break;
    case DF_OP_SILU: UN_LOOPS(x * sigmoidf(x)); break;
    case DF_OP_SQUARE: UN_LOOPS(x * x); break;
    case DF_OP_CLAMP: UN_LOOPS(clampf(x, p0, p1)); break;
  }
}

void df_unary(df_tensor *out, const df_tensor *a, df_unop op, float p0, float p1) {
  int64_t numel = df_numel(out);
  if (numel == 0) return;
  layout lay;
  int64_t st[2][4];
  layout_of(out, a, 1, &lay, st);
  int64_t ntask = lay.rows * lay.nchunk;
  for (int64_t t = 0; t < ntask; t++)
    un_chunk(op, task_len(&lay, t), out->data + task_offset(&lay, st[0], t), st[0][3],
             a->data + task_offset(&lay, st[1], t), st[1][3], p0, p1);
}

/* ---- fused linear combination ---- */

/* Accumulator block: small enough to stay in L1 next to the streams being read. */
#define LC_BLOCK 512

/* acc[i] (+)= sum of up to 4 terms c[j]*p[j][i*s[j]] over one block; `first` stores
 * instead of adding.  Grouping four terms per pass keeps acc traffic low; the stride-1 case
 * is the vectorised fast path. */
DF_CLONES static void lc_group(double *acc, int64_t m, int first, int g, const float *const *p,
                     const int64_t *s, const double *c) {
  const float *p0 = p[0], *p1 = p[g > 1 ? 1 : 0], *p2 = p[g > 2 ? 2 : 0], *p3 = p[g > 3 ? 3 : 0];
  const double c0 = c[0], c1 = g > 1 ? c[1] : 0, c2 = g > 2 ? c[2] : 0, c3 = g > 3 ? c[3] : 0;
  int unit = 1;
  for (int j = 0; j < g; j++) unit &= s[j] == 1;
  if (!unit) { /* same summation order as the fast path below */
    for (int64_t i = 0; i < m; i++) {
      double v = c0 * (double)p0[i * s[0]];
      if (g > 1) v += c1 * (double)p1[i * s[1]];
      if (g > 2) v += c2 * (double)p2[i * s[2]];
      if (g > 3) v += c3 * (double)p3[i * s[3]];
      acc[i] = first ? v : acc[i] + v;
    }
    return;
  }
#define LC_CASES(OP)                                                                         \
  switch (g) {                                                                               \
    case 1:                                                                                  \
      for (int64_t i = 0; i < m; i++) acc[i] OP c0 * (double)p0[i];                          \
      break;                                                                                 \
    case 2:                                                                                  \
      for (int64_t i = 0; i < m; i++) acc[i] OP c0 * (double)p0[i] + c1 * (double)p1[i];     \
      break;                                                                                 \
    case 3:                                                                                  \
      for (int64_t i = 0; i < m; i++)                                                        \
        acc[i] OP c0 * (double)p0[i] + c1 * (double)p1[i] + c2 * (double)p2[i];              \
      break;                                                                                 \
    default:                                                                                 \
      for (int64_t i = 0; i < m; i++)                                                        \
        acc[i] OP c0 * (double)p0[i] + c1 * (double)p1[i] + c2 * (double)p2[i]               \
                  + c3 * (double)p3[i];                                                      \
      break;                                                                                 \
  }
  if (first) LC_CASES(=) else LC_CASES(+=)
#undef LC_CASES
}

/* One chunk: for each block, acc = sum_k c[k]*ts[k], then store.  Every input element of a
 * block is read before any output element of it is written, so out may be an input. */
DF_CLONES static void lc_chunk(int64_t n, float *o, int64_t so, const df_tensor *ts, const double *c,
                     int nt, const int64_t (*st)[4], const int64_t *off, int stream) {
  double acc[LC_BLOCK];
  float f[LC_BLOCK];
  for (int64_t b0 = 0; b0 < n; b0 += LC_BLOCK) {
    int64_t m = n - b0 < LC_BLOCK ? n - b0 : LC_BLOCK;
    for (int k = 0; k < nt; k += 4) {
      int g = nt - k < 4 ? nt - k : 4;
      const float *p[4];
      int64_t s[4];
      for (int j = 0; j < g; j++) {
        s[j] = st[k + j + 1][3];
        p[j] = ts[k + j].data + off[k + j] + b0 * s[j];
      }
      lc_group(acc, m, k == 0, g, p, s, c + k);
    }
    float *q = o + b0 * so;
#ifdef DF_HAVE_STREAM
    if (stream && so == 1 && ((uintptr_t)q & 15) == 0) {
      /* Non-temporal stores: a big output is not read back soon, and skipping the
       * read-for-ownership of its cache lines saves a sixth of the traffic (4 terms). */
      int64_t m4 = m & ~(int64_t)3;
      for (int64_t i = 0; i < m; i++) f[i] = (float)acc[i];
      for (int64_t i = 0; i < m4; i += 4) _mm_stream_ps(q + i, _mm_loadu_ps(f + i));
      for (int64_t i = m4; i < m; i++) q[i] = f[i];
      continue;
    }
#endif
    if (so == 1) for (int64_t i = 0; i < m; i++) q[i] = (float)acc[i];
    else for (int64_t i = 0; i < m; i++) q[i * so] = (float)acc[i];
  }
#ifdef DF_HAVE_STREAM
  if (stream) _mm_sfence(); /* order the streamed stores before the thread moves on */
#endif
}

/* Offsets of task t in every view (off[k] for input k; out's returned). */
static int64_t lc_offsets(const layout *lay, const int64_t (*st)[4], int nt, int64_t t,
                          int64_t *off) {
  for (int k = 0; k < nt; k++) off[k] = task_offset(lay, st[k + 1], t);
  return task_offset(lay, st[0], t);
}

#define LC_STACK_TERMS 16
/* Stream the output past the caches when the whole combination moves at least this many
 * bytes: then it cannot stay cached anyway (the development machine has 32 MB of L3). */
#define LC_STREAM_BYTES ((int64_t)32 << 20)

/* One thread (see the note at the top): the pass is bound by memory bandwidth, which one
 * core nearly saturates with streamed stores. */
int df_lincomb(df_tensor *out, const df_tensor *ts, const double *c, int n) {
  if (n < 1) return -1;
  for (int k = 0; k < n; k++)
    if (!df_same_shape(out, &ts[k])) return -1;
  int64_t numel = df_numel(out);
  if (numel == 0) return 0;
  int64_t st_stack[LC_STACK_TERMS + 1][4], off_stack[LC_STACK_TERMS];
  int64_t (*st)[4] = st_stack, *off = off_stack;
  void *heap = NULL;
  if (n > LC_STACK_TERMS) { /* many terms are rare: one scratch block for strides and offsets */
    heap = malloc(sizeof(int64_t) * (size_t)(n + 1) * 5);
    if (!heap) return -1;
    st = heap;
    off = (int64_t *)heap + (size_t)(n + 1) * 4;
  }
  layout lay;
  layout_of(out, ts, n, &lay, st);
  const int64_t (*cst)[4] = (const int64_t (*)[4])st;
  int stream = numel * (int64_t)(n + 1) * (int64_t)sizeof(float) >= LC_STREAM_BYTES;
  int64_t ntask = lay.rows * lay.nchunk;
  for (int64_t t = 0; t < ntask; t++) {
    int64_t oo = lc_offsets(&lay, cst, n, t, off);
    lc_chunk(task_len(&lay, t), out->data + oo, st[0][3], ts, c, n, cst, off, stream);
  }
  free(heap);
  return 0;
}

/* ---- comparisons ---- */

int df_allclose(const df_tensor *a, const df_tensor *b, double rtol, double atol) {
  if (df_numel(a) == 0) return 1;
  layout lay;
  int64_t st[2][4];
  layout_of(a, b, 1, &lay, st);
  for (int64_t r = 0; r < lay.rows; r++) {
    const float *pa = a->data + row_offset(&lay, st[0], r);
    const float *pb = b->data + row_offset(&lay, st[1], r);
    for (int64_t i = 0; i < lay.sh[3]; i++) {
      double x = pa[i * st[0][3]], y = pb[i * st[1][3]];
      if (x == y) continue; /* also equal infinities */
      if (!isfinite(x) || !isfinite(y)) return 0; /* NaN, or an infinity against another value */
      if (!(fabs(x - y) <= atol + rtol * fabs(y))) return 0;
    }
  }
  return 1;
}

double df_max_abs_diff(const df_tensor *a, const df_tensor *b) {
  double worst = 0;
  if (df_numel(a) == 0) return 0;
  layout lay;
  int64_t st[2][4];
  layout_of(a, b, 1, &lay, st);
  for (int64_t r = 0; r < lay.rows; r++) {
    const float *pa = a->data + row_offset(&lay, st[0], r);
    const float *pb = b->data + row_offset(&lay, st[1], r);
    for (int64_t i = 0; i < lay.sh[3]; i++) {
      double d = fabs((double)pa[i * st[0][3]] - (double)pb[i * st[1][3]]);
      if (d != d) return d;
      if (d > worst) worst = d;
    }
  }
  return worst;
}
