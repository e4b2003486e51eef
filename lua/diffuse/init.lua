-- diffuse: diffusion-model sampling laboratory.  The C core (diffuse.core) holds the tensor
-- type and kernels; this file gathers the Lua-level pieces into one module table.
local core = require("diffuse.core")

local M = {}
-- Public C functions; names starting with "_" are internal (used by the Lua wrappers and by
-- specs through require("diffuse.core")).
for k, v in pairs(core) do
  if k ~= "Tensor_methods" and k:sub(1, 1) ~= "_" then M[k] = v end
end
M.Tensor = core.Tensor_methods
M._VERSION = "diffuse scm"
M.image = require("diffuse.image")
M.data = require("diffuse.data")
M.schedule = require("diffuse.schedule")
M.grid = require("diffuse.grid")
M.predict = require("diffuse.predict")
M.sampler = require("diffuse.sampler")
M.sample = M.sampler.sample
-- solver modules register themselves with the sampler
require("diffuse.solvers.sigma")
require("diffuse.solvers.ddpm")

return M
