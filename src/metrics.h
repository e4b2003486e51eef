/* Sample-quality metrics over feature matrices: moments in double, the Fréchet distance
 * (LAPACK dsyevd), kernel sums for MMD / KID (sgemm, chunked), and k-NN precision, recall,
 * density and coverage (sgemm, chunked).  Pure C: never includes lua.h; functions return a
 * status code (0 on success, see df_metrics_strerror).  Features are row-major float32
 * matrices (n x d) with a row stride ld >= d (in floats). */
#ifndef DIFFUSE_METRICS_H
#define DIFFUSE_METRICS_H

#include <stdint.h>

enum {
  DF_METRICS_OK = 0,
  DF_METRICS_ENOMEM = 1,   /* an allocation failed */
  DF_METRICS_ENOBLAS = 2,  /* no sgemm could be loaded */
  DF_METRICS_ENOLAPACK = 3,/* the BLAS has no dsyevd */
  DF_METRICS_EEIG = 4,     /* dsyevd did not converge */
  DF_METRICS_ESIZE = 5,    /* a size does not fit BLAS's int */
  DF_METRICS_EMKDIR = 6    /* a directory could not be created (errno tells why) */
};
const char *df_metrics_strerror(int status);

/* Mean (d) and covariance (d x d, full symmetric, divided by n - 1; zeros when n < 2) of the
 * rows of x, accumulated in double on centred data. */
int df_metrics_stats(const float *x, int64_t n, int64_t d, int64_t ld, double *mu, double *cov);

/* C (m x n, leading dimension ldc) = P Q^T for double row-major P (m x l, ldp) and Q (n x l,
 * ldq).  sym != 0 promises P == Q (m == n): only one triangle is computed, then mirrored. */
void df_metrics_dgemm_nt(int64_t m, int64_t n, int64_t l, const double *p, int64_t ldp,
                         const double *q, int64_t ldq, double *c, int64_t ldc, int sym);

typedef struct df_fd_info {
  double fd;          /* |mu1 - mu2|^2 + tr S1 + tr S2 - 2 cross */
  double mean_term;   /* |mu1 - mu2|^2 */
  double trace1, trace2;
  double cross;       /* tr((S1^1/2 S2 S1^1/2)^1/2) */
  int64_t neg1;       /* eigenvalues of S1 below 0, clamped to 0 */
  double min1, max1;  /* smallest and largest eigenvalue of S1 */
  int64_t negm;       /* the same for M = S1^1/2 S2 S1^1/2 */
  double minm, maxm;
} df_fd_info;

/* Fréchet distance between N(mu1, s1) and N(mu2, s2) (s1, s2: d x d symmetric, row-major,
 * lower triangle read).  Eigendecompositions in double (dsyevd): S1 = U diag(w) U^T,
 * M = diag(sqrt w) U^T S2 U diag(sqrt w), cross = sum sqrt(eig(M)); negative eigenvalues (of
 * S1 and of M) are clamped to 0 and counted in info. */
int df_metrics_frechet(const double *mu1, const double *s1, const double *mu2, const double *s2,
                       int64_t d, df_fd_info *info);

/* Kernels for MMD: k(x, y) = (gamma x.y + coef0)^degree, or exp(-gamma |x - y|^2). */
typedef enum { DF_KERNEL_POLY = 0, DF_KERNEL_RBF = 1 } df_kernel_kind;
typedef struct df_kernel {
  df_kernel_kind kind;
  double gamma, coef0;
  int degree;
} df_kernel;

/* Sums of k over the pairs of (x: nx rows, y: ny rows, both d columns):
 * sums[0] = sum_{i != j} k(x_i, x_j), sums[1] = sum_{i != j} k(y_i, y_j),
 * sums[2] = sum_{i, j} k(x_i, y_j).  Accumulated in double, x.y by sgemm in blocks of chunk
 * rows (chunk <= 0: about 16 MB of products per block; the same for the functions below). */
int df_metrics_kernel_sums(const float *x, int64_t nx, int64_t ldx, const float *y, int64_t ny,
                           int64_t ldy, int64_t d, const df_kernel *k, int64_t chunk,
                           double sums[3]);

/* The unbiased MMD^2 from kernel sums. */
double df_metrics_mmd2_unbiased(const double sums[3], int64_t nx, int64_t ny);

/* KID: for s = 0 .. subsets-1, draws m rows of x and m rows of y without replacement (a
 * partial Fisher-Yates shuffle driven by Philox4x32-10: swap j of subset s of set w (0 for x,
 * 1 for y) uses the block with counter (j, s, w, 0) and key (seed mod 2^32, seed / 2^32)) and
 * writes the unbiased MMD^2 with kernel k to out[s].  Needs m <= nx, m <= ny, m >= 2. */
int df_metrics_kid(const float *x, int64_t nx, int64_t ldx, const float *y, int64_t ny,
                   int64_t ldy, int64_t d, int64_t subsets, int64_t m, uint64_t seed,
                   const df_kernel *k, double *out);

/* Median of the pairwise Euclidean distances |z_i - z_j|, i < j, of z (n x d), n >= 2. */
int df_metrics_median_distance(const float *z, int64_t n, int64_t ld, int64_t d, double *median);

/* Squared distance from each row of x (n x d) to its k-th nearest other row (the row itself
 * excluded by index, duplicates count), into r2 (n): candidates found with sgemm, then the
 * exact double distances sum_c (x_ic - x_jc)^2 of the best k + 8 re-ranked.  Needs
 * 1 <= k <= min(n - 1, 64). */
int df_metrics_knn_radii(const float *x, int64_t n, int64_t ld, int64_t d, int k, int64_t chunk,
                         double *r2);

/* Precision, recall, density, coverage (Naeem et al. 2020) of fake (nf x d) against real
 * (nr x d), given the squared k-NN radii of each set (df_metrics_knn_radii).  A point is inside
 * a ball when its squared distance is < r2 (inclusive != 0: <= r2); a comparison within the
 * float32 error bound of sgemm's distance is redone with the exact double distance.
 * out = {precision, recall, density, coverage}. */
int df_metrics_prdc(const float *real, int64_t nr, int64_t ldr, const float *fake, int64_t nf,
                    int64_t ldf, int64_t d, int k, const double *real_r2,
                    const double *fake_r2, int inclusive, int64_t chunk, double out[4]);

/* mkdir -p: creates path and its missing parents (mode 0777 before umask).  0 on success
 * (also when it exists as a directory), else DF_METRICS_EMKDIR with errno set. */
int df_metrics_mkdir_p(const char *path);

/* Mean over the p columns of the squared 2-Wasserstein distance between the 1-d empirical
 * distributions of column c of a (na rows, row stride lda) and of b.  Equal sizes compare order
 * statistics; otherwise both are compared at the n = max(na, nb) levels (i - 1/2) / n, each
 * quantile interpolated linearly between order statistics.  The building block of the sliced
 * Wasserstein distance (the caller projects).  na, nb >= 2. */
int df_metrics_sorted_w2(const float *a, int64_t na, int64_t lda, const float *b, int64_t nb,
                         int64_t ldb, int64_t p, double *out);

#endif
