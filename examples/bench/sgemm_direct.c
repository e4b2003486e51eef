/* The reference point for examples/bench/matmul_bench.lua: cblas_sgemm called directly from C,
 * linked to OpenBLAS.  Run it with OPENBLAS_CORETYPE set to compare kernels.
 * Usage: sgemm_direct M N K [reps]  -> prints "core=<name> gflops=<best of reps>" */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

enum { ROW_MAJOR = 101, NO_TRANS = 111 };
void cblas_sgemm(int order, int ta, int tb, int m, int n, int k, float alpha, const float *a,
                 int lda, const float *b, int ldb, float beta, float *c, int ldc);
char *openblas_get_corename(void);

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: %s M N K [reps]\n", argv[0]);
    return 2;
  }
  int m = atoi(argv[1]), n = atoi(argv[2]), k = atoi(argv[3]);
  int reps = argc > 4 ? atoi(argv[4]) : 10;
  if (m <= 0 || n <= 0 || k <= 0 || reps <= 0) {
    fprintf(stderr, "sizes and reps must be positive\n");
    return 2;
  }
  float *a = malloc(sizeof(float) * (size_t)m * (size_t)k);
  float *b = malloc(sizeof(float) * (size_t)k * (size_t)n);
  float *c = malloc(sizeof(float) * (size_t)m * (size_t)n);
  if (!a || !b || !c) {
    fprintf(stderr, "out of memory\n");
    return 1;
  }
  for (size_t i = 0; i < (size_t)m * (size_t)k; i++) a[i] = (float)((i * 7) % 13) / 13.0f - 0.5f;
  for (size_t i = 0; i < (size_t)k * (size_t)n; i++) b[i] = (float)((i * 5) % 11) / 11.0f - 0.5f;
  /* one warm-up call starts the thread pool and faults the pages in */
  cblas_sgemm(ROW_MAJOR, NO_TRANS, NO_TRANS, m, n, k, 1.0f, a, k, b, n, 0.0f, c, n);
  double best = 1e30;
  for (int r = 0; r < reps; r++) {
    double t0 = now();
    cblas_sgemm(ROW_MAJOR, NO_TRANS, NO_TRANS, m, n, k, 1.0f, a, k, b, n, 0.0f, c, n);
    double dt = now() - t0;
    if (dt < best) best = dt;
  }
  printf("core=%s gflops=%.1f\n", openblas_get_corename(), 2.0 * m * n * k / best * 1e-9);
  free(a); free(b); free(c);
  return 0;
}
