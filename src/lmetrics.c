/* Bindings of the metric kernels (src/metrics.c), registered as the internal table
 * diffuse.core._metrics; lua/diffuse/metrics.lua wraps them and does the user-facing checks
 * (options, shapes of stats).  These functions still check every argument, since specs and
 * curious users can reach them.
 *
 * Double-precision vectors and matrices (means, covariances, k-NN radii) live in a small
 * userdata type, diffuse.metrics.F64: a length and that many doubles, owned by the GC. */
#include <errno.h>
#include <math.h>
#include <string.h>

#include "blas.h"
#include "ltensor.h"
#include "metrics.h"

#define F64_MT "diffuse.metrics.F64"

typedef struct f64buf {
  int64_t n;
  double v[];
} f64buf;

static f64buf *new_f64(lua_State *L, int64_t n) {
  if (n < 0 || (uint64_t)n > (SIZE_MAX - sizeof(f64buf)) / sizeof(double))
    luaL_error(L, "not enough memory");
  f64buf *b = lua_newuserdatauv(L, sizeof(f64buf) + sizeof(double) * (size_t)n, 0);
  b->n = n;
  luaL_setmetatable(L, F64_MT);
  return b;
}

static f64buf *check_f64(lua_State *L, int arg, const char *name) {
  f64buf *b = luaL_testudata(L, arg, F64_MT);
  if (!b)
    luaL_argerror(L, arg, lua_pushfstring(L, "%s must be a double buffer (diffuse.metrics.F64), got %s",
                                          name, luaL_typename(L, arg)));
  return b;
}

static int raise_status(lua_State *L, const char *fn, int st) {
  return luaL_error(L, "%s: %s", fn, df_metrics_strerror(st));
}

/* A 2-d tensor whose rows are dense (stride 1 along dim 2, any row stride >= columns). */
static df_tensor *check_features(lua_State *L, int arg, const char *name) {
  df_tensor *t = df_checktensor(L, arg);
  char buf[96];
  if (t->ndim != 2)
    luaL_argerror(L, arg, lua_pushfstring(L, "%s must be a 2-d (N, D) tensor, got %s", name,
                                          df_shape_str(t, buf, sizeof buf)));
  if (t->shape[1] > 1 && t->stride[1] != 1)
    luaL_argerror(L, arg, lua_pushfstring(L, "%s must have dense rows (call :contiguous())", name));
  if (t->shape[0] > 1 && t->stride[0] < t->shape[1])
    luaL_argerror(L, arg, lua_pushfstring(L, "%s must have non-overlapping rows (call :contiguous())", name));
  return t;
}

static int64_t row_stride(const df_tensor *t) {
  return t->shape[0] > 1 ? t->stride[0] : t->shape[1];
}

static void need_blas(lua_State *L, const char *fn) {
  const df_blas *b = df_blas_load();
  if (!b->loaded)
    luaL_error(L, "%s needs a BLAS library and none could be loaded (%s); install OpenBLAS "
                  "(Debian/Ubuntu: sudo apt-get install libopenblas-dev)", fn, b->error);
}

/* ---- F64 buffers ---- */

static int f64_len(lua_State *L) {
  lua_pushinteger(L, check_f64(L, 1, "buffer")->n);
  return 1;
}

static int f64_tostring(lua_State *L) {
  f64buf *b = check_f64(L, 1, "buffer");
  lua_pushfstring(L, "diffuse.metrics.F64 (%d doubles)", (int)b->n);
  return 1;
}

/* f64_get(buf, i) -> the i-th double (1-based). */
static int l_f64_get(lua_State *L) {
  f64buf *b = check_f64(L, 1, "buffer");
  lua_Integer i = luaL_checkinteger(L, 2);
  luaL_argcheck(L, i >= 1 && i <= b->n, 2, "index out of range");
  lua_pushnumber(L, b->v[i - 1]);
  return 1;
}

/* f64_from(t) -> buffer holding the elements of t (row-major) as doubles. */
static int l_f64_from(lua_State *L) {
  df_tensor *t = df_checktensor(L, 1);
  int64_t n = df_numel(t);
  f64buf *b = new_f64(L, n);
  for (int64_t i = 0; i < n; i++) b->v[i] = t->data[df_offset_of(t, i)];
  return 1;
}

/* f64_from_table(list) -> buffer of the numbers of a Lua list. */
static int l_f64_from_table(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_Integer n = luaL_len(L, 1);
  f64buf *b = new_f64(L, n);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_geti(L, 1, i);
    int ok;
    b->v[i - 1] = lua_tonumberx(L, -1, &ok);
    if (!ok) return luaL_argerror(L, 1, lua_pushfstring(L, "entry %d is not a number", (int)i));
    lua_pop(L, 1);
  }
  return 1;
}

/* f64_split(buf, shape) -> hi, lo: float32 tensors of the given shape with hi = fl(v) and
 * lo = fl(v - hi), so that hi + lo keeps about 48 bits of v. */
static int l_f64_split(lua_State *L) {
  f64buf *b = check_f64(L, 1, "buffer");
  int ndim;
  int64_t shape[DF_MAXDIM];
  df_checkshape(L, 2, &ndim, shape);
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) n *= shape[i];
  luaL_argcheck(L, n == b->n, 2, "shape does not match the buffer's length");
  lua_settop(L, 2);
  df_tensor *hi = df_newtensor(L, ndim, shape);
  df_tensor *lo = df_newtensor(L, ndim, shape);
  for (int64_t i = 0; i < n; i++) {
    float h = (float)b->v[i];
    hi->data[i] = h;
    lo->data[i] = isfinite(h) ? (float)(b->v[i] - (double)h) : 0.0f;
  }
  return 2;
}

/* f64_join(hi[, lo]) -> buffer of hi + lo (elementwise, in double). */
static int l_f64_join(lua_State *L) {
  df_tensor *hi = df_checktensor(L, 1);
  df_tensor *lo = lua_isnoneornil(L, 2) ? NULL : df_checktensor(L, 2);
  if (lo && !df_same_shape(hi, lo)) return df_shape_mismatch(L, 2, "lo", lo, "hi", hi);
  int64_t n = df_numel(hi);
  f64buf *b = new_f64(L, n);
  for (int64_t i = 0; i < n; i++)
    b->v[i] = (double)hi->data[df_offset_of(hi, i)] + (lo ? (double)lo->data[df_offset_of(lo, i)] : 0.0);
  return 1;
}

/* ---- metrics ---- */

/* stats(x) -> mu (F64, d), cov (F64, d*d) */
static int l_stats(lua_State *L) {
  df_tensor *x = check_features(L, 1, "features");
  int64_t n = x->shape[0], d = x->shape[1];
  f64buf *mu = new_f64(L, d);
  f64buf *cov = new_f64(L, d * d);
  int st = df_metrics_stats(x->data, n, d, row_stride(x), mu->v, cov->v);
  if (st) return raise_status(L, "stats", st);
  return 2;
}

/* frechet(mu1, s1, mu2, s2) -> fd, info table */
static int l_frechet(lua_State *L) {
  f64buf *mu1 = check_f64(L, 1, "mu1"), *s1 = check_f64(L, 2, "sigma1");
  f64buf *mu2 = check_f64(L, 3, "mu2"), *s2 = check_f64(L, 4, "sigma2");
  int64_t d = mu1->n;
  if (s1->n != d * d)
    return luaL_argerror(L, 2, lua_pushfstring(L, "sigma1 must hold %d x %d values for %d means, got %d",
                                               (int)d, (int)d, (int)d, (int)s1->n));
  if (mu2->n != d)
    return luaL_argerror(L, 3, lua_pushfstring(L, "mu2 has %d entries, mu1 has %d", (int)mu2->n, (int)d));
  if (s2->n != d * d)
    return luaL_argerror(L, 4, lua_pushfstring(L, "sigma2 must hold %d x %d values, got %d", (int)d, (int)d,
                                               (int)s2->n));
  df_fd_info info;
  int st = df_metrics_frechet(mu1->v, s1->v, mu2->v, s2->v, d, &info);
  if (st) return raise_status(L, "frechet_distance", st);
  lua_pushnumber(L, info.fd);
  lua_createtable(L, 0, 12);
#define SETN(name, v) (lua_pushnumber(L, (v)), lua_setfield(L, -2, name))
  SETN("fd", info.fd);
  SETN("mean_term", info.mean_term);
  SETN("trace1", info.trace1);
  SETN("trace2", info.trace2);
  SETN("cross", info.cross);
  SETN("min_eig1", info.min1);
  SETN("max_eig1", info.max1);
  SETN("min_eig_m", info.minm);
  SETN("max_eig_m", info.maxm);
#undef SETN
  lua_pushinteger(L, info.neg1);
  lua_setfield(L, -2, "clamped1");
  lua_pushinteger(L, info.negm);
  lua_setfield(L, -2, "clamped_m");
  return 2;
}

static void check_kernel(lua_State *L, int arg, df_kernel *k) {
  const char *kind = luaL_checkstring(L, arg);
  if (strcmp(kind, "poly") == 0) k->kind = DF_KERNEL_POLY;
  else if (strcmp(kind, "rbf") == 0) k->kind = DF_KERNEL_RBF;
  else luaL_argerror(L, arg, lua_pushfstring(L, "kernel must be 'poly' or 'rbf', got '%s'", kind));
  k->gamma = luaL_checknumber(L, arg + 1);
  luaL_argcheck(L, isfinite(k->gamma), arg + 1, "gamma must be finite");
  k->coef0 = luaL_optnumber(L, arg + 2, 0);
  luaL_argcheck(L, isfinite(k->coef0), arg + 2, "coef0 must be finite");
  lua_Integer deg = luaL_optinteger(L, arg + 3, 1);
  luaL_argcheck(L, deg >= 0 && deg <= 64, arg + 3, "degree must be an integer in 0..64");
  k->degree = (int)deg;
}

static int64_t opt_chunk(lua_State *L, int arg) {
  lua_Integer c = luaL_optinteger(L, arg, 0);
  luaL_argcheck(L, c >= 0, arg, "chunk must be >= 0 (0: automatic)");
  return (int64_t)c;
}

/* kernel_sums(x, y, kind, gamma[, coef0, degree, chunk]) -> sum_xx (i != j), sum_yy (i != j),
 * sum_xy */
static int l_kernel_sums(lua_State *L) {
  df_tensor *x = check_features(L, 1, "x"), *y = check_features(L, 2, "y");
  if (x->shape[1] != y->shape[1]) return df_shape_mismatch(L, 2, "y", y, "x", x);
  df_kernel k;
  check_kernel(L, 3, &k);
  need_blas(L, "mmd");
  double s[3];
  int st = df_metrics_kernel_sums(x->data, x->shape[0], row_stride(x), y->data, y->shape[0],
                                  row_stride(y), x->shape[1], &k, opt_chunk(L, 7), s);
  if (st) return raise_status(L, "mmd", st);
  lua_pushnumber(L, s[0]);
  lua_pushnumber(L, s[1]);
  lua_pushnumber(L, s[2]);
  return 3;
}

/* kid(x, y, subsets, subset_size, seed, kind, gamma, coef0, degree) -> list of MMD^2 values */
static int l_kid(lua_State *L) {
  df_tensor *x = check_features(L, 1, "x"), *y = check_features(L, 2, "y");
  if (x->shape[1] != y->shape[1]) return df_shape_mismatch(L, 2, "y", y, "x", x);
  lua_Integer subsets = luaL_checkinteger(L, 3), m = luaL_checkinteger(L, 4);
  luaL_argcheck(L, subsets >= 1 && subsets <= 100000000, 3, "subsets must be a positive integer");
  luaL_argcheck(L, m >= 2, 4, "subset_size must be at least 2");
  luaL_argcheck(L, m <= x->shape[0] && m <= y->shape[0], 4, "subset_size exceeds the number of rows");
  lua_Integer seed = luaL_checkinteger(L, 5);
  df_kernel k;
  check_kernel(L, 6, &k);
  need_blas(L, "kid");
  lua_settop(L, 9);
  double *out = lua_newuserdatauv(L, sizeof(double) * (size_t)subsets, 0);
  int st = df_metrics_kid(x->data, x->shape[0], row_stride(x), y->data, y->shape[0], row_stride(y),
                          x->shape[1], subsets, m, (uint64_t)seed, &k, out);
  if (st) return raise_status(L, "kid", st);
  lua_createtable(L, (int)subsets, 0);
  for (lua_Integer i = 0; i < subsets; i++) {
    lua_pushnumber(L, out[i]);
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

/* median_distance(z) -> median of |z_i - z_j| over i < j */
static int l_median_distance(lua_State *L) {
  df_tensor *z = check_features(L, 1, "z");
  luaL_argcheck(L, z->shape[0] >= 2, 1, "need at least 2 rows");
  luaL_argcheck(L, z->shape[0] <= 20000, 1, "at most 20000 rows (subsample first)");
  double med;
  int st = df_metrics_median_distance(z->data, z->shape[0], row_stride(z), z->shape[1], &med);
  if (st) return raise_status(L, "median_distance", st);
  lua_pushnumber(L, med);
  return 1;
}

/* sorted_w2(a, b) -> mean over the columns of the squared 1-d W2 distance between a's column
 * and b's (rows are samples; see df_metrics_sorted_w2) */
static int l_sorted_w2(lua_State *L) {
  df_tensor *a = check_features(L, 1, "a"), *b = check_features(L, 2, "b");
  if (a->shape[1] != b->shape[1]) return df_shape_mismatch(L, 2, "b", b, "a", a);
  luaL_argcheck(L, a->shape[0] >= 2, 1, "need at least 2 rows");
  luaL_argcheck(L, b->shape[0] >= 2, 2, "need at least 2 rows");
  double v;
  int st = df_metrics_sorted_w2(a->data, a->shape[0], row_stride(a), b->data, b->shape[0], row_stride(b),
                                a->shape[1], &v);
  if (st) return raise_status(L, "sorted_w2", st);
  lua_pushnumber(L, v);
  return 1;
}

/* knn_radii(x, k[, chunk]) -> F64 buffer of squared k-NN radii */
static int l_knn_radii(lua_State *L) {
  df_tensor *x = check_features(L, 1, "x");
  lua_Integer k = luaL_checkinteger(L, 2);
  luaL_argcheck(L, k >= 1 && k <= 64, 2, "k must be an integer in 1..64");
  luaL_argcheck(L, k < x->shape[0], 2, "k must be smaller than the number of rows");
  int64_t chunk = opt_chunk(L, 3);
  need_blas(L, "prdc");
  f64buf *r = new_f64(L, x->shape[0]);
  int st = df_metrics_knn_radii(x->data, x->shape[0], row_stride(x), x->shape[1], (int)k, chunk, r->v);
  if (st) return raise_status(L, "prdc", st);
  return 1;
}

/* prdc(real, fake, k, real_r2, fake_r2, inclusive[, chunk]) -> precision, recall, density,
 * coverage */
static int l_prdc(lua_State *L) {
  df_tensor *r = check_features(L, 1, "real"), *f = check_features(L, 2, "fake");
  if (r->shape[1] != f->shape[1]) return df_shape_mismatch(L, 2, "fake", f, "real", r);
  lua_Integer k = luaL_checkinteger(L, 3);
  luaL_argcheck(L, k >= 1, 3, "k must be a positive integer");
  f64buf *rr = check_f64(L, 4, "real_radii"), *fr = check_f64(L, 5, "fake_radii");
  luaL_argcheck(L, rr->n == r->shape[0], 4, "real_radii must have one entry per real row");
  luaL_argcheck(L, fr->n == f->shape[0], 5, "fake_radii must have one entry per fake row");
  int inclusive = lua_toboolean(L, 6);
  int64_t chunk = opt_chunk(L, 7);
  need_blas(L, "prdc");
  double out[4];
  int st = df_metrics_prdc(r->data, r->shape[0], row_stride(r), f->data, f->shape[0], row_stride(f),
                           r->shape[1], (int)k, rr->v, fr->v, inclusive, chunk, out);
  if (st) return raise_status(L, "prdc", st);
  for (int i = 0; i < 4; i++) lua_pushnumber(L, out[i]);
  return 4;
}

/* dgemm_nt(p, q, m, n, l[, sym]) -> F64 (m*n) = P Q^T: a test hook for the double kernel. */
static int l_dgemm_nt(lua_State *L) {
  f64buf *p = check_f64(L, 1, "p"), *q = check_f64(L, 2, "q");
  lua_Integer m = luaL_checkinteger(L, 3), n = luaL_checkinteger(L, 4), l = luaL_checkinteger(L, 5);
  luaL_argcheck(L, m >= 0 && l >= 0 && m * l == p->n, 3, "p must hold m * l values");
  luaL_argcheck(L, n >= 0 && n * l == q->n, 4, "q must hold n * l values");
  int sym = lua_toboolean(L, 6);
  luaL_argcheck(L, !sym || m == n, 6, "sym needs m == n");
  f64buf *c = new_f64(L, m * n);
  df_metrics_dgemm_nt(m, n, l, p->v, l, q->v, l, c->v, n, sym);
  return 1;
}

/* mkdir_p(path) -> true, or nil, message */
static int l_mkdir_p(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  if (df_metrics_mkdir_p(path) != 0) {
    lua_pushnil(L);
    lua_pushfstring(L, "%s: cannot create directory: %s", path, strerror(errno));
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

void df_open_metrics(lua_State *L, int methods, int module) {
  (void)methods;
  static const luaL_Reg meta[] = {{"__len", f64_len}, {"__tostring", f64_tostring}, {NULL, NULL}};
  if (luaL_newmetatable(L, F64_MT)) luaL_setfuncs(L, meta, 0);
  lua_pop(L, 1);
  static const luaL_Reg fns[] = {
    {"f64_get", l_f64_get}, {"f64_from", l_f64_from}, {"f64_from_table", l_f64_from_table},
    {"f64_split", l_f64_split}, {"f64_join", l_f64_join}, {"stats", l_stats},
    {"frechet", l_frechet}, {"kernel_sums", l_kernel_sums}, {"kid", l_kid},
    {"median_distance", l_median_distance}, {"knn_radii", l_knn_radii}, {"prdc", l_prdc},
    {"sorted_w2", l_sorted_w2},
    {"dgemm_nt", l_dgemm_nt}, {"mkdir_p", l_mkdir_p}, {NULL, NULL}};
  lua_newtable(L);
  luaL_setfuncs(L, fns, 0);
  lua_setfield(L, module, "_metrics");
}
