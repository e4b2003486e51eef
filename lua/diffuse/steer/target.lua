-- Exact targets to check steering against, and distances between sample sets.
--
-- A Gaussian mixture sum_k w_k N(mu_k, diag v_k) tilted by exp(lambda r(x)) is again a
-- Gaussian mixture when r is Gaussian-shaped, r = -1/2 sum_j a_j (x_j - m_j)^2, or linear,
-- r = w . x + b.  Per component and dimension (everything is diagonal):
--   gaussian: v' = v / (1 + lambda a v),  mu' = v' (mu / v + lambda a m),
--             log w' = log w + sum_j [ -1/2 log(1 + lambda a_j v_j)
--                                      - 1/2 lambda a_j (mu_j - m_j)^2 / (1 + lambda a_j v_j) ]
--   linear:   v' = v,  mu' = mu + lambda v w,  log w' = log w + lambda w . mu + lambda^2/2 sum_j v_j w_j^2
-- (then the weights are normalised).  target.tilt returns that mixture as a diffuse gmm, so
-- its exact samples (gmm:sample) are the truth the specs measure methods against.
--
-- Targets without a closed form (the classifier-free-guidance and annealed targets of the
-- Feynman-Kac correctors) are sampled exactly by rejection: target.rejection.
local core = require("diffuse.core")
local util = require("diffuse.util")
local models = require("diffuse.models")
local weights = require("diffuse.steer.weights")

local M = {}
local fail, is_tensor = util.fail, util.is_tensor
local log = math.log

-- tilt(gmm, reward, lambda) -> the tilted mixture (a diffuse gmm; labels kept).
function M.tilt(g, reward, lambda)
  local F = "steer.target.tilt"
  if getmetatable(g) ~= models.GMM then fail(F, "argument 1 must be a diffuse gmm", 2) end
  if type(reward) ~= "table" or (reward.kind ~= "gaussian" and reward.kind ~= "linear") then
    fail(F, "the reward must be rewards.gaussian{...} or rewards.linear{...} (the closed forms)", 2)
  end
  if type(lambda) ~= "number" or not (lambda >= 0 and lambda < math.huge) then
    fail(F, ("lambda must be a finite number >= 0, got %s"):format(tostring(lambda)), 2)
  end
  if reward.D ~= g.D then fail(F, ("the reward has dimension %d, the mixture %d"):format(reward.D, g.D), 2) end
  local means, vars = g.means:totable(), g.vars:totable()
  local new_means, new_vars, logw = {}, {}, {}
  for k = 1, g.K do
    local mu, v = means[k], vars[k]
    local m2, v2 = {}, {}
    local lw = g.weights[k] > 0 and log(g.weights[k]) or -math.huge
    for j = 1, g.D do
      if reward.kind == "gaussian" then
        local la = lambda * reward.precision[j]
        local d = 1 + la * v[j]
        v2[j] = v[j] / d
        m2[j] = v2[j] * (mu[j] / v[j] + la * reward.mean[j])
        lw = lw - 0.5 * log(d) - 0.5 * la * (mu[j] - reward.mean[j]) ^ 2 / d
      else
        local w = reward.w[j]
        v2[j] = v[j]
        m2[j] = mu[j] + lambda * v[j] * w
        lw = lw + lambda * w * mu[j] + 0.5 * lambda * lambda * v[j] * w * w
      end
    end
    new_means[k], new_vars[k], logw[k] = m2, v2, lw
  end
  local p = weights.normalize(logw)
  return models.gmm{ means = new_means, vars = new_vars, weights = p, labels = g.labels }
end

-- rejection{propose = function(n, seed) -> x (n rows), log_accept = function(x) -> list of
-- log acceptance probabilities (<= 0), n, seed = 0, max_rounds = 1000} -> n exact samples of
-- the target proposal * exp(log_accept) (normalised), and the acceptance rate.
function M.rejection(o)
  local F = "steer.target.rejection"
  util.check_options(F, o, { propose = true, log_accept = true, n = true, seed = true, max_rounds = true }, 2)
  if type(o.propose) ~= "function" or type(o.log_accept) ~= "function" then
    fail(F, "'propose' and 'log_accept' must be functions", 2)
  end
  local n = util.check_int(F, "n", o.n, 1, 2)
  local seed = util.check_int(F, "seed", o.seed or 0, 0, 2)
  local rounds = util.check_int(F, "max_rounds", o.max_rounds or 1000, 1, 2)
  local stream = weights.stream(seed, 1)
  local kept, tried = {}, 0
  local out
  for r = 1, rounds do
    local batch = math.max(n, 64)
    local x = o.propose(batch, seed * 7919 + r)
    local la = o.log_accept(x)
    local u = stream:uniforms(batch)
    for i = 1, batch do
      if la[i] > 0.0 then fail(F, ("log_accept returned %g > 0: the bound is wrong"):format(la[i]), 2) end
      tried = tried + 1
      if log(u[i]) < la[i] then kept[#kept + 1] = x:narrow(1, i, 1) end
      if #kept == n then break end
    end
    if #kept == n then
      local shape = x:shape()
      shape[1] = n
      out = core.zeros(shape)
      for i = 1, n do out:narrow(1, i, 1):copy_(kept[i]) end
      return out, n / tried
    end
  end
  fail(F, ("only %d of %d samples accepted after %d rounds (acceptance %.2g): raise max_rounds"):format(
    #kept, n, rounds, #kept / tried), 2)
end

-- Exact samples of the classifier-free-guidance target q_u^(1-w) q_c^w / Z of a labelled
-- mixture (q_c: the sub-mixture of class `cond`, q_u: the whole mixture), by rejection.
-- q_u >= p(c) q_c, so for w >= 1 the proposal q_c with acceptance (p(c) q_c / q_u)^(w-1) <= 1
-- is exact, and for 0 <= w < 1 the proposal q_u with acceptance (p(c) q_c / q_u)^w.
-- Returns n samples and the acceptance rate.
function M.cfg_samples(g, cond, scale, n, seed, max_rounds)
  local F = "steer.target.cfg_samples"
  if getmetatable(g) ~= models.GMM or not g.labels then fail(F, "argument 1 must be a labelled diffuse gmm", 2) end
  g:_group(F, cond, 2)
  if type(scale) ~= "number" or not (scale >= 0 and scale < math.huge) then
    fail(F, ("scale must be a finite number >= 0, got %s"):format(tostring(scale)), 2)
  end
  local pc = 0
  for k = 1, g.K do if g.labels[k] == cond then pc = pc + g.weights[k] end end
  local from_class = scale >= 1
  local power = from_class and scale - 1 or scale
  return M.rejection{ n = n, seed = seed or 0, max_rounds = max_rounds,
    propose = function(m, s) return (g:sample(m, { cond = from_class and cond or nil, seed = s })) end,
    log_accept = function(x)
      local lc, lu = g:log_prob(x, { cond = cond }):totable(), g:log_prob(x):totable()
      local out = {}
      for i = 1, #lc do out[i] = math.min(0, power * (log(pc) + lc[i] - lu[i])) end
      return out
    end }
end

-- Exact samples of the annealed target q^beta / Z of a mixture, beta >= 1, by rejection from
-- q with acceptance (q / q_max)^(beta - 1), where q_max = the largest peak density of a
-- component bounds q (a mixture is an average of its components).
function M.annealed_samples(g, beta, n, seed, max_rounds)
  local F = "steer.target.annealed_samples"
  if getmetatable(g) ~= models.GMM then fail(F, "argument 1 must be a diffuse gmm", 2) end
  if type(beta) ~= "number" or not (beta >= 1 and beta < math.huge) then
    fail(F, ("beta must be a finite number >= 1 (rejection from q needs q^(beta - 1) bounded), got %s"):format(
      tostring(beta)), 2)
  end
  local vars = g.vars:totable()
  local lmax = -math.huge
  for k = 1, g.K do
    local l = -0.5 * g.D * log(2 * math.pi)
    for j = 1, g.D do l = l - 0.5 * log(vars[k][j]) end
    if g.weights[k] > 0 and l > lmax then lmax = l end
  end
  return M.rejection{ n = n, seed = seed or 0, max_rounds = max_rounds or 100000,
    propose = function(m, s) return (g:sample(m, { seed = s })) end,
    log_accept = function(x)
      local lq = g:log_prob(x):totable()
      local out = {}
      for i = 1, #lq do out[i] = math.min(0, (beta - 1) * (lq[i] - lmax)) end
      return out
    end }
end

-- The standard checking problem of the specs and the mixture measurements: a 2-D mixture of
-- four well-separated Gaussians, a Gaussian reward that favours one side, lambda = 1, and its
-- exact tilted target.  Options override any part (means, stds, weights, reward, lambda).
-- Returns {gmm, reward, lambda, tilted, schedule, chain = function(opts) -> steer.chain}.
function M.mixture_problem(o)
  local F = "steer.target.mixture_problem"
  o = util.check_options(F, o, { means = true, stds = true, weights = true, reward = true, lambda = true,
    labels = true }, 2)
  local g = models.gmm{ means = o.means or { { -3, 0 }, { 3, 0 }, { 0, 3 }, { 0, -3 } },
    stds = o.stds or 0.7, weights = o.weights or { 0.4, 0.3, 0.2, 0.1 }, labels = o.labels or { 0, 1, 2, 3 } }
  local reward = o.reward or require("diffuse.steer.rewards").gaussian{ mean = { 2, 2 }, precision = 0.25 }
  local lambda = o.lambda or 1
  local sched = require("diffuse.schedule").vp_linear()
  local p = { gmm = g, reward = reward, lambda = lambda, tilted = M.tilt(g, reward, lambda), schedule = sched }
  function p.chain(co)
    co = co or {}
    local c = { model = g, schedule = sched, shape = { g.D }, steps = 50 }
    for k, v in pairs(co) do c[k] = v end
    return require("diffuse.steer.chain").new(c, 1)
  end
  return p
end

local function as_matrix(F, name, x)
  if not is_tensor(x) then fail(F, ("%s must be a tensor, got %s"):format(name, type(x)), 3) end
  local n = #x
  return x:reshape(n, x:numel() // math.max(n, 1)):contiguous()
end

-- Sliced 2-Wasserstein distance between two sample sets (rows): the root mean, over
-- `projections` random unit directions (seeded), of the squared W2 distance between the
-- projected 1-d distributions (compared at `levels` quantiles when the sizes differ).
function M.sliced_wasserstein(a, b, opts)
  local F = "steer.target.sliced_wasserstein"
  opts = util.check_options(F, opts, { projections = true, seed = true }, 2)
  local A, B = as_matrix(F, "a", a), as_matrix(F, "b", b)
  if A:size(2) ~= B:size(2) then
    fail(F, ("the sets have %d and %d values per row"):format(A:size(2), B:size(2)), 2)
  end
  if #A < 2 or #B < 2 then fail(F, "each set needs at least 2 rows", 2) end
  local P = util.check_int(F, "projections", opts.projections or 64, 1, 2)
  local seed = util.check_int(F, "seed", opts.seed or 0, 0, 2)
  local D = A:size(2)
  local dirs = core.randn({ D, P }, { seed = seed, draw = 3 })
  dirs = dirs:div(dirs:square():sum(1):sqrt())
  -- the sorting and the quantile comparison, per direction, run in C
  return math.sqrt(core._metrics.sorted_w2(A:matmul(dirs), B:matmul(dirs)))
end

-- Maximum mean discrepancy (unbiased MMD^2, Gaussian kernel) between two sample sets, with a
-- fixed bandwidth so values at different NFE compare: diffuse.metrics.mmd.
function M.mmd(a, b, bandwidth)
  local F = "steer.target.mmd"
  local A, B = as_matrix(F, "a", a), as_matrix(F, "b", b)
  return (require("diffuse.metrics").mmd(A, B, { bandwidth = bandwidth or "median" }))
end

return M
