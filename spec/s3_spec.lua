-- S3 on fast fitness functions: it beats the presets on an exact mixture, is reproducible
-- from its seed, resumes from its archive (also after a kill that cut the last line), and
-- evaluates through a pool whose items and results cross as JSON.
local diffuse = require("diffuse")
local json = require("diffuse.json")
local s3 = require("diffuse.search.s3")
local space = require("diffuse.search.space")

local sched = diffuse.schedule.vp_linear()
local gmm = diffuse.models.gmm({ means = { { -1, 0 }, { 1, 0.5 }, { 0, -1 } }, stds = { 0.2, 0.3, 0.1 } })
local f = diffuse.search.fitness.ode_error({ model = gmm, schedule = sched, shape = { 64, 2 }, seed = 1 })

local small = { generations = 3, initial = 8, population = 8, candidates_per_generation = 60, evaluate_per_generation = 6,
  predictor = { epochs = 40 } }
local function opts(extra)
  local o = { fitness = f, nfe = 4, schedule = sched, seed = 3 }
  for k, v in pairs(small) do o[k] = v end
  for k, v in pairs(extra or {}) do o[k] = v end
  return o
end

local function lines(path)
  local out = {}
  for l in io.lines(path) do out[#out + 1] = l end
  return out
end

describe("search.s3", function()
  local path
  before_each(function() path = os.tmpname() os.remove(path) end)
  after_each(function() os.remove(path) end)

  it("finds a plan better than every preset at the same NFE, valid and within budget", function()
    local best, score, info = s3(opts({ generations = 4 }))
    assert(diffuse.plan.validate(best))
    assert.are.equal(4, space.nfe(best))
    local sp = space.new({ schedule = sched, nfe = 4 })
    local best_preset = math.huge
    for _, p in ipairs(sp:presets()) do best_preset = math.min(best_preset, (f({ solver = "plan", plan = p }))) end
    assert.is_true(score < best_preset, ("searched %g, best preset %g"):format(score, best_preset))
    -- the returned score is the plan's real score
    assert.is_near(score, (f({ solver = "plan", plan = best })), 1e-12)
    assert.are.equal(info.evaluations, info.evaluated)
    assert.is_true(#info.history == 5 and info.history[5].best == score)
    assert.truthy(best.name:match("S3 search: NFE 4"))
  end)

  it("is reproducible from its seed, and another seed searches differently", function()
    local a, sa = s3(opts())
    local b, sb = s3(opts())
    assert.are.equal(sa, sb)
    assert.are.equal(diffuse.plan.tojson(a), diffuse.plan.tojson(b))
    local c, sc, ic = s3(opts({ seed = 4 }))
    assert.is_true(diffuse.plan.tojson(c) ~= diffuse.plan.tojson(a) or sc ~= sa)
    assert.is_true(ic.evaluations > 20)
  end)

  it("resumes from its archive: a rerun skips what was evaluated and ends where a full run ends", function()
    local full, sfull, ifull = s3(opts({ generations = 4 }))
    -- a run stopped after 2 generations, then continued to 4
    local _, _, i2 = s3(opts({ generations = 2, archive = path }))
    local n2 = #lines(path)
    assert.are.equal(i2.evaluated, n2)
    local cont, scont, icont = s3(opts({ generations = 4, archive = path }))
    assert.are.equal(sfull, scont)
    assert.are.equal(diffuse.plan.tojson(full), diffuse.plan.tojson(cont))
    assert.are.equal(n2, icont.reused)
    assert.are.equal(ifull.evaluations - n2, icont.evaluated)
    -- a kill in the middle of writing: drop the last 3 lines and cut the one before in half
    local ls = lines(path)
    local f2 = assert(io.open(path, "w"))
    for i = 1, #ls - 4 do f2:write(ls[i], "\n") end
    f2:write(ls[#ls - 3]:sub(1, 40))
    f2:close()
    local again, sagain, iagain = s3(opts({ generations = 4, archive = path }))
    assert.are.equal(sfull, sagain)
    assert.are.equal(diffuse.plan.tojson(full), diffuse.plan.tojson(again))
    assert.are.equal(4, iagain.evaluated)
    -- nothing left to do: everything reused
    local _, _, idone = s3(opts({ generations = 4, archive = path }))
    assert.are.equal(0, idone.evaluated)
  end)

  it("takes any Lua function as the fitness", function()
    -- the score: distance of the second interior time to 0.3 plus 1 per noise-prediction step
    local fit = diffuse.search.fitness.fn(function(run)
      local p = run.plan
      local v = math.abs(p.times[3] - 0.3)
      for _, st in ipairs(p.steps) do if st.pred == "noise" then v = v + 1 end end
      return v, { nfe = space.nfe(p) }
    end)
    local best, score = s3(opts({ fitness = fit, generations = 6 }))
    assert.is_true(score < 0.05, "score " .. score)
    for _, st in ipairs(best.steps) do assert.are.equal("data", st.pred) end
  end)

  it("evaluates through a pool, with items and results as plain data", function()
    local calls = 0
    local pool = {
      map = function(_, fn, items)
        calls = calls + 1
        local out = {}
        for i, item in ipairs(items) do
          out[i] = json.decode(json.encode(fn(json.decode(json.encode(item)))))
        end
        return out
      end,
    }
    local a, sa = s3(opts())
    local b, sb = s3(opts({ pool = pool }))
    assert.are.equal(4, calls)
    assert.are.equal(sa, sb)
    assert.are.equal(diffuse.plan.tojson(a), diffuse.plan.tojson(b))
  end)

  it("a failing candidate is recorded as failed, not fatal", function()
    local n = 0
    local fit = diffuse.search.fitness.fn(function(run)
      n = n + 1
      if n % 3 == 0 then error("model blew up") end
      if n % 5 == 0 then return 0 / 0 end
      return run.plan.times[2]
    end)
    local _, score = s3(opts({ fitness = fit, archive = path }))
    assert.is_true(score < math.huge)
    local failed = 0
    local via = {}
    for _, l in ipairs(lines(path)) do
      local r = json.decode(l)
      if r.failed then failed = failed + 1 end
      via[r.via] = (via[r.via] or 0) + 1
    end
    assert.is_true(failed > 3)
    -- how each plan was chosen: 8 random, the presets, then 5 by the predictor and 1 at random per generation
    assert.are.equal(8, via.random)
    assert.are.equal(15, via.predictor)
    assert.are.equal(3, via.explore)
    assert.is_true(via.init >= 12, "init " .. tostring(via.init))
  end)

  it("a final stage re-scores the top plans on other noise and picks the best mean", function()
    local g = f:with_seed(9)
    local best, score, info = s3(opts({ final = { fitness = g, top = 4 }, archive = path }))
    assert.are.equal(4, #info.final)
    local want = math.huge
    for _, r in ipairs(info.final) do
      assert.is_near(r.mean, (r.score + r.final) / 2, 1e-15)
      want = math.min(want, r.mean)
    end
    assert.is_near(want, (score + info.final_score) / 2, 1e-15)
    assert.is_near(info.final_score, (g({ solver = "plan", plan = best })), 1e-12)
    -- resumed: the final scores come from the archive
    local _, _, again = s3(opts({ final = { fitness = g, top = 4 }, archive = path }))
    assert.are.equal(0, again.evaluated)
  end)

  it("checks its options", function()
    assert.has_error(function() s3({ nfe = 4 }) end)
    local ok, err = pcall(s3, opts({ generation = 3 }))
    assert.is_false(ok)
    assert.truthy(err:match("unknown option 'generation'"))
  end)
end)
