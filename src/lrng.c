/* Random tensors: diffuse.randn / rand, t:normal_ / t:uniform_, diffuse.Generator, and the
 * internal test hook diffuse._philox.  The arithmetic lives in rng.c. */
#include <stdint.h>
#include <string.h>

#include "ltensor.h"
#include "rng.h"

#define DF_GENERATOR_MT "diffuse.Generator"

typedef struct rng_opts {
  uint64_t seed, offset, draw;
} rng_opts;

typedef struct df_generator {
  uint64_t seed;
  uint64_t draw;
} df_generator;

/* An integer-valued number (2 and 2.0, not 1.5 or "2") or an error naming the option. */
static lua_Integer opt_integer(lua_State *L, int arg, const char *key) {
  int ok = 0;
  lua_Integer v = 0;
  if (lua_type(L, -1) == LUA_TNUMBER) v = lua_tointegerx(L, -1, &ok);
  if (!ok) {
    if (lua_type(L, -1) == LUA_TNUMBER)
      luaL_argerror(L, arg, lua_pushfstring(L, "option '%s' must be an integer, got %s", key,
                                            lua_tostring(L, -1)));
    luaL_argerror(L, arg, lua_pushfstring(L, "option '%s' must be an integer, got %s", key,
                                          luaL_typename(L, -1)));
  }
  return v;
}

/* Read the options table at arg (none or nil keeps the defaults in o).  Only the keys whose
 * flag is set are accepted; anything else (a typo such as `sed`) is an error. */
static void check_opts(lua_State *L, int arg, rng_opts *o, int allow_seed_draw) {
  static const char *const all = "seed, offset, draw";
  if (lua_isnoneornil(L, arg)) return;
  if (!lua_istable(L, arg)) {
    luaL_typeerror(L, arg, "table of options");
    return;
  }
  arg = lua_absindex(L, arg);
  lua_pushnil(L);
  while (lua_next(L, arg)) {
    const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
    if (k && strcmp(k, "offset") == 0) {
      lua_Integer v = opt_integer(L, arg, k);
      luaL_argcheck(L, v >= 0, arg, "option 'offset' must be a non-negative integer");
      o->offset = (uint64_t)v;
    } else if (k && allow_seed_draw && strcmp(k, "seed") == 0) {
      o->seed = (uint64_t)opt_integer(L, arg, k);
    } else if (k && allow_seed_draw && strcmp(k, "draw") == 0) {
      lua_Integer v = opt_integer(L, arg, k);
      luaL_argcheck(L, v >= 0 && (uint64_t)v <= DF_RNG_MAX_DRAW, arg,
                    "option 'draw' must be an integer in 0..2^32-1");
      o->draw = (uint64_t)v;
    } else {
      const char *expected = allow_seed_draw ? all : "offset; a generator supplies seed and draw";
      if (k)
        luaL_argerror(L, arg, lua_pushfstring(L, "unknown option '%s' (expected %s)", k, expected));
      luaL_argerror(L, arg, lua_pushfstring(L, "unexpected %s key in options (expected %s)",
                                            luaL_typename(L, -2), expected));
    }
    lua_pop(L, 1);
  }
}

static void fill_or_raise(lua_State *L, df_tensor *t, df_rng_dist dist, const rng_opts *o) {
  const char *err = df_rng_fill(t, dist, o->seed, o->offset, o->draw);
  if (err) luaL_error(L, "%s", err);
}

/* randn(shape[, opts]) / rand(shape[, opts]) */
static int new_random(lua_State *L, df_rng_dist dist) {
  int ndim;
  int64_t shape[DF_MAXDIM];
  int used = df_checkshape(L, 1, &ndim, shape);
  rng_opts o = {0, 0, 0};
  check_opts(L, 1 + used, &o, 1);
  df_tensor *t = df_newtensor(L, ndim, shape);
  fill_or_raise(L, t, dist, &o);
  return 1;
}

static int l_randn(lua_State *L) { return new_random(L, DF_RNG_NORMAL); }
static int l_rand(lua_State *L) { return new_random(L, DF_RNG_UNIFORM); }

/* t:normal_([opts]) / t:uniform_([opts]): in place, any strides, same values as randn/rand. */
static int fill_inplace(lua_State *L, df_rng_dist dist) {
  df_tensor *t = df_checktensor(L, 1);
  rng_opts o = {0, 0, 0};
  check_opts(L, 2, &o, 1);
  fill_or_raise(L, t, dist, &o);
  lua_settop(L, 1);
  return 1;
}

static int l_normal_(lua_State *L) { return fill_inplace(L, DF_RNG_NORMAL); }
static int l_uniform_(lua_State *L) { return fill_inplace(L, DF_RNG_UNIFORM); }

/* ---- Generator ---- */

static df_generator *check_gen(lua_State *L, int arg) {
  return luaL_checkudata(L, arg, DF_GENERATOR_MT);
}

static uint64_t check_seed(lua_State *L, int arg) {
  if (lua_isnoneornil(L, arg)) return 0;
  int ok = 0;
  lua_Integer v = 0;
  if (lua_type(L, arg) == LUA_TNUMBER) v = lua_tointegerx(L, arg, &ok);
  if (!ok) {
    if (lua_type(L, arg) == LUA_TNUMBER)
      return (uint64_t)luaL_argerror(L, arg, lua_pushfstring(L, "seed must be an integer, got %s",
                                                             lua_tostring(L, arg)));
    luaL_typeerror(L, arg, "integer seed");
  }
  return (uint64_t)v;
}

static df_generator *push_gen(lua_State *L, uint64_t seed, uint64_t draw) {
  df_generator *g = lua_newuserdatauv(L, sizeof(df_generator), 0);
  g->seed = seed;
  g->draw = draw;
  luaL_setmetatable(L, DF_GENERATOR_MT);
  return g;
}

/* diffuse.Generator([seed]) */
static int l_generator(lua_State *L) {
  push_gen(L, check_seed(L, 1), 0);
  return 1;
}

/* g:randn(shape[, {offset = n}]) uses draw = g:draw(), then advances it. */
static int gen_random(lua_State *L, df_rng_dist dist) {
  df_generator *g = check_gen(L, 1);
  int ndim;
  int64_t shape[DF_MAXDIM];
  int used = df_checkshape(L, 2, &ndim, shape);
  rng_opts o = {g->seed, 0, g->draw};
  check_opts(L, 2 + used, &o, 0);
  if (g->draw > DF_RNG_MAX_DRAW) return luaL_error(L, "generator has used all 2^32 draw numbers");
  df_tensor *t = df_newtensor(L, ndim, shape);
  fill_or_raise(L, t, dist, &o);
  g->draw++;
  return 1;
}

static int g_randn(lua_State *L) { return gen_random(L, DF_RNG_NORMAL); }
static int g_rand(lua_State *L) { return gen_random(L, DF_RNG_UNIFORM); }

static int g_draw(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)check_gen(L, 1)->draw);
  return 1;
}

static int g_set_draw(lua_State *L) {
  df_generator *g = check_gen(L, 1);
  lua_Integer k = luaL_checkinteger(L, 2);
  luaL_argcheck(L, k >= 0 && (uint64_t)k <= DF_RNG_MAX_DRAW, 2, "draw number must be in 0..2^32-1");
  g->draw = (uint64_t)k;
  lua_settop(L, 1);
  return 1;
}

static int g_seed(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)check_gen(L, 1)->seed);
  return 1;
}

static int g_clone(lua_State *L) {
  df_generator *g = check_gen(L, 1);
  push_gen(L, g->seed, g->draw);
  return 1;
}

static int g_tostring(lua_State *L) {
  df_generator *g = check_gen(L, 1);
  lua_pushfstring(L, "diffuse.Generator(seed=%I, draw=%I)", (lua_Integer)g->seed, (lua_Integer)g->draw);
  return 1;
}

/* ---- internal test hook: diffuse._philox({c0, c1, c2, c3}, {k0, k1}) -> 4 integers ---- */

static void check_words(lua_State *L, int arg, int n, uint32_t *w, const char *what) {
  luaL_argexpected(L, lua_istable(L, arg), arg, "table");
  luaL_argcheck(L, luaL_len(L, arg) == n, arg,
                lua_pushfstring(L, "%s must have %d entries", what, n));
  for (int i = 0; i < n; i++) {
    lua_geti(L, arg, i + 1);
    int ok;
    lua_Integer v = lua_tointegerx(L, -1, &ok);
    if (!ok || v < 0 || v > (lua_Integer)UINT32_MAX)
      luaL_argerror(L, arg, lua_pushfstring(L, "%s entry %d must be an integer in 0..2^32-1", what, i + 1));
    w[i] = (uint32_t)v;
    lua_pop(L, 1);
  }
}

static int l_philox(lua_State *L) {
  uint32_t ctr[4], key[2], out[4];
  check_words(L, 1, 4, ctr, "counter");
  check_words(L, 2, 2, key, "key");
  df_philox4x32_10(ctr, key, out);
  for (int i = 0; i < 4; i++) lua_pushinteger(L, (lua_Integer)out[i]);
  return 4;
}

void df_open_rng(lua_State *L, int methods, int module) {
  static const luaL_Reg meth[] = {
    {"normal_", l_normal_}, {"uniform_", l_uniform_}, {NULL, NULL}};
  static const luaL_Reg mod[] = {
    {"randn", l_randn}, {"rand", l_rand}, {"Generator", l_generator}, {"_philox", l_philox},
    {NULL, NULL}};
  static const luaL_Reg gen_meth[] = {
    {"randn", g_randn}, {"rand", g_rand}, {"draw", g_draw}, {"set_draw", g_set_draw},
    {"seed", g_seed}, {"clone", g_clone}, {NULL, NULL}};
  df_register(L, methods, meth, module, mod);
  luaL_newmetatable(L, DF_GENERATOR_MT);
  luaL_newlib(L, gen_meth);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, g_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
}
