-- Diffusion Tree Sampling (DTS) and DTS* on the standard tilted mixture (diffuse.steer.target):
--   * DTS (tree built with uniform selection, sampled by Boltzmann descent) and adaptive DTS:
--     sliced Wasserstein distance of 2000 draws to exact samples of p(x) exp(r(x)) / Z, against
--     NFE, next to plain sampling;
--   * DTS*: best reward found against NFE, next to best-of-N at the same NFE (reward peaked at
--     (3.5, 3.5), away from the mixture's mass).
--
--   lua5.4 examples/steer_dts.lua              the mixture tables (a few seconds)
--   lua5.4 examples/steer_dts.lua compare      DTS against importance resampling of plain samples
--       at 1e5 NFE on the standard and the far reward (about 15 s)
--   lua5.4 examples/steer_dts.lua fashion [nfe] [out_dir]
--       DTS and DTS* on the Fashion-MNIST denoiser, reward log p(class 7 = sneaker | x0); writes
--       a PNG grid (row 1: plain samples, row 2: DTS draws, row 3: the DTS* best leaves) to
--       build/examples/steer_dts_fashion.png; then best-of-N with three times the NFE
local diffuse = require("diffuse")
local steer = require("diffuse.steer")
local target = steer.target

local function mean(t)
  local s = 0
  for _, v in ipairs(t) do s = s + v end
  return s / #t
end

local function mixture()
  local p = target.mixture_problem()
  local exact = p.tilted:sample(4000, { seed = 5 })
  local chain = p.chain{ steps = 20 }
  local c = chain:fork(3)
  print(("tilted mixture, 20 steps; distance of 2000 samples to the exact target (plain sampling %.3f, exact %.3f)")
    :format(target.sliced_wasserstein(c:run(c:prior(2000), 1), exact),
      target.sliced_wasserstein(p.tilted:sample(2000, { seed = 11 }), exact)))
  print("mean over seeds 1..3:")
  print(("%8s  %12s  %12s  %12s"):format("NFE", "DTS uniform", "DTS adaptive", "log Z est."))
  for _, nfe in ipairs({ 1000, 4000, 16000, 64000 }) do
    local row, values = { {}, {} }, {}
    for seed = 1, 3 do
      for j, sel in ipairs({ "uniform", "boltzmann" }) do
        local res = steer.dts{ chain = chain, reward = p.reward, lambda = p.lambda, nfe = nfe, select = sel,
          samples = 2000, seed = seed, batch = 64 }
        row[j][seed] = target.sliced_wasserstein(res.x, exact)
        if sel == "uniform" then values[seed] = res.value end
      end
    end
    print(("%8d  %12.3f  %12.3f  %12.3f"):format(nfe, mean(row[1]), mean(row[2]), mean(values)))
  end

  local pf = target.mixture_problem{ reward = steer.rewards.gaussian{ mean = { 3.5, 3.5 }, precision = 1 } }
  local cf = pf.chain{ steps = 20 }
  print("\nbest reward found (mean of 3 seeds; the maximum is 0)")
  print(("%8s  %10s  %10s"):format("NFE", "DTS*", "best-of-N"))
  for _, nfe in ipairs({ 1000, 4000, 16000 }) do
    local star, bon = {}, {}
    for seed = 1, 3 do
      star[seed] = steer.dts_star{ chain = cf, reward = pf.reward, nfe = nfe, batch = 32, seed = seed }.best.reward
      local b = cf:fork(100 + seed)
      local r = b:reward(pf.reward, b:run(b:prior(nfe // 20), 1))
      bon[seed] = math.max(table.unpack(r))
    end
    print(("%8d  %10.3f  %10.3f"):format(nfe, mean(star), mean(bon)))
  end
end

local function fashion(nfe, out_dir)
  local net, err = diffuse.models.load("fashion-denoiser")
  if not net then
    print("steer_dts fashion: " .. tostring(err))
    return
  end
  local reward = steer.rewards.class_logprob{ class = 7 }
  local chain = steer.chain.new{ model = net, shape = { 1, 28, 28 }, steps = 20, seed = 1 }
  local t0 = diffuse.wtime()
  local res = steer.dts{ chain = chain, reward = reward, nfe = nfe, batch = 128, samples = 8, progress = true }
  local star = steer.dts_star{ chain = chain, reward = reward, nfe = nfe, batch = 128, samples = 8 }
  local c = chain:fork(7)
  local plain = c:run(c:prior(8), 1)
  local pr = c:reward(reward, plain)
  print(("NFE %d each, %.1f s"):format(nfe, diffuse.wtime() - t0))
  print(("mean log p(sneaker | x): plain %.3f, DTS draws %.3f, DTS* best 8 %.3f (best %.3f)"):format(mean(pr),
    mean(res.rewards), mean(star.rewards), star.best.reward))
  print(tostring(res.tree))
  -- best-of-N with three times DTS*'s NFE, in batches of 100
  local b = chain:fork(51)
  local best = -math.huge
  for _ = 1, math.max(1, 3 * nfe // (20 * 100)) do
    for _, v in ipairs(b:reward(reward, b:run(b:prior(100), 1))) do best = math.max(best, v) end
  end
  print(("best reward: DTS* %.3f at %d NFE, best-of-N %.3f at %d NFE"):format(star.best.reward, star.nfe, best, b.nfe))
  local grid = diffuse.zeros({ 24, 1, 28, 28 })
  grid:narrow(1, 1, 8):copy_(plain)
  grid:narrow(1, 9, 8):copy_(res.x)
  grid:narrow(1, 17, 8):copy_(star.x)
  os.execute("mkdir -p '" .. out_dir .. "'")
  local path = out_dir .. "/steer_dts_fashion.png"
  assert(diffuse.image.write_grid(path, grid:clamp(-1, 1), { nrow = 8 }))
  print("wrote " .. path .. " (rows: plain, DTS, DTS*)")
end

-- DTS against importance resampling (IS) of plain samples at the same NFE.
local function compare()
  local rewards = {
    standard = nil,
    far = steer.rewards.gaussian{ mean = { 3.5, 3.5 }, precision = 1 },
  }
  local nfe, steps = 100000, 20
  print(("sliced W2 of 2000 draws to the tilted target at %d NFE, seeds 1..3"):format(nfe))
  print(("%-9s %-6s  %-22s %-22s %-22s %-22s"):format("problem", "IS ESS", "IS", "DTS uniform",
    "DTS uniform a.8 be10", "adaptive DTS"))
  for _, name in ipairs({ "standard", "far" }) do
    local p = target.mixture_problem{ reward = rewards[name] }
    local exact = p.tilted:sample(4000, { seed = 5 })
    local chain = p.chain{ steps = steps }
    local cols, ess = { {}, {}, {}, {} }, 0
    for seed = 1, 3 do
      local c = chain:fork(200 + seed)
      local x = c:run(c:prior(nfe // steps), 1)
      local r = c:reward(p.reward, x)
      local lw = {}
      for i = 1, #r do lw[i] = p.lambda * r[i] end
      ess = ess + steer.weights.ess(lw) / 3
      local idx = steer.weights.multinomial(lw, 2000, steer.weights.stream(seed, 9))
      cols[1][seed] = target.sliced_wasserstein(x:gather(idx), exact)
      local runs = { { select = "uniform" }, { select = "uniform", alpha = 0.8, branch_every = 10 }, {} }
      for j, o in ipairs(runs) do
        o.chain, o.reward, o.lambda, o.nfe, o.samples, o.seed = chain, p.reward, p.lambda, nfe, 2000, seed
        cols[j + 1][seed] = target.sliced_wasserstein(steer.dts(o).x, exact)
      end
    end
    local cells = {}
    for j = 1, 4 do
      table.sort(cols[j])
      cells[j] = ("%.3f (%.3f..%.3f)"):format(mean(cols[j]), cols[j][1], cols[j][3])
    end
    print(("%-9s %-6.0f  %-22s %-22s %-22s %-22s"):format(name, ess, cells[1], cells[2], cells[3], cells[4]))
  end
end

if arg and arg[1] == "compare" then
  compare()
elseif arg and arg[1] == "fashion" then
  fashion(math.tointeger(tonumber(arg[2] or 4000)), arg[3] or "build/examples")
else
  mixture()
end
