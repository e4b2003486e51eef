-- FK steering (Singhal et al. 2025, "A General Framework for Inference-time Scaling and
-- Steering of Diffusion Models"): K particles walk the stochastic chain together and are
-- resampled at chosen steps by potentials built from intermediate rewards, so that compute
-- flows to the particles whose look-ahead reward is high.
--
-- The target.  With x_1 .. x_(n+1) the chain's states and G_j the potential at the j-th
-- potential step (a function of the particle's path), SMC with weights prod_j G_j samples
--     p(x_1 .. x_(n+1)) prod_j G_j / Z
-- as K -> inf.  The final correction G_F = exp(lambda r(x_(n+1))) / prod_j G_j makes the whole
-- product exp(lambda r(x_(n+1))), so the samples follow the tilted distribution
--     p(x) exp(lambda r(x)) / Z
-- whatever the intermediate potentials were: they only decide where particles are duplicated
-- or dropped on the way (the variance), not the limit.
--
-- Potentials, with r_j = r(x0_hat(x at step s_j)) the look-ahead reward at the j-th potential
-- step s_1 < s_2 < ... (r_0 = 0), and the final correction that restores the tilted target
-- (everything in log space):
--     diff   log G_j = lambda (r_j - r_(j-1))           final  lambda (r(x) - r_m)
--     max    log G_j = lambda max_(k <= j) r_k          final  lambda r(x) - sum_j log G_j
--     sum    log G_j = lambda sum_(k <= j) r_k          final  lambda r(x) - sum_j log G_j
--     plain  log G_j = lambda r_j                       final  lambda (r(x) - sum_j r_j)
-- (diff telescopes: its product is lambda r_m, so its correction is the last difference.)
-- "k <= j" runs over the steps already visited, i.e. the noisier times s >= t of the paper.
-- The per-particle sum of log G along the particle's ancestry is carried through resampling,
-- so the correction is exact for every particle.
--
-- Order within step i: one batched denoise of all K particles (x0_hat, eps); at a potential
-- step, the look-ahead reward of that x0_hat (no extra model call), the potential, the weight
-- update and possibly resampling of (x, x0_hat, eps); then the kernel's move, so that the copies
-- of a duplicated particle get different noise at once.  Weights multiply between resampling
-- events (with an ESS trigger, a potential step may leave them unresampled).
local util = require("diffuse.util")
local chain_mod = require("diffuse.steer.chain")
local rewards_mod = require("diffuse.steer.rewards")
local weights = require("diffuse.steer.weights")

local M = {}
local fail = util.fail
local inf = math.huge

-- Stream keys (weights.stream): one per purpose, so resampling draws never share numbers.
local KEY_RESAMPLE, KEY_FINAL = 7101, 7102

M.potentials = { diff = true, max = true, sum = true, plain = true }

local own = {
  reward = true, lambda = true, particles = true, potential = true, resampling = true,
  resample_steps = true, ess_threshold = true, final = true, samples = true, seed = true, progress = true,
}

-- The set of potential steps from resample_steps = {start = i0, stop = i1, interval = k} or a
-- list of step numbers; default every step 1..n.  Returns a set and the sorted list.
function M.steps_of(F, spec, n, level)
  level = (level or 1) + 1
  local list = {}
  if spec == nil then
    for i = 1, n do list[i] = i end
  elseif type(spec) ~= "table" then
    fail(F, "'resample_steps' must be {start = i0, stop = i1, interval = k} or a list of step numbers", level)
  elseif spec[1] ~= nil or next(spec) == nil then
    for k, v in pairs(spec) do
      if math.type(k) ~= "integer" then
        fail(F, "'resample_steps' mixes a list with named fields: give a list of steps or {start, stop, interval}", level)
      end
      if math.type(v) ~= "integer" or v < 1 or v > n then
        fail(F, ("'resample_steps' lists %s; steps are integers in 1..%d"):format(tostring(v), n), level)
      end
    end
    for i, v in ipairs(spec) do list[i] = v end
    table.sort(list)
  else
    util.check_options(F .. " resample_steps", spec, { start = true, stop = true, interval = true }, level)
    local a = spec.start or 1
    local b = spec.stop or n
    local k = spec.interval or 1
    for name, v in pairs({ start = a, stop = b, interval = k }) do
      if math.type(v) ~= "integer" or v < 1 then
        fail(F, ("resample_steps.%s must be a positive integer, got %s"):format(name, tostring(v)), level)
      end
    end
    if a > n or b > n or a > b then
      fail(F, ("resample_steps needs 1 <= start <= stop <= %d (the chain's steps), got start %d, stop %d"):format(
        n, a, b), level)
    end
    for i = a, b, k do list[#list + 1] = i end
  end
  local set = {}
  for _, v in ipairs(list) do set[v] = true end
  local uniq = {}
  for i = 1, n do if set[i] then uniq[#uniq + 1] = i end end
  return set, uniq
end

-- Shared option checks of the particle methods (fk, fkc): particles, resampling,
-- ess_threshold, samples.  Returns K, method, threshold, samples (an integer or "weighted").
function M.check_particles(F, o, level)
  level = (level or 1) + 1
  local K = util.check_int(F, "particles", o.particles or 16, 1, level)
  local method = o.resampling or "systematic"
  if not weights.methods[method] then
    fail(F, ("unknown resampling '%s' (valid: multinomial, systematic)"):format(tostring(method)), level)
  end
  local thr = o.ess_threshold
  if thr ~= nil and (type(thr) ~= "number" or not (thr > 0 and thr <= 1)) then
    fail(F, ("'ess_threshold' must be nil (always resample) or a fraction in (0, 1], got %s"):format(tostring(thr)), level)
  end
  local samples = o.samples
  if samples == nil then samples = K end
  if samples ~= "weighted" then
    if math.type(samples) ~= "integer" or samples < 1 then
      fail(F, ("'samples' must be a positive integer (resampled at the end) or \"weighted\" (the particles and their log_weights), got %s"):format(
        tostring(samples)), level)
    end
  end
  return K, method, thr, samples
end

-- Log-weights normalised to log-probabilities.
function M.normalized(lw)
  local lse = weights.logsumexp(lw)
  local out = {}
  for i = 1, #lw do out[i] = lw[i] - lse end
  return out
end

local gather_list = weights.gather

-- The returned samples: `samples` rows resampled by the final log-weights (then every returned
-- row has log-weight -log samples), or all particles with their normalised log-weights.
function M.finish(c, x, lw, final_rewards, samples, method, key)
  local norm = M.normalized(lw)
  local out = { particles = { x = x, log_weights = norm, rewards = final_rewards } }
  if samples == "weighted" then
    out.x, out.log_weights, out.rewards = x, norm, final_rewards
  else
    local idx = weights.resample(method, lw, samples, weights.stream(c.seed, key))
    out.x, out.rewards, out.indices = x:gather(idx), final_rewards and gather_list(final_rewards, idx), idx
    out.log_weights = {}
    for i = 1, samples do out.log_weights[i] = -math.log(samples) end
  end
  if final_rewards then
    local b = weights.argmax(final_rewards)
    out.best = { x = x:narrow(1, b, 1):clone(), reward = final_rewards[b] }
  end
  return out
end

function M.progress_bar(o, total, label)
  if not o.progress then return nil end
  return require("diffuse.progress").new{ total = total, label = label, unit = "nfe" }
end

-- fk{<chain options> | chain = c, reward = r, lambda = 1, particles = 16, potential = "diff",
--    resampling = "systematic", resample_steps = {start, stop, interval} | {steps...} (default
--    every step), ess_threshold = nil, final = true, samples = particles | "weighted",
--    seed, progress = false}
function M.fk(o)
  local F = "steer.fk"
  local c = chain_mod.from_options(F, o, own, 2)
  if o.reward == nil then fail(F, "'reward' is required (a function(x, ctx) -> one value per row)", 2) end
  if not rewards_mod.callable(o.reward) then
    fail(F, ("'reward' must be a function(x, ctx) or a diffuse reward, got %s"):format(type(o.reward)), 2)
  end
  local lambda = o.lambda == nil and 1 or o.lambda
  if type(lambda) ~= "number" or not (lambda >= 0 and lambda < inf) then
    fail(F, ("'lambda' must be a finite number >= 0, got %s"):format(tostring(lambda)), 2)
  end
  local potential = o.potential or "diff"
  if not M.potentials[potential] then
    fail(F, ("unknown potential '%s' (valid: diff, max, plain, sum)"):format(tostring(potential)), 2)
  end
  local final = o.final
  if final == nil then final = true end
  if type(final) ~= "boolean" then fail(F, "'final' must be a boolean", 2) end
  local K, method, thr, samples = M.check_particles(F, o, 2)
  local at, at_list = M.steps_of(F, o.resample_steps, c.n, 2)
  local reward = o.reward
  local n = c.n
  local bar = M.progress_bar(o, K * n, "fk")
  local stream = weights.stream(c.seed, KEY_RESAMPLE)

  local x = c:prior(K)
  local lw, logprod, prev, mx, sm = {}, {}, {}, {}, {}
  for k = 1, K do lw[k], logprod[k], prev[k], mx[k], sm[k] = 0, 0, 0, -inf, 0 end
  local ess_trace, resampled, log_Z = {}, {}, 0
  local mean_reward = {}

  for i = 1, n do
    local x0, eps = c:denoise(x, i)
    if at[i] then
      local r = c:reward(reward, x0, { x_t = x, point = c.points[i], step = i })
      local acc = 0
      for k = 1, K do
        local rk = r[k]
        acc = acc + rk
        local g
        if potential == "diff" then
          -- r_(j-1) - r_j is -inf - -inf = NaN only when both are -inf: then no change.
          g = (rk == prev[k]) and 0 or lambda * (rk - prev[k])
          prev[k] = rk
        elseif potential == "max" then
          if rk > mx[k] then mx[k] = rk end
          g = lambda * mx[k]
        elseif potential == "sum" then
          sm[k] = sm[k] + rk
          g = lambda * sm[k]
        else
          g = lambda * rk
        end
        if lambda == 0 then g = 0 end
        lw[k] = lw[k] + g
        logprod[k] = logprod[k] + g
      end
      mean_reward[#mean_reward + 1] = acc / K
      local ess = weights.logsumexp(lw) > -inf and weights.ess(lw) or 0
      ess_trace[#ess_trace + 1] = ess
      if thr == nil or ess < thr * K then
        if ess == 0 then
          fail(F, ("every particle has weight 0 at step %d (the reward is -inf everywhere)"):format(i), 2)
        end
        log_Z = log_Z + weights.logmeanexp(lw)
        local idx = weights.resample(method, lw, K, stream)
        x, x0, eps = x:gather(idx), x0:gather(idx), eps:gather(idx)
        logprod, prev, mx, sm = gather_list(logprod, idx), gather_list(prev, idx), gather_list(mx, idx),
          gather_list(sm, idx)
        for k = 1, K do lw[k] = 0 end
        resampled[#resampled + 1] = i
      end
    end
    x = c:move(x, x0, eps, i)
    if bar then bar:update(c.nfe) end
  end

  local rF = c:reward(reward, x, { x_t = x, point = c.points[n + 1], step = n + 1 })
  if final then
    for k = 1, K do
      local target = lambda == 0 and 0 or lambda * rF[k]
      -- -inf - -inf (a particle whose every reward was -inf): it stays at weight 0.
      local g = (target == logprod[k]) and 0 or target - logprod[k]
      lw[k] = lw[k] + g
    end
  end
  if weights.logsumexp(lw) == -inf then fail(F, "every particle has weight 0 at the end (the final reward is -inf)", 2) end
  log_Z = log_Z + weights.logmeanexp(lw)
  if bar then bar:finish() end

  local out = M.finish(c, x, lw, rF, samples, method, KEY_FINAL)
  out.method = "fk"
  out.potential, out.lambda, out.final = potential, lambda, final
  out.steps = at_list
  out.ess = ess_trace
  out.mean_reward = mean_reward
  out.resampled = resampled
  out.resample_count = #resampled
  out.log_Z = log_Z
  out.particle_count = K
  for k, v in pairs(c:stats()) do out[k] = v end
  return out
end

return M
