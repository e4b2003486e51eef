-- CADS: condition-annealed sampling (Sadat et al., "CADS: Unleashing the Diversity of Diffusion
-- Models through Condition-Annealed Sampling").  The conditional branch sees a noisy condition
-- embedding early in the run:
--   gamma(t) = 1 for t <= tau1, (tau2 - t) / (tau2 - tau1) between, 0 for t >= tau2
--   y' = sqrt(gamma) y + noise_scale sqrt(1 - gamma) n,  n ~ N(0, I)
--   y'' = psi ((y' - mean(y')) / std(y') std(y) + mean(y)) + (1 - psi) y'   (per row)
-- where t is the schedule's time (t_start at the noise end; schedules whose t runs past 1,
-- ve and edm, are measured as t / t_start) and y the embedding of the row's label.  With
-- scale ~= 1 the unconditional branch (no noise: the null condition) is combined as in cfg.
--
-- What "the embedding" is:
--   * the shipped denoiser (an nn.ResMLP with a class embedding): the learnt class embedding,
--     passed to the network through ResMLP:forward's {embedding = ...} option;
--   * a labelled diffuse.models.gmm: the one-hot vector of the label over the classes; a noisy
--     vector y'' selects the mixture whose class weights are max(y''_c, 0), normalised (the
--     components keep their weights within a class; all-non-positive falls back to the class
--     prior, the unconditional mixture).  A one-hot vector is exactly the class's mixture.
-- The noise of row i at the k-th call of a run is randn(seed, offset + i, draw k), offset being
-- the sampler's: the same row gets the same noise whatever the batch.
local core = require("diffuse.core")
local util = require("diffuse.util")
local G = require("diffuse.guidance")
local cfg = require("diffuse.guidance.cfg")

local M = {}

local valid, defaults = {}, {}
for k, v in pairs(cfg.valid) do valid[k] = v end
for k, v in pairs(cfg.defaults) do defaults[k] = v end
for _, k in ipairs({ "tau1", "tau2", "noise_scale", "psi", "seed" }) do valid[k] = true end
defaults.tau1, defaults.tau2, defaults.noise_scale, defaults.psi, defaults.seed = 0.6, 0.9, 0.25, 1, 0

-- gamma(u) of the annealing schedule.
function M.gamma(u, tau1, tau2)
  if u <= tau1 then return 1 end
  if u >= tau2 then return 0 end
  return (tau2 - u) / (tau2 - tau1)
end

-- y'' from y (N, E) and standard-normal n (N, E).
function M.anneal(y, n, gamma, s, psi)
  local yn = core.lincomb({ y, n }, { math.sqrt(gamma), s * math.sqrt(1 - gamma) })
  if psi == 0 then return yn end
  local my, sy = y:mean(2, true), y:std(2, true, 0)
  local mn, sn = yn:mean(2, true), yn:std(2, true, 0)
  -- (yn - mn) * sy / sn + my, with a row of constant yn left as it is
  local ratio = sy:div(sn:maximum(core.full(sn:shape(), 1e-12)))
  local rescaled = yn:sub(mn):mul(ratio):add(my)
  return core.lincomb({ rescaled, yn }, { psi, 1 - psi })
end

-- Labels per row as a Lua list.
local function label_list(F, cond, n)
  if type(cond) == "number" then
    local l = {}
    for i = 1, n do l[i] = cond end
    return l
  end
  if util.is_tensor(cond) then return cond:totable() end
  if type(cond) == "table" then return cond end
  util.fail(F, ("cond must be a label, a list or a 1-d tensor of labels, got %s"):format(type(cond)), 4)
end

-- The GMM's conditional prediction for soft class vectors w (N, C) (rows: the annealed one-hots).
local function gmm_soft(m, x, p, w)
  local n = #x
  local C, K = #m.classes, m.K
  local col = {}
  for c, l in ipairs(m.classes) do col[l] = c end
  -- class prior and within-class log-weights
  local prior, within = {}, {}
  for c = 1, C do prior[c] = 0 end
  for k = 1, K do prior[col[m.labels[k]]] = prior[col[m.labels[k]]] + m.weights[k] end
  for k = 1, K do
    local pc = prior[col[m.labels[k]]]
    within[k] = (m.weights[k] > 0 and pc > 0) and math.log(m.weights[k] / pc) or -math.huge
  end
  local wt = w:totable()
  local logw, groups = {}, {}
  for i = 1, n do
    local r, tot = wt[i], 0
    local pos = {}
    for c = 1, C do
      pos[c] = r[c] > 0 and r[c] or 0
      tot = tot + pos[c]
    end
    if not (tot > 0) then pos, tot = prior, 1 end
    for k = 1, K do
      local v = pos[col[m.labels[k]]] / tot
      logw[#logw + 1] = (v > 0 and within[k] > -math.huge) and math.log(v) + within[k] or -math.huge
    end
    groups[i] = i
  end
  local xf = x:dim() == 2 and x or x:reshape(n, -1)
  local out = core._models.gmm_posterior(xf, m.means, m.vars, logw, groups, p.alpha, p.sigma, true, false, false, m._path)
  if x:dim() ~= 2 then out = out:view(x:shape()) end
  return out
end

-- cads{model, scale = 1, tau1 = 0.6, tau2 = 0.9, noise_scale = 0.25, psi = 1, seed = 0,
--      space, rescale, interval, interval_on}
function M.cads(o)
  local F = "guidance.cads"
  local g = G.object(F, o, valid, defaults, 2)
  local opts = g.opts
  cfg.check_common(F, opts, 2)
  for _, k in ipairs({ "tau1", "tau2", "noise_scale", "psi", "seed" }) do G.check_scale(F, k, opts[k], 2) end
  if not (opts.tau1 <= opts.tau2) then util.fail(F, ("need tau1 <= tau2, got %g and %g"):format(opts.tau1, opts.tau2), 2) end
  local m = g.model
  local models = require("diffuse.models")
  local kind
  if getmetatable(m) == models.GMM then
    if not m.labels then util.fail(F, "the mixture has no labels (build it with labels = {...})", 2) end
    kind = "gmm"
  elseif type(m) == "table" and type(m.net) == "table" and m.net.class_emb then
    kind = "net"
  else
    util.fail(F, "the model must be a labelled diffuse.models.gmm or a class-conditional network model (nn.as_model of an nn.ResMLP with num_classes)", 2)
  end
  local sched = g.schedule
  local T = (sched and sched.t_start > 1) and sched.t_start or 1

  -- The conditional prediction with the annealed embedding.
  local function conditional(self, x, p, cond, ctx, mem)
    local n = #x
    local u = p.t / T
    local gam = M.gamma(u, opts.tau1, opts.tau2)
    local labels = label_list(F, cond, n)
    local y
    if kind == "gmm" then
      local col = {}
      for c, l in ipairs(m.classes) do col[l] = c end
      local rows = {}
      for i = 1, n do
        local r = {}
        for c = 1, #m.classes do r[c] = 0 end
        local c = col[math.tointeger(labels[i]) or labels[i]]
        if not c then util.fail(F, ("unknown cond label %s"):format(tostring(labels[i])), 4) end
        r[c] = 1
        rows[i] = r
      end
      y = core.tensor(rows)
    else
      y = m.net.class_emb:forward(labels, n)
    end
    if gam < 1 then
      local st = ctx and ctx.state
      local z = core.randn(y:shape(), { seed = opts.seed, offset = st and st.offset or 0, draw = mem.k })
      y = M.anneal(y, z, gam, opts.noise_scale, opts.psi)
    end
    self.counts.evaluations = self.counts.evaluations + n
    if kind == "gmm" then return gmm_soft(m, x, p, y) end
    local skip = ctx and ctx.skip
    if skip == nil then
      skip = m.skip
      if type(skip) == "function" then skip = skip(p) end
    end
    if m.net.training then m.net:eval() end
    return m.net:forward(x, m.time(p), nil, { embedding = y, skip = skip })
  end

  g.guide = function(self, x, p, cond, ctx)
    local mem = self:memory(x, p, ctx)
    mem.k = (mem.k or 0) + 1
    if cond == nil then return self:eval(x, p, nil, ctx) end
    local c = conditional(self, x, p, cond, ctx, mem)
    if opts.scale == 1 and opts.rescale == 0 or not cfg.inside(opts, p) then return c end
    local un = self:eval(x, p, nil, ctx)
    return cfg.combine(opts, self.predicts, c, un, x, p)
  end
  g.describe = function(self)
    return ("tau (%g, %g), noise %g, psi %g, scale %g"):format(opts.tau1, opts.tau2, opts.noise_scale, opts.psi, opts.scale)
  end
  return g
end

M.methods = { cads = M.cads }

M.functions = { cads_gamma = M.gamma, cads_anneal = M.anneal }

return M
