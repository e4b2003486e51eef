/* Lua binding of the IDX reader (src/idx.c): core._idx.read, used by lua/diffuse/data.lua. */
#include "idx.h"
#include "ltensor.h"

/* read(path[, limit[, scale[, offset]]]) -> tensor, count | nil, message
 * The tensor has the file's dimensions with the first cut to min(limit, count) items and
 * holds byte * scale + offset (scale 1, offset 0 by default); count is the file's item count. */
static int idx_read(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  lua_Integer limit = luaL_optinteger(L, 2, -1);
  luaL_argcheck(L, lua_isnoneornil(L, 2) || limit >= 1, 2, "limit must be a positive integer");
  double scale = luaL_optnumber(L, 3, 1.0), offset = luaL_optnumber(L, 4, 0.0);
  char err[512];
  df_idx_info info;
  if (df_idx_read(path, &info, 0, NULL, 0, 0, err, sizeof err) != 0) {
    luaL_pushfail(L);
    lua_pushstring(L, err);
    return 2;
  }
  int64_t shape[DF_IDX_MAXDIM];
  for (int d = 0; d < info.ndim; d++) shape[d] = info.dims[d];
  if (limit >= 1 && limit < shape[0]) shape[0] = limit;
  df_tensor *t = df_newtensor(L, info.ndim, shape); /* anchored before reading */
  if (df_idx_read(path, &info, shape[0], t->data, scale, offset, err, sizeof err) != 0) {
    luaL_pushfail(L);
    lua_pushstring(L, err);
    return 2;
  }
  lua_pushinteger(L, info.dims[0]);
  return 2;
}

void df_open_idx(lua_State *L, int methods, int module) {
  static const luaL_Reg fns[] = {{"read", idx_read}, {NULL, NULL}};
  (void)methods;
  luaL_newlib(L, fns);
  lua_setfield(L, module, "_idx");
}
