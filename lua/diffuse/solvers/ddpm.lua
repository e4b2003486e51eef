-- Ancestral DDPM (Ho et al. 2020) on any schedule's grid: each step from t to s < t samples
-- the posterior q(x_s | x_t, x0) with x0 the model's estimate.
--
-- With E = exp(2 (lambda_t - lambda_s)) = (sigma_hat_s / sigma_hat_t)^2 (in [0, 1)):
--   mean      = (alpha_s / alpha_t) E x_t + alpha_s (1 - E) x0
--   variance  "small": sigma_s^2 (1 - E)        (the true posterior variance, beta-tilde)
--             "large": sigma_t^2 (1 - E)        (DDPM's beta_t; for a VP schedule
--                                                sigma_t^2 (1 - E) = 1 - alpha_t^2 / alpha_s^2)
-- 1 - E is computed as -expm1(2 (lambda_t - lambda_s)), so close times lose no precision and a
-- step to sigma = 0 gives x = alpha_s x0.  The last step adds no noise (it returns the
-- posterior mean, as DDPM does at t = 1), so a run draws one normal per step but the last.
local core = require("diffuse.core")
local sampler = require("diffuse.sampler")
local schedule = require("diffuse.schedule")

local lincomb = core.lincomb
local expm1 = schedule.expm1

local M = {}

-- The step's coefficients: x_s = cx * x_t + c0 * x0 + sd * z.
function M.coefficients(p, q, variance)
  local one_minus_e = (q.lambda == math.huge) and 1 or -expm1(2 * (p.lambda - q.lambda))
  local e = 1 - one_minus_e
  local cx = q.alpha / p.alpha * e
  local c0 = q.alpha * one_minus_e
  local var
  if variance == "small" then var = q.sigma * q.sigma * one_minus_e
  else var = p.sigma * p.sigma * one_minus_e end
  return cx, c0, math.sqrt(math.max(var, 0))
end

sampler.register("ddpm", {
  family = "ancestral",
  stochastic = true,
  order = 1, nfe = 1,
  default_spacing = "time_uniform",
  options = { variance = "small" },
  setup = function(st)
    local v = st.opts.variance
    if v ~= "small" and v ~= "large" then
      error(("sample: option 'variance' of solver ddpm must be 'small' or 'large', got '%s'"):format(tostring(v)), 0)
    end
  end,
  step = function(st)
    local t, tn = st.times[st.i + 1], st.times[st.i + 2]
    local p, q = st:point(t), st:point(tn)
    local x0 = st:eval(st.x, t, "x0")
    local cx, c0, sd = M.coefficients(p, q, st.opts.variance)
    if st.i + 1 < st.n then
      st.x = lincomb({ st.x, x0, st:draw() }, { cx, c0, sd })
    else
      st.x = lincomb({ st.x, x0 }, { cx, c0 })
    end
    st.x0 = x0
  end,
})

return M
