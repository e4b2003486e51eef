-- Retrains a shipped model from Fashion-MNIST (/usr/share/datasets/fashion-mnist).
--
--   lua5.4 models/train.lua classifier  [steps]   -> models/fashion-classifier.safetensors
--   lua5.4 models/train.lua tclassifier [steps]   -> models/fashion-tclassifier.safetensors
--   lua5.4 models/train.lua denoiser    [steps]   -> models/fashion-denoiser.safetensors
--   lua5.4 models/train.lua denoiser-small [steps] -> models/fashion-denoiser-small.safetensors
--
-- (from the repository root, with LUA_PATH / LUA_CPATH pointing at lua/ and build/ as
-- `make` sets them, or with the rock installed).  Runs are deterministic for the seed below;
-- a checkpoint in build/checkpoints/ lets an interrupted run (Ctrl-C) resume where it stopped.
local diffuse = require("diffuse")
local nn, train = diffuse.nn, diffuse.train

local what = arg[1]
local steps = tonumber(arg[2])
local out_dir = os.getenv("DIFFUSE_MODELS_OUT") or "models"
os.execute("mkdir -p build/checkpoints '" .. out_dir .. "'")

local data = assert(diffuse.data.fashion_mnist{ split = "train" })
local test = assert(diffuse.data.fashion_mnist{ split = "test" })
-- Both classifiers and the denoiser are trained under the same schedule the demo samples with.
local schedule = diffuse.schedule.vp_cosine()

-- Classifiers are small and stored in float32 (float16 rounding costs them accuracy); the
-- denoiser is stored in float16 to keep the shipped files small.
local function finish(net, report, name, extra, dtype)
  if report.ema then report.ema:copy_to(net) end
  net:eval()
  local md = { ["train.steps"] = tostring(report.steps), ["train.data"] = "fashion-mnist train (60000)" }
  for k, v in pairs(extra or {}) do md[k] = tostring(v) end
  local path = ("%s/%s.safetensors"):format(out_dir, name)
  assert(nn.save(path, net, { dtype = dtype or "F32", metadata = md }))
  print(("wrote %s (%d parameters, %d steps%s)"):format(path, net:num_parameters(), report.steps,
    report.stopped and ", stopped by Ctrl-C" or ""))
  return path
end

local t0 = diffuse.wtime()
if what == "classifier" then
  local net = nn.CNN{ in_channels = 1, image_size = 28, channels = { 32, 64, 128 }, num_classes = 10, seed = 1 }
  local r = train.classifier{ net = net, images = data.images, labels = data.labels, steps = steps or 8000,
    batch = 128, lr = 2e-3, warmup = 100, decay = "cosine", weight_decay = 0.01, seed = 1, ema = 0.999,
    augment = function(x, step) return train.random_flip(x, 11, step) end,
    checkpoint = "build/checkpoints/fashion-classifier.ckpt", checkpoint_every = 500, label = "classifier" }
  if r.ema then r.ema:copy_to(net) end
  print(("phase 1: test accuracy %.4f (%.0f s)"):format(train.accuracy(net, test.images, test.labels),
    diffuse.wtime() - t0))
  -- Phase 2: a short low learning-rate pass from the phase-1 (EMA) weights.
  local r2 = train.classifier{ net = net, images = data.images, labels = data.labels, steps = 3000,
    batch = 128, lr = 3e-4, decay = "cosine", weight_decay = 0.01, seed = 12, ema = 0.999,
    augment = function(x, step) return train.random_flip(x, 13, step) end,
    checkpoint = "build/checkpoints/fashion-classifier-2.ckpt", checkpoint_every = 500, label = "classifier-2" }
  if r2.ema then r2.ema:copy_to(net) end
  local acc = train.accuracy(net, test.images, test.labels)
  print(("test accuracy %.4f (%.0f s)"):format(acc, diffuse.wtime() - t0))
  r.steps = r.steps + r2.steps
  finish(net, r, "fashion-classifier", { ["eval.test_accuracy"] = ("%.4f"):format(acc),
    ["train.recipe"] = "8000 steps lr 2e-3 cosine + 3000 steps lr 3e-4 cosine, batch 128, random flips, EMA 0.999" })
elseif what == "tclassifier" then
  local net = nn.CNN{ in_channels = 1, image_size = 28, channels = { 32, 64, 128 }, num_classes = 10,
    time_cond = true, time_scale = 1000, seed = 2 }
  local r = train.classifier{ net = net, images = data.images, labels = data.labels, schedule = schedule,
    steps = steps or 4000, batch = 128, lr = 2e-3, warmup = 100, decay = "cosine", weight_decay = 0.01, seed = 2,
    ema = 0.999, checkpoint = "build/checkpoints/fashion-tclassifier.ckpt", checkpoint_every = 500,
    label = "tclassifier" }
  if r.ema then r.ema:copy_to(net) end
  -- accuracy on noised test images at a few noise levels
  local accs = {}
  for _, t in ipairs({ 0.1, 0.5, 0.8 }) do
    local a, s = schedule:alpha(t), schedule:sigma(t)
    local xt = diffuse.lincomb({ test.images, diffuse.randn(test.images:shape(), { seed = 9 }) }, { a, s })
    accs[#accs + 1] = ("t=%.1f: %.4f"):format(t, train.accuracy(net, xt, test.labels, { t = t }))
  end
  print("test accuracy on x_t: " .. table.concat(accs, ", "))
  finish(net, r, "fashion-tclassifier", { ["eval.test_accuracy_xt"] = table.concat(accs, ", "),
    ["train.schedule"] = tostring(schedule) })
elseif what == "denoiser" then
  local net = nn.ResMLP{ in_dim = 784, width = 768, depth = 6, emb_dim = 256, num_classes = 10, out_dim = 784,
    label_dropout = 0.1, time_scale = 1000, seed = 3 }
  print(net)
  local r = train.denoiser{ net = net, images = data.images, labels = data.labels, schedule = schedule,
    objective = "v", steps = steps or 10000, batch = 256, lr = 1e-3, warmup = 500, decay = "cosine",
    lr_min = 1e-5, clip = 1.0, ema = 0.999, seed = 3, checkpoint = "build/checkpoints/fashion-denoiser.ckpt",
    checkpoint_every = 500, label = "denoiser" }
  if r.ema then r.ema:copy_to(net) end
  -- Phase 2: 10000 more steps from the phase-1 (EMA) weights at a lower learning rate.
  local r2 = train.denoiser{ net = net, images = data.images, labels = data.labels, schedule = schedule,
    objective = "v", steps = 10000, batch = 256, lr = 3e-4, warmup = 0, decay = "cosine", lr_min = 1e-5,
    clip = 1.0, ema = 0.999, seed = 31, checkpoint = "build/checkpoints/fashion-denoiser-2.ckpt",
    checkpoint_every = 500, label = "denoiser-2" }
  r.steps, r.ema, r.history = r.steps + r2.steps, r2.ema, r2.history
  print(("final loss %.5f (%.0f s)"):format(r.history[#r.history] and r.history[#r.history].loss or 0 / 0,
    diffuse.wtime() - t0))
  finish(net, r, "fashion-denoiser", { ["train.objective"] = "v", ["train.schedule"] = tostring(schedule),
    ["train.label_dropout"] = "0.1", ["train.final_loss"] = r.history[#r.history] and r.history[#r.history].loss }, "F16")
elseif what == "denoiser-small" then
  -- The deliberately weaker denoiser for autoguidance (Karras et al. 2024): the same data,
  -- objective, schedule and label dropout as fashion-denoiser, but a third of the width, half
  -- the depth and a fifth of the training, so its errors are the main model's, only larger.
  local net = nn.ResMLP{ in_dim = 784, width = 256, depth = 3, emb_dim = 128, num_classes = 10, out_dim = 784,
    label_dropout = 0.1, time_scale = 1000, seed = 5 }
  print(net)
  local r = train.denoiser{ net = net, images = data.images, labels = data.labels, schedule = schedule,
    objective = "v", steps = steps or 4000, batch = 256, lr = 1e-3, warmup = 200, decay = "cosine",
    lr_min = 1e-5, clip = 1.0, ema = 0.999, seed = 5, checkpoint = "build/checkpoints/fashion-denoiser-small.ckpt",
    checkpoint_every = 500, label = "denoiser-small" }
  print(("final loss %.5f (%.0f s)"):format(r.history[#r.history] and r.history[#r.history].loss or 0 / 0,
    diffuse.wtime() - t0))
  finish(net, r, "fashion-denoiser-small", { ["train.objective"] = "v", ["train.schedule"] = tostring(schedule),
    ["train.label_dropout"] = "0.1", ["train.final_loss"] = r.history[#r.history] and r.history[#r.history].loss,
    ["train.recipe"] = "4000 steps batch 256, AdamW lr 1e-3 (200 warm-up, cosine to 1e-5), clip 1.0, EMA 0.999, seed 5" },
    "F16")
else
  io.stderr:write("usage: lua5.4 models/train.lua classifier|tclassifier|denoiser|denoiser-small [steps]\n")
  os.exit(2)
end
