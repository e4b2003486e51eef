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
M.plot = require("diffuse.plot")
M.progress = require("diffuse.progress")
M.schedule = require("diffuse.schedule")
M.grid = require("diffuse.grid")
M.predict = require("diffuse.predict")
M.sampler = require("diffuse.sampler")
M.sample = M.sampler.sample
M.models = require("diffuse.models")
M.plan = require("diffuse.plan")
M.nn = require("diffuse.nn")
M.train = require("diffuse.train")
M.metrics = require("diffuse.metrics")

-- Solver modules register themselves with the sampler when loaded.
require("diffuse.solvers.exponential") -- ddim, dpmsolver(++), unipc, plan
require("diffuse.solvers.deis")        -- deis, ipndm
require("diffuse.solvers.sigma")       -- k-diffusion family
require("diffuse.solvers.ddpm")
require("diffuse.solvers.timeshift")
M.exact_ode = require("diffuse.solvers.adaptive").exact_ode -- and rk45
require("diffuse.search.olss")         -- olss (runs fitted coefficients; the fitting is in diffuse.search)

-- Layers above the sampler load on first use: diffuse.search (solver-schedule search),
-- diffuse.plans (searched plans shipped as data), diffuse.guidance, diffuse.steer.
local lazy = { search = "diffuse.search", plans = "diffuse.plans", guidance = "diffuse.guidance",
  steer = "diffuse.steer" }
setmetatable(M, { __index = function(t, k)
  local name = lazy[k]
  if not name then return nil end
  local mod = require(name)
  rawset(t, k, mod)
  return mod
end })

return M
