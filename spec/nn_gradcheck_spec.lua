-- Gradient checks of diffuse.nn: every layer's backward (input and parameter gradients) against
-- central finite differences of a scalar loss L = sum(out * R), R fixed random weights, summed
-- in double.  float32 forward passes, so eps = 1e-2 and a relative tolerance of 1e-2.
local diffuse = require("diffuse")
local nn = diffuse.nn

local EPS, RTOL, ATOL = 1e-2, 1e-2, 2e-3

local function flat(t) return diffuse.tensor(t):reshape(-1):totable() end

local function dot(out, R)
  local a, b = flat(out), R
  local s = 0
  for i = 1, #a do s = s + a[i] * b[i] end
  return s
end

local function weights(shape, seed)
  return diffuse.randn(shape, { seed = seed }):reshape(-1):totable()
end

-- Up to `max` element indices of a tensor of n elements, spread evenly, deterministic.
local function picks(n, max)
  local out = {}
  if n <= max then
    for i = 1, n do out[i] = i end
  else
    for k = 1, max do out[k] = math.floor((k - 1) * (n - 1) / (max - 1)) + 1 end
  end
  return out
end

-- Compare analytic against numeric for the tensor `t` (perturbed in place through a flat view).
-- Returns the worst violation message or nil.
local function check_tensor(label, t, analytic, loss, max, scale_analytic)
  local v = t:view(-1)
  local a = flat(analytic)
  for _, i in ipairs(picks(v:numel(), max or 24)) do
    local x0 = v:get(i)
    v:set(i, x0 + EPS)
    local lp = loss()
    v:set(i, x0 - EPS)
    local lm = loss()
    v:set(i, x0)
    local num = (lp - lm) / (2 * EPS)
    local ana = a[i] * (scale_analytic or 1)
    if math.abs(num - ana) > ATOL + RTOL * math.max(math.abs(num), math.abs(ana)) then
      return ("%s[%d]: analytic %.6g, numeric %.6g"):format(label, i, ana, num)
    end
  end
  return nil
end

-- gradcheck{module, inputs = {x, ...} (tensors needing gradients first), extra = {...} (passed
-- after them), forward = fn(m, ...) (default m:forward), backward = fn(m, R) -> dx, before =
-- fn(m) called before every forward, input_grad = false to skip dx, scale = wrong factor}.
local function gradcheck(o)
  local m = o.module
  local fwd = o.forward or function(mm, ...) return mm:forward(...) end
  local args = o.inputs
  local function run()
    if o.before then o.before(m) end
    return fwd(m, table.unpack(args, 1, o.nargs or #args))
  end
  m:train()
  local out = run()
  local R = weights(out:shape(), 99)
  local Rt = diffuse.tensor(R):view(out:shape())
  local loss = function() return dot(run(), R) end
  m:zero_grad()
  run()
  local dx = (o.backward or function(mm, r) return mm:backward(r) end)(m, Rt)
  local errs = {}
  if o.input_grad ~= false then
    assert(dx, "backward returned no input gradient")
    local e = check_tensor("input", args[1], dx, loss, o.max, o.scale)
    if e then errs[#errs + 1] = e end
  end
  for _, p in ipairs(m:parameters()) do
    local grad = p.grad:clone()
    local e = check_tensor(p.name, p.value, grad, loss, o.max, o.scale)
    if e then errs[#errs + 1] = e end
  end
  return #errs == 0, table.concat(errs, "; ")
end

local function ok(o)
  local pass, msg = gradcheck(o)
  assert(pass, msg)
end

local function randn(shape, seed) return diffuse.randn(shape, { seed = seed }) end

describe("nn gradcheck", function()
  it("rejects a gradient that is 5% off (the check can fail)", function()
    local pass = gradcheck { module = nn.Linear(4, 3, { seed = 1 }), inputs = { randn({ 2, 4 }, 1) }, scale = 1.05 }
    assert.is_false(pass)
    local pass2 = gradcheck { module = nn.LayerNorm(5), inputs = { randn({ 3, 5 }, 2) }, scale = 0.95 }
    assert.is_false(pass2)
  end)

  it("Linear, with and without bias", function()
    ok { module = nn.Linear(4, 3, { seed = 1 }), inputs = { randn({ 2, 4 }, 1) } }
    ok { module = nn.Linear(5, 2, { bias = false, seed = 2 }), inputs = { randn({ 3, 5 }, 2) } }
  end)

  it("Linear with a residual (forward(x, r))", function()
    local r = randn({ 2, 3 }, 4)
    ok { module = nn.Linear(4, 3, { seed = 3 }), inputs = { randn({ 2, 4 }, 3), r } }
  end)

  it("SiLU and GELU", function()
    ok { module = nn.SiLU(), inputs = { randn({ 3, 7 }, 5):mul(2) } }
    ok { module = nn.GELU(), inputs = { randn({ 3, 7 }, 6):mul(2) } }
    ok { module = nn.SiLU(), inputs = { randn({ 2, 2, 3, 3 }, 7) } }
  end)

  it("LayerNorm (with non-trivial affine parameters)", function()
    local m = nn.LayerNorm(6)
    m.weight.value:copy_(randn({ 6 }, 8))
    m.bias.value:copy_(randn({ 6 }, 9))
    ok { module = m, inputs = { randn({ 4, 6 }, 10):mul(3):add(1) } }
  end)

  it("GroupNorm", function()
    local m = nn.GroupNorm(2, 4)
    m.weight.value:copy_(randn({ 4 }, 11))
    m.bias.value:copy_(randn({ 4 }, 12))
    ok { module = m, inputs = { randn({ 2, 4, 3, 3 }, 13) } }
    ok { module = nn.GroupNorm(3, 3), inputs = { randn({ 2, 3, 5 }, 14) } }
  end)

  it("Dropout with a fixed mask", function()
    local m = nn.Dropout(0.3, { seed = 5 })
    ok { module = m, inputs = { randn({ 4, 8 }, 15) }, before = function(mm) mm.step = 7 end }
  end)

  it("ClassEmbedding (table gradient) and SinusoidalEmbedding (no gradient)", function()
    local m = nn.ClassEmbedding(3, 4, { seed = 2 })
    ok { module = m, inputs = { diffuse.tensor({ 0, 2, 2, 3, 1 }) }, input_grad = false }
    assert.is_nil(nn.SinusoidalEmbedding(8):backward(diffuse.zeros(2, 8)))
  end)

  it("Conv2d: stride 1 and 2, with and without padding", function()
    ok { module = nn.Conv2d(2, 3, 3, { padding = 1, seed = 3 }), inputs = { randn({ 2, 2, 5, 5 }, 16) } }
    ok { module = nn.Conv2d(2, 3, 3, { stride = 2, padding = 1, seed = 4 }), inputs = { randn({ 2, 2, 6, 5 }, 17) } }
    ok { module = nn.Conv2d(1, 2, 2, { stride = 2, seed = 5, bias = false }), inputs = { randn({ 1, 1, 5, 4 }, 18) } }
  end)

  it("AvgPool2d and GlobalAvgPool", function()
    ok { module = nn.AvgPool2d(2), inputs = { randn({ 2, 2, 5, 4 }, 19) } }
    ok { module = nn.GlobalAvgPool(), inputs = { randn({ 2, 3, 3, 2 }, 20) } }
  end)

  it("Sequential", function()
    local m = nn.Sequential { nn.Linear(3, 5, { seed = 6 }), nn.GELU(), nn.LayerNorm(5), nn.Linear(5, 2, { seed = 7 }) }
    ok { module = m, inputs = { randn({ 4, 3 }, 21) } }
  end)

  describe("ResidualBlock", function()
    it("without conditioning", function()
      ok { module = nn.ResidualBlock(4, { hidden = 6, seed = 1 }), inputs = { randn({ 3, 4 }, 22) } }
    end)
    it("with FiLM conditioning: input, conditioning and parameter gradients", function()
      local m = nn.ResidualBlock(4, { hidden = 5, cond_dim = 3, seed = 2 })
      local c = randn({ 3, 3 }, 24)
      ok { module = m, inputs = { randn({ 3, 4 }, 23), c } }
      -- the conditioning gradient
      ok { module = m, inputs = { c, randn({ 3, 4 }, 23) }, forward = function(mm, cc, x) return mm:forward(x, cc) end,
        backward = function(mm, r) local _, dc = mm:backward(r); return dc end }
    end)
    it("with dropout (fixed mask)", function()
      local m = nn.ResidualBlock(4, { hidden = 6, dropout = 0.25, seed = 3 })
      ok { module = m, inputs = { randn({ 3, 4 }, 25) }, before = function(mm) mm.drop.step = 3 end }
    end)
    it("skipped: identity, gradient passes through unchanged, no parameter gradient", function()
      local m = nn.ResidualBlock(4, { cond_dim = 2 })
      local x = randn({ 2, 4 }, 26)
      m:zero_grad()
      local y = m:forward(x, randn({ 2, 2 }, 27), { skip = true })
      assert.equal(x, y)
      local g = randn({ 2, 4 }, 28)
      local dx, dc = m:backward(g)
      assert.equal(g, dx)
      assert.is_nil(dc)
      for _, p in ipairs(m:parameters()) do assert.equal(0, p.grad:abs():max()) end
    end)
  end)

  it("ResMLP (class-conditional, with a skipped block)", function()
    local m = nn.ResMLP { in_dim = 6, width = 8, depth = 3, emb_dim = 4, num_classes = 3, seed = 4 }
    local t = diffuse.tensor({ 3, 150, 800 })
    ok { module = m, inputs = { randn({ 3, 6 }, 29), t, { 0, 3, 2 } }, max = 8 }
    ok { module = m, inputs = { randn({ 3, 6 }, 30), t, { 1, 1, 2 }, { skip = { 2 } } }, max = 6 }
  end)

  it("ResMLP unconditional, image-shaped input", function()
    local m = nn.ResMLP { in_dim = 8, width = 6, depth = 2, emb_dim = 4, seed = 5, time_scale = 1000 }
    ok { module = m, inputs = { randn({ 2, 2, 2, 2 }, 31), diffuse.tensor({ 0.1, 0.7 }) }, nargs = 2, max = 6 }
  end)

  it("CNN (time-conditioned) and its features", function()
    local m = nn.CNN { image_size = 8, channels = { 4, 6 }, groups = 2, num_classes = 3, time_cond = true, emb_dim = 4, seed = 1 }
    ok { module = m, inputs = { randn({ 2, 1, 8, 8 }, 32), diffuse.tensor({ 10, 500 }) }, max = 6 }
    local c = nn.CNN { image_size = 6, channels = { 3 }, groups = 1, num_classes = 2, seed = 2 }
    ok { module = c, inputs = { randn({ 2, 36 }, 33) }, max = 6 }
    ok { module = c, inputs = { randn({ 2, 1, 6, 6 }, 34) }, forward = function(mm, x) return mm:features(x) end,
      backward = function(mm, r) return mm:backward_features(r) end, max = 6 }
  end)

  it("mse and cross_entropy gradients", function()
    local pred, target = randn({ 3, 4 }, 35), randn({ 3, 4 }, 36)
    local _, g = nn.mse(pred, target)
    local e = check_tensor("mse", pred, g, function() return (nn.mse(pred, target)) end)
    assert.is_nil(e, e)
    local logits = randn({ 4, 5 }, 37):mul(3)
    local labels = { 0, 4, 2, 2 }
    local _, gz = nn.cross_entropy(logits, labels)
    e = check_tensor("ce", logits, gz, function() return (nn.cross_entropy(logits, labels)) end)
    assert.is_nil(e, e)
    -- and the check fails for a wrong gradient
    assert.is_not_nil(check_tensor("ce", logits, gz, function() return (nn.cross_entropy(logits, labels)) end, nil, 1.05))
  end)
end)
