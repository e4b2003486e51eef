-- Searchers of diffuse.steer: reward against NFE for best-of-N, random / zero-order / path
-- noise search and SVDD.
--
--   lua5.4 examples/steer_search.lua            the standard tilted mixture (2-D, exact model;
--                                               a second or two): mean over 10 seeds of the
--                                               best reward each method finds per budget
--   lua5.4 examples/steer_search.lua fashion    the shipped Fashion-MNIST denoiser, reward
--                                               log p(class 8 "Bag" | x) under the shipped
--                                               classifier, and the PNG-size reward; writes
--                                               build/steer_search_fashion.png (a few seconds)
local diffuse = require("diffuse")
local steer = require("diffuse.steer")

local function mean(t)
  local s = 0
  for i = 1, #t do s = s + t[i] end
  return s / #t
end

local function mixture()
  local p = steer.target.mixture_problem()
  local steps, seeds = 10, 10
  -- Settings whose NFE is close to 40, 160 and 640 per search (10 steps per sample).
  local plans = {
    { "best-of-N (eta 1)", function(b, s) return steer.best_of_n{ chain = p.chain{ steps = steps }, reward = p.reward,
      n = ({ 4, 16, 64 })[b], seed = s } end },
    { "random search", function(b, s) return steer.random_search{ chain = p.chain{ steps = steps }, reward = p.reward,
      n = ({ 4, 16, 64 })[b], seed = s } end },
    { "zero-order (cos 0.9)", function(b, s)
      local N, K = ({ 3, 5, 9 })[b], ({ 1, 3, 7 })[b]
      return steer.zero_order{ chain = p.chain{ steps = steps }, reward = p.reward, candidates = N, iterations = K, seed = s }
    end },
    { "path search", function(b, s)
      local N, Mc = ({ 1, 3, 8 })[b], ({ 2, 3, 5 })[b]
      return steer.path_search{ chain = p.chain{ steps = steps }, reward = p.reward, paths = N, candidates = Mc, seed = s }
    end },
    { "SVDD (1 sample)", function(b, s) return steer.svdd{ chain = p.chain{ steps = steps }, reward = p.reward,
      n = 1, candidates = ({ 4, 18, 71 })[b], seed = s } end },
  }
  local plain = steer.best_of_n{ chain = p.chain{ steps = steps }, reward = p.reward, n = 1000, keep = 1000, seed = 99 }
  print(("tilted mixture, reward %s; plain samples: mean reward %.3f (max 0)"):format(tostring(p.reward),
    mean(plain.all_rewards)))
  print(("best reward found, mean over %d seeds (NFE per search in brackets)"):format(seeds))
  print(("%-22s %18s %18s %18s"):format("method", "budget ~40", "budget ~160", "budget ~640"))
  for _, plan in ipairs(plans) do
    local cells = {}
    for b = 1, 3 do
      local acc, nfe = 0, 0
      for s = 1, seeds do
        local r = plan[2](b, s)
        acc, nfe = acc + r.best.reward, r.nfe
      end
      cells[b] = ("%9.3f (%4d)"):format(acc / seeds, nfe)
    end
    print(("%-22s %18s %18s %18s"):format(plan[1], cells[1], cells[2], cells[3]))
  end
  -- The tilted-target baseline: best-of-N with importance resampling.
  local res = steer.best_of_n{ chain = p.chain{ steps = 20 }, reward = p.reward, n = 2000, select = "resample",
    keep = 2000, lambda = p.lambda, seed = 1 }
  local exact = p.tilted:sample(2000, { seed = 9 })
  print(("best-of-2000 resampled by exp(lambda r): sliced W2 to the exact tilted target %.3f (plain samples %.3f), ESS %.0f, %d NFE"):format(
    steer.target.sliced_wasserstein(res.x, exact), steer.target.sliced_wasserstein(p.gmm:sample(2000, { seed = 4 }), exact),
    res.ess, res.nfe))
end

local function fashion()
  local model = assert(diffuse.models.load("fashion-denoiser"))
  local class_reward = steer.rewards.class_logprob{ class = 8 }
  local base = { model = model, shape = { 784 }, steps = 10 }
  local function with(o)
    for k, v in pairs(base) do o[k] = v end
    return o
  end
  local rows = {}
  local function show(name, r)
    print(("%-34s %6d NFE   best %8.3f   mean of returned %8.3f"):format(name, r.nfe, r.best.reward, mean(r.rewards)))
    rows[#rows + 1] = r.x
  end
  print("Fashion-MNIST denoiser, 10 steps, reward log p(Bag | x):")
  local t0 = diffuse.wtime()
  local bon = steer.best_of_n(with{ reward = class_reward, n = 64, keep = 8, seed = 1 })
  print(("%-34s %6s       mean %8.3f"):format("plain samples (the 64 of best-of-64)", "", mean(bon.all_rewards)))
  show("best-of-64 (eta 1), top 8", bon)
  show("random search, 64 noises", steer.random_search(with{ reward = class_reward, n = 64, seed = 1 }))
  show("zero-order, 9 x 7", steer.zero_order(with{ reward = class_reward, candidates = 9, iterations = 7, seed = 1 }))
  show("path search, 8 paths x 4", steer.path_search(with{ reward = class_reward, paths = 8, candidates = 4, seed = 1 }))
  show("SVDD, 8 samples x 8 candidates", steer.svdd(with{ reward = class_reward, n = 8, candidates = 8, seed = 1 }))
  local png = steer.rewards.png_size()
  print("reward: minus the PNG size in kB (compressibility):")
  bon = steer.best_of_n(with{ reward = png, n = 64, keep = 8, seed = 1 })
  print(("%-34s %6s       mean %8.3f"):format("plain samples (the 64 of best-of-64)", "", mean(bon.all_rewards)))
  show("best-of-64 (eta 1), top 8", bon)
  show("SVDD, 8 samples x 8 candidates", steer.svdd(with{ reward = png, n = 8, candidates = 8, seed = 1 }))
  -- One grid row per run (up to 8 samples; blank cells where a search returns fewer).
  local grid = diffuse.full({ 8 * #rows, 1, 28, 28 }, -1)
  for i, x in ipairs(rows) do
    local k = math.min(#x, 8)
    grid:narrow(1, (i - 1) * 8 + 1, k):copy_(x:narrow(1, 1, k):clamp(-1, 1):reshape(k, 1, 28, 28))
  end
  os.execute("mkdir -p build")
  local path = "build/steer_search_fashion.png"
  assert(diffuse.image.write_grid(path, grid, { nrow = 8 }))
  print(("wrote %s (one row per run above), %.1f s"):format(path, diffuse.wtime() - t0))
end

if arg and arg[1] == "fashion" then fashion() else mixture() end
