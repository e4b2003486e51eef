-- Diffusion Tree Sampling at scale: a DTS run of 1e5 NFE on the Fashion-MNIST denoiser with the
-- reward log p(class k | x0) of the shipped classifier.  Prints the NFE/s, the fraction of wall
-- time spent inside the denoiser (the model is wrapped and timed) and inside the reward, the
-- peak memory of the process (VmHWM) and the tree's own bytes.
--   make bench   or   LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='build/?.so;;' lua5.4 examples/bench/dts_bench.lua [nfe] [batch]
-- Environment: DTS_BENCH_NFE (default 100000), DTS_BENCH_BATCH (default 256), DTS_BENCH_STEPS (default 20).
local diffuse = require("diffuse")
local steer = require("diffuse.steer")

local NFE = math.tointeger(tonumber(arg[1] or os.getenv("DTS_BENCH_NFE") or 100000))
local BATCH = math.tointeger(tonumber(arg[2] or os.getenv("DTS_BENCH_BATCH") or 256))
local STEPS = math.tointeger(tonumber(os.getenv("DTS_BENCH_STEPS") or 20))
local CLASS = 7 -- sneaker

local function status(key)
  local f = io.open("/proc/self/status")
  if not f then return nil end
  local text = f:read("a")
  f:close()
  local kb = text:match(key .. ":%s*(%d+)%s*kB")
  return kb and tonumber(kb) / 1024 or nil
end

local net, err = diffuse.models.load("fashion-denoiser")
if not net then
  print("dts_bench: " .. tostring(err) .. " (skipped)")
  return
end
-- the model, timed
local model_time, reward_time = 0, 0
local function timed_model(x, point, cond, ctx)
  local t0 = diffuse.wtime()
  local out = net(x, point, cond, ctx)
  model_time = model_time + diffuse.wtime() - t0
  return out
end
local classify = steer.rewards.class_logprob{ class = CLASS }
local function timed_reward(x, ctx)
  local t0 = diffuse.wtime()
  local out = classify(x, ctx)
  reward_time = reward_time + diffuse.wtime() - t0
  return out
end

-- the kernel's draws (noise + linear combination), timed through the chain class for the breakdown
local Chain = steer.chain.Chain
local move, move_time = Chain.move, 0
Chain.move = function(...)
  local t0 = diffuse.wtime()
  local out = move(...)
  move_time = move_time + diffuse.wtime() - t0
  return out
end

local rss0 = status("VmRSS")
local t0 = diffuse.wtime()
local res = steer.dts{ model = timed_model, predicts = net.predicts, schedule = net.schedule, shape = { 1, 28, 28 },
  steps = STEPS, reward = timed_reward, lambda = 1, nfe = NFE, batch = BATCH, samples = 64, seed = 1,
  progress = os.getenv("DTS_BENCH_PROGRESS") ~= nil }
local wall = diffuse.wtime() - t0
Chain.move = move
local s = res.stats
print(("DTS on fashion-denoiser: %d steps, branch every step, C = 1, alpha = 0.5, batch %d, reward log p(class %d | x0)"):format(
  STEPS, BATCH, CLASS))
print(("nfe %d in %d model calls, %d rewards in %d calls; %d rounds, %d rollouts"):format(res.nfe, res.calls,
  res.reward_evals, res.reward_calls, s.rounds, s.rollouts))
print(("wall %.1f s, %.0f NFE/s"):format(wall, res.nfe / wall))
print(("time in the denoiser %.1f%%, in the reward (classifier) %.1f%%, in the kernel's draws %.1f%%, "
  .. "tree bookkeeping and batch assembly %.1f%%"):format(100 * model_time / wall, 100 * reward_time / wall,
  100 * move_time / wall, 100 * (wall - model_time - reward_time - move_time) / wall))
print(("tree: %d nodes, %d leaves, %d root children, max children %d; %.1f MB (x %.1f MB, bookkeeping %.1f MB), %.0f bytes/node"):format(
  s.nodes, s.leaves, s.root_children, s.max_children, s.bytes / 2 ^ 20, s.x_bytes / 2 ^ 20, s.bookkeeping_bytes / 2 ^ 20,
  s.bytes_per_node))
print(("peak memory (VmHWM) %.0f MB (at start %.0f MB RSS); Lua heap now %.0f MB"):format(status("VmHWM") or -1,
  rss0 or -1, collectgarbage("count") / 1024))
local mean = 0
for _, r in ipairs(res.rewards) do mean = mean + r end
print(("64 Boltzmann samples: mean reward %.3f; best leaf %.4f; root value %.3f"):format(mean / #res.rewards,
  res.best.reward, res.value))

-- The O(log n) structures at their limit: 1e5 children at the root (alpha = 1, a 2-step chain
-- of the exact mixture model, so the model costs little and the bookkeeping shows).
do
  local p = steer.target.mixture_problem()
  collectgarbage()
  local t1 = diffuse.wtime()
  local tree = require("diffuse.steer.dts").tree{ chain = p.chain{ steps = 2 }, reward = p.reward, alpha = 1,
    batch = 1024, seed = 1 }
  tree:grow{ nfe = 200000 }
  local t2 = diffuse.wtime()
  tree:sample(100000)
  local t3 = diffuse.wtime()
  local st = tree:stats()
  print(("1e5 root children (mixture, 2 steps): grow %d nodes in %.2f s (%.1f us per rollout incl. the model), "
    .. "1e5 Boltzmann draws + gather in %.2f s"):format(st.nodes, t2 - t1, 1e6 * (t2 - t1) / st.rollouts,
    t3 - t2))
end
