-- Fitted solvers on the shipped Fashion-MNIST denoiser: DC-Solver (compensation ratios over
-- UniPC bh2) and OLSS (least-squares coefficients), fitted on trajectories from one set of
-- seeds and scored by FD (shipped classifier's features, 1000 class-balanced samples, test-set
-- reference) on held-out noise (seed 2), next to DDIM, DPM-Solver++(2M) and UniPC (bh2, order 2)
-- on the same logSNR grid and NFE; and the RMS distance to the exact solution of the sampling
-- ODE (200 held-out samples), which is what both methods are fitted to.  Prints a Markdown
-- table (the one in docs/fitted-solvers.md) and writes the fitted data as JSON to out_dir.
--
--   lua5.4 scripts/fitted_fashion.lua [out_dir = build/fitted] [nfes = 5,10]
local diffuse = require("diffuse")
local fitness = require("diffuse.search.fitness")
local dcsolver = require("diffuse.search.dcsolver")
local olss = require("diffuse.search.olss")
local json = require("diffuse.json")

local out_dir = arg and arg[1] or "build/fitted"
local nfes = {}
for v in ((arg and arg[2]) or "5,10"):gmatch("%d+") do nfes[#nfes + 1] = tonumber(v) end
os.execute("mkdir -p '" .. out_dir .. "'")

local model, info = assert(diffuse.models.load("fashion-denoiser"))
local sched = info.schedule
local f = fitness.fashion({ n = 1000, seed = 2, model = model }) -- held-out noise
local FIT_SEED = 11                                                 -- fitting noise

-- class-balanced labels for the fitting trajectories, as fitness.fashion uses
local function labels(n)
  local l = {}
  for i = 1, n do l[i] = (i - 1) % 10 end
  return diffuse.tensor(l)
end

local g = fitness.ode_error({ model = model, schedule = sched, shape = { 200, 784 }, seed = 2, cond = labels(200),
  rtol = 1e-5 })

local function write(name, data)
  local path = ("%s/%s.json"):format(out_dir, name)
  assert(require("diffuse.util").write_file(path, json.encode(data)))
end

local rows = {}
local function row(nfe, name, run, seconds)
  local fd, info_ = f(run)
  local err = g(run)
  rows[#rows + 1] = ("| %d | %s | %.3f | %.4f | %d | %s |"):format(nfe, name, fd, err, info_.nfe,
    seconds and ("%.0f s"):format(seconds) or "-")
  io.stderr:write(rows[#rows] .. "\n")
end

local t_all = diffuse.wtime()
for _, nfe in ipairs(nfes) do
  row(nfe, "DDIM", { solver = "ddim", steps = nfe })
  row(nfe, "DPM-Solver++(2M)", { solver = "dpmsolver++_2m", steps = nfe })
  row(nfe, "UniPC (bh2, order 2)", { solver = "plan", plan = diffuse.plan.unipc({ schedule = sched, steps = nfe, variant = "bh2" }) })

  for _, n in ipairs({ 10, 50 }) do
    local t0 = diffuse.wtime()
    local fit = dcsolver.fit({ model = model, schedule = sched, nfe = nfe, trajectories = n, shape = { 784 },
      cond = labels(n), seed = FIT_SEED, progress = ("dc-solver nfe %d, %d trajectories"):format(nfe, n) })
    local secs = diffuse.wtime() - t0
    write(("dcsolver-nfe%d-n%d"):format(nfe, n), fit)
    row(nfe, ("DC-Solver (%d trajectories)"):format(n), { solver = "plan", plan = dcsolver.plan(fit) }, secs)
  end

  for _, n in ipairs({ 100, 500 }) do
    local t0 = diffuse.wtime()
    local c = olss.fit({ model = model, schedule = sched, nfe = nfe, trajectories = n, shape = { 784 }, cond = labels(n),
      seed = FIT_SEED, progress = ("olss nfe %d, %d trajectories"):format(nfe, n) })
    local secs = diffuse.wtime() - t0
    write(("olss-nfe%d-n%d"):format(nfe, n), c)
    row(nfe, ("OLSS (%d trajectories)"):format(n), { solver = "olss", coefficients = c }, secs)
  end
end

print("| NFE | solver | FD (1000 samples) | RMS to the exact ODE solution (200 samples) | NFE used | fit time |")
print("| --- | --- | --- | --- | --- | --- |")
for _, r in ipairs(rows) do print(r) end
print(("total %.0f s"):format(diffuse.wtime() - t_all))
