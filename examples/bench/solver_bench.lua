-- Solver overhead per step, excluding the model, against the lincomb bound; and samples per
-- second on a 2-D Gaussian mixture.
--
-- Overhead: each solver runs on a batch of 64 images of 3x64x64 (786k floats per tensor) with
-- a model that costs nothing (it returns a tensor computed once).  Every diffuse.lincomb call
-- the step makes is recorded (its number of terms); the bound for the step is the time the
-- same lincomb calls take on their own (calibrated in this run for 1..8 terms).  The ratio
-- step time / bound is the solver's overhead over the ideal "one fused pass per update":
-- everything else (prediction conversions, extra tensor ops, Lua work) counts against it.
local core = require("diffuse.core")

-- Record lincomb calls before any solver module captures the function.
local real_lincomb = core.lincomb
local calls = {}
core.lincomb = function(ts, cs)
  calls[#calls + 1] = #ts
  return real_lincomb(ts, cs)
end

local diffuse = require("diffuse")
local now = diffuse.wtime

local N, D = 64, 3 * 64 * 64
local reps = tonumber(arg and arg[1]) or 5

local function best_of(n, f)
  local best = math.huge
  for _ = 1, n do
    local t0 = now()
    f()
    best = math.min(best, now() - t0)
  end
  return best
end

-- Time of one lincomb with k terms at this size (the bound's building block).
local terms = {}
for k = 1, 8 do terms[k] = diffuse.randn({ N, D }, { seed = k }) end
local lincomb_time = {}
for k = 1, 8 do
  local ts, cs = {}, {}
  for j = 1, k do ts[j], cs[j] = terms[j], 0.5 / j end
  lincomb_time[k] = best_of(reps * 3, function() real_lincomb(ts, cs) end)
end

-- A free model: the same x0 estimate every call (a scaled copy of one tensor made once).
local fixed = diffuse.randn({ N, D }, { seed = 99 }):mul(0.5)
local free_model = setmetatable({ predicts = "x0" }, { __call = function() return fixed end })

local sched = diffuse.schedule.vp_linear()
local candidates = {
  { "euler" }, { "heun" }, { "dpmpp_2m" }, { "lms" }, { "euler_ancestral" }, { "dpmpp_2m_sde" },
  { "ddim" }, { "dpmsolver++", { method = "multistep", order = 2 } },
  { "dpmsolver++", { method = "multistep", order = 3 } }, { "unipc", { order = 2 } },
  { "deis", { order = 3 } }, { "ipndm" },
}

print(("solver overhead per step: batch %dx%d floats, free model, best of %d runs"):format(N, D, reps))
print(("%-28s %10s %10s %8s"):format("solver", "ms/step", "bound ms", "ratio"))
local steps = 10
for _, c in ipairs(candidates) do
  local name, extra = c[1], c[2] or {}
  if diffuse.sampler.solvers[name] then
    local label = name
    for k, v in pairs(extra) do label = label .. (" %s=%s"):format(k, tostring(v)) end
    local o = { model = free_model, schedule = sched, solver = name, steps = steps, x = terms[1] }
    for k, v in pairs(extra) do o[k] = v end
    local per_step, bound = math.huge, 0
    for _ = 1, reps do
      local st = diffuse.sampler.new(o)
      -- warm-up step outside the timing (first steps may be lower order)
      st:step()
      calls = {}
      local t0 = now()
      local n0 = st.i
      st:run()
      local dt = (now() - t0) / (st.i - n0)
      if dt < per_step then
        per_step = dt
        bound = 0
        for _, k in ipairs(calls) do bound = bound + lincomb_time[math.min(k, 8)] end
        bound = bound / (st.i - n0)
      end
    end
    print(("%-28s %10.3f %10.3f %8.2f"):format(label, per_step * 1e3, bound * 1e3, per_step / bound))
  end
end

-- Samples per second on a 2-D mixture with an exact denoiser (model included).
if diffuse.models and diffuse.models.gmm then
  local gmm = diffuse.models.gmm{
    means = { { -1, -1 }, { 1, -1 }, { 0, 1 }, { 1.5, 1 } }, stds = { 0.2, 0.3, 0.25, 0.15 },
  }
  local batch = 100000
  print()
  print(("samples per second, 2-D mixture of 4, batch %d, exact denoiser included:"):format(batch))
  for _, c in ipairs({ { "dpmpp_2m", 10 }, { "euler", 20 }, { "unipc", 10 } }) do
    if diffuse.sampler.solvers[c[1]] then
      local dt = best_of(3, function()
        diffuse.sample{ model = gmm, schedule = sched, solver = c[1], steps = c[2], shape = { batch, 2 }, seed = 1 }
      end)
      print(("  %-12s %3d steps  %12.0f samples/s"):format(c[1], c[2], batch / dt))
    end
  end
end
