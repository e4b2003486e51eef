-- search.baselines: the best hand-designed configuration per NFE, checked against direct
-- sample{} runs, a synthetic fitness with a known optimum, and the exact-NFE guard.
local diffuse = require("diffuse")
local B = require("diffuse.search.baselines")
local fitness = require("diffuse.search.fitness")

describe("search.baselines", function()
  it("picks the configuration with the lowest score of a synthetic fitness", function()
    -- score = a known function of solver, spacing and steps: the optimum is DEIS-3 on logSNR
    local cost = { ddim = 3, ["dpmsolver++_2m"] = 2, unipc = 1.5, deis = 1 }
    local sp = { time_uniform = 0.4, logSNR = 0.1, time_quadratic = 0.3, karras = 0.2 }
    local f = fitness.fn(function(run)
      local c = cost[run.solver] + sp[run.spacing] + (run.order == 3 and -0.05 or 0) + 1 / run.steps
      return c, { nfe = run.steps }
    end)
    local r = B{ fitness = f, nfe = { 4, 8 } }
    assert.are.equal("DEIS-3", r.best[4].label)
    assert.are.equal("logSNR", r.best[4].spacing)
    assert.near(1 + 0.1 - 0.05 + 1 / 8, r.best[8].score, 1e-12)
    assert.are.equal(2 * #B.solvers * #B.spacings, #r.table)
    -- per solver: its best grid
    assert.are.equal("logSNR", r.per_solver["DDIM"][4].spacing)
    assert.truthy(B.format(r):find("**1.3** (logSNR)", 1, true)) -- DEIS-3 at NFE 4: 1 + 0.1 - 0.05 + 1/4
  end)

  it("reproduces a direct sample{} run on the 2-D mixture and keeps the exact NFE", function()
    local f = B.problems.fitness("gmm2d", 1)
    local solvers = { B.solvers[1], B.solvers[2] }
    local r = B{ fitness = f, nfe = { 5 }, solvers = solvers, spacings = { "time_uniform", "logSNR" } }
    local p = B.problems.gmm2d()
    -- independent evaluation: run DDIM and DPM-Solver++(2M) directly and compare with rk45
    local x_start = diffuse.randn(p.shape, { seed = 1, draw = 0 }):mul(p.schedule:sigma(p.schedule.t_start))
    local exact = diffuse.exact_ode(p.model, p.schedule, x_start, { rtol = 1e-7, atol = 1e-7 })
    local best, best_label = math.huge, nil
    for _, s in ipairs({ "ddim", "dpmsolver++_2m" }) do
      for _, sp in ipairs({ "time_uniform", "logSNR" }) do
        local x, info = diffuse.sample{ model = p.model, schedule = p.schedule, solver = s, steps = 5, spacing = sp,
          x = x_start }
        assert.are.equal(5, info.nfe)
        local e = diffuse.metrics.ode_error(x, exact).rms
        if e < best then best, best_label = e, s .. "/" .. sp end
      end
    end
    assert.near(best, r.best[5].score, 1e-6)
    assert.are.equal(best_label, r.best[5].run.solver .. "/" .. r.best[5].spacing)
  end)

  it("refuses a run whose NFE differs from the requested budget", function()
    local f = fitness.fn(function(run) return 1, { nfe = run.steps + 1 } end)
    assert.has_error(function() B{ fitness = f, nfe = { 4 } } end)
  end)

  it("checks its options", function()
    assert.has_error(function() B{ nfe = { 4 } } end, "search.baselines: 'fitness' is required: a fitness from diffuse.search.fitness (or a function(run) -> score, info)")
    assert.has_error(function() B{ fitness = fitness.fn(function() return 0 end), nfe = { 0 } } end)
    local ok, err = pcall(B, { fitness = fitness.fn(function() return 0 end), bogus = 1 })
    assert.is_false(ok)
    assert.truthy(tostring(err):find("bogus"))
  end)

  it("defines the shared mixtures once, reproducibly", function()
    local a, b = B.problems.gmm64d(), B.problems.gmm64d()
    assert.are.same({ 500, 64 }, a.shape)
    local x = diffuse.randn({ 3, 64 }, { seed = 3 })
    local p = { t = 0.5, alpha = 0.8, sigma = 0.6 }
    assert.are.equal(0, a.model(x, p):max_abs_diff(b.model(x, p)))
    assert.are.same({ 1000, 2 }, B.problems.gmm2d().shape)
  end)
end)
