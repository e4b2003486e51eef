-- AutoDiffusion: evolutionary search of the 4 time steps of DDIM.
--
--   lua5.4 examples/autodiffusion_search.lua            -- the exact 2-D mixture (a second)
--   lua5.4 examples/autodiffusion_search.lua fashion    -- the shipped denoiser: times, then
--                                                          times + 4 skipped blocks (minutes)
--
-- Searches on noise seed 1 and reports on held-out seed 2.
local diffuse = require("diffuse")
local fitness = require("diffuse.search.fitness")
local autodiffusion = require("diffuse.search.autodiffusion")
local baselines = require("diffuse.search.baselines")

local which = arg and arg[1] or "gmm2d"
local f1, f2, extra
if which == "fashion" then
  f1, f2 = fitness.fashion{ n = 1000, seed = 1 }, fitness.fashion{ n = 2000, seed = 2 }
  extra = { population = 20, generations = 6 }
else
  f1, f2 = baselines.problems.fitness("gmm2d", 1), baselines.problems.fitness("gmm2d", 2)
  extra = { population = 30, generations = 10 }
end

local uniform = { solver = "ddim", steps = 4, spacing = "time_uniform" }
local best, score, info = autodiffusion{ fitness = f1, steps = 4, solver = "ddim", seed = 1,
  population = extra.population, generations = extra.generations, progress = which == "fashion" }
print(("%s, DDIM, 4 steps (held-out noise): uniform grid %.4f, searched %.4f  (%d candidates evaluated)"):format(
  which, f2(uniform), f2(info.run), info.evaluations))
print("searched times: " .. table.concat(best.times, ", "))

if which == "fashion" then
  local bj, _, ij = autodiffusion{ fitness = f1, steps = 4, stage = "joint", block_budget = 4, init = best, seed = 1,
    population = extra.population, generations = extra.generations, progress = true }
  print(("times + 4 skipped blocks (held-out): %.4f"):format(f2(ij.run)))
  for s = 1, 4 do print(("  step %d at t = %.4f skips blocks {%s}"):format(s, bj.times[s], table.concat(bj.skips[s], ", "))) end
end
