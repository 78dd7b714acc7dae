/* ops.c: the small vector operations of the forward passes (norms). */
#include <math.h>

#include "engine.h"

void layer_norm(float * out, const float * x, const float * w, const float * b, int64_t n, float eps) {
    double mean = 0.0, var = 0.0;
    for (int64_t i = 0; i < n; i++) mean += x[i];
    mean /= (double)n;
    for (int64_t i = 0; i < n; i++) {
        double d = x[i] - mean;
        var += d * d;
    }
    var /= (double)n;
    const float inv = (float)(1.0 / sqrt(var + eps));
    const float mu = (float)mean;
    for (int64_t i = 0; i < n; i++) out[i] = (x[i] - mu) * inv * w[i] + b[i];
}

void group_norm(float * out, const float * x, const float * w, const float * b, int64_t n_groups, int64_t group, float eps) {
    for (int64_t g = 0; g < n_groups; g++) {
        const int64_t o = g * group;
        double mean = 0.0, var = 0.0;
        for (int64_t i = 0; i < group; i++) mean += x[o + i];
        mean /= (double)group;
        for (int64_t i = 0; i < group; i++) {
            double d = x[o + i] - mean;
            var += d * d;
        }
        var /= (double)group;
        const float inv = (float)(1.0 / sqrt(var + eps));
        const float mu = (float)mean;
        for (int64_t i = 0; i < group; i++) out[o + i] = (x[o + i] - mu) * inv * w[o + i] + b[o + i];
    }
}
