/* Lua side of the BLAS layer: diffuse.matmul / Tensor:matmul, blas_info, thread control.
 * OpenBLAS is loaded (with kernels chosen for the CPU) when the module opens; see blas.c. */
#include <omp.h>
#include <string.h>

#include "blas.h"
#include "ltensor.h"

/* A 2-d operand as BLAS wants it: the data, and whether it is stored transposed. */
typedef struct {
  const float *p;
  int64_t ld;
  int trans;
} blas_mat;

/* Can the rows x cols view with strides (rs, cs) go to sgemm without a copy?  Either rows are
 * contiguous (cs == 1, ld = rs) or columns are (rs == 1: a transposed matrix, ld = cs).  The
 * stride of a dimension of size 1 never matters. */
static int describe(const df_tensor *v, blas_mat *m) {
  int64_t rows = v->shape[0], cols = v->shape[1], rs = v->stride[0], cs = v->stride[1];
  int64_t need_r = cols > 1 ? cols : 1, need_c = rows > 1 ? rows : 1;
  m->p = v->data;
  if ((cols <= 1 || cs == 1) && (rows <= 1 || rs >= need_r)) {
    m->trans = 0;
    m->ld = rows <= 1 ? need_r : rs;
    return 1;
  }
  if ((rows <= 1 || rs == 1) && (cols <= 1 || cs >= need_c)) {
    m->trans = 1;
    m->ld = cols <= 1 ? need_c : cs;
    return 1;
  }
  return 0;
}

/* Element offsets spanned by a view, for the aliasing check. */
static void span(const df_tensor *t, const float **lo, const float **hi) {
  int64_t a = 0, b = 0;
  for (int i = 0; i < t->ndim; i++) {
    int64_t d = (t->shape[i] - 1) * t->stride[i];
    if (d < 0) a += d;
    else b += d;
  }
  *lo = t->data + a;
  *hi = t->data + b;
}

static int overlaps(const df_tensor *x, const df_tensor *y) {
  if (df_numel(x) == 0 || df_numel(y) == 0) return 0;
  const float *xl, *xh, *yl, *yh;
  span(x, &xl, &xh);
  span(y, &yl, &yh);
  return xl <= yh && yl <= xh;
}

static const df_blas *need_blas(lua_State *L) {
  const df_blas *b = df_blas_load();
  if (!b->loaded)
    luaL_error(L, "matmul needs a BLAS library and none could be loaded (%s); install OpenBLAS "
                  "(Debian/Ubuntu: sudo apt-get install libopenblas-dev)", b->error);
  return b;
}

typedef struct {
  int transa, transb, has_beta;
  float alpha, beta;
  df_tensor *out;
} mm_opts;

static int opt_bool(lua_State *L, int t, const char *k) {
  int ty = lua_getfield(L, t, k);
  if (ty != LUA_TNIL && ty != LUA_TBOOLEAN)
    luaL_argerror(L, 3, lua_pushfstring(L, "option %s must be a boolean, got %s", k, luaL_typename(L, -1)));
  int v = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return v;
}

static int opt_number(lua_State *L, int t, const char *k, float *v) {
  int ty = lua_getfield(L, t, k);
  if (ty == LUA_TNIL) {
    lua_pop(L, 1);
    return 0;
  }
  if (ty != LUA_TNUMBER)
    luaL_argerror(L, 3, lua_pushfstring(L, "option %s must be a number, got %s", k, luaL_typename(L, -1)));
  *v = (float)lua_tonumber(L, -1);
  lua_pop(L, 1);
  return 1;
}

static void read_opts(lua_State *L, mm_opts *o) {
  memset(o, 0, sizeof *o);
  o->alpha = 1.0f;
  if (lua_isnoneornil(L, 3)) return;
  luaL_argexpected(L, lua_istable(L, 3), 3, "table of options");
  lua_pushnil(L);
  while (lua_next(L, 3)) {
    static const char *const known[] = {"transa", "transb", "alpha", "beta", "out", NULL};
    int ok = 0;
    if (lua_type(L, -2) == LUA_TSTRING)
      for (int i = 0; known[i]; i++) ok |= strcmp(lua_tostring(L, -2), known[i]) == 0;
    if (!ok) {
      lua_pushvalue(L, -2);
      luaL_argerror(L, 3, lua_pushfstring(L, "unknown option '%s' (expected transa, transb, alpha, beta, out)",
                                          luaL_tolstring(L, -1, NULL)));
    }
    lua_pop(L, 1);
  }
  o->transa = opt_bool(L, 3, "transa");
  o->transb = opt_bool(L, 3, "transb");
  opt_number(L, 3, "alpha", &o->alpha);
  o->has_beta = opt_number(L, 3, "beta", &o->beta);
  if (lua_getfield(L, 3, "out") != LUA_TNIL) {
    o->out = df_totensor(L, -1);
    if (!o->out) luaL_argerror(L, 3, "option out must be a live diffuse.Tensor");
  }
  lua_pop(L, 1);
  if (o->has_beta && !o->out) luaL_argerror(L, 3, "option beta needs out (the tensor to accumulate into)");
}

/* The 2-d matrix an operand contributes: a 1-d a is a row [1 x k], a 1-d b a column [k x 1];
 * trans swaps the view's dimensions. */
static df_tensor as_matrix(const df_tensor *t, int is_b, int trans) {
  df_tensor v = *t;
  if (t->ndim == 1) {
    v.ndim = 2;
    if (is_b) {
      v.shape[1] = 1; v.stride[1] = 1;
    } else {
      v.shape[1] = t->shape[0]; v.stride[1] = t->stride[0];
      v.shape[0] = 1; v.stride[0] = t->shape[0] * t->stride[0];
    }
  } else if (trans) {
    v.shape[0] = t->shape[1]; v.stride[0] = t->stride[1];
    v.shape[1] = t->shape[0]; v.stride[1] = t->stride[0];
  }
  return v;
}

/* Push a contiguous copy of the 2-d view v and describe it. */
static void copy_operand(lua_State *L, const df_tensor *v, blas_mat *m) {
  df_tensor *c = df_newtensor(L, 2, v->shape);
  df_copy(c, v);
  m->p = c->data;
  m->ld = v->shape[1] > 1 ? v->shape[1] : 1;
  m->trans = 0;
}

/* matmul(a, b[, opts]) -> a·b (or into opts.out). */
static int l_matmul(lua_State *L) {
  df_tensor *a = df_checktensor(L, 1);
  df_tensor *b = df_checktensor(L, 2);
  mm_opts o;
  read_opts(L, &o);
  char s1[96];
  if (a->ndim > 2)
    return luaL_argerror(L, 1, lua_pushfstring(L, "a must be 1-d or 2-d, got %s", df_shape_str(a, s1, sizeof s1)));
  if (b->ndim > 2)
    return luaL_argerror(L, 2, lua_pushfstring(L, "b must be 1-d or 2-d, got %s", df_shape_str(b, s1, sizeof s1)));
  if (a->ndim == 1 && b->ndim == 1)
    return luaL_argerror(L, 2, "a and b are both 1-d (for a dot product reshape a to [1xn])");
  if (o.transa && a->ndim == 1) return luaL_argerror(L, 3, "transa needs a 2-d a");
  if (o.transb && b->ndim == 1) return luaL_argerror(L, 3, "transb needs a 2-d b");
  const df_blas *bl = need_blas(L);
  (void)bl;

  df_tensor A = as_matrix(a, 0, o.transa), Bm = as_matrix(b, 1, o.transb);
  int64_t m = A.shape[0], k = A.shape[1], n = Bm.shape[1];
  if (Bm.shape[0] != k) {
    df_tensor sa = a->ndim == 2 ? A : *a, sb = b->ndim == 2 ? Bm : *b;
    return df_shape_mismatch(L, 2, o.transa ? "transposed a" : "a", &sa, o.transb ? "transposed b" : "b", &sb);
  }

  /* result shape: [m x n], or [m] for a vector b, or [n] for a vector a */
  df_tensor res;
  memset(&res, 0, sizeof res);
  if (b->ndim == 1) { res.ndim = 1; res.shape[0] = m; }
  else if (a->ndim == 1) { res.ndim = 1; res.shape[0] = n; }
  else { res.ndim = 2; res.shape[0] = m; res.shape[1] = n; }

  lua_settop(L, 3);
  df_tensor *c;
  if (o.out) {
    c = o.out;
    if (!df_same_shape(c, &res)) return df_shape_mismatch(L, 3, "out", c, "result", &res);
    luaL_argcheck(L, df_is_contiguous(c), 3, "out must be contiguous");
    lua_getfield(L, 3, "out"); /* index 4 */
  } else {
    c = df_newtensor(L, res.ndim, res.shape); /* index 4, anchored before any work */
  }
  float beta = o.has_beta ? o.beta : 0.0f;
  if (m == 0 || n == 0) return 1;

  blas_mat ma, mb;
  if (overlaps(c, a) || !describe(&A, &ma)) copy_operand(L, &A, &ma);
  if (overlaps(c, b) || !describe(&Bm, &mb)) copy_operand(L, &Bm, &mb);
  if (k == 0) { ma.ld = mb.ld = 1; ma.trans = mb.trans = 0; }
  int rc = df_sgemm(ma.trans, mb.trans, m, n, k, o.alpha, ma.p, ma.ld, mb.p, mb.ld, beta, c->data, n);
  if (rc == -2) return luaL_error(L, "matmul: sizes too large for BLAS (more than 2^31-1 in a dimension)");
  if (rc != 0) return luaL_error(L, "matmul: internal error %d calling sgemm", rc);
  lua_settop(L, 4);
  return 1;
}

static int l_blas_info(lua_State *L) {
  const df_blas *b = df_blas_load();
  lua_createtable(L, 0, 7);
  if (b->loaded) {
    lua_pushstring(L, b->library);
    lua_setfield(L, -2, "library");
  } else {
    lua_pushstring(L, b->error);
    lua_setfield(L, -2, "error");
  }
  if (b->get_corename) {
    lua_pushstring(L, b->get_corename());
    lua_setfield(L, -2, "core");
  }
  if (b->get_config) {
    lua_pushstring(L, b->get_config());
    lua_setfield(L, -2, "config");
  }
  lua_pushstring(L, b->chosen);
  lua_setfield(L, -2, "chosen");
  lua_pushinteger(L, df_blas_get_threads());
  lua_setfield(L, -2, "threads");
  lua_pushboolean(L, b->ssyevd || b->dsyevd || b->sgesdd);
  lua_setfield(L, -2, "lapack");
  return 1;
}

static int l_set_threads(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  luaL_argcheck(L, n >= 1 && n <= 4096, 1, "thread count must be between 1 and 4096");
  df_blas_set_threads((int)n);
  return 0;
}

static int l_get_threads(lua_State *L) {
  lua_pushinteger(L, df_blas_get_threads());
  return 1;
}

/* Wall-clock seconds (monotonic), for timing: os.clock() counts CPU time of every thread. */
static int l_wtime(lua_State *L) {
  lua_pushnumber(L, omp_get_wtime());
  return 1;
}

void df_open_blas(lua_State *L, int methods, int module) {
  df_blas_load(); /* choose the kernels and load OpenBLAS now, before anything else can */
  static const luaL_Reg mod[] = {
    {"matmul", l_matmul}, {"blas_info", l_blas_info}, {"set_threads", l_set_threads},
    {"get_threads", l_get_threads}, {"wtime", l_wtime},
    {NULL, NULL}};
  df_register(L, methods, NULL, module, mod);
  lua_pushcfunction(L, l_matmul);
  lua_setfield(L, methods, "matmul");
}
