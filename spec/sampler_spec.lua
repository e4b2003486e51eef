-- The sampler state: stepping, NFE counting, clone/gather, callbacks, noise supply, errors.
-- A test-only solver (registered here, not in the library) keeps this spec independent of
-- the real solvers: first-order data-prediction steps (DDIM) plus optional injected noise.
local H = require("helper")
local diffuse = H.diffuse
local sampler = diffuse.sampler

sampler.register("_test_ddim", {
  family = "test",
  stochastic = true,
  options = { noise_scale = 0.0 },
  step = function(st)
    local t, tn = st.times[st.i + 1], st.times[st.i + 2]
    local x0 = st:eval(st.x, t)
    local p, q = st:point(t), st:point(tn)
    local r = q.sigma / p.sigma
    local x = diffuse.lincomb({ st.x, x0 }, { r, q.alpha - r * p.alpha })
    if st.opts.noise_scale ~= 0 then x = diffuse.lincomb({ x, st:draw() }, { 1, st.opts.noise_scale }) end
    st.x, st.x0 = x, x0
    st.mem.last = x0
  end,
})

-- Exact denoiser of N(mu, s^2 I) data: x0 = mu + s^2/(s^2 + sh^2) (x/alpha - mu).
local function gaussian_model(mu, s)
  return setmetatable({ predicts = "x0" }, {
    __call = function(_, x, p)
      local sh = p.sigma / p.alpha
      local c = s * s / (s * s + sh * sh)
      return diffuse.lincomb({ x }, { c / p.alpha }):add((1 - c) * mu)
    end,
  })
end

local sched = diffuse.schedule.vp_linear()

local function run(extra)
  local o = { model = gaussian_model(0.5, 0.2), schedule = sched, solver = "_test_ddim", steps = 6, shape = { 8, 3 }, seed = 3 }
  for k, v in pairs(extra or {}) do o[k] = v end
  return o
end

describe("sampler state", function()
  it("steps one at a time, counts NFE and equals sample{}", function()
    local st = sampler.new(run())
    assert.equal(6, st.n)
    assert.equal(0, st.nfe)
    st:step()
    assert.equal(1, st.i)
    assert.equal(1, st.nfe)
    st:run()
    assert.is_true(st:done())
    local x, info = diffuse.sample(run())
    assert.equal(6, info.nfe)
    assert.equal(0, x:max_abs_diff(st.x))
  end)

  it("draws the starting x from the seed, per row independent of the batch size", function()
    local a = sampler.new(run({ shape = { 8, 3 } })).x
    local b = sampler.new(run({ shape = { 3, 3 } })).x
    assert.equal(0, a:narrow(1, 1, 3):max_abs_diff(b))
    local t0 = sched.t_start
    assert.allclose(diffuse.randn({ 3, 3 }, { seed = 3 }):mul(sched:sigma(t0)), b, 0, 0)
  end)

  it("a given x is used as is", function()
    local x0 = diffuse.ones(2, 3)
    local st = sampler.new(run({ x = x0, shape = nil }))
    assert.equal(x0, st.x)
  end)

  it("clone gives an independent state", function()
    local st = sampler.new(run())
    st:step()
    local c = st:clone()
    c:step()
    assert.equal(1, st.i)
    assert.equal(2, c.i)
    st:step()
    assert.equal(0, st.x:max_abs_diff(c.x))
  end)

  it("gather re-indexes every batch tensor, repeats allowed", function()
    local st = sampler.new(run())
    st:step()
    local g = st:gather({ 2, 2, 5 })
    assert.same({ 3, 3 }, g.x:shape())
    assert.equal(0, g.x[1]:max_abs_diff(st.x[2]))
    assert.equal(0, g.mem.last[3]:max_abs_diff(st.mem.last[5]))
    g:run()
    st:run()
    assert.allclose(st.x:gather({ 2, 2, 5 }), g.x, 1e-6, 0)
  end)

  it("gather carries a per-row condition and the model-side memory; models.fn passes the call context", function()
    local gmm = diffuse.models.gmm{ means = { { -2, 0 }, { 2, 0 } }, stds = { 0.3, 0.3 }, labels = { 0, 1 } }
    local seen_ctx
    local m = diffuse.models.fn(function(x, p, cond, ctx)
      seen_ctx = ctx
      ctx.state.aux.rows = ctx.state.aux.rows or x:mul(0):add(1)
      return gmm(x, p, cond)
    end, { predicts = "x0" })
    local labels = diffuse.tensor({ 0, 1, 0, 1 })
    local st = sampler.new({ model = m, schedule = sched, solver = "dpmsolver++", steps = 6, shape = { 4, 2 }, seed = 5,
      cond = labels })
    st:step()
    assert.equal(st, seen_ctx.state)
    local g = st:gather({ 2, 4, 4 })
    assert.same({ 1, 1, 1 }, g.cond:totable())
    assert.same({ 3, 2 }, g.aux.rows:shape())
    g:run()
    -- the forked rows end where the unforked ones do: their labels followed them
    st:run()
    assert.allclose(st.x:gather({ 2, 4, 4 }), g.x, 1e-6, 0)
  end)

  it("the callback sees x, the x0 estimate and the step", function()
    local seen = {}
    diffuse.sample(run({ callback = function(s) seen[#seen + 1] = { s.i, s.n, s.x:numel(), s.x0:numel(), s.nfe } end }))
    assert.equal(6, #seen)
    assert.same({ 6, 6, 24, 24, 6 }, seen[6])
  end)

  it("supplied noise is used for every draw, in order", function()
    local noise = {}
    for k = 1, 6 do noise[k] = diffuse.full({ 8, 3 }, k / 10) end
    local a = diffuse.sample(run({ noise = noise, noise_scale = 0.5 }))
    local b = diffuse.sample(run({ noise = noise, noise_scale = 0.5 }))
    assert.equal(0, a:max_abs_diff(b))
    local c = diffuse.sample(run({ noise_scale = 0.5 }))
    assert.is_true(a:max_abs_diff(c) > 1e-3)
    assert.matches("noise list has 2 tensors, the solver needs draw 3 %(step 3%)",
      H.error_of(diffuse.sample, run({ noise = { noise[1], noise[2] }, noise_scale = 0.5 })))
  end)

  it("seeded noise does not depend on the batch size", function()
    local a = diffuse.sample(run({ noise_scale = 0.5, shape = { 8, 3 } }))
    local b = diffuse.sample(run({ noise_scale = 0.5, shape = { 2, 3 } }))
    assert.allclose(a:narrow(1, 1, 2), b, 1e-6, 0)
  end)

  it("a non-finite x stops the run with an error naming the step", function()
    local calls = 0
    local bad = setmetatable({ predicts = "x0" }, { __call = function(_, x)
      calls = calls + 1
      if calls == 3 then return diffuse.full(x:shape(), 0 / 0) end
      return x:mul(0)
    end })
    assert.matches("x became non%-finite at step 3 of 6", H.error_of(diffuse.sample, run({ model = bad })))
  end)

  it("names unknown solvers and options with the valid ones", function()
    assert.matches("unknown solver 'nope'; valid: .*_test_ddim", H.error_of(diffuse.sample, run({ solver = "nope" })))
    assert.matches("unknown option 'stepz' for solver _test_ddim; valid: .*steps", H.error_of(diffuse.sample, run({ stepz = 1 })))
    assert.matches("option 'noise_scale' of solver _test_ddim must be a number", H.error_of(diffuse.sample, run({ noise_scale = "x" })))
  end)

  it("checks the model, the prediction kind, the schedule and the grid", function()
    assert.matches("'model' is required", H.error_of(diffuse.sample, run({ model = false })))
    assert.matches("say what the model predicts", H.error_of(diffuse.sample, run({ model = function() end })))
    assert.matches("unknown prediction kind 'noise'", H.error_of(diffuse.sample, run({ predicts = "noise" })))
    assert.matches("'schedule' must be a diffuse schedule", H.error_of(diffuse.sample, run({ schedule = {} })))
    assert.matches("times must decrease strictly", H.error_of(diffuse.sample, run({ steps = false, times = { 1, 0.5, 0.7 } })))
    assert.matches("the model returned nil, not a tensor", H.error_of(diffuse.sample, run({ model = function() end, predicts = "eps" })))
    local st = sampler.new(run())
    st:run()
    assert.matches("the run is already finished", H.error_of(st.step, st))
  end)

  it("a plain function is a model once its prediction is declared", function()
    local m = gaussian_model(0.5, 0.2)
    local x = diffuse.sample(run({ model = function(x, p) return m(x, p) end, predicts = "x0" }))
    assert.equal(0, x:max_abs_diff(diffuse.sample(run())))
  end)
end)
