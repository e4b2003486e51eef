-- Training loops for diffuse.nn networks: denoisers (eps, v or x0 objective under a schedule,
-- label dropout for classifier-free guidance, EMA) and classifiers (clean, or noise-conditioned
-- on x_t and t).  Everything random comes from the counter-based generator with the run's
-- seed and the step number, so a run is deterministic and a resumed run continues exactly as
-- an uninterrupted one.  Progress goes to stderr with the ETA; Ctrl-C saves a checkpoint (when
-- one is configured) and returns cleanly.
local core = require("diffuse.core")
local nn = require("diffuse.nn")
local progress = require("diffuse.progress")

local M = {}

local function fail(fname, msg, level) error(("%s: %s"):format(fname, msg), (level or 1) + 1) end

local function check(fname, o, defaults, required)
  if type(o) ~= "table" then fail(fname, "options table expected", 3) end
  for k in pairs(o) do
    if defaults[k] == nil and not required[k] then
      local names = {}
      for n in pairs(defaults) do names[#names + 1] = n end
      for n in pairs(required) do names[#names + 1] = n end
      table.sort(names)
      fail(fname, ("unknown option '%s'; valid: %s"):format(tostring(k), table.concat(names, ", ")), 3)
    end
  end
  for k in pairs(required) do
    if o[k] == nil then fail(fname, ("option '%s' is required"):format(k), 3) end
  end
  local r = {}
  for k, v in pairs(defaults) do r[k] = v end
  for k, v in pairs(o) do r[k] = v end
  for k, v in pairs(defaults) do
    if v ~= false and type(r[k]) ~= type(v) then
      fail(fname, ("option '%s' must be a %s, got %s"):format(k, type(v), type(r[k])), 3)
    end
  end
  return r
end

-- Row indices of batch `step`: uniform over the data set, from (seed, step).
local function batch_rows(n, b, seed, step)
  local u = core.rand({ b, 1 }, { seed = seed, draw = 4 * step })
  local rows = {}
  for i = 1, b do rows[i] = math.min(n, math.floor(u:get(i, 1) * n) + 1) end
  return rows
end

local function pick_labels(labels, rows)
  if not labels then return nil end
  local out = {}
  for i, r in ipairs(rows) do out[i] = labels[r] end
  return core.tensor(out)
end

-- Learning rate at step s: linear warm-up, then constant (or cosine decay to lr_min).
local function lr_at(o, s)
  local lr = o.lr
  if o.warmup > 0 and s <= o.warmup then return lr * s / o.warmup end
  if o.decay == "cosine" then
    local f = (s - o.warmup) / math.max(1, o.steps - o.warmup)
    return o.lr_min + 0.5 * (lr - o.lr_min) * (1 + math.cos(math.pi * f))
  end
  return lr
end

-- Noised batch: x_t = alpha x0 + sigma eps with t ~ U(t_min, t_max) per row.  Returns x_t, the
-- t tensor, and the column tensors alpha, sigma and the noise.
local function noised(x0, schedule, o, step)
  local b = #x0
  local u = core.rand({ b, 1 }, { seed = o.seed, draw = 4 * step + 1 })
  local ts, as, ss = {}, {}, {}
  for i = 1, b do
    local t = o.t_min + (o.t_max - o.t_min) * u:get(i, 1)
    ts[i], as[i], ss[i] = t, schedule:alpha(t), schedule:sigma(t)
  end
  local a, s = core.tensor(as):view(b, 1), core.tensor(ss):view(b, 1)
  local flat = x0:reshape(b, -1)
  local eps = core.randn(flat:shape(), { seed = o.seed, draw = 4 * step + 2 })
  local xt = flat:mul(a):add_(eps:mul(s))
  return xt, core.tensor(ts), a, s, eps, flat
end

-- Runs `body(step)` for steps start+1 .. o.steps with progress, checkpoints and Ctrl-C.
local function loop(fname, o, parts, body)
  local start = 0
  if o.checkpoint and o.resume then
    local f = io.open(o.checkpoint, "rb")
    if f then
      f:close()
      local md, err = nn.load_state(o.checkpoint, parts)
      if not md then fail(fname, err, 3) end
      start = tonumber(md["train.step"]) or 0
    end
  end
  local function save(step)
    if not o.checkpoint then return end
    local ok, err = nn.save_state(o.checkpoint, { model = parts.model, optimizer = parts.optimizer,
      ema = parts.ema, metadata = { ["train.step"] = tostring(step), ["train.seed"] = tostring(o.seed) } })
    if not ok then fail(fname, err, 4) end
  end
  local bar = o.progress and progress.new{ total = o.steps, label = o.label, unit = "img", scale = o.batch }
  if bar then bar:resume_from(start) end
  local history, recent, stopped = {}, {}, false
  local last = start
  progress.with_interrupt(function(stop)
    for step = start + 1, o.steps do
      local loss = body(step)
      recent[#recent + 1] = loss
      last = step
      if step % o.log_every == 0 or step == o.steps then
        local sum = 0
        for _, l in ipairs(recent) do sum = sum + l end
        history[#history + 1] = { step = step, loss = sum / #recent }
        recent = {}
      end
      if bar then bar:update(step, { loss = loss, lr = parts.optimizer.lr }) end
      if o.on_step then o.on_step(step, loss) end
      if o.checkpoint_every > 0 and step % o.checkpoint_every == 0 then save(step) end
      if stop() then
        stopped = true
        break
      end
    end
  end)
  if last > start then save(last) end
  if bar then bar:finish(stopped and { stopped = "Ctrl-C" } or nil) end
  return { steps = last, history = history, stopped = stopped }
end

-- One optimisation step from the loss gradient: backward, clipping, learning rate, AdamW, EMA.
local function update(net, opt, ema, o, step, loss, grad)
  net:zero_grad()
  net:backward(grad, { input_grad = false })
  if o.clip > 0 then nn.clip_grad_norm(net:parameters(), o.clip) end
  opt.lr = lr_at(o, step)
  opt:step()
  if ema then ema:update() end
  return loss
end

local common = {
  steps = 1000, batch = 128, lr = 2e-4, lr_min = 0.0, warmup = 0, decay = "constant", weight_decay = 0.0,
  clip = 1.0, ema = 0.999, seed = 0, checkpoint = false, checkpoint_every = 0, resume = true,
  progress = true, log_every = 100, label = "train", on_step = false,
}

local with = require("diffuse.util").merge

-- train.denoiser{net, images, labels, schedule, objective = "eps" | "v" | "x0",
--   t_min, t_max, steps, batch, lr, warmup, decay, weight_decay, clip, ema, seed, checkpoint,
--   checkpoint_every, resume, progress, log_every, label, on_step = function(step, loss)}
--   -> report {steps, history, stopped, ema}
-- The net is called as net:forward(x_t, t * time_input_scale, labels); label dropout is the
-- net's own (ResMLP's label_dropout option).  With `ema`, the returned report.ema holds the
-- averaged weights (report.ema:copy_to(net) before saving or sampling).
function M.denoiser(o)
  local F = "train.denoiser"
  o = check(F, o, with(common, { objective = "eps", t_min = 1e-3, t_max = false, labels = false }),
    { net = true, images = true, schedule = true })
  if o.objective ~= "eps" and o.objective ~= "v" and o.objective ~= "x0" then
    fail(F, ("objective must be eps, v or x0, got %s"):format(tostring(o.objective)), 2)
  end
  o.t_max = o.t_max or o.schedule.t_start
  local n = #o.images
  local net = o.net
  net:train()
  local opt = nn.AdamW(net, { lr = o.lr, weight_decay = o.weight_decay })
  local ema = o.ema > 0 and nn.EMA(net:parameters(), o.ema) or nil
  local report = loop(F, o, { model = net, optimizer = opt, ema = ema }, function(step)
    local rows = batch_rows(n, o.batch, o.seed, step)
    local x0 = o.images:gather(rows)
    local xt, t, a, s, eps, flat = noised(x0, o.schedule, o, step)
    local target
    if o.objective == "eps" then target = eps
    elseif o.objective == "x0" then target = flat
    else target = eps:mul(a):sub_(flat:mul(s)) end
    local pred = net:forward(xt, t, pick_labels(o.labels or nil, rows))
    local loss, grad = nn.mse(pred, target)
    return update(net, opt, ema, o, step, loss, grad)
  end)
  report.ema = ema
  return report
end

-- train.classifier{net, images, labels, schedule = false (clean) | a schedule (noise-
--   conditioned: trained on x_t and t), augment = function(x, step) -> x, ...common}
--   -> report.  The net is called as net:forward(x[, t]) and returns logits.
function M.classifier(o)
  local F = "train.classifier"
  o = check(F, o, with(common, { schedule = false, t_min = 1e-3, t_max = false, ema = 0.0, augment = false }),
    { net = true, images = true, labels = true })
  local n = #o.images
  local net = o.net
  net:train()
  local opt = nn.AdamW(net, { lr = o.lr, weight_decay = o.weight_decay })
  local ema = o.ema > 0 and nn.EMA(net:parameters(), o.ema) or nil
  if o.schedule then o.t_max = o.t_max or o.schedule.t_start end
  local shape = o.images:shape()
  local report = loop(F, o, { model = net, optimizer = opt, ema = ema }, function(step)
    local rows = batch_rows(n, o.batch, o.seed, step)
    local x = o.images:gather(rows)
    if o.augment then x = o.augment(x, step) end
    local logits
    if o.schedule then
      local xt, t = noised(x, o.schedule, o, step)
      shape[1] = o.batch
      logits = net:forward(xt:view(shape), t)
    else
      logits = net:forward(x)
    end
    local loss, grad = nn.cross_entropy(logits, pick_labels(o.labels, rows))
    return update(net, opt, ema, o, step, loss, grad)
  end)
  report.ema = ema
  return report
end

-- A batch of (N, C, H, W) images with each image mirrored left-right or not, by a coin from
-- (seed, step): the usual augmentation for Fashion-MNIST classifiers.
function M.random_flip(x, seed, step)
  local n, c, h, w = table.unpack(x:shape())
  local rev = {}
  for j = 1, w do rev[j] = w - j + 1 end
  local flipped = x:reshape(n * c * h, w):t():gather(rev):t():contiguous():view(n, c * h * w)
  local coin = core.rand({ n, 1 }, { seed = seed, draw = 4 * step + 3 })
  local m = {}
  for i = 1, n do m[i] = coin:get(i, 1) < 0.5 and 1 or 0 end
  local mask = core.tensor(m):view(n, 1)
  local flat = x:reshape(n, c * h * w)
  return flat:mul(mask):add_(flipped:mul(mask:mul(-1):add_(1))):view(n, c, h, w)
end

-- Fraction of rows whose argmax logit is the label: net:forward(x[, t]) in batches.
function M.accuracy(net, images, labels, opts)
  opts = opts or {}
  local b = opts.batch or 500
  local n = #images
  local right = 0
  local was = net.training
  net:eval()
  for i = 1, n, b do
    local m = math.min(b, n - i + 1)
    local x = images:narrow(1, i, m)
    local logits = opts.t and net:forward(x, opts.t) or net:forward(x)
    local _, idx = logits:max(2)
    for r = 1, m do
      if idx:get(r) - 1 == labels[i + r - 1] then right = right + 1 end
    end
  end
  if was then net:train() end
  return right / n
end

return M
