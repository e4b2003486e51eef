-- DEIS (Zhang & Chen, "Fast Sampling of Diffusion Models with Exponential Integrator") in its
-- multistep log-rho form, and iPNDM (the improved pseudo-numerical method of the same paper):
-- the coefficients of a step as pure functions of the time grid, in double, and two solvers
-- (`deis`, `ipndm`) that apply them with one lincomb per step.
--
-- Both work on the noise estimate eps and on rho = sigma / alpha (= sigma_hat), where the
-- probability-flow ODE reads  d(x / alpha) = eps d(rho).  A step from grid point i to i + 1 is
--   x_{i+1} = wx * x_i + sum_j weps[j] * eps_{i-j+1}       (weps[1] weights the newest eps)
-- so a step is one lincomb of x and the stored eps predictions.
--   DEIS (logrho)  eps is the Lagrange polynomial in log rho through the last k eps, and the
--                  integral over rho is exact: weps[j] = alpha_{i+1} rho_i int_0^h L_j(v) e^v dv
--                  with v = log rho - log rho_i and h = lambda_i - lambda_{i+1}.
--   iPNDM          eps is the Adams-Bashforth combination (fixed coefficients, orders 1-4) of
--                  the last k eps, used in the DDIM step  x_{i+1} = alpha_{i+1} x0_hat + sigma_{i+1} e.
-- Order 1 of either is DDIM.  A step that lands on sigma = 0 (rho = 0, h = -inf) takes the
-- limit of the formula.
local core = require("diffuse.core")
local sampler = require("diffuse.sampler")

local M = {}
local inf, exp, abs = math.huge, math.exp, math.abs

local function expm1(x)
  if abs(x) < 1e-5 then return x + x * x / 2 + x * x * x / 6 end
  return exp(x) - 1
end

-- I_m(h) = int_0^h v^m e^v dv for m = 0 .. mmax (h <= 0, h = -inf allowed).
function M.exp_moments(h, mmax)
  local I = {}
  if h == -inf then
    I[0] = -1
    for m = 1, mmax do I[m] = -m * I[m - 1] end
  elseif abs(h) < 0.5 then
    -- series: I_m = sum_n h^(n+m+1) / (n! (n+m+1)), no cancellation for small h
    for m = 0, mmax do
      local s, hn, nf = 0, h ^ (m + 1), 1
      for n = 0, 40 do
        local term = hn / (nf * (n + m + 1))
        s = s + term
        if abs(term) <= 1e-18 * abs(s) then break end
        hn, nf = hn * h, nf * (n + 1)
      end
      I[m] = s
    end
  else
    I[0] = expm1(h)
    local eh = exp(h)
    for m = 1, mmax do I[m] = h ^ m * eh - m * I[m - 1] end
  end
  return I
end

-- Monomial coefficients c[0..k-1] of the Lagrange basis polynomial L_j through nodes v[0..k-1].
local function lagrange(v, j, k)
  local c = { [0] = 1 }
  for d = 1, k - 1 do c[d] = 0 end
  local deg, denom = 0, 1
  for m = 0, k - 1 do
    if m ~= j then
      -- multiply by (v - v[m])
      for d = deg + 1, 1, -1 do c[d] = c[d - 1] - v[m] * c[d] end
      c[0] = -v[m] * c[0]
      deg = deg + 1
      denom = denom * (v[j] - v[m])
    end
  end
  for d = 0, k - 1 do c[d] = c[d] / denom end
  return c
end

local function check_points(fname, pts, i, k)
  if type(pts) ~= "table" then error(("bad argument #1 to '%s' (list of points expected)"):format(fname), 3) end
  if math.type(i) ~= "integer" or i < 1 then
    error(("bad argument #2 to '%s' (step index: integer >= 1 expected)"):format(fname), 3)
  end
  if math.type(k) ~= "integer" or k < 1 or k > i then
    error(("bad argument #3 to '%s' (order must be an integer in 1..%d at step %d, got %s)"):format(fname, i, i,
      tostring(k)), 3)
  end
  for j = i - k + 1, i + 1 do
    local p = pts[j]
    if type(p) ~= "table" or type(p.alpha) ~= "number" or type(p.sigma) ~= "number" then
      error(("bad argument #1 to '%s' (point %d needs alpha and sigma)"):format(fname, j), 3)
    end
  end
end

local function lambda_of(p)
  if p.lambda then return p.lambda end
  if p.sigma == 0 then return inf end
  return math.log(p.alpha / p.sigma)
end

-- DEIS (diffusers' "logrho" multistep DEIS): the weights of the step from point i to i + 1
-- using the eps predictions at points i, i-1, ..., i-k+1.
--   pts: list of points {alpha, sigma[, lambda]} of the grid (at least pts[i-k+1 .. i+1])
-- Returns {x = wx, eps = {w1, ..., wk}}: x_{i+1} = wx x_i + sum_j eps[j] * eps_{i-j+1}.
function M.deis_weights(pts, i, k)
  check_points("deis_weights", pts, i, k)
  local p, q = pts[i], pts[i + 1]
  if not (p.alpha > 0 and p.sigma > 0) then
    error(("deis_weights: the step starts at a point with alpha = %.17g, sigma = %.17g; DEIS needs both > 0"):format(
      p.alpha, p.sigma), 2)
  end
  local li, ln = lambda_of(p), lambda_of(q)
  local h = li - ln -- log rho_{i+1} - log rho_i  (<= 0; -inf when sigma_{i+1} = 0)
  local v = {}
  for j = 0, k - 1 do v[j] = li - lambda_of(pts[i - j]) end -- log rho_{i-j} - log rho_i
  local I = M.exp_moments(h, k - 1)
  local scale = q.alpha * p.sigma / p.alpha -- alpha_{i+1} rho_i
  local w = {}
  for j = 0, k - 1 do
    local c = lagrange(v, j, k)
    local s = 0
    for d = 0, k - 1 do s = s + c[d] * I[d] end
    w[j + 1] = scale * s
  end
  return { x = q.alpha / p.alpha, eps = w }
end

-- Adams-Bashforth coefficients (uniform steps), newest first.
M.adams_bashforth = {
  { 1 },
  { 3 / 2, -1 / 2 },
  { 23 / 12, -16 / 12, 5 / 12 },
  { 55 / 24, -59 / 24, 37 / 24, -9 / 24 },
}

-- iPNDM: the weights of the step from point i to i + 1 with the eps predictions at points
-- i, ..., i-k+1 (k <= 4) combined with the fixed Adams-Bashforth coefficients.
-- Returns {x = wx, eps = {...}}; when the step starts at alpha = 0 (pure noise, k = 1 only),
-- x carries nothing about x0 and the step uses the model's data estimate instead:
-- {x = 0, x0 = alpha_{i+1}, eps = {sigma_{i+1}}}.
function M.ipndm_weights(pts, i, k)
  check_points("ipndm_weights", pts, i, k)
  if k > 4 then error(("bad argument #3 to 'ipndm_weights' (order at most 4, got %d)"):format(k), 2) end
  local p, q = pts[i], pts[i + 1]
  local ab = M.adams_bashforth[k]
  if p.alpha == 0 then
    if k ~= 1 then error("ipndm_weights: a step from alpha = 0 must be of order 1", 2) end
    return { x = 0, x0 = q.alpha, eps = { q.sigma } }
  end
  local ce = q.sigma - q.alpha * p.sigma / p.alpha
  local w = {}
  for j = 1, k do w[j] = ce * ab[j] end
  return { x = q.alpha / p.alpha, eps = w }
end

-- The order DEIS uses at step `s` (0-based) of `n`: warm-up from order 1, and with
-- lower_order_final (as diffusers, only for runs of fewer than 15 steps) order 1 on the last
-- step and at most 2 on the one before.
function M.deis_order(s, n, order, lower_order_final)
  local k = math.min(order, s + 1)
  if lower_order_final and n < 15 then
    if s == n - 1 then k = 1 elseif s == n - 2 then k = math.min(k, 2) end
  end
  return k
end

function M.ipndm_order(s, order) return math.min(order, s + 1) end

-- The solvers: each step evaluates the model once, keeps the last eps predictions in
-- state.mem.eps (newest first) and applies the weights with one lincomb.
local function apply(st, w, x0, hist)
  local ts, cs = {}, {}
  if w.x ~= 0 then ts[#ts + 1], cs[#cs + 1] = st.x, w.x end
  if w.x0 then ts[#ts + 1], cs[#cs + 1] = x0, w.x0 end
  for j, c in ipairs(w.eps) do ts[#ts + 1], cs[#cs + 1] = hist[j], c end
  return core.lincomb(ts, cs)
end

local function multistep(weights, order_of, maxorder)
  return function(st)
    local i = st.i + 1
    local t = st.times[i]
    local x0, eps = st:eval(st.x, t)
    local hist = { eps }
    local old = st.mem.eps or {}
    for j = 1, maxorder(st) - 1 do hist[j + 1] = old[j] end
    local k = order_of(st)
    local pts = {}
    for j = i - k + 1, i + 1 do pts[j] = st:point(st.times[j]) end
    local w = weights(pts, i, k)
    st.x = apply(st, w, x0, hist)
    st.x0 = x0
    st.mem.eps = hist
  end
end

local function check_order(name, lo, hi)
  return function(st)
    local o = st.opts.order
    if math.type(o) ~= "integer" or o < lo or o > hi then
      error(("sample: option 'order' of solver %s must be an integer in %d..%d, got %s"):format(name, lo, hi,
        tostring(o)), 4)
    end
  end
end

sampler.register("deis", {
  family = "exponential",
  stochastic = false,
  options = { order = 2, lower_order_final = true },
  default_spacing = "time_quadratic",
  setup = check_order("deis", 1, 3),
  step = multistep(M.deis_weights,
    function(st) return M.deis_order(st.i, st.n, st.opts.order, st.opts.lower_order_final) end,
    function(st) return st.opts.order end),
})

sampler.register("ipndm", {
  family = "exponential",
  stochastic = false,
  options = { order = 4 },
  default_spacing = "time_quadratic",
  setup = check_order("ipndm", 1, 4),
  step = multistep(M.ipndm_weights, function(st) return M.ipndm_order(st.i, st.opts.order) end,
    function(st) return st.opts.order end),
})

return M
