-- The analytic first step: point 1's model output comes from the Gaussian approximation of the
-- data (diffuse.models.gaussian) instead of the network.  On a single-Gaussian data model the
-- approximation is exact, so the plan with analytic = true must equal the plan without.
local diffuse = require("diffuse")
local plan = diffuse.plan

local sched = diffuse.schedule.vp_linear({})
local gmm = diffuse.models.gmm { means = { { 1, -1, 0.5 } }, vars = { { 0.3, 0.5, 0.2 } } }

describe("analytic first step", function()
  it("models.gaussian(gmm) is the moment-matched Gaussian of a mixture", function()
    local m = diffuse.models.gmm { means = { { 2, 0 }, { -2, 1 } }, stds = { 0.5, 1 }, weights = { 3, 1 } }
    local g = diffuse.models.gaussian(m)
    -- by hand: mean 0.75 (2, 0) + 0.25 (-2, 1) = (1, 0.25)
    assert.near(1, g.mean[1], 1e-6)
    assert.near(0.25, g.mean[2], 1e-6)
    -- cov = sum w (diag v + (mu - m)(mu - m)^T)
    local c11 = 0.75 * (0.25 + 1) + 0.25 * (1 + 9)
    local c22 = 0.75 * (0.25 + 0.0625) + 0.25 * (1 + 0.5625)
    local c12 = 0.75 * (1 * -0.25) + 0.25 * (-3 * 0.75)
    assert.near(c11, g.cov[1][1], 1e-5)
    assert.near(c22, g.cov[2][2], 1e-5)
    assert.near(c12, g.cov[1][2], 1e-5)
    -- and is exact for one component: the same posterior mean as the mixture
    local one = diffuse.models.gaussian(gmm)
    local x = diffuse.randn({ 5, 3 }, { seed = 4 })
    local p = { alpha = 0.6, sigma = 0.8 }
    assert.is_true(one(x, p):allclose(gmm(x, p), 1e-5, 1e-6))
  end)

  it("equals the plan without it on a single Gaussian, for every prediction kind, with one NFE less", function()
    local g = diffuse.models.gaussian(gmm)
    for _, name in ipairs({ "unipc", "dpmsolver++_3m", "dpmsolver_2m", "ddim", "dpmsolver++_3s" }) do
      for _, kind in ipairs({ "x0", "eps", "v" }) do
        local m = diffuse.models.as(gmm, kind)
        local p = plan.build(name, { schedule = sched, steps = 6 })
        local x1, i1 = diffuse.sample({ model = m, schedule = sched, solver = "plan", plan = p, shape = { 40, 3 }, seed = 3 })
        p.analytic = true
        assert.equal(i1.nfe - 1, plan.nfe(p))
        local x2, i2 = diffuse.sample({ model = m, schedule = sched, solver = "plan", plan = p, shape = { 40, 3 }, seed = 3,
          analytic = g })
        assert.equal(i1.nfe - 1, i2.nfe)
        local err = x1:sub(x2):abs():max()
        assert.is_true(err < 1e-5, ("%s %s: max difference %g"):format(name, kind, err))
      end
    end
  end)

  it("replaces the model's output at point 1 (and only there) by the analytic model's", function()
    -- a deliberately wrong analytic model: x0 = 0 everywhere; a DDIM first step then gives
    -- x_2 = (sigma_2 / sigma_1) x_1 exactly
    local zero = diffuse.models.fn(function(x) return x:mul(0) end, { predicts = "x0" })
    local p = plan.ddim({ schedule = sched, steps = 1 })
    p.analytic = true
    local x1 = diffuse.randn({ 4, 3 }, { seed = 2 })
    local x, info = diffuse.sample({ model = gmm, schedule = sched, solver = "plan", plan = p, x = x1, analytic = zero })
    assert.equal(0, info.nfe)
    local r = sched:sigma(p.times[2]) / sched:sigma(p.times[1])
    assert.is_true(x:allclose(x1:mul(r), 1e-6, 1e-6))
  end)

  it("takes the analytic model from model.analytic, and errors clearly when there is none", function()
    local p = plan.build("unipc", { schedule = sched, steps = 4 })
    p.analytic = true
    local m = diffuse.models.fn(function(x, pt) return gmm(x, pt) end, { predicts = "x0" })
    local ok, err = pcall(diffuse.sample, { model = m, schedule = sched, solver = "plan", plan = p, shape = { 2, 3 } })
    assert.is_false(ok)
    assert.matches("analytic = true but there is no analytic model", err)
    m.analytic = diffuse.models.gaussian(gmm)
    local _, info = diffuse.sample({ model = m, schedule = sched, solver = "plan", plan = p, shape = { 2, 3 } })
    assert.equal(3, info.nfe)
    assert.matches("option 'analytic' must be a diffuse model",
      select(2, pcall(diffuse.sample, { model = m, schedule = sched, solver = "plan", plan = p, shape = { 2, 3 }, analytic = 3 })))
  end)
end)

describe("the shipped Fashion denoiser's analytic model #slow", function()
  it("is the per-class Gaussian of the training images in [-1, 1], built on first use and cached", function()
    local m = assert(diffuse.models.load("fashion-denoiser"))
    assert.is_nil(rawget(m, "analytic"))
    local dir = os.tmpname()
    os.remove(dir)
    local g = diffuse.models.fashion_gaussian({ dir = dir })
    assert.equal(784, g.D)
    local d = assert(diffuse.data.fashion_mnist({ split = "train" }))
    local flat = d.images:reshape(60000, 784)
    local rows = {}
    for i, l in ipairs(d.labels) do
      rows[l] = rows[l] or {}
      table.insert(rows[l], i)
    end
    -- at alpha = 0 the posterior mean is the mean: of the row's class, or of all images for
    -- the null class (10) and without cond
    local x = diffuse.randn({ 4, 784 }, { seed = 1 })
    local p0 = { alpha = 0, sigma = 1 }
    local out = g(x, p0, diffuse.tensor({ 3, 10, 0, 3 }))
    local m3 = flat:gather(rows[3]):mean(1)
    assert.is_true(out:narrow(1, 1, 1):view(784):allclose(m3, 1e-4, 1e-5))
    assert.is_true(out:narrow(1, 4, 1):view(784):allclose(m3, 1e-4, 1e-5))
    assert.is_true(out:narrow(1, 3, 1):view(784):allclose(flat:gather(rows[0]):mean(1), 1e-4, 1e-5))
    assert.is_true(out:narrow(1, 2, 1):view(784):allclose(flat:mean(1), 1e-4, 1e-5))
    assert.is_true(g(x, p0):narrow(1, 1, 1):view(784):allclose(flat:mean(1), 1e-4, 1e-5))
    local cached = diffuse.models.fashion_gaussian({ dir = dir })
    assert.is_true(cached.classes[7].cov:allclose(g.classes[7].cov, 0, 0))
    os.execute("rm -rf '" .. dir .. "'")
    assert.equal(784, m.analytic.D)
  end)
end)
