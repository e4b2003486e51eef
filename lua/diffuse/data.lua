-- diffuse.data: data sets.  Fashion-MNIST comes from the Debian package
-- dataset-fashion-mnist; the IDX decoding runs in C (src/idx.c, src/lidx.c).
local core = require("diffuse.core")

local M = {}

M.FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

-- Class names in the data set's own label order: classes[label + 1] names a label.
local CLASSES = {
  "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
  "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
}

local function argerror(fname, n, msg)
  error(("bad argument #%d to '%s' (%s)"):format(n, fname, msg), 3)
end

local function check_limit(fname, n, limit)
  if limit ~= nil and (type(limit) ~= "number" or math.tointeger(limit) == nil or limit < 1) then
    argerror(fname, n, "limit must be a positive integer, got " .. tostring(limit))
  end
  return limit and math.tointeger(limit)
end

-- read_idx(path[, limit]) -> tensor of the raw element values (file's shape, first dimension
-- cut to at most limit items) | nil, message.
function M.read_idx(path, limit)
  if type(path) ~= "string" then argerror("read_idx", 1, "string expected, got " .. type(path)) end
  limit = check_limit("read_idx", 2, limit)
  local t, err = core._idx.read(path, limit)
  if not t then return nil, err end
  return t
end

local KNOWN = { split = true, limit = true, dir = true }

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end

-- fashion_mnist{split = "train" | "test", limit = n, dir = path}
--   -> {images = (N, 1, 28, 28) in [-1, 1], labels = {...}, classes = {...}, split = ...}
--    | nil, message (data set missing or damaged)
function M.fashion_mnist(opts)
  if opts == nil then opts = {} end
  if type(opts) ~= "table" then argerror("fashion_mnist", 1, "table of options or nil expected, got " .. type(opts)) end
  for k in pairs(opts) do
    if not KNOWN[k] then
      argerror("fashion_mnist", 1, ("unknown option '%s' (known: split, limit, dir)"):format(tostring(k)))
    end
  end
  local split = opts.split or "train"
  if split ~= "train" and split ~= "test" then
    argerror("fashion_mnist", 1, ('split must be "train" or "test", got %s'):format(
      type(split) == "string" and '"' .. split .. '"' or type(split)))
  end
  local limit = check_limit("fashion_mnist", 1, opts.limit)
  local dir = opts.dir or M.FASHION_MNIST_DIR
  if type(dir) ~= "string" then argerror("fashion_mnist", 1, "dir must be a string, got " .. type(dir)) end

  local prefix = dir .. "/" .. (split == "train" and "train" or "t10k")
  local ipath, lpath = prefix .. "-images-idx3-ubyte.gz", prefix .. "-labels-idx1-ubyte.gz"
  if not (exists(ipath) and exists(lpath)) then
    return nil, ("Fashion-MNIST not found in %s: install the Debian package dataset-fashion-mnist "
      .. "(sudo apt-get install dataset-fashion-mnist)"):format(dir)
  end

  local images, nimages = core._idx.read(ipath, limit, 1 / 127.5, -1)
  if not images then return nil, nimages end
  if images:dim() ~= 3 then
    return nil, ("%s: expected (N, H, W) images, got %d dimensions"):format(ipath, images:dim())
  end
  -- all labels are read (a few kB) so that every one is checked, whatever the limit
  local labels_t, nlabels = core._idx.read(lpath)
  if not labels_t then return nil, nlabels end
  if labels_t:dim() ~= 1 then
    return nil, ("%s: expected a 1-d list of labels, got %d dimensions"):format(lpath, labels_t:dim())
  end
  if nimages ~= nlabels then
    return nil, ("Fashion-MNIST %s split is inconsistent: %d images in %s but %d labels in %s"):format(
      split, nimages, ipath, nlabels, lpath)
  end
  local all, labels = labels_t:totable(), {}
  for i = 1, #all do
    local v = math.tointeger(all[i])
    if v == nil or v < 0 or v > 9 then
      return nil, ("%s: label %d is %g, expected 0..9"):format(lpath, i, all[i])
    end
    all[i] = v
  end
  table.move(all, 1, images:size(1), 1, labels)
  local s = images:shape()
  local classes = {}
  for i, c in ipairs(CLASSES) do classes[i] = c end
  return {
    images = images:view(s[1], 1, s[2], s[3]),
    labels = labels,
    classes = classes,
    split = split,
  }
end

M.fashion_mnist_classes = function()
  local c = {}
  for i, v in ipairs(CLASSES) do c[i] = v end
  return c
end

return M
