/* Reductions as tensor methods: sum, mean, min, max, argmin, argmax, norm, logsumexp, var, std.
 * Without a dimension they return a Lua number (argmin/argmax: the 1-based row-major index);
 * with one they return a new tensor (min/max: values and 1-based indices). */
#include <math.h>

#include "ltensor.h"
#include "reduce.h"

enum { OUT_VALUES, OUT_BOTH, OUT_INDICES };

/* Shared driver.  dimarg is the position of the optional dimension; keepdim follows it. */
static int reduce(lua_State *L, const df_reduce_spec *sp, const char *name, int dimarg, int out) {
  df_tensor *t = df_checktensor(L, 1);
  int keeparg = dimarg + 1;
  luaL_argexpected(L, lua_isnoneornil(L, keeparg) || lua_isboolean(L, keeparg), keeparg,
                   "boolean (keepdim)");
  int keep = lua_toboolean(L, keeparg);
  int extremum = sp->op == DF_RED_MIN || sp->op == DF_RED_MAX;

  if (lua_isnoneornil(L, dimarg)) {
    double v;
    int64_t idx;
    if (extremum && df_numel(t) == 0) return luaL_error(L, "%s of an empty tensor", name);
    if (df_reduce_all(t, sp, &v, &idx) != 0) {
      df_tensor *c = df_newlike(L, t); /* a layout that cannot be walked as one run */
      df_copy(c, t);
      df_reduce_all(c, sp, &v, &idx);
      lua_pop(L, 1);
    }
    if (out == OUT_INDICES) lua_pushinteger(L, (lua_Integer)idx + 1);
    else lua_pushnumber(L, v);
    return 1;
  }

  int d = df_checkdim(L, dimarg, t);
  if (extremum && t->shape[d] == 0)
    return luaL_error(L, "%s of an empty tensor (dimension %d has size 0)", name, d + 1);
  int nd = 0;
  int64_t shape[DF_MAXDIM];
  for (int i = 0; i < t->ndim; i++) {
    if (i != d) shape[nd++] = t->shape[i];
    else if (keep) shape[nd++] = 1;
  }
  if (nd == 0) shape[nd++] = 1;
  int base = lua_gettop(L);
  float *values = out != OUT_INDICES ? df_newtensor(L, nd, shape)->data : NULL;
  float *indices = out != OUT_VALUES ? df_newtensor(L, nd, shape)->data : NULL;
  int nres = lua_gettop(L) - base;
  if (df_reduce_dim(t, d, sp, values, indices) != 0) {
    df_tensor *c = df_newlike(L, t);
    df_copy(c, t);
    df_reduce_dim(c, d, sp, values, indices);
    lua_pop(L, 1);
  }
  if (indices) { /* 0-based in C, 1-based in Lua */
    int64_t n = 1;
    for (int i = 0; i < nd; i++) n *= shape[i];
    for (int64_t i = 0; i < n; i++) indices[i] += 1.0f;
  }
  return nres;
}

static int simple(lua_State *L, df_reduce_op op, const char *name, int out) {
  df_reduce_spec sp = {op, 2.0, 1.0};
  return reduce(L, &sp, name, 2, out);
}

static int r_sum(lua_State *L) { return simple(L, DF_RED_SUM, "sum", OUT_VALUES); }
static int r_mean(lua_State *L) { return simple(L, DF_RED_MEAN, "mean", OUT_VALUES); }
static int r_logsumexp(lua_State *L) { return simple(L, DF_RED_LOGSUMEXP, "logsumexp", OUT_VALUES); }
static int r_min(lua_State *L) { return simple(L, DF_RED_MIN, "min", OUT_BOTH); }
static int r_max(lua_State *L) { return simple(L, DF_RED_MAX, "max", OUT_BOTH); }
static int r_argmin(lua_State *L) { return simple(L, DF_RED_MIN, "argmin", OUT_INDICES); }
static int r_argmax(lua_State *L) { return simple(L, DF_RED_MAX, "argmax", OUT_INDICES); }

/* norm([p[, dim[, keepdim]]]) */
static int r_norm(lua_State *L) {
  df_reduce_spec sp = {DF_RED_NORM, 2.0, 1.0};
  if (!lua_isnoneornil(L, 2)) {
    sp.p = luaL_checknumber(L, 2);
    luaL_argcheck(L, sp.p > 0, 2, "p must be a positive number (or math.huge)");
  }
  return reduce(L, &sp, "norm", 3, OUT_VALUES);
}

/* var([dim[, keepdim[, correction]]]) and std */
static int variance(lua_State *L, df_reduce_op op, const char *name) {
  df_reduce_spec sp = {op, 2.0, 1.0};
  if (!lua_isnoneornil(L, 4)) {
    sp.correction = luaL_checknumber(L, 4);
    luaL_argcheck(L, sp.correction >= 0 && isfinite(sp.correction), 4,
                  "correction must be a non-negative number");
  }
  return reduce(L, &sp, name, 2, OUT_VALUES);
}

static int r_var(lua_State *L) { return variance(L, DF_RED_VAR, "var"); }
static int r_std(lua_State *L) { return variance(L, DF_RED_STD, "std"); }

void df_open_reduce(lua_State *L, int methods, int module) {
  static const luaL_Reg meth[] = {
    {"sum", r_sum}, {"mean", r_mean}, {"min", r_min}, {"max", r_max},
    {"argmin", r_argmin}, {"argmax", r_argmax}, {"norm", r_norm},
    {"logsumexp", r_logsumexp}, {"var", r_var}, {"std", r_std},
    {NULL, NULL}};
  df_register(L, methods, meth, module, NULL);
}
