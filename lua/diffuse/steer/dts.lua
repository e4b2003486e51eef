-- Diffusion Tree Sampling (DTS) and DTS* (Jain et al. 2025, "Diffusion Tree Sampling: Scalable
-- inference-time alignment of diffusion models").
--
-- A tree over the denoising chain.  Its nodes are states x at scheduled "branch levels" of the
-- time grid (always t_1, the prior, and t_(n+1), the samples); the edge between two levels is
-- the chain's stochastic kernel run for the steps in between, so a chain of steps with no
-- branching is collapsed into one edge and x is stored only where the tree may branch.  A
-- virtual root above level 1 has the prior draws as its children.
--
-- Growth (one "visit"): descend from the root; at a node with room under progressive widening
-- (#children + 1 <= C N^alpha, N its visits) draw a NEW child from the kernel and roll it out
-- to the last level (each later level state becomes a node, a single-child chain until a later
-- visit widens it), score the sample by the reward, and back up soft Bellman values
--     v(leaf) = r(x0),   v(node) = (1/lambda) log mean_children exp(lambda v(child)).
-- Otherwise go to an existing child: Boltzmann (p ∝ exp(lambda v)), uniform, greedy or UCT.
--
-- Sampling: Boltzmann descent from the root.  With the mean over children in the backup, the
-- probability of leaf l is u(l) exp(lambda r_l) / sum_l' u(l') exp(lambda r_l') where u(l) is
-- the probability of l under uniform descent, so descent is importance sampling of the tilted
-- target p(x0) exp(lambda r) / Z with the tree as proposal; the root value is an estimate of
-- (1/lambda) log Z.  DTS* (searching for the best sample) descends by UCT and returns the
-- leaves of highest reward.
--
-- Cost structure: per node the children's lambda * values live in a segment tree of
-- log-sum-exp (a "sum tree" in log space), so updating one child and drawing a child are
-- O(log #children); visits and values are updated incrementally along the backed-up path.
-- The x of all nodes live in a few big preallocated float tensors (chunks of rows); a node
-- holds a row number.  Growth is batched: a round makes up to `batch` descents (pending
-- counts keep two descents of one round from taking the same room for a new child), then
-- runs every rollout of the round together, level-synchronously (one chain:denoise per step
-- for all rollouts alive at that step, rollouts starting deeper join when their step comes),
-- scores all samples in one reward call, and backs up.
local core = require("diffuse.core")
local util = require("diffuse.util")
local chain_mod = require("diffuse.steer.chain")
local weights = require("diffuse.steer.weights")

local M = {}
local fail = util.fail
local inf, exp, log, sqrt, floor = math.huge, math.exp, math.log, math.sqrt, math.floor

-- Keys of the two uniform streams (weights.stream): tree growth and sampling draw separately,
-- so drawing samples never changes how a tree grows afterwards, and vice versa.
local KEY_GROW, KEY_SAMPLE = 7301, 7302

------------------------------------------------------------------------------------------
-- Sum tree of log-weights: a complete binary tree in a Lua array (root at 1, children of i
-- at 2i, 2i + 1, leaf k at cap + k - 1); each inner entry is log(exp(left) + exp(right)).
-- Setting one leaf and drawing a leaf in proportion to exp(weight) are O(log n).
------------------------------------------------------------------------------------------
local function lae(a, b)
  if a < b then a, b = b, a end
  if b == -inf then return a end
  return a + log(1 + exp(b - a))
end
M._logaddexp = lae

local SumTree = {}
SumTree.__index = SumTree
M.SumTree = SumTree

local function st_new(cap)
  local c = 2
  while c < (cap or 2) do c = c * 2 end
  local t = setmetatable({ n = 0, cap = c }, SumTree)
  for i = 1, 2 * c - 1 do t[i] = -inf end
  return t
end
M.sumtree = st_new

-- Doubles the capacity (a rebuild, O(n); amortised O(1) per push).
local function st_grow(t)
  local old, c = t.cap, t.cap * 2
  local leaves = {}
  for k = 1, t.n do leaves[k] = t[old + k - 1] end
  for i = 1, 2 * c - 1 do t[i] = -inf end
  for k = 1, t.n do t[c + k - 1] = leaves[k] end
  for i = c - 1, 1, -1 do t[i] = lae(t[2 * i], t[2 * i + 1]) end
  t.cap = c
end

-- Sets leaf k to log-weight v and refreshes the path to the root.
local function st_set(t, k, v)
  local i = t.cap + k - 1
  t[i] = v
  i = i // 2
  while i >= 1 do
    t[i] = lae(t[2 * i], t[2 * i + 1])
    i = i // 2
  end
end

-- Appends a leaf; returns its index.
local function st_push(t, v)
  if t.n == t.cap then st_grow(t) end
  t.n = t.n + 1
  st_set(t, t.n, v)
  return t.n
end

-- The leaf drawn with probability exp(w_k - total) from one uniform u in [0, 1): walks down,
-- going left with probability exp(left - here) and rescaling u into the chosen branch.
local function st_draw(t, u)
  local i, cap = 1, t.cap
  while i < cap do
    local l, r = 2 * i, 2 * i + 1
    if t[r] == -inf then
      i = l
    elseif t[l] == -inf then
      i = r
    else
      local pl = exp(t[l] - t[i])
      if u < pl then
        i, u = l, u / pl
      else
        local pr = exp(t[r] - t[i])
        i, u = r, (u - pl) / pr
        if u >= 1 then u = 0.9999999999999999 end
      end
    end
  end
  local k = i - cap + 1
  if k > t.n then k = t.n end -- unreachable unless every weight is -inf
  return k
end

function SumTree:push(v) return st_push(self, v) end
function SumTree:set(k, v) st_set(self, k, v) end
function SumTree:get(k) return self[self.cap + k - 1] end
function SumTree:total() return self[1] end
function SumTree:draw(u) return st_draw(self, u) end
function SumTree:__len() return self.n end

------------------------------------------------------------------------------------------
-- Row storage: the x of every node, as rows of float tensors of `chunk` rows each (no single
-- huge allocation, no copy when growing).  Row r lives in chunk (r - 1) // chunk + 1.
------------------------------------------------------------------------------------------
local Store = {}
Store.__index = Store

local function store_new(width, chunk)
  return setmetatable({ width = width, chunk = chunk, chunks = {}, used = 0 }, Store)
end

function Store:capacity() return #self.chunks * self.chunk end
function Store:bytes() return #self.chunks * self.chunk * self.width * 4 end

-- Copies the rows of x2 (rows, width) into new consecutive rows; returns the first row number.
function Store:put(x2)
  local n, r0 = #x2, self.used + 1
  local done = 0
  while done < n do
    local r = self.used + 1
    local c = (r - 1) // self.chunk + 1
    if c > #self.chunks then self.chunks[c] = core.zeros({ self.chunk, self.width }) end
    local off = (r - 1) % self.chunk + 1
    local len = math.min(n - done, self.chunk - off + 1)
    self.chunks[c]:narrow(1, off, len):copy_(x2:narrow(1, done + 1, len))
    done, self.used = done + len, self.used + len
  end
  return r0
end

-- Rows `rows` (ascending) copied into out:narrow(1, at, #rows): one gather per chunk run.
function Store:gather_sorted_into(rows, out, at)
  local i, n = 1, #rows
  while i <= n do
    local c = (rows[i] - 1) // self.chunk + 1
    local base = (c - 1) * self.chunk
    local loc = {}
    local j = i
    while j <= n and (rows[j] - 1) // self.chunk + 1 == c do
      loc[#loc + 1] = rows[j] - base
      j = j + 1
    end
    out:narrow(1, at + i - 1, j - i):copy_(self.chunks[c]:gather(loc))
    i = j
  end
end

-- Rows in any order (repeats allowed) as a new (#rows, width) tensor.
function Store:gather(rows)
  local n = #rows
  local order = {}
  for k = 1, n do order[k] = k end
  table.sort(order, function(a, b)
    if rows[a] ~= rows[b] then return rows[a] < rows[b] end
    return a < b
  end)
  local sorted = {}
  for k = 1, n do sorted[k] = rows[order[k]] end
  local tmp = core.zeros({ n, self.width })
  self:gather_sorted_into(sorted, tmp, 1)
  local inv = {}
  for k = 1, n do inv[order[k]] = k end
  return tmp:gather(inv)
end

------------------------------------------------------------------------------------------
-- Options
------------------------------------------------------------------------------------------
local own_options = {
  reward = true, lambda = true, nfe = true, batch = true, branch_every = true, branch_steps = true,
  C = true, alpha = true, select = true, exploration = true, samples = true, max_nodes = true,
  max_bytes = true, progress = true,
  -- chain.from_options accepts a seed with o.chain only when the method lists it
  seed = true,
}
local selects = { boltzmann = true, uniform = true, uct = true, greedy = true }

-- Lua bookkeeping, an estimate calibrated against the Lua heap (spec/steer_dts_spec.lua, "bytes
-- per node"): every node has a slot in 7 arrays (parent, level, row, visits, value, slot, first
-- child: 16 bytes each, plus the arrays' power-of-two slack); a leaf its reward and an entry in
-- the leaf list; a branching node a children list and a sum tree (two tables, 16 bytes an entry).
local NODE_BYTES, LEAF_BYTES, TABLE_BYTES, ENTRY_BYTES = 150, 48, 150, 16

local function number_opt(F, o, name, default, lo, strict, level)
  local v = o[name]
  if v == nil then return default end
  if type(v) ~= "number" or v ~= v or v == inf or (strict and v <= lo) or (not strict and v < lo) then
    fail(F, ("'%s' must be a finite number %s %g, got %s"):format(name, strict and ">" or ">=", lo, tostring(v)), level + 1)
  end
  return v
end

-- The time indices of the levels: 1 = t_1 (prior), ..., n + 1 = t_(n+1) (samples).
local function branch_levels(F, o, n, level)
  if o.branch_every ~= nil and o.branch_steps ~= nil then
    fail(F, "give 'branch_every' or 'branch_steps', not both", level + 1)
  end
  local set = { [1] = true, [n + 1] = true }
  if o.branch_steps ~= nil then
    if type(o.branch_steps) ~= "table" then
      fail(F, ("'branch_steps' must be a list of grid indices in 1..%d, got %s"):format(n + 1, type(o.branch_steps)),
        level + 1)
    end
    for i, s in ipairs(o.branch_steps) do
      if math.type(s) ~= "integer" or s < 1 or s > n + 1 then
        fail(F, ("branch_steps[%d] must be a grid index in 1..%d (x at t_i), got %s"):format(i, n + 1, tostring(s)),
          level + 1)
      end
      set[s] = true
    end
  else
    local k = o.branch_every or 1
    if math.type(k) ~= "integer" or k < 1 then
      fail(F, ("'branch_every' must be an integer >= 1, got %s"):format(tostring(k)), level + 1)
    end
    for s = 1, n + 1, k do set[s] = true end
  end
  local L = {}
  for s = 1, n + 1 do if set[s] then L[#L + 1] = s end end
  return L
end

------------------------------------------------------------------------------------------
-- The tree
------------------------------------------------------------------------------------------
local Tree = {}
Tree.__index = Tree
M.Tree = Tree

-- A buffered uniform stream (one tensor of draws per 1024 uniforms).
local function ustream(seed, key)
  local s = weights.stream(seed, key)
  local buf, pos = {}, 1
  return function()
    if pos > #buf then
      buf, pos = s:uniforms(1024), 1
    end
    local u = buf[pos]
    pos = pos + 1
    return u
  end
end

local function new_tree(F, o, defaults, level)
  level = level + 1
  local chain = chain_mod.from_options(F, o, own_options, level)
  local reward = o.reward
  if reward == nil then fail(F, "'reward' is required (a function(x, ctx) -> one value per row)", level) end
  if not require("diffuse.steer.rewards").callable(reward) then
    fail(F, ("'reward' must be callable, got %s"):format(type(reward)), level)
  end
  local lambda = number_opt(F, o, "lambda", defaults.lambda, 0, true, level)
  local C = number_opt(F, o, "C", 1, 0, true, level)
  local alpha = number_opt(F, o, "alpha", 0.5, 0, false, level)
  if alpha > 1 then fail(F, ("'alpha' must be in [0, 1], got %s"):format(tostring(alpha)), level) end
  local select = o.select or defaults.select
  if not selects[select] then
    fail(F, ("'select' must be 'boltzmann', 'uniform', 'uct' or 'greedy', got %s"):format(tostring(select)), level)
  end
  local exploration = number_opt(F, o, "exploration", defaults.exploration, 0, false, level)
  local batch = util.check_int(F, "batch", o.batch or 64, 1, level)
  local L = branch_levels(F, o, chain.n, level)
  local max_nodes = o.max_nodes == nil and 2 ^ 24 or o.max_nodes
  if type(max_nodes) ~= "number" or max_nodes < 1 then
    fail(F, ("'max_nodes' must be a number >= 1, got %s"):format(tostring(max_nodes)), level)
  end
  local max_bytes = o.max_bytes == nil and 2 ^ 30 or o.max_bytes
  if type(max_bytes) ~= "number" or max_bytes < 1 then
    fail(F, ("'max_bytes' must be a number >= 1, got %s"):format(tostring(max_bytes)), level)
  end
  local width = 1
  for _, s in ipairs(chain.shape) do width = width * s end
  local level_of = {}
  for j, s in ipairs(L) do level_of[s] = j end
  local self = setmetatable({
    F = F, chain = chain, reward = reward, lambda = lambda, C = C, alpha = alpha, select = select,
    exploration = exploration, batch = batch, levels = L, level_of = level_of, m = #L, n = chain.n,
    width = width, max_nodes = max_nodes, max_bytes = max_bytes, method = defaults.method,
    store = store_new(width, math.max(64, math.min(4096, (1 << 22) // (4 * width)))),
    -- per-node arrays; node 1 is the virtual root (level 0, no x)
    par = { 0 }, lvl = { 0 }, row = { 0 }, vis = { 0 }, lv = { -inf }, slot = { 0 }, kid1 = { 0 },
    kids = {}, seg = {}, rw = {}, pend = {},
    count = 1, leaves = {}, best_id = nil, branch_bytes = 0, rounds = 0, rollouts = 0, leaf_hits = 0,
    grow_u = ustream(chain.seed, KEY_GROW), sample_u = ustream(chain.seed, KEY_SAMPLE),
  }, Tree)
  return self
end

-- Number of children of node id.
local function nkids(self, id)
  local k = self.kids[id]
  if k then return #k end
  return self.kid1[id] ~= 0 and 1 or 0
end

-- Children of id as a list (a fresh one-element list for a single child).
function Tree:children(id)
  local k = self.kids[id]
  if k then return k end
  if self.kid1[id] ~= 0 then return { self.kid1[id] } end
  return {}
end

-- lambda * value of id from its children: log-mean-exp of their lambda * values.
local function refresh(self, id)
  local seg = self.seg[id]
  if seg then
    self.lv[id] = seg[1] - log(seg.n)
  else
    self.lv[id] = self.lv[self.kid1[id]]
  end
end

-- Adds child c to p (c's value already set).
local function attach(self, p, c)
  local kids = self.kids[p]
  if self.kid1[p] == 0 then
    self.kid1[p] = c
    self.slot[c] = 1
    return
  end
  if not kids then
    kids = { self.kid1[p] }
    self.kids[p] = kids
    local seg = st_new(2)
    st_push(seg, self.lv[kids[1]])
    self.seg[p] = seg
    self.branch_bytes = self.branch_bytes + 2 * TABLE_BYTES + 4 * ENTRY_BYTES
  end
  kids[#kids + 1] = c
  local seg = self.seg[p]
  local cap = seg.cap
  self.slot[c] = st_push(seg, self.lv[c])
  -- a children list entry, and the sum tree's array when it doubled
  self.branch_bytes = self.branch_bytes + ENTRY_BYTES + 2 * (seg.cap - cap) * ENTRY_BYTES
end

-- Soft Bellman backup from p (whose child values changed) to the root.
local function backup(self, p)
  local par, lv, seg, slot = self.par, self.lv, self.seg, self.slot
  local c
  while p ~= 0 do
    if c and seg[p] then st_set(seg[p], slot[c], lv[c]) end
    refresh(self, p)
    c, p = p, par[p]
  end
end

-- One existing child of id by the selection rule (u: a uniform).
local function choose(self, id, rule, u)
  local kids = self.kids[id]
  if not kids then return self.kid1[id] end
  if rule == "boltzmann" then
    return kids[st_draw(self.seg[id], u)]
  elseif rule == "uniform" then
    return kids[math.min(#kids, floor(u * #kids) + 1)]
  end
  -- greedy / uct: value plus an exploration bonus c sqrt(log N / n_c); first best on ties
  local lv, vis, lam = self.lv, self.vis, self.lambda
  local bonus = rule == "uct" and self.exploration or 0
  local lnN = log(math.max(vis[id], 1))
  local best, bc = -inf, kids[1]
  for i = 1, #kids do
    local c = kids[i]
    local s = lv[c] / lam
    if bonus > 0 then s = s + bonus * sqrt(lnN / math.max(vis[c], 1)) end
    if s > best then best, bc = s, c end
  end
  return bc
end

-- One growth descent.  Returns "expand", parent, cost | "leaf" | "blocked" | "budget".
-- Visits are counted on the way down (so the next descent of the same round sees them);
-- a descent that does not happen ("blocked", "budget") is undone.
local function descend(self, budget, path)
  local vis, lvl, pend, L = self.vis, self.lvl, self.pend, self.levels
  local C, alpha, m, n, rule = self.C, self.alpha, self.m, self.n, self.select
  local id, np = 1, 0
  while true do
    vis[id] = vis[id] + 1
    np = np + 1
    path[np] = id
    local lev = lvl[id]
    if lev == m then return "leaf", nil, nil, np end
    local nk = nkids(self, id)
    local pd = pend[id] or 0
    if nk + pd == 0 or nk + pd + 1 <= C * vis[id] ^ alpha then
      local cost = n + 1 - (lev == 0 and 1 or L[lev])
      if cost > budget then
        for k = 1, np do vis[path[k]] = vis[path[k]] - 1 end
        return "budget", nil, nil, np
      end
      pend[id] = pd + 1
      return "expand", id, cost, np
    end
    if nk == 0 then
      for k = 1, np do vis[path[k]] = vis[path[k]] - 1 end
      return "blocked", nil, nil, np
    end
    -- a uniform only where the rule draws (a single child or UCT takes none), so a run's
    -- draws depend on the tree alone
    local u = 0
    if nk > 1 and (rule == "boltzmann" or rule == "uniform") then u = self.grow_u() end
    id = choose(self, id, rule, u)
  end
end

-- New node record (attached to the tree at backup time).
local function new_node(self, parent, lev, row)
  local id = self.count + 1
  self.count = id
  self.par[id], self.lvl[id], self.row[id], self.vis[id] = parent, lev, row, 1
  self.lv[id], self.slot[id], self.kid1[id] = -inf, 0, 0
  return id
end

function Tree:bytes()
  return self.store:bytes() + self:book_bytes()
end

function Tree:book_bytes()
  return self.count * NODE_BYTES + #self.leaves * LEAF_BYTES + self.branch_bytes
end

local function mb(b) return b / 2 ^ 20 end

-- The caps, checked before a round runs (no evaluation is spent on a tree that cannot hold it).
local function check_caps(self, new_nodes, level)
  local nodes = self.count - 1 + new_nodes
  if nodes > self.max_nodes then
    fail(self.F, ("the tree would hold %d nodes, over max_nodes = %d; raise max_nodes (e.g. max_nodes = %d), "
      .. "lower nfe, or branch less often (branch_every / branch_steps)"):format(nodes, floor(self.max_nodes),
      2 * nodes), level + 1)
  end
  local st = self.store
  local rows = st.used + new_nodes
  local xb = ((rows + st.chunk - 1) // st.chunk) * st.chunk * st.width * 4
  local book = self:book_bytes() + new_nodes * NODE_BYTES
  local bytes = xb + book
  if bytes > self.max_bytes then
    fail(self.F, ("the tree would take %.1f MB (%d nodes: %.1f MB of x, %.1f MB of bookkeeping), over max_bytes = %d "
      .. "(%.1f MB); raise max_bytes (e.g. max_bytes = %d), lower nfe, or branch less often (branch_every / "
      .. "branch_steps)"):format(mb(bytes), nodes, mb(xb), mb(book), floor(self.max_bytes),
      mb(self.max_bytes), floor(2 * bytes)), level + 1)
  end
end

-- Runs the rollouts of one round: exps = parent ids (one new child each), level-synchronously.
local function rollouts(self, exps, level)
  local chain, L, level_of, m, n = self.chain, self.levels, self.level_of, self.m, self.n
  local lvl, row, store = self.lvl, self.row, self.store
  local R = #exps
  -- start step of each rollout: the grid index of its parent's x (the root's: 1, from the prior)
  local start, new_nodes = {}, 0
  for k = 1, R do
    local lev = lvl[exps[k]]
    start[k] = lev == 0 and 1 or L[lev]
    new_nodes = new_nodes + (m - lev)
  end
  check_caps(self, new_nodes, level + 1)
  -- joiners of each step, ordered by their parent's row (one gather per chunk run)
  local by_step = {}
  for k = 1, R do
    local s = start[k]
    local list = by_step[s]
    if not list then list = {}; by_step[s] = list end
    list[#list + 1] = k
  end
  local shape = { 0 }
  for i, v in ipairs(chain.shape) do shape[i + 1] = v end
  local function as_chain(x2)
    shape[1] = #x2
    return x2:view(shape)
  end
  local first, last = {}, {} -- per rollout: its first new node and the latest one
  local X, rid = nil, {}      -- the batch as (rows, width) and the rollout of each row
  for i = 1, n + 1 do
    local list = by_step[i]
    local fresh -- rows of X that are new states (arrived by the kernel or drawn from the prior)
    if i <= n and list then
      local roots, inner = {}, {}
      for _, k in ipairs(list) do
        if lvl[exps[k]] == 0 then roots[#roots + 1] = k else inner[#inner + 1] = k end
      end
      table.sort(inner, function(a, b)
        local ra, rb = row[exps[a]], row[exps[b]]
        if ra ~= rb then return ra < rb end
        return a < b
      end)
      local have = X and #X or 0
      local total = have + #roots + #inner
      local nx = core.zeros({ total, self.width })
      if have > 0 then nx:narrow(1, 1, have):copy_(X) end
      if #roots > 0 then
        local p = chain:prior(#roots)
        nx:narrow(1, have + 1, #roots):copy_(p:reshape(#roots, self.width))
        for j, k in ipairs(roots) do rid[have + j] = k end
      end
      if #inner > 0 then
        local rows = {}
        for j, k in ipairs(inner) do
          rows[j] = row[exps[k]]
          rid[have + #roots + j] = k
        end
        store:gather_sorted_into(rows, nx, have + #roots + 1)
      end
      X, fresh = nx, have + #roots
    else
      fresh = X and #X or 0
    end
    local lev = level_of[i]
    if lev and fresh > 0 then
      local r0 = store:put(X:narrow(1, 1, fresh))
      for j = 1, fresh do
        local k = rid[j]
        local parent = last[k] or exps[k]
        local id = new_node(self, parent, lev, r0 + j - 1)
        if not first[k] then first[k] = id end
        last[k] = id
      end
    end
    if i <= n and X then
      local xc = as_chain(X)
      local x0, eps = chain:denoise(xc, i)
      X = chain:move(xc, x0, eps, i):reshape(#X, self.width)
    end
  end
  -- the samples: one reward call for all
  local xs = as_chain(X)
  local r = chain:reward(self.reward, xs, { x_t = xs, point = chain.points[n + 1], step = n + 1 })
  local lam, lv, rw, leaves = self.lambda, self.lv, self.rw, self.leaves
  local par, kid1, slot = self.par, self.kid1, self.slot
  -- leaves first (value = reward), then each rollout's chain bottom-up, then attach and back up
  local leaf_of = {}
  for j = 1, #X do leaf_of[rid[j]] = j end
  local best = self.best_id and rw[self.best_id] or -inf
  for k = 1, R do
    local leaf = last[k]
    local v = r[leaf_of[k]]
    rw[leaf] = v
    lv[leaf] = lam * v
    leaves[#leaves + 1] = leaf
    if v > best or not self.best_id then best, self.best_id = v, leaf end
    local c = leaf
    while c ~= first[k] do
      local p = par[c]
      kid1[p], slot[c], lv[p] = c, 1, lv[c]
      c = p
    end
    attach(self, exps[k], first[k])
    backup(self, exps[k])
  end
  self.rollouts = self.rollouts + R
end

-- One round: up to `batch` expansions (fewer when the budget or pending children stop it).
-- Returns the number of rollouts run, the number of descents, and why selection stopped
-- ("full", "budget", "blocked", or "tries": only visits to leaves).
local function round(self, budget, level)
  local exps, path = {}, {}
  local B = self.batch
  local tries = 0
  local max_tries = 4 * B + 64
  local why = "tries"
  while tries < max_tries do
    if #exps == B then why = "full"; break end
    tries = tries + 1
    local kind, p, cost = descend(self, budget, path)
    if kind == "expand" then
      exps[#exps + 1] = p
      budget = budget - cost
    elseif kind == "leaf" then
      self.leaf_hits = self.leaf_hits + 1
    else
      why = kind
      break
    end
  end
  for _, p in ipairs(exps) do self.pend[p] = nil end
  if #exps == 0 then return 0, tries, why end
  self.rounds = self.rounds + 1
  rollouts(self, exps, level + 1)
  return #exps, tries, why
end

-- Descents in a row that only visit leaves before growth gives up (a widening rule that never
-- makes room, e.g. alpha = 0 with C = 1).
local MAX_IDLE_DESCENTS = 1000000

-- Grows the tree by at most `nfe` more network evaluations (rows): grow{nfe = N, progress = bool}.
-- Stops early when a descent's rollout does not fit the remaining budget (less than one
-- rollout's cost is left unspent).
function Tree:grow(o)
  local F = self.F .. ":grow"
  util.check_options(F, o, { nfe = true, progress = true }, 2)
  if type(o) ~= "table" then fail(F, "options table expected ({nfe = N})", 2) end
  local budget = util.check_int(F, "nfe", type(o.nfe) == "number" and math.tointeger(o.nfe) or o.nfe, 0, 2)
  local start = self.chain.nfe
  local bar = o.progress and budget > 0 and require("diffuse.progress").new{ total = budget, label = self.method,
    unit = "nfe" } or nil
  local idle = 0
  while true do
    local left = budget - (self.chain.nfe - start)
    if left <= 0 then break end
    local made, tries, why = round(self, left, 2)
    if made == 0 then
      if why ~= "tries" then break end
      -- only leaves were visited; their visits open room above them, so go on, up to a limit
      idle = idle + tries
      if idle > MAX_IDLE_DESCENTS then
        fail(F, ("%d descents in a row reached leaves without finding room for a new child (C = %g, alpha = %g): "
          .. "raise C or alpha"):format(idle, self.C, self.alpha), 2)
      end
    else
      idle = 0
    end
    if bar and self.chain.nfe - start < budget then bar:update(self.chain.nfe - start, { nodes = self.count - 1 }) end
  end
  if bar then
    bar.done = self.chain.nfe - start
    bar:finish({ nodes = self.count - 1 })
  end
  return self
end

-- k leaves by Boltzmann descent from the root (ids).  Needs a grown tree.
function Tree:sample_leaves(k)
  local F = self.F .. ":sample"
  util.check_int(F, "k", k, 1, 3)
  if self.kid1[1] == 0 then fail(F, "the tree is empty: grow it first (tree:grow{nfe = ...})", 3) end
  local out, m, lvl, kids, kid1, seg = {}, self.m, self.lvl, self.kids, self.kid1, self.seg
  local u = self.sample_u
  for j = 1, k do
    local id = 1
    while lvl[id] < m do
      local list = kids[id]
      if list then id = list[st_draw(seg[id], u())] else id = kid1[id] end
    end
    out[j] = id
  end
  return out
end

-- x (as a (#ids, shape...) tensor) and rewards of leaves.
function Tree:leaf_x(ids)
  local rows = {}
  for j, id in ipairs(ids) do rows[j] = self.row[id] end
  local x = self.store:gather(rows)
  local shape = { #ids }
  for i, v in ipairs(self.chain.shape) do shape[i + 1] = v end
  local r = {}
  for j, id in ipairs(ids) do r[j] = self.rw[id] end
  return x:view(shape), r
end

-- tree:sample(k) -> x (k rows drawn by Boltzmann descent: the tilted target), rewards, leaf ids.
function Tree:sample(k)
  local ids = self:sample_leaves(k)
  local x, r = self:leaf_x(ids)
  return x, r, ids
end

-- The k distinct leaves of highest reward (ties: the earlier leaf first).
function Tree:top(k)
  util.check_int(self.F .. ":top", "k", k, 1, 2)
  local leaves, rw = self.leaves, self.rw
  local ids = {}
  for j = 1, #leaves do ids[j] = leaves[j] end
  table.sort(ids, function(a, b)
    if rw[a] ~= rw[b] then return rw[a] > rw[b] end
    return a < b
  end)
  local out = {}
  for j = 1, math.min(k, #ids) do out[j] = ids[j] end
  local x, r = self:leaf_x(out)
  return x, r, out
end

-- (1/lambda) log Z estimate: the root's soft value.
function Tree:value() return self.lv[1] / self.lambda end

-- Probabilities of every leaf under a descent rule ("boltzmann" or "uniform"), by enumeration
-- (for checks on small trees): a table leaf id -> probability.
function Tree:leaf_probabilities(rule)
  local probs = {}
  local lam = self.lambda
  local function walk(id, p)
    if self.lvl[id] == self.m then
      probs[id] = (probs[id] or 0) + p
      return
    end
    local kids = self:children(id)
    local lse = -inf
    if rule == "boltzmann" then
      local vals = {}
      for i, c in ipairs(kids) do vals[i] = self.lv[c] end
      lse = weights.logsumexp(vals)
    end
    for _, c in ipairs(kids) do
      local q = rule == "boltzmann" and exp(self.lv[c] - lse) or 1 / #kids
      walk(c, p * q)
    end
  end
  walk(1, 1)
  return probs
end

function Tree:stats()
  local depth = {}
  for j = 1, self.m do depth[j] = 0 end
  local maxk, branching = 0, 0
  for id = 2, self.count do
    local l = self.lvl[id]
    depth[l] = depth[l] + 1
  end
  for id = 1, self.count do
    local nk = nkids(self, id)
    if nk > maxk then maxk = nk end
    if nk > 1 then branching = branching + 1 end
  end
  local xb = self.store:bytes()
  return {
    nodes = self.count - 1, leaves = #self.leaves, root_children = nkids(self, 1), max_children = maxk,
    branching_nodes = branching, depth_counts = depth, levels = self.levels, bytes = xb + self:book_bytes(),
    x_bytes = xb, x_bytes_used = self.store.used * self.store.width * 4, bookkeeping_bytes = self:book_bytes(),
    bytes_per_node = (xb + self:book_bytes()) / math.max(self.count - 1, 1),
    rounds = self.rounds, rollouts = self.rollouts, leaf_hits = self.leaf_hits, root_visits = self.vis[1],
    value = self.count > 1 and self:value() or nil,
    nfe = self.chain.nfe, calls = self.chain.calls, reward_evals = self.chain.reward_evals,
    reward_calls = self.chain.reward_calls,
  }
end

function Tree:__tostring()
  local s = self:stats()
  return ("diffuse %s tree: %d nodes (%d leaves, %d at the root), %d levels, %.1f MB, nfe %d"):format(self.method,
    s.nodes, s.leaves, s.root_children, self.m, mb(s.bytes), s.nfe)
end

-- The result table of the steering contract, with k returned samples: Boltzmann draws (DTS) or
-- the k best leaves (DTS*).
function Tree:result(k)
  local x, r
  if self.method == "dts_star" then x, r = self:top(k) else x, r = self:sample(k) end
  local bx = self:leaf_x({ self.best_id })
  local st = self.chain:stats()
  return {
    method = self.method, x = x, rewards = r, best = { x = bx, reward = self.rw[self.best_id] },
    nfe = st.nfe, calls = st.calls, reward_evals = st.reward_evals, reward_calls = st.reward_calls,
    value = self:value(), tree = self, stats = self:stats(),
  }
end

-- The default round size of a run with a budget: at most 64 descents a round, and at least
-- ROUNDS rounds.  A round's descents all see the tree as it was when the round began, so a
-- budget spent in one round is best-of-N with extra steps; on Fashion-MNIST DTS* at 1280 NFE
-- (64 rollouts) found better samples in rounds of 4 than in one round of 64 (docs/steer.md).
local ROUNDS = 16
local function default_batch(nfe, steps)
  return math.max(1, math.min(64, nfe // (steps * ROUNDS)))
end

local function run(F, o, defaults)
  if type(o) ~= "table" then fail(F, "options table expected", 3) end
  local nfe = util.check_int(F, "nfe", type(o.nfe) == "number" and math.tointeger(o.nfe) or o.nfe, 1, 3)
  local tree = new_tree(F, o, defaults, 3)
  if o.batch == nil then tree.batch = default_batch(nfe, tree.n) end
  local k = util.check_int(F, "samples", o.samples or defaults.samples, 1, 3)
  tree:grow{ nfe = nfe, progress = o.progress }
  if tree.kid1[1] == 0 then
    fail(F, ("nfe = %d is less than one rollout (%d steps): no sample was made"):format(nfe, tree.n), 3)
  end
  return tree:result(k)
end

-- dts{ <chain options or chain = c>, reward, lambda = 1, nfe, samples = 16,
--      batch = nfe / (16 steps) clamped to 1..64 (at least 16 rounds),
--      branch_every = 1 | branch_steps = {...}, C = 1, alpha = 0.5, select = "boltzmann",
--      max_nodes = 2^24, max_bytes = 2^30, seed, progress }
function M.dts(o)
  return run("steer.dts", o, { method = "dts", select = "boltzmann", exploration = 1, lambda = 1, samples = 16 })
end

-- dts_star{ ... same options, lambda = 10, select = "uct", exploration = 0.1, samples = 1 }:
-- search for the best sample; x holds the `samples` leaves of highest reward.  A larger lambda
-- makes the soft values nearer the best reward below a node (lambda -> inf: the max); the
-- exploration bonus is in reward units.
function M.dts_star(o)
  return run("steer.dts_star", o, { method = "dts_star", select = "uct", exploration = 0.1, lambda = 10, samples = 1 })
end

-- tree{ same options as dts, without nfe and samples; method = "dts" | "dts_star" }: an empty tree
-- to grow and sample by hand (tree:grow{nfe = ...}, tree:sample(k), tree:top(k), tree:result(k)).
function M.tree(o)
  local F = "steer.dts.tree"
  if type(o) ~= "table" then fail(F, "options table expected", 2) end
  local method = o.method or "dts"
  if method ~= "dts" and method ~= "dts_star" then
    fail(F, ("'method' must be 'dts' or 'dts_star', got %s"):format(tostring(method)), 2)
  end
  local oo = {}
  for key, v in pairs(o) do if key ~= "method" then oo[key] = v end end
  if oo.nfe ~= nil or oo.samples ~= nil then fail(F, "'nfe' and 'samples' go to tree:grow / tree:sample", 2) end
  local defaults = method == "dts" and { method = "dts", select = "boltzmann", exploration = 1, lambda = 1 }
    or { method = "dts_star", select = "uct", exploration = 0.1, lambda = 10 }
  return new_tree(F, oo, defaults, 2)
end

-- steer.dts_tree{...}: the same, from the steer module (steer.dts is the method).
M.dts_tree = M.tree

return M
