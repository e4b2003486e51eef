/* Lua binding of the PNG reader and writer (src/png.c): core._image.write / core._image.read,
 * exposed to users as diffuse.image.write / diffuse.image.read by lua/diffuse/image.lua. */
#include <stdlib.h>
#include <string.h>

#include "ltensor.h"
#include "pngio.h"

/* The value range an image is written from: "-1,1" (the model's space) or "0,1". */
static void check_range(lua_State *L, int arg, const char *s, double *lo, double *hi) {
  if (strcmp(s, "-1,1") == 0) { *lo = -1; *hi = 1; }
  else if (strcmp(s, "0,1") == 0) { *lo = 0; *hi = 1; }
  else luaL_argerror(L, arg, lua_pushfstring(L, "opts.range must be \"-1,1\" or \"0,1\", got \"%s\"", s));
}

/* Options table at arg: only `range` is known; anything else is a typo worth reporting. */
static void check_write_opts(lua_State *L, int arg, double *lo, double *hi) {
  *lo = -1; *hi = 1;
  if (lua_isnoneornil(L, arg)) return;
  luaL_argexpected(L, lua_istable(L, arg), arg, "table of options or nil");
  lua_pushnil(L);
  while (lua_next(L, arg)) {
    lua_pop(L, 1);
    if (lua_type(L, -1) != LUA_TSTRING || strcmp(lua_tostring(L, -1), "range") != 0) {
      const char *k = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : luaL_typename(L, -1);
      luaL_argerror(L, arg, lua_pushfstring(L, "unknown option '%s' (known: range)", k));
    }
  }
  lua_getfield(L, arg, "range");
  if (!lua_isnil(L, -1)) {
    if (lua_type(L, -1) != LUA_TSTRING)
      luaL_argerror(L, arg, lua_pushfstring(L, "opts.range must be a string, got %s", luaL_typename(L, -1)));
    check_range(L, arg, lua_tostring(L, -1), lo, hi);
  }
  lua_pop(L, 1);
}

/* The (C, H, W) view of the image at arg: (H, W) is one gray channel, (1, C, H, W) one image
 * of a batch.  Raises an argument error naming what is wrong. */
static void image_view(lua_State *L, int arg, const df_tensor *t, df_tensor *img) {
  char sh[96];
  *img = *t;
  if (t->ndim == 2) { /* (H, W): one gray channel */
    img->ndim = 3;
    img->shape[0] = 1; img->stride[0] = 0;
    img->shape[1] = t->shape[0]; img->stride[1] = t->stride[0];
    img->shape[2] = t->shape[1]; img->stride[2] = t->stride[1];
  } else if (t->ndim == 4) {
    if (t->shape[0] != 1)
      luaL_argerror(L, arg, lua_pushfstring(L, "a 4-d image must be (1, C, H, W), got %s",
                                            df_shape_str(t, sh, sizeof sh)));
    img->ndim = 3;
    for (int d = 0; d < 3; d++) { img->shape[d] = t->shape[d + 1]; img->stride[d] = t->stride[d + 1]; }
  } else if (t->ndim != 3) {
    luaL_argerror(L, arg, lua_pushfstring(L, "image must be (H, W), (C, H, W) or (1, C, H, W), got %s",
                                          df_shape_str(t, sh, sizeof sh)));
  }
  int64_t C = img->shape[0];
  if (C == 2)
    luaL_argerror(L, arg, lua_pushfstring(L, "2 channels (gray + alpha) cannot be written; "
                                             "C must be 1, 3 or 4, got %s", df_shape_str(t, sh, sizeof sh)));
  if (!(C == 1 || C == 3 || C == 4))
    luaL_argerror(L, arg, lua_pushfstring(L, "C must be 1 (gray), 3 (RGB) or 4 (RGBA), got %s",
                                          df_shape_str(t, sh, sizeof sh)));
  if (img->shape[1] < 1 || img->shape[2] < 1 || img->shape[1] > 0x7fffffff || img->shape[2] > 0x7fffffff)
    luaL_argerror(L, arg, lua_pushfstring(L, "height and width must be 1 to 2^31-1, got %s",
                                          df_shape_str(t, sh, sizeof sh)));
}

/* write(path, img[, opts]) -> true | nil, message */
static int image_write(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  df_tensor *t = df_checktensor(L, 2);
  double lo, hi;
  check_write_opts(L, 3, &lo, &hi);
  df_tensor img;
  image_view(L, 2, t, &img);
  char err[512];
  if (df_png_write(path, &img, lo, hi, err, sizeof err) != 0) {
    luaL_pushfail(L);
    lua_pushstring(L, err);
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* read(path) -> (C, H, W) tensor in [0, 1] | nil, message */
static int image_read(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  char err[512];
  df_png_info info;
  if (df_png_read(path, &info, NULL, err, sizeof err) != 0) {
    luaL_pushfail(L);
    lua_pushstring(L, err);
    return 2;
  }
  int64_t shape[3] = {info.channels, info.height, info.width};
  df_tensor *t = df_newtensor(L, 3, shape); /* anchored before decoding; raises only here */
  if (df_png_read(path, &info, t->data, err, sizeof err) != 0) {
    luaL_pushfail(L);
    lua_pushstring(L, err);
    return 2;
  }
  return 1;
}

static int pngbuf_gc(lua_State *L) {
  unsigned char **box = lua_touserdata(L, 1);
  free(*box);
  *box = NULL;
  return 0;
}

/* encode(img[, opts]) -> the PNG file image.write would write, as a string | nil, message */
static int image_encode(lua_State *L) {
  df_tensor *t = df_checktensor(L, 1);
  double lo, hi;
  check_write_opts(L, 2, &lo, &hi);
  df_tensor img;
  image_view(L, 1, t, &img);
  /* The encoded buffer is owned by a box on the stack until the string is made, so an error
   * while pushing it (out of memory) cannot leak it. */
  unsigned char **box = lua_newuserdatauv(L, sizeof *box, 0);
  *box = NULL;
  if (luaL_newmetatable(L, "diffuse.pngbuf")) {
    lua_pushcfunction(L, pngbuf_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  char err[512];
  size_t len;
  if (df_png_encode(&img, lo, hi, box, &len, err, sizeof err) != 0) {
    luaL_pushfail(L);
    lua_pushstring(L, err);
    return 2;
  }
  lua_pushlstring(L, (const char *)*box, len);
  free(*box);
  *box = NULL;
  return 1;
}

/* png_sizes(batch[, opts]) -> list of the PNG byte counts of batch's images, a (N, C, H, W)
 * or (N, H, W) tensor, each encoded as image.write would write it (the compressibility
 * reward).  Errors raise. */
static int image_png_sizes(lua_State *L) {
  df_tensor *t = df_checktensor(L, 1);
  double lo, hi;
  check_write_opts(L, 2, &lo, &hi);
  char sh[96];
  if (t->ndim != 3 && t->ndim != 4)
    return luaL_argerror(L, 1, lua_pushfstring(L, "batch must be (N, C, H, W) or (N, H, W), got %s",
                                               df_shape_str(t, sh, sizeof sh)));
  int64_t n = t->shape[0];
  lua_createtable(L, n > 0 && n < 1 << 24 ? (int)n : 0, 0);
  for (int64_t i = 0; i < n; i++) {
    df_tensor one = *t; /* image i: drop the batch dimension */
    one.ndim = t->ndim - 1;
    one.data = t->data + i * t->stride[0];
    for (int d = 0; d < one.ndim; d++) { one.shape[d] = t->shape[d + 1]; one.stride[d] = t->stride[d + 1]; }
    df_tensor img;
    image_view(L, 1, &one, &img);
    char err[512];
    unsigned char *buf;
    size_t len;
    if (df_png_encode(&img, lo, hi, &buf, &len, err, sizeof err) != 0)
      return luaL_error(L, "%s (image %d)", err, (int)(i + 1));
    free(buf);
    lua_pushinteger(L, (lua_Integer)len);
    lua_rawseti(L, -2, (lua_Integer)(i + 1));
  }
  return 1;
}

void df_open_image(lua_State *L, int methods, int module) {
  static const luaL_Reg fns[] = {{"write", image_write}, {"read", image_read}, {"encode", image_encode},
                                 {"png_sizes", image_png_sizes}, {NULL, NULL}};
  (void)methods;
  luaL_newlib(L, fns);
  lua_setfield(L, module, "_image");
}
