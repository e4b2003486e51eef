-- Fitted solvers on a Gaussian mixture (2-D by default, or 64-D): DC-Solver's compensation
-- ratios and OLSS's least-squares coefficients, fitted on trajectories from seed 1 and scored
-- on held-out noise (500 samples of seed 2) by the RMS distance to the exact ODE solution,
-- next to the hand-designed solvers at the same NFE.  Prints the Markdown table of
-- docs/fitted-solvers.md; about 1.5 s in 2-D, 7 s in 64-D.
--
--   lua5.4 examples/fitted_solvers.lua [dim = 2 | 64]
local diffuse = require("diffuse")
local dcsolver = require("diffuse.search.dcsolver")
local olss = require("diffuse.search.olss")
local fitness = require("diffuse.search.fitness")

local dim = tonumber(arg and arg[1]) or 2
local sched = diffuse.schedule.vp_linear()
local gmm
if dim == 2 then
  gmm = diffuse.models.gmm { means = { { 2, 0 }, { -2, 1 }, { 0, -2 } }, stds = { 0.3, 0.5, 0.2 } }
else
  gmm = diffuse.models.gmm { means = diffuse.randn({ 8, dim }, { seed = 5 }),
    stds = { 0.3, 0.4, 0.5, 0.3, 0.2, 0.6, 0.4, 0.3 } }
end
local f = fitness.ode_error { model = gmm, schedule = sched, shape = { 500, dim }, seed = 2 }

print("| NFE | DDIM | DPM-Solver++(2M) | UniPC (bh2) | DC-Solver (10 traj.) | DC-Solver (50) | OLSS (10 traj.) | OLSS (100) |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
local fits = {}
for _, nfe in ipairs({ 4, 5, 6, 8, 10 }) do
  local function dc(n) return dcsolver.fit { model = gmm, schedule = sched, nfe = nfe, trajectories = n, dim = dim, seed = 1 } end
  local function ol(n) return olss.fit { model = gmm, schedule = sched, nfe = nfe, trajectories = n, dim = dim, seed = 1 } end
  local d10, d50 = dc(10), dc(50)
  fits[#fits + 1] = d50
  print(("| %d | %.4f | %.4f | %.4f | %.4f | %.4f | %.4f | %.4f |"):format(nfe,
    f { solver = "ddim", steps = nfe },
    f { solver = "dpmsolver++_2m", steps = nfe },
    f { solver = "plan", plan = diffuse.plan.unipc { schedule = sched, steps = nfe, variant = "bh2" } },
    f { solver = "plan", plan = dcsolver.plan(d10) },
    f { solver = "plan", plan = dcsolver.plan(d50) },
    f { solver = "olss", coefficients = ol(10) },
    f { solver = "olss", coefficients = ol(100) }))
end

-- Ratios for NFEs that were not fitted, from the cascade polynomial regression over the fits
-- with 50 trajectories.
local cpr = dcsolver.cpr { fits = fits }
for _, nfe in ipairs({ 7, 9 }) do
  local ratios = dcsolver.predict(cpr, nfe)
  print(("NFE %d, ratios from CPR: DC-Solver %.4f, UniPC (bh2) %.4f"):format(nfe,
    f { solver = "plan", plan = dcsolver.plan { schedule = sched, nfe = nfe, ratios = ratios } },
    f { solver = "plan", plan = diffuse.plan.unipc { schedule = sched, steps = nfe, variant = "bh2" } }))
end
