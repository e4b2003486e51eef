/* Sample-quality metrics: the heavy per-element parts (moments in double, Fréchet distance,
 * kernel sums, k-NN balls).  See metrics.h.  Pure C, no lua.h.
 *
 * Determinism: every output element is computed by one thread in a fixed order, and every
 * reduction over threads goes through per-row partial results summed in order, so results do
 * not depend on the number of threads (sgemm's own blocking aside, which OpenBLAS keeps fixed
 * for a given problem and core). */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "blas.h"
#include "metrics.h"
#include "rng.h"

/* Arithmetic-bound kernels get AVX2 / AVX-512 versions chosen at load time (as in ops.c). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define DF_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define DF_CLONES
#endif

const char *df_metrics_strerror(int status) {
  switch (status) {
  case DF_METRICS_OK: return "success";
  case DF_METRICS_ENOMEM: return "not enough memory";
  case DF_METRICS_ENOBLAS: return "no BLAS library could be loaded (install libopenblas-dev)";
  case DF_METRICS_ENOLAPACK: return "the loaded BLAS has no LAPACK dsyevd (install libopenblas-dev)";
  case DF_METRICS_EEIG: return "the symmetric eigensolver (dsyevd) did not converge";
  case DF_METRICS_ESIZE: return "a size is too large for BLAS's 32-bit int";
  case DF_METRICS_EMKDIR: return "cannot create directory";
  default: return "unknown error";
  }
}

/* ---- double P Q^T ---------------------------------------------------------------------- */

typedef double v4d __attribute__((vector_size(32)));

/* Loads and horizontal sums as macros: functions passing 32-byte vectors would change ABI. */
#define LD4(v, p) memcpy(&(v), (p), sizeof(v4d))
#define HSUM4(v) (((v)[0] + (v)[1]) + ((v)[2] + (v)[3]))

/* C[i][j] += P_i . Q_j for i in [i0, i1), j in [j0, j1); with sym only tiles reaching j >= i.
 * Micro-tiles of 2 rows of P by 4 rows of Q, vectors of 4 along l. */
DF_CLONES static void nt_tile(int64_t i0, int64_t i1, int64_t j0, int64_t j1, int64_t l,
                              const double *p, int64_t ldp, const double *q, int64_t ldq,
                              double *c, int64_t ldc, int sym) {
  int64_t l4 = l & ~(int64_t)3;
  for (int64_t i = i0; i < i1; i += 2) {
    int two = i + 1 < i1;
    const double *a0 = p + i * ldp, *a1 = two ? a0 + ldp : a0;
    int64_t js = j0;
    if (sym && js < (i & ~(int64_t)3)) js = i & ~(int64_t)3;
    for (int64_t j = js; j < j1; j += 4) {
      int nj = j1 - j < 4 ? (int)(j1 - j) : 4;
      const double *b0 = q + j * ldq;
      const double *b1 = nj > 1 ? b0 + ldq : b0, *b2 = nj > 2 ? b0 + 2 * ldq : b0,
                   *b3 = nj > 3 ? b0 + 3 * ldq : b0;
      v4d s00 = {0, 0, 0, 0}, s01 = s00, s02 = s00, s03 = s00, s10 = s00, s11 = s00, s12 = s00,
          s13 = s00;
      for (int64_t k = 0; k < l4; k += 4) {
        v4d x0, x1, y0, y1, y2, y3;
        LD4(x0, a0 + k); LD4(x1, a1 + k);
        LD4(y0, b0 + k); LD4(y1, b1 + k); LD4(y2, b2 + k); LD4(y3, b3 + k);
        s00 += x0 * y0; s01 += x0 * y1; s02 += x0 * y2; s03 += x0 * y3;
        s10 += x1 * y0; s11 += x1 * y1; s12 += x1 * y2; s13 += x1 * y3;
      }
      double r[2][4] = {{HSUM4(s00), HSUM4(s01), HSUM4(s02), HSUM4(s03)},
                        {HSUM4(s10), HSUM4(s11), HSUM4(s12), HSUM4(s13)}};
      for (int64_t k = l4; k < l; k++) {
        r[0][0] += a0[k] * b0[k]; r[0][1] += a0[k] * b1[k];
        r[0][2] += a0[k] * b2[k]; r[0][3] += a0[k] * b3[k];
        r[1][0] += a1[k] * b0[k]; r[1][1] += a1[k] * b1[k];
        r[1][2] += a1[k] * b2[k]; r[1][3] += a1[k] * b3[k];
      }
      for (int u = 0; u < nj; u++) {
        c[i * ldc + j + u] += r[0][u];
        if (two) c[(i + 1) * ldc + j + u] += r[1][u];
      }
    }
  }
}

#define NT_IB 32
#define NT_JB 64

/* C += P Q^T (upper triangle and a little more when sym). */
static void nt_acc(int64_t m, int64_t n, int64_t l, const double *p, int64_t ldp,
                   const double *q, int64_t ldq, double *c, int64_t ldc, int sym) {
  int64_t ni = (m + NT_IB - 1) / NT_IB, nj = (n + NT_JB - 1) / NT_JB;
  int64_t ntiles = ni * nj;
  int big = (double)m * (double)n * (double)l > 1e6;
#pragma omp parallel for schedule(dynamic, 1) if (big)
  for (int64_t t = 0; t < ntiles; t++) {
    int64_t bi = t / nj, bj = t % nj;
    int64_t i0 = bi * NT_IB, i1 = i0 + NT_IB < m ? i0 + NT_IB : m;
    int64_t j0 = bj * NT_JB, j1 = j0 + NT_JB < n ? j0 + NT_JB : n;
    if (sym && j1 <= (i0 & ~(int64_t)3)) continue; /* entirely below the diagonal */
    nt_tile(i0, i1, j0, j1, l, p, ldp, q, ldq, c, ldc, sym);
  }
}

static void mirror_upper(int64_t n, double *c, int64_t ldc) {
  for (int64_t i = 0; i < n; i++)
    for (int64_t j = 0; j < i; j++) c[i * ldc + j] = c[j * ldc + i];
}

void df_metrics_dgemm_nt(int64_t m, int64_t n, int64_t l, const double *p, int64_t ldp,
                         const double *q, int64_t ldq, double *c, int64_t ldc, int sym) {
  for (int64_t i = 0; i < m; i++) memset(c + i * ldc, 0, sizeof(double) * (size_t)n);
  if (m == 0 || n == 0) return;
  nt_acc(m, n, l, p, ldp, q, ldq, c, ldc, sym && m == n);
  if (sym && m == n) mirror_upper(n, c, ldc);
}

/* ---- moments --------------------------------------------------------------------------- */

#define STATS_ROWS 256

int df_metrics_stats(const float *x, int64_t n, int64_t d, int64_t ld, double *mu, double *cov) {
  for (int64_t j = 0; j < d; j++) mu[j] = 0;
  for (int64_t i = 0; i < n; i++) {
    const float *r = x + i * ld;
    for (int64_t j = 0; j < d; j++) mu[j] += r[j];
  }
  for (int64_t j = 0; j < d; j++) mu[j] = n > 0 ? mu[j] / (double)n : NAN;
  memset(cov, 0, sizeof(double) * (size_t)(d * d));
  if (n < 2 || d == 0) return DF_METRICS_OK;
  /* Centred rows, transposed into T (d x STATS_ROWS), so that cov += T T^T is a P Q^T. */
  double *t = malloc(sizeof(double) * (size_t)d * STATS_ROWS);
  if (!t) return DF_METRICS_ENOMEM;
  for (int64_t r0 = 0; r0 < n; r0 += STATS_ROWS) {
    int64_t rb = n - r0 < STATS_ROWS ? n - r0 : STATS_ROWS;
    int64_t lp = (rb + 3) & ~(int64_t)3;
    for (int64_t r = 0; r < rb; r++) {
      const float *row = x + (r0 + r) * ld;
      for (int64_t j = 0; j < d; j++) t[j * STATS_ROWS + r] = (double)row[j] - mu[j];
    }
    for (int64_t j = 0; j < d; j++)
      for (int64_t r = rb; r < lp; r++) t[j * STATS_ROWS + r] = 0;
    nt_acc(d, d, lp, t, STATS_ROWS, t, STATS_ROWS, cov, d, 1);
  }
  free(t);
  double s = 1.0 / (double)(n - 1);
  for (int64_t i = 0; i < d; i++)
    for (int64_t j = i; j < d; j++) cov[i * d + j] *= s;
  mirror_upper(d, cov, d);
  return DF_METRICS_OK;
}

/* ---- Fréchet distance ------------------------------------------------------------------ */

/* Eigenvalues (ascending, into w) and, with vectors, eigenvectors: row c of a (row-major)
 * becomes eigenvector c.  a is symmetric, d x d. */
static int syevd(const df_blas *b, int vectors, int64_t d, double *a, double *w) {
  int n = (int)d, lda = n > 0 ? n : 1, info = 0, lwork = -1, liwork = -1, iwq = 0;
  double wq = 0;
  const char *jobz = vectors ? "V" : "N";
  b->dsyevd(jobz, "L", &n, a, &lda, w, &wq, &lwork, &iwq, &liwork, &info, 1, 1);
  if (info != 0) return DF_METRICS_EEIG;
  lwork = (int)wq + 1;
  liwork = iwq > 0 ? iwq : 1;
  double *work = malloc(sizeof(double) * (size_t)lwork);
  int *iwork = malloc(sizeof(int) * (size_t)liwork);
  if (!work || !iwork) {
    free(work);
    free(iwork);
    return DF_METRICS_ENOMEM;
  }
  b->dsyevd(jobz, "L", &n, a, &lda, w, work, &lwork, iwork, &liwork, &info, 1, 1);
  free(work);
  free(iwork);
  return info == 0 ? DF_METRICS_OK : DF_METRICS_EEIG;
}

/* Symmetrised copy (a + a^T) / 2. */
static void sym_copy(int64_t d, const double *a, double *out) {
  for (int64_t i = 0; i < d; i++)
    for (int64_t j = 0; j < d; j++) out[i * d + j] = 0.5 * (a[i * d + j] + a[j * d + i]);
}

int df_metrics_frechet(const double *mu1, const double *s1, const double *mu2, const double *s2,
                       int64_t d, df_fd_info *info) {
  memset(info, 0, sizeof *info);
  double mt = 0, t1 = 0, t2 = 0;
  for (int64_t i = 0; i < d; i++) {
    double e = mu1[i] - mu2[i];
    mt += e * e;
    t1 += s1[i * d + i];
    t2 += s2[i * d + i];
  }
  info->mean_term = mt;
  info->trace1 = t1;
  info->trace2 = t2;
  if (d == 0) return DF_METRICS_OK;
  if (d > 46000) return DF_METRICS_ESIZE;
  const df_blas *b = df_blas_load();
  if (!b->dsyevd) return DF_METRICS_ENOLAPACK;
  size_t dd = (size_t)(d * d);
  double *e = malloc(sizeof(double) * dd), *s2s = malloc(sizeof(double) * dd),
         *bt = malloc(sizeof(double) * dd), *w = malloc(sizeof(double) * (size_t)d),
         *sq = malloc(sizeof(double) * (size_t)d);
  int st = DF_METRICS_ENOMEM;
  if (!e || !s2s || !bt || !w || !sq) goto done;
  sym_copy(d, s1, e);
  sym_copy(d, s2, s2s);
  if ((st = syevd(b, 1, d, e, w)) != 0) goto done;
  info->min1 = w[0];
  info->max1 = w[d - 1];
  for (int64_t c = 0; c < d; c++) {
    if (w[c] < 0) info->neg1++;
    sq[c] = w[c] > 0 ? sqrt(w[c]) : 0;
  }
  /* bt[c][i] = (S2 U)[i][c] = E_c . S2_i; then A[c][c'] = (U^T S2 U)[c][c'] = E_c . bt_c' */
  df_metrics_dgemm_nt(d, d, d, e, d, s2s, d, bt, d, 0);
  df_metrics_dgemm_nt(d, d, d, e, d, bt, d, s2s, d, 1); /* s2s now holds A */
  for (int64_t c = 0; c < d; c++)
    for (int64_t k = 0; k < d; k++) s2s[c * d + k] *= sq[c] * sq[k];
  if ((st = syevd(b, 0, d, s2s, w)) != 0) goto done;
  info->minm = w[0];
  info->maxm = w[d - 1];
  double cross = 0;
  for (int64_t c = 0; c < d; c++) {
    if (w[c] < 0) info->negm++;
    else cross += sqrt(w[c]);
  }
  info->cross = cross;
  info->fd = mt + t1 + t2 - 2 * cross;
  st = DF_METRICS_OK;
done:
  free(e);
  free(s2s);
  free(bt);
  free(w);
  free(sq);
  return st;
}

/* ---- kernel sums ----------------------------------------------------------------------- */

static void row_norms2(const float *x, int64_t n, int64_t ld, int64_t d, double *out) {
  for (int64_t i = 0; i < n; i++) {
    const float *r = x + i * ld;
    double s = 0;
    for (int64_t j = 0; j < d; j++) s += (double)r[j] * r[j];
    out[i] = s;
  }
}

/* The passes over an sgemm result run on the calling thread: measured on the 2-core machine,
 * an OpenMP loop right after sgemm competes with OpenBLAS's spinning threads and made KID
 * 2.3x and PRDC 1.3x slower than the serial loop, which is cheap next to the sgemm. */

/* Rows per sgemm block so that a block of g holds about 4M floats (16 MB). */
static int64_t block_rows(int64_t cols, int64_t chunk) {
  if (chunk > 0) return chunk;
  int64_t b = ((int64_t)1 << 22) / (cols > 0 ? cols : 1);
  return b < 1 ? 1 : b;
}

static int gemm_fits(int64_t m, int64_t n, int64_t k, int64_t lda, int64_t ldb) {
  return m <= INT_MAX && n <= INT_MAX && k <= INT_MAX && lda <= INT_MAX && ldb <= INT_MAX;
}

/* sum_j (gamma g_j + coef0)^degree in double, 4 lanes (a fixed summation order). */
DF_CLONES static double poly_row(const float *g, int64_t n, const df_kernel *k) {
  const double gm = k->gamma, c0 = k->coef0;
  const int deg = k->degree;
  v4d acc = {0, 0, 0, 0};
  int64_t n4 = n & ~(int64_t)3;
  if (deg == 3) {
    for (int64_t j = 0; j < n4; j += 4) {
      v4d t = {g[j], g[j + 1], g[j + 2], g[j + 3]};
      t = t * gm + c0;
      acc += t * t * t;
    }
  } else {
    for (int64_t j = 0; j < n4; j += 4) {
      v4d t = {g[j], g[j + 1], g[j + 2], g[j + 3]};
      t = t * gm + c0;
      v4d v = {1, 1, 1, 1};
      for (int p = 0; p < deg; p++) v *= t;
      acc += v;
    }
  }
  double s = HSUM4(acc);
  for (int64_t j = n4; j < n; j++) {
    double t = gm * g[j] + c0, v = 1;
    for (int p = 0; p < deg; p++) v *= t;
    s += v;
  }
  return s;
}

/* sum over i < na, j < nb (i != j when diag) of k(a_i, b_j), a.b by sgemm in row blocks. */
static int ksum(const float *a, int64_t na, int64_t lda, const double *an2, const float *b,
                int64_t nb, int64_t ldb, const double *bn2, int64_t d, const df_kernel *k,
                int diag, int64_t chunk, double *out) {
  *out = 0;
  if (na == 0 || nb == 0) return DF_METRICS_OK;
  if (!gemm_fits(na, nb, d, lda, ldb)) return DF_METRICS_ESIZE;
  int64_t br = block_rows(nb, chunk);
  if (br > na) br = na;
  float *g = malloc(sizeof(float) * (size_t)(br * nb));
  double *rows = malloc(sizeof(double) * (size_t)br);
  if (!g || !rows) {
    free(g);
    free(rows);
    return DF_METRICS_ENOMEM;
  }
  double total = 0;
  for (int64_t i0 = 0; i0 < na; i0 += br) {
    int64_t m = na - i0 < br ? na - i0 : br;
    if (df_sgemm(0, 1, m, nb, d, 1.0f, a + i0 * lda, lda, b, ldb, 0.0f, g, nb) != 0) {
      free(g);
      free(rows);
      return DF_METRICS_ENOBLAS;
    }
    for (int64_t r = 0; r < m; r++) {
      const float *gr = g + r * nb;
      int64_t i = i0 + r;
      double s = 0;
      if (k->kind == DF_KERNEL_POLY) {
        if (diag && i < nb) {
          s = poly_row(gr, i, k) + poly_row(gr + i + 1, nb - i - 1, k);
        } else {
          s = poly_row(gr, nb, k);
        }
      } else {
        for (int64_t j = 0; j < nb; j++) {
          if (diag && j == i) continue;
          double d2 = an2[i] + bn2[j] - 2.0 * gr[j];
          s += exp(-k->gamma * (d2 > 0 ? d2 : 0));
        }
      }
      rows[r] = s;
    }
    for (int64_t r = 0; r < m; r++) total += rows[r];
  }
  free(g);
  free(rows);
  *out = total;
  return DF_METRICS_OK;
}

int df_metrics_kernel_sums(const float *x, int64_t nx, int64_t ldx, const float *y, int64_t ny,
                           int64_t ldy, int64_t d, const df_kernel *k, int64_t chunk,
                           double sums[3]) {
  sums[0] = sums[1] = sums[2] = 0;
  double *nx2 = NULL, *ny2 = NULL;
  if (k->kind == DF_KERNEL_RBF) {
    nx2 = malloc(sizeof(double) * (size_t)(nx > 0 ? nx : 1));
    ny2 = malloc(sizeof(double) * (size_t)(ny > 0 ? ny : 1));
    if (!nx2 || !ny2) {
      free(nx2);
      free(ny2);
      return DF_METRICS_ENOMEM;
    }
    row_norms2(x, nx, ldx, d, nx2);
    row_norms2(y, ny, ldy, d, ny2);
  }
  int st = ksum(x, nx, ldx, nx2, x, nx, ldx, nx2, d, k, 1, chunk, &sums[0]);
  if (!st) st = ksum(y, ny, ldy, ny2, y, ny, ldy, ny2, d, k, 1, chunk, &sums[1]);
  if (!st) st = ksum(x, nx, ldx, nx2, y, ny, ldy, ny2, d, k, 0, chunk, &sums[2]);
  free(nx2);
  free(ny2);
  return st;
}

double df_metrics_mmd2_unbiased(const double sums[3], int64_t nx, int64_t ny) {
  return sums[0] / ((double)nx * (double)(nx - 1)) + sums[1] / ((double)ny * (double)(ny - 1)) -
         2.0 * sums[2] / ((double)nx * (double)ny);
}

/* Indices of m rows out of n (partial Fisher-Yates); perm has n entries. */
static void draw_subset(int64_t *perm, int64_t n, int64_t m, uint64_t seed, uint64_t s,
                        uint32_t w) {
  uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
  for (int64_t i = 0; i < n; i++) perm[i] = i;
  for (int64_t j = 0; j < m; j++) {
    uint32_t ctr[4] = {(uint32_t)j, (uint32_t)s, w, 0}, out[4];
    df_philox4x32_10(ctr, key, out);
    uint64_t u = ((uint64_t)out[0] << 32) | out[1];
    int64_t r = j + (int64_t)(u % (uint64_t)(n - j));
    int64_t tmp = perm[j];
    perm[j] = perm[r];
    perm[r] = tmp;
  }
}

int df_metrics_kid(const float *x, int64_t nx, int64_t ldx, const float *y, int64_t ny,
                   int64_t ldy, int64_t d, int64_t subsets, int64_t m, uint64_t seed,
                   const df_kernel *k, double *out) {
  int64_t nmax = nx > ny ? nx : ny;
  int64_t *perm = malloc(sizeof(int64_t) * (size_t)(nmax > 0 ? nmax : 1));
  float *xs = malloc(sizeof(float) * (size_t)(m * d > 0 ? m * d : 1));
  float *ys = malloc(sizeof(float) * (size_t)(m * d > 0 ? m * d : 1));
  int st = DF_METRICS_ENOMEM;
  if (!perm || !xs || !ys) goto done;
  st = DF_METRICS_OK;
  for (int64_t s = 0; s < subsets && !st; s++) {
    draw_subset(perm, nx, m, seed, (uint64_t)s, 0);
    for (int64_t i = 0; i < m; i++) memcpy(xs + i * d, x + perm[i] * ldx, sizeof(float) * (size_t)d);
    draw_subset(perm, ny, m, seed, (uint64_t)s, 1);
    for (int64_t i = 0; i < m; i++) memcpy(ys + i * d, y + perm[i] * ldy, sizeof(float) * (size_t)d);
    double sums[3];
    st = df_metrics_kernel_sums(xs, m, d, ys, m, d, d, k, 0, sums);
    out[s] = df_metrics_mmd2_unbiased(sums, m, m);
  }
done:
  free(perm);
  free(xs);
  free(ys);
  return st;
}

/* ---- median of pairwise distances ------------------------------------------------------ */

/* k-th smallest (0-based) of a[0 .. n-1], reordering a. */
static double select_kth(double *a, int64_t n, int64_t k) {
  int64_t lo = 0, hi = n - 1;
  while (lo < hi) {
    double pivot = a[lo + (hi - lo) / 2];
    int64_t i = lo, j = hi;
    while (i <= j) {
      while (a[i] < pivot) i++;
      while (a[j] > pivot) j--;
      if (i <= j) {
        double t = a[i];
        a[i] = a[j];
        a[j] = t;
        i++;
        j--;
      }
    }
    if (k <= j) hi = j;
    else if (k >= i) lo = i;
    else return a[k];
  }
  return a[k];
}

int df_metrics_median_distance(const float *z, int64_t n, int64_t ld, int64_t d, double *median) {
  *median = NAN;
  if (n < 2) return DF_METRICS_OK;
  int64_t np = n * (n - 1) / 2;
  double *v = malloc(sizeof(double) * (size_t)np);
  if (!v) return DF_METRICS_ENOMEM;
  for (int64_t i = 0, p = 0; i < n; i++)
    for (int64_t j = i + 1; j < n; j++) {
      const float *a = z + i * ld, *b = z + j * ld;
      double s = 0;
      for (int64_t c = 0; c < d; c++) {
        double e = (double)a[c] - b[c];
        s += e * e;
      }
      v[p++] = s;
    }
  double hi = select_kth(v, np, np / 2);
  if (np % 2 == 1) *median = sqrt(hi);
  else {
    double lo = select_kth(v, np, np / 2 - 1);
    *median = 0.5 * (sqrt(lo) + sqrt(hi));
  }
  free(v);
  return DF_METRICS_OK;
}

/* ---- k-NN balls and PRDC --------------------------------------------------------------- */

/* Squared distances come from sgemm as |a|^2 + |b|^2 - 2 a.b, whose float32 dot product is off
 * by at most about d * 2^-24 * |a| |b|.  Every comparison with a radius that falls within that
 * bound (times 4) is redone with the exact double distance sum_c (a_c - b_c)^2, which is
 * symmetric in a and b; radii are exact double distances too.  So the balls and the tests agree
 * to double precision whatever sgemm's blocking: identical sets give density 1 exactly. */
static double exact_d2(const float *a, const float *b, int64_t d) {
  double s = 0;
  for (int64_t c = 0; c < d; c++) {
    double e = (double)a[c] - (double)b[c];
    s += e * e;
  }
  return s;
}

static inline double d2_tol(int64_t d, double n2a, double n2b) {
  return (double)(d + 2) * 2.5e-7 * (n2a + n2b) + 1e-300;
}

/* Is the point at approximate squared distance v (exact: from a to b) inside radius r2? */
static inline int inside(double v, double tol, double r2, int inclusive, const float *a,
                         const float *b, int64_t d) {
  if (v < r2 - tol) return 1;
  if (v > r2 + tol) return 0;
  double e = exact_d2(a, b, d);
  return inclusive ? e <= r2 : e < r2;
}

#define KNN_EXTRA 8 /* candidates kept beyond k, re-ranked exactly */

int df_metrics_knn_radii(const float *x, int64_t n, int64_t ld, int64_t d, int k, int64_t chunk,
                         double *r2) {
  if (n == 0) return DF_METRICS_OK;
  if (!gemm_fits(n, n, d, ld, ld)) return DF_METRICS_ESIZE;
  int64_t br = block_rows(n, chunk);
  if (br > n) br = n;
  float *g = malloc(sizeof(float) * (size_t)(br * n));
  double *n2 = malloc(sizeof(double) * (size_t)n);
  if (!g || !n2) {
    free(g);
    free(n2);
    return DF_METRICS_ENOMEM;
  }
  row_norms2(x, n, ld, d, n2);
  int keep = k + KNN_EXTRA;
  if (keep > n - 1) keep = (int)(n - 1);
  for (int64_t i0 = 0; i0 < n; i0 += br) {
    int64_t m = n - i0 < br ? n - i0 : br;
    if (df_sgemm(0, 1, m, n, d, 1.0f, x + i0 * ld, ld, x, ld, 0.0f, g, n) != 0) {
      free(g);
      free(n2);
      return DF_METRICS_ENOBLAS;
    }
    for (int64_t r = 0; r < m; r++) {
      int64_t i = i0 + r;
      const float *gr = g + r * n;
      double best[64 + KNN_EXTRA];
      int64_t who[64 + KNN_EXTRA];
      int have = 0;
      for (int64_t j = 0; j < n; j++) {
        if (j == i) continue;
        double v = n2[i] + n2[j] - 2.0 * gr[j];
        if (have == keep && v >= best[keep - 1]) continue;
        int p = have < keep ? have++ : keep - 1;
        while (p > 0 && best[p - 1] > v) {
          best[p] = best[p - 1];
          who[p] = who[p - 1];
          p--;
        }
        best[p] = v;
        who[p] = j;
      }
      /* re-rank the candidates by exact distance; the k-th is the radius */
      for (int q = 0; q < have; q++) best[q] = exact_d2(x + i * ld, x + who[q] * ld, d);
      for (int q = 1; q < have; q++) {
        double v = best[q];
        int p = q;
        while (p > 0 && best[p - 1] > v) {
          best[p] = best[p - 1];
          p--;
        }
        best[p] = v;
      }
      r2[i] = have >= k ? best[k - 1] : INFINITY;
    }
  }
  free(g);
  free(n2);
  return DF_METRICS_OK;
}

int df_metrics_prdc(const float *real, int64_t nr, int64_t ldr, const float *fake, int64_t nf,
                    int64_t ldf, int64_t d, int k, const double *real_r2,
                    const double *fake_r2, int inclusive, int64_t chunk, double out[4]) {
  out[0] = out[1] = out[2] = out[3] = NAN;
  if (nr == 0 || nf == 0) return DF_METRICS_OK;
  if (!gemm_fits(nf, nr, d, ldf, ldr)) return DF_METRICS_ESIZE;
  int64_t br = block_rows(nr, chunk);
  if (br > nf) br = nf;
  float *g = malloc(sizeof(float) * (size_t)(br * nr));
  double *rn2 = malloc(sizeof(double) * (size_t)nr), *fn2 = malloc(sizeof(double) * (size_t)nf);
  unsigned char *rec = calloc((size_t)nr, 1), *cov = calloc((size_t)nr, 1);
  int64_t *cnt = malloc(sizeof(int64_t) * (size_t)nf);
  int st = DF_METRICS_ENOMEM;
  if (!g || !rn2 || !fn2 || !rec || !cov || !cnt) goto done;
  row_norms2(real, nr, ldr, d, rn2);
  row_norms2(fake, nf, ldf, d, fn2);
  for (int64_t j0 = 0; j0 < nf; j0 += br) {
    int64_t m = nf - j0 < br ? nf - j0 : br;
    if (df_sgemm(0, 1, m, nr, d, 1.0f, fake + j0 * ldf, ldf, real, ldr, 0.0f, g, nr) != 0) {
      st = DF_METRICS_ENOBLAS;
      goto done;
    }
    for (int64_t r = 0; r < m; r++) {
      int64_t j = j0 + r;
      const float *gr = g + r * nr, *fj = fake + j * ldf;
      double fn = fn2[j], fr = fake_r2[j];
      int64_t c = 0;
      for (int64_t i = 0; i < nr; i++) {
        double v = fn + rn2[i] - 2.0 * gr[i], tol = d2_tol(d, fn, rn2[i]);
        const float *ri = real + i * ldr;
        if (inside(v, tol, real_r2[i], inclusive, fj, ri, d)) { /* fake j in real ball i */
          c++;
          cov[i] = 1;
        }
        if (!rec[i] && inside(v, tol, fr, inclusive, ri, fj, d)) rec[i] = 1; /* real i in fake ball j */
      }
      cnt[j] = c;
    }
  }
  double prec = 0, dens = 0, recall = 0, cover = 0;
  for (int64_t j = 0; j < nf; j++) {
    prec += cnt[j] > 0;
    dens += (double)cnt[j];
  }
  for (int64_t i = 0; i < nr; i++) {
    recall += rec[i];
    cover += cov[i];
  }
  out[0] = prec / (double)nf;
  out[1] = recall / (double)nr;
  out[2] = dens / ((double)k * (double)nf);
  out[3] = cover / (double)nr;
  st = DF_METRICS_OK;
done:
  free(g);
  free(rn2);
  free(fn2);
  free(rec);
  free(cov);
  free(cnt);
  return st;
}

/* ---- files ----------------------------------------------------------------------------- */

int df_metrics_mkdir_p(const char *path) {
  size_t n = strlen(path);
  char *p = malloc(n + 1);
  if (!p) {
    errno = ENOMEM;
    return DF_METRICS_EMKDIR;
  }
  memcpy(p, path, n + 1);
  for (size_t i = 1; i <= n; i++) {
    if (p[i] != '/' && p[i] != '\0') continue;
    char c = p[i];
    p[i] = '\0';
    if (mkdir(p, 0777) != 0) {
      struct stat sb;
      int e = errno;
      if (!(e == EEXIST && stat(p, &sb) == 0 && S_ISDIR(sb.st_mode))) {
        free(p);
        errno = e;
        return DF_METRICS_EMKDIR;
      }
    }
    p[i] = c;
  }
  free(p);
  return DF_METRICS_OK;
}

/* ---- 1-d Wasserstein distances of columns ---------------------------------------------- */

static int cmp_double(const void *x, const void *y) {
  double a = *(const double *)x, b = *(const double *)y;
  return (a > b) - (a < b);
}

/* Quantile q in [0, 1] of n sorted values, linear between order statistics. */
static double sorted_quantile(const double *s, int64_t n, double q) {
  double pos = q * (double)(n - 1);
  int64_t lo = (int64_t)floor(pos);
  int64_t hi = lo + 1 < n ? lo + 1 : n - 1;
  double f = pos - (double)lo;
  return s[lo] * (1 - f) + s[hi] * f;
}

int df_metrics_sorted_w2(const float *a, int64_t na, int64_t lda, const float *b, int64_t nb,
                         int64_t ldb, int64_t p, double *out) {
  *out = NAN;
  double *sa = malloc(sizeof(double) * (size_t)na), *sb = malloc(sizeof(double) * (size_t)nb);
  if (!sa || !sb) {
    free(sa);
    free(sb);
    return DF_METRICS_ENOMEM;
  }
  int64_t n = na > nb ? na : nb;
  double total = 0;
  for (int64_t c = 0; c < p; c++) {
    for (int64_t i = 0; i < na; i++) sa[i] = a[i * lda + c];
    for (int64_t i = 0; i < nb; i++) sb[i] = b[i * ldb + c];
    qsort(sa, (size_t)na, sizeof(double), cmp_double);
    qsort(sb, (size_t)nb, sizeof(double), cmp_double);
    double acc = 0;
    if (na == nb) {
      for (int64_t i = 0; i < na; i++) acc += (sa[i] - sb[i]) * (sa[i] - sb[i]);
    } else {
      for (int64_t i = 0; i < n; i++) {
        double q = ((double)i + 0.5) / (double)n;
        double e = sorted_quantile(sa, na, q) - sorted_quantile(sb, nb, q);
        acc += e * e;
      }
    }
    total += acc / (double)n;
  }
  free(sa);
  free(sb);
  *out = total / (double)p;
  return DF_METRICS_OK;
}
