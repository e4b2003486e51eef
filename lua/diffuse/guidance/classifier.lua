-- Guidance with a classifier: three methods.
--
--   classifier  Dhariwal & Nichol's classifier guidance with a noise-conditioned classifier:
--               the guided score is score(x_t) + scale * grad_x log p(y | x_t, t).
--   elucd       the off-the-shelf variant of Ma et al., "Elucidating the Design Space of
--               Classifier-Guided Diffusion Generation" (ICLR 2024): a classifier trained on
--               clean images, applied to the x0 estimate, with softened activations, the
--               calibrated objective T1 logit_y - logsumexp(T2 logits) and a sine bump on the
--               guidance schedule.
--   gfcg        gradient-free classifier guidance (Shenoy et al. 2024): the clean classifier in
--               inference mode reads the conditional x0 estimate, picks the most probable wrong
--               class as a reference and an adaptive scale, and the prediction is pushed from
--               the reference class's prediction toward the target's (two conditional
--               evaluations, no gradient).
--
-- Why the guidance term is added in the base model's own kind: every kind is affine in the
-- score at fixed (x, t) (eps = -sigma score, x0 = (x + sigma^2 score) / alpha, ...), so adding
-- c * grad to the score adds k * c * grad to the output with a factor k of the kind alone
-- (score_factor below); one fused pass, no round trip through another kind.
local core = require("diffuse.core")
local util = require("diffuse.util")
local predict = require("diffuse.predict")
local G = require("diffuse.guidance")

local K = core._nn
local fail, is_tensor = util.fail, util.is_tensor

local M = {}

----------------------------------------------------------------------------------------------
-- Shared pieces

-- d out / d score for a model output of kind `kind` at point p (x fixed).
local function score_factor(kind, p)
  local a, s = p.alpha, p.sigma
  if kind == "score" then return 1 end
  if kind == "eps" then return -s end
  if not (a > 0) then error(("guidance: a %s prediction cannot be guided at alpha = 0 (t = %.6g)"):format(kind, p.t), 3) end
  if kind == "x0" then return s * s / a end
  if kind == "v" then return -s * (a * a + s * s) / a end
  if kind == "flow" then
    if not (p.dalpha and p.dsigma) then error("guidance: a flow prediction needs the schedule's derivatives", 3) end
    return s * (p.dalpha * s / a - p.dsigma)
  end
  error(("guidance: unknown prediction kind '%s'"):format(tostring(kind)), 3)
end
M.score_factor = score_factor

-- out + c * grad_score, where grad_score is a score increment (shaped like x or flat).
local function add_score(kind, out, grad, c, p)
  if c == 0 then return out end
  local g = grad
  if g:numel() ~= out:numel() then error("guidance: classifier gradient does not match the prediction's size", 3) end
  if not (g:is_contiguous() and #g:shape() == #out:shape()) then g = g:reshape(out:shape()) end
  return core.lincomb({ out, g }, { 1, c * score_factor(kind, p) })
end
M.add_score = add_score

-- The per-row target labels from cond (a number, a list or a 1-d tensor); cond is required.
local function labels_of(F, cond, n, level)
  level = (level or 1) + 1
  if cond == nil then
    fail(F, "needs cond: the target class labels (a number, a list or a 1-d tensor, one per row)", level)
  end
  local out = {}
  if type(cond) == "number" then
    for i = 1, n do out[i] = cond end
  elseif is_tensor(cond) then
    if cond:dim() ~= 1 or #cond ~= n then fail(F, ("cond tensor must be 1-d with %d labels"):format(n), level) end
    local t = cond:totable()
    for i = 1, n do out[i] = t[i] end
  elseif type(cond) == "table" then
    if #cond ~= n then fail(F, ("cond lists %d labels but x has %d rows"):format(#cond, n), level) end
    for i = 1, n do out[i] = cond[i] end
  else
    fail(F, ("cond must be a label, a list or a 1-d tensor, got %s"):format(type(cond)), level)
  end
  for i = 1, n do
    local l = out[i]
    if type(l) ~= "number" or l ~= math.floor(l) then fail(F, ("cond label %d is %s, not an integer"):format(i, tostring(l)), level) end
    out[i] = math.tointeger(l)
  end
  return out
end
M.labels_of = labels_of

local function flat(t) return t:is_contiguous() and t:view(#t, -1) or t:reshape(#t, -1) end

-- A one-hot (N, C) tensor scaled by `v` at column col[i] of row i.
local function onehot(cols, C, v)
  local rows = {}
  for i, c in ipairs(cols) do
    local r = {}
    for j = 1, C do r[j] = 0 end
    r[c] = v or 1
    rows[i] = r
  end
  return core.tensor(rows)
end

-- Row-wise softmax of (N, C) logits (max subtracted), as a new tensor.
local function softmax(logits)
  local m = logits:max(2, true)
  local e = logits:sub(m):exp()
  return e:div(e:sum(2, true))
end

----------------------------------------------------------------------------------------------
-- Classifier adapters.  Each is {kind, classes (list of labels, column order), col (label ->
-- column), logits(x, t) -> (N, C), grad(x, t, W) -> sum_c W[:, c] d logits_c / dx (shaped like
-- x)}.  `logits` of a mixture are its exact log class posteriors log p(c | x).

local function is_gmm(c)
  return type(c) == "table" and type(c.class_prob) == "function" and type(c.responsibilities) == "function"
    and c.means ~= nil and c.vars ~= nil
end

local function is_net(c)
  return type(c) == "table" and type(c.forward) == "function" and type(c.backward) == "function"
    and math.type(c.num_classes) == "integer"
end

-- The exact mixture: log p(c | x_t) at (alpha, sigma), and its input gradient in closed form.
-- With R the (N, K) component posterior, P = R M the class posterior (M the (K, C) membership),
-- v_k = alpha^2 var_k + sigma^2 and grad log N(x; alpha mu_k, v_k) = (alpha mu_k - x) / v_k:
--   grad log p(c | x) = sum_{k in c} (R_k / P_c) g_k - sum_k R_k g_k,
-- so sum_c W_c grad log p(c | x) = sum_k A_k g_k with A_k = R_k (W_c(k) / P_c(k) - sum_c W_c),
-- which is A (alpha mu / v) - x * (A (1 / v)): two matrix products.
local function gmm_adapter(F, g, level)
  if not g.labels then fail(F, "the mixture classifier needs labels (gmm{..., labels = {...}})", level + 1) end
  local classes = g.classes
  local col = {}
  for i, l in ipairs(classes) do col[l] = i end
  local rows = {}
  for k = 1, g.K do
    local r = {}
    for c, l in ipairs(classes) do r[c] = g.labels[k] == l and 1 or 0 end
    rows[k] = r
  end
  local member = core.tensor(rows)           -- (K, C)
  local ad = { kind = "gmm", classes = classes, col = col, C = #classes, gmm = g }
  local function point(p) return { alpha = p and p.alpha or 1, sigma = p and p.sigma or 0 } end
  function ad.probs(x, p)
    return g:class_prob(flat(x), point(p))
  end
  function ad.logits(x, p)
    return ad.probs(x, p):maximum(1e-300):log()
  end
  function ad.grad(x, p, W)
    local q = point(p)
    local xf = flat(x)
    local R = g:responsibilities(xf, q)      -- (N, K)
    local P = R:matmul(member):maximum(1e-30) -- (N, C)
    local A = R:mul(W:div(P):matmul(member, { transb = true })):sub(R:mul(W:sum(2, true)))
    local a, s = q.alpha, q.sigma
    local V = g.vars:mul(a * a):add(s * s)   -- (K, D)
    local inv = V:pow(-1)
    local out = A:matmul(g.means:mul(inv):mul(a)):sub(xf:mul(A:matmul(inv)))
    return out:view(x:shape())
  end
  return ad
end

-- A diffuse.nn classifier (nn.CNN or any module with forward/backward and num_classes): labels
-- 0 .. C-1 are columns 1 .. C.  `beta` softens the SiLU activations of an nn.CNN to
-- silu_beta(z) = z sigmoid(beta z) = silu(beta z) / beta (beta = 1: the trained network; smaller
-- beta: smoother, closer to linear), the counterpart for SiLU of the paper's Softplus(beta)
-- replacing ReLU.  `time` maps a point to the network's time input (time-conditioned nets).
local function net_adapter(F, net, beta, time_fn)
  local C = net.num_classes
  local classes, col = {}, {}
  for i = 1, C do classes[i] = i - 1; col[i - 1] = i end
  local ad = { kind = "net", classes = classes, col = col, C = C, net = net }
  local soft = beta ~= 1 and net.stages ~= nil
  local function tin(p) return net.time_cond and time_fn(p) or nil end

  -- forward with the softened activation; keeps what backward needs in `cache`
  local function soft_forward(x, p, cache)
    local S, Cin = net.image_size, net.in_channels
    local n = #x
    local h = x:reshape(n, Cin, S, S)
    local ta
    if net.time_cond then
      local te = net.time_emb:forward(tin(p), n)
      cache.t1 = net.time_fc:forward(te)
      ta = K.film_silu_fwd(cache.t1)
    end
    local pre = {}
    for i, st in ipairs(net.stages) do
      local z = st.norm:forward(st.conv:forward(h))
      if ta then K.add_channel_(z, st.temb:forward(ta)) end
      pre[i] = z
      h = K.film_silu_fwd(z:mul(beta)):mul(1 / beta)
    end
    cache.pre = pre
    return net.head:forward(net.pool:forward(h))
  end
  local function soft_backward(dlogits, cache)
    local dh = net.pool:backward(net.head:backward(dlogits))
    local dta
    for i = #net.stages, 1, -1 do
      local st = net.stages[i]
      -- d/dz silu(beta z) / beta = silu'(beta z)
      local dz = K.film_silu_bwd(cache.pre[i]:mul(beta), nil, dh)
      if st.temb then
        local d = st.temb:backward(K.channel_sum(dz))
        if dta then K.acc_(dta, d) else dta = d end
      end
      dh = st.conv:backward(st.norm:backward(dz))
    end
    if dta then net.time_fc:backward(K.film_silu_bwd(cache.t1, nil, dta), true) end
    return dh
  end

  function ad.logits(x, p)
    if net.training then net:eval() end
    if soft then return soft_forward(x, p, {}) end
    return net:forward(x, tin(p))
  end
  function ad.probs(x, p) return softmax(ad.logits(x, p)) end
  -- The input gradient of sum(W * logits) with W = f(logits) (N, C): a forward in training mode
  -- (the layers cache their inputs), then backward with W; returns dx and the logits.  The
  -- parameter gradients the backward accumulates are cleared again.
  function ad.grad_of(x, p, f)
    net:train()
    local ok, dx, lg = pcall(function()
      local cache, lg
      if soft then cache = {}; lg = soft_forward(x, p, cache) else lg = net:forward(x, tin(p)) end
      local W = f(lg)
      local d = soft and soft_backward(W, cache) or net:backward(W)
      return d, lg
    end)
    net:zero_grad()
    net:eval()
    if not ok then error(dx, 0) end
    return dx:view(x:shape()), lg
  end
  return ad
end

-- A Lua function as a noise-conditioned classifier: f(x, point, labels) -> grad_x log p(y | x).
local function fn_adapter(f)
  return { kind = "fn", fn = f }
end

local function adapter(F, c, opts, need, level)
  level = (level or 1) + 1
  if c == nil then
    fail(F, "'classifier' is required: " .. (need == "noisy"
      and "a time-conditioned nn.CNN (models.load('fashion-tclassifier')), a labelled gmm, or a function(x, point, labels) -> grad log p(y | x)"
      or "a clean classifier (models.load('fashion-classifier')) or a labelled gmm"), level)
  end
  if is_gmm(c) then return gmm_adapter(F, c, level) end
  if is_net(c) then
    if need == "noisy" and not c.time_cond then
      fail(F, "'classifier' is a clean classifier (not time-conditioned): classifier guidance needs p(y | x_t, t) "
        .. "(fashion-tclassifier); use guidance.elucd or guidance.gfcg for a clean classifier", level)
    end
    if need == "clean" and c.time_cond then
      fail(F, "'classifier' is time-conditioned: this method reads the x0 estimate with a clean classifier (fashion-classifier)", level)
    end
    return net_adapter(F, c, opts.beta or 1, opts.time or require("diffuse.nn").time_input)
  end
  if need == "noisy" and type(c) == "function" then return fn_adapter(c) end
  fail(F, ("'classifier' must be %s, got %s"):format(need == "noisy"
    and "a time-conditioned diffuse.nn classifier, a labelled gmm or a function" or "a diffuse.nn classifier or a labelled gmm",
    type(c)), level)
end

local function columns(F, ad, labels, level)
  local cols = {}
  for i, l in ipairs(labels) do
    local c = ad.col[l]
    if not c then
      fail(F, ("label %s is not a class of the classifier (classes %s .. %s)"):format(tostring(l),
        tostring(ad.classes[1]), tostring(ad.classes[#ad.classes])), (level or 1) + 1)
    end
    cols[i] = c
  end
  return cols
end

-- Extra counters on top of the base object's: classifier forwards and backwards (in rows).
local function with_classifier_counts(g)
  local base_reset, base_stats = G.Guidance.reset, G.Guidance.stats
  function g:reset()
    base_reset(self)
    self.ccounts = { forward = 0, backward = 0, denoiser_backward = 0 }
  end
  function g:stats()
    local s = base_stats(self)
    local c = self.ccounts
    s.classifier_evaluations = c.forward
    s.classifier_gradients = c.backward
    s.classifier_per_sample = s.samples > 0 and c.forward / s.samples or 0
    if c.denoiser_backward > 0 then
      s.denoiser_backwards = c.denoiser_backward
    end
    return s
  end
  g:reset()
  return g
end

local function check_number(F, name, v, level)
  return G.check_scale(F, name, v, (level or 1) + 1)
end

local function check_bool(F, name, v, level)
  if type(v) ~= "boolean" then fail(F, ("'%s' must be true or false, got %s"):format(name, type(v)), (level or 1) + 1) end
end

local function check_clip(F, v, level)
  if v == nil then return end
  if type(v) ~= "table" or type(v[1]) ~= "number" or type(v[2]) ~= "number" or not (v[1] < v[2]) then
    fail(F, "'clip' must be {lo, hi} with lo < hi (the x0 estimate is clamped before the classifier)", (level or 1) + 1)
  end
end

----------------------------------------------------------------------------------------------
-- classifier{model, classifier, scale = 1, conditional = false, time}

local cg_valid = { classifier = true, scale = true, conditional = true, time = true }
local cg_defaults = { scale = 1, conditional = false }

-- grad_x log p(y | x_t, t) for the adapter at (x, p).
local function noisy_grad(ad, x, p, labels, cols)
  if ad.kind == "fn" then return ad.fn(x, p, labels) end
  local n = #x
  if ad.kind == "gmm" then
    return ad.grad(x, p, onehot(cols, ad.C))
  end
  -- log softmax at y: d/dlogits = onehot(y) - softmax(logits)
  return (ad.grad_of(x, p, function(lg) return onehot(cols, ad.C):sub(softmax(lg)) end))
end

function M.classifier(o)
  local F = "guidance.classifier"
  local g = G.object(F, o, cg_valid, cg_defaults, 2)
  local opts = g.opts
  check_number(F, "scale", opts.scale, 2)
  check_bool(F, "conditional", opts.conditional, 2)
  if opts.time ~= nil and type(opts.time) ~= "function" then fail(F, "'time' must be a function(point) -> time input", 2) end
  g.classifier = opts.classifier
  g.adapter = adapter(F, opts.classifier, opts, "noisy", 2)
  with_classifier_counts(g)
  g.guide = function(self, x, p, cond, ctx)
    self:memory(x, p, ctx)
    local n = #x
    local labels = labels_of(F, cond, n, 2)
    local out = self:eval(x, p, self.opts.conditional and cond or nil, ctx)
    local scale = self.opts.scale
    if scale == 0 then return out end
    local ad = self.adapter
    local cols = ad.kind ~= "fn" and columns(F, ad, labels, 2) or nil
    local grad = noisy_grad(ad, x, p, labels, cols)
    if ad.kind == "net" then
      self.ccounts.forward = self.ccounts.forward + n
      self.ccounts.backward = self.ccounts.backward + n
    elseif ad.kind == "gmm" then
      self.ccounts.forward = self.ccounts.forward + n
    end
    return add_score(self.predicts, out, grad, scale, p)
  end
  g.describe = function(self)
    return ("scale %g, %s base, classifier %s"):format(self.opts.scale, self.opts.conditional and "conditional" or "unconditional",
      self.adapter.kind)
  end
  return g
end

----------------------------------------------------------------------------------------------
-- elucd{model, classifier, scale = 1, beta = 1, temperature = 1, discount = 0.5, gamma = 0.3,
--       conditional = true, through = "x0", clip = nil}

local el_valid = { classifier = true, scale = true, beta = true, temperature = true, discount = true, gamma = true,
  conditional = true, through = true, clip = true }
local el_defaults = { scale = 1, beta = 1, temperature = 1, discount = 0.5, gamma = 0.3, conditional = true, through = "x0" }

-- The calibrated objective's gradient with respect to the logits:
--   L = T1 logit_y - log sum_c exp(T2 logit_c),  T2 = T1 * discount
--   dL/dlogit = T1 onehot(y) - T2 softmax(T2 logits).
-- discount = 1 is plain log p(y | x0) at temperature T1; discount < 1 keeps rewarding the target
-- logit after the softmax has saturated (the paper's "marginal" temperature).
local function calibrated_weights(lg, cols, C, T1, T2)
  return onehot(cols, C, T1):sub(softmax(lg:mul(T2)):mul(T2))
end

-- The noisy x0 estimate x0(x_t) through the denoiser: the base model's network in training mode
-- (label dropout off for the call), its output converted to x0, and the vector-Jacobian product
-- J^T gx0 by the network's backward.  Returns the model output and the product.
local function through_denoiser(F, model, kind, x, p, cond, ctx, gx0_fn)
  local net = model.net
  local emb = net.class_emb
  local drop = emb and emb.dropout
  net:train()
  if emb then emb.dropout = 0 end
  local ok, out, gx = pcall(function()
    local skip = ctx and ctx.skip
    if skip == nil then
      skip = model.skip
      if type(skip) == "function" then skip = skip(p) end
    end
    local t = model.time(p)
    local y = net:forward(x, t, net.num_classes and cond or nil, skip and { skip = skip } or nil)
    -- x0 = A x + B y for the kind: d x0 / d y = B
    local a, s = p.alpha, p.sigma
    local B
    if kind == "x0" then B = 1
    elseif kind == "eps" then B = -s / a
    elseif kind == "v" then B = -s / (a * a + s * s)
    else error(("%s: through = 'denoiser' supports eps, x0 and v models, not %s"):format(F, kind), 0) end
    local x0 = predict.to_x0_eps(kind, y, x, p, "x0")
    local gx0 = gx0_fn(x0)
    local dy = gx0:mul(B)
    local dx = net:backward(dy:reshape(y:shape()))
    local A = 0
    if kind == "x0" then A = 0 elseif kind == "eps" then A = 1 / a else A = a / (a * a + s * s) end
    local g = core.lincomb({ dx:reshape(x:shape()), gx0:reshape(x:shape()) }, { 1, A })
    return y, g
  end)
  if emb then emb.dropout = drop end
  net:zero_grad()
  net:eval()
  if not ok then error(out, 0) end
  return out, gx
end

function M.elucd(o)
  local F = "guidance.elucd"
  local g = G.object(F, o, el_valid, el_defaults, 2)
  local opts = g.opts
  check_number(F, "scale", opts.scale, 2)
  check_number(F, "beta", opts.beta, 2)
  if not (opts.beta > 0) then fail(F, ("'beta' must be > 0, got %g"):format(opts.beta), 2) end
  check_number(F, "temperature", opts.temperature, 2)
  check_number(F, "discount", opts.discount, 2)
  check_number(F, "gamma", opts.gamma, 2)
  check_bool(F, "conditional", opts.conditional, 2)
  check_clip(F, opts.clip, 2)
  if opts.through ~= "x0" and opts.through ~= "denoiser" then
    fail(F, ("unknown through '%s' (valid: x0, denoiser)"):format(tostring(opts.through)), 2)
  end
  g.adapter = adapter(F, opts.classifier, opts, "clean", 2)
  if opts.through == "denoiser" then
    local m = g.model
    if not (type(m) == "table" and m.net and type(m.net.backward) == "function" and m.time) then
      fail(F, "through = 'denoiser' needs a neural model (nn.as_model / models.load) whose network has a backward", 2)
    end
    if g.adapter.kind ~= "net" and g.adapter.kind ~= "gmm" then fail(F, "through = 'denoiser' needs a classifier with a gradient", 2) end
  end
  with_classifier_counts(g)
  g.guide = function(self, x, p, cond, ctx)
    self:memory(x, p, ctx)
    local n = #x
    local labels = labels_of(F, cond, n, 2)
    local o2 = self.opts
    local base_cond = o2.conditional and cond or nil
    local ad = self.adapter
    local cols = columns(F, ad, labels, 2)
    -- schedule: the paper adds gamma sin(pi t/T) (times the largest step variance) to the step
    -- variance the gradient is scaled by; here, without a step, as a factor (1 + gamma sin(pi t))
    -- on the scale, t clamped to [0, 1] (VP and flow schedules)
    local u = math.min(1, math.max(0, p.t or 0))
    local c = o2.scale * (1 + o2.gamma * math.sin(math.pi * u))
    local T1, T2 = o2.temperature, o2.temperature * o2.discount
    local function gx0_of(x0)
      if o2.clip then x0 = x0:clamp(o2.clip[1], o2.clip[2]) end
      self.ccounts.forward = self.ccounts.forward + n
      self.ccounts.backward = self.ccounts.backward + n
      if ad.kind == "gmm" then
        local lg = ad.logits(x0, nil)
        return ad.grad(x0, nil, calibrated_weights(lg, cols, ad.C, T1, T2))
      end
      return (ad.grad_of(x0, nil, function(lg) return calibrated_weights(lg, cols, ad.C, T1, T2) end))
    end
    if c == 0 then return self:eval(x, p, base_cond, ctx) end
    if o2.through == "denoiser" then
      local out, gx = through_denoiser(F, self.model, self.predicts, x, p, base_cond, ctx, gx0_of)
      self.counts.evaluations = self.counts.evaluations + n
      self.ccounts.denoiser_backward = self.ccounts.denoiser_backward + n
      return add_score(self.predicts, out, gx, c, p)
    end
    local out = self:eval(x, p, base_cond, ctx)
    local x0 = predict.to_x0_eps(self.predicts, out, x, p, "x0")
    -- the paper's approximation: the gradient at the x0 estimate is applied to x_t as it is
    -- (d x0 / d x_t taken as the identity, no backward through the denoiser)
    return add_score(self.predicts, out, gx0_of(x0), c, p)
  end
  g.describe = function(self)
    local q = self.opts
    return ("scale %g, beta %g, T %g, discount %g, gamma %g, through %s"):format(q.scale, q.beta, q.temperature,
      q.discount, q.gamma, q.through)
  end
  return g
end

----------------------------------------------------------------------------------------------
-- gfcg{model, classifier, scale = 1, adaptive = true, cfg = 0, clip = nil}

local gf_valid = { classifier = true, scale = true, adaptive = true, cfg = true, clip = true }
local gf_defaults = { scale = 1, adaptive = true, cfg = 0 }

function M.gfcg(o)
  local F = "guidance.gfcg"
  local g = G.object(F, o, gf_valid, gf_defaults, 2)
  local opts = g.opts
  check_number(F, "scale", opts.scale, 2)
  check_number(F, "cfg", opts.cfg, 2)
  check_bool(F, "adaptive", opts.adaptive, 2)
  check_clip(F, opts.clip, 2)
  g.adapter = adapter(F, opts.classifier, opts, "clean", 2)
  if g.adapter.C < 2 then fail(F, "the classifier needs at least two classes", 2) end
  with_classifier_counts(g)
  g.guide = function(self, x, p, cond, ctx)
    local mem = self:memory(x, p, ctx)
    local n = #x
    local labels = labels_of(F, cond, n, 2)
    local ad = self.adapter
    local cols = columns(F, ad, labels, 2)
    local o2 = self.opts
    local c_out = self:eval(x, p, cond, ctx)
    if o2.scale == 0 and o2.cfg == 0 then return c_out end
    local out = c_out
    if o2.scale ~= 0 then
      -- the classifier in inference mode on the conditional x0 estimate
      local x0 = predict.to_x0_eps(self.predicts, c_out, x, p, "x0")
      if o2.clip then x0 = x0:clamp(o2.clip[1], o2.clip[2]) end
      local probs = ad.probs(x0, nil):totable()
      self.ccounts.forward = self.ccounts.forward + n
      local ref, w = {}, {}
      for i = 1, n do
        local pr = probs[i]
        local best, bc = -1, nil
        for j = 1, ad.C do
          if j ~= cols[i] and pr[j] > best then best, bc = pr[j], j end
        end
        ref[i] = ad.classes[bc]
        local py = pr[cols[i]]
        -- adaptive scale: the share of the reference class in the pair (target, reference),
        -- doubled so that a tie gives `scale`; a confident, correct estimate gives ~0
        local q = (py + best) > 0 and best / (py + best) or 0.5
        w[i] = { o2.adaptive and o2.scale * 2 * q or o2.scale }
      end
      -- a tensor (one row per batch row), so gather() and clone() of the state fork it
      mem.reference = core.tensor(ref)
      local r_out = self:eval(x, p, ref, ctx)
      local shape = c_out:shape()
      local wt = core.tensor(w)
      out = flat(c_out):add(flat(c_out):sub(flat(r_out)):mul(wt)):view(shape)
    end
    if o2.cfg ~= 0 then
      local u_out = self:eval(x, p, nil, ctx)
      out = core.lincomb({ out, c_out, u_out }, { 1, o2.cfg, -o2.cfg })
    end
    return out
  end
  g.describe = function(self)
    return ("scale %g%s, cfg %g"):format(self.opts.scale, self.opts.adaptive and " (adaptive)" or "", self.opts.cfg)
  end
  return g
end

M.methods = { classifier = M.classifier, elucd = M.elucd, gfcg = M.gfcg }

return M
