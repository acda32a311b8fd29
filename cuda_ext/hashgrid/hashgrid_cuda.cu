// Hash-grid encoding: the CUDA kernels (one thread per point and level) and their launchers.
// Grid gradients are accumulated with atomicAdd; input gradients use one thread per point looping over
// levels (no atomics, deterministic). Only the CUDA runtime and hashgrid_core.h are included, so this file
// compiles with nvcc alone (tests do exactly that when nvcc is present).
#include <cuda_runtime.h>

#include <cstdint>

#include "hashgrid_core.h"
#include "hashgrid_cuda.h"

namespace hashgrid {
namespace {

constexpr int kThreads = 256;

// out[i, level * F + k] for one point i (grid x) and one level (grid y).
template <int F>
__global__ void forward_kernel(const float* __restrict__ x, const float* __restrict__ params,
                               float* __restrict__ out, int64_t n, Levels levels) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int level = static_cast<int>(blockIdx.y);
  if (i >= n) return;
  const float point[3] = {x[3 * i], x[3 * i + 1], x[3 * i + 2]};
  CellCorners corners;
  cell_corners(point, levels, level, &corners);
  const float* table = params + static_cast<int64_t>(levels.offset[level]) * F;
  float acc[F];
  HG_UNROLL
  for (int k = 0; k < F; ++k) acc[k] = 0.0f;
  HG_UNROLL
  for (int c = 0; c < 8; ++c) {
    const float* row = table + static_cast<int64_t>(corners.row[c]) * F;
    HG_UNROLL
    for (int k = 0; k < F; ++k) acc[k] += corners.weight[c] * __ldg(row + k);
  }
  float* out_row = out + (i * levels.count + level) * F;
  HG_UNROLL
  for (int k = 0; k < F; ++k) out_row[k] = acc[k];
}

// grad_params[row] += weight * grad_out for the 8 corners of one point at one level.
template <int F>
__global__ void backward_params_kernel(const float* __restrict__ x, const float* __restrict__ grad_out,
                                       float* __restrict__ grad_params, int64_t n, Levels levels) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int level = static_cast<int>(blockIdx.y);
  if (i >= n) return;
  const float point[3] = {x[3 * i], x[3 * i + 1], x[3 * i + 2]};
  const float* g = grad_out + (i * levels.count + level) * F;
  float grad[F];
  HG_UNROLL
  for (int k = 0; k < F; ++k) grad[k] = g[k];
  CellCorners corners;
  cell_corners(point, levels, level, &corners);
  float* table = grad_params + static_cast<int64_t>(levels.offset[level]) * F;
  HG_UNROLL
  for (int c = 0; c < 8; ++c) {
    float* row = table + static_cast<int64_t>(corners.row[c]) * F;
    HG_UNROLL
    for (int k = 0; k < F; ++k) atomicAdd(row + k, corners.weight[c] * grad[k]);
  }
}

// grad_x[i] = sum over levels of scale * sum_c (d weight_c / d fraction) <params_c, grad_out>.
template <int F>
__global__ void backward_positions_kernel(const float* __restrict__ x, const float* __restrict__ params,
                                          const float* __restrict__ grad_out, float* __restrict__ grad_x,
                                          int64_t n, Levels levels) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float point[3] = {x[3 * i], x[3 * i + 1], x[3 * i + 2]};
  float total[3] = {0.0f, 0.0f, 0.0f};
  for (int level = 0; level < levels.count; ++level) {
    CellCorners corners;
    cell_corners(point, levels, level, &corners);
    float weight_gradient[8][3];
    corner_weight_gradients(corners.fraction, weight_gradient);
    const float* table = params + static_cast<int64_t>(levels.offset[level]) * F;
    const float* g = grad_out + (i * levels.count + level) * F;
    float level_total[3] = {0.0f, 0.0f, 0.0f};
    HG_UNROLL
    for (int c = 0; c < 8; ++c) {
      const float* row = table + static_cast<int64_t>(corners.row[c]) * F;
      float dot = 0.0f;
      HG_UNROLL
      for (int k = 0; k < F; ++k) dot += __ldg(row + k) * g[k];
      HG_UNROLL
      for (int d = 0; d < 3; ++d) level_total[d] += weight_gradient[c][d] * dot;
    }
    HG_UNROLL
    for (int d = 0; d < 3; ++d) total[d] += levels.scale[level] * level_total[d];
  }
  HG_UNROLL
  for (int d = 0; d < 3; ++d) grad_x[3 * i + d] = total[d];
}

dim3 point_level_grid(int64_t n, int level_count) {
  return dim3(static_cast<unsigned>((n + kThreads - 1) / kThreads), static_cast<unsigned>(level_count), 1);
}

unsigned point_blocks(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

template <int F>
int forward_launch(const float* x, const float* params, float* out, int64_t n, const Levels& levels,
                   cudaStream_t stream) {
  forward_kernel<F><<<point_level_grid(n, levels.count), kThreads, 0, stream>>>(x, params, out, n, levels);
  return static_cast<int>(cudaGetLastError());
}

template <int F>
int backward_launch(const float* x, const float* params, const float* grad_out, float* grad_params, float* grad_x,
                    int64_t n, const Levels& levels, cudaStream_t stream) {
  if (grad_params != nullptr) {
    backward_params_kernel<F>
        <<<point_level_grid(n, levels.count), kThreads, 0, stream>>>(x, grad_out, grad_params, n, levels);
    const cudaError_t error = cudaGetLastError();
    if (error != cudaSuccess) return static_cast<int>(error);
  }
  if (grad_x != nullptr) {
    backward_positions_kernel<F><<<point_blocks(n), kThreads, 0, stream>>>(x, params, grad_out, grad_x, n, levels);
  }
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

int forward_cuda(const float* x, const float* params, float* out, int64_t n, int features, const Levels& levels,
                 void* stream) {
  if (n <= 0) return 0;
  const auto s = static_cast<cudaStream_t>(stream);
  switch (features) {
    case 1: return forward_launch<1>(x, params, out, n, levels, s);
    case 2: return forward_launch<2>(x, params, out, n, levels, s);
    case 4: return forward_launch<4>(x, params, out, n, levels, s);
    case 8: return forward_launch<8>(x, params, out, n, levels, s);
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
}

int backward_cuda(const float* x, const float* params, const float* grad_out, float* grad_params, float* grad_x,
                  int64_t n, int features, const Levels& levels, void* stream) {
  if (n <= 0) return 0;
  const auto s = static_cast<cudaStream_t>(stream);
  switch (features) {
    case 1: return backward_launch<1>(x, params, grad_out, grad_params, grad_x, n, levels, s);
    case 2: return backward_launch<2>(x, params, grad_out, grad_params, grad_x, n, levels, s);
    case 4: return backward_launch<4>(x, params, grad_out, grad_params, grad_x, n, levels, s);
    case 8: return backward_launch<8>(x, params, grad_out, grad_params, grad_x, n, levels, s);
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
}

const char* cuda_error_message(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

}  // namespace hashgrid
