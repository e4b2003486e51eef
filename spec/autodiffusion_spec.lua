-- search.autodiffusion: the evolutionary search improves on the uniform grid of an exact
-- mixture; every candidate it proposes has K distinct steps and exactly the block budget;
-- skipped blocks reach the model at the right times; runs are reproducible and resume from
-- the archive.
local diffuse = require("diffuse")
local AD = require("diffuse.search.autodiffusion")
local B = require("diffuse.search.baselines")
local fitness = require("diffuse.search.fitness")

local function tmpname()
  local p = os.tmpname()
  os.remove(p)
  return p
end

describe("search.autodiffusion", function()
  it("finds 4 DDIM steps better than the uniform grid on the 2-D mixture, also on held-out noise", function()
    local f = B.problems.fitness("gmm2d", 1)
    local best, score, info = AD{ fitness = f, steps = 4, population = 20, generations = 6, seed = 3 }
    local uniform = f{ solver = "ddim", steps = 4, spacing = "time_uniform" }
    assert.near(uniform, info.initial.score, 1e-9) -- the first population holds the uniform grid
    assert.is_true(score < 0.9 * uniform)
    assert.are.equal(5, #best.times)
    assert.are.equal(diffuse.schedule.vp_linear().t_start, best.times[1])
    -- independent check of the reported score: run the found times directly
    assert.near(score, f{ solver = "ddim", times = best.times }, 1e-12)
    local held = B.problems.fitness("gmm2d", 2)
    assert.is_true(held(info.run) < held{ solver = "ddim", steps = 4, spacing = "time_uniform" })
    -- the best-so-far never gets worse
    for g = 2, #info.history do assert.is_true(info.history[g] <= info.history[g - 1]) end
    -- reproducible for a seed
    local best2, score2 = AD{ fitness = f, steps = 4, population = 20, generations = 6, seed = 3 }
    assert.are.equal(score, score2)
    assert.are.same(best.times, best2.times)
  end)

  it("proposes only legal candidates: K distinct steps and exactly the block budget", function()
    local gmm = B.problems.gmm2d()
    local sched = gmm.schedule
    local K, budget, blocks = 5, 7, 6
    -- a stand-in network: 6 blocks, records the skip sets it receives
    local seen_total
    local net_model = setmetatable({ predicts = "x0", schedule = sched, net = { blocks = { 1, 2, 3, 4, 5, 6 } } }, {
      __call = function(_, x, p, cond, ctx)
        seen_total = seen_total + (ctx and ctx.skip and #ctx.skip or 0)
        return x
      end,
    })
    local checks = 0
    local g = fitness.fn(function(run)
      local ts = run.times
      assert.are.equal(K + 1, #ts)
      assert.are.equal(sched.t_start, ts[1])
      for i = 2, #ts do assert.is_true(ts[i] < ts[i - 1]) end
      seen_total = 0
      for i = 1, K do run.model(diffuse.zeros({ 1, 2 }), { t = ts[i] }, nil, nil) end
      assert.are.equal(budget, seen_total)
      checks = checks + 1
      return (ts[2] - 0.5) ^ 2, { nfe = K }
    end)
    local best, _, info = AD{ fitness = g, schedule = sched, model = net_model, steps = K, stage = "joint",
      block_budget = budget, population = 16, generations = 5, seed = 2, mutation_prob = 0.5 }
    assert.is_true(checks >= 40)
    assert.are.equal(checks, info.evaluations)
    local total = 0
    for s = 1, K do
      for _, b in ipairs(best.skips[s]) do
        assert.is_true(b >= 1 and b <= blocks)
        total = total + 1
      end
    end
    assert.are.equal(budget, total)
    -- the operators directly, many times
    local space = AD.space{ steps = K, grid = 50, t_start = 1, t_end = 0.001, stage = "joint", block_budget = budget,
      blocks = blocks }
    local rng = AD.new_rng(7)
    local a, b = space:random(rng), space:random(rng)
    for _ = 1, 300 do
      local m = space:mutate(a, rng, 0.5)
      assert.is_true(space:legal(m))
      local c = space:crossover(a, b, rng)
      -- crossover may repeat a step (the search redraws such children); the budget always holds
      local n = 0
      for _, set in ipairs(c.skips) do n = n + #set end
      assert.are.equal(budget, n)
      a, b = m, (space:legal(c) and c or b)
    end
  end)

  it("hands each step's skip set to the model at that step's time", function()
    local calls = {}
    local sched = diffuse.schedule.vp_linear()
    local base = setmetatable({ predicts = "x0", schedule = sched }, { __call = function(_, x, p, _, ctx)
      calls[#calls + 1] = { t = p.t, skip = ctx and ctx.skip }
      return x:mul(0.5)
    end })
    local times = { sched.t_start, 0.6, 0.3, sched.t_end }
    local skips = { { 1, 2 }, {}, { 6 } }
    local run = AD.run_of({ times = times, skips = skips }, { model = base })
    local x, info = diffuse.sample{ model = run.model, schedule = sched, solver = run.solver, times = run.times,
      shape = { 4, 3 }, seed = 1 }
    assert.are.equal(3, info.nfe)
    assert.are.equal(3, #calls)
    assert.are.same({ 1, 2 }, calls[1].skip)
    assert.is_nil(calls[2].skip)
    assert.are.same({ 6 }, calls[3].skip)
    assert.are.equal(0.6, calls[2].t)
  end)

  it("resumes from its archive without evaluating again", function()
    local path = tmpname()
    local f = B.problems.fitness("gmm2d", 1)
    local best, score, info = AD{ fitness = f, steps = 3, population = 8, generations = 3, seed = 5, archive = path }
    assert.is_true(info.evaluations > 0)
    local best2, score2, info2 = AD{ fitness = f, steps = 3, population = 8, generations = 3, seed = 5, archive = path }
    assert.are.equal(0, info2.evaluations)
    assert.are.equal(info.evaluations, info2.cached)
    assert.are.equal(score, score2)
    assert.are.same(best.times, best2.times)
    os.remove(path)
  end)

  it("gives the same search through a pool", function()
    local f = B.problems.fitness("gmm2d", 1)
    local calls = 0
    local pool = { map = function(_, fn, items)
      calls = calls + 1
      local out = {}
      for i, it in ipairs(items) do out[i] = fn(it) end
      return out
    end }
    local b1, s1, i1 = AD{ fitness = f, steps = 4, population = 12, generations = 4, seed = 2, pool = pool }
    local b2, s2, i2 = AD{ fitness = f, steps = 4, population = 12, generations = 4, seed = 2 }
    assert.are.equal(4, calls) -- one map per generation
    assert.are.equal(s2, s1)
    assert.are.same(b2.times, b1.times)
    assert.are.equal(i2.evaluations, i1.evaluations)
  end)

  it("checks its options", function()
    local f = B.problems.fitness("gmm2d", 1)
    assert.has_error(function() AD{ steps = 4 } end, "search.autodiffusion: 'fitness' is required: a fitness from diffuse.search.fitness")
    assert.has_error(function() AD{ fitness = f, stage = "arch" } end, "search.autodiffusion: stage = arch; valid: time, joint")
    assert.has_error(function() AD{ fitness = f, stage = "joint", blocks = 6, model = function() end, block_budget = 100 } end)
    local ok, err = pcall(AD, { fitness = f, populaton = 4 })
    assert.is_false(ok)
    assert.truthy(tostring(err):find("populaton"))
  end)
end)
