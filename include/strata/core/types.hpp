// strata/core/types.hpp: index type and the Eigen matrix aliases used throughout.
#pragma once

#include <cstdint>

#include <Eigen/Core>

#if !EIGEN_VERSION_AT_LEAST(3, 4, 0)
#error "strata needs Eigen 3.4 or newer"
#endif
#if __cplusplus < 201703L
#error "strata needs C++17"
#endif

namespace strata {

/// All sizes and offsets are 64-bit: B*T*V overflows 32 bits at realistic sizes.
using Index = Eigen::Index;
/// Token ids are 32-bit; a byte-level vocabulary uses 0..255.
using Token = std::int32_t;

/// Activations and weights: row-major, one row per token (weights as PyTorch's Linear, [out, in]).
template <typename Scalar>
using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <typename Scalar>
using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
/// Token ids, [B, T].
using TokenMatrix = Eigen::Matrix<Token, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// Kernel arguments: inputs accept blocks and maps without copies, outputs write in place.
template <typename Scalar>
using MatrixRef = Eigen::Ref<Matrix<Scalar>>;
template <typename Scalar>
using ConstMatrixRef = const Eigen::Ref<const Matrix<Scalar>>&;
template <typename Scalar>
using VectorRef = Eigen::Ref<Vector<Scalar>>;
template <typename Scalar>
using ConstVectorRef = const Eigen::Ref<const Vector<Scalar>>&;
using ConstTokensRef = const Eigen::Ref<const TokenMatrix>&;

/// Views into an arena: a row-major [rows, cols] matrix or a vector at a fixed address.
template <typename Scalar>
using MatrixMap = Eigen::Map<Matrix<Scalar>>;
template <typename Scalar>
using VectorMap = Eigen::Map<Vector<Scalar>>;

/// How a backward pass writes the gradient of its input. `accumulate` (every kernel's default)
/// adds to what the buffer holds, so that the several consumers of one input can share it;
/// `overwrite` writes it, for the buffer's first (or only) contribution: it saves the pass that
/// would zero the buffer first, and the buffer's old contents are never read (they may be
/// anything, NaN included).
enum class InputGrad { accumulate, overwrite };

}  // namespace strata
