-- diffuse.nn: shapes, errors, determinism, persistence, optimizer, EMA, skip, printing, and a
-- small training sanity check.  Gradients are checked in nn_gradcheck_spec.lua.
local diffuse = require("diffuse")
local H = require("helper")
local nn = diffuse.nn

local function randn(shape, seed) return diffuse.randn(shape, { seed = seed }) end

local function tmpfile()
  local p = os.tmpname()
  os.remove(p)
  return p .. ".safetensors"
end

local function small_resmlp(extra)
  local o = { in_dim = 12, width = 16, depth = 3, emb_dim = 8, num_classes = 4, seed = 3 }
  for k, v in pairs(extra or {}) do o[k] = v end
  return nn.ResMLP(o)
end

describe("nn layers", function()
  it("Linear computes x W^T + b like an independent matmul", function()
    local m = nn.Linear(5, 3, { seed = 2 })
    local x = randn({ 4, 5 }, 1)
    local ref = diffuse.matmul(x, m.weight.value, { transb = true }):add(m.bias.value)
    assert.allclose(ref, m:forward(x), 1e-5, 1e-5)
    -- a strided input works (made contiguous)
    local xt = randn({ 5, 4 }, 2):t()
    assert.allclose(diffuse.matmul(xt, m.weight.value, { transb = true }):add(m.bias.value), m:forward(xt), 1e-5, 1e-5)
  end)

  it("SiLU, GELU, LayerNorm and GroupNorm match Lua formulas", function()
    local x = diffuse.tensor({ { -3, -0.5, 0, 0.7, 4 } })
    local y, g = nn.SiLU():forward(x):totable()[1], nn.GELU():forward(x):totable()[1]
    for i, v in ipairs(x:totable()[1]) do
      assert.near(v / (1 + math.exp(-v)), y[i], 1e-6)
      assert.near(0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ^ 3))), g[i], 1e-6)
    end
    local z = nn.LayerNorm(5):forward(x):totable()[1]
    local mu, var = 0, 0
    for _, v in ipairs(x:totable()[1]) do mu = mu + v / 5 end
    for _, v in ipairs(x:totable()[1]) do var = var + (v - mu) ^ 2 / 5 end
    for i, v in ipairs(x:totable()[1]) do assert.near((v - mu) / math.sqrt(var + 1e-5), z[i], 1e-5) end
    -- GroupNorm with one group per channel normalises each (n, c) plane
    local xi = randn({ 2, 3, 4, 4 }, 3):mul(5):add(2)
    local gn = nn.GroupNorm(3, 3):forward(xi)
    local plane = gn:narrow(1, 2, 1):narrow(2, 3, 1):reshape(-1)
    assert.near(0, plane:mean(), 1e-5)
    assert.near(1, (plane:mul(plane):mean()), 1e-3)
  end)

  it("SinusoidalEmbedding is [cos | sin] of t times geometric frequencies", function()
    local e = nn.SinusoidalEmbedding(6, { max_period = 100 }):forward(diffuse.tensor({ 0, 2.5, 2.5 }))
    local r = e:totable()
    for k = 0, 2 do
      local f = 100 ^ (-k / 3)
      assert.near(1, r[1][k + 1], 1e-7)
      assert.near(math.cos(2.5 * f), r[2][k + 1], 1e-6)
      assert.near(math.sin(2.5 * f), r[2][k + 4], 1e-6)
    end
    assert.same(r[2], r[3])
  end)

  it("Conv2d matches a direct convolution; output shape with stride and padding", function()
    local m = nn.Conv2d(2, 3, 3, { stride = 2, padding = 1, seed = 1 })
    local x = randn({ 1, 2, 5, 4 }, 4)
    local y = m:forward(x)
    assert.same({ 1, 3, 3, 2 }, y:shape())
    local W, b, X = m.weight.value:totable(), m.bias.value:totable(), x:totable()[1]
    for o = 1, 3 do
      for i = 1, 3 do
        for j = 1, 2 do
          local s = b[o]
          for c = 1, 2 do
            for a = 1, 3 do
              for bb = 1, 3 do
                local yy, xx = (i - 1) * 2 - 1 + a, (j - 1) * 2 - 1 + bb
                if yy >= 1 and yy <= 5 and xx >= 1 and xx <= 4 then s = s + W[o][c][a][bb] * X[c][yy][xx] end
              end
            end
          end
          assert.near(s, y:get(1, o, i, j), 1e-5)
        end
      end
    end
  end)

  it("wrong input shapes raise errors naming the layer and both shapes", function()
    local m = small_resmlp()
    local ok, err = pcall(m.forward, m, randn({ 2, 10 }, 1), 1, nil)
    assert.is_false(ok)
    assert.matches("ResMLP", err)
    assert.matches("[2x10]", err, 1, true)
    assert.matches("(N, 12)", err, 1, true)
    local l = nn.Linear(4, 2)
    local seq = nn.Sequential { nn.Linear(3, 4), l }
    ok, err = pcall(l.forward, l, randn({ 2, 3 }, 1))
    assert.matches("2 %(Linear%(4 %-> 2%)%): input is %[2x3%], expected %(N, 4%)", err)
    assert.matches("Linear", select(2, pcall(seq[1].forward, seq[1], randn({ 2, 5 }, 1))))
    ok, err = pcall(m.blocks[2].forward, m.blocks[2], randn({ 2, 7 }, 1))
    assert.matches("blocks.2", err, 1, true)
    assert.matches("[2x7]", err, 1, true)
    assert.has_error(function() nn.Conv2d(1, 2, 3):forward(randn({ 1, 2, 8, 8 }, 1)) end)
    assert.has_error(function() m:forward(randn({ 2, 12 }, 1), 1, { 0, 9 }) end, nil)
    assert.has_error(function() m:forward(randn({ 2, 12 }, 1), 1, nil, { skip = { 7 } }) end)
    assert.has_error(function() nn.ResMLP { widht = 3 } end)
    assert.has_error(function() nn.Linear(2, 2):backward(diffuse.zeros(1, 2)) end)
    local ok2, e2 = pcall(nn.ResMLP, { widht = 3 })
    assert.is_false(ok2)
    assert.matches("unknown option 'widht'", e2)
    assert.matches("width", e2)
  end)
end)

describe("nn models", function()
  it("ResMLP shapes: (N, D) and image-shaped inputs, labels as nil / number / list / tensor", function()
    local m = small_resmlp({ in_dim = 16 })
    m:eval()
    local x = randn({ 3, 1, 4, 4 }, 1)
    local y = m:forward(x, 0.5, { 0, 1, 4 })
    assert.same({ 3, 1, 4, 4 }, y:shape())
    local x2 = x:reshape(3, 16)
    assert.allclose(y:reshape(3, 16), m:forward(x2, diffuse.tensor({ 0.5, 0.5, 0.5 }), diffuse.tensor({ 0, 1, 4 })), 0, 0)
    -- nil labels = the null class (4)
    assert.allclose(m:forward(x2, 0.5, nil), m:forward(x2, 0.5, 4), 0, 0)
    local m2 = nn.ResMLP { in_dim = 16, width = 8, depth = 1, emb_dim = 4, out_dim = 3 }
    assert.same({ 3, 3 }, m2:forward(x, 1):shape())
  end)

  it("skip = {blocks} makes those blocks the identity, exactly and for free", function()
    local m = small_resmlp()
    m:eval()
    local x, t, lab = randn({ 4, 12 }, 5), 10, { 0, 1, 2, 3 }
    local full = m:forward(x, t, lab)
    local skipped = m:forward(x, t, lab, { skip = { 1, 3 } })
    assert.is_false(H.close(full, skipped, 1e-3, 0))
    -- reference: run the pieces by hand with blocks 1 and 3 left out
    local K = require("diffuse.core")._nn
    local te = m.time_emb:forward(diffuse.full({ 4 }, t))
    local c = m.time_fc2:forward(m.time_fc1:forward(te):mul(1):clone())
    c = m.time_fc2:forward(K.film_silu_fwd(m.time_fc1:forward(te))):add(m.class_emb:forward(lab))
    local h = m.stem:forward(x)
    h = m.blocks[2]:forward(h, K.film_silu_fwd(c))
    local ref = m.head:forward(m.head_norm:forward(h))
    assert.allclose(ref, skipped, 0, 0)
    -- a skipped block returns its input object itself
    local b = m.blocks[1]
    assert.equal(h, b:forward(h, nil, { skip = true }))
    -- all blocks skipped: stem then head
    local none = m:forward(x, t, lab, { skip = { 1, 2, 3 } })
    assert.allclose(m.head:forward(m.head_norm:forward(m.stem:forward(x))), none, 0, 0)
  end)

  it("is deterministic: same seed same weights and outputs; dropout masks repeat by step", function()
    local a, b = small_resmlp({ dropout = 0.2 }), small_resmlp({ dropout = 0.2 })
    local x = randn({ 3, 12 }, 7)
    local ya, yb = a:forward(x, 3, { 1, 2, 3 }), b:forward(x, 3, { 1, 2, 3 })
    assert.allclose(ya, yb, 0, 0)
    local ya2 = a:forward(x, 3, { 1, 2, 3 })
    assert.is_false(H.close(ya, ya2, 1e-6, 0)) -- the next training step draws a new mask
    -- a row's mask does not depend on the batch: row 2 alone equals row 2 of the batch
    local d1, d2 = nn.Dropout(0.5, { seed = 9 }), nn.Dropout(0.5, { seed = 9 })
    local big = d1:forward(diffuse.ones(4, 10))
    local one = d2:forward(diffuse.ones(1, 10))
    assert.allclose(big:narrow(1, 1, 1), one, 0, 0)
    -- eval mode: dropout is the identity
    a:eval()
    b:eval()
    assert.allclose(a:forward(x, 3, { 1, 2, 3 }), b:forward(x, 3, { 1, 2, 3 }), 0, 0)
    assert.is_false(H.close(small_resmlp({ seed = 4 }):forward(x, 3), small_resmlp():forward(x, 3), 1e-4, 0))
  end)

  it("label dropout replaces about p of the labels by the null class, deterministically", function()
    local e = nn.ClassEmbedding(10, 4, { dropout = 0.25, seed = 1 })
    local labels = diffuse.zeros(4000)
    e:forward(labels)
    local dropped = 0
    for _, v in ipairs(e._labels:totable()) do if v == 10 then dropped = dropped + 1 elseif v ~= 0 then error(v) end end
    assert.is_true(dropped > 880 and dropped < 1120, tostring(dropped))
    local e2 = nn.ClassEmbedding(10, 4, { dropout = 0.25, seed = 1 })
    e2:forward(labels)
    assert.allclose(e._labels, e2._labels, 0, 0)
    e:eval() -- no label dropout in eval mode: every row is class 0's embedding
    local out = e:forward(labels)
    assert.allclose(e.weight.value:narrow(1, 1, 1):add(diffuse.zeros(4000, 4)), out, 0, 0)
  end)

  it("CNN: logits and features shapes, time conditioning changes the output", function()
    local c = nn.CNN { image_size = 12, channels = { 4, 8, 8 }, groups = 2, num_classes = 5, time_cond = true, emb_dim = 8 }
    c:eval()
    local x = randn({ 3, 1, 12, 12 }, 2)
    assert.same({ 3, 5 }, c:forward(x, 1):shape())
    assert.same({ 3, 8 }, c:features(x, 1):shape())
    assert.is_false(H.close(c:forward(x, 1), c:forward(x, 500), 1e-4, 0))
    assert.has_error(function() c:forward(x) end)
    assert.same({ 3, 5 }, c:forward(x:reshape(3, 144), 1):shape())
  end)

  it("tostring lists every layer with shapes and parameter counts, and the total", function()
    local m = small_resmlp()
    local s = tostring(m)
    assert.matches("^ResMLP%(12 %-> 12, width 16, depth 3, emb 8, 4 classes%)", s)
    assert.matches("blocks.2.fc1%s+Linear%(16 %-> 16%)%s+weight%[16x16%] bias%[16%]%s+272", s)
    assert.matches("class_emb%s+ClassEmbedding%(4 %+ null, 8%)", s)
    local total = m:num_parameters()
    local n = 0
    for _, p in ipairs(m:parameters()) do n = n + p.value:numel() end
    assert.equal(n, total)
    assert.matches("total parameters: " .. tostring(total):reverse():gsub("(%d%d%d)", "%1,"):reverse():gsub("^,", ""), s)
    assert.equal("blocks.3.fc2.bias", m:parameters()[#m:parameters() - 4].name)
  end)

  it("Sequential chains modules and rebuilds from its arch", function()
    local s = nn.Sequential { nn.Linear(3, 4, { seed = 1 }), nn.SiLU(), nn.Linear(4, 2, { seed = 2 }) }
    local x = randn({ 5, 3 }, 3)
    local ref = s[3]:forward(nn.SiLU():forward(s[1]:forward(x)))
    assert.allclose(ref, s:forward(x), 0, 0)
    local r = nn.build(s:arch())
    assert.allclose(s:forward(x), r:forward(x), 0, 0)
    assert.equal("1.weight", s:parameters()[1].name)
  end)
end)

describe("nn losses", function()
  it("mse and cross_entropy values", function()
    local loss = nn.mse(diffuse.tensor({ 1, 2, 3 }), diffuse.tensor({ 1, 0, 0 }))
    assert.near(13 / 3, loss, 1e-12)
    local z = diffuse.tensor({ { 1000, 0, -1000 }, { 0, 0, 0 } })
    local ce, g = nn.cross_entropy(z, { 0, 2 })
    assert.near((0 + math.log(3)) / 2, ce, 1e-9)
    assert.near(1 / 6, g:get(2, 1), 1e-7)
    assert.near((1 / 3 - 1) / 2, g:get(2, 3), 1e-7)
    assert.has_error(function() nn.cross_entropy(z, { 0, 3 }) end)
  end)
end)

describe("nn optimisation", function()
  it("AdamW matches a reference computation in Lua for a few steps", function()
    local m = nn.Linear(3, 2, { seed = 1 })
    local params = m:parameters()
    local opt = nn.AdamW(params, { lr = 0.01, betas = { 0.8, 0.95 }, eps = 1e-6, weight_decay = 0.1 })
    local ref, mm, vv = {}, {}, {}
    for i, p in ipairs(params) do
      ref[i] = H.flatten(p.value)
      mm[i], vv[i] = {}, {}
      for j = 1, #ref[i] do mm[i][j], vv[i][j] = 0, 0 end
    end
    for step = 1, 4 do
      m:zero_grad()
      local _, g = nn.mse(m:forward(randn({ 4, 3 }, step)), randn({ 4, 2 }, 10 + step))
      m:backward(g)
      for i, p in ipairs(params) do
        local gr = H.flatten(p.grad)
        for j = 1, #ref[i] do
          local w = ref[i][j] * (1 - 0.01 * 0.1)
          mm[i][j] = 0.8 * mm[i][j] + 0.2 * gr[j]
          vv[i][j] = 0.95 * vv[i][j] + 0.05 * gr[j] ^ 2
          local mh, vh = mm[i][j] / (1 - 0.8 ^ step), vv[i][j] / (1 - 0.95 ^ step)
          ref[i][j] = w - 0.01 * mh / (math.sqrt(vh) + 1e-6)
        end
      end
      opt:step()
      for i, p in ipairs(params) do assert.allclose(ref[i], H.flatten(p.value), 1e-6, 1e-5) end
    end
    assert.equal(4, opt.t)
  end)

  it("clip_grad_norm returns the norm and rescales to max_norm", function()
    local m = nn.Linear(3, 2)
    local ps = m:parameters()
    ps[1].grad:copy_(diffuse.full({ 2, 3 }, 1))
    ps[2].grad:copy_(diffuse.tensor({ 3, 4 }))
    local norm = nn.clip_grad_norm(ps, 2)
    assert.near(math.sqrt(6 + 25), norm, 1e-9)
    local after = 0
    for _, p in ipairs(ps) do after = after + p.grad:mul(p.grad):sum() end
    assert.near(2, math.sqrt(after), 1e-5)
    -- below the threshold: unchanged
    assert.near(2, nn.clip_grad_norm(ps, 10), 1e-5)
    assert.near(4 * 2 / math.sqrt(31), ps[2].grad:get(2), 1e-5)
  end)

  it("EMA averages, copies to a model and swaps", function()
    local m = nn.Linear(2, 1, { seed = 1 })
    local ema = nn.EMA(m, 0.9)
    local w0 = m.weight.value:clone()
    m.weight.value:add_(1)
    ema:update()
    assert.allclose(w0:add(0.1), ema.shadow[1], 1e-6, 0)
    m.weight.value:add_(1)
    ema:update()
    assert.allclose(w0:add(0.1 * 0.9 + 0.2), ema.shadow[1], 1e-6, 0)
    local cur = m.weight.value:clone()
    ema:swap()
    assert.allclose(w0:add(0.29), m.weight.value, 1e-6, 0)
    ema:swap()
    assert.allclose(cur, m.weight.value, 0, 0)
    local other = nn.Linear(2, 1, { seed = 5 })
    ema:copy_to(other)
    assert.allclose(ema.shadow[1], other.weight.value, 0, 0)
  end)

  it("a tiny MLP learns XOR", function()
    local net = nn.Sequential { nn.Linear(2, 16, { seed = 1 }), nn.GELU(), nn.Linear(16, 1, { seed = 2 }) }
    local x = diffuse.tensor({ { 0, 0 }, { 0, 1 }, { 1, 0 }, { 1, 1 } })
    local y = diffuse.tensor({ { 0 }, { 1 }, { 1 }, { 0 } })
    local opt = nn.AdamW(net, { lr = 0.03, weight_decay = 0 })
    local loss
    for _ = 1, 300 do
      net:zero_grad()
      local g
      loss, g = nn.mse(net:forward(x), y)
      net:backward(g)
      opt:step()
    end
    assert.is_true(loss < 1e-3, "final loss " .. loss)
  end)

  it("a tiny classifier fits random labels with cross_entropy", function()
    local net = nn.Sequential { nn.Linear(4, 32, { seed = 3 }), nn.SiLU(), nn.LayerNorm(32), nn.Linear(32, 3, { seed = 4 }) }
    local x = randn({ 24, 4 }, 5)
    local labels = {}
    for i = 1, 24 do labels[i] = i % 3 end
    local opt = nn.AdamW(net, { lr = 0.02 })
    local loss
    for _ = 1, 200 do
      net:zero_grad()
      local g
      loss, g = nn.cross_entropy(net:forward(x), labels)
      net:backward(g)
      nn.clip_grad_norm(net, 5)
      opt:step()
    end
    assert.is_true(loss < 0.05, "final loss " .. loss)
  end)
end)

describe("nn persistence", function()
  it("save/load round trip: F32 exact, F16 close; the file alone rebuilds the model", function()
    local m = small_resmlp({ label_dropout = 0.1 })
    local p = tmpfile()
    assert(nn.save(p, m, { metadata = { steps = 1000, note = "spec" } }))
    local r, md = nn.load(p)
    assert(r, md)
    assert.equal("1000", md.steps)
    assert.is_false(r.training)
    m:eval()
    local x = randn({ 3, 12 }, 1)
    assert.allclose(m:forward(x, 7, { 0, 1, 2 }), r:forward(x, 7, { 0, 1, 2 }), 0, 0)
    assert.equal(tostring(m), tostring(r))
    assert(nn.save(p, m, { dtype = "F16" }))
    local h = assert(nn.load(p))
    assert.allclose(m:forward(x, 7, { 0, 1, 2 }), h:forward(x, 7, { 0, 1, 2 }), 2e-2, 1e-2)
    local c = nn.CNN { image_size = 8, channels = { 4, 4 }, groups = 2, time_cond = true, emb_dim = 4 }
    assert(nn.save(p, c))
    local rc = assert(nn.load(p))
    c:eval()
    local xi = randn({ 2, 1, 8, 8 }, 2)
    assert.allclose(c:forward(xi, 3), rc:forward(xi, 3), 0, 0)
    os.remove(p)
  end)

  it("load returns nil, message for missing, corrupt or mismatched files", function()
    local p = tmpfile()
    local r, err = nn.load(p)
    assert.is_nil(r)
    assert.matches(p, err, 1, true)
    -- a plain safetensors file without the architecture
    assert(diffuse.safetensors.save(p, { w = diffuse.zeros(2) }))
    r, err = nn.load(p)
    assert.is_nil(r)
    assert.matches("diffuse.arch", err, 1, true)
    -- a tensor with the wrong shape
    local m = nn.Linear(3, 2)
    local arch = nn._json.encode(m:arch())
    assert(diffuse.safetensors.save(p, { weight = diffuse.zeros(3, 2), bias = diffuse.zeros(2) }, { ["diffuse.arch"] = arch }))
    r, err = nn.load(p)
    assert.is_nil(r)
    assert.matches("'weight' is [3x2], the model expects [2x3]", err, 1, true)
    -- a missing tensor, an extra tensor
    assert(diffuse.safetensors.save(p, { weight = diffuse.zeros(2, 3) }, { ["diffuse.arch"] = arch }))
    assert.matches("'bias' is missing", select(2, nn.load(p)), 1, true)
    assert(diffuse.safetensors.save(p, { weight = diffuse.zeros(2, 3), bias = diffuse.zeros(2), x = diffuse.zeros(1) },
      { ["diffuse.arch"] = arch }))
    assert.matches("unexpected tensor 'x'", select(2, nn.load(p)), 1, true)
    -- an unknown class, broken JSON
    assert(diffuse.safetensors.save(p, { w = diffuse.zeros(1) }, { ["diffuse.arch"] = '{"class":"Nope","args":[]}' }))
    assert.matches("unknown class 'Nope'", select(2, nn.load(p)), 1, true)
    assert(diffuse.safetensors.save(p, { w = diffuse.zeros(1) }, { ["diffuse.arch"] = '{"class":' }))
    assert.matches("bad diffuse.arch", select(2, nn.load(p)), 1, true)
    -- truncated file
    assert(nn.save(p, m))
    local f = io.open(p, "rb")
    local bytes = f:read("a")
    f:close()
    f = io.open(p, "wb")
    f:write(bytes:sub(1, -3))
    f:close()
    r, err = nn.load(p)
    assert.is_nil(r)
    assert.is_string(err)
    os.remove(p)
  end)

  it("save_state/load_state restore model, AdamW and EMA so training resumes identically", function()
    local function make()
      local m = nn.Linear(3, 2, { seed = 1 })
      return m, nn.AdamW(m, { lr = 0.05 }), nil
    end
    local function step(m, opt, ema, k)
      m:zero_grad()
      local _, g = nn.mse(m:forward(randn({ 4, 3 }, k)), randn({ 4, 2 }, 50 + k))
      m:backward(g)
      opt:step()
      ema:update()
    end
    local m1, o1 = make()
    local e1 = nn.EMA(m1, 0.5)
    for k = 1, 3 do step(m1, o1, e1, k) end
    local p = tmpfile()
    assert(nn.save_state(p, { model = m1, optimizer = o1, ema = e1, metadata = { step = 3 } }))
    for k = 4, 5 do step(m1, o1, e1, k) end
    local m2, o2 = make()
    local e2 = nn.EMA(m2, 0.5)
    local md = assert(nn.load_state(p, { model = m2, optimizer = o2, ema = e2 }))
    assert.equal("3", md.step)
    assert.equal(3, o2.t)
    for k = 4, 5 do step(m2, o2, e2, k) end
    assert.allclose(m1.weight.value, m2.weight.value, 0, 0)
    assert.allclose(e1.shadow[1], e2.shadow[1], 0, 0)
    -- a different architecture is refused
    local r, err = nn.load_state(p, { model = nn.Linear(3, 3) })
    assert.is_nil(r)
    assert.matches("architecture", err)
    os.remove(p)
  end)

  it("JSON encoding of architectures round-trips", function()
    local a = { class = "X", args = { 1, 2.5, "a\"b\n", true, { k = { 1, 2 } }, {} } }
    local back = nn._json.decode(nn._json.encode(a))
    assert.same(a, back)
  end)
end)

describe("nn.as_model", function()
  it("feeds point.timestep when present, else point.t; passes cond and skip; samples", function()
    local net = small_resmlp({ in_dim = 4 })
    local seen = {}
    local model = nn.as_model(net, { predicts = "eps" })
    assert.is_false(net.training)
    local orig = net.forward
    net.forward = function(self, x, t, labels, opts)
      seen.t, seen.labels, seen.skip = t, labels, opts and opts.skip
      return orig(self, x, t, labels, opts)
    end
    local x = randn({ 2, 4 }, 1)
    model(x, { t = 0.3, alpha = 0.9, sigma = 0.4 }, { 1, 2 }, { skip = { 2 } })
    assert.equal(0.3, seen.t)
    assert.same({ 1, 2 }, seen.labels)
    assert.same({ 2 }, seen.skip)
    model(x, { t = 0.3, timestep = 299, alpha = 0.9, sigma = 0.4 }, nil)
    assert.equal(299, seen.t)
    net.forward = orig
    local s = diffuse.schedule.vp_linear()
    local out = diffuse.sample { model = model, schedule = s, solver = "ddim", steps = 3, shape = { 2, 4 }, seed = 1, cond = { 0, 3 } }
    assert.same({ 2, 4 }, out:shape())
    -- the static skip option (a function of the point)
    local m2 = nn.as_model(net, { skip = function(p) return p.t > 0.5 and { 1 } or nil end })
    assert.allclose(net:forward(x, 0.9, nil, { skip = { 1 } }), m2(x, { t = 0.9 }, nil), 0, 0)
  end)
end)
