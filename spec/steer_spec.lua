-- The steering foundation: the chain's kernel against the exact marginals, its accounting and
-- noise, the rewards against closed forms, log-weights and resampling, the tilted mixture
-- against importance weighting, the rejection sampler and the sample-set distances.
local H = require("helper")
local diffuse = H.diffuse
local steer = diffuse.steer
local core = require("diffuse.core")

local P = steer.target.mixture_problem()
local sw = steer.target.sliced_wasserstein

describe("steer.chain", function()
  it("with eta = 1 samples the model's distribution (the kernel is the forward posterior)", function()
    local ch = P.chain{ steps = 100 }
    local x = ch:run(ch:prior(1500), 1)
    local exact = P.gmm:sample(1500, { seed = 11 })
    local d = sw(x, exact, { seed = 1 })
    local floor = sw(P.gmm:sample(1500, { seed = 12 }), exact, { seed = 1 })
    assert.is_true(d < 2.5 * floor + 0.02, ("chain %.4f vs exact floor %.4f"):format(d, floor))
    -- and not the untilted target's distance to the tilted one (the check can fail)
    assert.is_true(sw(x, P.tilted:sample(1500, { seed = 13 }), { seed = 1 }) > 5 * floor)
  end)

  it("counts rows evaluated and model calls exactly; move draws fresh noise rows", function()
    local ch = P.chain{ steps = 10 }
    local x = ch:prior(7)
    local x1, x0 = ch:step(x, 1)
    assert.are.equal(7, ch.nfe)
    assert.are.equal(1, ch.calls)
    assert.are.same({ 7, 2 }, x0:shape())
    local a = ch:move(x, x0, x0:mul(0), 1)
    local b = ch:move(x, x0, x0:mul(0), 1)
    assert.is_true(a:max_abs_diff(b) > 1e-3, "two moves must draw different noise")
    assert.is_true(x1:max_abs_diff(a) > 1e-3)
    ch:reward(P.reward, x1)
    assert.are.same({ nfe = 7, calls = 1, reward_evals = 7, reward_calls = 1 }, ch:stats())
    local f = ch:fork(5)
    assert.are.same({ nfe = 0, calls = 0, reward_evals = 0, reward_calls = 0 }, f:stats())
    assert.are.equal(5, f.seed)
  end)

  it("values a state by the reward of its x0 estimate, reusing the evaluation", function()
    local ch = P.chain{ steps = 10 }
    local x = ch:run(ch:prior(6), 1, 4)
    local nfe = ch.nfe
    local v, x0 = ch:value(P.reward, x, 5)
    assert.are.equal(nfe + 6, ch.nfe)
    H.close(P.reward(P.gmm(x, ch.points[5])), v, 1e-6)
    H.close(P.gmm(x, ch.points[5]), x0, 1e-6)
  end)

  it("is reproducible from its seed and differs across seeds", function()
    local function run(seed)
      local ch = P.chain{ steps = 5, seed = seed }
      return ch:run(ch:prior(4), 1)
    end
    assert.are.equal(0, run(3):max_abs_diff(run(3)))
    assert.is_true(run(3):max_abs_diff(run(4)) > 1e-3)
  end)

  it("eta = 0 is deterministic DDIM and matches diffuse.sample's ddim on the same grid", function()
    local ch = P.chain{ steps = 8, eta = 0 }
    local x = ch:prior(5)
    local a = ch:run(x, 1)
    local b = diffuse.sample{ model = P.gmm, schedule = P.schedule, solver = "ddim", times = ch.times, x = x }
    H.close(b, a, 1e-5)
    -- the kernel's coefficients: with eta = 1 and fixed x0, the variance is the posterior's
    local ch1 = P.chain{ steps = 8 }
    local ca, ce, cz = ch1:coefficients(3)
    local b3, t3 = ch1.points[3], ch1.points[4]
    local post = t3.sigma ^ 2 * (1 - (b3.alpha * t3.sigma / (t3.alpha * b3.sigma)) ^ 2)
    assert.is_true(math.abs(cz * cz - post) < 1e-12)
    assert.is_true(math.abs(ca - t3.alpha) < 1e-15 and math.abs(ce * ce + cz * cz - t3.sigma ^ 2) < 1e-12)
  end)

  it("rejects bad options and bad steps, naming them", function()
    assert.is_truthy(H.error_of(steer.chain.new, { model = P.gmm, steps = 4 }):find("'shape'")
      or H.error_of(steer.chain.new, { model = P.gmm, steps = 4 }):find("schedule"))
    assert.is_truthy(H.error_of(steer.chain.new, { model = P.gmm, schedule = P.schedule, shape = { 2 } })
      :find("give 'steps'"))
    assert.is_truthy(H.error_of(steer.chain.new, { model = P.gmm, schedule = P.schedule, shape = { 2 }, steps = 4,
      eta = 2 }):find("'eta' must be a number in %[0, 1%]"))
    assert.is_truthy(H.error_of(steer.chain.new, { model = P.gmm, schedule = P.schedule, shape = { 2 }, steps = 4,
      setps = 4 }):find("unknown option 'setps'"))
    local ch = P.chain{ steps = 4 }
    assert.is_truthy(H.error_of(ch.denoise, ch, ch:prior(2), 5):find("step must be an integer in 1..4"))
    assert.is_truthy(H.error_of(ch.denoise, ch, core.zeros(2, 3, 1), 1):find("expected %(N, 2%)"))
    local bad = P.chain{ steps = 4, model = function() return 3 end, predicts = "x0" }
    assert.is_truthy(H.error_of(bad.denoise, bad, bad:prior(2), 1):find("returned number, not a tensor"))
  end)
end)

describe("steer.rewards", function()
  local x = core.tensor({ { 0, 0 }, { 2, 2 }, { 1, -1 } })

  it("gaussian and linear rewards are their closed forms", function()
    local r = steer.rewards.gaussian{ mean = { 2, 2 }, precision = { 0.5, 2 } }
    H.close({ -0.5 * (0.5 * 4 + 2 * 4), 0, -0.5 * (0.5 * 1 + 2 * 9) }, r(x), 1e-6)
    local l = steer.rewards.linear{ w = { 1, -2 }, b = 0.5 }
    H.close({ 0.5, -1.5, 3.5 }, l(x), 1e-6)
    assert.are.equal("gaussian", r.kind)
  end)

  it("the mixture class reward is log p(class | x) by Bayes' rule", function()
    local r = steer.rewards.mixture_class{ gmm = P.gmm, classes = { 1, 2 } }
    local v = r(x)
    local p = P.gmm:class_prob(x, { t = 0, alpha = 1, sigma = 1e-12 }):totable()
    for i = 1, 3 do H.close(math.log(p[i][2] + p[i][3]), v[i], 1e-5) end
  end)

  it("the classifier rewards are log-softmax of the shipped classifiers", function()
    local r = steer.rewards.class_logprob{ classes = { 3, 5 } }
    local img = core.randn({ 4, 1, 28, 28 }, { seed = 2 }):clamp(-1, 1)
    local v = r(img)
    local logits = r.net:forward(img):totable()
    for i = 1, 4 do
      local lse, sel = -math.huge, {}
      local all = {}
      for c = 1, 10 do all[c] = logits[i][c] end
      sel = { logits[i][4], logits[i][6] }
      lse = steer.weights.logsumexp(all)
      H.close(steer.weights.logsumexp(sel) - lse, v[i], 1e-5)
    end
    local nr = steer.rewards.noisy_class_logprob{ class = 0 }
    local p = diffuse.schedule.vp_cosine():point(0.5)
    local a = nr(img, { x_t = img, point = p })
    local b = nr(img)
    assert.are.equal(4, #a)
    assert.is_true(math.abs(a[1] - b[1]) > 1e-6, "the time input must matter")
  end)

  it("evaluate checks what a reward returns", function()
    local ev = steer.rewards.evaluate
    assert.is_truthy(H.error_of(ev, function() return { 1 } end, x):find("returned 1 values for 3 rows"))
    assert.is_truthy(H.error_of(ev, function() return { 1, 0 / 0, 2 } end, x):find("value 2 is"))
    assert.is_truthy(H.error_of(ev, function() return "a" end, x):find("returned string"))
    assert.is_truthy(H.error_of(ev, 3, x):find("must be a function"))
    assert.are.same({ 1, -math.huge, 2 }, ev(function() return { 1, -math.huge, 2 } end, x))
    assert.is_truthy(H.error_of(steer.rewards.gaussian, { mean = { 1, 2 }, precision = { 1 } })
      :find("'precision' has 1 entries, expected 2"))
    assert.is_truthy(H.error_of(steer.rewards.class_logprob, { class = 12 }):find("class 12 is out of range"))
    assert.is_truthy(H.error_of(steer.rewards.class_logprob, {}):find("give 'class'"))
  end)
end)

describe("steer.weights", function()
  local W = steer.weights

  it("log-sum-exp, ESS and normalisation stay finite for huge log-weights", function()
    local lw = { 1e4, 1e4 + math.log(3), -math.huge }
    H.close(1e4 + math.log(4), W.logsumexp(lw), 1e-9)
    H.close({ 0.25, 0.75, 0 }, (W.normalize(lw)), 1e-12)
    H.close(1 / (0.25 ^ 2 + 0.75 ^ 2), W.ess(lw), 1e-9)
    assert.is_truthy(H.error_of(W.normalize, { -math.huge }):find("every log%-weight is %-inf"))
  end)

  it("systematic resampling keeps floor/ceil counts; multinomial frequencies match", function()
    local lw = { math.log(0.1), math.log(0.25), -math.huge, math.log(0.65) }
    local idx = W.systematic(lw, 20, W.stream(1, 0))
    local count = { 0, 0, 0, 0 }
    for _, i in ipairs(idx) do count[i] = count[i] + 1 end
    assert.are.same({ 2, 5, 0, 13 }, count)
    local m = W.multinomial(lw, 40000, W.stream(2, 0))
    count = { 0, 0, 0, 0 }
    for _, i in ipairs(m) do count[i] = count[i] + 1 end
    H.close({ 0.1, 0.25, 0, 0.65 }, { count[1] / 40000, count[2] / 40000, count[3] / 40000, count[4] / 40000 }, 0.01)
    assert.is_truthy(H.error_of(W.resample, "stratified", lw, 2, W.stream(1, 0)):find("unknown resampling"))
  end)

  it("streams are reproducible and separated by key", function()
    local a, b, c = W.stream(3, 0):uniforms(5), W.stream(3, 0):uniforms(5), W.stream(3, 1):uniforms(5)
    assert.are.same(a, b)
    assert.are_not.same(a, c)
    local s = W.stream(3, 0)
    s:uniforms(2)
    assert.are.equal(a[3], s:uniform())
  end)
end)

describe("steer.target", function()
  it("the tilted mixture is the importance-weighted mixture (gaussian and linear rewards)", function()
    local x = P.gmm:sample(100000, { seed = 4 })
    for _, r in ipairs({ P.reward, steer.rewards.linear{ w = { 0.5, -0.3 } } }) do
      local tilted = steer.target.tilt(P.gmm, r, 1)
      local rv = r(x):totable()
      local p = steer.weights.normalize(rv)
      local X = x:totable()
      local m = { 0, 0 }
      for i = 1, #p do m[1] = m[1] + p[i] * X[i][1]; m[2] = m[2] + p[i] * X[i][2] end
      local e = tilted:sample(100000, { seed = 5 }):mean(1):totable()
      H.close(m, e, 0.03)
    end
    assert.is_true(P.tilted.weights[1] < 0.1 and P.tilted.weights[2] > 0.5, "the problem's tilt moves the mass")
  end)

  it("rejection sampling draws the accepted distribution exactly", function()
    -- proposal N(0, 1) in 1-d, accept exp(-x^2/2): the target is N(0, 1/2)
    local x, rate = steer.target.rejection{ n = 20000, seed = 3,
      propose = function(n, seed) return core.randn({ n, 1 }, { seed = seed }) end,
      log_accept = function(y)
        local out = {}
        for i, v in ipairs(y:reshape(#y):totable()) do out[i] = -0.5 * v * v end
        return out
      end }
    H.close(0.5, x:var(), 0.02)
    H.close(math.sqrt(0.5), rate, 0.01)
    assert.is_truthy(H.error_of(steer.target.rejection, { n = 2, propose = function(n) return core.zeros(n, 1) end,
      log_accept = function(y) return { 1, 1 } end }):find("log_accept returned 1 > 0"))
  end)

  it("samples the guided and annealed targets of a mixture exactly", function()
    -- one Gaussian: q^2 of N(m, v) is N(m, v / 2)
    local one = diffuse.models.gmm{ means = { { 1, -1 } }, stds = 0.8 }
    local a = steer.target.annealed_samples(one, 2, 20000, 1)
    H.close({ 1, -1 }, a:mean(1), 0.02)
    H.close(0.32, a:narrow(2, 1, 1):var(), 0.02)
    -- two labelled Gaussians far apart: the CFG target of class 1 at any scale is class 1's
    -- component (q_c / q_u = 1 / p(c) there); at scale 0 it is the whole mixture
    local two = diffuse.models.gmm{ means = { { -4, 0 }, { 4, 0 } }, stds = 0.5, weights = { 0.7, 0.3 }, labels = { 0, 1 } }
    local c = steer.target.cfg_samples(two, 1, 3, 4000, 2)
    H.close(4, c:narrow(2, 1, 1):mean(), 0.05)
    local u = steer.target.cfg_samples(two, 1, 0, 4000, 3)
    H.close(0.7 * -4 + 0.3 * 4, u:narrow(2, 1, 1):mean(), 0.2)
    assert.is_truthy(H.error_of(steer.target.annealed_samples, one, 0.5, 10):find("beta must be a finite number >= 1"))
    assert.is_truthy(H.error_of(steer.target.cfg_samples, one, 1, 2, 10):find("labelled diffuse gmm"))
  end)

  it("sliced Wasserstein and MMD separate different distributions, not equal ones", function()
    local a, b = P.gmm:sample(2000, { seed = 1 }), P.gmm:sample(2000, { seed = 2 })
    local c = P.tilted:sample(2000, { seed = 3 })
    assert.is_true(sw(a, b) * 5 < sw(a, c))
    assert.is_true(steer.target.mmd(a, b, 1) * 10 < steer.target.mmd(a, c, 1))
    -- unequal sizes compare by quantiles
    assert.is_true(sw(a:narrow(1, 1, 500), b) < 0.5 * sw(a, c))
    assert.is_truthy(H.error_of(sw, a, core.zeros(3, 3)):find("3 and 2") or H.error_of(sw, a, core.zeros(3, 3)):find("2 and 3"))
    -- 1-d by hand: a shift by 1 is W2 = 1 in every direction; {0, 1} and {0, 0.5, 1} have the
    -- same quantiles at the levels 1/6, 1/2, 5/6 the unequal sizes are compared at
    H.close(1, sw(core.tensor({ { 0 }, { 1 }, { 2 }, { 3 } }), core.tensor({ { 1 }, { 2 }, { 3 }, { 4 } })), 1e-6)
    H.close(0, sw(core.tensor({ { 0 }, { 1 } }), core.tensor({ { 0 }, { 0.5 }, { 1 } })), 1e-7)
    H.close(math.sqrt(1 / 3 * (0.5 ^ 2 + 0.5 ^ 2 + 0.5 ^ 2)),
      sw(core.tensor({ { 0 }, { 1 } }), core.tensor({ { 0.5 }, { 1 }, { 1.5 } })), 1e-6)
  end)
end)
