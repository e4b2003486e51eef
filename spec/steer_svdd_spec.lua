-- SVDD on the standard tilted mixture: arg-max raises the reward far above plain sampling,
-- a huge temperature is plain sampling, the counters show that every state is evaluated once.
require("helper")
local steer = require("diffuse.steer")
local target = require("diffuse.steer.target")

local p = target.mixture_problem()

local function mean(t)
  local s = 0
  for i = 1, #t do s = s + t[i] end
  return s / #t
end

describe("steer.svdd", function()
  it("counts one evaluation per state: candidates share the parent, the chosen one is reused", function()
    local N, Mc, steps = 6, 3, 8
    local r = steer.svdd{ chain = p.chain{ steps = steps }, reward = p.reward, n = N, candidates = Mc, seed = 1 }
    assert.equal("svdd", r.method)
    assert.equal(N + N * Mc * (steps - 1), r.nfe)
    assert.equal(steps, r.calls)
    assert.equal(N * Mc * steps, r.reward_evals)
    assert.equal(steps, r.reward_calls)
    assert.equal(N, #r.x)
    assert.allclose(p.reward(r.x), r.rewards, 1e-6)
    assert.equal(steps, #r.trace)
    -- Monte-Carlo values: rollouts of mc_steps sub-steps over the remaining grid, batched
    local m = steer.svdd{ chain = p.chain{ steps = 5 }, reward = p.reward, particles = 2, candidates = 2, value = "mc",
      mc_samples = 3, mc_steps = 2, seed = 1 }
    -- candidates at grid point j = 2..5 (j = 6 is t_end): sub-steps K = min(2, 6 - j), so
    -- K = 2, 2, 2, 1: each adds 2 * 2 * 3 * (K - 1) rollout rows
    assert.equal(2 + 2 * 2 * 4 + 12 * 3, m.nfe)
    assert.equal(1 + 4 + 3, m.calls)
  end)

  it("arg-max beats plain sampling; a huge alpha is plain sampling; alpha = 1/lambda tilts", function()
    -- measured (200 samples, 20 steps, 4 candidates): plain mean reward -2.23; arg-max -0.033;
    -- alpha = 1 -0.81 (the tilted target's mean reward is about -0.73); alpha = 1e6 -2.12
    local plain = steer.best_of_n{ chain = p.chain{ steps = 20 }, reward = p.reward, n = 200, keep = 200, seed = 1 }
    local function run(alpha, seed)
      return steer.svdd{ chain = p.chain{ steps = 20 }, reward = p.reward, n = 200, candidates = 4, alpha = alpha, seed = seed or 1 }
    end
    local best, soft, flat = run(0), run(1), run(1e6)
    local mp = mean(plain.rewards)
    assert.is_true(mean(best.rewards) > -0.15, "arg-max " .. mean(best.rewards))
    assert.is_true(mean(soft.rewards) > -1.2 and mean(soft.rewards) < -0.4, "alpha 1 " .. mean(soft.rewards))
    assert.is_true(math.abs(mean(flat.rewards) - mp) < 0.45, ("alpha 1e6 %g, plain %g"):format(mean(flat.rewards), mp))
    -- and in distribution: huge alpha is close to the untilted mixture, far from the tilted one
    local untilted = p.gmm:sample(2000, { seed = 3 })
    local tilted = p.tilted:sample(2000, { seed = 3 })
    assert.is_true(target.sliced_wasserstein(flat.x, untilted) < 0.5)
    assert.is_true(target.sliced_wasserstein(flat.x, tilted) > 1.2)
    -- reproducible, seed-dependent
    assert.same(soft.rewards, run(1).rewards)
    assert.is_false(soft.rewards[1] == run(1, 2).rewards[1])
  end)

  it("rejects bad input", function()
    local c = p.chain{ steps = 3 }
    assert.has_error(function() steer.svdd{ chain = c } end,
      "steer.svdd: 'reward' is required (a function(x, ctx) -> one value per row)")
    assert.has_error(function() steer.svdd{ chain = c, reward = p.reward, alpha = -1 } end,
      "steer.svdd: 'alpha' must be a number >= 0 (0: arg-max), got -1")
    assert.has_error(function() steer.svdd{ chain = c, reward = p.reward, value = "lookahead" } end,
      "steer.svdd: 'value' must be \"posterior_mean\" or \"mc\", got lookahead")
    assert.has_error(function() steer.svdd{ chain = c, reward = p.reward, n = 2, particles = 2 } end,
      "steer.svdd: give 'n' or 'particles', not both")
    assert.has_error(function() steer.svdd{ chain = c, reward = p.reward, candidates = 0 } end,
      "steer.svdd: 'candidates' must be an integer >= 1, got 0")
    assert.has_error(function() steer.svdd{ chain = p.chain{ steps = 3, eta = 0 }, reward = p.reward } end,
      "steer.svdd: SVDD draws candidates from the stochastic kernel: the chain's eta must be > 0")
  end)
end)
