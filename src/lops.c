/* Lua bindings of the elementwise kernels: arithmetic with broadcasting, unary math,
 * operators, the fused linear combination and comparisons.
 *
 * `a:op(b)` returns a new tensor, `a:op_(b)` writes into a and returns it.  An in-place op
 * whose input shares storage with a through a different view (x:add_(x:t())) reads that
 * input from a temporary copy, so the result is the mathematical one. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "ltensor.h"
#include "ops.h"

/* ---- helpers ---- */

/* Do the tensors at stack indices i and j share one storage block?  (The storage is the
 * first user value of every view.) */
static int same_storage(lua_State *L, int i, int j) {
  i = lua_absindex(L, i);
  j = lua_absindex(L, j);
  lua_getiuservalue(L, i, 1);
  lua_getiuservalue(L, j, 1);
  int shared = lua_rawequal(L, -1, -2);
  lua_pop(L, 2);
  return shared;
}

/* Same element-to-address map: safe to read and write through in one pass. */
static int same_view(const df_tensor *a, const df_tensor *b) {
  if (a->data != b->data || a->ndim != b->ndim) return 0;
  for (int i = 0; i < a->ndim; i++)
    if (a->shape[i] != b->shape[i] || (a->shape[i] > 1 && a->stride[i] != b->stride[i])) return 0;
  return 1;
}

/* The operand at arg: a live tensor, or a number seen as a one-element view of *cell with
 * stride 0 (it broadcasts to any shape).  Returns NULL for a number, storing it in *cell. */
static const df_tensor *operand(lua_State *L, int arg, df_tensor *scalar, float *cell,
                                double scale) {
  if (lua_type(L, arg) == LUA_TNUMBER) {
    *cell = (float)(scale * lua_tonumber(L, arg));
    scalar->data = cell;
    scalar->ndim = 1;
    scalar->shape[0] = 1;
    scalar->stride[0] = 0;
    return scalar;
  }
  if (!luaL_testudata(L, arg, DF_TENSOR_MT)) luaL_typeerror(L, arg, "diffuse.Tensor or number");
  return df_checktensor(L, arg);
}

static int inplace_mismatch(lua_State *L, int arg, const df_tensor *a, const df_tensor *b) {
  char sa[96], sb[96];
  return luaL_argerror(L, arg, lua_pushfstring(L,
      "size mismatch: a is %s, b is %s (the in-place result must keep a's shape)",
      df_shape_str(a, sa, sizeof sa), df_shape_str(b, sb, sizeof sb)));
}

/* ---- binary ---- */

#define UP_OP lua_upvalueindex(1)

/* add, sub, mul, ... and the operators: arguments 1 and 2 are tensors or numbers (at least
 * one a tensor); add and sub take an optional scale of b as argument 3. */
static int binary(lua_State *L, df_binop op, int inplace) {
  double alpha = 1.0;
  if (op == DF_OP_ADD || op == DF_OP_SUB) alpha = luaL_optnumber(L, 3, 1.0);
  else luaL_argcheck(L, lua_isnoneornil(L, 3), 3, "no scale expected (only add and sub take one)");
  df_tensor sa, sb, ba, bb;
  float ca = 0, cb = 0;
  int nd;
  int64_t sh[DF_MAXDIM];
  const df_tensor *a = inplace ? df_checktensor(L, 1) : operand(L, 1, &sa, &ca, 1.0);
  int bnum = lua_type(L, 2) == LUA_TNUMBER;
  const df_tensor *b = operand(L, 2, &sb, &cb, bnum ? alpha : 1.0);
  if (bnum) alpha = 1.0; /* already folded into the scalar */
  if (a == &sa && b == &sb) return luaL_typeerror(L, 1, DF_TENSOR_MT);
  if (df_broadcast(a, b, &ba, &bb, &nd, sh) != 0) return df_shape_mismatch(L, 2, "a", a, "b", b);
  if (!inplace) {
    df_tensor *out = df_newtensor(L, nd, sh);
    df_binary(out, &ba, &bb, op, (float)alpha);
    return 1;
  }
  if (nd != a->ndim || memcmp(sh, a->shape, sizeof(int64_t) * (size_t)nd) != 0)
    return inplace_mismatch(L, 2, a, b);
  df_tensor *dst = (df_tensor *)a;
  if (!bnum && same_storage(L, 1, 2) && !same_view(dst, &bb)) {
    df_tensor *tmp = df_newlike(L, b);
    df_copy(tmp, b);
    df_broadcast(dst, tmp, &ba, &bb, &nd, sh);
  }
  df_binary(dst, dst, &bb, op, (float)alpha);
  lua_settop(L, 1);
  return 1;
}

static int l_binary(lua_State *L) { return binary(L, (df_binop)lua_tointeger(L, UP_OP), 0); }
static int l_binary_(lua_State *L) { return binary(L, (df_binop)lua_tointeger(L, UP_OP), 1); }

/* Metamethods get exactly two operands; a third argument is never a scale. */
static int mm_binary(lua_State *L) {
  lua_settop(L, 2);
  return binary(L, (df_binop)lua_tointeger(L, UP_OP), 0);
}

/* ---- unary ---- */

static int unary(lua_State *L, df_unop op, float p0, float p1, int inplace) {
  df_tensor *a = df_checktensor(L, 1);
  if (inplace) {
    df_unary(a, a, op, p0, p1);
    lua_settop(L, 1);
    return 1;
  }
  df_tensor *out = df_newlike(L, a);
  df_unary(out, a, op, p0, p1);
  return 1;
}

static int l_unary(lua_State *L) {
  luaL_argcheck(L, lua_isnone(L, 2), 2, "no argument expected");
  return unary(L, (df_unop)lua_tointeger(L, UP_OP), 0, 0, 0);
}

static int l_unary_(lua_State *L) {
  luaL_argcheck(L, lua_isnone(L, 2), 2, "no argument expected");
  return unary(L, (df_unop)lua_tointeger(L, UP_OP), 0, 0, 1);
}

static int mm_unm(lua_State *L) { return unary(L, DF_OP_NEG, 0, 0, 0); }

/* clamp(lo, hi): either bound may be nil. */
static int clamp(lua_State *L, int inplace) {
  df_checktensor(L, 1);
  double lo = lua_isnoneornil(L, 2) ? -INFINITY : luaL_checknumber(L, 2);
  double hi = lua_isnoneornil(L, 3) ? INFINITY : luaL_checknumber(L, 3);
  luaL_argcheck(L, !isnan(lo), 2, "lower bound is NaN");
  luaL_argcheck(L, !isnan(hi), 3, "upper bound is NaN");
  luaL_argcheck(L, lo <= hi, 3, "upper bound is below the lower bound");
  return unary(L, DF_OP_CLAMP, (float)lo, (float)hi, inplace);
}

static int l_clamp(lua_State *L) { return clamp(L, 0); }
static int l_clamp_(lua_State *L) { return clamp(L, 1); }

/* ---- linear combination ---- */

/* Read tables ts (at ti) and cs (at ci) into a scratch userdata pushed on the stack; the
 * shapes are checked against ref (out) or, when ref is NULL, against term 1. */
static int read_terms(lua_State *L, int ti, int ci, const df_tensor *ref, df_tensor **ts,
                      double **cs) {
  const char *refname = ref ? "out" : "term 1";
  luaL_checktype(L, ti, LUA_TTABLE);
  luaL_checktype(L, ci, LUA_TTABLE);
  lua_Integer n = luaL_len(L, ti), m = luaL_len(L, ci);
  luaL_argcheck(L, n >= 1, ti, "needs at least one tensor");
  if (m != n)
    return luaL_argerror(L, ci, lua_pushfstring(L, "%d coefficient%s for %d tensor%s", (int)m,
                                                 m == 1 ? "" : "s", (int)n, n == 1 ? "" : "s"));
  luaL_argcheck(L, n <= (1 << 20), ti, "too many terms");
  size_t bytes = (size_t)n * (sizeof(df_tensor) + sizeof(double));
  char *block = lua_newuserdatauv(L, bytes, 0);
  *ts = (df_tensor *)(void *)block;
  *cs = (double *)(void *)(block + (size_t)n * sizeof(df_tensor));
  for (lua_Integer k = 1; k <= n; k++) {
    lua_geti(L, ti, k);
    df_tensor *t = luaL_testudata(L, -1, DF_TENSOR_MT);
    if (!t || !t->data)
      return luaL_argerror(L, ti, lua_pushfstring(L, "term %d is not a tensor (got %s)", (int)k,
                                                  t ? "a closed tensor" : luaL_typename(L, -1)));
    if (ref == NULL) ref = t; /* term 1; the table keeps it alive */
    if (!df_same_shape(ref, t))
      return df_shape_mismatch(L, ti, refname, ref, lua_pushfstring(L, "term %d", (int)k), t);
    (*ts)[k - 1] = *t;
    lua_pop(L, 1);
    lua_geti(L, ci, k);
    if (lua_type(L, -1) != LUA_TNUMBER)
      return luaL_argerror(L, ci, lua_pushfstring(L, "coefficient %d is not a number (got %s)",
                                                  (int)k, luaL_typename(L, -1)));
    (*cs)[k - 1] = lua_tonumber(L, -1);
    lua_pop(L, 1);
  }
  return (int)n;
}

/* diffuse.lincomb({t1, t2, ...}, {c1, c2, ...}) -> new tensor sum c_i t_i */
static int l_lincomb(lua_State *L) {
  df_tensor *ts;
  double *cs;
  int n = read_terms(L, 1, 2, NULL, &ts, &cs);
  df_tensor *out = df_newlike(L, &ts[0]);
  if (df_lincomb(out, ts, cs, n) != 0) return luaL_error(L, "lincomb: not enough memory");
  return 1;
}

/* out:lincomb_({t1, ...}, {c1, ...}) -> out; out may be one of the terms. */
static int l_lincomb_(lua_State *L) {
  df_tensor *out = df_checktensor(L, 1);
  df_tensor *ts;
  double *cs;
  int n = read_terms(L, 2, 3, out, &ts, &cs);
  for (int k = 0; k < n; k++) {
    if (same_view(out, &ts[k])) continue;
    lua_geti(L, 2, k + 1);
    int shared = same_storage(L, 1, -1);
    lua_pop(L, 1);
    if (shared) { /* a different view of out's storage: read it from a copy */
      luaL_checkstack(L, 1, "lincomb_");
      df_tensor *tmp = df_newlike(L, &ts[k]);
      df_copy(tmp, &ts[k]);
      ts[k] = *tmp;
    }
  }
  if (df_lincomb(out, ts, cs, n) != 0) return luaL_error(L, "lincomb_: not enough memory");
  lua_settop(L, 1);
  return 1;
}

/* ---- comparisons ---- */

static void compare_args(lua_State *L, df_tensor *ba, df_tensor *bb, df_tensor *sb, float *cb) {
  const df_tensor *a = df_checktensor(L, 1);
  const df_tensor *b = operand(L, 2, sb, cb, 1.0);
  int nd;
  int64_t sh[DF_MAXDIM];
  if (df_broadcast(a, b, ba, bb, &nd, sh) != 0) df_shape_mismatch(L, 2, "a", a, "b", b);
}

/* allclose(a, b, rtol = 1e-5, atol = 1e-8): numpy semantics, broadcasting allowed. */
static int l_allclose(lua_State *L) {
  df_tensor ba, bb, sb;
  float cb;
  compare_args(L, &ba, &bb, &sb, &cb);
  double rtol = luaL_optnumber(L, 3, 1e-5), atol = luaL_optnumber(L, 4, 1e-8);
  luaL_argcheck(L, rtol >= 0, 3, "rtol must be non-negative");
  luaL_argcheck(L, atol >= 0, 4, "atol must be non-negative");
  lua_pushboolean(L, df_allclose(&ba, &bb, rtol, atol));
  return 1;
}

static int l_max_abs_diff(lua_State *L) {
  df_tensor ba, bb, sb;
  float cb;
  compare_args(L, &ba, &bb, &sb, &cb);
  lua_pushnumber(L, df_max_abs_diff(&ba, &bb));
  return 1;
}

/* ---- registration ---- */

static void set_op(lua_State *L, int table, const char *name, lua_CFunction f, int op) {
  lua_pushinteger(L, op);
  lua_pushcclosure(L, f, 1);
  lua_setfield(L, table, name);
}

void df_open_ops(lua_State *L, int methods, int module) {
  static const struct { const char *name; df_binop op; } bins[] = {
    {"add", DF_OP_ADD}, {"sub", DF_OP_SUB}, {"mul", DF_OP_MUL}, {"div", DF_OP_DIV},
    {"pow", DF_OP_POW}, {"maximum", DF_OP_MAX}, {"minimum", DF_OP_MIN}};
  static const struct { const char *name; df_unop op; } uns[] = {
    {"neg", DF_OP_NEG}, {"exp", DF_OP_EXP}, {"log", DF_OP_LOG}, {"sqrt", DF_OP_SQRT},
    {"abs", DF_OP_ABS}, {"tanh", DF_OP_TANH}, {"sigmoid", DF_OP_SIGMOID}, {"silu", DF_OP_SILU},
    {"square", DF_OP_SQUARE}};
  static const struct { const char *name; df_binop op; } mms[] = {
    {"__add", DF_OP_ADD}, {"__sub", DF_OP_SUB}, {"__mul", DF_OP_MUL}, {"__div", DF_OP_DIV},
    {"__pow", DF_OP_POW}};
  char name[32];
  methods = lua_absindex(L, methods);
  module = lua_absindex(L, module);
  for (size_t i = 0; i < sizeof bins / sizeof bins[0]; i++) {
    set_op(L, methods, bins[i].name, l_binary, bins[i].op);
    snprintf(name, sizeof name, "%s_", bins[i].name);
    set_op(L, methods, name, l_binary_, bins[i].op);
  }
  for (size_t i = 0; i < sizeof uns / sizeof uns[0]; i++) {
    set_op(L, methods, uns[i].name, l_unary, uns[i].op);
    snprintf(name, sizeof name, "%s_", uns[i].name);
    set_op(L, methods, name, l_unary_, uns[i].op);
  }
  static const luaL_Reg meth[] = {
    {"clamp", l_clamp}, {"clamp_", l_clamp_}, {"lincomb_", l_lincomb_},
    {"allclose", l_allclose}, {"max_abs_diff", l_max_abs_diff}, {NULL, NULL}};
  static const luaL_Reg mod[] = {
    {"lincomb", l_lincomb}, {"allclose", l_allclose}, {"max_abs_diff", l_max_abs_diff},
    {NULL, NULL}};
  df_register(L, methods, meth, module, mod);
  luaL_getmetatable(L, DF_TENSOR_MT);
  int mt = lua_gettop(L);
  for (size_t i = 0; i < sizeof mms / sizeof mms[0]; i++) set_op(L, mt, mms[i].name, mm_binary, mms[i].op);
  lua_pushcfunction(L, mm_unm);
  lua_setfield(L, mt, "__unm");
  lua_pop(L, 1);
}
