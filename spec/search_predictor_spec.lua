-- The ranking predictor on a synthetic problem: plans scored by a known function of their
-- decisions; trained on 150, it must order held-out plans (Kendall tau > 0.6), its ranking
-- loss must fall, and a fit must be deterministic.
local diffuse = require("diffuse")
local space = require("diffuse.search.space")
local predictor = require("diffuse.search.predictor")

local sched = diffuse.schedule.vp_cosine()
local sp = space.new({ schedule = sched, nfe = 5 })

-- the known score: orders far from 2, noise prediction and late grids cost; correctors help
local function score(p)
  local v = 0
  for _, st in ipairs(p.steps) do
    v = v + ((st.order or 1) - 2) ^ 2 + (st.pred == "noise" and 0.5 or 0) + (st.corrector and -0.7 or 0)
  end
  return v + 0.3 * (sp:lambda(p.times[3]) - 1) ^ 2
end

describe("search.predictor", function()
  local rng = space.rng(1)
  local X, Y = {}, {}
  for i = 1, 250 do
    local p = sp:random(rng)
    X[i], Y[i] = sp:features(p), score(p)
  end
  local trX, trY, teX, teY = {}, {}, {}, {}
  for i = 1, 250 do
    if i <= 150 then trX[#trX + 1], trY[#trY + 1] = X[i], Y[i] else teX[#teX + 1], teY[#teY + 1] = X[i], Y[i] end
  end

  it("kendall_tau: exact on small cases", function()
    assert.are.equal(1, predictor.kendall_tau({ 1, 2, 3 }, { 10, 20, 30 }))
    assert.are.equal(-1, predictor.kendall_tau({ 1, 2, 3 }, { 3, 2, 1 }))
    -- pairs: (1,2) c, (1,3) c, (2,3) d -> 1/3
    assert.is_near(1 / 3, predictor.kendall_tau({ 1, 2, 3 }, { 1, 3, 2 }), 1e-15)
  end)

  it("learns the ranking of held-out plans from pairwise comparisons", function()
    local pr = predictor.new({ dim = sp:feature_dim(), seed = 1, epochs = 100 })
    local stats = pr:fit(trX, trY)
    assert.is_true(stats.pairs > 10000)
    assert.is_true(stats.loss[#stats.loss] < 0.5 * stats.loss[1], ("loss %g -> %g"):format(stats.loss[1], stats.loss[#stats.loss]))
    assert.is_near(math.log(2), stats.loss[1], 0.1) -- an untrained net is close to a coin flip
    local tau = predictor.kendall_tau(pr:predict(teX), teY)
    assert.is_true(tau > 0.6, "held-out tau " .. tau)
    -- deterministic: the same data gives the same predictions
    local pr2 = predictor.new({ dim = sp:feature_dim(), seed = 1, epochs = 100 })
    pr2:fit(trX, trY)
    assert.are.same(pr:predict(teX), pr2:predict(teX))
  end)

  it("an untrained or misused predictor raises clear errors", function()
    local pr = predictor.new({ dim = 3 })
    assert.has_error(function() pr:predict({ { 1, 2, 3 } }) end, "search.predictor:predict: the predictor is not trained (call fit first)")
    assert.has_error(function() predictor.new({ dim = 3, width = 2 }) end)
    assert.has_error(function() pr:fit({ { 1, 2, 3 } }, { 1, 2 }) end, "search.predictor:fit: scores must be a list as long as the features")
  end)
end)
