-- Rewards for steering.
--
-- A reward is a function r(x, ctx) -> one number per row of the batch x (a Lua list or a 1-d
-- tensor).  x is a batch of samples (or of x0 estimates: the look-ahead value of an
-- intermediate state x_t is r(x0_hat(x_t))); ctx, when the method passes it, says where the
-- batch comes from: ctx.x_t (the noisy state), ctx.point (its t, alpha, sigma), ctx.step.
-- Higher is better; -inf is allowed (a log-probability of 0), NaN is an error.
--
-- The built-ins are callable tables that also say what they are (r.kind), so the closed-form
-- tilted targets (diffuse.steer.target) can read their parameters.
local core = require("diffuse.core")
local util = require("diffuse.util")

local M = {}
local fail, is_tensor, shape_str = util.fail, util.is_tensor, util.shape_str

local Reward = {}
Reward.__index = Reward
M.Reward = Reward
Reward.__call = function(self, x, ctx) return self.fn(x, ctx) end
Reward.__tostring = function(self) return "diffuse reward: " .. self.describe end

local function new_reward(kind, describe, fn, fields)
  local r = setmetatable(fields or {}, Reward)
  r.kind, r.describe, r.fn = kind, describe, fn
  return r
end
M.new = new_reward

local function callable(r)
  if type(r) == "function" then return true end
  local mt = getmetatable(r)
  return mt ~= nil and mt.__call ~= nil
end
M.callable = callable

-- reward(x, ctx) as a checked Lua list of #x numbers.
function M.evaluate(reward, x, ctx)
  if not callable(reward) then fail("reward", ("a reward must be a function(x, ctx), got %s"):format(type(reward)), 3) end
  local v = reward(x, ctx)
  if is_tensor(v) then
    if v:dim() ~= 1 then fail("reward", ("the reward returned a %s tensor, expected one value per row (1-d)"):format(shape_str(v)), 3) end
    v = v:totable()
  end
  if type(v) ~= "table" then fail("reward", ("the reward returned %s, expected a list or a 1-d tensor"):format(type(v)), 3) end
  if #v ~= #x then fail("reward", ("the reward returned %d values for %d rows"):format(#v, #x), 3) end
  for i = 1, #v do
    local a = v[i]
    if type(a) ~= "number" or a ~= a or a == math.huge then
      fail("reward", ("value %d is %s (rewards must be numbers, finite or -inf)"):format(i, tostring(a)), 3)
    end
  end
  return v
end

-- x as (N, D) floats.
local function flat(x)
  local n = #x
  return x:reshape(n, x:numel() // math.max(n, 1))
end

-- A parameter given as one number or a list of D numbers -> list of D numbers.
local function per_dim(F, name, v, D)
  local out = {}
  if type(v) == "number" then
    for j = 1, D do out[j] = v end
  elseif is_tensor(v) then
    out = v:reshape(v:numel()):totable()
  elseif type(v) == "table" then
    for j = 1, #v do out[j] = v[j] end
  else
    fail(F, ("'%s' must be a number or a list of %d numbers, got %s"):format(name, D, type(v)), 3)
  end
  if #out ~= D then fail(F, ("'%s' has %d entries, expected %d (the length of 'mean')"):format(name, #out, D), 3) end
  for j = 1, D do
    if type(out[j]) ~= "number" or out[j] ~= out[j] or math.abs(out[j]) == math.huge then
      fail(F, ("'%s'[%d] must be a finite number"):format(name, j), 3)
    end
  end
  return out
end

local function vector(F, name, v)
  if is_tensor(v) then v = v:reshape(v:numel()):totable() end
  if type(v) ~= "table" or #v < 1 then fail(F, ("'%s' must be a list of numbers or a tensor"):format(name), 3) end
  return per_dim(F, name, v, #v)
end

-- Gaussian-shaped reward r(x) = -1/2 sum_j a_j (x_j - m_j)^2 (a log-density up to a constant):
-- gaussian{mean = {...}, precision = a (a number or one per dimension, >= 0)}.
function M.gaussian(o)
  local F = "rewards.gaussian"
  util.check_options(F, o, { mean = true, precision = true }, 2)
  if o == nil or o.mean == nil then fail(F, "'mean' is required (a list of numbers)", 2) end
  local m = vector(F, "mean", o.mean)
  local D = #m
  local a = per_dim(F, "precision", o.precision or 1, D)
  for j = 1, D do if a[j] < 0 then fail(F, ("precision[%d] must be >= 0"):format(j), 2) end end
  local mt, at = core.tensor({ m }), core.tensor({ a })
  return new_reward("gaussian", ("gaussian (D = %d)"):format(D), function(x)
    local xf = flat(x)
    if xf:size(2) ~= D then fail(F, ("x has %d values per row, the reward %d"):format(xf:size(2), D), 2) end
    return xf:sub(mt):square_():mul_(at):sum(2):mul_(-0.5):reshape(#x)
  end, { mean = m, precision = a, D = D })
end

-- Linear reward r(x) = w . x + b: linear{w = {...}, b = 0}.
function M.linear(o)
  local F = "rewards.linear"
  util.check_options(F, o, { w = true, b = true }, 2)
  if o == nil or o.w == nil then fail(F, "'w' is required (a list of numbers)", 2) end
  local w = vector(F, "w", o.w)
  local b = o.b or 0
  if type(b) ~= "number" then fail(F, "'b' must be a number", 2) end
  local D = #w
  local wt = core.tensor({ w }):t():contiguous()
  return new_reward("linear", ("linear (D = %d)"):format(D), function(x)
    local xf = flat(x)
    if xf:size(2) ~= D then fail(F, ("x has %d values per row, the reward %d"):format(xf:size(2), D), 2) end
    return xf:matmul(wt):reshape(#x):add_(b)
  end, { w = w, b = b, D = D })
end

-- A set of class labels from class = k or classes = {k, ...}.
local function class_set(F, o, level)
  level = level or 3
  if (o.class == nil) == (o.classes == nil) then fail(F, "give 'class' (a label) or 'classes' (a list of labels)", level) end
  local list = o.classes or { o.class }
  if type(list) ~= "table" or #list < 1 then fail(F, "'classes' must be a non-empty list of labels", level) end
  for i, c in ipairs(list) do
    if math.type(c) ~= "integer" then fail(F, ("class labels must be integers, got %s"):format(tostring(c)), level) end
    list[i] = c
  end
  return list
end

-- log p(y in S | x) for a labelled Gaussian mixture at t = 0 (closed form): mixture_class{gmm,
-- class | classes}.
function M.mixture_class(o)
  local F = "rewards.mixture_class"
  util.check_options(F, o, { gmm = true, class = true, classes = true }, 2)
  if o == nil or type(o.gmm) ~= "table" or not o.gmm.labels then fail(F, "'gmm' must be a labelled diffuse gmm", 2) end
  local g = o.gmm
  local list = class_set(F, o)
  for _, c in ipairs(list) do g:_group(F, c, 2) end
  local weight = {}
  for k = 1, g.K do weight[g.labels[k]] = (weight[g.labels[k]] or 0) + g.weights[k] end
  return new_reward("mixture_class", ("log p(class in {%s} | x) under a mixture"):format(table.concat(list, ", ")),
    function(x)
      local lx = g:log_prob(x):totable()
      local parts = {}
      for j, c in ipairs(list) do
        local lc = g:log_prob(x, { cond = c }):totable()
        parts[j] = { lc, math.log(weight[c]) }
      end
      local out = {}
      for i = 1, #x do
        local terms = {}
        for j = 1, #parts do terms[j] = parts[j][1][i] + parts[j][2] end
        out[i] = require("diffuse.steer.weights").logsumexp(terms) - lx[i]
      end
      return out
    end, { gmm = g, classes = list })
end

-- Row-wise log-softmax summed over a set of columns: log sum_{c in S} softmax(logits)_c.
local function log_prob_of(logits, cols)
  local n = #logits
  local all = logits:logsumexp(2):reshape(n):totable()
  local L = logits:totable()
  local out = {}
  local wt = require("diffuse.steer.weights")
  for i = 1, n do
    local terms = {}
    for j, c in ipairs(cols) do terms[j] = L[i][c] end
    out[i] = wt.logsumexp(terms) - all[i]
  end
  return out
end

local function load_net(F, name, given, level)
  level = level or 3
  if given ~= nil then
    if type(given) ~= "table" or type(given.forward) ~= "function" or not given.num_classes then
      fail(F, "'classifier' must be a diffuse.nn classifier (forward, num_classes)", level)
    end
    return given
  end
  local net, err = require("diffuse.models").load(name)
  if not net then fail(F, err, level) end
  return net
end

local function columns(F, net, list, level)
  level = level or 3
  local cols = {}
  for i, c in ipairs(list) do
    if c < 0 or c >= net.num_classes then
      fail(F, ("class %d is out of range (the classifier has classes 0..%d)"):format(c, net.num_classes - 1), level)
    end
    cols[i] = c + 1
  end
  return cols
end

local function images(net, x)
  local n = #x
  local side = net.image_size or 28
  local ch = net.in_channels or 1
  return x:reshape(n, ch, side, side)
end

-- log p(y in S | x) under the shipped Fashion-MNIST classifier (or `classifier`, a diffuse.nn
-- classifier) on clean images in [-1, 1]: class_logprob{class = k | classes = {...}}.
-- The options every classifier reward takes: the class set, the network (default: the shipped
-- one named `default`) and the logit columns of the set.
local function classifier_options(F, o, default)
  util.check_options(F, o, { class = true, classes = true, classifier = true }, 3)
  if o == nil then fail(F, "options table expected", 3) end
  local list = class_set(F, o, 4)
  local net = load_net(F, default, o.classifier, 4)
  return list, net, columns(F, net, list, 4)
end

function M.class_logprob(o)
  local list, net, cols = classifier_options("rewards.class_logprob", o, "fashion-classifier")
  return new_reward("class_logprob", ("log p(class in {%s} | x)"):format(table.concat(list, ", ")), function(x)
    return log_prob_of(net:forward(images(net, x)), cols)
  end, { classes = list, net = net })
end

-- log p(y in S | x_t) under the noise-conditioned classifier (default: the shipped
-- fashion-tclassifier) evaluated on the noisy state itself: it reads ctx.x_t and ctx.point
-- when the method passes them (an intermediate state), and x at t = 0 otherwise.
function M.noisy_class_logprob(o)
  local list, net, cols = classifier_options("rewards.noisy_class_logprob", o, "fashion-tclassifier")
  local time_input = require("diffuse.nn").time_input
  local clean = { t = 0, alpha = 1, sigma = 0 }
  return new_reward("noisy_class_logprob", ("log p(class in {%s} | x_t)"):format(table.concat(list, ", ")),
    function(x, ctx)
      local xt, p = x, clean
      if ctx and ctx.x_t and ctx.point then xt, p = ctx.x_t, ctx.point end
      return log_prob_of(net:forward(images(net, xt), net.time_cond and time_input(p) or nil), cols)
    end, { classes = list, net = net })
end

-- Compressibility, a reward no gradient reaches: minus the size in kilobytes (1000 bytes) of
-- each image encoded as an 8-bit grey PNG, exactly the file diffuse.image.write writes
-- (values in [-1, 1], clamped).  x: (N, 1, H, W), or (N, H*W) with a square H.  The encoding
-- runs in C, in memory (core._image.png_sizes).  png_size{} (no options).
function M.png_size(o)
  local F = "rewards.png_size"
  util.check_options(F, o, {}, 2)
  local sizes = core._image.png_sizes
  return new_reward("png_size", "minus the PNG size in kB (compressibility)", function(x)
    if not is_tensor(x) then fail(F, ("x must be a tensor, got %s"):format(type(x)), 2) end
    local n = #x
    local imgs
    if x:dim() == 4 and x:size(2) == 1 then
      imgs = x
    elseif x:dim() == 2 then
      local side = math.floor(math.sqrt(x:size(2)) + 0.5)
      if side * side ~= x:size(2) then
        fail(F, ("x is %s: rows of %d values are not square images"):format(shape_str(x), x:size(2)), 2)
      end
      imgs = x:reshape(n, 1, side, side)
    else
      fail(F, ("x is %s, expected (N, 1, H, W) or (N, H*W) grey images"):format(shape_str(x)), 2)
    end
    local out = sizes(imgs)
    for i = 1, n do out[i] = -out[i] / 1000 end
    return out
  end)
end

return M
