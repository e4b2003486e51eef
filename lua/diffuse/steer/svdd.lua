-- SVDD, soft value-based decoding (Li et al. 2024, "Derivative-Free Guidance in Continuous
-- and Discrete Diffusion Models with Soft Value-Based Decoding").
--
-- At every step of the chain each of the n samples draws M candidates for its next state from
-- the stochastic kernel and keeps one by its value: the arg-max (alpha = 0) or a draw with
-- probabilities proportional to exp(value / alpha).  The value of a candidate x_(i+1) is
--   "posterior_mean": r(x0_hat(x_(i+1))), the reward of the model's x0 estimate, or
--   "mc": alpha log mean_s exp(r(x0^s) / alpha) (the plain mean when alpha = 0) over
--         mc_samples short stochastic rollouts from the candidate to t_end.
--
-- Sharing.  The M candidates of a sample are M draws of the kernel from the sample's one
-- evaluation (its x0, eps), so they cost no extra parent evaluation; valuing them evaluates
-- the model at the candidates, and the chosen candidate's evaluation is the denoise of the
-- next step (never evaluated twice).  All n * M candidates go through one model call per
-- step.  At the last step the candidates are at t_end and their value is the final reward.
local core = require("diffuse.core")
local util = require("diffuse.util")
local chain_mod = require("diffuse.steer.chain")
local rewards_mod = require("diffuse.steer.rewards")
local weights = require("diffuse.steer.weights")
local schedule_mod = require("diffuse.schedule")

local M = {}
local fail = util.fail
local sqrt, inf, expm1 = math.sqrt, math.huge, schedule_mod.expm1

local KEY_CHOICE = 801

-- The kernel between any two grid points a < b (the chain's move, generalised to skip
-- points): x_b = alpha_b x0 + sqrt(sigma_b^2 - s^2) eps + s z, s = eta sigma_b sqrt(1 - e^(-2h)).
local function kernel(c, a, b, eta)
  local pa, pb = c.points[a], c.points[b]
  local cz = 0
  if eta > 0 and pa.sigma > 0 and pb.sigma > 0 then
    cz = eta * pb.sigma * sqrt(-expm1(-2 * (pb.lambda - pa.lambda)))
  end
  return pb.alpha, sqrt(math.max(pb.sigma * pb.sigma - cz * cz, 0)), cz
end

local function jump(c, x, x0, eps, a, b)
  local ca, ce, cz = kernel(c, a, b, c.eta)
  if cz == 0 then return core.lincomb({ x0, eps }, { ca, ce }) end
  return core.lincomb({ x0, eps, c:noise(#x) }, { ca, ce, cz })
end

-- Each of 1..n repeated k times, in order.
local function repeated(n, k)
  local idx = {}
  for p = 1, n do for _ = 1, k do idx[#idx + 1] = p end end
  return idx
end

-- The sub-grid of an MC rollout from grid point j to n + 1 with at most `steps` steps: points
-- j + round(k (n + 1 - j) / K), k = 0..K, K = min(steps, n + 1 - j) (evenly spread over the
-- chain's remaining grid points; all of them when steps >= n + 1 - j).
local function subgrid(j, last, steps)
  local K = math.min(steps, last - j)
  local g = {}
  for k = 0, K do g[k + 1] = j + math.floor(k * (last - j) / K + 0.5) end
  return g
end

-- MC values of the candidates xc at grid point j (their estimates x0c, epsc already paid for).
local function mc_values(c, r, xc, x0c, epsc, j, S, steps, alpha)
  local last = c.n + 1
  local g = subgrid(j, last, steps)
  local rep = repeated(#xc, S)
  local x, x0, eps = xc:gather(rep), x0c:gather(rep), epsc:gather(rep)
  for k = 1, #g - 1 do
    if k > 1 then x0, eps = c:denoise(x, g[k]) end
    x = jump(c, x, x0, eps, g[k], g[k + 1])
  end
  local rw = c:reward(r, x, { x_t = x, point = c.points[last], step = last })
  local v = {}
  for q = 1, #xc do
    if alpha > 0 then
      local s = {}
      for m = 1, S do s[m] = rw[(q - 1) * S + m] / alpha end
      v[q] = alpha * weights.logmeanexp(s)
    else
      local acc = 0
      for m = 1, S do acc = acc + rw[(q - 1) * S + m] end
      v[q] = acc / S
    end
  end
  return v
end

-- svdd{<chain options | chain>, reward, n (or particles) = 1, candidates = 8, alpha = 0,
--      value = "posterior_mean" | "mc", mc_samples = 4, mc_steps = 4, seed, progress}
-- Returns x (n rows), rewards (their final rewards), best, the counters, and trace: per step
-- {step, nfe, mean = mean chosen value, max = largest chosen value}.
-- Cost (posterior_mean): n + n M (steps - 1) NFE; reward evaluations n M per step.  With "mc"
-- every step before the last adds n M mc_samples (K - 1) NFE, K the rollout's sub-steps.
function M.svdd(o)
  local F = "steer.svdd"
  local c = chain_mod.from_options(F, o, { reward = true, n = true, particles = true, candidates = true,
    alpha = true, value = true, mc_samples = true, mc_steps = true, seed = true, progress = true }, 2)
  local r = o.reward
  if r == nil then fail(F, "'reward' is required (a function(x, ctx) -> one value per row)", 2) end
  if not rewards_mod.callable(r) then fail(F, ("'reward' must be a function(x, ctx), got %s"):format(type(r)), 2) end
  if o.n ~= nil and o.particles ~= nil then fail(F, "give 'n' or 'particles', not both", 2) end
  local N = util.check_int(F, o.particles and "particles" or "n", o.n or o.particles or 1, 1, 2)
  local Mc = util.check_int(F, "candidates", o.candidates or 8, 1, 2)
  local alpha = o.alpha or 0
  if type(alpha) ~= "number" or not (alpha >= 0) then
    fail(F, ("'alpha' must be a number >= 0 (0: arg-max), got %s"):format(tostring(alpha)), 2)
  end
  local mode = o.value or "posterior_mean"
  if mode ~= "posterior_mean" and mode ~= "mc" then
    fail(F, ("'value' must be \"posterior_mean\" or \"mc\", got %s"):format(tostring(mode)), 2)
  end
  local S = util.check_int(F, "mc_samples", o.mc_samples or 4, 1, 2)
  local steps = util.check_int(F, "mc_steps", o.mc_steps or 4, 1, 2)
  if c.eta == 0 then fail(F, "SVDD draws candidates from the stochastic kernel: the chain's eta must be > 0", 2) end
  local bar
  if o.progress then
    bar = require("diffuse.progress").new{ total = c.n, label = "svdd", unit = "step" }
  end
  local stream = weights.stream(c.seed, KEY_CHOICE)
  local rep = repeated(N, Mc)
  local x = c:prior(N)
  local x0, eps = c:denoise(x, 1)
  local trace, final = {}, nil
  for i = 1, c.n do
    local xc = c:move(x:gather(rep), x0:gather(rep), eps:gather(rep), i)
    local j = i + 1
    local v, x0c, epsc
    if j == c.n + 1 then
      v = c:reward(r, xc, { x_t = xc, point = c.points[j], step = j })
    else
      x0c, epsc = c:denoise(xc, j)
      if mode == "mc" then
        v = mc_values(c, r, xc, x0c, epsc, j, S, steps, alpha)
      else
        v = c:reward(r, x0c, { x_t = xc, point = c.points[j], step = j })
      end
    end
    local chosen, cv = {}, {}
    local u = alpha > 0 and stream:uniforms(N) or nil
    for p = 1, N do
      local lw, vals = {}, {}
      for m = 1, Mc do vals[m] = v[(p - 1) * Mc + m] end
      local k
      if alpha > 0 then
        for m = 1, Mc do lw[m] = vals[m] / alpha end
        if weights.logsumexp(lw) == -inf then k = 1 + math.floor(u[p] * Mc) -- every value -inf
        else k = weights.categorical(lw, u[p]) end
      else
        k = weights.argmax(vals)
      end
      chosen[p], cv[p] = (p - 1) * Mc + k, vals[k]
    end
    x = xc:gather(chosen)
    if x0c then x0, eps = x0c:gather(chosen), epsc:gather(chosen) end
    local sum, mx = 0, -inf
    for p = 1, N do sum = sum + cv[p]; if cv[p] > mx then mx = cv[p] end end
    trace[i] = { step = i, nfe = c.nfe, mean = sum / N, max = mx }
    final = cv
    if bar then bar:update(i, { nfe = c.nfe, value = mx }) end
  end
  if bar then bar:finish() end
  local bi = weights.argmax(final)
  local out = { method = "svdd", x = x, rewards = final, best = { x = x:gather({ bi }), reward = final[bi] },
    trace = trace, alpha = alpha, value = mode, candidates = Mc }
  for k, val in pairs(c:stats()) do out[k] = val end
  return out
end

return M
