-- Fitness functions for the searches: a candidate is a table of sample{} options (a plan, a
-- time grid, a wrapped model, ...) merged over a fixed base run, and the score is lower-better.
--
-- The noise is fixed by a seed, so two candidates are compared on the same starting points;
-- `f:with_seed(s)` gives the same fitness on other noise (search on one seed set, report on
-- another: the held-out evaluation).
--
--   f = fitness.ode_error{model, schedule, shape = {n, d}, seed = 1, cond, rtol = 1e-7}
--   f = fitness.fd{model, features = fn(x) -> feats, reference = stats, n = 1000, seed = 1,
--                  dim = 784, cond = "balanced" | tensor | nil, clamp = {-1, 1}, batch = 500}
--   f = fitness.fashion{n = 1000, seed = 1}      -- the shipped denoiser, classifier, test set
--   f = fitness.fn(function(run) return score, info end)
--
--   score, info = f(run)       -- info.nfe, info.seconds (and info.samples when keep = true)
local core = require("diffuse.core")
local util = require("diffuse.util")

local M = {}
local F = "search.fitness"

local Fitness = {}
Fitness.__index = Fitness
Fitness.__call = function(self, run) return self.evaluate(run or {}) end
M.Fitness = Fitness

local merged = util.merge

local function check_run(run, level)
  if type(run) ~= "table" then util.fail(F, ("a candidate run is a table of sample{} options, got %s"):format(type(run)), level + 1) end
end

-- Samples for a candidate, in batches (rows of the noise are independent of the batch split:
-- the counter-based generator draws row i from (seed, i) whatever the batch).
local function generate(base, run, n, batch)
  local sample = require("diffuse").sample
  local out, nfe
  for first = 1, n, batch do
    local count = math.min(batch, n - first + 1)
    local o = merged(base, run)
    o.offset = first - 1
    o.shape = { count, table.unpack(base.shape, 2) }
    if base.cond and util.is_tensor(base.cond) then o.cond = base.cond:narrow(1, first, count) end
    local x, info = sample(o)
    if count == n then return x, info.nfe end
    if not out then
      local shape = x:shape()
      shape[1] = n
      out = core.zeros(shape)
    end
    out:narrow(1, first, count):copy_(x)
    nfe = info.nfe
  end
  return out, nfe
end

-- RMS distance to the exact ODE solution from the same starting noise (rk45 in lambda,
-- tight tolerances), computed once per seed.
function M.ode_error(o)
  o = util.check_options(F .. ".ode_error", o, { model = true, schedule = true, shape = true, seed = true, cond = true,
    rtol = true, predicts = true, t_start = true, t_end = true }, 2)
  if o.model == nil then util.fail(F .. ".ode_error", "'model' is required", 2) end
  if type(o.shape) ~= "table" then util.fail(F .. ".ode_error", "'shape' must be a list like {n, dim}", 2) end
  local diffuse = require("diffuse")
  local sched = o.schedule or o.model.schedule
  local seed = o.seed or 1
  local x_start = core.randn(o.shape, { seed = seed, draw = 0 }):mul(sched:sigma(o.t_start or sched.t_start))
  local self = setmetatable({ kind = "ode_error", opts = o, seed = seed }, Fitness)
  local exact
  local function reference(run)
    if not exact then
      exact = diffuse.exact_ode(o.model, sched, x_start, { rtol = o.rtol or 1e-7, atol = o.rtol or 1e-7,
        t_start = run.times and run.times[1] or o.t_start, t_end = o.t_end, predicts = o.predicts, cond = o.cond })
    end
    return exact
  end
  self.evaluate = function(run)
    check_run(run, 3)
    local t0 = core.wtime()
    local opts = merged({ model = o.model, schedule = sched, predicts = o.predicts, cond = o.cond, x = x_start }, run)
    local x, info = diffuse.sample(opts)
    local err = diffuse.metrics.ode_error(x, reference(run))
    return err.rms, { nfe = info.nfe, seconds = core.wtime() - t0, max = err.max }
  end
  function self:with_seed(s)
    local c = {}
    for k, v in pairs(o) do c[k] = v end
    c.seed = s
    return M.ode_error(c)
  end
  return self
end

-- Fréchet distance of generated samples to reference statistics, in a feature space.
function M.fd(o)
  local FN = F .. ".fd"
  o = util.check_options(FN, o, { model = true, schedule = true, features = true, reference = true, n = true,
    seed = true, dim = true, shape = true, cond = true, clamp = true, batch = true, predicts = true, keep = true }, 2)
  if o.model == nil then util.fail(FN, "'model' is required", 2) end
  if type(o.features) ~= "function" then util.fail(FN, "'features' must be a function(x) -> feature tensor", 2) end
  if type(o.reference) ~= "table" or o.reference.mu == nil then
    util.fail(FN, "'reference' must be statistics from diffuse.metrics.stats or reference_stats", 2)
  end
  local diffuse = require("diffuse")
  local n = o.n or 1000
  local shape = o.shape or { n, o.dim or 784 }
  shape[1] = n
  local cond = o.cond
  if cond == "balanced" then
    local labels = {}
    for i = 1, n do labels[i] = (i - 1) % 10 end
    cond = core.tensor(labels)
  end
  local base = { model = o.model, schedule = o.schedule or o.model.schedule, predicts = o.predicts, seed = o.seed or 1,
    shape = shape, cond = cond }
  local self = setmetatable({ kind = "fd", opts = o, seed = base.seed, n = n }, Fitness)
  self.evaluate = function(run)
    check_run(run, 3)
    local t0 = core.wtime()
    local x, nfe = generate(base, run, n, o.batch or 500)
    if o.clamp ~= false then
      local c = o.clamp or { -1, 1 }
      x = x:clamp(c[1], c[2])
    end
    local fd = diffuse.metrics.frechet_distance(diffuse.metrics.stats(o.features(x)), o.reference)
    if fd ~= fd then fd = math.huge end
    return fd, { nfe = nfe, seconds = core.wtime() - t0, samples = o.keep and x or nil }
  end
  function self:with_seed(s)
    local c = {}
    for k, v in pairs(o) do c[k] = v end
    c.seed = s
    return M.fd(c)
  end
  return self
end

-- The shipped Fashion-MNIST denoiser scored by FD in the shipped classifier's features
-- against the test set (class-balanced labels, samples clamped to [-1, 1]).
function M.fashion(o)
  o = util.check_options(F .. ".fashion", o, { n = true, seed = true, batch = true, model = true, keep = true }, 2)
  local diffuse = require("diffuse")
  local model = o.model or assert(diffuse.models.load("fashion-denoiser"))
  local fr = assert(diffuse.metrics.fashion_reference())
  local f = M.fd{ model = model, features = fr.features, reference = fr.reference, n = o.n or 1000, seed = o.seed or 1,
    dim = 784, cond = "balanced", batch = o.batch, keep = o.keep }
  f.classifier = fr.classifier
  return f
end

-- Any Lua function of a candidate run.
function M.fn(fn)
  if type(fn) ~= "function" then util.fail(F .. ".fn", "expected a function(run) -> score", 2) end
  local self = setmetatable({ kind = "fn" }, Fitness)
  self.evaluate = function(run)
    local t0 = core.wtime()
    local score, info = fn(run)
    if type(score) ~= "number" then util.fail(F, ("the fitness function returned %s, not a number"):format(type(score)), 3) end
    info = info or {}
    info.seconds = info.seconds or core.wtime() - t0
    return score, info
  end
  function self:with_seed() return self end
  return self
end

return M
