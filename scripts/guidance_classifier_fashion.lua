-- Classifier guidance, its off-the-shelf variant (EluCD), gradient-free classifier guidance and
-- autoguidance on the shipped Fashion-MNIST denoiser: class accuracy of the samples by the
-- shipped clean classifier (which EluCD and GFCG also guide with) and by the noise-conditioned
-- classifier at t = 0.02 (which only classifier guidance uses), Fréchet distance in the clean
-- classifier's features against the test set, network evaluations and classifier evaluations
-- per sample; DPM-Solver++(2M) (dpmpp_2m), seed 1, class-balanced labels.  Prints a Markdown
-- table (progress with the ETA on stderr).
--
--   lua5.4 scripts/guidance_classifier_fashion.lua [n = 1000] [steps = "10,20"] [only = substring of a row name]
local diffuse = require("diffuse")
local G = diffuse.guidance
local metrics = diffuse.metrics
local fitness = require("diffuse.search.fitness")
local n = tonumber(arg[1]) or 1000
local steps_list = {}
for s in (arg[2] or "10,20"):gmatch("%d+") do steps_list[#steps_list + 1] = tonumber(s) end
local only = arg[3]

local model, info = assert(diffuse.models.load("fashion-denoiser"))
local small = assert(diffuse.models.load("fashion-denoiser-small"))
local tc = assert(diffuse.models.load("fashion-tclassifier"))
local fr = assert(metrics.fashion_reference())
local cc, features, ref = fr.classifier, fr.features, fr.reference
local labels = {}
for i = 1, n do labels[i] = (i - 1) % 10 end

local rows = {
  { "conditional (no guidance)", { 0 }, function() return G.gfcg { model = model, classifier = cc, scale = 0 } end },
  { "classifier (tclassifier, uncond. base)", { 4, 16 }, function(s) return G.classifier { model = model, classifier = tc, scale = s } end },
  { "classifier (tclassifier, cond. base)", { 1, 2, 4, 8 }, function(s) return G.classifier { model = model, classifier = tc, scale = s, conditional = true } end },
  { "elucd (x0, beta 0.5)", { 0.25, 0.5, 1, 2 }, function(s) return G.elucd { model = model, classifier = cc, scale = s, beta = 0.5, clip = { -1, 1 } } end },
  { "elucd (x0, beta 1)", { 1 }, function(s) return G.elucd { model = model, classifier = cc, scale = s, beta = 1, clip = { -1, 1 } } end },
  { "elucd (denoiser, beta 0.5)", { 1, 2 }, function(s) return G.elucd { model = model, classifier = cc, scale = s, beta = 0.5, clip = { -1, 1 }, through = "denoiser" } end },
  { "elucd (denoiser, beta 1)", { 1, 2 }, function(s) return G.elucd { model = model, classifier = cc, scale = s, beta = 1, clip = { -1, 1 }, through = "denoiser" } end },
  { "gfcg", { 1, 2, 4, 8 }, function(s) return G.gfcg { model = model, classifier = cc, scale = s, clip = { -1, 1 } } end },
  { "auto (denoiser-small)", { 1.1, 1.25, 1.5, 2, 3 }, function(s) return G.auto { model = model, guide = small, scale = s } end },
}

local jobs = {}
for _, steps in ipairs(steps_list) do
  for _, r in ipairs(rows) do
    if not only or r[1]:find(only, 1, true) then
      for _, s in ipairs(r[2]) do jobs[#jobs + 1] = { steps = steps, name = r[1], scale = s, ctor = r[3] } end
    end
  end
end
local bar = diffuse.progress.new { total = #jobs, label = "guidance runs", unit = "run" }
local head = ("| method | scale | steps | accuracy | accuracy (tclassifier, t=0.02) | FD | NFE/sample | classifier evals/sample | seconds |")
print(head)
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for k, j in ipairs(jobs) do
  local g = j.ctor(j.scale)
  local f = fitness.fd { model = g, schedule = info.schedule, features = features, reference = ref, n = n, seed = 1,
    dim = 784, cond = "balanced", keep = true }
  local fd, inf = f { solver = "dpmpp_2m", steps = j.steps }
  local x = inf.samples
  local acc = metrics.class_accuracy(cc:forward(x:view(#x, 1, 28, 28)), labels)
  local acc2 = metrics.class_accuracy(tc:forward(x:view(#x, 1, 28, 28), 0.02), labels)
  local st = g:stats()
  local ce = (st.classifier_evaluations or 0) / st.samples
  print(("| %s | %g | %d | %.1f%% | %.1f%% | %.2f | %g | %g | %.1f |"):format(j.name, j.scale, j.steps, 100 * acc, 100 * acc2, fd,
    st.per_sample, ce, inf.seconds))
  io.stdout:flush()
  bar:update(k)
end
bar:finish()
