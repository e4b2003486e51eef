-- The denoising chain every steering method walks: a model, its schedule, a time grid
-- t_1 > t_2 > ... > t_(n+1), and the stochastic kernel p(x_(i+1) | x_i) between grid points.
--
-- The kernel is DDIM with stochasticity eta (Song et al.), written for any schedule through
-- alpha, sigma and lambda = log(alpha / sigma):
--     x_(i+1) = alpha' x0 + sqrt(sigma'^2 - s^2) eps + s z,
--     s = eta sigma' sqrt(1 - exp(-2 h)),   h = lambda' - lambda,
-- where x0, eps are the model's estimates at x_i.  eta = 1 is the posterior q(x' | x, x0) of
-- the forward process (DDPM's ancestral step; SDE-DPM-Solver-1 in data prediction), the kernel
-- the tilted-target methods need; eta = 0 is deterministic DDIM, the map from noise to sample
-- that noise search needs.  A step is split in two so that methods can batch and share work:
--     chain:denoise(x, i)            one model call for all rows of x at t_i -> x0, eps
--     chain:move(x, x0, eps, i)      the kernel's draw at t_(i+1) (no model call)
-- so M candidates of one parent cost one evaluation of the parent, and K particles or tree
-- nodes at the same depth cost one model call.
--
-- Accounting: nfe counts rows evaluated by the model (a batch of 8 rows is 8 NFE, the usual
-- unit of inference-time scaling papers), calls counts model calls; reward_evals and
-- reward_calls likewise for rewards (chain:reward).  Noise comes from the counter-based
-- generator: every row drawn gets a fresh row number of the chain's stream, so a run is
-- reproducible from its seed and the order of its calls, and no two draws share noise.
local core = require("diffuse.core")
local grid = require("diffuse.grid")
local predict = require("diffuse.predict")
local schedule_mod = require("diffuse.schedule")
local util = require("diffuse.util")

local M = {}
local Chain = {}
Chain.__index = Chain
M.Chain = Chain

local is_tensor, fail, shape_str = util.is_tensor, util.fail, util.shape_str
local sqrt, expm1 = math.sqrt, schedule_mod.expm1

local options = {
  model = true, schedule = true, predicts = true, steps = true, spacing = true, times = true,
  t_start = true, t_end = true, rho = true, eta = true, cond = true, seed = true, shape = true,
}

-- chain.new{model, steps | times, shape, schedule = model.schedule, predicts = model.predicts,
--           spacing = "time_uniform", t_start, t_end, rho, eta = 1, cond, seed = 0}
-- shape: the shape of one sample without the batch dimension, e.g. {2} or {1, 28, 28}.
function M.new(o, level)
  local F = "steer.chain"
  level = (level or 1) + 1
  if type(o) ~= "table" then fail(F, "options table expected", level) end
  util.check_options(F, o, options, level)
  local model = o.model
  if model == nil then fail(F, "'model' is required (a diffuse model or a function(x, point, cond))", level) end
  local callable = type(model) == "function" or (type(model) == "table" or type(model) == "userdata")
    and getmetatable(model) and getmetatable(model).__call
  if not callable then fail(F, ("'model' must be callable, got %s"):format(type(model)), level) end
  local predicts = o.predicts or (type(model) == "table" and model.predicts) or nil
  if not predict.kinds[predicts or ""] then
    fail(F, ("say what the model predicts: predicts = 'eps' | 'x0' | 'v' | 'score' | 'flow' (got %s)"):format(
      tostring(predicts)), level)
  end
  local sched = o.schedule or (type(model) == "table" and model.schedule) or nil
  if getmetatable(sched) ~= schedule_mod.Schedule then
    fail(F, "'schedule' must be a diffuse schedule (the model carries none)", level)
  end
  local eta = o.eta == nil and 1 or o.eta
  if type(eta) ~= "number" or not (eta >= 0 and eta <= 1) then
    fail(F, ("'eta' must be a number in [0, 1], got %s"):format(tostring(eta)), level)
  end
  local seed = util.check_int(F, "seed", o.seed or 0, 0, level)
  local shape = o.shape
  if shape == nil and type(model) == "table" and model.D then shape = { model.D } end
  if type(shape) ~= "table" or #shape < 1 or #shape > 3 then
    fail(F, "'shape' must list one sample's sizes, e.g. {2} or {1, 28, 28}", level)
  end
  for i, v in ipairs(shape) do
    if math.type(v) ~= "integer" or v < 1 then fail(F, ("shape[%d] must be a positive integer"):format(i), level) end
  end
  local times
  if o.times ~= nil then
    local ok, t = pcall(grid.times, sched, { times = o.times })
    if not ok then fail(F, tostring(t), level) end
    times = t
  else
    if math.type(o.steps) ~= "integer" or o.steps < 1 then
      fail(F, "give 'steps' (a positive integer) or a list of 'times'", level)
    end
    local ok, t = pcall(grid.times, sched, { spacing = o.spacing or "time_uniform", steps = o.steps,
      t_start = o.t_start, t_end = o.t_end, rho = o.rho })
    if not ok then fail(F, tostring(t), level) end
    times = t
  end
  local self = setmetatable({
    model = model, predicts = predicts, schedule = sched, times = times, n = #times - 1, eta = eta,
    cond = o.cond, seed = seed, shape = shape, points = {},
    nfe = 0, calls = 0, reward_evals = 0, reward_calls = 0, rows_drawn = 0,
  }, Chain)
  for i, t in ipairs(times) do self.points[i] = sched:point(t) end
  return self
end

M.options = options

-- The chain of a method's options: o.chain (a chain, forked so the run has its own counters;
-- o.seed, when given, replaces its seed) or the chain options given inline (model, steps, ...).
-- own: the method's own option names; any other key is an error naming the valid ones.
function M.from_options(F, o, own, level)
  level = (level or 1) + 1
  if type(o) ~= "table" then fail(F, "options table expected", level) end
  local valid = { chain = true, seed = true }
  for k in pairs(own) do valid[k] = true end
  if o.chain == nil then for k in pairs(options) do valid[k] = true end end
  util.check_options(F, o, valid, level)
  if o.chain ~= nil then
    if getmetatable(o.chain) ~= Chain then fail(F, "'chain' must be a steer.chain", level) end
    local seed = o.seed ~= nil and util.check_int(F, "seed", o.seed, 0, level) or nil
    return o.chain:fork(seed)
  end
  local co = {}
  for k in pairs(options) do co[k] = o[k] end
  local ok, c = pcall(M.new, co, 1)
  if not ok then error((tostring(c):gsub("^steer%.chain", F)), level) end
  return c
end

-- A new chain with the same model and grid but its own counters and noise stream (seed).
function Chain:fork(seed)
  local c = setmetatable({}, Chain)
  for k, v in pairs(self) do c[k] = v end
  c.nfe, c.calls, c.reward_evals, c.reward_calls, c.rows_drawn = 0, 0, 0, 0, 0
  c.seed = seed or self.seed
  return c
end

-- Standard normal noise for `rows` new rows (fresh row numbers of this chain's stream).
function Chain:noise(rows)
  local shape = { rows }
  for i, v in ipairs(self.shape) do shape[i + 1] = v end
  local z = core.randn(shape, { seed = self.seed, offset = self.rows_drawn, draw = 1 })
  self.rows_drawn = self.rows_drawn + rows
  return z
end

-- x at t_1: sigma(t_1) * N(0, I) for `rows` rows (scale: an extra factor, e.g. 1/sqrt(beta)
-- for an annealed prior).
function Chain:prior(rows, scale)
  util.check_int("steer.chain:prior", "rows", rows, 1, 2)
  return self:noise(rows):mul_(self.points[1].sigma * (scale or 1))
end

local function check_step(self, fname, x, i, level)
  if not is_tensor(x) then fail(fname, ("x must be a tensor, got %s"):format(type(x)), level + 1) end
  if x:dim() ~= #self.shape + 1 then
    fail(fname, ("x is %s, expected (N, %s)"):format(shape_str(x), table.concat(self.shape, ", ")), level + 1)
  end
  if math.type(i) ~= "integer" or i < 1 or i > self.n then
    fail(fname, ("step must be an integer in 1..%d, got %s"):format(self.n, tostring(i)), level + 1)
  end
end

-- The model at (x, t_i): x0 and eps for every row, one call; counts #x NFE.  cond defaults to
-- the chain's.  (A model may also be asked with another cond, e.g. unconditionally.)
function Chain:denoise(x, i, cond)
  check_step(self, "steer.chain:denoise", x, i, 2)
  local p = self.points[i]
  if cond == nil then cond = self.cond end
  local out = self.model(x, p, cond, { chain = self, step = i })
  if not is_tensor(out) then
    fail("steer.chain:denoise", ("the model returned %s, not a tensor (at t = %.6g)"):format(type(out), p.t), 2)
  end
  self.nfe = self.nfe + #x
  self.calls = self.calls + 1
  return predict.to_x0_eps(self.predicts, out, x, p)
end

-- Coefficients of the kernel from t_i to t_(i+1): x' = cx0 x0 + ceps eps + cz z.
function Chain:coefficients(i, eta)
  eta = eta or self.eta
  local b, t = self.points[i], self.points[i + 1]
  local cz = 0
  if eta > 0 and t.sigma > 0 and b.sigma > 0 then
    local h = t.lambda - b.lambda
    cz = eta * t.sigma * sqrt(-expm1(-2 * h))
  end
  local ceps = sqrt(math.max(t.sigma * t.sigma - cz * cz, 0))
  return t.alpha, ceps, cz
end

-- The kernel's draw at t_(i+1) from the estimates at t_i.  z: the noise to use (a tensor like
-- x), else fresh rows of the chain's stream.  eta overrides the chain's.
function Chain:move(x, x0, eps, i, z, eta)
  check_step(self, "steer.chain:move", x, i, 2)
  local ca, ce, cz = self:coefficients(i, eta)
  if cz == 0 then return core.lincomb({ x0, eps }, { ca, ce }) end
  z = z or self:noise(#x)
  return core.lincomb({ x0, eps, z }, { ca, ce, cz })
end

-- One full step: x at t_(i+1), and the estimates x0, eps at t_i.
function Chain:step(x, i, cond)
  local x0, eps = self:denoise(x, i, cond)
  return self:move(x, x0, eps, i), x0, eps
end

-- Steps i_from .. i_to (inclusive) from x at t_(i_from): x at t_(i_to + 1) and the last x0.
function Chain:run(x, i_from, i_to, cond)
  i_to = i_to or self.n
  local x0
  for i = i_from, i_to do x, x0 = self:step(x, i, cond) end
  return x, x0
end

-- reward(x) values for the rows of x as a Lua list, counted (rows and calls).  ctx is passed
-- on to the reward (look-ahead rewards read ctx.x_t and ctx.point).
function Chain:reward(reward, x, ctx)
  local values = require("diffuse.steer.rewards").evaluate(reward, x, ctx)
  self.reward_evals = self.reward_evals + #x
  self.reward_calls = self.reward_calls + 1
  return values
end

-- The look-ahead value of the rows of x at step i: r(x0_hat(x)), the reward of the model's
-- data estimate (one model call, #x NFE, one reward call); also returns x0 and eps, so a method
-- that then moves the rows reuses the evaluation.
function Chain:value(reward, x, i, cond)
  local x0, eps = self:denoise(x, i, cond)
  return self:reward(reward, x0, { x_t = x, point = self.points[i], step = i }), x0, eps
end

-- The counters, as every method returns them.
function Chain:stats()
  return { nfe = self.nfe, calls = self.calls, reward_evals = self.reward_evals, reward_calls = self.reward_calls }
end

function Chain:__tostring()
  return ("diffuse steer chain: %d steps, eta %g, t %.4g -> %.4g, shape (%s), nfe %d"):format(self.n, self.eta,
    self.times[1], self.times[#self.times], table.concat(self.shape, ", "), self.nfe)
end

return M
