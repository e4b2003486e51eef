-- FK steering and Feynman-Kac correctors on the standard tilted-mixture problem, measured
-- against exact samples of their targets; or (arg "fashion") FK steering of the shipped
-- Fashion-MNIST denoiser towards a class of the shipped classifier, written as a PNG grid.
--
--   lua5.4 examples/steer_fk.lua            # a few seconds: MMD^2 to the targets vs particles
--   lua5.4 examples/steer_fk.lua table      # about a minute: the measured table of docs/steer-smc.md
--   lua5.4 examples/steer_fk.lua fashion [class] [particles]
--                                           # build/steer_fk_fashion.png
-- (with LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='build/?.so;;' from the repository root)
local diffuse = require("diffuse")
local steer = require("diffuse.steer")
local target = steer.target

if arg[1] == "fashion" then
  local k = math.tointeger(tonumber(arg[2] or 7)) or 7
  local K = math.tointeger(tonumber(arg[3] or 16)) or 16
  local model, info = diffuse.models.load("fashion-denoiser")
  if not model then
    io.stderr:write("steer_fk: ", info, "\n")
    return
  end
  local classes = diffuse.data.fashion_mnist_classes()
  local reward = steer.rewards.class_logprob{ class = k }
  local t0 = diffuse.wtime()
  local plain = steer.fk{ model = model, shape = { 784 }, steps = 20, reward = reward, lambda = 0, particles = K, seed = 1 }
  local r = steer.fk{ model = model, shape = { 784 }, steps = 20, reward = reward, lambda = 10, particles = K,
    resample_steps = { start = 4, stop = 18, interval = 2 }, ess_threshold = 0.5, seed = 1 }
  local function mean(v) local s = 0; for _, a in ipairs(v) do s = s + a end; return s / #v end
  print(("class %d (%s), %d particles, 20 steps"):format(k, classes[k + 1] or "?", K))
  print(("  plain sampling:  mean log p(class | x) %.3f, best %.3f"):format(mean(plain.rewards), plain.best.reward))
  print(("  FK steering:     mean log p(class | x) %.3f, best %.3f (lambda 10, %d resamplings, %d NFE)"):format(
    mean(r.rewards), r.best.reward, r.resample_count, r.nfe))
  local out_dir = "build"
  os.execute("mkdir -p " .. out_dir)
  local imgs = diffuse.zeros(2 * K, 784)
  imgs:narrow(1, 1, K):copy_(plain.x)
  imgs:narrow(1, K + 1, K):copy_(r.x)
  local path = out_dir .. "/steer_fk_fashion.png"
  assert(diffuse.image.write_grid(path, imgs:clamp(-1, 1):view(2 * K, 1, 28, 28), { nrow = K }))
  print(("wrote %s (top row: plain, bottom row: FK steering) in %.1f s"):format(path, diffuse.wtime() - t0))
  return
end

-- The mixture problem: four Gaussians, reward -|x - (2, 2)|^2 / 8, lambda = 1.
local p = target.mixture_problem()
local g = p.gmm
local N = arg[1] == "table" and 2048 or 1024

-- N samples pooled from N / K runs of K particles each.
local function pooled(method, o, K)
  local out
  for r = 1, N // K do
    local opts = { particles = K, seed = r }
    for key, v in pairs(o) do opts[key] = v end
    local res = steer[method](opts)
    out = out or diffuse.zeros(N, 2)
    out:narrow(1, (r - 1) * K + 1, K):copy_(res.x)
  end
  return out
end
local function mmd(a, b) return target.mmd(a, b, 1) end

if arg[1] == "table" then
  -- The measured table: MMD^2 (bandwidth 1) and sliced W2 to exact samples, N = 2048 pooled.
  local function row(name, x, ex, nfe)
    print(("| %s | %d | %.5f | %.3f |"):format(name, nfe, mmd(x, ex), target.sliced_wasserstein(x, ex, { seed = 3 })))
  end
  local ex = p.tilted:sample(N, { seed = 11 })
  print("| FK steering, tilted mixture (lambda 1, 50 steps) | NFE per run | MMD^2 | SW2 |\n|---|---|---|---|")
  row("exact vs exact", p.tilted:sample(N, { seed = 12 }), ex, 0)
  local base = { chain = p.chain{ steps = 50 }, reward = p.reward, lambda = p.lambda }
  for _, K in ipairs({ 1, 4, 16, 64, 256 }) do
    row(("diff, every step, K = %d%s"):format(K, K == 1 and " (plain sampling)" or ""), pooled("fk", base, K), ex, 50 * K)
  end
  local function with(extra) return require("diffuse.util").merge(base, extra) end
  row("diff, ESS < 0.5, K = 64", pooled("fk", with{ ess_threshold = 0.5 }, 64), ex, 3200)
  row("diff, multinomial, K = 64", pooled("fk", with{ resampling = "multinomial" }, 64), ex, 3200)
  for _, pot in ipairs({ "max", "sum", "plain" }) do
    row(("%s, steps 20/30/40, ESS < 0.5, K = 64"):format(pot),
      pooled("fk", with{ potential = pot, resample_steps = { start = 20, stop = 40, interval = 10 }, ess_threshold = 0.5 }, 64), ex, 3200)
  end
  row("importance sampling only (resample_steps = {}), K = 64", pooled("fk", with{ resample_steps = {} }, 64), ex, 3200)
  local w, cls = 3, 1
  local cex = target.cfg_samples(g, cls, w, N, 1)
  local aex = target.annealed_samples(g, 2, N, 1)
  print("\n| FKC (logSNR grid, ESS < 0.5) | NFE per run | MMD^2 | SW2 |\n|---|---|---|---|")
  row("CFG w = 3 class 1: exact vs exact", target.cfg_samples(g, cls, w, N, 2), cex, 0)
  for _, steps in ipairs({ 50, 200 }) do
    local o = { chain = p.chain{ steps = steps, spacing = "logSNR", cond = cls }, target = "cfg", scale = w, ess_threshold = 0.5 }
    for _, K in ipairs({ 16, 64, 256 }) do row(("CFG, %d steps, K = %d"):format(steps, K), pooled("fkc", o, K), cex, 2 * K * steps) end
    o.smc = false
    row(("CFG, %d steps, plain (no weights)"):format(steps), pooled("fkc", o, 64), cex, 2 * 64 * steps)
    o.smc, o.kernel = true, "x0"
    row(("CFG, %d steps, K = 64, kernel x0 (DDIM eta 1)"):format(steps), pooled("fkc", o, 64), cex, 2 * 64 * steps)
  end
  row("anneal beta = 2: exact vs exact", target.annealed_samples(g, 2, N, 2), aex, 0)
  for _, steps in ipairs({ 50, 200 }) do
    local o = { chain = p.chain{ steps = steps, spacing = "logSNR" }, target = "anneal", beta = 2, ess_threshold = 0.5 }
    for _, K in ipairs({ 16, 64, 256 }) do row(("anneal, %d steps, K = %d"):format(steps, K), pooled("fkc", o, K), aex, K * steps) end
    o.smc = false
    row(("anneal, %d steps, plain (no weights)"):format(steps), pooled("fkc", o, 64), aex, 64 * steps)
  end
  return
end

local exact = p.tilted:sample(N, { seed = 11 })
print(("FK steering to p(x) exp(r(x)) / Z: MMD^2 to exact samples (%d pooled; exact vs exact %.5f)"):format(
  N, mmd(p.tilted:sample(N, { seed = 12 }), exact)))
for _, K in ipairs({ 1, 4, 16, 64 }) do
  local x = pooled("fk", { chain = p.chain{ steps = 50 }, reward = p.reward, lambda = p.lambda }, K)
  print(("  particles %3d   %.5f%s"):format(K, mmd(x, exact), K == 1 and "   (plain sampling)" or ""))
end

-- CFG target q_u^(1-w) q_c^w, w = 3, class 1: exact samples by rejection from q_c.
local w, cls = 3, 1
local cfg_exact = target.cfg_samples(g, cls, w, N, 1)
print(("FKC, CFG target w = %d on class %d: MMD^2 to rejection samples"):format(w, cls))
local o = { chain = p.chain{ steps = 50, spacing = "logSNR", cond = cls }, target = "cfg", scale = w, ess_threshold = 0.5 }
for _, K in ipairs({ 16, 64 }) do
  print(("  FKC particles %3d   %.5f"):format(K, mmd(pooled("fkc", o, K), cfg_exact)))
end
o.smc = false
print(("  plain CFG (no weights) %.5f"):format(mmd(pooled("fkc", o, 64), cfg_exact)))
