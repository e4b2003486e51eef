-- A 2-D labelled Gaussian mixture sampled with several solvers at 5 and 10 model evaluations.
-- For each budget it writes one PNG with a panel per solver (samples in white over the true
-- density) and prints each solver's error against the exact ODE solution from the same start.
--
--   lua5.4 examples/gmm2d.lua [out_dir]        (default build/examples)
local diffuse = require("diffuse")

local out_dir = arg and arg[1] or "build/examples"
os.execute("mkdir -p '" .. out_dir .. "'")

-- Eight components on a ring, alternating between two classes (labels 0 and 1).
local means, labels = {}, {}
for k = 1, 8 do
  local a = 2 * math.pi * (k - 1) / 8
  means[k] = { 1.5 * math.cos(a), 1.5 * math.sin(a) }
  labels[k] = (k - 1) % 2
end
local gmm = diffuse.models.gmm{ means = means, stds = { 0.12, 0.12, 0.12, 0.12, 0.12, 0.12, 0.12, 0.12 },
  labels = labels }
local schedule = diffuse.schedule.vp_linear()
local n = 2000
local x_start = diffuse.randn({ n, 2 }, { seed = 7 }):mul(schedule:sigma(schedule.t_start))

-- Solvers to compare: name, options, and how many model evaluations one step costs.
local solvers = {
  { "ddim", {} }, { "euler", {} }, { "heun", {} }, { "dpmpp_2m", {} },
  { "dpmsolver++", { method = "multistep", order = 3 } }, { "unipc", { variant = "bh2", order = 3 } },
  { "deis", { order = 3 } }, { "ipndm", {} },
}

-- The exact ODE solution for each final time a solver ends at (computed once per time).
local exact = {}
local function exact_at(t_end)
  if not exact[t_end] then
    exact[t_end] = diffuse.exact_ode(gmm, schedule, x_start, { t_end = t_end, rtol = 1e-6, atol = 1e-6 })
  end
  return exact[t_end]
end

-- The largest number of steps whose run fits the NFE budget.
local function run_within(name, opts, budget)
  for steps = budget, 1, -1 do
    local o = { model = gmm, schedule = schedule, solver = name, steps = steps, x = x_start }
    for k, v in pairs(opts) do o[k] = v end
    local st = diffuse.sampler.new(o)
    local x = st:run()
    if st.nfe <= budget then return x, st end
  end
end

local view = { xlim = { -2.5, 2.5 }, ylim = { -2.5, 2.5 } }
local density = diffuse.plot.density(function(pts) return gmm:log_prob(pts) end,
  { xlim = view.xlim, ylim = view.ylim, size = 160 })

for _, budget in ipairs({ 5, 10 }) do
  local panels, names = {}, {}
  print(("NFE %d: solver (steps) and error against the exact ODE solution (RMS, max)"):format(budget))
  for _, s in ipairs(solvers) do
    local name, opts = s[1], s[2]
    if diffuse.sampler.solvers[name] then
      local x, st = run_within(name, opts, budget)
      local ref = exact_at(st.times[#st.times])
      local diff = x:sub(ref)
      local rms = math.sqrt(diff:square():mean())
      print(("  %-26s %2d steps  %2d NFE   rms %.4f   max %.4f"):format(
        name .. (opts.order and (" order " .. opts.order) or ""), st.n, st.nfe, rms, diff:abs():max()))
      local img = density:clone()
      diffuse.plot.scatter_(img, x, { xlim = view.xlim, ylim = view.ylim, radius = 1, alpha = 0.6 })
      panels[#panels + 1] = img
      names[#names + 1] = name
    else
      print(("  %-26s (not available in this build)"):format(name))
    end
  end
  local path = ("%s/gmm2d_nfe%d.png"):format(out_dir, budget)
  assert(diffuse.plot.write(path, diffuse.plot.panels(panels, { ncol = 4 })))
  print(("wrote %s: panels left to right, top to bottom: %s"):format(path, table.concat(names, ", ")))
end

-- Class-conditional sampling: cond = 1 keeps the four components labelled 1.
local x1 = diffuse.sample{ model = gmm, schedule = schedule, solver = "deis", steps = 10, x = x_start, cond = 1 }
local probs = gmm:class_prob(x1, schedule:point(1e-3))
print(("class 1 samples: mean p(y = 1 | x) = %.3f"):format(probs:select(2, 2):mean()))
