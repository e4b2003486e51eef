-- Classifier guidance (noise-conditioned classifier), its off-the-shelf variant (EluCD) and
-- gradient-free classifier guidance (GFCG): exact checks on a labelled Gaussian mixture (whose
-- class posterior is known in closed form), input gradients against finite differences, runs
-- on neural models, and errors.
local H = require("helper")
local diffuse = H.diffuse
local G = diffuse.guidance
local nn = diffuse.nn
local C = require("diffuse.guidance.classifier")

local mix = diffuse.models.gmm { means = { { -2, 0 }, { 2, 0 }, { 0, 2.5 } }, stds = { 0.6, 0.6, 0.8 },
  weights = { 1, 1, 1 }, labels = { 0, 0, 1 } }
local sched = diffuse.schedule.vp_cosine()

local function run(model, cond, o)
  o = o or {}
  return diffuse.sample { model = model, schedule = sched, solver = o.solver or "dpmsolver++", steps = o.steps or 15,
    shape = { o.n or 400, 2 }, seed = 1, cond = cond }
end

-- mean p(target | x) of clean samples under the exact mixture
local function class_mass(x, col)
  return mix:class_prob(x, { alpha = 1, sigma = 0 }):narrow(2, col, 1):mean()
end

-- log p(y | x_t) of the mixture, from its exact class posterior (independent of the guidance code)
local function log_class(x, p, labels)
  local pr = mix:class_prob(x, p)
  local s = 0
  for i, l in ipairs(labels) do s = s + math.log(pr:get(i, l + 1)) end
  return s
end

-- A score-kind model that returns zeros: classifier guidance on it returns scale * grad.
local zero_score = diffuse.models.fn(function(x) return x:mul(0) end, { predicts = "score" })

describe("guidance.classifier on the exact labelled mixture", function()
  it("scale 1 on the unconditional mixture is the conditional sampler; scale 0 the unconditional one", function()
    local cond = run(mix, 1)
    local g1 = G.classifier { model = mix, classifier = mix, scale = 1 }
    assert.is_true(run(g1, 1):max_abs_diff(cond) < 1e-5)
    local g0 = G.classifier { model = mix, classifier = mix, scale = 0 }
    assert.is_true(run(g0, 1):max_abs_diff(run(mix, nil)) == 0)
    -- with a conditional base, scale 0 is the conditional sampler
    local gc = G.classifier { model = mix, classifier = mix, scale = 0, conditional = true }
    assert.is_true(run(gc, 1):max_abs_diff(cond) == 0)
  end)

  it("the closed-form gradient of log p(y | x_t) matches finite differences", function()
    local g = G.classifier { model = zero_score, classifier = mix, scale = 1 }
    local x = diffuse.tensor({ { -0.7, 0.9 }, { 1.1, 1.4 }, { 0.2, -0.3 } })
    local p = { t = 0.5, alpha = 0.8, sigma = 0.6 }
    local labels = { 1, 0, 1 }
    local grad = g(x, p, labels)
    for r = 1, 3 do
      for j = 1, 2 do
        local h = 1e-4
        local xp, xm = x:clone(), x:clone()
        xp:set(r, j, x:get(r, j) + h); xm:set(r, j, x:get(r, j) - h)
        local fd = (log_class(xp, p, labels) - log_class(xm, p, labels)) / (2 * h)
        assert.is_true(math.abs(fd - grad:get(r, j)) < 2e-3, ("row %d coord %d: fd %g, got %g"):format(r, j, fd, grad:get(r, j)))
      end
    end
    -- and it is score(x | y) - score(x) (Bayes)
    local want = mix:score(x, p, 1):sub(mix:score(x, p))
    assert.is_true(g(x, p, 1):max_abs_diff(want) < 1e-4)
  end)

  it("moves the class probability of the samples toward the target, monotonically in the scale", function()
    local last = -1
    for _, s in ipairs({ 0, 1, 2, 4 }) do
      local g = G.classifier { model = mix, classifier = mix, scale = s }
      local m = class_mass(run(g, 1), 2)
      assert.is_true(m > last, ("scale %g: mean p(y|x) %g not above %g"):format(s, m, last))
      last = m
      -- one network evaluation per row and step, one classifier evaluation when guiding
      local st = g:stats()
      assert.equal(15, st.per_sample)
      assert.equal(s == 0 and 0 or 15 * 400, st.classifier_evaluations)
    end
    -- and toward the other class for the other label
    local g = G.classifier { model = mix, classifier = mix, scale = 2 }
    assert.is_true(class_mass(run(g, 0), 1) > class_mass(run(mix, nil), 1) + 0.2)
  end)

  it("is the same prediction in every model kind", function()
    local p = { t = 0.4, alpha = 0.8, sigma = 0.6 }
    local x = diffuse.randn({ 5, 2 }, { seed = 2 })
    local ref = G.classifier { model = mix, classifier = mix, scale = 2 }(x, p, 1)
    for _, kind in ipairs({ "eps", "v", "score" }) do
      local m = diffuse.models.as(mix, kind)
      local out = G.classifier { model = m, classifier = mix, scale = 2 }(x, p, 1)
      local x0 = diffuse.models.convert(out, kind, "x0", x, p)
      assert.is_true(x0:max_abs_diff(ref) < 1e-4, kind)
    end
  end)

  it("accepts a function as the classifier gradient", function()
    local p = { t = 0.4, alpha = 0.8, sigma = 0.6 }
    local x = diffuse.randn({ 3, 2 }, { seed = 5 })
    local f = function(xx, _, labels)
      assert.equal(3, #labels)
      return xx:mul(0):add(1)
    end
    local out = G.classifier { model = zero_score, classifier = f, scale = 3 }(x, p, 0)
    assert.is_true(out:max_abs_diff(diffuse.full({ 3, 2 }, 3)) < 1e-6)
  end)
end)

describe("guidance.classifier with a neural classifier", function()
  it("the time-conditioned CNN's input gradient of log p(y | x_t, t) matches finite differences", function()
    local net = nn.CNN { channels = { 4, 8 }, num_classes = 3, image_size = 8, time_cond = true, emb_dim = 8,
      time_scale = 1000, seed = 3 }
    local g = G.classifier { model = zero_score, classifier = net, scale = 1 }
    local x = diffuse.randn({ 2, 64 }, { seed = 6 })
    local p = { t = 0.3, alpha = 0.9, sigma = 0.4 }
    local labels = { 2, 0 }
    local grad = g(x, p, labels)
    local function logp(xx)
      local lg = net:forward(xx, 0.3)
      local s = 0
      for i, l in ipairs(labels) do
        local m, z = -math.huge, 0
        for c = 1, 3 do m = math.max(m, lg:get(i, c)) end
        for c = 1, 3 do z = z + math.exp(lg:get(i, c) - m) end
        s = s + lg:get(i, l + 1) - m - math.log(z)
      end
      return s
    end
    for _, rj in ipairs({ { 1, 1 }, { 1, 30 }, { 2, 17 }, { 2, 64 } }) do
      local r, j = rj[1], rj[2]
      local h = 1e-2
      local xp, xm = x:clone(), x:clone()
      xp:set(r, j, x:get(r, j) + h); xm:set(r, j, x:get(r, j) - h)
      local fd = (logp(xp) - logp(xm)) / (2 * h)
      assert.is_true(math.abs(fd - grad:get(r, j)) < 1e-3 + 1e-2 * math.abs(fd), ("%g vs %g"):format(fd, grad:get(r, j)))
    end
    -- the network is left in eval mode with no accumulated parameter gradients
    assert.is_false(net.training)
    for _, q in ipairs(net:parameters()) do assert.equal(0, q.grad:abs():max()) end
    assert.equal(2, g:stats().classifier_gradients)
  end)

  it("the shipped noise-conditioned classifier's input gradient matches finite differences", function()
    local tc = diffuse.models.load("fashion-tclassifier")
    if not tc then return end
    local x = diffuse.randn({ 1, 784 }, { seed = 3 }):mul(0.7)
    local grad = G.classifier { model = zero_score, classifier = tc, scale = 1 }(x, { t = 0.4, alpha = 0.8, sigma = 0.6 }, 3)
    local function logp(xx)
      local lg = tc:forward(xx, 0.4)
      local m, z = -math.huge, 0
      for c = 1, 10 do m = math.max(m, lg:get(1, c)) end
      for c = 1, 10 do z = z + math.exp(lg:get(1, c) - m) end
      return lg:get(1, 4) - m - math.log(z)
    end
    for _, j in ipairs({ 100, 407, 600 }) do
      local h = 1e-2
      local xp, xm = x:clone(), x:clone()
      xp:set(1, j, x:get(1, j) + h); xm:set(1, j, x:get(1, j) - h)
      local fd = (logp(xp) - logp(xm)) / (2 * h)
      assert.is_true(math.abs(fd - grad:get(1, j)) < 1e-3 + 2e-2 * math.abs(fd), ("%g vs %g"):format(fd, grad:get(1, j)))
    end
  end)

  it("guides the shipped denoiser with the shipped noise-conditioned classifier", function()
    local model, info = diffuse.models.load("fashion-denoiser")
    local tc = diffuse.models.load("fashion-tclassifier")
    if not (model and tc) then return end
    local g = G.classifier { model = model, classifier = tc, scale = 2 }
    local x = diffuse.sample { model = g, schedule = info.schedule, solver = "ddim", steps = 3, shape = { 2, 784 },
      seed = 1, cond = { 1, 7 } }
    assert.equal(2, #x)
    assert.equal(3, g:stats().per_sample)
    assert.equal(6, g:stats().classifier_gradients)
  end)
end)

describe("guidance.elucd (off-the-shelf classifier on the x0 estimate)", function()
  it("raises the class probability with the scale on the mixture (clean classifier = the mixture at t = 0)", function()
    local last = -1
    for _, s in ipairs({ 0, 1, 4 }) do
      local g = G.elucd { model = mix, classifier = mix, scale = s }
      local m = class_mass(run(g, 1), 2)
      assert.is_true(m > last, ("scale %g: %g"):format(s, m))
      last = m
    end
    -- scale 0 is the conditional model
    assert.is_true(run(G.elucd { model = mix, classifier = mix, scale = 0 }, 1):max_abs_diff(run(mix, 1)) == 0)
  end)

  it("applies the calibrated objective's gradient at the x0 estimate with the sine schedule", function()
    -- an x0 model that returns x: the x0 estimate is x itself, and the output is
    -- x + scale (1 + gamma sin(pi t)) sigma^2 / alpha * grad_x0 [T1 logit_y - lse(T2 logits)]
    local ident = diffuse.models.fn(function(x) return x:mul(1) end, { predicts = "x0" })
    local x = diffuse.tensor({ { -0.5, 1.2 }, { 0.8, 0.1 } })
    local p = { t = 0.25, alpha = 0.9, sigma = 0.5 }
    local T1, disc, gamma, scale = 1.5, 0.5, 0.3, 2
    local g = G.elucd { model = ident, classifier = mix, scale = scale, temperature = T1, discount = disc, gamma = gamma }
    local out = g(x, p, { 1, 0 })
    local function obj(xx, r, y)
      local pr = mix:class_prob(xx, { alpha = 1, sigma = 0 })
      local l1, l2 = math.log(pr:get(r, 1)), math.log(pr:get(r, 2))
      local ly = y == 0 and l1 or l2
      return T1 * ly - math.log(math.exp(T1 * disc * l1) + math.exp(T1 * disc * l2))
    end
    local c = scale * (1 + gamma * math.sin(math.pi * 0.25)) * 0.25 / 0.9
    for r, y in ipairs({ 1, 0 }) do
      for j = 1, 2 do
        local h = 1e-4
        local xp, xm = x:clone(), x:clone()
        xp:set(r, j, x:get(r, j) + h); xm:set(r, j, x:get(r, j) - h)
        local fd = (obj(xp, r, y) - obj(xm, r, y)) / (2 * h)
        local want = x:get(r, j) + c * fd
        assert.is_true(math.abs(out:get(r, j) - want) < 1e-3, ("%g vs %g"):format(out:get(r, j), want))
      end
    end
  end)

  it("through = 'denoiser' is the exact gradient through the network's x0 estimate (finite differences)", function()
    local mix3 = diffuse.models.gmm { means = { { -2, 0, 1 }, { 2, 0, 0 }, { 0, 2.5, -1 } }, stds = { 0.6, 0.6, 0.8 },
      labels = { 0, 0, 1 } }
    for _, kind in ipairs({ "v", "eps", "x0" }) do
      local net = nn.ResMLP { in_dim = 3, width = 16, depth = 2, emb_dim = 8, num_classes = 2, time_scale = 1000,
        label_dropout = 0.3 }
      local m = nn.as_model(net, { predicts = kind })
      local g = G.elucd { model = m, classifier = mix3, scale = 1, gamma = 0, discount = 1, through = "denoiser" }
      local p = { t = 0.5, alpha = 0.8, sigma = 0.6 }
      local x = diffuse.randn({ 2, 3 }, { seed = 5 })
      local labels = { 1, 0 }
      local out = g(x, p, labels)
      local base = m(x, p, labels)
      assert.is_true(base:max_abs_diff(out) > 0)
      local grad = out:sub(base):mul(1 / C.score_factor(kind, p))
      local function obj(xx)
        local x0 = diffuse.models.convert(m(xx, p, labels), kind, "x0", xx, p)
        local pr = mix3:class_prob(x0, { alpha = 1, sigma = 0 })
        return math.log(pr:get(1, 2)) + math.log(pr:get(2, 1))
      end
      for r = 1, 2 do
        for j = 1, 3 do
          local h = 1e-3
          local xp, xm = x:clone(), x:clone()
          xp:set(r, j, x:get(r, j) + h); xm:set(r, j, x:get(r, j) - h)
          local fd = (obj(xp) - obj(xm)) / (2 * h)
          assert.is_true(math.abs(fd - grad:get(r, j)) < 2e-3 * (1 + math.abs(fd)), ("%s: %g vs %g"):format(kind, fd, grad:get(r, j)))
        end
      end
      -- label dropout restored, eval mode, one network evaluation and one backward per row
      assert.equal(0.3, net.class_emb.dropout)
      assert.is_false(net.training)
      assert.equal(2, g:stats().evaluations)
      assert.equal(2, g:stats().denoiser_backwards)
    end
  end)

  it("softened activations: the gradient of the beta-SiLU network matches finite differences", function()
    local net = nn.CNN { channels = { 4, 8 }, num_classes = 3, image_size = 8, seed = 4 }
    local ident = diffuse.models.fn(function(x) return x:mul(1) end, { predicts = "x0" })
    local x = diffuse.randn({ 2, 64 }, { seed = 7 })
    local p = { t = 0, alpha = 1, sigma = 1 }
    for _, beta in ipairs({ 1, 0.5, 3 }) do
      local g = G.elucd { model = ident, classifier = net, scale = 1, beta = beta, gamma = 0, discount = 1 }
      local grad = g(x, p, { 0, 2 }):sub(x)
      local function soft_logp(xx)
        -- the beta-SiLU network, written out with public layers: silu(beta z) / beta
        local h = xx:reshape(#xx, 1, 8, 8)
        for i = 1, 2 do
          local z = net.stages[i].norm(net.stages[i].conv(h))
          h = z:mul(beta):silu():mul(1 / beta)
        end
        local lg = net.head(net.pool(h))
        local s = 0
        for i, l in ipairs({ 0, 2 }) do
          local m, zs = -math.huge, 0
          for c = 1, 3 do m = math.max(m, lg:get(i, c)) end
          for c = 1, 3 do zs = zs + math.exp(lg:get(i, c) - m) end
          s = s + lg:get(i, l + 1) - m - math.log(zs)
        end
        return s
      end
      for _, rj in ipairs({ { 1, 5 }, { 2, 40 } }) do
        local r, j = rj[1], rj[2]
        local h = 1e-2
        local xp, xm = x:clone(), x:clone()
        xp:set(r, j, x:get(r, j) + h); xm:set(r, j, x:get(r, j) - h)
        local fd = (soft_logp(xp) - soft_logp(xm)) / (2 * h)
        assert.is_true(math.abs(fd - grad:get(r, j)) < 1e-3 + 1e-2 * math.abs(fd), ("beta %g: %g vs %g"):format(beta, fd, grad:get(r, j)))
      end
    end
  end)

  it("runs on the shipped denoiser with the shipped clean classifier", function()
    local model, info = diffuse.models.load("fashion-denoiser")
    local cc = diffuse.models.load("fashion-classifier")
    if not (model and cc) then return end
    for _, through in ipairs({ "x0", "denoiser" }) do
      local g = G.elucd { model = model, classifier = cc, scale = 1, beta = 0.5, clip = { -1, 1 }, through = through }
      local x = diffuse.sample { model = g, schedule = info.schedule, solver = "dpmsolver++", steps = 3, shape = { 2, 784 },
        seed = 1, cond = { 1, 7 } }
      assert.equal(2, #x)
      assert.equal(3, g:stats().per_sample)
      assert.equal(6, g:stats().classifier_evaluations)
    end
  end)
end)

describe("guidance.gfcg (gradient-free classifier guidance)", function()
  it("scale 0 is the conditional model; the class probability rises with the scale at two evaluations per step", function()
    assert.is_true(run(G.gfcg { model = mix, classifier = mix, scale = 0 }, 1):max_abs_diff(run(mix, 1)) == 0)
    local last = class_mass(run(mix, 1), 2)
    for _, s in ipairs({ 1, 2, 4 }) do
      local g = G.gfcg { model = mix, classifier = mix, scale = s }
      local m = class_mass(run(g, 1), 2)
      assert.is_true(m > last, ("scale %g: %g not above %g"):format(s, m, last))
      last = m
      assert.equal(30, g:stats().per_sample)
      assert.equal(15 * 400, g:stats().classifier_evaluations)
    end
  end)

  it("is D(c) + w (D(c) - D(r)) with r the most probable other class and w from the classifier", function()
    local mix4 = diffuse.models.gmm { means = { { -2, 0 }, { 2, 0 }, { 0, 2.5 }, { 0, -2.5 } }, stds = 0.7,
      labels = { 0, 1, 2, 3 } }
    local p = { t = 0.5, alpha = 0.8, sigma = 0.6 }
    local x = diffuse.tensor({ { -1, 0.2 }, { 0.3, 1.5 }, { 0.1, -0.4 } })
    local labels = { 1, 3, 2 }
    for _, adaptive in ipairs({ true, false }) do
      local g = G.gfcg { model = mix4, classifier = mix4, scale = 1.5, adaptive = adaptive }
      local out = g(x, p, labels)
      local c = mix4(x, p, labels)
      local x0c = c -- an x0 model: its conditional output is the x0 estimate the classifier reads
      local pr = mix4:class_prob(x0c, { alpha = 1, sigma = 0 })
      for i, y in ipairs(labels) do
        local best, r = -1, nil
        for k = 0, 3 do
          if k ~= y and pr:get(i, k + 1) > best then best, r = pr:get(i, k + 1), k end
        end
        local w = adaptive and 1.5 * 2 * best / (best + pr:get(i, y + 1)) or 1.5
        local ci = c:narrow(1, i, 1)
        local ri = mix4(x:narrow(1, i, 1), p, r)
        local want = ci:add(ci:sub(ri):mul(w))
        assert.is_true(out:narrow(1, i, 1):max_abs_diff(want) < 1e-5)
      end
    end
    -- the cfg term adds cfg (D(c) - D(null)) at one more evaluation
    local g = G.gfcg { model = mix4, classifier = mix4, scale = 0, cfg = 2 }
    local want = diffuse.lincomb({ mix4(x, p, labels), mix4(x, p) }, { 3, -2 })
    assert.is_true(g(x, p, labels):max_abs_diff(want) < 1e-5)
    assert.equal(2, g:stats().per_sample)
  end)

  it("keeps the reference classes in the run's memory, forked with the state", function()
    local mix4 = diffuse.models.gmm { means = { { -2, 0 }, { 2, 0 }, { 0, 2.5 }, { 0, -2.5 } }, stds = 0.7,
      labels = { 0, 1, 2, 3 } }
    local g = G.gfcg { model = mix4, classifier = mix4, scale = 1 }
    local st = diffuse.sampler.new { model = g, schedule = sched, solver = "ddim", steps = 4, shape = { 3, 2 }, seed = 1,
      cond = { 0, 1, 2 } }
    st:step()
    local ref = st.aux[g.key].reference:totable()
    assert.equal(3, #ref)
    for i, y in ipairs({ 0, 1, 2 }) do assert.is_true(ref[i] ~= y) end
    local forked = st:gather({ 3, 1 })
    assert.same({ ref[3], ref[1] }, forked.aux[g.key].reference:totable())
  end)

  it("runs on the shipped denoiser with the shipped clean classifier", function()
    local model, info = diffuse.models.load("fashion-denoiser")
    local cc = diffuse.models.load("fashion-classifier")
    if not (model and cc) then return end
    local g = G.gfcg { model = model, classifier = cc, scale = 2, clip = { -1, 1 } }
    local x = diffuse.sample { model = g, schedule = info.schedule, solver = "unipc", steps = 3, shape = { 2, 784 },
      seed = 1, cond = diffuse.tensor({ 4, 9 }) }
    assert.equal(2, #x)
    assert.equal(6, g:stats().per_sample)
  end)
end)

describe("classifier guidance errors", function()
  local tiny_clean = nn.CNN { channels = { 4 }, num_classes = 3, image_size = 4 }
  local tiny_noisy = nn.CNN { channels = { 4 }, num_classes = 3, image_size = 4, time_cond = true, emb_dim = 4 }
  local p = { t = 0.5, alpha = 0.8, sigma = 0.6 }
  local function raises(f, pat)
    local ok, err = pcall(f)
    assert.is_false(ok)
    assert.is_truthy(tostring(err):find(pat, 1, true), tostring(err))
  end
  it("names a missing or wrong classifier", function()
    raises(function() G.classifier { model = mix } end, "'classifier' is required")
    raises(function() G.elucd { model = mix } end, "'classifier' is required")
    raises(function() G.gfcg { model = mix } end, "'classifier' is required")
    raises(function() G.classifier { model = mix, classifier = tiny_clean } end, "not time-conditioned")
    raises(function() G.elucd { model = mix, classifier = tiny_noisy } end, "time-conditioned")
    raises(function() G.gfcg { model = mix, classifier = 42 } end, "'classifier' must be")
    local unlabelled = diffuse.models.gmm { means = { { 0, 0 } }, stds = { 1 } }
    raises(function() G.classifier { model = mix, classifier = unlabelled } end, "needs labels")
  end)
  it("checks scale and the other options", function()
    raises(function() G.classifier { model = mix, classifier = mix, scale = "2" } end, "'scale' must be a finite number")
    raises(function() G.elucd { model = mix, classifier = mix, scale = 0 / 0 } end, "'scale' must be a finite number")
    raises(function() G.gfcg { model = mix, classifier = mix, scale = {} } end, "'scale' must be a finite number")
    raises(function() G.classifier { model = mix, classifier = mix, sclae = 2 } end, "unknown option 'sclae'")
    raises(function() G.elucd { model = mix, classifier = mix, through = "unet" } end, "unknown through 'unet'")
    raises(function() G.elucd { model = mix, classifier = mix, through = "denoiser" } end, "needs a neural model")
    raises(function() G.elucd { model = mix, classifier = mix, beta = 0 } end, "'beta' must be > 0")
    raises(function() G.gfcg { model = mix, classifier = mix, clip = { 1, -1 } } end, "'clip' must be {lo, hi}")
    raises(function() G.classifier { classifier = mix } end, "'model' is required")
  end)
  it("needs the target labels at call time, and labels the classifier knows", function()
    local g = G.classifier { model = mix, classifier = mix }
    local x = diffuse.randn({ 2, 2 }, { seed = 1 })
    raises(function() g(x, p, nil) end, "needs cond")
    raises(function() g(x, p, 5) end, "label 5 is not a class")
    raises(function() g(x, p, { 0, 1, 1 }) end, "cond lists 3 labels but x has 2 rows")
    raises(function() G.gfcg { model = mix, classifier = mix }(x, p, 0.5) end, "not an integer")
  end)
end)
