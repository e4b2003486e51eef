/* Rasterising plots straight into image tensors: colour maps for density images and discs
 * for scatter points.  Images are (3, H, W) float views in [0, 1].  Pure C. */
#ifndef DIFFUSE_RASTER_H
#define DIFFUSE_RASTER_H

#include "tensor.h"

/* img (3, H, W) <- colour map of values (H, W) scaled from [lo, hi] to [0, 1]; NaN -> white. */
void df_colormap(df_tensor *img, const df_tensor *values, double lo, double hi);

/* Draw discs of the given radius (pixels) at points (N, 2) mapped from the data rectangle
 * [x0, x1] x [y0, y1] (y up) onto img (3, H, W), blending rgb with opacity alpha.  Points
 * outside the rectangle are skipped.  Returns how many were drawn. */
long df_scatter(df_tensor *img, const df_tensor *points, double x0, double x1, double y0, double y1,
                double radius, const float rgb[3], float alpha);

#endif
