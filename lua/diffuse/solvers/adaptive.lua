-- rk45: an adaptive embedded Runge-Kutta solver of the probability-flow ODE (Dormand-Prince
-- 5(4), FSAL, error control), the ground truth that other solvers' errors are measured against.
--
-- The ODE.  With x = alpha x0 + sigma eps, write x_hat = x / alpha and sigma_hat = sigma / alpha
-- = e^(-lambda).  The probability-flow ODE of every VP / VE / EDM schedule is, in x_hat,
--
--     d x_hat / d sigma_hat = eps(x_hat, sigma_hat) = (x_hat - D(x_hat, sigma_hat)) / sigma_hat
--
-- where D is the data prediction (the denoiser E[x0 | x]).  Changing the variable to lambda
-- (d sigma_hat / d lambda = -sigma_hat) gives
--
--     d x_hat / d lambda = D(x_hat, lambda) - x_hat                                  (1)
--
-- "a linear part plus D": the linear part -x_hat has a constant unit rate, and D's Jacobian
-- (the posterior covariance over sigma_hat^2) has eigenvalues in [0, 1] for a Gaussian, so in
-- lambda the system is non-stiff over the whole range (from lambda = -5 at t = 1 to large
-- lambda near the data).  (1) is the default (variable = "lambda").  The state integrated is
-- x_hat; x = alpha x_hat is formed for each model call (one extra pass).  Other variables:
--   variable = "sigma_hat":  d x_hat / d sigma_hat = (x_hat - D) / sigma_hat
--   variable = "t":          d x_hat / d t = (x_hat - D) / sigma_hat * d sigma_hat / dt, with
--                            d sigma_hat / dt from a 5-point central difference in double.
-- A closed-form check: for data N(mu, s^2 I), D = mu + s^2 / (s^2 + sh^2) (x_hat - mu), and
-- (x_hat - mu) / sqrt(s^2 + sh^2) is constant along the flow (spec/adaptive_spec.lua).
--
-- Ending at sigma = 0 (t_end = 0, lambda = +inf): the integration stops at sigma_hat =
-- `final_sigma_hat` (1e-6 by default) and a last model call returns D there;
-- x_hat(0) - D(x_hat(sh), sh) = O(sh^2 / s^2) for a component of width s (about 1e-10 here).
--
-- Step-size control.  The batch shares one step sequence (the model takes one time per call).
-- The error of a trial step is err = h * sum_j e_j k_j (the difference of the 5th- and
-- 4th-order solutions); each element is scaled by atol + rtol * max(|x_hat|, |x_hat_new|);
-- each sample's error is the RMS of its scaled elements, and the step's error is the maximum
-- over the samples, so every sample meets the tolerance.  A step is accepted when that error is
-- <= 1; the next step is h * min(10, max(0.2, 0.9 * err^(-1/5))) (no growth right after a
-- rejection).  The first step comes from Hairer's starting-step rule (one extra model call)
-- unless h_init is given (in units of the variable).  The last step is cut to land exactly on
-- t_end.  Every accepted step is one sampler step (callback, state.i); rejected trials are
-- counted in state.mem.rejected.  NFE: 6 model calls per trial step (the 7th stage is the
-- next step's first, FSAL), plus 1 at the start (+1 for the starting-step rule, +1 for the
-- final denoise at sigma = 0).
--
-- Float32: the state is a float32 tensor and every stage combination is one lincomb
-- (accumulated in double, rounded once), so each step adds about 6e-8 |x_hat| of rounding;
-- the flow contracts x_hat towards the data, so the final error floor is about 1e-7 -- 1e-6.
-- Tolerances below about 1e-8 ask for more than float32 can give and only cost steps.
local core = require("diffuse.core")
local sampler = require("diffuse.sampler")

local lincomb = core.lincomb

local M = {}

-- Dormand-Prince 5(4) tableau.
local C = { 0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1, 1 }
local A = {
  {},
  { 1 / 5 },
  { 3 / 40, 9 / 40 },
  { 44 / 45, -56 / 15, 32 / 9 },
  { 19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729 },
  { 9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656 },
  { 35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84 },
}
-- 5th-order weights are A[7]; E = b5 - b4 (error estimate weights).
local E = { 71 / 57600, 0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40 }
M.tableau = { c = C, a = A, e = E }

local SAFETY, FAC_MIN, FAC_MAX = 0.9, 0.2, 10.0
local FINAL_SIGMA_HAT = 1e-6

local function fail(msg, level) error("rk45: " .. msg, (level or 1) + 1) end

-- Variable <-> time maps and the factor g(v) in f(v, y) = g(v) (y - D).
local variables = {}

variables.lambda = {
  of_t = function(s, t) return s:lambda(t) end,
  t_of = function(s, v) return s:t_of_lambda(v) end,
  g = function() return -1 end,
}

variables.sigma_hat = {
  of_t = function(s, t) return s:sigma_hat(t) end,
  t_of = function(s, v) return s:t_of_sigma_hat(v) end,
  g = function(_, v) return 1 / v end,
}

-- d sigma_hat / dt by a 5-point central difference (relative step 1e-4; error ~1e-12 relative).
local function dsigma_hat_dt(s, t)
  local h = 1e-4 * t
  local f = function(u) return s:sigma_hat(u) end
  return (f(t - 2 * h) - 8 * f(t - h) + 8 * f(t + h) - f(t + 2 * h)) / (12 * h)
end
M.dsigma_hat_dt = dsigma_hat_dt

variables.t = {
  of_t = function(_, t) return t end,
  t_of = function(_, v) return v end,
  g = function(s, _, t) return dsigma_hat_dt(s, t) / s:sigma_hat(t) end,
}

local function variable_names()
  local out = {}
  for k in pairs(variables) do out[#out + 1] = k end
  table.sort(out)
  return table.concat(out, ", ")
end

-- Per-sample RMS of the scaled tensor r, max over samples.
local function error_norm(r)
  local n = #r
  local sq = r:square()
  if sq:dim() ~= 2 then sq = sq:reshape({ n, -1 }) end
  return sq:mean(2):max() ^ 0.5
end

local function scale_of(y, y_new, o)
  local m = y:abs()
  if y_new then m:maximum_(y_new:abs()) end
  return m:mul_(o.rtol):add_(o.atol)
end

-- The derivative at (v, y): returns k = g (y - D) and D.
local function deriv(st, m, v, y)
  local t = m.t_of(v)
  local p = st:point(t)
  local x = (p.alpha == 1) and y or y:mul(p.alpha)
  local d = st:eval(x, t, "x0")
  local g = m.var.g(st.schedule, v, t)
  return lincomb({ y, d }, { g, -g }), d
end

-- Hairer's starting step (Hairer, Norsett, Wanner, Solving ODEs I, II.4): one extra call.
local function initial_step(st, m, v0, y0, k0)
  local o = st.opts
  local sc = scale_of(y0, nil, o)
  local d0 = error_norm(y0:div(sc))
  local d1 = error_norm(k0:div(sc))
  local h0 = (d0 < 1e-5 or d1 < 1e-5) and 1e-6 or 0.01 * d0 / d1
  local span = math.abs(m.v_end - v0)
  h0 = math.min(h0, span)
  local y1 = lincomb({ y0, k0 }, { 1, m.dir * h0 })
  local k1 = deriv(st, m, v0 + m.dir * h0, y1)
  local d2 = error_norm(lincomb({ k1, k0 }, { 1, -1 }):div(sc)) / h0
  local h1
  if math.max(d1, d2) <= 1e-15 then
    h1 = math.max(1e-6, h0 * 1e-3)
  else
    h1 = (0.01 / math.max(d1, d2)) ^ (1 / 5)
  end
  return math.min(100 * h0, h1, span)
end

local function setup(st)
  local o = st.opts
  local s = st.schedule
  if st.grid_opts.steps then
    fail("rk45 chooses its own steps; give t_start and t_end (or times = {t_start, t_end}), not 'steps'", 4)
  end
  for _, k in ipairs({ "rtol", "atol" }) do
    if not (o[k] >= 0) then fail(("'%s' must be >= 0, got %s"):format(k, tostring(o[k])), 4) end
  end
  if not (o.rtol > 0 or o.atol > 0) then fail("rtol and atol cannot both be 0", 4) end
  if math.type(o.max_steps) ~= "integer" or o.max_steps < 1 then
    fail(("'max_steps' must be a positive integer, got %s"):format(tostring(o.max_steps)), 4)
  end
  if o.h_init and not (o.h_init > 0) then fail("'h_init' must be a positive number", 4) end
  local var = variables[o.variable]
  if not var then
    fail(("unknown variable '%s'; valid: %s"):format(tostring(o.variable), variable_names()), 4)
  end
  local t0, t1
  if st.times then
    t0, t1 = st.times[1], st.times[#st.times]
  else
    t0 = st.grid_opts.t_start or s.t_start
    t1 = st.grid_opts.t_end or s.t_end
  end
  if not (t0 > t1 and t1 >= 0) then
    fail(("need t_start > t_end >= 0, got %.17g and %.17g"):format(t0, t1), 4)
  end
  if not (s:alpha(t0) > 0) then fail(("alpha(t_start) is 0 at t_start = %.17g; start below it"):format(t0), 4) end
  -- Integrate to t_stop; when sigma(t_end) = 0, stop at a tiny sigma_hat and denoise.
  local t_stop, denoise = t1, false
  if not (s:sigma(t1) > 0) then
    t_stop, denoise = s:t_of_sigma_hat(FINAL_SIGMA_HAT), true
    if not (t_stop < t0) then fail("t_start is already below the final noise level", 4) end
  end
  local v0, v1 = var.of_t(s, t0), var.of_t(s, t_stop)
  local m = {
    var = var, v_end = v1, dir = (v1 > v0) and 1 or -1, t_start = t0, t_end = t1, t_stop = t_stop,
    denoise = denoise,
  }
  -- Exact end points: the variable's end values map back to the given times.
  m.t_of = function(v)
    if v == v0 then return t0 end
    if v == v1 then return t_stop end
    return var.t_of(s, v)
  end
  st._rk = m
  st.times = { t0, t1 }
  st.t = t0
  local a0 = st:point(t0).alpha
  local y0 = (a0 == 1) and st.x or st.x:mul(1 / a0)
  local k0, d0 = deriv(st, m, v0, y0)
  st.x0 = d0
  local h = o.h_init or initial_step(st, m, v0, y0, k0)
  st.mem = { v = v0, y = y0, k = k0, h = h, accepted = 0, rejected = 0, times = { t0 } }
  st.n = o.max_steps + 1 -- the trial-step limit in step() fires first
end

local function step(st)
  local o, m, mem = st.opts, st._rk, st.mem
  local v, y, k1 = mem.v, mem.y, mem.k
  local h = math.min(mem.h, math.abs(m.v_end - v))
  local rejected = 0
  while true do
    if mem.accepted + mem.rejected + rejected >= o.max_steps then
      fail(("no convergence within max_steps = %d trial steps (at t = %.6g, step %.3g; rtol %g, atol %g)"):format(
        o.max_steps, m.t_of(v), h, o.rtol, o.atol), 3)
    end
    local last = (h >= math.abs(m.v_end - v))
    local ks = { k1 }
    local y_new, d_new
    for j = 2, 7 do
      local terms, coefs = { y }, { 1 }
      for i = 1, j - 1 do
        local a = A[j][i]
        if a ~= 0 then terms[#terms + 1] = ks[i]; coefs[#coefs + 1] = m.dir * h * a end
      end
      local yj = lincomb(terms, coefs)
      local vj = (j >= 6 and last) and m.v_end or v + m.dir * h * C[j]
      ks[j], d_new = deriv(st, m, vj, yj)
      if j == 7 then y_new = yj end
    end
    local terms, coefs = {}, {}
    for i = 1, 7 do
      if E[i] ~= 0 then terms[#terms + 1] = ks[i]; coefs[#coefs + 1] = m.dir * h * E[i] end
    end
    local err = error_norm(lincomb(terms, coefs):div(scale_of(y, y_new, o)))
    if err ~= err then
      fail(("the error estimate is not a number at t = %.6g (the model returned non-finite values?)"):format(
        m.t_of(v)), 3)
    end
    if err <= 1 then
      local fac = (err == 0) and FAC_MAX or math.min(FAC_MAX, math.max(FAC_MIN, SAFETY * err ^ (-1 / 5)))
      if rejected > 0 then fac = math.min(fac, 1) end
      local v_new = last and m.v_end or v + m.dir * h
      local t_new = m.t_of(v_new)
      local times = {}
      for i, tt in ipairs(mem.times) do times[i] = tt end
      times[#times + 1] = t_new
      local nm = {
        v = v_new, y = y_new, k = ks[7], h = h * fac, accepted = mem.accepted + 1,
        rejected = mem.rejected + rejected, times = times, err = err,
      }
      st.mem = nm
      st.x0 = d_new
      if last then
        if m.denoise then
          -- sigma = 0 at t_end: the data estimate at the last (tiny) noise level.
          local x0 = st:eval(y_new:mul(st:point(t_new).alpha), t_new, "x0")
          st.x0 = x0
          local a1 = st:point(m.t_end).alpha
          st.x = (a1 == 1) and x0 or x0:mul(a1)
          times[#times] = m.t_end
        else
          local a1 = st:point(m.t_end).alpha
          st.x = (a1 == 1) and y_new or y_new:mul(a1)
        end
        st.t = m.t_end
        st.n = st.i + 1
      else
        local a1 = st:point(t_new).alpha
        st.x = (a1 == 1) and y_new or y_new:mul(a1)
        st.t = t_new
      end
      return
    end
    rejected = rejected + 1
    h = h * math.max(FAC_MIN, SAFETY * err ^ (-1 / 5))
  end
end

sampler.register("rk45", {
  family = "adaptive",
  stochastic = false,
  own_grid = true,
  order = 5,
  options = { rtol = 1e-5, atol = 1e-5, h_init = false, max_steps = 100000, variable = "lambda" },
  setup = setup,
  step = step,
})

local exact_keys = {
  t_start = true, t_end = true, rtol = true, atol = true, h_init = true, max_steps = true,
  variable = true, predicts = true, cond = true, callback = true,
}

-- diffuse.exact_ode(model, schedule, x, {t_start, t_end, rtol = 1e-7, atol = 1e-7, variable,
-- h_init, max_steps, predicts, cond, callback}) -> x at t_end, info {nfe, accepted, rejected,
-- times, state}.  The probability-flow ODE solution from x at t_start (default: the
-- schedule's), with tight tolerances: the reference other solvers are measured against.
function M.exact_ode(model, schedule, x, o)
  o = o or {}
  if type(o) ~= "table" then error("bad argument #4 to 'exact_ode' (options table expected)", 2) end
  for k in pairs(o) do
    if not exact_keys[k] then
      local names = {}
      for n in pairs(exact_keys) do names[#names + 1] = n end
      table.sort(names)
      error(("bad argument #4 to 'exact_ode' (unknown option '%s'; valid: %s)"):format(tostring(k),
        table.concat(names, ", ")), 2)
    end
  end
  local out, info = sampler.sample({
    model = model, schedule = schedule, x = x, solver = "rk45", t_start = o.t_start, t_end = o.t_end,
    rtol = o.rtol or 1e-7, atol = o.atol or 1e-7, h_init = o.h_init, max_steps = o.max_steps,
    variable = o.variable, predicts = o.predicts, cond = o.cond, callback = o.callback,
  })
  local mem = info.state.mem
  return out, { nfe = info.nfe, accepted = mem.accepted, rejected = mem.rejected, times = mem.times,
    state = info.state }
end

return M
