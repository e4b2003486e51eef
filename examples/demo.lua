-- Demo: a class-conditional grid from the shipped Fashion-MNIST denoiser (10 classes x 8
-- samples, DPM-Solver++(2M) at 10 NFE), written as a PNG, with the Fréchet distance and the
-- class accuracy of a few thousand samples measured by the shipped classifier.
-- Run from the repository root with `make demo`.
local diffuse = require("diffuse")

local out_dir = "build/demo"
assert(os.execute("mkdir -p '" .. out_dir .. "'"), "cannot create " .. out_dir)

local model, info = diffuse.models.load("fashion-denoiser")
if not model then
  -- Without the shipped weights (a checkout without models/): show the data instead.
  io.stderr:write("demo: ", info, "\n")
  local d = assert(diffuse.data.fashion_mnist { split = "test", limit = 64 })
  local path = out_dir .. "/fashion_mnist_grid.png"
  assert(diffuse.image.write_grid(path, d.images, { nrow = 8 }))
  print(("wrote %s: 64 Fashion-MNIST test images (no shipped denoiser found)"):format(path))
  return
end
local classifier = assert(diffuse.models.load("fashion-classifier"))
local classes = diffuse.data.fashion_mnist_classes()

local function sample(labels, seed)
  local t0 = diffuse.wtime()
  local x, run = diffuse.sample{
    model = model, schedule = info.schedule, solver = "dpmsolver++", method = "multistep", order = 2,
    steps = 10, shape = { #labels, 784 }, seed = seed, cond = diffuse.tensor(labels),
  }
  return x:clamp(-1, 1):view(#labels, 1, 28, 28), run.nfe, diffuse.wtime() - t0
end

-- The grid: row c holds 8 samples of class c.
local grid_labels = {}
for c = 0, 9 do for _ = 1, 8 do grid_labels[#grid_labels + 1] = c end end
local grid, nfe, secs = sample(grid_labels, 1)
local path = out_dir .. "/fashion_samples.png"
assert(diffuse.image.write_grid(path, grid, { nrow = 8 }))
print(("wrote %s: 80 samples (rows: %s), DPM-Solver++(2M), %d NFE, %.1f s"):format(path,
  table.concat(classes, ", "), nfe, secs))

-- Quality on a few thousand class-balanced samples.
local n = 2000
local labels = {}
for i = 1, n do labels[i] = (i - 1) % 10 end
local x, _, secs2 = sample(labels, 2)
local metrics = diffuse.metrics
local fd = assert(metrics.fashion_reference()).fd(x)
local acc = metrics.class_accuracy(classifier:forward(x), labels)
print(("%d samples in %.1f s: FD %.2f against the test set (classifier features), class accuracy %.1f%%"):format(
  n, secs2, fd, 100 * acc))
