-- Sample quality of the shipped Fashion-MNIST denoiser: Fréchet distance in the shipped
-- classifier's feature space (against the test set, with the floor: FD between two halves of
-- the test set) and class accuracy, for DDIM, DPM-Solver++(2M), UniPC (bh2) and Heun at
-- NFE = 4, 5, 6, 8, 10, 15, 20, 50; then FD at 50 NFE on 10000 samples, and class accuracy with
-- classifier-free guidance at scale 3.  Writes a Markdown table and a PNG plot (gnuplot).
--
--   lua5.4 scripts/fashion_quality.lua [samples_per_point = 2000] [samples_at_50 = 10000] [out_dir = build/quality]
local diffuse = require("diffuse")
local metrics = diffuse.metrics

local n = tonumber(arg and arg[1]) or 2000
local big = tonumber(arg and arg[2]) or 10000
local out_dir = arg and arg[3] or "build/quality"
os.execute("mkdir -p '" .. out_dir .. "'")

local model, info = assert(diffuse.models.load("fashion-denoiser"))
local schedule = info.schedule
local fr = assert(metrics.fashion_reference())
local classifier, test, features, ref = fr.classifier, fr.test, fr.features, fr.reference
local floor = metrics.floor(features, test.images, { seed = 1 })
print(("FD floor (two halves of the test set): %.3f"):format(floor))

-- n class-balanced labels 0..9.
local function labels_for(count)
  local out = {}
  for i = 1, count do out[i] = (i - 1) % 10 end
  return out
end

local function evaluate(x, labels)
  local fd = metrics.frechet_distance(metrics.stats(features(x)), ref)
  local logits = classifier:forward(x:view(#x, 1, 28, 28))
  local acc = metrics.class_accuracy(logits, labels)
  return fd, acc
end

-- Samples with exactly `nfe` evaluations (or the largest run below it for Heun).
local function generate(solver, opts, nfe, count, seed, m)
  local labels = labels_for(count)
  local cond = diffuse.tensor(labels)
  for steps = nfe, 1, -1 do
    local o = { model = m or model, schedule = schedule, solver = solver, steps = steps, shape = { count, 784 },
      seed = seed, cond = cond }
    for k, v in pairs(opts) do o[k] = v end
    local st = diffuse.sampler.new(o)
    if solver ~= "heun" or 2 * steps - 1 <= nfe then
      local x = st:run()
      return x:clamp(-1, 1), labels, st.nfe, steps
    end
  end
end

local solvers = {
  { "DDIM", "ddim", {} },
  { "DPM-Solver++(2M)", "dpmsolver++", { method = "multistep", order = 2 } },
  { "UniPC (bh2)", "unipc", { variant = "bh2", order = 2 } },
  { "Heun", "heun", {} },
}
local nfes = { 4, 5, 6, 8, 10, 15, 20, 50 }
local rows = {}
local t0 = diffuse.wtime()
local bar = diffuse.progress.new{ total = #solvers * #nfes, label = "quality", unit = "runs" }
local done = 0
for _, s in ipairs(solvers) do
  rows[s[1]] = {}
  for _, k in ipairs(nfes) do
    local x, labels, used = generate(s[2], s[3], k, n, 1)
    local fd, acc = evaluate(x, labels)
    rows[s[1]][k] = { fd = fd, acc = acc, nfe = used }
    done = done + 1
    bar:update(done, { [s[1]] = k })
  end
end
bar:finish()

local md = {}
md[#md + 1] = ("FD against the test set (%d samples per entry, 10 classes balanced, seed 1), classifier feature space; floor %.3f."):format(n, floor)
md[#md + 1] = ""
local head = { "| solver |" }
local sep = { "| --- |" }
for _, k in ipairs(nfes) do head[#head + 1] = (" NFE %d |"):format(k); sep[#sep + 1] = " --- |" end
md[#md + 1] = table.concat(head)
md[#md + 1] = table.concat(sep)
for _, s in ipairs(solvers) do
  local line = { ("| %s |"):format(s[1]) }
  for _, k in ipairs(nfes) do
    local r = rows[s[1]][k]
    line[#line + 1] = r.nfe == k and (" %.2f |"):format(r.fd) or (" %.2f (%d) |"):format(r.fd, r.nfe)
  end
  md[#md + 1] = table.concat(line)
end
md[#md + 1] = ""
md[#md + 1] = "Class accuracy of the same samples (unguided):"
md[#md + 1] = ""
md[#md + 1] = table.concat(head)
md[#md + 1] = table.concat(sep)
for _, s in ipairs(solvers) do
  local line = { ("| %s |"):format(s[1]) }
  for _, k in ipairs(nfes) do line[#line + 1] = (" %.1f%% |"):format(100 * rows[s[1]][k].acc) end
  md[#md + 1] = table.concat(line)
end

-- FD at 50 NFE on 10000 samples, DPM-Solver++(2M).
local xb, lb = generate("dpmsolver++", { method = "multistep", order = 2 }, 50, big, 2)
local fd50, acc50 = evaluate(xb, lb)

-- Classifier-free guidance at scale 3 (eps-space combination; the guided model costs 2 NFE per
-- step): out = out_uncond + 3 (out_cond - out_uncond), with the null class for out_uncond.
local function cfg(scale)
  return setmetatable({ predicts = model.predicts }, { __call = function(_, x, p, cond)
    local c = model(x, p, cond)
    local u = model(x, p, nil)
    return diffuse.lincomb({ u, c }, { 1 - scale, scale })
  end })
end
local xg, lg = generate("dpmsolver++", { method = "multistep", order = 2 }, 10, n, 3, cfg(3))
local _, accg = evaluate(xg, lg)
local xu, lu = generate("dpmsolver++", { method = "multistep", order = 2 }, 10, n, 3)
local fdu, accu = evaluate(xu, lu)

md[#md + 1] = ""
md[#md + 1] = ("DPM-Solver++(2M), 50 NFE, %d samples: FD %.3f (floor %.3f), class accuracy %.1f%%."):format(big, fd50,
  floor, 100 * acc50)
md[#md + 1] = ("DPM-Solver++(2M), 10 steps, %d samples: unguided class accuracy %.1f%% (FD %.2f); classifier-free guidance scale 3: %.1f%%."):format(
  n, 100 * accu, fdu, 100 * accg)
md[#md + 1] = ("(measured in %.0f s by `lua5.4 scripts/fashion_quality.lua %d %d`)"):format(diffuse.wtime() - t0, n, big)
local text = table.concat(md, "\n") .. "\n"
local f = assert(io.open(out_dir .. "/quality.md", "w"))
f:write(text)
f:close()
io.write(text)

-- The plot: FD against NFE, one line per solver (gnuplot, when installed).
local dat = out_dir .. "/quality.dat"
f = assert(io.open(dat, "w"))
for i, s in ipairs(solvers) do
  f:write(("# %s\n"):format(s[1]))
  for _, k in ipairs(nfes) do f:write(("%d %.6f\n"):format(rows[s[1]][k].nfe, rows[s[1]][k].fd)) end
  f:write(i < #solvers and "\n\n" or "\n")
end
f:close()
if os.execute("command -v gnuplot > /dev/null 2>&1") then
  local plots = {}
  for i, s in ipairs(solvers) do
    plots[#plots + 1] = ("'%s' index %d with linespoints title '%s'"):format(dat, i - 1, s[1])
  end
  local script = table.concat({
    "set terminal pngcairo size 800,500 noenhanced",
    ("set output '%s/quality.png'"):format(out_dir),
    "set logscale xy", "set xlabel 'NFE'", "set ylabel 'FD (classifier features)'",
    "set xtics (4, 5, 6, 8, 10, 15, 20, 50)", "set grid",
    ("set title 'fashion-denoiser: FD against NFE (floor %.2f)'"):format(floor),
    "plot " .. table.concat(plots, ", "),
  }, "\n")
  local gp = io.popen("gnuplot", "w")
  gp:write(script)
  gp:close()
  print("wrote " .. out_dir .. "/quality.png")
else
  print("gnuplot not found: install it (sudo apt-get install gnuplot-nox) for the plot; the table is in " .. out_dir)
end
