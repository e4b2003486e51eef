/* Binding-side API shared by the src/l*.c files: how a diffuse.Tensor lives in Lua.
 * A tensor userdata holds a df_tensor view; its first user value is the storage userdata
 * (a plain GC-owned block), shared by every view of it, so the collector sees the bytes. */
#ifndef DIFFUSE_LTENSOR_H
#define DIFFUSE_LTENSOR_H

#include <lua.h>
#include <lauxlib.h>

#include "tensor.h"

#define DF_TENSOR_MT "diffuse.Tensor"

#if defined(__GNUC__)
#define DF_API __attribute__((visibility("hidden")))
#else
#define DF_API
#endif

/* The tensor at index arg; raises "bad argument #arg (diffuse.Tensor expected, got X)"
 * or "(tensor was closed)". */
DF_API df_tensor *df_checktensor(lua_State *L, int arg);
DF_API df_tensor *df_totensor(lua_State *L, int arg); /* NULL if not a live tensor */

/* Push a new dense tensor of the given shape (uninitialised data) and return it.
 * Raises a Lua error (never crashes) when the size overflows or memory runs out. */
DF_API df_tensor *df_newtensor(lua_State *L, int ndim, const int64_t *shape);
/* Push a dense tensor with the same shape as t. */
DF_API df_tensor *df_newlike(lua_State *L, const df_tensor *t);
/* Push a view sharing the storage of the tensor at index base. */
DF_API df_tensor *df_pushview(lua_State *L, int base, const df_tensor *view);

/* Read a shape given either as a table {2, 3} at arg or as integers arg, arg+1, ...
 * Returns the number of Lua arguments consumed (1 for a table). */
DF_API int df_checkshape(lua_State *L, int arg, int *ndim, int64_t shape[DF_MAXDIM]);
/* 1-based dimension argument (negative counts from the end) -> 0-based index. */
DF_API int df_checkdim(lua_State *L, int arg, const df_tensor *t);

/* luaL_argerror with "size mismatch: a is [2x3], b is [4x5]". */
DF_API int df_shape_mismatch(lua_State *L, int arg, const char *na, const df_tensor *a,
                             const char *nb, const df_tensor *b);

/* Set the functions of meth into the method table and of mod into the module table (either
 * list may be NULL). */
DF_API void df_register(lua_State *L, int methods, const luaL_Reg *meth, int module, const luaL_Reg *mod);

/* Add functions to the method table (at the top of the stack) / to the module table. Each
 * l*.c file exposes one such pair; lmodule.c calls them all. */
DF_API void df_open_tensor(lua_State *L, int methods, int module);
DF_API void df_open_ops(lua_State *L, int methods, int module);
DF_API void df_open_reduce(lua_State *L, int methods, int module);
DF_API void df_open_rng(lua_State *L, int methods, int module);
DF_API void df_open_blas(lua_State *L, int methods, int module);
DF_API void df_open_safetensors(lua_State *L, int methods, int module);
DF_API void df_open_image(lua_State *L, int methods, int module);
DF_API void df_open_idx(lua_State *L, int methods, int module);
DF_API void df_open_models(lua_State *L, int methods, int module);
DF_API void df_open_plot(lua_State *L, int methods, int module);
DF_API void df_open_nn(lua_State *L, int methods, int module);
DF_API void df_open_metrics(lua_State *L, int methods, int module);
DF_API void df_open_system(lua_State *L, int methods, int module);
DF_API void df_open_proc(lua_State *L, int methods, int module);

#endif
