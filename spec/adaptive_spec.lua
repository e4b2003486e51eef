-- rk45 (adaptive Dormand-Prince) against the closed-form probability-flow ODE of a Gaussian,
-- and the Time-Shift sampler against a reference DDIM written here.
local diffuse = require("diffuse")

-- Data x0 ~ N(mu, s^2 I).  Denoiser: D(x_hat, sh) = mu + s^2 / (s^2 + sh^2) (x_hat - mu) with
-- x_hat = x / alpha, sh = sigma / alpha.  Along the ODE d x_hat / d sh = (x_hat - D) / sh =
-- sh (x_hat - mu) / (s^2 + sh^2), so (x_hat - mu) / sqrt(s^2 + sh^2) is constant:
--     x_hat(sh1) = mu + sqrt(s^2 + sh1^2) / sqrt(s^2 + sh0^2) (x_hat(sh0) - mu).
local MU, S = 0.3, 0.5

local function gaussian_model(x, p)
  local sh = p.sigma / p.alpha
  local c = S * S / (S * S + sh * sh)
  return x:mul(c / p.alpha):add(MU * (1 - c))
end

local function closed_form(sched, x, t0, t1)
  local a0, a1 = sched:alpha(t0), sched:alpha(t1)
  local sh0, sh1 = sched:sigma_hat(t0), sched:sigma_hat(t1)
  local r = math.sqrt(S * S + sh1 * sh1) / math.sqrt(S * S + sh0 * sh0)
  local rows = x:totable()
  for _, row in ipairs(rows) do
    for j, v in ipairs(row) do row[j] = a1 * (MU + r * (v / a0 - MU)) end
  end
  return diffuse.tensor(rows)
end

local schedules = {
  vp_linear = diffuse.schedule.vp_linear({}),
  edm = diffuse.schedule.edm({}),
}

describe("rk45", function()
  for name, sched in pairs(schedules) do
    local x = diffuse.randn({ 6, 5 }, { seed = 3 }):mul(sched:sigma(sched.t_start))

    it(("matches the closed-form Gaussian flow to 1e-5 (%s, every variable, t_end > 0 and = 0)"):format(name),
      function()
        for _, var in ipairs({ "lambda", "sigma_hat", "t" }) do
          for _, t1 in ipairs({ sched.t_end, 0 }) do
            local y, info = diffuse.exact_ode(gaussian_model, sched, x,
              { predicts = "x0", variable = var, t_end = t1, rtol = 1e-7, atol = 1e-7 })
            local err = y:max_abs_diff(closed_form(sched, x, sched.t_start, t1))
            assert(err < 1e-5, ("%s %s t_end=%g: error %.3g (nfe %d)"):format(name, var, t1, err, info.nfe))
          end
        end
      end)

    it(("error falls with the tolerance and NFE grows (%s)"):format(name), function()
      local ref = closed_form(sched, x, sched.t_start, sched.t_end)
      local last_err, last_nfe = math.huge, 0
      for _, tol in ipairs({ 1e-2, 1e-3, 1e-4, 1e-5, 1e-6 }) do
        local y, info = diffuse.exact_ode(gaussian_model, sched, x, { predicts = "x0", rtol = tol, atol = tol })
        local err = y:max_abs_diff(ref)
        assert(err < last_err, ("tol %g: error %.3g did not fall below %.3g"):format(tol, err, last_err))
        assert(info.nfe > last_nfe, ("tol %g: nfe %d did not grow past %d"):format(tol, info.nfe, last_nfe))
        assert(err < 30 * tol, ("tol %g: error %.3g"):format(tol, err))
        last_err, last_nfe = err, info.nfe
      end
    end)
  end

  it("lands exactly on t_end, counts NFE and steps, reports accepted and rejected steps", function()
    local sched = schedules.vp_linear
    local x = diffuse.randn({ 4, 3 }, { seed = 1 }):mul(sched:sigma(1))
    local calls, seen = 0, {}
    local model = function(xx, p)
      calls = calls + 1
      seen[#seen + 1] = p.t
      return gaussian_model(xx, p)
    end
    local steps_cb = 0
    local y, info = diffuse.sample({ model = model, predicts = "x0", schedule = sched, solver = "rk45", x = x,
      t_end = 0.05, rtol = 1e-4, atol = 1e-4, callback = function(c) steps_cb = steps_cb + 1 end })
    local st = info.state
    assert.are.equal(calls, info.nfe)
    assert.are.equal(0.05, st.t)
    assert.are.equal(0.05, seen[#seen])                -- the last stage is at t_end exactly
    assert.are.equal(0.05, st.mem.times[#st.mem.times])
    assert.are.equal(st.mem.accepted, info.steps)
    assert.are.equal(st.mem.accepted, steps_cb)
    -- FSAL: 6 calls per trial step, 1 at the start, 1 for the starting-step rule
    assert.are.equal(6 * (st.mem.accepted + st.mem.rejected) + 2, info.nfe)
    local prev = math.huge
    for _, t in ipairs(st.mem.times) do assert.is_true(t < prev); prev = t end
    assert.is_true(y:max_abs_diff(closed_form(sched, x, 1, 0.05)) < 1e-3)
  end)

  it("h_init skips the starting-step rule; a tiny max_steps fails with a clear message", function()
    local sched = schedules.edm
    local x = diffuse.randn({ 2, 2 }, { seed = 2 }):mul(80)
    local _, info = diffuse.exact_ode(gaussian_model, sched, x, { predicts = "x0", h_init = 0.5, rtol = 1e-4,
      atol = 1e-4 })
    assert.are.equal(6 * (info.accepted + info.rejected) + 1, info.nfe)
    local ok, err = pcall(diffuse.exact_ode, gaussian_model, sched, x, { predicts = "x0", max_steps = 3 })
    assert.is_false(ok)
    assert.matches("max_steps = 3", err)
  end)

  it("rejects bad options with messages naming them", function()
    local sched = schedules.vp_linear
    local x = diffuse.zeros(1, 2)
    local function msg(o)
      local ok, e = pcall(diffuse.exact_ode, gaussian_model, sched, x, o)
      assert.is_false(ok)
      return e
    end
    assert.matches("unknown variable 'x'", msg({ predicts = "x0", variable = "x" }))
    assert.matches("unknown option 'tol'", msg({ predicts = "x0", tol = 1 }))
    assert.matches("need t_start > t_end", msg({ predicts = "x0", t_start = 0.1, t_end = 0.2 }))
    local ok, e = pcall(diffuse.sample, { model = gaussian_model, predicts = "x0", schedule = sched, solver = "rk45",
      x = x, steps = 10 })
    assert.is_false(ok)
    assert.matches("chooses its own steps", e)
  end)

  it("a clone continues exactly like the original; a gathered state to the tolerance", function()
    local sched = schedules.vp_linear
    local x = diffuse.randn({ 3, 2 }, { seed = 5 }):mul(sched:sigma(1))
    local st = diffuse.sampler.new({ model = gaussian_model, predicts = "x0", schedule = sched, solver = "rk45",
      x = x, rtol = 1e-5, atol = 1e-5 })
    st:step(); st:step()
    local c = st:clone()
    local g = st:gather({ 3, 1 })
    local y = st:run()
    assert.are.equal(0, c:run():max_abs_diff(y))
    -- the step sizes are controlled over the batch, so a subset may take other steps
    assert.is_true(g:run():max_abs_diff(y:gather({ 3, 1 })) < 1e-4)
  end)
end)

-- A plain DDIM (eta = 0) written independently of the library.
local function ddim_reference(model, sched, x, times)
  for i = 1, #times - 1 do
    local t, tn = times[i], times[i + 1]
    local a, s = sched:alpha(t), sched:sigma(t)
    local an, sn = sched:alpha(tn), sched:sigma(tn)
    local x0 = model(x, sched:point(t))
    x = x:mul(sn / s):add(x0:mul(an - sn * a / s))
  end
  return x
end

describe("timeshift", function()
  local sched = schedules.vp_linear
  local x = diffuse.randn({ 8, 16 }, { seed = 7 })
  local times = diffuse.grid.times(sched, { spacing = "time_uniform", steps = 10 })

  it("with window 0, or a cutoff above every time, equals plain DDIM", function()
    local ref = ddim_reference(gaussian_model, sched, x, times)
    for _, o in ipairs({ { window = 0 }, { window = 40, cutoff = 2.0 } }) do
      local y, info = diffuse.sample({ model = gaussian_model, predicts = "x0", schedule = sched,
        solver = "timeshift", x = x, times = times, window = o.window, cutoff = o.cutoff })
      assert.is_true(y:max_abs_diff(ref) < 1e-5, ("max diff %.3g"):format(y:max_abs_diff(ref)))
      assert.are.equal(10, info.nfe)
    end
  end)

  it("is deterministic, counts one NFE per step, and picks the candidate whose noise matches var(x)", function()
    local window = 60
    local picked, xs = {}, {}
    local function run()
      return diffuse.sample({ model = gaussian_model, predicts = "x0", schedule = sched, solver = "timeshift",
        x = x, times = times, window = window, cutoff = 0.2, callback = function(c)
          picked[c.i] = c.state.mem.tau
          xs[c.i] = c.x
        end })
    end
    local y1, info = run()
    local p1 = picked
    picked = {}
    local y2 = run()
    assert.are.equal(0, y1:max_abs_diff(y2))
    assert.are.equal(10, info.nfe)
    -- Independent check of the choice at step 3 (from times[3]): candidates times[3] + k/1000.
    local v = xs[2]:var(2)
    local shifted = 0
    for r = 1, #x do
      local best, bd = nil, math.huge
      for k = -window // 2, window // 2 do
        local tau = times[3] + k / 1000
        if tau > times[4] and tau <= 1 then
          local dd = math.abs(v:get(r) - sched:sigma(tau) ^ 2)
          if dd < bd then best, bd = tau, dd end
        end
      end
      assert.is_true(math.abs(p1[3][r] - best) < 1e-12, ("row %d: picked %.6g, expected %.6g"):format(r, p1[3][r], best))
      if best ~= times[3] then shifted = shifted + 1 end
    end
    assert.is_true(shifted > 0)
    -- no shift at the first step, nor below the cutoff
    for r = 1, #x do
      assert.are.equal(times[1], p1[1][r])
      assert.are.equal(times[10], p1[10][r])
    end
  end)

  it("rows evaluated at different times match per-row DDIM from their own time", function()
    local st = diffuse.sampler.new({ model = gaussian_model, predicts = "x0", schedule = sched, solver = "timeshift",
      x = x, times = times, window = 60, cutoff = 0.2 })
    st:step(); st:step()
    local before = st.x
    st:step()
    local tau = st.mem.tau
    local q = sched:point(times[4])
    for r = 1, #x do
      local xr = before:narrow(1, r, 1)
      local p = sched:point(tau[r])
      local x0 = gaussian_model(xr, p)
      local expect = xr:mul(q.sigma / p.sigma):add(x0:mul(q.alpha - q.sigma * p.alpha / p.sigma))
      assert.is_true(st.x:narrow(1, r, 1):max_abs_diff(expect) < 1e-5)
    end
  end)

  it("rejects bad options", function()
    local ok, e = pcall(diffuse.sample, { model = gaussian_model, predicts = "x0", schedule = sched,
      solver = "timeshift", x = x, steps = 5, window = -1 })
    assert.is_false(ok)
    assert.matches("'window' must be a non%-negative integer", e)
  end)
end)
