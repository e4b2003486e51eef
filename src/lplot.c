/* Bindings of the rasteriser (src/raster.c), wrapped by lua/diffuse/plot.lua. */
#include "ltensor.h"
#include "raster.h"

static void check_image(lua_State *L, int arg, const df_tensor *img) {
  char b[96];
  if (img->ndim != 3 || img->shape[0] != 3)
    luaL_argerror(L, arg, lua_pushfstring(L, "image must be (3, H, W), got %s", df_shape_str(img, b, sizeof b)));
}

/* colormap(values (H, W), lo, hi) -> (3, H, W) */
static int p_colormap(lua_State *L) {
  df_tensor *v = df_checktensor(L, 1);
  char b[96];
  if (v->ndim != 2)
    return luaL_argerror(L, 1, lua_pushfstring(L, "values must be (H, W), got %s", df_shape_str(v, b, sizeof b)));
  double lo = luaL_checknumber(L, 2), hi = luaL_checknumber(L, 3);
  int64_t shape[3] = {3, v->shape[0], v->shape[1]};
  df_tensor *img = df_newtensor(L, 3, shape);
  df_colormap(img, v, lo, hi);
  return 1;
}

/* scatter_(img, points (N, 2), x0, x1, y0, y1, radius, r, g, b, alpha) -> count drawn */
static int p_scatter(lua_State *L) {
  df_tensor *img = df_checktensor(L, 1);
  check_image(L, 1, img);
  df_tensor *pts = df_checktensor(L, 2);
  char b[96];
  if (pts->ndim != 2 || pts->shape[1] != 2)
    return luaL_argerror(L, 2, lua_pushfstring(L, "points must be (N, 2), got %s", df_shape_str(pts, b, sizeof b)));
  double x0 = luaL_checknumber(L, 3), x1 = luaL_checknumber(L, 4);
  double y0 = luaL_checknumber(L, 5), y1 = luaL_checknumber(L, 6);
  luaL_argcheck(L, x1 > x0, 4, "empty x range");
  luaL_argcheck(L, y1 > y0, 6, "empty y range");
  double radius = luaL_checknumber(L, 7);
  luaL_argcheck(L, radius >= 0 && radius <= 64, 7, "radius must be in [0, 64] pixels");
  float rgb[3] = {(float)luaL_checknumber(L, 8), (float)luaL_checknumber(L, 9), (float)luaL_checknumber(L, 10)};
  float alpha = (float)luaL_checknumber(L, 11);
  luaL_argcheck(L, alpha >= 0 && alpha <= 1, 11, "alpha must be in [0, 1]");
  lua_pushinteger(L, df_scatter(img, pts, x0, x1, y0, y1, radius, rgb, alpha));
  return 1;
}

void df_open_plot(lua_State *L, int methods, int module) {
  static const luaL_Reg fns[] = {{"colormap", p_colormap}, {"scatter_", p_scatter}, {NULL, NULL}};
  (void)methods;
  lua_newtable(L);
  luaL_setfuncs(L, fns, 0);
  lua_setfield(L, module, "_plot");
}
