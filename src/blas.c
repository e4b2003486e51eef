/* Run-time loading of OpenBLAS (or another BLAS) with kernels chosen for this CPU, and the
 * sgemm wrapper the bindings call.  Pure C: no lua.h, no exits; errors are codes and strings. */
#define _GNU_SOURCE /* dladdr */
#include "blas.h"

#include <dlfcn.h>
#include <limits.h>
#include <omp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static df_blas B;
static pthread_once_t load_once_flag = PTHREAD_ONCE_INIT;

const char *df_blas_pick_core(void) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  /* __builtin_cpu_supports reports a feature only when the OS also saves its registers
   * (XGETBV), so an AVX-512 CPU under a kernel without ZMM support counts as AVX2. */
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    return "SkylakeX";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return "Haswell";
  if (__builtin_cpu_supports("avx"))
    return "SandyBridge";
#endif
  return NULL;
}

static void append_error(const char *why) {
  size_t used = strlen(B.error);
  if (used + 1 < sizeof B.error)
    snprintf(B.error + used, sizeof B.error - used, "%s%s", used ? "; " : "", why);
}

/* Take sgemm and the optional entry points from h; returns 0 when h has no sgemm. */
static int resolve(void *h) {
  B.sgemm = (df_cblas_sgemm_fn)dlsym(h, "cblas_sgemm");
  B.sgemm_f77 = (df_f77_sgemm_fn)dlsym(h, "sgemm_");
  if (!B.sgemm && !B.sgemm_f77) return 0;
  B.get_corename = (char *(*)(void))dlsym(h, "openblas_get_corename");
  B.get_config = (char *(*)(void))dlsym(h, "openblas_get_config");
  B.set_num_threads = (void (*)(int))dlsym(h, "openblas_set_num_threads");
  B.get_num_threads = (int (*)(void))dlsym(h, "openblas_get_num_threads");
  B.ssyevd = (df_ssyevd_fn)dlsym(h, "ssyevd_");
  B.dsyevd = (df_dsyevd_fn)dlsym(h, "dsyevd_");
  B.sgesdd = (df_sgesdd_fn)dlsym(h, "sgesdd_");
  if (!B.ssyevd && !B.dsyevd && !B.sgesdd) {
    /* a reference BLAS keeps LAPACK in a separate library */
    void *lh = dlopen("liblapack.so.3", RTLD_NOW | RTLD_LOCAL);
    if (lh) {
      B.ssyevd = (df_ssyevd_fn)dlsym(lh, "ssyevd_");
      B.dsyevd = (df_dsyevd_fn)dlsym(lh, "dsyevd_");
      B.sgesdd = (df_sgesdd_fn)dlsym(lh, "sgesdd_");
    }
  }
  return 1;
}

static void record_library(const char *name) {
  Dl_info info;
  void *sym = B.sgemm ? (void *)B.sgemm : (void *)B.sgemm_f77;
  if (dladdr(sym, &info) && info.dli_fname && info.dli_fname[0])
    name = info.dli_fname;
  snprintf(B.library, sizeof B.library, "%s", name);
}

static void load_once(void) {
  static const char *const defaults[] = {"libopenblas.so.0", "libopenblas.so", "libblas.so.3",
                                         "libcblas.so.3", "libcblas.so", NULL};
  const char *only[2] = {NULL, NULL};
  const char *const *names = defaults;
  const char *forced = getenv("DIFFUSE_BLAS");
  if (forced && forced[0]) {
    only[0] = forced;
    names = only;
  }

  /* Already in the process (linked by the host program or another module)?  Then its
   * kernels were chosen when it was loaded and the variable would change nothing. */
  for (int i = 0; names[i]; i++) {
    void *h = dlopen(names[i], RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD);
    if (h && resolve(h)) {
      B.loaded = 1;
      snprintf(B.chosen, sizeof B.chosen, "preloaded");
      record_library(names[i]);
      return;
    }
    if (h) dlclose(h);
  }

  /* OPENBLAS_CORETYPE is read by OpenBLAS's constructor during dlopen: set it for that moment
   * only, unless the user chose, and put the environment back exactly as it was. */
  char saved[256] = "";
  const char *user = getenv("OPENBLAS_CORETYPE");
  int had = user != NULL;
  if (had) snprintf(saved, sizeof saved, "%s", user);
  int ours = 0;
  if (had && saved[0]) {
    snprintf(B.chosen, sizeof B.chosen, "user: %s", saved);
  } else {
    const char *core = df_blas_pick_core();
    if (core && setenv("OPENBLAS_CORETYPE", core, 1) == 0) {
      ours = 1;
      snprintf(B.chosen, sizeof B.chosen, "%s", core);
    } else {
      snprintf(B.chosen, sizeof B.chosen, "default");
    }
  }

  for (int i = 0; names[i] && !B.loaded; i++) {
    void *h = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
    if (!h) {
      const char *why = dlerror(); /* names the file */
      if (why) append_error(why);
      else append_error(names[i]);
    } else if (!resolve(h)) {
      char why[300];
      snprintf(why, sizeof why, "%s has neither cblas_sgemm nor sgemm_", names[i]);
      append_error(why);
      dlclose(h);
    } else {
      B.loaded = 1; /* the handle stays open for the life of the process */
      record_library(names[i]);
    }
  }

  if (ours) {
    if (had) setenv("OPENBLAS_CORETYPE", saved, 1);
    else unsetenv("OPENBLAS_CORETYPE");
  }
  if (B.loaded) B.error[0] = '\0';
}

const df_blas *df_blas_load(void) {
  pthread_once(&load_once_flag, load_once);
  return &B;
}

void df_blas_set_threads(int n) {
  if (n < 1) n = 1;
  const df_blas *b = df_blas_load();
  if (b->set_num_threads) b->set_num_threads(n);
  omp_set_num_threads(n);
}

int df_blas_get_threads(void) {
  const df_blas *b = df_blas_load();
  if (b->get_num_threads) return b->get_num_threads();
  return omp_get_max_threads();
}

static int fits(int64_t v) { return v >= 0 && v <= INT_MAX; }

int df_sgemm(int transa, int transb, int64_t m, int64_t n, int64_t k, float alpha,
             const float *a, int64_t lda, const float *b, int64_t ldb, float beta, float *c,
             int64_t ldc) {
  const df_blas *bl = df_blas_load();
  if (!bl->loaded) return -1;
  if (!fits(m) || !fits(n) || !fits(k) || !fits(lda) || !fits(ldb) || !fits(ldc)) return -2;
  if (m == 0 || n == 0) return 0;
  if (ldc < n) return -3;
  if (k == 0) { /* BLAS would reject lda = 0 etc.; the product of empty sums is zero */
    for (int64_t i = 0; i < m; i++)
      for (int64_t j = 0; j < n; j++) c[i * ldc + j] = beta == 0.0f ? 0.0f : beta * c[i * ldc + j];
    return 0;
  }
  if (lda < (transa ? m : k) || ldb < (transb ? k : n)) return -3;
  if (bl->sgemm) {
    bl->sgemm(DF_CBLAS_ROW_MAJOR, transa ? DF_CBLAS_TRANS : DF_CBLAS_NO_TRANS,
              transb ? DF_CBLAS_TRANS : DF_CBLAS_NO_TRANS, (int)m, (int)n, (int)k, alpha, a,
              (int)lda, b, (int)ldb, beta, c, (int)ldc);
  } else {
    /* row-major C = op(A) op(B) is column-major C' = op(B)' op(A)' */
    int im = (int)m, in = (int)n, ik = (int)k, ila = (int)lda, ilb = (int)ldb, ilc = (int)ldc;
    bl->sgemm_f77(transb ? "T" : "N", transa ? "T" : "N", &in, &im, &ik, &alpha, b, &ilb, a, &ila,
                  &beta, c, &ilc, 1, 1);
  }
  return 0;
}
