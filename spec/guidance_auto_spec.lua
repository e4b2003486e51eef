-- Autoguidance: D = D_guide + w (D_main - D_guide), checked on a pair of exact mixtures (the
-- weak one has wider components), on neural models, and for errors.
local H = require("helper")
local diffuse = H.diffuse
local G = diffuse.guidance

local means = { { -2, 0 }, { 2, 0 }, { 0, 2.5 } }
local main = diffuse.models.gmm { means = means, stds = { 0.5, 0.5, 0.7 }, labels = { 0, 0, 1 } }
local weak = diffuse.models.gmm { means = means, stds = { 0.9, 0.9, 1.1 }, labels = { 0, 0, 1 } }
local sched = diffuse.schedule.vp_cosine()

local function run(model, cond, solver)
  return diffuse.sample { model = model, schedule = sched, solver = solver or "dpmsolver++", steps = 12,
    shape = { 300, 2 }, seed = 2, cond = cond }
end

describe("guidance.auto on a pair of exact mixtures", function()
  it("scale 1 is the main model exactly, at one evaluation per step", function()
    for _, solver in ipairs({ "dpmsolver++", "euler", "unipc" }) do
      local g = G.auto { model = main, guide = weak, scale = 1 }
      assert.is_true(run(g, 1, solver):max_abs_diff(run(main, 1, solver)) == 0)
      assert.equal(12, g:stats().per_sample)
      assert.equal(0, g:stats().guide_evaluations)
    end
  end)

  it("is guide + w (main - guide), both conditioned on the same labels, at two evaluations", function()
    local p = { t = 0.5, alpha = 0.8, sigma = 0.6 }
    local x = diffuse.randn({ 4, 2 }, { seed = 3 })
    for _, cond in ipairs({ { 0, 1, 1, 0 }, 1, false }) do
      if cond == false then cond = nil end
      local g = G.auto { model = main, guide = weak, scale = 2.5 }
      local want = diffuse.lincomb({ weak(x, p, cond), main(x, p, cond) }, { -1.5, 2.5 })
      assert.is_true(g(x, p, cond):max_abs_diff(want) < 1e-6)
      local st = g:stats()
      assert.equal(8, st.evaluations)
      assert.equal(4, st.main_evaluations)
      assert.equal(4, st.guide_evaluations)
    end
    -- scale 0 is the guide alone
    assert.is_true(G.auto { model = main, guide = weak, scale = 0 }(x, p, 1):max_abs_diff(weak(x, p, 1)) < 1e-6)
  end)

  it("converts a guide that predicts another kind", function()
    local p = { t = 0.3, alpha = 0.9, sigma = 0.4 }
    local x = diffuse.randn({ 3, 2 }, { seed = 4 })
    local g = G.auto { model = main, guide = diffuse.models.as(weak, "eps"), scale = 2 }
    local want = diffuse.lincomb({ weak(x, p, 0), main(x, p, 0) }, { -1, 2 })
    assert.is_true(g(x, p, 0):max_abs_diff(want) < 1e-4)
    -- and a main model in v with an x0 guide gives the same x0
    local gv = G.auto { model = diffuse.models.as(main, "v"), guide = weak, scale = 2 }
    assert.equal("v", gv.predicts)
    assert.is_true(diffuse.models.convert(gv(x, p, 0), "v", "x0", x, p):max_abs_diff(want) < 1e-4)
  end)

  it("sharpens the samples toward the main model's modes (lower spread than the main model alone)", function()
    local spread = function(x)
      -- mean squared distance to the nearest mean
      local t, s = x:totable(), 0
      for _, r in ipairs(t) do
        local best = math.huge
        for _, m in ipairs(means) do best = math.min(best, (r[1] - m[1]) ^ 2 + (r[2] - m[2]) ^ 2) end
        s = s + best
      end
      return s / #t
    end
    local s1 = spread(run(main, nil))
    local s2 = spread(run(G.auto { model = main, guide = weak, scale = 2 }, nil))
    assert.is_true(s2 < s1, ("%g not below %g"):format(s2, s1))
  end)

  it("leaves steps outside the interval to the main model", function()
    local g = G.auto { model = main, guide = weak, scale = 3, interval = { 1e6, 1e7 } }
    assert.is_true(run(g, 1):max_abs_diff(run(main, 1)) == 0)
    assert.equal(0, g:stats().guide_evaluations)
  end)
end)

describe("guidance.auto with neural models", function()
  it("guides the shipped denoiser with the shipped small denoiser", function()
    local m, info = diffuse.models.load("fashion-denoiser")
    local small = diffuse.models.load("fashion-denoiser-small")
    if not (m and small) then return end
    assert.equal("v", small.predicts)
    local g = G.auto { model = m, guide = small, scale = 2 }
    local x = diffuse.sample { model = g, schedule = info.schedule, solver = "dpmsolver++", steps = 3, shape = { 2, 784 },
      seed = 1, cond = { 2, 5 } }
    assert.equal(2, #x)
    assert.equal(6, g:stats().per_sample)
    assert.equal(6, g:stats().guide_evaluations)
  end)
end)

describe("guidance.auto errors", function()
  local function raises(f, pat)
    local ok, err = pcall(f)
    assert.is_false(ok)
    assert.is_truthy(tostring(err):find(pat, 1, true), tostring(err))
  end
  it("names the missing guide, a bad scale and unknown options", function()
    raises(function() G.auto { model = main } end, "'guide' is required")
    raises(function() G.auto { model = main, guide = 3 } end, "'guide' must be a model")
    raises(function() G.auto { model = main, guide = weak, scale = "2" } end, "'scale' must be a finite number")
    raises(function() G.auto { model = main, guide = weak, w = 2 } end, "unknown option 'w'")
    raises(function() G.auto { guide = weak } end, "'model' is required")
    raises(function() G.auto { model = main, guide = weak, interval = 3 } end, "'interval' must be {lo, hi}")
  end)
end)
