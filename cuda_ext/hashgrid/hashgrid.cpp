// Hash-grid encoding: the C++ CPU kernel and the torch bindings of both the CPU and CUDA kernels.
//
// Ops (namespace dreamdistill_hashgrid; geometry as lists, see hashgrid_core.h):
//   forward(x[N,3] f32, params[P] f32, offsets, sizes, resolutions, scales, features, stream) -> [N, L*F]
//   backward(x, params, grad_out[N, L*F], ..., need_params, need_x, stream) -> (grad_params[P], grad_x[N,3])
// The device of x picks the kernel; `stream` is the raw CUDA stream (ignored on the CPU).
// CPU forward and input-gradient passes run in parallel over points. The parameter-gradient pass runs in
// parallel over levels: each level's table is written by exactly one thread, so accumulation is race-free
// without per-thread copies of the (large) gradient.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <tuple>
#include <type_traits>

#include "hashgrid_core.h"
#ifdef DREAMDISTILL_WITH_CUDA
#include "hashgrid_cuda.h"
#endif

namespace {

using hashgrid::CellCorners;
using hashgrid::Levels;

constexpr int64_t kPointGrain = 2048;

Levels make_levels(at::IntArrayRef offsets, at::IntArrayRef sizes, at::IntArrayRef resolutions,
                   at::ArrayRef<double> scales) {
  const auto count = static_cast<int64_t>(scales.size());
  TORCH_CHECK(count >= 1 && count <= hashgrid::kMaxLevels, "hash grid: 1 to ", hashgrid::kMaxLevels,
              " levels supported, got ", count);
  TORCH_CHECK(static_cast<int64_t>(offsets.size()) == count && static_cast<int64_t>(sizes.size()) == count &&
                  static_cast<int64_t>(resolutions.size()) == count,
              "hash grid: offsets, sizes, resolutions and scales must have one entry per level");
  Levels levels{};
  levels.count = static_cast<int>(count);
  for (int64_t l = 0; l < count; ++l) {
    TORCH_CHECK(sizes[l] > 0 && offsets[l] >= 0 && resolutions[l] > 0, "hash grid: bad geometry at level ", l);
    TORCH_CHECK(hashgrid::level_is_dense(static_cast<uint32_t>(resolutions[l]), static_cast<uint32_t>(sizes[l])) ||
                    (sizes[l] & (sizes[l] - 1)) == 0,
                "hash grid: hashed level ", l, " needs a power-of-two table size");
    levels.offset[l] = static_cast<uint32_t>(offsets[l]);
    levels.size[l] = static_cast<uint32_t>(sizes[l]);
    levels.resolution[l] = static_cast<uint32_t>(resolutions[l]);
    levels.scale[l] = static_cast<float>(scales[l]);
  }
  return levels;
}

int64_t parameter_count(const Levels& levels, int64_t features) {
  const int last = levels.count - 1;
  return (static_cast<int64_t>(levels.offset[last]) + levels.size[last]) * features;
}

void check_inputs(const at::Tensor& x, const at::Tensor& params, const Levels& levels, int64_t features) {
  TORCH_CHECK(features == 1 || features == 2 || features == 4 || features == 8,
              "hash grid: features per level must be 1, 2, 4 or 8, got ", features);
  TORCH_CHECK(x.dim() == 2 && x.size(1) == 3, "hash grid: positions must be [N, 3], got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat && params.scalar_type() == at::kFloat,
              "hash grid: positions and parameters must be float32");
  TORCH_CHECK(x.is_contiguous() && params.is_contiguous(), "hash grid: inputs must be contiguous");
  TORCH_CHECK(x.device() == params.device(), "hash grid: positions and parameters on different devices");
  TORCH_CHECK(params.dim() == 1 && params.numel() == parameter_count(levels, features),
              "hash grid: expected ", parameter_count(levels, features), " parameters, got ", params.sizes());
}

// ---- CPU kernel ---------------------------------------------------------------------------------------

// Table rows are random memory accesses: corners are computed and prefetched for a block of points first,
// then gathered, so that many cache misses are in flight at once.
constexpr int kBlock = 32;

inline void prefetch_rows(const float* table, const CellCorners& corners, int features, bool write) {
  for (int c = 0; c < 8; ++c) {
    const float* row = table + static_cast<int64_t>(corners.row[c]) * features;
    if (write) {
      __builtin_prefetch(row, 1, 3);
    } else {
      __builtin_prefetch(row, 0, 3);
    }
  }
}

template <int F>
void forward_cpu(const float* x, const float* params, float* out, int64_t n, const Levels& levels) {
  const int level_count = levels.count;
  at::parallel_for(0, n, kPointGrain, [&](int64_t begin, int64_t end) {
    CellCorners corners[kBlock];
    for (int64_t start = begin; start < end; start += kBlock) {
      const int count = static_cast<int>(std::min<int64_t>(kBlock, end - start));
      for (int l = 0; l < level_count; ++l) {
        const float* table = params + static_cast<int64_t>(levels.offset[l]) * F;
        for (int j = 0; j < count; ++j) {
          const float* p = x + 3 * (start + j);
          const float point[3] = {p[0], p[1], p[2]};
          hashgrid::cell_corners(point, levels, l, &corners[j]);
          prefetch_rows(table, corners[j], F, false);
        }
        for (int j = 0; j < count; ++j) {
          float acc[F] = {};
          for (int c = 0; c < 8; ++c) {
            const float* row = table + static_cast<int64_t>(corners[j].row[c]) * F;
            for (int k = 0; k < F; ++k) acc[k] += corners[j].weight[c] * row[k];
          }
          float* out_row = out + ((start + j) * level_count + l) * F;
          for (int k = 0; k < F; ++k) out_row[k] = acc[k];
        }
      }
    }
  });
}

// d loss / d params: one level per task, finest (most expensive) levels handed out first.
template <int F>
void backward_params_cpu(const float* x, const float* grad_out, float* grad_params, int64_t n, const Levels& levels) {
  const int level_count = levels.count;
  std::atomic<int> next_level{0};
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), level_count));
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    CellCorners corners[kBlock];
    for (int task = next_level.fetch_add(1); task < level_count; task = next_level.fetch_add(1)) {
      const int l = level_count - 1 - task;
      float* table = grad_params + static_cast<int64_t>(levels.offset[l]) * F;
      for (int64_t start = 0; start < n; start += kBlock) {
        const int count = static_cast<int>(std::min<int64_t>(kBlock, n - start));
        for (int j = 0; j < count; ++j) {
          const float* p = x + 3 * (start + j);
          const float point[3] = {p[0], p[1], p[2]};
          hashgrid::cell_corners(point, levels, l, &corners[j]);
          prefetch_rows(table, corners[j], F, true);
        }
        for (int j = 0; j < count; ++j) {
          const float* g = grad_out + ((start + j) * level_count + l) * F;
          for (int c = 0; c < 8; ++c) {
            float* row = table + static_cast<int64_t>(corners[j].row[c]) * F;
            for (int k = 0; k < F; ++k) row[k] += corners[j].weight[c] * g[k];
          }
        }
      }
    }
  });
}

// d loss / d x = sum_l scale_l * sum_c (d w_c / d fraction) <params_c, grad_out_l>.
template <int F>
void backward_positions_cpu(const float* x, const float* params, const float* grad_out, float* grad_x, int64_t n,
                            const Levels& levels) {
  const int level_count = levels.count;
  at::parallel_for(0, n, kPointGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float point[3] = {x[3 * i], x[3 * i + 1], x[3 * i + 2]};
      float total[3] = {0.0f, 0.0f, 0.0f};
      for (int l = 0; l < level_count; ++l) {
        CellCorners corners;
        hashgrid::cell_corners(point, levels, l, &corners);
        float weight_gradient[8][3];
        hashgrid::corner_weight_gradients(corners.fraction, weight_gradient);
        const float* table = params + static_cast<int64_t>(levels.offset[l]) * F;
        const float* g = grad_out + (i * level_count + l) * F;
        float level_total[3] = {0.0f, 0.0f, 0.0f};
        for (int c = 0; c < 8; ++c) {
          const float* row = table + static_cast<int64_t>(corners.row[c]) * F;
          float dot = 0.0f;
          for (int k = 0; k < F; ++k) dot += row[k] * g[k];
          for (int d = 0; d < 3; ++d) level_total[d] += weight_gradient[c][d] * dot;
        }
        for (int d = 0; d < 3; ++d) total[d] += levels.scale[l] * level_total[d];
      }
      for (int d = 0; d < 3; ++d) grad_x[3 * i + d] = total[d];
    }
  });
}

template <typename Fn>
void dispatch_features(int64_t features, Fn&& fn) {
  switch (features) {
    case 1: fn(std::integral_constant<int, 1>{}); break;
    case 2: fn(std::integral_constant<int, 2>{}); break;
    case 4: fn(std::integral_constant<int, 4>{}); break;
    case 8: fn(std::integral_constant<int, 8>{}); break;
    default: TORCH_CHECK(false, "hash grid: unsupported features per level ", features);
  }
}

#ifdef DREAMDISTILL_WITH_CUDA
void check_cuda(int code) { TORCH_CHECK(code == 0, "hash grid CUDA kernel: ", hashgrid::cuda_error_message(code)); }
#endif

// ---- ops ----------------------------------------------------------------------------------------------

at::Tensor forward(const at::Tensor& x, const at::Tensor& params, at::IntArrayRef offsets,
                   at::IntArrayRef sizes, at::IntArrayRef resolutions, at::ArrayRef<double> scales,
                   int64_t features, int64_t stream) {
  const Levels levels = make_levels(offsets, sizes, resolutions, scales);
  check_inputs(x, params, levels, features);
  const int64_t n = x.size(0);
  at::Tensor out = at::empty({n, levels.count * features}, x.options());
  if (n == 0) return out;
  if (x.is_cpu()) {
    dispatch_features(features, [&](auto f) {
      forward_cpu<decltype(f)::value>(x.data_ptr<float>(), params.data_ptr<float>(), out.data_ptr<float>(), n,
                                      levels);
    });
    return out;
  }
#ifdef DREAMDISTILL_WITH_CUDA
  TORCH_CHECK(x.is_cuda(), "hash grid: unsupported device ", x.device());
  check_cuda(hashgrid::forward_cuda(x.data_ptr<float>(), params.data_ptr<float>(), out.data_ptr<float>(), n,
                                    static_cast<int>(features), levels, reinterpret_cast<void*>(stream)));
  return out;
#else
  TORCH_CHECK(false, "hash grid: this build has no CUDA kernel (device ", x.device(), ")");
#endif
}

std::tuple<at::Tensor, at::Tensor> backward(const at::Tensor& x, const at::Tensor& params, const at::Tensor& grad_out,
                                            at::IntArrayRef offsets, at::IntArrayRef sizes,
                                            at::IntArrayRef resolutions, at::ArrayRef<double> scales,
                                            int64_t features, bool need_params, bool need_x, int64_t stream) {
  const Levels levels = make_levels(offsets, sizes, resolutions, scales);
  check_inputs(x, params, levels, features);
  const int64_t n = x.size(0);
  TORCH_CHECK(grad_out.scalar_type() == at::kFloat && grad_out.is_contiguous() &&
                  grad_out.device() == x.device() && grad_out.dim() == 2 && grad_out.size(0) == n &&
                  grad_out.size(1) == levels.count * features,
              "hash grid: grad_out must be contiguous float32 [N, levels * features], got ", grad_out.sizes());
  at::Tensor grad_params = need_params ? at::zeros_like(params) : at::Tensor();
  at::Tensor grad_x = need_x ? at::empty_like(x) : at::Tensor();
  if (n == 0) {
    if (need_x) grad_x.zero_();
    return {grad_params, grad_x};
  }
  if (x.is_cpu()) {
    dispatch_features(features, [&](auto f) {
      constexpr int F = decltype(f)::value;
      if (need_params) {
        backward_params_cpu<F>(x.data_ptr<float>(), grad_out.data_ptr<float>(), grad_params.data_ptr<float>(), n,
                               levels);
      }
      if (need_x) {
        backward_positions_cpu<F>(x.data_ptr<float>(), params.data_ptr<float>(), grad_out.data_ptr<float>(),
                                  grad_x.data_ptr<float>(), n, levels);
      }
    });
    return {grad_params, grad_x};
  }
#ifdef DREAMDISTILL_WITH_CUDA
  TORCH_CHECK(x.is_cuda(), "hash grid: unsupported device ", x.device());
  check_cuda(hashgrid::backward_cuda(x.data_ptr<float>(), params.data_ptr<float>(), grad_out.data_ptr<float>(),
                                     need_params ? grad_params.data_ptr<float>() : nullptr,
                                     need_x ? grad_x.data_ptr<float>() : nullptr, n, static_cast<int>(features),
                                     levels, reinterpret_cast<void*>(stream)));
  return {grad_params, grad_x};
#else
  TORCH_CHECK(false, "hash grid: this build has no CUDA kernel (device ", x.device(), ")");
#endif
}

bool has_cuda() {
#ifdef DREAMDISTILL_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace

TORCH_LIBRARY(dreamdistill_hashgrid, m) {
  m.def(
      "forward(Tensor x, Tensor params, int[] offsets, int[] sizes, int[] resolutions, float[] scales, "
      "int features, int stream) -> Tensor",
      &forward);
  m.def(
      "backward(Tensor x, Tensor params, Tensor grad_out, int[] offsets, int[] sizes, int[] resolutions, "
      "float[] scales, int features, bool need_params, bool need_x, int stream) -> (Tensor, Tensor)",
      &backward);
  m.def("has_cuda() -> bool", &has_cuda);
}
