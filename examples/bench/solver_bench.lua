-- Solver overhead per step, excluding the model, against the lincomb bound; and samples per
-- second on a 2-D Gaussian mixture.
--
-- Overhead: each solver runs on a batch of 64 images of 3x128x128 (3.1M floats, 12.6 MB per
-- tensor, so every pass streams from memory and cache effects do not favour either side) with
-- a model that costs nothing (it returns a tensor computed once).  Every diffuse.lincomb call
-- the solver makes is recorded (its number of terms).  The bound is the time of replaying
-- exactly that sequence of lincomb calls on tensors of the same size, in the same loop
-- conditions (fresh output tensors, the garbage collector running): the ideal "one fused pass
-- per update" of the same solver.  The ratio (step time / bound) is everything else: tensor ops
-- outside lincomb, prediction conversions, Lua work.  Stochastic solvers also pay for their
-- noise draws (randn), reported in a separate column as a share of the step.
local core = require("diffuse.core")

-- Record lincomb calls before any solver module captures the function.
local real_lincomb = core.lincomb
local calls = {}
core.lincomb = function(ts, cs)
  calls[#calls + 1] = #ts
  return real_lincomb(ts, cs)
end
local real_randn = core.randn
local randn_time = 0
core.randn = function(...)
  local t0 = core.wtime()
  local z = real_randn(...)
  randn_time = randn_time + core.wtime() - t0
  return z
end

local diffuse = require("diffuse")
local now = diffuse.wtime

local N, D = 64, 3 * 128 * 128
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

local terms = {}
for k = 1, 8 do terms[k] = diffuse.randn({ N, D }, { seed = k }) end
local coefs = {}
for k = 1, 8 do coefs[k] = 0.5 / k end

-- Time of the recorded lincomb sequence, replayed.
local function replay(seq)
  local t0 = now()
  for _, k in ipairs(seq) do
    local ts, cs = {}, {}
    for j = 1, k do ts[j], cs[j] = terms[(j - 1) % 8 + 1], coefs[(j - 1) % 8 + 1] end
    real_lincomb(ts, cs)
  end
  return now() - t0
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
print(("%-40s %9s %9s %7s %9s %13s"):format("solver", "ms/step", "bound ms", "ratio", "randn %", "ratio-randn"))
local steps = 10
for _, c in ipairs(candidates) do
  local name, extra = c[1], c[2] or {}
  if diffuse.sampler.solvers[name] then
    local label = name
    for k, v in pairs(extra) do label = label .. (" %s=%s"):format(k, tostring(v)) end
    local o = { model = free_model, schedule = sched, solver = name, steps = steps, x = terms[1] }
    for k, v in pairs(extra) do o[k] = v end
    -- Solver runs and replays alternate; the best of each is kept (the machine is shared).
    local best_run, best_bound, best_nr, share = math.huge, math.huge, math.huge, 0
    for _ = 1, reps do
      local st = diffuse.sampler.new(o)
      st:step() -- warm-up step outside the timing (first steps may be lower order)
      calls, randn_time = {}, 0
      local n0 = st.i
      local t0 = now()
      st:run()
      local dt = (now() - t0) / (st.i - n0)
      local rt = randn_time / (st.i - n0)
      local bound = replay(calls) / (st.i - n0)
      if dt < best_run then best_run, share = dt, rt / dt end
      best_nr = math.min(best_nr, dt - rt)
      best_bound = math.min(best_bound, bound)
    end
    local best = { step = best_run, bound = best_bound, ratio = best_run / best_bound, randn = share,
      ratio_nr = best_nr / best_bound }
    print(("%-40s %9.3f %9.3f %7.2f %8.0f%% %13.2f"):format(label, best.step * 1e3, best.bound * 1e3, best.ratio,
      best.randn * 100, best.ratio_nr))
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
