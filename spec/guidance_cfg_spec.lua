-- Classifier-free guidance and its refinements, checked exactly on a labelled Gaussian mixture
-- (and run on a small class-conditional network): scale 1 / 0 against the conditional /
-- unconditional sampler, the combination and the rescale against independent formulas, the
-- interval, Adaptive Guidance's switch and honest counts, LinearAG, CADS.
local H = require("helper")
local diffuse = H.diffuse
local guidance = diffuse.guidance

local gmm = diffuse.models.gmm{ means = { { -2, 0 }, { 2, 0 }, { 0, 2 }, { 1, -1 } }, stds = { 0.5, 0.4, 0.6, 0.3 },
  weights = { 1, 2, 1, 1 }, labels = { 0, 1, 1, 2 } }
local sched = diffuse.schedule.vp_linear()
local N = 6
local cond = diffuse.tensor({ 0, 1, 2, 0, 1, 2 })

local function run(model, o)
  local opts = { model = model, schedule = sched, solver = "dpmpp_2m", steps = 8, shape = { N, 2 }, seed = 3, cond = cond }
  for k, v in pairs(o or {}) do opts[k] = v end
  if o and o.cond == false then opts.cond = nil end
  return diffuse.sample(opts)
end

-- A one-off model that records what the base returns (c and u) at one point.
local function branches(x, p)
  return gmm(x, p, cond), gmm(x, p, nil)
end

describe("guidance.cfg on a labelled mixture", function()
  it("scale 1 is the conditional sampler and scale 0 the unconditional one", function()
    local xc = run(gmm)
    local xu = run(gmm, { cond = false })
    local g1 = guidance.cfg{ model = gmm, scale = 1 }
    assert.allclose(xc, (run(g1)), 0, 0)
    assert.are.equal(8, g1:stats().per_sample)   -- no unconditional branch at scale 1
    local g0 = guidance.cfg{ model = gmm, scale = 0 }
    assert.allclose(xu, (run(g0)), 1e-6, 1e-6)
    assert.are.equal(16, g0:stats().per_sample)
    assert.is_true(xc:max_abs_diff(xu) > 0.1)     -- the two differ, so the checks can fail
  end)

  it("combines u + scale (c - u) in one pass, in the model's own kind", function()
    local x = diffuse.randn({ N, 2 }, { seed = 9 })
    local p = sched:point(0.4)
    local c, u = branches(x, p)
    local out = guidance.cfg{ model = gmm, scale = 2.5 }(x, p, cond)
    assert.allclose(u:add(c:sub(u):mul(2.5)), out, 1e-5, 1e-5)
    -- the same prediction formed in eps space (weights sum to 1)
    local ve = diffuse.models.as(gmm, "eps")
    local oe = guidance.cfg{ model = ve, scale = 2.5 }(x, p, cond)
    assert.allclose(diffuse.models.convert(out, "x0", "eps", x, p), oe, 1e-4, 1e-4)
  end)

  it("rescale matches the per-row std of the conditional prediction (phi = 1) and mixes by phi", function()
    local x = diffuse.randn({ N, 2 }, { seed = 10 })
    local p = sched:point(0.5)
    local c, u = branches(x, p)
    for _, space in ipairs({ "eps", "x0" }) do
      local g = guidance.cfg{ model = gmm, scale = 4, rescale = 1, space = space }
      local out = diffuse.models.convert(g(x, p, cond), "x0", space, x, p)
      local cs = diffuse.models.convert(c, "x0", space, x, p)
      local plain = diffuse.models.convert(u:add(c:sub(u):mul(4)), "x0", space, x, p)
      for i = 1, N do
        local so, sc = out[i]:std(nil, nil, 0), cs[i]:std(nil, nil, 0)
        assert.is_true(math.abs(so - sc) < 1e-4 * (1 + sc), ("row %d: std %g, conditional %g"):format(i, so, sc))
      end
      local half = diffuse.models.convert(guidance.cfg{ model = gmm, scale = 4, rescale = 0.5, space = space }(x, p, cond),
        "x0", space, x, p)
      assert.allclose(out:add(plain):mul(0.5), half, 1e-4, 1e-4)
    end
  end)

  it("an empty guidance interval is the conditional sampler at 1 evaluation per row", function()
    local g = guidance.cfg{ model = gmm, scale = 3, interval = { 5, 5 } }
    assert.allclose(run(gmm), (run(g)), 0, 0)
    assert.are.equal(8, g:stats().per_sample)
    local all = guidance.cfg{ model = gmm, scale = 3, interval = { 0, math.huge } }
    assert.allclose(run(guidance.cfg{ model = gmm, scale = 3 }), (run(all)), 0, 0)
    -- a band in t: guided steps cost 2 rows each, the others 1
    local band = guidance.cfg{ model = gmm, scale = 3, interval = { 0.3, 0.7 }, interval_on = "t" }
    local _, info = run(band)
    local inside = 0
    for _, t in ipairs(info.state.times) do if t > 0.3 and t <= 0.7 then inside = inside + 1 end end
    assert.are.equal((8 + inside) * N, band:stats().evaluations)
  end)
end)

describe("guidance.ag", function()
  it("gamma = 1 never switches: plain CFG", function()
    local g = guidance.ag{ model = gmm, scale = 3, gamma = 1 }
    assert.allclose(run(guidance.cfg{ model = gmm, scale = 3 }), (run(g)), 0, 0)
    assert.are.equal(16, g:stats().per_sample)
    -- scale 1 through the full combination is still the conditional sampler
    assert.allclose(run(gmm), (run(guidance.ag{ model = gmm, scale = 1, gamma = 1 })), 0, 0)
  end)

  it("switched rows stop evaluating the unconditional branch, counted per row", function()
    local g = guidance.ag{ model = gmm, scale = 3, gamma = -2 } -- every row switches after call 1
    local x = run(g)
    assert.are.equal(N * (8 + 1), g:stats().evaluations)
    -- the same run by hand: guided at call 1, conditional afterwards
    local calls = 0
    local by_hand = diffuse.models.fn(function(xx, p, cc)
      calls = calls + 1
      local c = gmm(xx, p, cc)
      if calls > 1 then return c end
      local u = gmm(xx, p, nil)
      return diffuse.lincomb({ u, c }, { -2, 3 })
    end, { predicts = "x0" })
    assert.allclose(run(by_hand), x, 1e-6, 1e-6)
  end)

  it("rows are independent: a batch equals each row run alone (partial evaluation scatters back)", function()
    local gamma = 0.99999 -- rows 2, 3 and 5 switch at once, the others later or never
    local g = guidance.ag{ model = gmm, scale = 3, gamma = gamma, measure = "eps" }
    local x, info = run(g)
    local frac = g:switched(info.state)
    assert.is_true(frac > 0 and frac < 1, "some rows switch, not all: " .. frac)
    local total = 0
    for i = 1, N do
      local gi = guidance.ag{ model = gmm, scale = 3, gamma = gamma, measure = "eps" }
      local xi = diffuse.sample{ model = gi, schedule = sched, solver = "dpmpp_2m", steps = 8, shape = { 1, 2 }, seed = 3,
        offset = i - 1, cond = cond:narrow(1, i, 1) }
      assert.allclose(x:narrow(1, i, 1), xi, 1e-6, 1e-6)
      total = total + gi:stats().evaluations
    end
    assert.are.equal(total, g:stats().evaluations)
    assert.is_true(total < 16 * N)
  end)

  it("gather and clone of a state mid-run fork the switch memory with the rows", function()
    local g = guidance.ag{ model = gmm, scale = 3, gamma = 0.99999, measure = "eps" }
    local st = diffuse.sampler.new{ model = g, schedule = sched, solver = "dpmpp_2m", steps = 8, shape = { N, 2 }, seed = 3,
      cond = cond }
    for _ = 1, 4 do st:step() end
    assert.is_not_nil(st.aux[g.key].switched)
    local rows = { 2, 5, 5, 1 }
    local fork = st:gather(rows)
    fork.cond = st.cond:gather(rows) -- the sampler keeps cond as given; a per-row cond follows the rows by hand
    local twin = st:clone()
    local x = st:run()
    assert.allclose(x:gather(rows), fork:run(), 0, 0)
    assert.allclose(x, twin:run(), 0, 0)
  end)

  it("a bare call keeps the memory on the object for one run", function()
    local g = guidance.ag{ model = gmm, scale = 3, gamma = -2 }
    local x = diffuse.randn({ N, 2 }, { seed = 1 })
    g(x, sched:point(0.9), cond)
    g(x, sched:point(0.8), cond)
    assert.are.equal(3 * N, g:stats().evaluations)
    g(x, sched:point(0.95), cond) -- t went up: a new run
    assert.are.equal(5 * N, g:stats().evaluations)
    assert.are.equal(2 * N, g:stats().samples)
    g:reset()
    assert.are.equal(0, g:stats().evaluations)
  end)
end)

describe("guidance.linear_ag", function()
  local base = { schedule = sched, solver = "dpmpp_2m", steps = 8, shape = { 64, 2 }, seed = 11,
    cond = diffuse.tensor((function() local l = {} for i = 1, 64 do l[i] = (i - 1) % 3 end return l end)()) }
  local fit = guidance.linear_ag_fit{ model = gmm, scale = 3, run = base, runs = 2 }

  it("fits plain-data coefficients for every call from the second on", function()
    assert.are.equal(8, fit.calls)
    assert.are.equal(4, #fit.coefficients[2])
    assert.are.equal(0, #fit.coefficients[1])
    assert.are.equal(fit.coefficients[5][1], require("diffuse.json").decode(require("diffuse.json").encode(fit)).coefficients[5][1])
  end)

  it("equals CFG when it starts after the last call, and saves evaluations otherwise", function()
    local late = guidance.linear_ag{ model = gmm, scale = 3, fit = fit, start = 9 }
    assert.allclose(run(guidance.cfg{ model = gmm, scale = 3 }), (run(late)), 0, 0)
    local lag = guidance.linear_ag{ model = gmm, scale = 3, fit = fit, start = 5 }
    local x = run(lag)
    assert.are.equal(N * (8 + 4), lag:stats().evaluations)
    local xg, xc = run(guidance.cfg{ model = gmm, scale = 3 }), run(gmm)
    -- much closer to CFG than the conditional sampler is
    assert.is_true(x:max_abs_diff(xg) < 0.2 * xc:max_abs_diff(xg))
  end)
end)

describe("guidance.cads", function()
  it("the annealing schedule and the rescale follow the formulas", function()
    assert.are.equal(1, guidance.cads_gamma(0.5, 0.6, 0.9))
    assert.is_true(math.abs(guidance.cads_gamma(0.7, 0.6, 0.9) - 2 / 3) < 1e-12)
    assert.are.equal(0, guidance.cads_gamma(0.95, 0.6, 0.9))
    local y = diffuse.tensor({ { 1, 0, 0 }, { 0, 2, 1 } })
    local n = diffuse.tensor({ { 0.5, -1, 2 }, { 1, 1, -3 } })
    local yn = diffuse.lincomb({ y, n }, { math.sqrt(0.25), 0.3 * math.sqrt(0.75) })
    assert.allclose(yn, guidance.cads_anneal(y, n, 0.25, 0.3, 0), 1e-6, 1e-6)
    local out = guidance.cads_anneal(y, n, 0.25, 0.3, 1)
    for i = 1, 2 do
      local r, yr = out[i], y[i]
      assert.is_true(math.abs(r:mean() - yr:mean()) < 1e-5 and math.abs(r:std(nil, nil, 0) - yr:std(nil, nil, 0)) < 1e-5)
    end
  end)

  it("without annealing (tau1 = 1) it is the conditional sampler; with it, the samples move", function()
    local plain = guidance.cads{ model = gmm, tau1 = 1, tau2 = 1 }
    assert.allclose(run(gmm), (run(plain)), 1e-6, 1e-6)
    local guided = guidance.cads{ model = gmm, tau1 = 1, tau2 = 1, scale = 3 }
    assert.allclose(run(guidance.cfg{ model = gmm, scale = 3 }), (run(guided)), 1e-5, 1e-5)
    local noisy = guidance.cads{ model = gmm, tau1 = 0.3, tau2 = 0.8, noise_scale = 1, seed = 2 }
    assert.is_true(run(gmm):max_abs_diff((run(noisy))) > 1e-3)
  end)
end)

describe("guidance on a class-conditional network", function()
  local net = diffuse.nn.ResMLP{ in_dim = 4, width = 16, depth = 2, emb_dim = 8, num_classes = 3, seed = 1 }
  local m = diffuse.nn.as_model(net, { predicts = "v", schedule = sched })
  local lab = diffuse.tensor({ 0, 1, 2, 1 })
  local function nrun(model)
    return diffuse.sample{ model = model, solver = "dpmpp_2m", steps = 5, shape = { 4, 4 }, seed = 1, cond = lab }
  end

  it("cfg scale 0 / 1 are the null-class / conditional samplers; ag, linear_ag, cads run", function()
    assert.allclose(nrun(m), (nrun(guidance.cfg{ model = m, scale = 1 })), 0, 0)
    local xu = diffuse.sample{ model = m, solver = "dpmpp_2m", steps = 5, shape = { 4, 4 }, seed = 1 }
    assert.allclose(xu, (nrun(guidance.cfg{ model = m, scale = 0 })), 1e-5, 1e-5)
    assert.allclose(nrun(guidance.cfg{ model = m, scale = 2 }), (nrun(guidance.ag{ model = m, scale = 2, gamma = 1 })), 0, 0)
    local fit = guidance.linear_ag_fit{ model = m, scale = 2, run = { solver = "dpmpp_2m", steps = 5, shape = { 4, 4 }, seed = 1, cond = lab } }
    assert.are.equal(5, fit.calls)
    local lag = guidance.linear_ag{ model = m, scale = 2, fit = fit, start = 4 }
    nrun(lag)
    assert.are.equal(4 * (5 + 3), lag:stats().evaluations)
    -- CADS without annealing passes the class embedding itself: the conditional sampler
    assert.allclose(nrun(m), (nrun(guidance.cads{ model = m, tau1 = 1, tau2 = 1 })), 1e-6, 1e-6)
    local noisy = nrun(guidance.cads{ model = m, tau1 = 0.2, tau2 = 0.6, noise_scale = 0.5 })
    assert.is_true(noisy:max_abs_diff(nrun(m)) > 1e-4)
  end)

  it("ResMLP:forward takes an embedding instead of labels", function()
    local x = diffuse.randn({ 4, 4 }, { seed = 2 })
    local e = net.class_emb:forward(lab, 4)
    assert.allclose(net:forward(x, 0.3, lab), net:forward(x, 0.3, nil, { embedding = e }), 0, 0)
    local ok, err = pcall(net.forward, net, x, 0.3, nil, { embedding = diffuse.zeros(4, 3) })
    assert.is_false(ok)
    assert.is_truthy(err:find("embedding is %[4x3%], expected %(4, 8%)"))
  end)
end)
