// Multi-resolution hash-grid encoding: the math shared by the CPU and CUDA kernels.
//
// Conventions follow tiny-cuda-nn's hash grid exactly, so parameters are interchangeable:
//   scale_l      = N_min * b^l - 1                      (computed once in Python, passed in Levels)
//   resolution_l = ceil(scale_l) + 1
//   position     = x * scale_l + 0.5; cell = floor(position); fraction = position - cell
//   a level is dense (index = x + y*res + z*res^2, uint32 arithmetic) while res^3 <= table size,
//   otherwise hashed with the CoherentPrime hash (primes 1, 2654435761, 805459861, xor-combined);
//   either index is taken modulo the level's table size.
//   table size_l = min(next multiple of 8 of res^3, 2^log2_T); parameters are level-major, then
//   table row, then feature; the encoding output is [N, levels * features] (level-major).
// Everything here is a small __host__ __device__ inline function: no allocation, no torch.
#pragma once

#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define HG_HD __host__ __device__ __forceinline__
#else
#define HG_HD inline
#endif
#ifdef __CUDA_ARCH__
#define HG_UNROLL _Pragma("unroll")
#else
#define HG_UNROLL
#endif

namespace hashgrid {

constexpr int kMaxLevels = 32;

// Per-level geometry, passed by value to kernels (fits in CUDA kernel parameter space).
struct Levels {
  uint32_t offset[kMaxLevels];      // first table row of each level (rows of `features` floats)
  uint32_t size[kMaxLevels];        // table rows of each level
  uint32_t resolution[kMaxLevels];  // grid vertices per axis
  float scale[kMaxLevels];          // N_min * b^l - 1
  int count;                        // number of levels
};

// CoherentPrime hash of a grid vertex (uint32 wrap-around arithmetic).
HG_HD uint32_t coherent_prime_hash(uint32_t x, uint32_t y, uint32_t z) {
  return x ^ (y * 2654435761u) ^ (z * 805459861u);
}

// True when a level stores every vertex (res^3 <= table size); false when it is hashed.
HG_HD bool level_is_dense(uint32_t resolution, uint32_t size) {
  const uint64_t r = resolution;
  return r * r * r <= static_cast<uint64_t>(size);
}

// Table row of a grid vertex. Hashed levels have a power-of-two size, so `%` is a mask there;
// dense in-range indices skip the division.
HG_HD uint32_t table_index(uint32_t x, uint32_t y, uint32_t z, uint32_t resolution, uint32_t size, bool dense) {
  if (dense) {
    const uint32_t index = x + y * resolution + z * (resolution * resolution);
    return index < size ? index : index % size;
  }
  return coherent_prime_hash(x, y, z) & (size - 1u);
}

// Grid position of one coordinate: returns the fraction in [0, 1) and writes the cell (uint32, wraps
// for negative cells exactly like tiny-cuda-nn's (uint32_t)(int)floorf). position = x * scale + 0.5
// is one rounding: fmaf on the device; on the host the product is exact in double, so
// (float)(x * scale + 0.5) in double is the same rounding except in vanishingly rare ties.
// The host floors by truncation and correction (exact for |position| < 2^31; avoids a libm call).
HG_HD float grid_fraction(float x, float scale, uint32_t* cell) {
#ifdef __CUDA_ARCH__
  const float position = fmaf(x, scale, 0.5f);
  const float floor_position = floorf(position);
  *cell = static_cast<uint32_t>(static_cast<int>(floor_position));
  return position - floor_position;
#else
  const float position = static_cast<float>(static_cast<double>(x) * static_cast<double>(scale) + 0.5);
  int floor_position = static_cast<int>(position);
  floor_position -= static_cast<float>(floor_position) > position ? 1 : 0;
  *cell = static_cast<uint32_t>(floor_position);
  return position - static_cast<float>(floor_position);
#endif
}

// Trilinear weights of the 8 cell corners; corner c takes +1 along axis d when bit d of c is set.
HG_HD void corner_weights(const float fraction[3], float weight[8]) {
  const float wx[2] = {1.0f - fraction[0], fraction[0]};
  const float wy[2] = {1.0f - fraction[1], fraction[1]};
  const float wz[2] = {1.0f - fraction[2], fraction[2]};
  float wxy[4];
  HG_UNROLL
  for (int c = 0; c < 4; ++c) wxy[c] = wx[c & 1] * wy[(c >> 1) & 1];
  HG_UNROLL
  for (int c = 0; c < 8; ++c) weight[c] = wxy[c & 3] * wz[(c >> 2) & 1];  // (wx * wy) * wz
}

// d weight[c] / d fraction[d] for the 8 corners.
HG_HD void corner_weight_gradients(const float fraction[3], float gradient[8][3]) {
  HG_UNROLL
  for (int c = 0; c < 8; ++c) {
    const float wx = (c & 1) ? fraction[0] : 1.0f - fraction[0];
    const float wy = (c & 2) ? fraction[1] : 1.0f - fraction[1];
    const float wz = (c & 4) ? fraction[2] : 1.0f - fraction[2];
    const float sx = (c & 1) ? 1.0f : -1.0f;
    const float sy = (c & 2) ? 1.0f : -1.0f;
    const float sz = (c & 4) ? 1.0f : -1.0f;
    gradient[c][0] = sx * (wy * wz);
    gradient[c][1] = sy * (wx * wz);
    gradient[c][2] = sz * (wx * wy);
  }
}

// Corners (table rows) and weights of one point at one level.
struct CellCorners {
  uint32_t row[8];     // table row within the level
  float weight[8];     // trilinear weight
  float fraction[3];   // position within the cell
};

HG_HD void cell_corners(const float point[3], const Levels& levels, int level, CellCorners* out) {
  const float scale = levels.scale[level];
  const uint32_t resolution = levels.resolution[level];
  const uint32_t size = levels.size[level];
  uint32_t cell[3];
  HG_UNROLL
  for (int d = 0; d < 3; ++d) out->fraction[d] = grid_fraction(point[d], scale, &cell[d]);
  corner_weights(out->fraction, out->weight);
  // Per-axis terms of the index for the lower (0) and upper (1) corner; combined by + (dense) or ^ (hash),
  // which equals table_index() corner by corner (uint32 arithmetic wraps the same way).
  if (level_is_dense(resolution, size)) {
    const uint32_t stride_z = resolution * resolution;
    const uint32_t ax[2] = {cell[0], cell[0] + 1u};
    const uint32_t ay[2] = {cell[1] * resolution, (cell[1] + 1u) * resolution};
    const uint32_t az[2] = {cell[2] * stride_z, (cell[2] + 1u) * stride_z};
    HG_UNROLL
    for (int c = 0; c < 8; ++c) {
      const uint32_t index = ax[c & 1] + ay[(c >> 1) & 1] + az[(c >> 2) & 1];
      out->row[c] = index < size ? index : index % size;
    }
  } else {
    const uint32_t ax[2] = {cell[0], cell[0] + 1u};
    const uint32_t ay[2] = {cell[1] * 2654435761u, (cell[1] + 1u) * 2654435761u};
    const uint32_t az[2] = {cell[2] * 805459861u, (cell[2] + 1u) * 805459861u};
    HG_UNROLL
    for (int c = 0; c < 8; ++c) out->row[c] = (ax[c & 1] ^ ay[(c >> 1) & 1] ^ az[(c >> 2) & 1]) & (size - 1u);
  }
}

}  // namespace hashgrid
