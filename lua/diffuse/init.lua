-- diffuse: diffusion-model sampling laboratory.  The C core (diffuse.core) holds the tensor
-- type and kernels; this file gathers the Lua-level pieces into one module table.
local core = require("diffuse.core")

local M = {}
for k, v in pairs(core) do
  if k ~= "Tensor_methods" then M[k] = v end
end
M.Tensor = core.Tensor_methods
M._VERSION = "diffuse scm"
M.image = require("diffuse.image")
M.data = require("diffuse.data")

return M
