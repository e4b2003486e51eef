/* luaopen_diffuse_core: the C half of the module.  lua/diffuse/init.lua wraps it. */
#include "ltensor.h"

__attribute__((visibility("default"))) int luaopen_diffuse_core(lua_State *L);

int luaopen_diffuse_core(lua_State *L) {
  lua_newtable(L); /* module */
  int module = lua_gettop(L);
  luaL_newmetatable(L, DF_TENSOR_MT);
  lua_newtable(L); /* methods */
  int methods = lua_gettop(L);
  df_open_tensor(L, methods, module);
  df_open_ops(L, methods, module);
  df_open_reduce(L, methods, module);
  df_open_rng(L, methods, module);
  df_open_blas(L, methods, module);
  df_open_safetensors(L, methods, module);
  df_open_image(L, methods, module);
  df_open_idx(L, methods, module);
  df_open_models(L, methods, module);
  df_open_plot(L, methods, module);
  df_open_nn(L, methods, module);
  df_open_metrics(L, methods, module);
  df_open_system(L, methods, module);
  df_open_proc(L, methods, module);
  lua_pushvalue(L, methods);
  lua_setfield(L, module, "Tensor_methods");
  lua_settop(L, module);
  return 1;
}
