-- Training loops: loss goes down, runs are deterministic, a resumed run equals an
-- uninterrupted one, Ctrl-C stops cleanly with a checkpoint, bad options are named.
local H = require("helper")
local diffuse = H.diffuse
local nn, train = diffuse.nn, diffuse.train

-- 64 tiny 2x2 "images" from two classes with different means.
local function toy()
  local x = diffuse.randn({ 64, 1, 2, 2 }, { seed = 5 }):mul(0.3)
  local labels = {}
  for i = 1, 64 do
    labels[i] = (i - 1) % 2
    x[i]:add_(labels[i] == 0 and -0.7 or 0.7)
  end
  return x, labels
end

local function net() return nn.ResMLP{ in_dim = 4, width = 16, depth = 2, emb_dim = 8, num_classes = 2, out_dim = 4, seed = 1 } end
local sched = diffuse.schedule.vp_cosine()

local function run(o)
  local x, labels = toy()
  local base = { net = net(), images = x, labels = labels, schedule = sched, steps = 60, batch = 16, lr = 3e-3,
    seed = 7, progress = false, log_every = 20 }
  for k, v in pairs(o or {}) do base[k] = v end
  local r = train.denoiser(base)
  return base.net, r
end

local function weights(m)
  local out = {}
  for _, p in ipairs(m:parameters()) do out[#out + 1] = p.value:clone() end
  return out
end

local function same(a, b)
  for i = 1, #a do if a[i]:max_abs_diff(b[i]) ~= 0 then return false end end
  return true
end

describe("train.denoiser", function()
  it("lowers the loss", function()
    local _, r = run({ steps = 200 })
    assert.is_true(r.history[#r.history].loss < 0.8 * r.history[1].loss,
      ("%g -> %g"):format(r.history[1].loss, r.history[#r.history].loss))
  end)

  it("is deterministic for a seed and differs for another", function()
    local a = weights((run()))
    local b = weights((run()))
    local c = weights((run({ seed = 8 })))
    assert.is_true(same(a, b))
    assert.is_false(same(a, c))
  end)

  it("a run resumed from its checkpoint ends where an uninterrupted one does", function()
    local ck = os.tmpname()
    os.remove(ck)
    finally(function() os.remove(ck) end)
    local full = weights((run({ ema = 0.9 })))
    run({ steps = 25, checkpoint = ck, ema = 0.9 })
    local resumed = weights((run({ checkpoint = ck, ema = 0.9 })))
    assert.is_true(same(full, resumed))
  end)

  it("Ctrl-C stops after the current step and saves the checkpoint", function()
    local ck = os.tmpname()
    os.remove(ck)
    finally(function() os.remove(ck) end)
    local sys = require("diffuse.core")._system
    local _, r = run({ checkpoint = ck, on_step = function(step) if step == 10 then sys.raise_sigint() end end })
    assert.is_true(r.stopped)
    assert.equal(10, r.steps)
    local m = net()
    local md = assert(nn.load_state(ck, { model = m }))
    assert.equal("10", md["train.step"])
  end)

  it("names unknown and missing options", function()
    assert.matches("unknown option 'step'", H.error_of(train.denoiser, { net = net(), images = toy(), schedule = sched, step = 3 }))
    assert.matches("option 'schedule' is required", H.error_of(train.denoiser, { net = net(), images = toy() }))
    assert.matches("objective must be eps, v or x0", H.error_of(run, { objective = "score" }))
  end)
end)

describe("train.classifier", function()
  it("learns the toy classes, clean and noise-conditioned", function()
    local x, labels = toy()
    local cnn = nn.CNN{ in_channels = 1, image_size = 2, channels = { 4 }, num_classes = 2, groups = 1, seed = 1 }
    train.classifier{ net = cnn, images = x, labels = labels, steps = 150, batch = 16, lr = 1e-2, progress = false }
    assert.is_true(train.accuracy(cnn, x, labels) > 0.95)
    local tc = nn.CNN{ in_channels = 1, image_size = 2, channels = { 4 }, num_classes = 2, groups = 1, time_cond = true,
      time_scale = 1000, emb_dim = 8, seed = 1 }
    train.classifier{ net = tc, images = x, labels = labels, schedule = sched, t_max = 0.3, steps = 150, batch = 16,
      lr = 1e-2, progress = false }
    assert.is_true(train.accuracy(tc, x, labels, { t = 0.05 }) > 0.9)
  end)
end)

describe("train.random_flip", function()
  it("mirrors some images left-right and leaves the others, deterministically", function()
    local x = diffuse.randn({ 16, 1, 3, 4 }, { seed = 1 })
    local y = train.random_flip(x, 5, 2)
    local flipped, kept = 0, 0
    for i = 1, 16 do
      local a, b = x[i][1]:totable(), y[i][1]:totable()
      local same, mirror = true, true
      for r = 1, 3 do for c = 1, 4 do
        if b[r][c] ~= a[r][c] then same = false end
        if b[r][c] ~= a[r][5 - c] then mirror = false end
      end end
      assert.is_true(same or mirror)
      if same then kept = kept + 1 else flipped = flipped + 1 end
    end
    assert.is_true(flipped > 0 and kept > 0)
    assert.equal(0, y:max_abs_diff(train.random_flip(x, 5, 2)))
  end)
end)
