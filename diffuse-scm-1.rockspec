rockspec_format = "3.0"
package = "diffuse"
version = "scm-1"
source = {
  url = "git+file://.",
}
description = {
  summary = "Diffusion-model sampling laboratory: schedules, solvers, guidance, search",
  detailed = [[
diffuse composes noise schedules, ODE/SDE solvers, guidance and reward-guided sampling
in Lua 5.4, with a C core (float32 tensors on OpenBLAS, PNG through libpng).
]],
  license = "MIT",
}
dependencies = {
  "lua >= 5.4, < 5.5",
}
external_dependencies = {
  PNG = { header = "png.h" },
  ZLIB = { header = "zlib.h" },
}
build = {
  type = "make",
  build_target = "all",
  build_variables = {
    CFLAGS = "-O3",
    LIBFLAG = "$(LIBFLAG)",
    LUA_INCDIR = "$(LUA_INCDIR)",
    LUA = "$(LUA)",
    BUILD = "build/rock",
  },
  install_variables = {
    INST_LIBDIR = "$(LIBDIR)",
    INST_LUADIR = "$(LUADIR)",
    BUILD = "build/rock",
  },
}
