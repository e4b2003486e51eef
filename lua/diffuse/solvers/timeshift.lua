-- timeshift: the Time-Shift sampler (Li, Qu, Yao, Sun, Moens, "Alleviating Exposure Bias in
-- Diffusion Models through Sampling with Shifted Time Steps", ICLR 2024) on deterministic DDIM.
--
-- Exposure bias: the x a sampler reaches at the scheduled time t_i is not distributed like the
-- training inputs at t_i; its variance typically matches some nearby time better.  The sampler
-- therefore evaluates the model at a shifted time: before the step from t_i to t_{i+1}, for each
-- sample r it computes the variance v_r of x_r over its elements, and among the candidate
-- times tau_k = t_i + k * delta, k = -floor(window/2) .. floor(window/2), picks the one whose
-- noise variance sigma(tau)^2 (1 - alpha_bar for a VP schedule) is closest to v_r.  The step is
-- then DDIM (eta = 0) from tau_r to t_{i+1}, per sample:
--     x0_r = model(x_r, tau_r),   x_r' = sigma_{i+1} / sigma(tau_r) x_r
--                                        + (alpha_{i+1} - sigma_{i+1} alpha(tau_r) / sigma(tau_r)) x0_r
-- The shift is applied from the second step on (x at t_start is exact noise) and only while
-- t_i > cutoff; below the cutoff (and with window = 0) the step is plain DDIM.
--   window       the paper's window size w in training steps (default 2); 0 turns shifting off
--   cutoff       a time: shift only while the scheduled t_i > cutoff (default 0.3 t_start of the
--                schedule, the paper's 300 of 1000 steps)
--   train_steps  delta = t_start / train_steps (default 1000: one training step of a 1000-step
--                discrete model, t_i = (i + 1) / 1000)
-- Candidates stay strictly above t_{i+1} and at most the schedule's t_start.
-- Rows that picked different times are evaluated in one model call per distinct time (gathered
-- rows); a step still counts one NFE (one evaluation per sample).  state.mem.tau holds the time
-- each row was evaluated at in the last step and state.mem.calls the model calls made.
-- The official code (github.com/Mingxiao-Li/TS-DPM) shifts the target of the update instead
-- (model at the scheduled time, DDIM to the shifted next time); this follows the paper's
-- statement that x_t couples better with t_s, so the model is queried at t_s.
local core = require("diffuse.core")
local sampler = require("diffuse.sampler")

local lincomb = core.lincomb

local function fail(msg, level) error("timeshift: " .. msg, (level or 1) + 1) end

local function setup(st)
  local o = st.opts
  if math.type(o.window) ~= "integer" or o.window < 0 then
    fail(("'window' must be a non-negative integer, got %s"):format(tostring(o.window)), 4)
  end
  if math.type(o.train_steps) ~= "integer" or o.train_steps < 1 then
    fail(("'train_steps' must be a positive integer, got %s"):format(tostring(o.train_steps)), 4)
  end
  if o.cutoff ~= false and type(o.cutoff) ~= "number" then
    fail("'cutoff' must be a time (number)", 4)
  end
  st.mem = { calls = 0 }
end

-- Per-row candidate choice: returns a list tau[r].
local function choose(st, t, tn)
  local o, s = st.opts, st.schedule
  local n = #st.x
  local delta = s.t_start / o.train_steps
  local half = o.window // 2
  local cands = {}
  for k = -half, half do
    local tau = t + k * delta
    if tau > tn and tau <= s.t_start then
      cands[#cands + 1] = { tau = tau, var = st:point(tau).sigma ^ 2 }
    end
  end
  local flat = st.x
  if flat:dim() ~= 2 then flat = flat:reshape({ n, -1 }) end
  local v = flat:var(2)
  local out = {}
  for r = 1, n do
    local vr = v:get(r)
    local best, bd = t, math.huge
    if vr == vr then
      for _, c in ipairs(cands) do
        local dd = math.abs(vr - c.var)
        if dd < bd then best, bd = c.tau, dd end
      end
    end
    out[r] = best
  end
  return out
end

local function ddim_coefs(p, q)
  local r = q.sigma / p.sigma
  return r, q.alpha - r * p.alpha
end

local function step(st)
  local o = st.opts
  local t, tn = st.times[st.i + 1], st.times[st.i + 2]
  local q = st:point(tn)
  local cutoff = o.cutoff == false and 0.3 * st.schedule.t_start or o.cutoff
  local n = #st.x
  local taus
  if st.i > 0 and o.window > 0 and t > cutoff then taus = choose(st, t, tn) end
  local groups, order = {}, {}
  if taus then
    for r = 1, n do
      local g = groups[taus[r]]
      if not g then
        g = {}
        groups[taus[r]] = g
        order[#order + 1] = taus[r]
      end
      g[#g + 1] = r
    end
  end
  local nfe0 = st.nfe
  if #order <= 1 then
    local tau = order[1] or t
    local x0 = st:eval(st.x, tau, "x0")
    local a, b = ddim_coefs(st:point(tau), q)
    st.x = lincomb({ st.x, x0 }, { a, b })
    st.x0 = x0
    local used = {}
    for r = 1, n do used[r] = tau end
    st.mem = { calls = st.mem.calls + 1, tau = used }
  else
    table.sort(order)
    -- Each group's rows, evaluated at its time, written into consecutive rows of a buffer,
    -- then gathered back into the original row order.
    local xb, x0b = core.zeros(st.x:shape()), core.zeros(st.x:shape())
    local inv, pos = {}, 1
    for _, tau in ipairs(order) do
      local rows = groups[tau]
      local xg = st.x:gather(rows)
      local x0g = st:eval(xg, tau, "x0")
      local a, b = ddim_coefs(st:point(tau), q)
      xb:narrow(1, pos, #rows):copy_(lincomb({ xg, x0g }, { a, b }))
      x0b:narrow(1, pos, #rows):copy_(x0g)
      for j, r in ipairs(rows) do inv[r] = pos + j - 1 end
      pos = pos + #rows
    end
    st.x = xb:gather(inv)
    st.x0 = x0b:gather(inv)
    st.mem = { calls = st.mem.calls + #order, tau = taus }
  end
  st.nfe = nfe0 + 1
end

sampler.register("timeshift", {
  family = "exponential",
  stochastic = false,
  order = 1,
  default_spacing = "time_uniform",
  options = { window = 2, cutoff = false, train_steps = 1000 },
  setup = setup,
  step = step,
})

return { choose = choose }
