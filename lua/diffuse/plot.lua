-- Pictures of 2-D problems, rasterised directly into (3, H, W) image tensors in [0, 1]:
-- a density image under a colour ramp, scatter points drawn over it, panels side by side,
-- and PNG output.  (Line plots with axes and labels are a job for gnuplot.)
local core = require("diffuse.core")
local image = require("diffuse.image")

local M = {}
local raster = core._plot

local function argerror(fname, n, msg)
  error(("bad argument #%d to '%s' (%s)"):format(n, fname, msg), 3)
end

local function range_opt(fname, n, v, name)
  if v == nil then return -3, 3 end
  if type(v) ~= "table" or type(v[1]) ~= "number" or type(v[2]) ~= "number" or not (v[2] > v[1]) then
    argerror(fname, n, ("opts.%s must be {lo, hi} with lo < hi"):format(name))
  end
  return v[1], v[2]
end

local function check_opts(fname, n, opts, known)
  if opts == nil then return {} end
  if type(opts) ~= "table" then argerror(fname, n, "options table expected, got " .. type(opts)) end
  for k in pairs(opts) do
    if not known[k] then
      local names = {}
      for name in pairs(known) do names[#names + 1] = name end
      table.sort(names)
      argerror(fname, n, ("unknown option '%s' (known: %s)"):format(tostring(k), table.concat(names, ", ")))
    end
  end
  return opts
end

-- The (H*W, 2) centres of an H x W pixel grid over [x0, x1] x [y0, y1], row 1 at the top.
function M.pixel_centres(x0, x1, y0, y1, w, h)
  local pts = core.zeros(h * w, 2)
  local xs = core.zeros(h, w):copy_(core.linspace(x0, x1, w):view(1, w))
  local ys = core.zeros(h, w):copy_(core.linspace(y1, y0, h):view(h, 1))
  pts:narrow(2, 1, 1):copy_(xs:view(h * w, 1))
  pts:narrow(2, 2, 1):copy_(ys:view(h * w, 1))
  return pts
end

-- plot.density(f, opts) -> (3, H, W) image of f over a rectangle.  f(points (M, 2)) returns
-- M values (a tensor of M or (M, 1) elements), e.g. a log-density.  opts: xlim, ylim
-- ({lo, hi}, default {-3, 3}), size (pixels, default 256), floor (values below max - floor
-- are drawn as the lowest colour, default 12: suits log-densities).
function M.density(f, opts)
  opts = check_opts("density", 2, opts, { xlim = true, ylim = true, size = true, floor = true })
  if type(f) ~= "function" and not (type(f) == "table" and getmetatable(f) and getmetatable(f).__call) then
    argerror("density", 1, "function of points (M, 2) expected, got " .. type(f))
  end
  local x0, x1 = range_opt("density", 2, opts.xlim, "xlim")
  local y0, y1 = range_opt("density", 2, opts.ylim, "ylim")
  local size = opts.size or 256
  if math.type(size) ~= "integer" or size < 2 or size > 4096 then
    argerror("density", 2, "opts.size must be an integer in 2 .. 4096")
  end
  local v = f(M.pixel_centres(x0, x1, y0, y1, size, size))
  if type(v) ~= "userdata" or v:numel() ~= size * size then
    argerror("density", 1, ("f must return %d values (one per pixel)"):format(size * size))
  end
  v = v:reshape(size, size)
  local hi = v:max()
  local lo = hi - (opts.floor or 12)
  return raster.colormap(v, lo, hi)
end

-- plot.scatter_(img, points (N, 2), opts) draws in place; returns img and how many points
-- fell inside.  opts: xlim, ylim (the data rectangle of img), color {r, g, b} in [0, 1]
-- (default white), radius (pixels, default 1.5), alpha (default 0.8).
function M.scatter_(img, points, opts)
  opts = check_opts("scatter_", 3, opts, { xlim = true, ylim = true, color = true, radius = true, alpha = true })
  local x0, x1 = range_opt("scatter_", 3, opts.xlim, "xlim")
  local y0, y1 = range_opt("scatter_", 3, opts.ylim, "ylim")
  local c = opts.color or { 1, 1, 1 }
  local n = raster.scatter_(img, points, x0, x1, y0, y1, opts.radius or 1.5, c[1], c[2], c[3], opts.alpha or 0.8)
  return img, n
end

-- plot.panels({img1, img2, ...}, {ncol, padding}) -> one (3, H', W') image (white gaps).
function M.panels(images, opts)
  opts = check_opts("panels", 2, opts, { ncol = true, padding = true })
  if type(images) ~= "table" or #images == 0 then argerror("panels", 1, "a non-empty list of images expected") end
  local s = images[1]:shape()
  local batch = core.zeros(#images, s[1], s[2], s[3])
  for i, im in ipairs(images) do
    local si = im:shape()
    if si[1] ~= s[1] or si[2] ~= s[2] or si[3] ~= s[3] then
      argerror("panels", 1, ("image %d is %s, image 1 is %s"):format(i, table.concat(si, "x"), table.concat(s, "x")))
    end
    batch[i]:copy_(im)
  end
  return image.grid(batch, { nrow = opts.ncol or #images, padding = opts.padding or 4, pad_value = 1, range = "0,1" })
end

-- plot.write(path, img): PNG of a (3, H, W) image in [0, 1]; true or nil, message.
function M.write(path, img) return image.write(path, img, { range = "0,1" }) end

return M
