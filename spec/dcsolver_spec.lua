-- DC-Solver: dynamic compensation ratios fitted against a fine reference trajectory, and the
-- cascade polynomial regression that predicts them for other NFEs and guidance scales.
local diffuse = require("diffuse")
local dc = require("diffuse.search.dcsolver")
local fitness = require("diffuse.search.fitness")

local sched = diffuse.schedule.vp_linear()
local gmm = diffuse.models.gmm { means = { { 2, 0 }, { -2, 1 }, { 0, -2 } }, stds = { 0.3, 0.5, 0.2 } }

describe("search.dcsolver", function()
  it("builds the reference trajectory with a fine solver, close to the exact ODE solution", function()
    local times = diffuse.grid.times(sched, { spacing = "logSNR", steps = 4 })
    local x = diffuse.randn({ 50, 2 }, { seed = 3 }):mul(sched:sigma(times[1]))
    local xs = dc.reference({ model = gmm, schedule = sched, times = times, x = x })
    assert.equal(5, #xs)
    for i = 2, 5 do
      local exact = diffuse.exact_ode(gmm, sched, x, { rtol = 1e-8, atol = 1e-8, t_end = times[i] })
      assert.is_true(diffuse.metrics.ode_error(xs[i], exact).rms < 5e-4)
    end
  end)

  it("fits ratios as plain data and samples with them through a plan", function()
    local fit = dc.fit({ model = gmm, schedule = sched, nfe = 5, trajectories = 10, dim = 2, objective = "step" })
    assert.equal(5, #fit.ratios)
    assert.equal(1, fit.ratios[1])
    for s = 2, 5 do
      -- greedy per step: never worse at its own step than no compensation (ratio 1 is a candidate)
      assert.is_true(fit.loss[s] <= fit.loss_plain[s] + 1e-12)
      assert.is_true(fit.ratios[s] >= 0.5 and fit.ratios[s] <= 1.5)
    end
    local json = require("diffuse.json")
    local back = json.decode(json.encode(fit))
    local p = dc.plan(back)
    assert.is_true(diffuse.plan.validate(p))
    assert.equal(5, diffuse.plan.nfe(p))
    for s = 2, 5 do assert.near(fit.ratios[s], p.steps[s].dc, 1e-12) end
    local x, info = diffuse.sample({ model = gmm, schedule = sched, solver = "plan", plan = p, shape = { 4, 2 } })
    assert.equal(5, info.nfe)
    assert.equal(4, #x)
  end)

  it("fitted on the final error, beats plain UniPC (same variant and order) on held-out noise", function()
    local f = fitness.ode_error({ model = gmm, schedule = sched, shape = { 500, 2 }, seed = 2 })
    for _, nfe in ipairs({ 6, 8 }) do
      local fit = dc.fit({ model = gmm, schedule = sched, nfe = nfe, trajectories = 50, dim = 2, seed = 1 })
      local e_dc = f({ solver = "plan", plan = dc.plan(fit) })
      local e_unipc = f({ solver = "plan", plan = diffuse.plan.unipc({ schedule = sched, steps = nfe, variant = "bh2" }) })
      assert.is_true(e_dc < 0.97 * e_unipc, ("NFE %d: DC-Solver %.4g, UniPC %.4g"):format(nfe, e_dc, e_unipc))
    end
  end)

  it("CPR recovers a cascade polynomial exactly and predicts ratios for new NFEs and scales", function()
    local function truth(s, n, g)
      local u, v, w = s / n, n / 10, g / 10
      local c0 = (1 + 0.1 * v - 0.05 * v * v) + 0.02 * w
      local c1 = (-0.3 + 0.2 * v) * (1 + 0.5 * w)
      local c2 = 0.25 - 0.1 * v * v + 0.03 * w
      return c0 + c1 * u + c2 * u * u
    end
    local fits = {}
    for _, n in ipairs({ 5, 6, 8, 10 }) do
      for _, g in ipairs({ 1, 3, 7.5 }) do
        local r = { 1 }
        for s = 2, n do r[s] = truth(s, n, g) end
        fits[#fits + 1] = { nfe = n, guidance = g, ratios = r }
      end
    end
    local c = dc.cpr({ fits = fits })
    assert.same({ step = 2, nfe = 2, guidance = 2 }, c.degree)
    assert.is_true(c.rms < 1e-6)
    local r = dc.predict(c, 7, 5)
    assert.equal(1, r[1])
    for s = 2, 7 do assert.near(truth(s, 7, 5), r[s], 1e-5) end
    -- one NFE only: the NFE degree drops to 0
    local c1 = dc.cpr({ fits = { fits[1] } })
    assert.equal(0, c1.degree.nfe)
    assert.matches("expected the result of dcsolver.cpr", select(2, pcall(dc.predict, {}, 5)))
  end)

  it("names bad options", function()
    assert.matches("unknown option 'steps'", select(2, pcall(dc.fit, { model = gmm, steps = 4 })))
    assert.matches("objective = x; valid: step, final",
      select(2, pcall(dc.fit, { model = gmm, schedule = sched, nfe = 4, dim = 2, objective = "x" })))
    assert.matches("4 ratios for 5 steps", select(2, pcall(dc.plan, { schedule = sched, nfe = 5, ratios = { 1, 1, 1, 1 } })))
  end)
end)
