-- diffuse.search: solver-schedule search.  Submodules load on first use, so a module added to
-- lua/diffuse/search/ needs no edit here when it is listed below.
--
--   diffuse.search.s3{...}            S3 over plans (search/s3.lua)
--   diffuse.search.space              the decision space: random plans, mutation, crossover
--   diffuse.search.archive            the JSON-lines archive of evaluated candidates
--   diffuse.search.predictor          the pairwise-ranking MLP that screens candidates
--   diffuse.search.fitness            ODE-error and Fréchet-distance fitness
--   diffuse.search.autodiffusion, .baselines, .parallel, .dcsolver, .olss
local M = {}

local submodules = {
  s3 = true, space = true, archive = true, predictor = true, fitness = true, autodiffusion = true, baselines = true,
  parallel = true, dcsolver = true, olss = true,
}
M.submodules = submodules

setmetatable(M, { __index = function(t, k)
  if not submodules[k] then return nil end
  local mod = require("diffuse.search." .. k)
  rawset(t, k, mod)
  return mod
end })

return M
