-- Guidance on a 2-D labelled Gaussian mixture (exact model): conditional sampling, classifier-free
-- guidance, the guidance interval, Adaptive Guidance, LinearAG and CADS, all with 10 steps of
-- DPM-Solver++(2M) on the same noise.  Prints, per method, the mean probability of the asked
-- class p(y | x) under the exact mixture, the spread of the samples and the network evaluations
-- per sample; writes one PNG with a panel per method (samples over the class-1 density).
--
--   lua5.4 examples/guidance.lua [out_dir]        (default build/examples)
local diffuse = require("diffuse")
local G = diffuse.guidance

local out_dir = arg and arg[1] or "build/examples"
os.execute("mkdir -p '" .. out_dir .. "'")

-- Two overlapping classes: class 0 around (-0.6, 0), class 1 around (0.6, 0) and (0, 1.2).
local gmm = diffuse.models.gmm{ means = { { -0.6, 0 }, { 0.6, 0 }, { 0, 1.2 } }, stds = { 0.5, 0.5, 0.4 },
  labels = { 0, 1, 1 } }
local schedule = diffuse.schedule.vp_linear()
local n = 1000
local cond = diffuse.full({ n }, 1)
local base = { schedule = schedule, solver = "dpmpp_2m", steps = 10, shape = { n, 2 }, seed = 5, cond = cond }
local function run(model)
  local o = { model = model }
  for k, v in pairs(base) do o[k] = v end
  return diffuse.sample(o)
end

local fit = G.linear_ag_fit{ model = gmm, scale = 3, run = { schedule = schedule, solver = "dpmpp_2m", steps = 10,
  shape = { 200, 2 }, seed = 99, cond = diffuse.full({ 200 }, 1) } }

local methods = {
  { "conditional", gmm },
  { "CFG 3", G.cfg{ model = gmm, scale = 3 } },
  { "CFG 3, interval (0.3, 3]", G.cfg{ model = gmm, scale = 3, interval = { 0.3, 3 } } },
  { "CFG 3, rescale 0.7", G.cfg{ model = gmm, scale = 3, rescale = 0.7 } },
  { "AG 3, gamma 0.99", G.ag{ model = gmm, scale = 3, gamma = 0.99 } },
  { "LinearAG 3", G.linear_ag{ model = gmm, scale = 3, fit = fit, start = 6 } },
  { "CADS 3", G.cads{ model = gmm, scale = 3, tau1 = 0.6, tau2 = 0.9, noise_scale = 0.25 } },
}

local view = { xlim = { -2.5, 2.5 }, ylim = { -1.8, 3.2 } }
local density = diffuse.plot.density(function(pts) return gmm:log_prob(pts, { cond = 1 }) end,
  { xlim = view.xlim, ylim = view.ylim, size = 160 })
local panels = {}
local data_point = { alpha = 1, sigma = 0, t = 0 }
print(("%-28s %10s %8s %8s"):format("method", "p(y=1|x)", "spread", "NFE/row"))
for _, m in ipairs(methods) do
  local name, model = m[1], m[2]
  local x = run(model)
  local p1 = gmm:class_prob(x, data_point):select(2, 2):mean()
  local spread = math.sqrt(x:var(1, false, 0):sum())
  local per = type(model) == "table" and model.stats and model:stats().per_sample or base.steps
  print(("%-28s %10.3f %8.3f %8.2f"):format(name, p1, spread, per))
  local img = density:clone()
  diffuse.plot.scatter_(img, x, { xlim = view.xlim, ylim = view.ylim, radius = 1, alpha = 0.6 })
  panels[#panels + 1] = img
end
local path = out_dir .. "/guidance.png"
assert(diffuse.plot.write(path, diffuse.plot.panels(panels, { ncol = 4 })))
print("wrote " .. path .. " (panels in the order above)")
