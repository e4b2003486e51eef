-- Fitness functions of the searches: the ODE error against a closed-form exact solution,
-- FD against statistics computed here, batching that does not change samples, held-out seeds,
-- Lua-function fitness, and option errors.
local diffuse = require("diffuse")
local fitness = require("diffuse.search.fitness")

local sched = diffuse.schedule.vp_linear()
-- data N(0, s^2 I): the probability-flow ODE maps x_T to x_t = x_T sqrt(alpha_t^2 s^2 + sigma_t^2) / sqrt(alpha_T^2 s^2 + sigma_T^2)
local s2 = 0.25
local gauss = diffuse.models.gmm({ means = { { 0, 0, 0 } }, stds = { math.sqrt(s2) } })

describe("search.fitness", function()
  it("ode_error is the RMS distance to the exact solution from the same noise", function()
    local f = fitness.ode_error({ model = gauss, schedule = sched, shape = { 40, 3 }, seed = 5 })
    local run = { solver = "ddim", steps = 4 }
    local score, info = f(run)
    assert.are.equal(4, info.nfe)
    assert.is_true(info.seconds >= 0)
    -- independently: the same starting noise, the solver's result and the closed form
    local T, t = sched.t_start, sched.t_end
    local x0 = diffuse.randn({ 40, 3 }, { seed = 5, draw = 0 }):mul(sched:sigma(T))
    local x = diffuse.sample({ model = gauss, schedule = sched, solver = "ddim", steps = 4, x = x0 })
    local factor = math.sqrt(sched:alpha(t) ^ 2 * s2 + sched:sigma(t) ^ 2) / math.sqrt(sched:alpha(T) ^ 2 * s2 + sched:sigma(T) ^ 2)
    local exact = x0:mul(factor)
    local rms = math.sqrt(x:sub(exact):square():mean())
    assert.is_near(rms, score, 1e-5 + 1e-3 * rms)
    -- a finer solver is closer; the same seed gives the same score; another seed another
    assert.is_true(f({ solver = "dpmsolver++", steps = 20, order = 3 }) < score / 10)
    assert.are.equal(score, (f(run)))
    local g = f:with_seed(6)
    assert.are_not.equal(score, (g(run)))
    assert.are.equal(6, g.seed)
  end)

  it("fd compares generated samples with reference statistics; batches do not change them", function()
    local data = diffuse.randn({ 20000, 3 }, { seed = 99 }):mul(math.sqrt(s2))
    local ref = diffuse.metrics.stats(data)
    local ident = function(x) return x end
    local f = fitness.fd({ model = gauss, schedule = sched, features = ident, reference = ref, n = 600, dim = 3, seed = 2,
      clamp = false, keep = true })
    local fine, info = f({ solver = "dpmsolver++", steps = 20, order = 3 })
    local coarse = f({ solver = "ddim", steps = 1 })
    assert.is_true(fine < 0.02, "fine " .. fine)
    assert.is_true(coarse > 2 * fine)
    -- the score is the FD of exactly the samples sample{} gives for that seed
    local x = diffuse.sample({ model = gauss, schedule = sched, solver = "dpmsolver++", steps = 20, order = 3,
      shape = { 600, 3 }, seed = 2 })
    assert.is_near(diffuse.metrics.frechet_distance(diffuse.metrics.stats(x), ref), fine, 1e-9)
    assert.is_near(0, info.samples:sub(x):abs():max(), 1e-6)
    -- another batch split: the same samples
    local f7 = fitness.fd({ model = gauss, schedule = sched, features = ident, reference = ref, n = 600, dim = 3, seed = 2,
      clamp = false, batch = 7 })
    assert.is_near(fine, (f7({ solver = "dpmsolver++", steps = 20, order = 3 })), 1e-9)
    assert.are_not.equal(fine, (f:with_seed(3)({ solver = "dpmsolver++", steps = 20, order = 3 })))
  end)

  it("fn wraps any Lua function and checks what it returns", function()
    local f = fitness.fn(function(run) return run.steps * 2, { nfe = run.steps } end)
    local s, info = f({ steps = 3 })
    assert.are.equal(6, s)
    assert.are.equal(3, info.nfe)
    assert.is_number(info.seconds)
    assert.are.equal(f, f:with_seed(2))
    local bad = fitness.fn(function() return "x" end)
    assert.has_error(function() bad({}) end)
    assert.has_error(function() fitness.fn(3) end, "search.fitness.fn: expected a function(run) -> score")
  end)

  it("rejects unknown options and missing models", function()
    local ok, err = pcall(fitness.ode_error, { model = gauss, shape = { 2, 3 }, sead = 1 })
    assert.is_false(ok)
    assert.truthy(err:match("unknown option 'sead'"))
    assert.has_error(function() fitness.ode_error({ shape = { 2, 3 } }) end, "search.fitness.ode_error: 'model' is required")
    assert.has_error(function() fitness.fd({ model = gauss, features = 1, reference = {} }) end)
  end)
end)
