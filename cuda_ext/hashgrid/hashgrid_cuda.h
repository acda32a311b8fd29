// Launchers of the CUDA hash-grid kernels. Plain pointers and a raw stream handle only, so that
// hashgrid_cuda.cu compiles with nvcc alone and the torch bindings need no CUDA headers.
#pragma once

#include <cstdint>

#include "hashgrid_core.h"

namespace hashgrid {

// out[n, levels * features] = encoding of x[n, 3]. Returns a cudaError_t value (0 = success).
int forward_cuda(const float* x, const float* params, float* out, int64_t n, int features, const Levels& levels,
                 void* stream);

// Accumulates d loss / d params into grad_params (zeroed by the caller) and writes d loss / d x into
// grad_x; either may be null to skip it. Returns a cudaError_t value (0 = success).
int backward_cuda(const float* x, const float* params, const float* grad_out, float* grad_params, float* grad_x,
                  int64_t n, int features, const Levels& levels, void* stream);

// Human-readable message of a cudaError_t value.
const char* cuda_error_message(int code);

}  // namespace hashgrid
