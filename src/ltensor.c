/* diffuse.Tensor: allocation, constructors, shape and views, copies, conversion to Lua. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "ltensor.h"

/* Storage is over-allocated by this much so the data can start on a cache line. */
#define DF_ALIGN 64

df_tensor *df_totensor(lua_State *L, int arg) {
  df_tensor *t = luaL_testudata(L, arg, DF_TENSOR_MT);
  return (t && t->data) ? t : NULL;
}

df_tensor *df_checktensor(lua_State *L, int arg) {
  df_tensor *t = luaL_testudata(L, arg, DF_TENSOR_MT);
  if (!t) {
    luaL_typeerror(L, arg, DF_TENSOR_MT);
    return NULL;
  }
  luaL_argcheck(L, t->data != NULL, arg, "tensor was closed");
  return t;
}

df_tensor *df_newtensor(lua_State *L, int ndim, const int64_t *shape) {
  df_tensor tmp;
  tmp.ndim = ndim;
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 0) luaL_error(L, "invalid shape: size %lld of dimension %d is negative",
                                 (long long)shape[i], i + 1);
    tmp.shape[i] = shape[i];
  }
  /* The product of the non-zero sizes bounds every stride, so it must not overflow even when
   * another size is 0 and the tensor is empty. */
  int64_t span = 1;
  int empty = 0;
  for (int i = 0; i < ndim; i++) {
    if (shape[i] == 0) { empty = 1; continue; }
    if (span > INT64_MAX / shape[i]) span = -1;
    if (span < 0) break;
    span *= shape[i];
  }
  size_t bytes = empty ? 0 : df_bytes_for(span);
  if (span < 0 || (!empty && bytes == 0)) {
    char buf[96];
    luaL_error(L, "cannot allocate a tensor of shape %s: size overflows", df_shape_str(&tmp, buf, sizeof buf));
  }
  /* Anchor the view first, then its storage, so an allocation error leaves nothing unowned. */
  df_tensor *t = lua_newuserdatauv(L, sizeof(df_tensor), 1);
  memset(t, 0, sizeof *t);
  luaL_setmetatable(L, DF_TENSOR_MT);
  char *block = lua_newuserdatauv(L, bytes + DF_ALIGN, 0);
  lua_setiuservalue(L, -2, 1);
  uintptr_t p = (uintptr_t)block;
  p = (p + DF_ALIGN - 1) & ~(uintptr_t)(DF_ALIGN - 1);
  *t = tmp;
  t->data = (float *)p;
  df_set_contiguous_strides(t);
  return t;
}

df_tensor *df_newlike(lua_State *L, const df_tensor *t) {
  return df_newtensor(L, t->ndim, t->shape);
}

df_tensor *df_pushview(lua_State *L, int base, const df_tensor *view) {
  base = lua_absindex(L, base);
  df_tensor *t = lua_newuserdatauv(L, sizeof(df_tensor), 1);
  *t = *view;
  luaL_setmetatable(L, DF_TENSOR_MT);
  lua_getiuservalue(L, base, 1);
  lua_setiuservalue(L, -2, 1);
  return t;
}

int df_checkshape(lua_State *L, int arg, int *ndim, int64_t shape[DF_MAXDIM]) {
  int n = 0, used;
  if (lua_istable(L, arg)) {
    n = (int)luaL_len(L, arg);
    luaL_argcheck(L, n >= 1 && n <= DF_MAXDIM, arg, "shape must have 1 to 4 dimensions");
    for (int i = 0; i < n; i++) {
      lua_geti(L, arg, i + 1);
      int ok;
      lua_Integer v = lua_tointegerx(L, -1, &ok);
      lua_pop(L, 1);
      if (!ok || v < 0)
        return luaL_argerror(L, arg, lua_pushfstring(L, "shape entry %d must be a non-negative integer", i + 1));
      shape[i] = v;
    }
    used = 1;
  } else {
    while (n < DF_MAXDIM + 1 && lua_type(L, arg + n) == LUA_TNUMBER) n++;
    if (n == 0) luaL_typeerror(L, arg, "shape (table or integers)");
    luaL_argcheck(L, n <= DF_MAXDIM, arg + DF_MAXDIM, "shape must have 1 to 4 dimensions");
    for (int i = 0; i < n; i++) {
      lua_Integer v = luaL_checkinteger(L, arg + i);
      luaL_argcheck(L, v >= 0, arg + i, "size must be a non-negative integer");
      shape[i] = v;
    }
    used = n;
  }
  *ndim = n;
  return used;
}

int df_checkdim(lua_State *L, int arg, const df_tensor *t) {
  lua_Integer d = luaL_checkinteger(L, arg);
  if (d < 0) d += t->ndim + 1;
  if (d < 1 || d > t->ndim)
    return luaL_argerror(L, arg, lua_pushfstring(L, "dimension %d out of range for a %d-d tensor",
                                                  (int)luaL_checkinteger(L, arg), t->ndim));
  return (int)d - 1;
}

int df_shape_mismatch(lua_State *L, int arg, const char *na, const df_tensor *a,
                      const char *nb, const df_tensor *b) {
  char sa[96], sb[96];
  return luaL_argerror(L, arg, lua_pushfstring(L, "size mismatch: %s is %s, %s is %s", na,
                                               df_shape_str(a, sa, sizeof sa), nb,
                                               df_shape_str(b, sb, sizeof sb)));
}

/* ---- constructors ---- */

static int t_zeros(lua_State *L) {
  int ndim; int64_t shape[DF_MAXDIM];
  df_checkshape(L, 1, &ndim, shape);
  df_tensor *t = df_newtensor(L, ndim, shape);
  memset(t->data, 0, (size_t)df_numel(t) * sizeof(float));
  return 1;
}

static int t_ones(lua_State *L) {
  int ndim; int64_t shape[DF_MAXDIM];
  df_checkshape(L, 1, &ndim, shape);
  df_fill(df_newtensor(L, ndim, shape), 1.0f);
  return 1;
}

static int t_full(lua_State *L) {
  int ndim; int64_t shape[DF_MAXDIM];
  int used = df_checkshape(L, 1, &ndim, shape);
  float v = (float)luaL_checknumber(L, 1 + used);
  df_fill(df_newtensor(L, ndim, shape), v);
  return 1;
}

/* arange(n) = 0..n-1; arange(a, b[, step]) = a, a+step, ... < b (like numpy). */
static int t_arange(lua_State *L) {
  double a = 0, b, step = 1;
  if (lua_gettop(L) <= 1) b = luaL_checknumber(L, 1);
  else { a = luaL_checknumber(L, 1); b = luaL_checknumber(L, 2); step = luaL_optnumber(L, 3, 1); }
  luaL_argcheck(L, step != 0 && isfinite(step), 3, "step must be a non-zero finite number");
  luaL_argcheck(L, isfinite(a) && isfinite(b), 1, "bounds must be finite");
  double count = ceil((b - a) / step);
  if (count < 0) count = 0;
  luaL_argcheck(L, count < 1e12, 2, "range too long");
  int64_t n = (int64_t)count;
  df_tensor *t = df_newtensor(L, 1, &n);
  for (int64_t i = 0; i < n; i++) t->data[i] = (float)(a + (double)i * step);
  return 1;
}

static int t_linspace(lua_State *L) {
  double a = luaL_checknumber(L, 1), b = luaL_checknumber(L, 2);
  lua_Integer n = luaL_checkinteger(L, 3);
  luaL_argcheck(L, n >= 1, 3, "number of points must be at least 1");
  int64_t nn = n;
  df_tensor *t = df_newtensor(L, 1, &nn);
  for (int64_t i = 0; i < nn; i++)
    t->data[i] = (float)(nn == 1 ? a : a + (b - a) * (double)i / (double)(nn - 1));
  if (nn > 1) t->data[nn - 1] = (float)b;
  return 1;
}

/* Infer the shape of a nested table by following first elements, then fill, checking every
 * row has the same length. */
static void fill_from_table(lua_State *L, int idx, int depth, int ndim, const int64_t *shape,
                            float **out) {
  lua_Integer len = (lua_Integer)luaL_len(L, idx);
  if (len != shape[depth])
    luaL_error(L, "bad argument #1 to 'tensor' (ragged nested table: a row at depth %d has %d "
                  "entries, expected %d)", depth + 1, (int)len, (int)shape[depth]);
  for (lua_Integer i = 1; i <= len; i++) {
    lua_geti(L, idx, i);
    if (depth + 1 < ndim) {
      if (!lua_istable(L, -1))
        luaL_error(L, "bad argument #1 to 'tensor' (ragged nested table: expected a table at depth %d, got %s)",
                   depth + 2, luaL_typename(L, -1));
      fill_from_table(L, lua_gettop(L), depth + 1, ndim, shape, out);
    } else {
      int ok;
      lua_Number v = lua_tonumberx(L, -1, &ok);
      if (!ok)
        luaL_error(L, "bad argument #1 to 'tensor' (expected numbers at depth %d, got %s)", depth + 1,
                   luaL_typename(L, -1));
      *(*out)++ = (float)v;
    }
    lua_pop(L, 1);
  }
}

static int t_tensor(lua_State *L) {
  if (df_totensor(L, 1)) { /* tensor(t) copies */
    df_tensor *src = df_totensor(L, 1);
    df_copy(df_newlike(L, src), src);
    return 1;
  }
  luaL_checktype(L, 1, LUA_TTABLE);
  int ndim = 0;
  int64_t shape[DF_MAXDIM];
  lua_pushvalue(L, 1);
  while (lua_istable(L, -1)) {
    if (ndim == DF_MAXDIM) luaL_argerror(L, 1, "nested table is deeper than 4 dimensions");
    shape[ndim++] = (int64_t)luaL_len(L, -1);
    lua_geti(L, -1, 1);
  }
  lua_settop(L, 1);
  df_tensor *t = df_newtensor(L, ndim, shape);
  float *p = t->data;
  fill_from_table(L, 1, 0, ndim, shape, &p);
  return 1;
}

/* ---- shape queries ---- */

static int t_shape(lua_State *L) {
  df_tensor *t = df_checktensor(L, 1);
  lua_createtable(L, t->ndim, 0);
  for (int i = 0; i < t->ndim; i++) {
    lua_pushinteger(L, t->shape[i]);
    lua_seti(L, -2, i + 1);
  }
  return 1;
}

static int t_size(lua_State *L) {
  df_tensor *t = df_checktensor(L, 1);
  if (lua_isnoneornil(L, 2)) return t_shape(L);
  lua_pushinteger(L, t->shape[df_checkdim(L, 2, t)]);
  return 1;
}

static int t_dim(lua_State *L) {
  lua_pushinteger(L, df_checktensor(L, 1)->ndim);
  return 1;
}

static int t_numel(lua_State *L) {
  lua_pushinteger(L, df_numel(df_checktensor(L, 1)));
  return 1;
}

static int t_len(lua_State *L) {
  lua_pushinteger(L, df_checktensor(L, 1)->shape[0]);
  return 1;
}

static int t_is_contiguous(lua_State *L) {
  lua_pushboolean(L, df_is_contiguous(df_checktensor(L, 1)));
  return 1;
}

static int t_stride(lua_State *L) {
  df_tensor *t = df_checktensor(L, 1);
  lua_createtable(L, t->ndim, 0);
  for (int i = 0; i < t->ndim; i++) {
    lua_pushinteger(L, t->stride[i]);
    lua_seti(L, -2, i + 1);
  }
  return 1;
}

/* ---- views and copies ---- */

/* view(shape): same storage, needs a contiguous tensor; reshape copies when it must.
 * One size may be -1 (inferred). */
static void target_shape(lua_State *L, const df_tensor *t, int *ndim, int64_t shape[DF_MAXDIM]) {
  int n = 0;
  int64_t known = 1, infer = -1;
  if (lua_istable(L, 2)) {
    n = (int)luaL_len(L, 2);
    luaL_argcheck(L, n >= 1 && n <= DF_MAXDIM, 2, "shape must have 1 to 4 dimensions");
    for (int i = 0; i < n; i++) {
      lua_geti(L, 2, i + 1);
      shape[i] = lua_tointeger(L, -1);
      if (!lua_isinteger(L, -1) && !(lua_isnumber(L, -1) && shape[i] == lua_tonumber(L, -1)))
        luaL_argerror(L, 2, "shape entries must be integers");
      lua_pop(L, 1);
    }
  } else {
    n = lua_gettop(L) - 1;
    luaL_argcheck(L, n >= 1 && n <= DF_MAXDIM, 2, "shape must have 1 to 4 dimensions");
    for (int i = 0; i < n; i++) shape[i] = luaL_checkinteger(L, 2 + i);
  }
  for (int i = 0; i < n; i++) {
    if (shape[i] == -1) {
      luaL_argcheck(L, infer < 0, 2, "only one size may be -1");
      infer = i;
    } else {
      luaL_argcheck(L, shape[i] >= 0, 2, "sizes must be non-negative (or -1 to infer one)");
      known *= shape[i];
    }
  }
  int64_t numel = df_numel(t);
  if (infer >= 0) {
    if (known == 0 || numel % known != 0) {
      char b[96];
      luaL_error(L, "bad argument #2 to 'view' (cannot infer -1 for %d elements from shape %s)", (int)numel,
                 df_shape_str(t, b, sizeof b));
    }
    shape[infer] = numel / known;
    known *= shape[infer];
  }
  if (known != numel) {
    df_tensor want;
    want.ndim = n;
    for (int i = 0; i < n; i++) want.shape[i] = shape[i];
    df_shape_mismatch(L, 2, "tensor", t, "new shape", &want);
  }
  *ndim = n;
}

static int t_view(lua_State *L) {
  df_tensor *t = df_checktensor(L, 1);
  df_tensor v = *t;
  target_shape(L, t, &v.ndim, v.shape);
  luaL_argcheck(L, df_is_contiguous(t), 1,
                "view needs a contiguous tensor (use reshape, which copies, or contiguous())");
  df_set_contiguous_strides(&v);
  df_pushview(L, 1, &v);
  return 1;
}

static int t_reshape(lua_State *L) {
  df_tensor *t = df_checktensor(L, 1);
  df_tensor v = *t;
  target_shape(L, t, &v.ndim, v.shape);
  if (df_is_contiguous(t)) {
    df_set_contiguous_strides(&v);
    df_pushview(L, 1, &v);
  } else {
    df_tensor *c = df_newtensor(L, v.ndim, v.shape);
    df_tensor src = *t; /* copy in logical order into the new dense shape */
    df_tensor flat = *c;
    flat.ndim = src.ndim;
    memcpy(flat.shape, src.shape, sizeof src.shape);
    df_set_contiguous_strides(&flat);
    df_copy(&flat, &src);
  }
  return 1;
}

static int t_contiguous(lua_State *L) {
  df_tensor *t = df_checktensor(L, 1);
  if (df_is_contiguous(t)) {
    lua_settop(L, 1);
    return 1;
  }
  df_copy(df_newlike(L, t), t);
  return 1;
}

static int t_clone(lua_State *L) {
  df_tensor *t = df_checktensor(L, 1);
  df_copy(df_newlike(L, t), t);
  return 1;
}

static int t_copy_(lua_State *L) {
  df_tensor *dst = df_checktensor(L, 1);
  df_tensor *src = df_checktensor(L, 2);
  if (!df_same_shape(dst, src)) {
    /* Allow a broadcastable source (e.g. a row copied into every row). */
    df_tensor bd, bs;
    int nd;
    int64_t sh[DF_MAXDIM];
    if (df_broadcast(dst, src, &bd, &bs, &nd, sh) != 0 || nd != dst->ndim ||
        memcmp(sh, dst->shape, sizeof(int64_t) * (size_t)nd) != 0)
      return df_shape_mismatch(L, 2, "destination", dst, "source", src);
    bs.ndim = dst->ndim;
    /* A broadcast source never overlaps the destination in a harmful way unless they share
     * storage; copy through a temporary to be safe. */
    df_tensor *tmp = df_newlike(L, dst);
    df_copy(tmp, &bs);
    df_copy(dst, tmp);
    lua_pop(L, 1);
  } else if (src->data == dst->data) {
    /* same first element: identical views when strides agree, else go through a copy */
    if (memcmp(src->stride, dst->stride, sizeof(int64_t) * (size_t)dst->ndim) != 0) {
      df_tensor *tmp = df_newlike(L, src);
      df_copy(tmp, src);
      df_copy(dst, tmp);
      lua_pop(L, 1);
    }
  } else {
    lua_getiuservalue(L, 1, 1);
    lua_getiuservalue(L, 2, 1);
    int shared = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    if (shared) {
      df_tensor *tmp = df_newlike(L, src);
      df_copy(tmp, src);
      df_copy(dst, tmp);
      lua_pop(L, 1);
    } else {
      df_copy(dst, src);
    }
  }
  lua_settop(L, 1);
  return 1;
}

static int t_fill_(lua_State *L) {
  df_fill(df_checktensor(L, 1), (float)luaL_checknumber(L, 2));
  lua_settop(L, 1);
  return 1;
}

static int t_zero_(lua_State *L) {
  df_fill(df_checktensor(L, 1), 0.0f);
  lua_settop(L, 1);
  return 1;
}

/* narrow(dim, start, length): 1-based start; shares storage. */
static int t_narrow(lua_State *L) {
  df_tensor *t = df_checktensor(L, 1);
  int d = df_checkdim(L, 2, t);
  lua_Integer start = luaL_checkinteger(L, 3);
  lua_Integer len = luaL_checkinteger(L, 4);
  if (start < 1 || len < 0 || start - 1 + len > t->shape[d])
    return luaL_error(L, "bad argument #3 to 'narrow' (range %d..%d is outside 1..%d of dimension %d)",
                      (int)start, (int)(start + len - 1), (int)t->shape[d], d + 1);
  df_tensor v = *t;
  v.data += (start - 1) * t->stride[d];
  v.shape[d] = len;
  df_pushview(L, 1, &v);
  return 1;
}

/* select(dim, i): drops dimension dim; a 1-d tensor's select gives a number. */
static int t_select(lua_State *L) {
  df_tensor *t = df_checktensor(L, 1);
  int d = df_checkdim(L, 2, t);
  lua_Integer i = luaL_checkinteger(L, 3);
  if (i < 0) i += t->shape[d] + 1;
  if (i < 1 || i > t->shape[d])
    return luaL_error(L, "bad argument #3 to 'select' (index %d out of range 1..%d of dimension %d)",
                      (int)luaL_checkinteger(L, 3), (int)t->shape[d], d + 1);
  if (t->ndim == 1) {
    lua_pushnumber(L, t->data[(i - 1) * t->stride[0]]);
    return 1;
  }
  df_tensor v = *t;
  v.data += (i - 1) * t->stride[d];
  for (int k = d; k < t->ndim - 1; k++) {
    v.shape[k] = t->shape[k + 1];
    v.stride[k] = t->stride[k + 1];
  }
  v.ndim--;
  df_pushview(L, 1, &v);
  return 1;
}

/* transpose(d1, d2) (defaults 1, 2) and t(): swapped strides, shares storage. */
static int t_transpose(lua_State *L) {
  df_tensor *t = df_checktensor(L, 1);
  int a = lua_isnoneornil(L, 2) ? 0 : df_checkdim(L, 2, t);
  int b = lua_isnoneornil(L, 3) ? 1 : df_checkdim(L, 3, t);
  luaL_argcheck(L, t->ndim >= 2 || lua_gettop(L) > 1, 1, "transpose needs at least 2 dimensions");
  df_tensor v = *t;
  v.shape[a] = t->shape[b]; v.stride[a] = t->stride[b];
  v.shape[b] = t->shape[a]; v.stride[b] = t->stride[a];
  df_pushview(L, 1, &v);
  return 1;
}

/* Gather rows (dimension 1) by a list of 1-based indices (table or 1-d tensor); copies. */
static int t_gather(lua_State *L) {
  df_tensor *t = df_checktensor(L, 1);
  int64_t n;
  df_tensor *it = df_totensor(L, 2);
  if (it) {
    luaL_argcheck(L, it->ndim == 1, 2, "index tensor must be 1-d");
    n = it->shape[0];
  } else {
    luaL_argexpected(L, lua_istable(L, 2), 2, "table or 1-d tensor of row indices");
    n = (int64_t)luaL_len(L, 2);
  }
  df_tensor outshape = *t;
  outshape.shape[0] = n;
  df_tensor *out = df_newtensor(L, t->ndim, outshape.shape);
  int64_t rowlen = df_numel(t) / (t->shape[0] ? t->shape[0] : 1);
  if (t->shape[0] == 0) rowlen = df_numel(out) / (n ? n : 1);
  for (int64_t r = 0; r < n; r++) {
    lua_Integer k;
    if (it) {
      double v = it->data[r * it->stride[0]];
      k = (lua_Integer)v;
      if ((double)k != v) return luaL_argerror(L, 2, lua_pushfstring(L, "index %d is not an integer", (int)r + 1));
    } else {
      lua_geti(L, 2, r + 1);
      int ok;
      k = lua_tointegerx(L, -1, &ok);
      lua_pop(L, 1);
      if (!ok) return luaL_argerror(L, 2, lua_pushfstring(L, "index %d is not an integer", (int)r + 1));
    }
    if (k < 0) k += t->shape[0] + 1;
    if (k < 1 || k > t->shape[0])
      return luaL_argerror(L, 2, lua_pushfstring(L, "row index %d out of range 1..%d", (int)k, (int)t->shape[0]));
    df_tensor src = *t, dst = *out;
    src.data += (k - 1) * t->stride[0];
    dst.data += r * rowlen;
    src.shape[0] = dst.shape[0] = 1;
    df_copy(&dst, &src);
  }
  return 1;
}

/* ---- element access ---- */

static int64_t elem_offset(lua_State *L, const df_tensor *t, int first) {
  int nargs = lua_gettop(L) - first + 1;
  if (nargs != t->ndim)
    luaL_error(L, "expected %d indices for a %d-d tensor, got %d", t->ndim, t->ndim, nargs);
  int64_t off = 0;
  for (int d = 0; d < t->ndim; d++) {
    lua_Integer i = luaL_checkinteger(L, first + d);
    if (i < 0) i += t->shape[d] + 1;
    if (i < 1 || i > t->shape[d])
      luaL_argerror(L, first + d, lua_pushfstring(L, "index %d out of range 1..%d", (int)i, (int)t->shape[d]));
    off += (i - 1) * t->stride[d];
  }
  return off;
}

static int t_get(lua_State *L) {
  df_tensor *t = df_checktensor(L, 1);
  lua_pushnumber(L, t->data[elem_offset(L, t, 2)]);
  return 1;
}

/* set(i, j, ..., value) */
static int t_set(lua_State *L) {
  df_tensor *t = df_checktensor(L, 1);
  float v = (float)luaL_checknumber(L, lua_gettop(L));
  lua_Number keep = v;
  lua_pop(L, 1);
  t->data[elem_offset(L, t, 2)] = (float)keep;
  lua_settop(L, 1);
  return 1;
}

static int t_item(lua_State *L) {
  df_tensor *t = df_checktensor(L, 1);
  if (df_numel(t) != 1) {
    char b[96];
    return luaL_error(L, "item() needs a one-element tensor, got %s", df_shape_str(t, b, sizeof b));
  }
  lua_pushnumber(L, t->data[0]);
  return 1;
}

/* ---- conversion ---- */

static void push_nested(lua_State *L, const df_tensor *t, int d, const float *p) {
  lua_createtable(L, (int)t->shape[d], 0);
  for (int64_t i = 0; i < t->shape[d]; i++) {
    if (d + 1 >= t->ndim || d + 1 >= DF_MAXDIM) lua_pushnumber(L, p[i * t->stride[d]]);
    else push_nested(L, t, d + 1, p + i * t->stride[d]);
    lua_seti(L, -2, i + 1);
  }
}

static int t_totable(lua_State *L) {
  df_tensor *t = df_checktensor(L, 1);
  luaL_checkstack(L, 2 * DF_MAXDIM + 4, "totable");
  push_nested(L, t, 0, t->data);
  return 1;
}

static void add_number(luaL_Buffer *b, double v) {
  char s[32];
  if (v == floor(v) && fabs(v) < 1e7) snprintf(s, sizeof s, "%.0f", v);
  else snprintf(s, sizeof s, "%.4g", v);
  luaL_addstring(b, s);
}

static void add_nested(luaL_Buffer *b, const df_tensor *t, int d, const float *p) {
  luaL_addchar(b, '{');
  for (int64_t i = 0; i < t->shape[d]; i++) {
    if (i) luaL_addstring(b, ", ");
    if (d + 1 >= t->ndim || d + 1 >= DF_MAXDIM) add_number(b, p[i * t->stride[d]]);
    else add_nested(b, t, d + 1, p + i * t->stride[d]);
  }
  luaL_addchar(b, '}');
}

/* Small tensors show their values; larger ones a summary. Never thousands of numbers. */
static int t_tostring(lua_State *L) {
  df_tensor *t = luaL_checkudata(L, 1, DF_TENSOR_MT);
  if (!t->data) {
    lua_pushstring(L, "diffuse.Tensor (closed)");
    return 1;
  }
  char sh[96], s[256];
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  snprintf(s, sizeof s, "diffuse.Tensor float32 %s%s", df_shape_str(t, sh, sizeof sh),
           df_is_contiguous(t) ? "" : " (strided view)");
  luaL_addstring(&b, s);
  int64_t n = df_numel(t);
  if (n > 0 && n <= 16) {
    luaL_addchar(&b, ' ');
    add_nested(&b, t, 0, t->data);
  } else if (n > 0) {
    double sum = 0, sq = 0, lo = INFINITY, hi = -INFINITY;
    int64_t nonfinite = 0;
    for (int64_t i = 0; i < n; i++) {
      double v = t->data[df_offset_of(t, i)];
      if (!isfinite(v)) { nonfinite++; continue; }
      sum += v; sq += v * v;
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    int64_t m = n - nonfinite;
    double mean = m ? sum / (double)m : NAN, var = m ? sq / (double)m - mean * mean : NAN;
    snprintf(s, sizeof s, "  mean=%.4g std=%.4g min=%.4g max=%.4g", mean, sqrt(var > 0 ? var : 0), lo, hi);
    luaL_addstring(&b, s);
    if (nonfinite) {
      snprintf(s, sizeof s, " non-finite=%lld", (long long)nonfinite);
      luaL_addstring(&b, s);
    }
  }
  luaL_pushresult(&b);
  return 1;
}

/* __gc and __close: drop the reference to storage; idempotent.  The bytes go back when the
 * last view of the storage is collected. */
static int t_release(lua_State *L) {
  df_tensor *t = luaL_checkudata(L, 1, DF_TENSOR_MT);
  t->data = NULL;
  lua_pushnil(L);
  lua_setiuservalue(L, 1, 1);
  return 0;
}

/* t[i] is the i-th row view (select(1, i)); other keys are methods. */
static int t_index(lua_State *L) {
  if (lua_type(L, 2) == LUA_TNUMBER) {
    lua_settop(L, 2);
    lua_pushinteger(L, 1);
    lua_insert(L, 2);
    return t_select(L);
  }
  lua_pushvalue(L, 2);
  lua_rawget(L, lua_upvalueindex(1));
  return 1;
}

void df_register(lua_State *L, int methods, const luaL_Reg *meth, int module, const luaL_Reg *mod) {
  if (meth) {
    lua_pushvalue(L, methods);
    luaL_setfuncs(L, meth, 0);
    lua_pop(L, 1);
  }
  if (mod) {
    lua_pushvalue(L, module);
    luaL_setfuncs(L, mod, 0);
    lua_pop(L, 1);
  }
}

void df_open_tensor(lua_State *L, int methods, int module) {
  static const luaL_Reg meth[] = {
    {"shape", t_shape}, {"size", t_size}, {"dim", t_dim}, {"numel", t_numel},
    {"stride", t_stride}, {"is_contiguous", t_is_contiguous},
    {"view", t_view}, {"reshape", t_reshape}, {"contiguous", t_contiguous}, {"clone", t_clone},
    {"copy_", t_copy_}, {"fill_", t_fill_}, {"zero_", t_zero_},
    {"narrow", t_narrow}, {"select", t_select}, {"transpose", t_transpose}, {"t", t_transpose},
    {"gather", t_gather}, {"get", t_get}, {"set", t_set}, {"item", t_item},
    {"totable", t_totable}, {"close", t_release},
    {NULL, NULL}};
  static const luaL_Reg mod[] = {
    {"zeros", t_zeros}, {"ones", t_ones}, {"full", t_full}, {"arange", t_arange},
    {"linspace", t_linspace}, {"tensor", t_tensor},
    {NULL, NULL}};
  df_register(L, methods, meth, module, mod);
  luaL_getmetatable(L, DF_TENSOR_MT);
  lua_pushvalue(L, methods);
  lua_pushcclosure(L, t_index, 1);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, t_release);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, t_release);
  lua_setfield(L, -2, "__close");
  lua_pushcfunction(L, t_len);
  lua_setfield(L, -2, "__len");
  lua_pushcfunction(L, t_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
}
