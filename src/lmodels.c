/* Bindings of the exact models' kernels (Gaussian mixture, empirical data, Gaussian).
 * Registered as the internal table diffuse.core._models; lua/diffuse/models.lua wraps them and
 * does the user-facing checks (shapes, labels, options).  These functions still check every
 * argument, since specs and curious users can reach them. */
#include <math.h>
#include <string.h>

#include "blas.h"
#include "ltensor.h"
#include "models.h"

/* A contiguous 2-d tensor at arg; returns it. */
static df_tensor *check_matrix(lua_State *L, int arg, const char *name) {
  df_tensor *t = df_checktensor(L, arg);
  char buf[96];
  if (t->ndim != 2 || !df_is_contiguous(t))
    luaL_argerror(L, arg, lua_pushfstring(L, "%s must be a contiguous 2-d tensor, got %s%s", name,
                                          df_shape_str(t, buf, sizeof buf),
                                          t->ndim == 2 ? " (not contiguous)" : ""));
  return t;
}

static double check_point_value(lua_State *L, int arg, const char *name) {
  double v = luaL_checknumber(L, arg);
  if (!(v >= 0) || !isfinite(v))
    luaL_argerror(L, arg, lua_pushfstring(L, "%s must be finite and >= 0, got %f", name, v));
  return v;
}

static int raise_status(lua_State *L, const char *fn, int st) {
  return luaL_error(L, "%s: %s", fn, df_models_strerror(st));
}

/* gmm_posterior(x, means, vars, logw, group, alpha, sigma, want_out, want_resp, want_lse[, path])
 *   x (n x d), means and vars (k x d) contiguous; logw a flat list of g*k log-weights (-math.huge
 *   drops a component); group nil or a list of n group numbers (1-based rows of logw).
 *   -> out (n x d) or nil, resp (n x k) or nil, lse (n) or nil */
static int l_gmm_posterior(lua_State *L) {
  df_tensor *x = check_matrix(L, 1, "x");
  df_tensor *mu = check_matrix(L, 2, "means");
  df_tensor *var = check_matrix(L, 3, "vars");
  int64_t n = x->shape[0], d = x->shape[1], k = mu->shape[0];
  if (mu->shape[1] != d) return df_shape_mismatch(L, 2, "means", mu, "x", x);
  if (!df_same_shape(var, mu)) return df_shape_mismatch(L, 3, "vars", var, "means", mu);
  luaL_checktype(L, 4, LUA_TTABLE);
  lua_Integer nw = luaL_len(L, 4);
  if (k == 0 || nw <= 0 || nw % k != 0)
    return luaL_argerror(L, 4, lua_pushfstring(L, "logw must hold a multiple of k = %d log-weights, got %d",
                                               (int)k, (int)nw));
  int64_t g = nw / k;
  double *logw = lua_newuserdatauv(L, sizeof(double) * (size_t)nw, 0);
  for (lua_Integer i = 1; i <= nw; i++) {
    lua_geti(L, 4, i);
    int isnum;
    double v = lua_tonumberx(L, -1, &isnum);
    if (!isnum || v != v || v == INFINITY)
      return luaL_argerror(L, 4, lua_pushfstring(L, "log-weight %d must be a number < inf", (int)i));
    logw[i - 1] = v;
    lua_pop(L, 1);
  }
  int32_t *group = NULL;
  if (!lua_isnoneornil(L, 5)) {
    luaL_checktype(L, 5, LUA_TTABLE);
    if (luaL_len(L, 5) != n)
      return luaL_argerror(L, 5, lua_pushfstring(L, "group must list %d rows, got %d", (int)n, (int)luaL_len(L, 5)));
    group = lua_newuserdatauv(L, sizeof(int32_t) * (size_t)(n > 0 ? n : 1), 0);
    for (int64_t i = 0; i < n; i++) {
      lua_geti(L, 5, i + 1);
      int isint;
      lua_Integer v = lua_tointegerx(L, -1, &isint);
      if (!isint || v < 1 || v > g)
        return luaL_argerror(L, 5, lua_pushfstring(L, "group %d must be an integer in 1..%d", (int)(i + 1), (int)g));
      group[i] = (int32_t)(v - 1);
      lua_pop(L, 1);
    }
  }
  double alpha = check_point_value(L, 6, "alpha"), sigma = check_point_value(L, 7, "sigma");
  if (alpha == 0 && sigma == 0) return luaL_argerror(L, 7, "alpha and sigma are both 0");
  int want_out = lua_toboolean(L, 8), want_resp = lua_toboolean(L, 9), want_lse = lua_toboolean(L, 10);
  lua_Integer path = luaL_optinteger(L, 11, 0);
  luaL_argcheck(L, path >= 0 && path <= 2, 11, "path must be 0 (auto), 1 (direct) or 2 (gemm)");
  int top = lua_gettop(L);
  df_tensor *out = NULL, *resp = NULL, *lse = NULL;
  int64_t sh[2];
  if (want_out) out = df_newlike(L, x);
  else lua_pushnil(L);
  sh[0] = n; sh[1] = k;
  if (want_resp) resp = df_newtensor(L, 2, sh);
  else lua_pushnil(L);
  double *lsed = NULL;
  if (want_lse) {
    lse = df_newtensor(L, 1, sh);
    lsed = lua_newuserdatauv(L, sizeof(double) * (size_t)(n > 0 ? n : 1), 0);
  }
  else lua_pushnil(L);
  int st = df_gmm_posterior(x->data, n, d, mu->data, var->data, k, logw, g, group, alpha, sigma,
                            out ? out->data : NULL, resp ? resp->data : NULL, lsed, (int)path);
  if (st) return raise_status(L, "gmm", st);
  if (lse) {
    for (int64_t i = 0; i < n; i++) lse->data[i] = (float)lsed[i];
    lua_pop(L, 1);
  }
  (void)top;
  return 3;
}

/* empirical(x, data, dnorm2, alpha, sigma, chunk) -> out (n x d) */
static int l_empirical(lua_State *L) {
  df_tensor *x = check_matrix(L, 1, "x");
  df_tensor *data = check_matrix(L, 2, "data");
  df_tensor *dn = df_checktensor(L, 3);
  int64_t n = x->shape[0], d = x->shape[1], m = data->shape[0];
  if (data->shape[1] != d) return df_shape_mismatch(L, 2, "data", data, "x", x);
  luaL_argcheck(L, dn->ndim == 1 && dn->shape[0] == m && df_is_contiguous(dn), 3,
                "dnorm2 must be a contiguous 1-d tensor with one entry per data row");
  double alpha = check_point_value(L, 4, "alpha"), sigma = check_point_value(L, 5, "sigma");
  if (alpha == 0 && sigma == 0) return luaL_argerror(L, 5, "alpha and sigma are both 0");
  lua_Integer chunk = luaL_checkinteger(L, 6);
  luaL_argcheck(L, chunk >= 1, 6, "chunk must be a positive integer");
  luaL_argcheck(L, m >= 1, 2, "data must have at least one row");
  if (!df_blas_load()->loaded)
    return luaL_error(L, "empirical model needs a BLAS library and none could be loaded (%s); install "
                         "OpenBLAS (Debian/Ubuntu: sudo apt-get install libopenblas-dev)", df_blas_load()->error);
  df_tensor *out = df_newlike(L, x);
  int st = df_empirical_denoise(x->data, n, d, data->data, m, dn->data, alpha, sigma, (int64_t)chunk, out->data);
  if (st) return raise_status(L, "empirical", st);
  return 1;
}

/* eigh(a) -> w (d), u (d x d): a = u diag(w) u^T for a symmetric a (its lower triangle is read),
 * eigenvalues ascending, eigenvectors in the columns of u.  Computed in double (LAPACK dsyevd;
 * ssyevd in float when only that is present). */
static int l_eigh(lua_State *L) {
  df_tensor *a = df_checktensor(L, 1);
  char buf[96];
  if (a->ndim != 2 || a->shape[0] != a->shape[1])
    return luaL_argerror(L, 1, lua_pushfstring(L, "a square matrix expected, got %s", df_shape_str(a, buf, sizeof buf)));
  const df_blas *b = df_blas_load();
  if (!b->dsyevd && !b->ssyevd)
    return luaL_error(L, "the Gaussian model needs LAPACK (dsyevd), which the loaded BLAS does not provide%s%s; "
                         "install OpenBLAS with LAPACK (Debian/Ubuntu: sudo apt-get install libopenblas-dev)",
                      b->loaded ? "" : ": ", b->loaded ? "" : b->error);
  int64_t d = a->shape[0];
  if (d > 46000) return luaL_argerror(L, 1, "matrix too large");
  int n = (int)d, lda = n > 0 ? n : 1, info = 0;
  int64_t sh[2] = {d, d};
  df_tensor *w = df_newtensor(L, 1, sh);
  df_tensor *u = df_newtensor(L, 2, sh);
  if (d == 0) return 2;
  /* Column-major input: a symmetric matrix is its own transpose, so rows work as well. */
  if (b->dsyevd) {
    double *A = lua_newuserdatauv(L, sizeof(double) * (size_t)(d * d), 0);
    double *W = lua_newuserdatauv(L, sizeof(double) * (size_t)d, 0);
    for (int64_t i = 0; i < d; i++)
      for (int64_t j = 0; j < d; j++) A[i * d + j] = (double)a->data[i * a->stride[0] + j * a->stride[1]];
    double wq;
    int iwq, lwork = -1, liwork = -1;
    b->dsyevd("V", "L", &n, A, &lda, W, &wq, &lwork, &iwq, &liwork, &info, 1, 1);
    if (info != 0) return luaL_error(L, "dsyevd workspace query failed (info %d)", info);
    lwork = (int)wq + 1;
    liwork = iwq;
    double *work = lua_newuserdatauv(L, sizeof(double) * (size_t)lwork, 0);
    int *iwork = lua_newuserdatauv(L, sizeof(int) * (size_t)(liwork > 0 ? liwork : 1), 0);
    b->dsyevd("V", "L", &n, A, &lda, W, work, &lwork, iwork, &liwork, &info, 1, 1);
    if (info != 0) return luaL_error(L, "dsyevd failed to converge (info %d)", info);
    /* Column c of the column-major result (eigenvector c) is A[c*d .. c*d+d-1]. */
    for (int64_t c = 0; c < d; c++) {
      w->data[c] = (float)W[c];
      for (int64_t i = 0; i < d; i++) u->data[i * d + c] = (float)A[c * d + i];
    }
    lua_pop(L, 4);
  } else {
    float *A = lua_newuserdatauv(L, sizeof(float) * (size_t)(d * d), 0);
    for (int64_t i = 0; i < d; i++)
      for (int64_t j = 0; j < d; j++) A[i * d + j] = a->data[i * a->stride[0] + j * a->stride[1]];
    float wq;
    int iwq, lwork = -1, liwork = -1;
    b->ssyevd("V", "L", &n, A, &lda, w->data, &wq, &lwork, &iwq, &liwork, &info, 1, 1);
    if (info != 0) return luaL_error(L, "ssyevd workspace query failed (info %d)", info);
    lwork = (int)wq + 1;
    liwork = iwq;
    float *work = lua_newuserdatauv(L, sizeof(float) * (size_t)lwork, 0);
    int *iwork = lua_newuserdatauv(L, sizeof(int) * (size_t)(liwork > 0 ? liwork : 1), 0);
    b->ssyevd("V", "L", &n, A, &lda, w->data, work, &lwork, iwork, &liwork, &info, 1, 1);
    if (info != 0) return luaL_error(L, "ssyevd failed to converge (info %d)", info);
    for (int64_t c = 0; c < d; c++)
      for (int64_t i = 0; i < d; i++) u->data[i * d + c] = A[c * d + i];
    lua_pop(L, 3);
  }
  return 2;
}

static int l_has_lapack(lua_State *L) {
  const df_blas *b = df_blas_load();
  lua_pushboolean(L, b->dsyevd || b->ssyevd);
  return 1;
}

void df_open_models(lua_State *L, int methods, int module) {
  (void)methods;
  static const luaL_Reg fns[] = {
    {"gmm_posterior", l_gmm_posterior}, {"empirical", l_empirical}, {"eigh", l_eigh},
    {"has_lapack", l_has_lapack}, {NULL, NULL}};
  lua_newtable(L);
  luaL_setfuncs(L, fns, 0);
  lua_setfield(L, module, "_models");
}
