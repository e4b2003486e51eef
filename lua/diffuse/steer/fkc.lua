-- Feynman-Kac correctors (Skreta et al. 2025, "Feynman-Kac Correctors in Diffusion:
-- Annealing, Guidance, and Product of Experts"): sample a target path
--     pi_t(x) ∝ prod_i q_i,t(x)^(c_i)
-- built from the marginals q_i,t of several models or conditions -- classifier-free guidance
-- q_u^(1-w) q_c^w, annealing q^beta, a product of experts q_1 q_2 -- exactly (as the number of
-- particles grows), where plain guided sampling with the combined score only approximates it.
--
-- The walk.  Particles follow the reverse SDE whose score is the combined score
-- sum_i c_i s_i, i.e. eps_comb = sum_i c_i eps_i (s_i = -eps_i / sigma), discretised by the
-- chain's eta = 1 kernel (DDIM with eta = 1 is the exponential-integrator step of that SDE):
--     x0 = (x - sigma eps_comb) / alpha,   x' = chain:move(x, x0, eps_comb, i, z, 1).
-- The weights.  The combined-score SDE does not transport pi_t; the Feynman-Kac formula says
-- by how much it misses.  Per particle and step (eps at the step's start, h = lambda_(i+1) -
-- lambda_i > 0 the log-SNR increment):
--     log w += h ( |sum_i c_i eps_i|^2 - sum_i c_i |eps_i|^2 )
--            = h ( (C - 1) sum_i c_i |eps_i|^2 - 1/2 sum_(i,j) c_i c_j |eps_i - eps_j|^2 ),
-- C = sum_i c_i (the second form is the one computed: it keeps float32 cancellation small).
-- Special cases: CFG (c = 1 - w, w) -> w (w - 1) h |eps_c - eps_u|^2; annealing (c = beta) ->
-- beta (beta - 1) h |eps|^2; product (c = 1, 1) -> 2 h eps_1 . eps_2.  The derivation is in
-- docs/steer-smc.md.
-- The prior.  Near t_1 every q_i,t_1 is close to N(0, sigma_1^2 I), so pi_(t_1) is close to
-- N(0, sigma_1^2 / C I): the particles start at chain:prior(K, 1 / sqrt(C)).
local core = require("diffuse.core")
local util = require("diffuse.util")
local chain_mod = require("diffuse.steer.chain")
local rewards_mod = require("diffuse.steer.rewards")
local weights = require("diffuse.steer.weights")
local fk = require("diffuse.steer.fk")

local M = {}
local fail = util.fail
local inf = math.huge
local expm1 = require("diffuse.schedule").expm1

local KEY_RESAMPLE, KEY_FINAL = 7201, 7202

local own = {
  target = true, scale = true, beta = true, models = true, conds = true, experts = true, null = true,
  batch = true, smc = true, kernel = true, reward = true, particles = true, resampling = true, resample_steps = true,
  ess_threshold = true, samples = true, seed = true, progress = true,
}

M.targets = { cfg = true, anneal = true, product = true }

local function callable(m)
  if type(m) == "function" then return true end
  local mt = getmetatable(m)
  return mt ~= nil and mt.__call ~= nil
end

-- The experts {model, cond, c} of the options (model nil = the chain's model).
local function experts_of(F, o, c, level)
  level = level + 1
  local t = o.target
  if t ~= nil and o.experts ~= nil then fail(F, "give 'target' or 'experts', not both", level) end
  if t == nil and o.experts == nil then
    fail(F, "give 'target' (\"cfg\", \"anneal\", \"product\") or 'experts' = {{model =, cond =, c =}, ...}", level)
  end
  local function unused(names)
    for _, k in ipairs(names) do
      if o[k] ~= nil then fail(F, ("'%s' does not apply to target '%s'"):format(k, tostring(t or "experts")), level + 1) end
    end
  end
  local list
  if t == nil then
    unused({ "scale", "beta", "models", "conds" })
    if type(o.experts) ~= "table" or #o.experts < 1 then
      fail(F, "'experts' must be a non-empty list of {model = m (default the chain's), cond = label, c = weight}", level)
    end
    list = {}
    for i, e in ipairs(o.experts) do
      if type(e) ~= "table" then fail(F, ("experts[%d] must be a table {model =, cond =, c =}"):format(i), level) end
      util.check_options(("%s experts[%d]"):format(F, i), e, { model = true, cond = true, c = true }, level)
      local w = e.c == nil and 1 or e.c
      if type(w) ~= "number" or w ~= w or math.abs(w) == inf then
        fail(F, ("experts[%d].c must be a finite number, got %s"):format(i, tostring(e.c)), level)
      end
      list[i] = { model = e.model, cond = e.cond, c = w }
    end
  elseif not M.targets[t] then
    fail(F, ("unknown target '%s' (valid: anneal, cfg, product; or give 'experts')"):format(tostring(t)), level)
  elseif t == "cfg" then
    unused({ "beta", "models", "conds" })
    local w = o.scale
    if type(w) ~= "number" or w ~= w or math.abs(w) == inf then
      fail(F, ("target 'cfg' needs 'scale' (the guidance weight w, a finite number), got %s"):format(tostring(w)), level)
    end
    if c.cond == nil then fail(F, "target 'cfg' needs 'cond' (the class to guide towards; unconditional is cond = nil)", level) end
    list = { { cond = c.cond, c = w }, { cond = nil, c = 1 - w } }
  elseif t == "anneal" then
    unused({ "scale", "models", "conds" })
    local b = o.beta
    if type(b) ~= "number" or not (b > 0 and b < inf) then
      fail(F, ("target 'anneal' needs 'beta' > 0 (the exponent of q^beta), got %s"):format(tostring(b)), level)
    end
    list = { { cond = c.cond, c = b } }
  else
    unused({ "scale", "beta" })
    if (o.models == nil) == (o.conds == nil) then
      fail(F, "target 'product' needs 'models' = {m1, m2, ...} or 'conds' = {c1, c2, ...} (one model, several conditions)", level)
    end
    list = {}
    if o.models ~= nil then
      if type(o.models) ~= "table" or #o.models < 2 then fail(F, "'models' must list at least two models", level) end
      for i, m in ipairs(o.models) do list[i] = { model = m, cond = c.cond, c = 1 } end
    else
      if type(o.conds) ~= "table" or #o.conds < 2 then fail(F, "'conds' must list at least two conditions", level) end
      for i, cd in ipairs(o.conds) do list[i] = { cond = cd, c = 1 } end
    end
  end
  return list
end

-- An evaluation chain for a model: the chain's grid and counters of its own, cond = nil, so
-- that denoise(x, i, nil) is the unconditional model (the run's chain keeps its own cond).
local function evaluator(F, c, model, level)
  local ev = c:fork()
  ev.cond = nil
  if model ~= nil and model ~= c.model then
    if not callable(model) then fail(F, ("an expert's model must be callable, got %s"):format(type(model)), level + 1) end
    local predicts = type(model) == "table" and model.predicts or nil
    if not require("diffuse.predict").kinds[predicts or ""] then
      fail(F, "an expert's model must say what it predicts (model.predicts)", level + 1)
    end
    local s = type(model) == "table" and model.schedule or nil
    if s ~= nil and s ~= c.schedule then
      for _, p in ipairs(c.points) do
        local q = s:point(p.t)
        if math.abs(q.alpha - p.alpha) > 1e-6 or math.abs(q.sigma - p.sigma) > 1e-6 then
          fail(F, ("an expert's model has another schedule (alpha %g vs %g at t = %g): the experts must share the forward process"):format(
            q.alpha, p.alpha, p.t), level + 1)
        end
      end
    end
    ev.model, ev.predicts = model, predicts
  end
  return ev
end

-- What a batched call passes for an unconditional row of `model`: o.null, the null class of a
-- diffuse.nn denoiser, or (a diffuse gmm) a hole in a list that gives its length as list.n.
local HOLE = {}
local function null_of(o, model)
  if o.null ~= nil then return o.null end
  if type(model) == "table" then
    if model.net and model.net.class_emb and model.net.class_emb.null then return model.net.class_emb.null end
    if getmetatable(model) == require("diffuse.models").GMM then return HOLE end
  end
  return nil
end

-- Groups of experts that share a model; each group is evaluated in one call when possible.
local function groups_of(F, o, c, experts, level)
  local by_model, groups = {}, {}
  for i, e in ipairs(experts) do
    local m = e.model or c.model
    local g = by_model[m]
    if not g then
      g = { model = m, ev = evaluator(F, c, m, level + 1), members = {} }
      by_model[m] = g
      groups[#groups + 1] = g
    end
    g.members[#g.members + 1] = i
  end
  local want = o.batch
  if want == nil then want = true end
  if type(want) ~= "boolean" then fail(F, "'batch' must be a boolean", level + 1) end
  for _, g in ipairs(groups) do
    if want and #g.members > 1 then
      local ok, null = true, nil
      for _, i in ipairs(g.members) do
        local cd = experts[i].cond
        if cd == nil then
          null = null_of(o, g.model)
          if null == nil then ok = false end
        elseif type(cd) ~= "number" then
          ok = false
        end
      end
      g.batched, g.null = ok, null
    end
  end
  return groups
end

-- The per-row cond list of a batched group for K particles.
local function batch_cond(g, experts, K)
  local list = { n = #g.members * K }
  for j, i in ipairs(g.members) do
    local cd = experts[i].cond
    if cd == nil then cd = g.null end
    if cd == HOLE then cd = nil end
    for k = 1, K do list[(j - 1) * K + k] = cd end
  end
  if g.null ~= HOLE then list.n = nil end
  return list
end

local function repeat_rows(x, times)
  if times == 1 then return x end
  local K = #x
  local shape = x:shape()
  shape[1] = K * times
  local out = core.zeros(shape)
  for j = 1, times do out:narrow(1, (j - 1) * K + 1, K):copy_(x) end
  return out
end

local function flat(t) return t:reshape(#t, t:numel() // math.max(#t, 1)) end
local function row_sq(t) return flat(t):square():sum(2):reshape(#t):totable() end

-- fkc{<chain options> | chain = c, target = "cfg" (scale = w, cond = class) | "anneal" (beta) |
--     "product" (models = {m1, m2, ...} | conds = {c1, c2, ...}), or experts = {{model, cond, c},
--     ...}, particles = 16, resampling = "systematic", resample_steps, ess_threshold = nil,
--     samples = particles | "weighted", smc = true, null, batch = true, reward, seed, progress}
function M.fkc(o)
  local F = "steer.fkc"
  local c = chain_mod.from_options(F, o, own, 2)
  if c.eta ~= 1 then
    fail(F, ("the chain's eta is %g: Feynman-Kac correctors walk the reverse SDE, the eta = 1 kernel"):format(c.eta), 2)
  end
  local last = c.points[c.n + 1]
  if not (last.sigma > 0 and last.alpha > 0) then
    fail(F, "the grid ends at sigma = 0, where the log-SNR is infinite: give t_end > 0 (the schedule's default end)", 2)
  end
  local experts = experts_of(F, o, c, 2)
  local C = 0
  for _, e in ipairs(experts) do C = C + e.c end
  if not (C > 0) then fail(F, ("the coefficients sum to %g: they must sum to a positive number (the target's exponent)"):format(C), 2) end
  local smc = o.smc
  if smc == nil then smc = true end
  if type(smc) ~= "boolean" then fail(F, "'smc' must be a boolean (false: the combined-score SDE without weights)", 2) end
  local kernel = o.kernel or "eps"
  if kernel ~= "eps" and kernel ~= "x0" then
    fail(F, ("unknown kernel '%s' (valid: eps, x0)"):format(tostring(kernel)), 2)
  end
  local reward = o.reward
  if reward ~= nil and not rewards_mod.callable(reward) then
    fail(F, ("'reward' must be a function(x, ctx) or a diffuse reward, got %s"):format(type(reward)), 2)
  end
  local K, method, thr, samples = fk.check_particles(F, o, 2)
  local at, at_list = fk.steps_of(F, o.resample_steps, c.n, 2)
  local groups = groups_of(F, o, c, experts, 2)
  local E = #experts
  local n = c.n
  local per_step = K * E
  local bar = fk.progress_bar(o, per_step * n, "fkc")
  local stream = weights.stream(c.seed, KEY_RESAMPLE)

  local x = c:prior(K, 1 / math.sqrt(C))
  local lw = {}
  for k = 1, K do lw[k] = 0 end
  local ess_trace, resampled, increments = {}, {}, {}
  local nfe_done = 0

  for i = 1, n do
    local p, q = c.points[i], c.points[i + 1]
    -- eps of every expert at (x, t_i): one model call per group of experts sharing a model.
    local eps = {}
    for _, g in ipairs(groups) do
      if g.batched then
        local _, e = g.ev:denoise(repeat_rows(x, #g.members), i, batch_cond(g, experts, K))
        for j, idx in ipairs(g.members) do eps[idx] = e:narrow(1, (j - 1) * K + 1, K) end
      else
        for _, idx in ipairs(g.members) do
          local _, e = g.ev:denoise(x, i, experts[idx].cond)
          eps[idx] = e
        end
      end
    end
    local coef = {}
    for j, e in ipairs(experts) do coef[j] = e.c end
    local eps_c = core.lincomb(eps, coef)
    local x0_c = kernel == "x0" and core.lincomb({ x, eps_c }, { 1 / p.alpha, -p.sigma / p.alpha }) or nil
    if smc then
      local h = q.lambda - p.lambda
      local inc = {}
      for k = 1, K do inc[k] = 0 end
      if C ~= 1 then
        for j = 1, E do
          local s = row_sq(eps[j])
          local f = (C - 1) * coef[j]
          for k = 1, K do inc[k] = inc[k] + f * s[k] end
        end
      end
      for a = 1, E do
        for b = a + 1, E do
          local s = row_sq(eps[a]:sub(eps[b]))
          local f = coef[a] * coef[b]
          for k = 1, K do inc[k] = inc[k] - f * s[k] end
        end
      end
      local mean = 0
      for k = 1, K do
        inc[k] = h * inc[k]
        lw[k] = lw[k] + inc[k]
        mean = mean + inc[k] / K
      end
      increments[i] = mean
      if at[i] then
        local ess = weights.ess(lw)
        ess_trace[#ess_trace + 1] = ess
        if thr == nil or ess < thr * K then
          local idx = weights.resample(method, lw, K, stream)
          x, eps_c = x:gather(idx), eps_c:gather(idx)
          if x0_c then x0_c = x0_c:gather(idx) end
          for k = 1, K do lw[k] = 0 end
          resampled[#resampled + 1] = i
        end
      end
    end
    if kernel == "x0" then
      x = c:move(x, x0_c, eps_c, i, nil, 1)
    else
      local h = q.lambda - p.lambda
      x = core.lincomb({ x, eps_c, c:noise(K) }, { q.alpha / p.alpha, -2 * q.sigma * expm1(h),
        q.sigma * math.sqrt(expm1(2 * h)) })
    end
    nfe_done = nfe_done + per_step
    if bar then bar:update(nfe_done) end
  end
  if bar then bar:finish() end

  local rF
  if reward ~= nil then rF = c:reward(reward, x, { x_t = x, point = c.points[n + 1], step = n + 1 }) end
  local out = fk.finish(c, x, lw, rF, samples, method, KEY_FINAL)
  out.method = "fkc"
  out.target = o.target or "experts"
  out.experts = {}
  for j, e in ipairs(experts) do out.experts[j] = { cond = e.cond, c = e.c, model = e.model } end
  out.smc, out.kernel = smc, kernel
  out.steps = at_list
  out.ess = ess_trace
  out.resampled = resampled
  out.resample_count = #resampled
  out.mean_increment = increments
  out.particle_count = K
  out.prior_scale = 1 / math.sqrt(C)
  local st = c:stats()
  for _, g in ipairs(groups) do
    st.nfe, st.calls = st.nfe + g.ev.nfe, st.calls + g.ev.calls
  end
  for k, v in pairs(st) do out[k] = v end
  out.batched = true
  for _, g in ipairs(groups) do if #g.members > 1 and not g.batched then out.batched = false end end
  return out
end

return M
