#include "raster.h"

#include <math.h>

/* A perceptually ordered dark-to-light ramp (our own anchors): deep blue, violet, orange,
 * pale yellow.  Linear interpolation between anchors. */
static const float ramp[][3] = {
  {0.05f, 0.03f, 0.20f}, {0.30f, 0.07f, 0.45f}, {0.62f, 0.18f, 0.42f},
  {0.90f, 0.40f, 0.22f}, {0.98f, 0.72f, 0.30f}, {0.99f, 0.96f, 0.72f},
};
#define RAMP_N (int)(sizeof ramp / sizeof ramp[0])

static void ramp_at(double u, float out[3]) {
  if (!(u >= 0)) u = 0; /* also NaN handled by the caller */
  if (u > 1) u = 1;
  double pos = u * (RAMP_N - 1);
  int i = (int)pos;
  if (i >= RAMP_N - 1) i = RAMP_N - 2;
  double f = pos - i;
  for (int c = 0; c < 3; c++) out[c] = (float)((1 - f) * ramp[i][c] + f * ramp[i + 1][c]);
}

void df_colormap(df_tensor *img, const df_tensor *values, double lo, double hi) {
  int64_t h = values->shape[0], w = values->shape[1];
  double span = hi > lo ? hi - lo : 1.0;
  for (int64_t y = 0; y < h; y++)
    for (int64_t x = 0; x < w; x++) {
      float v = values->data[y * values->stride[0] + x * values->stride[1]];
      float rgb[3] = {1.0f, 1.0f, 1.0f};
      if (v == v) ramp_at(((double)v - lo) / span, rgb);
      for (int c = 0; c < 3; c++)
        img->data[c * img->stride[0] + y * img->stride[1] + x * img->stride[2]] = rgb[c];
    }
}

long df_scatter(df_tensor *img, const df_tensor *points, double x0, double x1, double y0, double y1,
                double radius, const float rgb[3], float alpha) {
  int64_t h = img->shape[1], w = img->shape[2];
  long drawn = 0;
  int r = (int)ceil(radius);
  double r2 = radius * radius;
  for (int64_t i = 0; i < points->shape[0]; i++) {
    double px = points->data[i * points->stride[0]];
    double py = points->data[i * points->stride[0] + points->stride[1]];
    if (!(px >= x0 && px <= x1 && py >= y0 && py <= y1)) continue;
    double cx = (px - x0) / (x1 - x0) * (double)(w - 1);
    double cy = (y1 - py) / (y1 - y0) * (double)(h - 1);
    int64_t ix = (int64_t)lround(cx), iy = (int64_t)lround(cy);
    for (int dy = -r; dy <= r; dy++)
      for (int dx = -r; dx <= r; dx++) {
        int64_t X = ix + dx, Y = iy + dy;
        if (X < 0 || Y < 0 || X >= w || Y >= h) continue;
        if ((double)(dx * dx + dy * dy) > r2 + 0.25) continue;
        for (int c = 0; c < 3; c++) {
          float *p = img->data + c * img->stride[0] + Y * img->stride[1] + X * img->stride[2];
          *p = (1 - alpha) * *p + alpha * rgb[c];
        }
      }
    drawn++;
  }
  return drawn;
}
