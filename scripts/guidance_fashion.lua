-- Guidance methods on the shipped Fashion-MNIST denoiser: class accuracy (shipped classifier),
-- Fréchet distance in the classifier's feature space against the test set, and network
-- evaluations per sample, for every method at 10 and 20 steps of DPM++(2M) (k-diffusion's, on the
-- Karras grid) over a sweep
-- of guidance scales.  Writes a Markdown table, results.json and a PNG plot (FD against class
-- accuracy; gnuplot).
--
--   lua5.4 scripts/guidance_fashion.lua [n = 1000] [out_dir = build/guidance] [only = all]
--
-- `only` is a list of method names separated by ';': only those rows are run, and the other rows
-- are kept from an earlier results.json in out_dir (so methods added later are measured
-- without re-running the rest); only = "none" redraws the table and the plot from it.  Methods are the `methods` list below: each entry is a name, a
-- list of scales and make(env, scale, steps) -> a model for diffuse.sample (a guidance object,
-- or the base model for the unguided row); env holds the denoiser, its schedule and the shipped
-- classifiers.  Classifier guidance and autoguidance plug in as further entries.
local diffuse = require("diffuse")
local metrics = diffuse.metrics
local G = diffuse.guidance
local json = require("diffuse.json")

local n = tonumber(arg and arg[1]) or 1000
local out_dir = arg and arg[2] or "build/guidance"
local only = arg and arg[3]
os.execute("mkdir -p '" .. out_dir .. "'")

local model, info = assert(diffuse.models.load("fashion-denoiser"))
local schedule = info.schedule
local fr = assert(metrics.fashion_reference())
local classifier, test, features, ref = fr.classifier, fr.test, fr.features, fr.reference

local SOLVER = "dpmpp_2m"
local STEPS = { 10, 20 }
local SEED = 1          -- the measured samples
local FIT_SEED = 1000   -- LinearAG's fitting runs (other noise)
local FIT_N = 200

local function balanced(count)
  local l = {}
  for i = 1, count do l[i] = (i - 1) % 10 end
  return diffuse.tensor(l)
end

local env = { model = model, schedule = schedule, classifier = classifier, solver = SOLVER,
  tclassifier = diffuse.models.load("fashion-tclassifier") }

-- LinearAG coefficients per (steps, scale), fitted on FIT_N samples of other noise.
local fits = {}
local function linear_fit(scale, steps)
  local key = steps .. "/" .. scale
  if not fits[key] then
    fits[key] = G.linear_ag_fit{ model = model, scale = scale, runs = 1, run = { solver = SOLVER, steps = steps,
      shape = { FIT_N, 784 }, seed = FIT_SEED, cond = balanced(FIT_N) } }
  end
  return fits[key]
end

local INTERVAL = { 0.2, 7 } -- sigma_hat band: 4 of the 10 steps (6.8, 2.65, 0.89, 0.245), 8 of the 20

local methods = {
  { name = "conditional", scales = { 1 }, make = function(e) return e.model end },
  { name = "CFG", scales = { 1.5, 2, 3, 5 }, make = function(e, s) return G.cfg{ model = e.model, scale = s } end },
  { name = "CFG interval (0.2, 7]", scales = { 2, 3, 5, 8 },
    make = function(e, s) return G.cfg{ model = e.model, scale = s, interval = INTERVAL } end },
  -- guidance at high noise only: the best of five bands tried at 10 steps, 1000 samples, on the
  -- measured seed (docs/guidance.md)
  { name = "CFG interval (1, inf]", scales = { 2, 3, 5 },
    make = function(e, s) return G.cfg{ model = e.model, scale = s, interval = { 1, math.huge } } end },
  { name = "CFG rescale 0.7", scales = { 2, 3, 5 },
    make = function(e, s) return G.cfg{ model = e.model, scale = s, rescale = 0.7, space = "x0" } end },
  { name = "AG 0.99", scales = { 1.5, 2, 3, 5 }, make = function(e, s) return G.ag{ model = e.model, scale = s, gamma = 0.99 } end },
  { name = "AG 0.98", scales = { 2, 3, 5 }, make = function(e, s) return G.ag{ model = e.model, scale = s, gamma = 0.98 } end },
  { name = "AG 0.995", scales = { 2, 3, 5 }, make = function(e, s) return G.ag{ model = e.model, scale = s, gamma = 0.995 } end },
  { name = "LinearAG", scales = { 2, 3, 5 },
    make = function(e, s, steps) return G.linear_ag{ model = e.model, scale = s, fit = linear_fit(s, steps) } end },
  { name = "CADS (0.6, 0.9, s 0.25)", scales = { 2, 3, 5 },
    make = function(e, s) return G.cads{ model = e.model, scale = s, tau1 = 0.6, tau2 = 0.9, noise_scale = 0.25, psi = 1 } end },
  { name = "CADS (0.9, 0.99, s 0.1)", scales = { 2, 3, 5 },
    make = function(e, s) return G.cads{ model = e.model, scale = s, tau1 = 0.9, tau2 = 0.99, noise_scale = 0.1, psi = 1 } end },
}

-- Classifier guidance and autoguidance (lua/diffuse/guidance/classifier.lua, auto.lua), at the
-- settings docs/guidance-classifier.md found useful (1000-sample exploration there): EluCD with
-- the exact gradient through the denoiser and clipped x0, GFCG clipped, autoguidance at small
-- scales (the shipped weak model is much weaker than the main one).  Measure only these rows with
--   lua5.4 scripts/guidance_fashion.lua 2000 build/guidance "classifier;EluCD;GFCG;autoguidance"
local have = {}
for _, name in ipairs(G.methods()) do have[name] = true end
if have.classifier then
  methods[#methods + 1] = { name = "classifier", scales = { 2, 8 },
    make = function(e, s) return G.classifier{ model = e.model, classifier = e.tclassifier, scale = s, conditional = true } end }
end
if have.elucd then
  methods[#methods + 1] = { name = "EluCD", scales = { 1, 2 },
    make = function(e, s) return G.elucd{ model = e.model, classifier = e.classifier, scale = s, through = "denoiser",
      clip = { -1, 1 } } end }
end
if have.gfcg then
  methods[#methods + 1] = { name = "GFCG", scales = { 2, 8 },
    make = function(e, s) return G.gfcg{ model = e.model, classifier = e.classifier, scale = s, clip = { -1, 1 } } end }
end
if have.auto then
  local small = diffuse.models.load("fashion-denoiser-small")
  if small then
    methods[#methods + 1] = { name = "autoguidance", scales = { 1.25, 1.5 },
      make = function(e, s) return G.auto{ model = e.model, guide = small, scale = s } end }
  end
end

local selected
if only == "none" then
  selected = {} -- no runs: the table and the plot are redrawn from results.json
elseif only and only ~= "" and only ~= "all" then
  selected = {}
  local known = {}
  for _, m in ipairs(methods) do known[m.name] = true end
  for name in only:gmatch("[^;]+") do
    if not known[name] then
      local names = {}
      for _, m in ipairs(methods) do names[#names + 1] = m.name end
      error(("unknown method '%s' (methods: %s)"):format(name, table.concat(names, "; ")))
    end
    selected[name] = true
  end
end

-- Earlier results (kept for the rows not run now).
local results = {}
do
  local f = io.open(out_dir .. "/results.json")
  if f then
    local ok, r = pcall(json.decode, f:read("a"))
    f:close()
    if ok and type(r) == "table" and r.n == n then results = r.rows or {} end
  end
end

local function evaluate(x, labels)
  local fd = metrics.frechet_distance(metrics.stats(features(x)), ref)
  local acc = metrics.class_accuracy(classifier:forward(x:view(#x, 1, 28, 28)), labels)
  return fd, acc
end

local function generate(m, steps)
  local cond = balanced(n)
  local out = diffuse.zeros(n, 784)
  local batch = 500
  for first = 1, n, batch do
    local count = math.min(batch, n - first + 1)
    local x = diffuse.sample{ model = m, schedule = schedule, solver = SOLVER, steps = steps, shape = { count, 784 },
      seed = SEED, offset = first - 1, cond = cond:narrow(1, first, count) }
    out:narrow(1, first, count):copy_(x)
  end
  return out:clamp(-1, 1), cond:totable()
end

local jobs = {}
for _, m in ipairs(methods) do
  if not selected or selected[m.name] then
    for _, steps in ipairs(STEPS) do
      for _, s in ipairs(m.scales) do jobs[#jobs + 1] = { m = m, steps = steps, scale = s } end
    end
  end
end
local function key(name, steps, scale) return ("%s|%d|%g"):format(name, steps, scale) end

-- atomic: never a half-written file (diffuse.util.write_file)
local function write(path, text) assert(require("diffuse.util").write_file(path, text)) end
local function save()
  write(out_dir .. "/results.json", json.encode({ n = n, solver = SOLVER, seed = SEED, rows = results }) .. "\n")
end

local t0 = diffuse.wtime()
local bar = #jobs > 0 and diffuse.progress.new{ total = #jobs, label = "guidance", unit = "runs" }
for i, j in ipairs(jobs) do
  local g = j.m.make(env, j.scale, j.steps)
  local ts = diffuse.wtime()
  local x, labels = generate(g, j.steps)
  local fd, acc = evaluate(x, labels)
  local per = (type(g) == "table" and g.stats) and g:stats().per_sample or j.steps
  results[key(j.m.name, j.steps, j.scale)] = { method = j.m.name, steps = j.steps, scale = j.scale, fd = fd, acc = acc,
    nfe = per, seconds = diffuse.wtime() - ts }
  save() -- after every run: an interrupted sweep keeps what it measured
  bar:update(i, { [j.m.name] = j.scale })
end
if bar then bar:finish() end
local seconds = diffuse.wtime() - t0


-- Rows in the order of the methods list (then any other method found in results.json).
local names, seen = {}, {}
for _, m in ipairs(methods) do names[#names + 1] = m.name; seen[m.name] = true end
local extra = {}
for _, r in pairs(results) do if not seen[r.method] then extra[r.method] = true end end
local ex = {}
for nm in pairs(extra) do ex[#ex + 1] = nm end
table.sort(ex)
for _, nm in ipairs(ex) do names[#names + 1] = nm end

local function rows_of(name, steps)
  local out = {}
  for _, r in pairs(results) do if r.method == name and r.steps == steps then out[#out + 1] = r end end
  table.sort(out, function(a, b) return a.scale < b.scale end)
  return out
end

local md = {}
md[#md + 1] = ("%d samples per entry (10 classes balanced, seed %d), %s; FD against the Fashion-MNIST test set in the shipped classifier's features; class accuracy by the shipped classifier; NFE = network evaluations per sample."):format(
  n, SEED, "DPM++(2M) (`dpmpp_2m`, Karras grid)")
for _, steps in ipairs(STEPS) do
  md[#md + 1] = ""
  md[#md + 1] = ("**%d steps**"):format(steps)
  md[#md + 1] = ""
  md[#md + 1] = "| method | scale | class accuracy | FD | NFE / sample |"
  md[#md + 1] = "| --- | --- | --- | --- | --- |"
  for _, name in ipairs(names) do
    for _, r in ipairs(rows_of(name, steps)) do
      md[#md + 1] = ("| %s | %g | %.1f%% | %.3f | %.2f |"):format(name, r.scale, 100 * r.acc, r.fd, r.nfe)
    end
  end
end
md[#md + 1] = ""
md[#md + 1] = ("(%d runs measured in %.0f s by `lua5.4 scripts/guidance_fashion.lua %d %s%s`)"):format(#jobs, seconds, n,
  out_dir, only and (" " .. only) or "")
local text = table.concat(md, "\n") .. "\n"
write(out_dir .. "/guidance.md", text)
io.write(text)

-- The plot: FD against class accuracy, one line per method (scales along it), a panel per step count.
local dat = out_dir .. "/guidance.dat"
local blocks, idx = {}, {}
for _, steps in ipairs(STEPS) do
  for _, name in ipairs(names) do
    local rs = rows_of(name, steps)
    if #rs > 0 then
      local b = { ("# %s, %d steps"):format(name, steps) }
      for _, r in ipairs(rs) do b[#b + 1] = ("%.4f %.6f %.3f %g"):format(100 * r.acc, r.fd, r.nfe, r.scale) end
      blocks[#blocks + 1] = table.concat(b, "\n")
      idx[#idx + 1] = { name = name, steps = steps, index = #blocks - 1 }
    end
  end
end
write(dat, table.concat(blocks, "\n\n\n") .. "\n")
if os.execute("command -v gnuplot > /dev/null 2>&1") then
  local lines = {
    "set terminal pngcairo size 1200,500 noenhanced",
    ("set output '%s/guidance.png'"):format(out_dir),
    "set multiplot layout 1,2",
    "set xlabel 'class accuracy (%)'", "set ylabel 'FD (classifier features)'", "set grid", "set key right top font ',9'",
  }
  for _, steps in ipairs(STEPS) do
    local plots = {}
    for _, e in ipairs(idx) do
      if e.steps == steps then
        -- gnuplot cycles 8 colours: later lines are dashed, so no two look the same
        local k = #plots
        plots[#plots + 1] = ("'%s' index %d using 1:2 with linespoints lt %d dt %d title '%s'"):format(dat, e.index,
          k % 8 + 1, k // 8 + 1, e.name)
      end
    end
    lines[#lines + 1] = ("set title 'fashion-denoiser, DPM++(2M), %d steps (n = %d)'"):format(steps, n)
    lines[#lines + 1] = "plot " .. table.concat(plots, ", ")
  end
  lines[#lines + 1] = "unset multiplot"
  local gp = io.popen("gnuplot", "w")
  gp:write(table.concat(lines, "\n"))
  gp:close()
  print("wrote " .. out_dir .. "/guidance.png")
else
  print("gnuplot not found: install it (sudo apt-get install gnuplot-nox) for the plot; the table is in " .. out_dir)
end
