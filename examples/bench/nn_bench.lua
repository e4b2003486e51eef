-- diffuse.nn speed: the ResMLP denoiser's forward FLOP rate against the sgemm rate measured in
-- the same run (target: at least 0.7x), and training throughput (forward + backward + AdamW)
-- for the ResMLP and the CNN classifier.  Run with `make bench` or
--   LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='build/?.so;;' lua5.4 examples/bench/nn_bench.lua
local diffuse = require("diffuse")
local nn = diffuse.nn

local timer = diffuse.wtime

-- Best time of `reps` runs of f, after one warm-up.
local function best(f, reps)
  f()
  local b = math.huge
  for _ = 1, reps do
    local t0 = timer()
    f()
    b = math.min(b, timer() - t0)
  end
  return b
end

-- The shipped fashion-denoiser's architecture (models/train.lua); `lua5.4 nn_bench.lua 1024`
-- measures another width.
local N, W, DEPTH, EMB = 256, tonumber(arg and arg[1]) or 768, 6, 256
local info = diffuse.blas_info()
print(("diffuse.nn bench: OpenBLAS core %s, %d threads"):format(info.core, info.threads))

-- sgemm reference: the ResMLP's main product shape, (N, W) x (W, W)^T.
local a, b = diffuse.randn({ N, W }, { seed = 1 }), diffuse.randn({ W, W }, { seed = 2 })
local c = diffuse.zeros(N, W)
local net = nn.ResMLP { in_dim = 784, width = W, depth = DEPTH, emb_dim = EMB, num_classes = 10, out_dim = 784 }
print(("ResMLP: %s parameters"):format(net:num_parameters()))
-- FLOPs: 2 N in out per Linear (stem, time MLP, per block fc1, fc2 and the FiLM projection, head).
local flops = 0
for _, e in ipairs(net:named_modules()) do
  local m = e.module
  if m.in_features then flops = flops + 2 * N * m.in_features * m.out_features end
end
local x = diffuse.randn({ N, 784 }, { seed = 3 })
local t = diffuse.rand({ N }, { seed = 4 }):mul(999)
local labels = {}
for i = 1, N do labels[i] = (i - 1) % 10 end
labels = diffuse.tensor(labels)
net:eval()
-- The machine may be shared: measure sgemm and forward in alternating rounds and keep the
-- best of each, so both see the same conditions.
local gemm_once = function()
  for _ = 1, 4 do diffuse.matmul(a, b, { transb = true, out = c }) end
end
local t_gemm, t_fwd = math.huge, math.huge
for _ = 1, 3 do
  t_gemm = math.min(t_gemm, best(gemm_once, 3) / 4)
  t_fwd = math.min(t_fwd, best(function() net:forward(x, t, labels) end, 3))
end
local gemm_rate = 2 * N * W * W / t_gemm / 1e9
print(("sgemm %dx%dx%d: %.2f ms, %.1f GFLOP/s"):format(N, W, W, t_gemm * 1e3, gemm_rate))
local fwd_rate = flops / t_fwd / 1e9
print(("ResMLP forward, batch %d: %.2f ms, %.2f GFLOP, %.1f GFLOP/s = %.2fx sgemm (target >= 0.7x)"):format(
  N, t_fwd * 1e3, flops / 1e9, fwd_rate, fwd_rate / gemm_rate))
local t_skip = best(function() net:forward(x, t, labels, { skip = { 2, 3, 4 } }) end, 3)
print(("ResMLP forward with 3 of %d blocks skipped: %.2f ms"):format(DEPTH, t_skip * 1e3))

-- training step: forward, mse, backward (no input gradient), clip, AdamW
net:train()
local params = net:parameters()
local opt = nn.AdamW(params, { lr = 1e-4 })
local target = diffuse.randn({ N, 784 }, { seed = 5 })
local function train_step()
  net:zero_grad()
  local y = net:forward(x, t, labels)
  local _, g = nn.mse(y, target)
  net:backward(g, { input_grad = false })
  nn.clip_grad_norm(params, 1.0)
  opt:step()
end
local t_train = best(train_step, 3)
print(("ResMLP train step, batch %d: %.1f ms, %.0f images/s (fwd+bwd+AdamW)"):format(N, t_train * 1e3, N / t_train))

-- CNN classifier on 28x28
local NB = 128
local cnn = nn.CNN { channels = { 32, 64, 128 }, num_classes = 10 }
print(("CNN: %s parameters"):format(cnn:num_parameters()))
local xi = diffuse.randn({ NB, 1, 28, 28 }, { seed = 6 })
local yl = {}
for i = 1, NB do yl[i] = (i - 1) % 10 end
cnn:eval()
local t_cf = best(function() cnn:forward(xi) end, 3)
print(("CNN forward, batch %d: %.1f ms, %.0f images/s"):format(NB, t_cf * 1e3, NB / t_cf))
cnn:train()
local copt = nn.AdamW(cnn, { lr = 1e-3 })
local function cnn_step()
  cnn:zero_grad()
  local z = cnn:forward(xi)
  local _, g = nn.cross_entropy(z, yl)
  cnn:backward(g, { input_grad = false })
  copt:step()
end
local t_ct = best(cnn_step, 3)
print(("CNN train step, batch %d: %.1f ms, %.0f images/s (fwd+bwd+AdamW)"):format(NB, t_ct * 1e3, NB / t_ct))
