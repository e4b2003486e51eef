/* Pure C access to a BLAS loaded at run time.  The module never links OpenBLAS: df_blas_load()
 * picks OpenBLAS's kernels from the CPU's features (OPENBLAS_CORETYPE, unless the user set it),
 * dlopen()s the library and resolves the entry points below.  Never includes lua.h. */
#ifndef DIFFUSE_BLAS_H
#define DIFFUSE_BLAS_H

#include <stddef.h>
#include <stdint.h>

/* CBLAS enum values (as in every cblas.h; we do not include one). */
enum { DF_CBLAS_ROW_MAJOR = 101, DF_CBLAS_NO_TRANS = 111, DF_CBLAS_TRANS = 112 };

typedef void (*df_cblas_sgemm_fn)(int order, int transa, int transb, int m, int n, int k,
                                  float alpha, const float *a, int lda, const float *b, int ldb,
                                  float beta, float *c, int ldc);
/* Fortran entry points take a hidden length (size_t, gfortran) after the arguments for every
 * character argument; we always pass them (1), since a callee may rely on them being there. */
/* Fortran sgemm_ (column-major), used when a BLAS has no CBLAS layer. */
typedef void (*df_f77_sgemm_fn)(const char *transa, const char *transb, const int *m,
                                const int *n, const int *k, const float *alpha, const float *a,
                                const int *lda, const float *b, const int *ldb, const float *beta,
                                float *c, const int *ldc, size_t len_transa, size_t len_transb);
/* LAPACK symmetric eigensolvers (divide and conquer) and SVD, Fortran calling convention. */
typedef void (*df_ssyevd_fn)(const char *jobz, const char *uplo, const int *n, float *a,
                             const int *lda, float *w, float *work, const int *lwork, int *iwork,
                             const int *liwork, int *info, size_t len_jobz, size_t len_uplo);
typedef void (*df_dsyevd_fn)(const char *jobz, const char *uplo, const int *n, double *a,
                             const int *lda, double *w, double *work, const int *lwork,
                             int *iwork, const int *liwork, int *info, size_t len_jobz,
                             size_t len_uplo);
typedef void (*df_sgesdd_fn)(const char *jobz, const int *m, const int *n, float *a,
                             const int *lda, float *s, float *u, const int *ldu, float *vt,
                             const int *ldvt, float *work, const int *lwork, int *iwork,
                             int *info, size_t len_jobz);

typedef struct df_blas {
  int loaded;                 /* 1 when some sgemm was resolved */
  char library[512];          /* path (or soname) of the library loaded */
  char chosen[64];            /* core we asked for, "user: X", "preloaded" or "default" */
  char error[512];            /* why nothing was loaded, when loaded == 0 */
  df_cblas_sgemm_fn sgemm;    /* cblas_sgemm, or NULL */
  df_f77_sgemm_fn sgemm_f77;  /* sgemm_, or NULL */
  char *(*get_corename)(void);
  char *(*get_config)(void);
  void (*set_num_threads)(int);
  int (*get_num_threads)(void);
  df_ssyevd_fn ssyevd;        /* LAPACK, each NULL when absent */
  df_dsyevd_fn dsyevd;
  df_sgesdd_fn sgesdd;
} df_blas;

/* Load once per process (thread-safe); later calls return the same table.  Never fails hard:
 * check ->loaded and ->error.  The environment variable DIFFUSE_BLAS, when set, names the only
 * library to try. */
const df_blas *df_blas_load(void);

/* The OpenBLAS core name for this CPU ("SkylakeX", "Haswell", "SandyBridge"), or NULL to let
 * OpenBLAS decide. */
const char *df_blas_pick_core(void);

/* Thread count for OpenBLAS and OpenMP alike. */
void df_blas_set_threads(int n);
int df_blas_get_threads(void);

/* Row-major C = alpha * op(A) * op(B) + beta * C, where op(A) is m x k and op(B) is k x n.
 * A matrix given with trans = 1 is stored as its transpose (k x m for A) with leading
 * dimension ld.  k == 0 gives C = beta * C.  Returns 0, or -1 when no BLAS is loaded, or -2 when
 * a size or leading dimension does not fit BLAS's int. */
int df_sgemm(int transa, int transb, int64_t m, int64_t n, int64_t k, float alpha,
             const float *a, int64_t lda, const float *b, int64_t ldb, float beta, float *c,
             int64_t ldc);

#endif
