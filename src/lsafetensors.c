/* diffuse.safetensors: load, save and info for safetensors files.  The parsing, validation
 * and writing live in safetensors.c; this file checks arguments, owns the open file through a
 * userdata (so a Lua error never leaks it) and builds the Lua tables. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "atomicfile.h"
#include "ltensor.h"
#include "safetensors.h"

#define ST_READER_MT "diffuse.safetensors.reader"

typedef struct reader {
  FILE *fp;
  df_st_header h;
} reader;

/* __gc and __close: idempotent. */
static int reader_close(lua_State *L) {
  reader *r = luaL_checkudata(L, 1, ST_READER_MT);
  if (r->fp) fclose(r->fp);
  r->fp = NULL;
  df_st_free(&r->h);
  return 0;
}

static void release(reader *r) {
  if (r->fp) fclose(r->fp);
  r->fp = NULL;
  df_st_free(&r->h);
}

/* Pushes nil and "path: message", returns 2. */
static int failure(lua_State *L, const char *path, const char *msg) {
  lua_pushnil(L);
  lua_pushfstring(L, "%s: %s", path, msg);
  return 2;
}

/* Pushes a reader userdata (always) and opens path, reading and validating its header.
 * Returns the reader, or NULL with a message in msg. */
static reader *open_reader(lua_State *L, const char *path, char *msg, size_t msgn) {
  reader *r = lua_newuserdatauv(L, sizeof *r, 0);
  memset(r, 0, sizeof *r);
  luaL_setmetatable(L, ST_READER_MT);
  r->fp = fopen(path, "rb");
  if (!r->fp) {
    snprintf(msg, msgn, "%s", strerror(errno));
    return NULL;
  }
  struct stat st;
  if (fstat(fileno(r->fp), &st) != 0) {
    snprintf(msg, msgn, "%s", strerror(errno));
    release(r);
    return NULL;
  }
  if (!S_ISREG(st.st_mode)) {
    snprintf(msg, msgn, "not a regular file");
    release(r);
    return NULL;
  }
  if (df_st_read_header(r->fp, (uint64_t)st.st_size, &r->h, msg, msgn)) {
    release(r);
    return NULL;
  }
  return r;
}

static void push_metadata(lua_State *L, const df_st_header *h) {
  lua_createtable(L, 0, (int)(h->nmeta < 1000000 ? h->nmeta : 1000000));
  for (size_t i = 0; i < h->nmeta; i++) {
    lua_pushlstring(L, h->meta[i].key, h->meta[i].key_len);
    lua_pushlstring(L, h->meta[i].value, h->meta[i].value_len);
    lua_rawset(L, -3);
  }
}

static int hint(size_t n) { return (int)(n < 1000000 ? n : 1000000); }

/* load(path) -> tensors, metadata | nil, message */
static int st_load(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  lua_settop(L, 1);
  char msg[768];
  reader *r = open_reader(L, path, msg, sizeof msg); /* index 2 */
  if (!r) return failure(L, path, msg);
  const df_st_header *h = &r->h;
  for (size_t i = 0; i < h->ntensors; i++) {
    const df_st_tensor *t = &h->tensors[i];
    if (t->ndim > DF_MAXDIM) {
      char nm[72];
      size_t n = t->name_len > 60 ? 60 : t->name_len;
      for (size_t k = 0; k < n; k++) nm[k] = ((unsigned char)t->name[k] < 0x20) ? '?' : t->name[k];
      nm[n] = '\0';
      snprintf(msg, sizeof msg, "tensor '%s' has %d dimensions; diffuse tensors have 1 to %d", nm,
               t->ndim, DF_MAXDIM);
      release(r);
      return failure(L, path, msg);
    }
  }
  luaL_checkstack(L, 8, "safetensors.load");
  lua_createtable(L, 0, hint(h->ntensors)); /* index 3 */
  for (size_t i = 0; i < h->ntensors; i++) {
    const df_st_tensor *t = &h->tensors[i];
    int64_t shape[DF_MAXDIM] = {1, 1, 1, 1};
    int ndim = t->ndim ? t->ndim : 1; /* a 0-dim scalar becomes shape (1) */
    for (int d = 0; d < t->ndim; d++) shape[d] = t->shape[d];
    lua_pushlstring(L, t->name, t->name_len);
    df_tensor *x = df_newtensor(L, ndim, shape);
    if (df_st_read_tensor(r->fp, h, t, x->data, msg, sizeof msg)) {
      release(r);
      return failure(L, path, msg);
    }
    lua_rawset(L, 3);
  }
  push_metadata(L, h); /* index 4 */
  release(r);
  return 2;
}

/* info(path) -> {tensors = {name = {dtype, shape, offsets}}, metadata = {...}} | nil, message */
static int st_info(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  lua_settop(L, 1);
  char msg[768];
  reader *r = open_reader(L, path, msg, sizeof msg);
  if (!r) return failure(L, path, msg);
  const df_st_header *h = &r->h;
  luaL_checkstack(L, 8, "safetensors.info");
  lua_createtable(L, 0, 4);
  lua_createtable(L, 0, hint(h->ntensors));
  for (size_t i = 0; i < h->ntensors; i++) {
    const df_st_tensor *t = &h->tensors[i];
    lua_pushlstring(L, t->name, t->name_len);
    lua_createtable(L, 0, 3);
    lua_pushstring(L, df_st_dtype_name(t->dtype));
    lua_setfield(L, -2, "dtype");
    lua_createtable(L, t->ndim, 0);
    for (int d = 0; d < t->ndim; d++) {
      lua_pushinteger(L, t->shape[d]);
      lua_rawseti(L, -2, d + 1);
    }
    lua_setfield(L, -2, "shape");
    lua_createtable(L, 2, 0);
    lua_pushinteger(L, (lua_Integer)t->begin);
    lua_rawseti(L, -2, 1);
    lua_pushinteger(L, (lua_Integer)t->end);
    lua_rawseti(L, -2, 2);
    lua_setfield(L, -2, "offsets");
    lua_rawset(L, -3);
  }
  lua_setfield(L, -2, "tensors");
  push_metadata(L, h);
  lua_setfield(L, -2, "metadata");
  lua_pushinteger(L, (lua_Integer)h->header_len);
  lua_setfield(L, -2, "header_size");
  lua_pushinteger(L, (lua_Integer)h->data_size);
  lua_setfield(L, -2, "data_size");
  release(r);
  return 1;
}

static int entry_cmp(const void *x, const void *y) {
  const df_st_entry *a = x, *b = y;
  size_t n = a->name_len < b->name_len ? a->name_len : b->name_len;
  int c = memcmp(a->name, b->name, n);
  if (c) return c;
  return a->name_len < b->name_len ? -1 : a->name_len > b->name_len;
}

static int kv_cmp(const void *x, const void *y) {
  const df_st_kv *a = x, *b = y;
  size_t n = a->key_len < b->key_len ? a->key_len : b->key_len;
  int c = memcmp(a->key, b->key, n);
  if (c) return c;
  return a->key_len < b->key_len ? -1 : a->key_len > b->key_len;
}

/* save(path, tensors, metadata[, opts]) -> true | nil, message */
static int st_save(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TTABLE);
  int dtype = DF_ST_F32;
  if (!lua_isnoneornil(L, 4)) {
    luaL_checktype(L, 4, LUA_TTABLE);
    lua_pushnil(L);
    while (lua_next(L, 4)) {
      if (lua_type(L, -2) != LUA_TSTRING || strcmp(lua_tostring(L, -2), "dtype") != 0) {
        lua_pushvalue(L, -2);
        return luaL_argerror(L, 4, lua_pushfstring(L, "unknown option '%s' (only 'dtype')", luaL_tolstring(L, -1, NULL)));
      }
      size_t dl;
      const char *d = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &dl) : NULL;
      dtype = d ? df_st_dtype_from_name(d, dl) : -1;
      if (dtype != DF_ST_F32 && dtype != DF_ST_F16 && dtype != DF_ST_BF16)
        return luaL_argerror(L, 4, "opts.dtype must be \"F32\", \"F16\" or \"BF16\"");
      lua_pop(L, 1);
    }
  }
  lua_settop(L, 4);

  size_t n = 0;
  lua_pushnil(L);
  while (lua_next(L, 2)) {
    if (lua_type(L, -2) != LUA_TSTRING)
      return luaL_argerror(L, 2, lua_pushfstring(L, "tensor names must be strings (got a %s key)",
                                                 luaL_typename(L, -2)));
    size_t len;
    const char *name = lua_tolstring(L, -2, &len);
    if (!df_totensor(L, -1))
      return luaL_argerror(L, 2, lua_pushfstring(L, "tensors['%s'] is not a live diffuse.Tensor (got %s)",
                                                 name, luaL_typename(L, -1)));
    if (!df_st_valid_utf8(name, len))
      return luaL_argerror(L, 2, "a tensor name is not valid UTF-8");
    if (len == 12 && memcmp(name, "__metadata__", 12) == 0)
      return luaL_argerror(L, 2, "'__metadata__' is reserved and cannot name a tensor");
    n++;
    lua_pop(L, 1);
  }
  df_st_entry *ents = lua_newuserdatauv(L, (n ? n : 1) * sizeof *ents, 0); /* index 5 */
  size_t k = 0;
  lua_pushnil(L);
  while (lua_next(L, 2)) {
    ents[k].name = lua_tolstring(L, -2, &ents[k].name_len); /* stays alive: a key of arg 2 */
    ents[k].t = df_totensor(L, -1);
    k++;
    lua_pop(L, 1);
  }
  qsort(ents, n, sizeof *ents, entry_cmp);

  size_t nm = 0;
  if (lua_istable(L, 3)) {
    lua_pushnil(L);
    while (lua_next(L, 3)) {
      if (lua_type(L, -2) != LUA_TSTRING)
        return luaL_argerror(L, 3, lua_pushfstring(L, "metadata keys must be strings (got a %s key)",
                                                   luaL_typename(L, -2)));
      if (lua_type(L, -1) != LUA_TSTRING)
        return luaL_argerror(L, 3, lua_pushfstring(L, "metadata value for '%s' must be a string (got %s)",
                                                   lua_tostring(L, -2), luaL_typename(L, -1)));
      size_t kl, vl;
      const char *key = lua_tolstring(L, -2, &kl), *val = lua_tolstring(L, -1, &vl);
      if (!df_st_valid_utf8(key, kl) || !df_st_valid_utf8(val, vl))
        return luaL_argerror(L, 3, "metadata keys and values must be valid UTF-8");
      nm++;
      lua_pop(L, 1);
    }
  }
  df_st_kv *kvs = lua_newuserdatauv(L, (nm ? nm : 1) * sizeof *kvs, 0); /* index 6 */
  k = 0;
  if (nm) {
    lua_pushnil(L);
    while (lua_next(L, 3)) {
      kvs[k].key = (char *)lua_tolstring(L, -2, &kvs[k].key_len);
      kvs[k].value = (char *)lua_tolstring(L, -1, &kvs[k].value_len);
      k++;
      lua_pop(L, 1);
    }
    qsort(kvs, nm, sizeof *kvs, kv_cmp);
  }

  /* From here on nothing raises: the temporary file is always committed or removed. */
  char err[768], werr[512];
  df_atomic_file f;
  if (df_atomic_open(&f, path, err, sizeof err)) {
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
  }
  if (df_st_write(f.fp, ents, n, kvs, nm, dtype, werr, sizeof werr)) {
    df_atomic_abort(&f);
    return failure(L, path, werr);
  }
  if (df_atomic_commit(&f, err, sizeof err)) {
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

void df_open_safetensors(lua_State *L, int methods, int module) {
  (void)methods;
  static const luaL_Reg fns[] = {{"load", st_load}, {"save", st_save}, {"info", st_info}, {NULL, NULL}};
  if (luaL_newmetatable(L, ST_READER_MT)) {
    lua_pushcfunction(L, reader_close);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, reader_close);
    lua_setfield(L, -2, "__close");
  }
  lua_pop(L, 1);
  lua_newtable(L);
  luaL_setfuncs(L, fns, 0);
  lua_setfield(L, module, "safetensors");
}
