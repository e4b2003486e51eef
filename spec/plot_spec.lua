local H = require("helper")
local diffuse = H.diffuse
local plot = diffuse.plot

describe("plot", function()
  it("pixel centres run left to right and top to bottom over the rectangle", function()
    local p = plot.pixel_centres(0, 1, 10, 20, 3, 2)
    assert.allclose({ { 0, 20 }, { 0.5, 20 }, { 1, 20 }, { 0, 10 }, { 0.5, 10 }, { 1, 10 } }, p, 1e-6)
  end)

  it("density maps the maximum to the lightest colour and the floor to the darkest", function()
    local img = plot.density(function(pts) return pts:select(2, 1):contiguous() end,
      { xlim = { 0, 1 }, ylim = { 0, 1 }, size = 4, floor = 1 })
    assert.same({ 3, 4, 4 }, img:shape())
    local left, right = img:select(3, 1), img:select(3, 4)   -- x = 0 and x = 1 columns
    assert.is_true(right:sum() > left:sum())
    -- every row is the same (the value depends on x only)
    assert.equal(0, img:select(2, 1):max_abs_diff(img:select(2, 4)))
  end)

  it("scatter draws a point where it belongs (y up) and skips points outside", function()
    local img = diffuse.zeros(3, 5, 5)
    local pts = diffuse.tensor({ { 1, 1 }, { 5, 5 } })
    local _, n = plot.scatter_(img, pts, { xlim = { 0, 1 }, ylim = { 0, 1 }, radius = 0, color = { 1, 0.5, 0 }, alpha = 1 })
    assert.equal(1, n)
    assert.equal(1, img:get(1, 1, 5))      -- x = 1 is the right edge, y = 1 the top row
    assert.equal(0.5, img:get(2, 1, 5))
    assert.equal(1.5, img:sum())
  end)

  it("panels lay images side by side with white gaps", function()
    local a, b = diffuse.zeros(3, 2, 2), diffuse.zeros(3, 2, 2)
    local p = plot.panels({ a, b }, { padding = 1 })
    assert.same({ 3, 4, 7 }, p:shape())
    assert.equal(1, p:get(1, 1, 1))
    assert.equal(0, p:get(1, 2, 2))
  end)

  it("rejects bad input clearly", function()
    assert.matches("image must be %(3, H, W%)", H.error_of(plot.scatter_, diffuse.zeros(2, 2), diffuse.zeros(1, 2)))
    assert.matches("points must be %(N, 2%)", H.error_of(plot.scatter_, diffuse.zeros(3, 2, 2), diffuse.zeros(1, 3)))
    assert.matches("unknown option 'colour'", H.error_of(plot.scatter_, diffuse.zeros(3, 2, 2), diffuse.zeros(1, 2), { colour = {} }))
    assert.matches("opts.xlim must be {lo, hi}", H.error_of(plot.density, function() end, { xlim = { 1, 0 } }))
    assert.matches("f must return 16 values", H.error_of(plot.density, function() return diffuse.zeros(3) end, { size = 4 }))
    assert.matches("image 2 is 3x1x1, image 1 is 3x2x2", H.error_of(plot.panels, { diffuse.zeros(3, 2, 2), diffuse.zeros(3, 1, 1) }))
  end)
end)
