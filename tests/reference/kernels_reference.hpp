// tests/reference/kernels_reference.hpp: the plainest possible loop versions of the kernels in
// include/strata/kernels/, written from SPEC.md section 1 (not from the optimized code), used as
// the oracle in tests/test_kernels.cpp.
//
// Conventions:
// - Plain nested loops over indices, no Eigen expressions beyond element access.
// - Every sum is accumulated in double and the result is cast to Scalar once at the end, so the
//   reference is at least as accurate as the kernel for Scalar = float.
// - Forward functions return their outputs; backward functions return *fresh* gradients (they do
// not
//   accumulate). The accumulation contract of the kernels is tested as prefill + fresh.
// - No shape checks: the caller passes consistent shapes.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <vector>

#include <strata/core/types.hpp>

namespace strata::reference {

// ---- embedding ---------------------------------------------------------------------------------
// out[b*T + t, c] = wte[tokens(b, t), c] + wpe[pos0 + t, c]
// tokens [B, T], wte [V, C], wpe [maxT, C] -> out [B*T, C]
template <typename Scalar>
Matrix<Scalar> embedding_forward(const TokenMatrix& tokens, const Matrix<Scalar>& wte,
                                 const Matrix<Scalar>& wpe, Index pos0 = 0) {
  const Index B = tokens.rows(), T = tokens.cols(), C = wte.cols();
  Matrix<Scalar> out(B * T, C);
  for (Index b = 0; b < B; ++b)
    for (Index t = 0; t < T; ++t)
      for (Index c = 0; c < C; ++c) {
        const double v =
            static_cast<double>(wte(tokens(b, t), c)) + static_cast<double>(wpe(pos0 + t, c));
        out(b * T + t, c) = static_cast<Scalar>(v);
      }
  return out;
}

template <typename Scalar>
struct EmbeddingGrads {
  Matrix<Scalar> dwte;  // [V, C]
  Matrix<Scalar> dwpe;  // [maxT, C]
};

// In the forward pass this was: out[b*T + t, c] = wte[tokens(b, t), c] + wpe[pos0 + t, c], so
// dwte[v, c] = sum over (b, t) with tokens(b, t) == v of dout[b*T + t, c], and
// dwpe[p, c] = sum over b of dout[b*T + (p - pos0), c].
template <typename Scalar>
EmbeddingGrads<Scalar> embedding_backward(const Matrix<Scalar>& dout, const TokenMatrix& tokens,
                                          Index V, Index maxT, Index pos0 = 0) {
  const Index B = tokens.rows(), T = tokens.cols(), C = dout.cols();
  std::vector<double> dwte(static_cast<std::size_t>(V * C), 0.0);
  std::vector<double> dwpe(static_cast<std::size_t>(maxT * C), 0.0);
  for (Index b = 0; b < B; ++b)
    for (Index t = 0; t < T; ++t)
      for (Index c = 0; c < C; ++c) {
        const double g = static_cast<double>(dout(b * T + t, c));
        dwte[static_cast<std::size_t>(tokens(b, t) * C + c)] += g;
        dwpe[static_cast<std::size_t>((pos0 + t) * C + c)] += g;
      }
  EmbeddingGrads<Scalar> grads{Matrix<Scalar>(V, C), Matrix<Scalar>(maxT, C)};
  for (Index v = 0; v < V; ++v)
    for (Index c = 0; c < C; ++c)
      grads.dwte(v, c) = static_cast<Scalar>(dwte[static_cast<std::size_t>(v * C + c)]);
  for (Index p = 0; p < maxT; ++p)
    for (Index c = 0; c < C; ++c)
      grads.dwpe(p, c) = static_cast<Scalar>(dwpe[static_cast<std::size_t>(p * C + c)]);
  return grads;
}

// ---- layernorm ---------------------------------------------------------------------------------
inline constexpr double layernorm_eps = 1e-5;

template <typename Scalar>
struct LayerNormOut {
  Matrix<Scalar> out;   // [N, C]
  Vector<Scalar> mean;  // [N]
  Vector<Scalar> rstd;  // [N], 1 / sqrt(var + eps) with the biased variance
};

// For each row x (length C):  mu = (1/C) sum_c x_c;  var = (1/C) sum_c (x_c - mu)^2;
// out_c = (x_c - mu) / sqrt(var + eps) * w_c + b_c.
template <typename Scalar>
LayerNormOut<Scalar> layernorm_forward(const Matrix<Scalar>& inp, const Vector<Scalar>& weight,
                                       const Vector<Scalar>& bias) {
  const Index N = inp.rows(), C = inp.cols();
  LayerNormOut<Scalar> r{Matrix<Scalar>(N, C), Vector<Scalar>(N), Vector<Scalar>(N)};
  for (Index i = 0; i < N; ++i) {
    double mu = 0;
    for (Index c = 0; c < C; ++c) mu += static_cast<double>(inp(i, c));
    mu /= static_cast<double>(C);
    double var = 0;
    for (Index c = 0; c < C; ++c) {
      const double d = static_cast<double>(inp(i, c)) - mu;
      var += d * d;
    }
    var /= static_cast<double>(C);
    const double rstd = 1.0 / std::sqrt(var + layernorm_eps);
    for (Index c = 0; c < C; ++c) {
      const double xhat = (static_cast<double>(inp(i, c)) - mu) * rstd;
      r.out(i, c) =
          static_cast<Scalar>(xhat * static_cast<double>(weight(c)) + static_cast<double>(bias(c)));
    }
    r.mean(i) = static_cast<Scalar>(mu);
    r.rstd(i) = static_cast<Scalar>(rstd);
  }
  return r;
}

template <typename Scalar>
struct LayerNormGrads {
  Matrix<Scalar> dinp;     // [N, C]
  Vector<Scalar> dweight;  // [C]
  Vector<Scalar> dbias;    // [C]
};

// Backward by the chain rule through the computational graph of the forward pass (recomputing the
// statistics from inp, not using the saved ones):
//   xhat_c = (x_c - mu) * s,  s = (var + eps)^(-1/2),  out_c = xhat_c * w_c + b_c
//   dbias_c += dout_c;  dweight_c += dout_c * xhat_c;  dxhat_c = dout_c * w_c
//   dvar = sum_c dxhat_c * (x_c - mu) * (-1/2) (var + eps)^(-3/2)
//   dmu  = sum_c dxhat_c * (-s) + dvar * (-2/C) sum_c (x_c - mu)        (the last sum is 0 in exact
//   math) dx_c = dxhat_c * s + dvar * 2 (x_c - mu) / C + dmu / C
template <typename Scalar>
LayerNormGrads<Scalar> layernorm_backward(const Matrix<Scalar>& dout, const Matrix<Scalar>& inp,
                                          const Vector<Scalar>& weight) {
  const Index N = inp.rows(), C = inp.cols();
  const double Cd = static_cast<double>(C);
  std::vector<double> dweight(static_cast<std::size_t>(C), 0.0),
      dbias(static_cast<std::size_t>(C), 0.0);
  std::vector<double> dxhat(static_cast<std::size_t>(C));
  LayerNormGrads<Scalar> g{Matrix<Scalar>(N, C), Vector<Scalar>(C), Vector<Scalar>(C)};
  for (Index i = 0; i < N; ++i) {
    double mu = 0;
    for (Index c = 0; c < C; ++c) mu += static_cast<double>(inp(i, c));
    mu /= Cd;
    double var = 0;
    for (Index c = 0; c < C; ++c) {
      const double d = static_cast<double>(inp(i, c)) - mu;
      var += d * d;
    }
    var /= Cd;
    const double s = 1.0 / std::sqrt(var + layernorm_eps);
    double dvar = 0, sum_centered = 0;
    for (Index c = 0; c < C; ++c) {
      const std::size_t cu = static_cast<std::size_t>(c);
      const double xc = static_cast<double>(inp(i, c)) - mu;
      const double dy = static_cast<double>(dout(i, c));
      dbias[cu] += dy;
      dweight[cu] += dy * xc * s;
      dxhat[cu] = dy * static_cast<double>(weight(c));
      dvar += dxhat[cu] * xc * -0.5 * std::pow(var + layernorm_eps, -1.5);
      sum_centered += xc;
    }
    double dmu = 0;
    for (Index c = 0; c < C; ++c) dmu += dxhat[static_cast<std::size_t>(c)] * -s;
    dmu += dvar * (-2.0 / Cd) * sum_centered;
    for (Index c = 0; c < C; ++c) {
      const double xc = static_cast<double>(inp(i, c)) - mu;
      const double dx = dxhat[static_cast<std::size_t>(c)] * s + dvar * 2.0 * xc / Cd + dmu / Cd;
      g.dinp(i, c) = static_cast<Scalar>(dx);
    }
  }
  for (Index c = 0; c < C; ++c) {
    g.dweight(c) = static_cast<Scalar>(dweight[static_cast<std::size_t>(c)]);
    g.dbias(c) = static_cast<Scalar>(dbias[static_cast<std::size_t>(c)]);
  }
  return g;
}

// ---- linear ------------------------------------------------------------------------------------
// out[n, o] = sum_i inp[n, i] * weight[o, i] + bias[o]
// inp [N, IC], weight [OC, IC], bias [OC] (empty = no bias) -> out [N, OC]
template <typename Scalar>
Matrix<Scalar> linear_forward(const Matrix<Scalar>& inp, const Matrix<Scalar>& weight,
                              const Vector<Scalar>& bias) {
  const Index N = inp.rows(), IC = inp.cols(), OC = weight.rows();
  Matrix<Scalar> out(N, OC);
  for (Index n = 0; n < N; ++n)
    for (Index o = 0; o < OC; ++o) {
      double acc = bias.size() > 0 ? static_cast<double>(bias(o)) : 0.0;
      for (Index i = 0; i < IC; ++i)
        acc += static_cast<double>(inp(n, i)) * static_cast<double>(weight(o, i));
      out(n, o) = static_cast<Scalar>(acc);
    }
  return out;
}

template <typename Scalar>
struct LinearGrads {
  Matrix<Scalar> dinp;     // [N, IC]
  Matrix<Scalar> dweight;  // [OC, IC]
  Vector<Scalar> dbias;    // [OC]
};

// In the forward pass this was: out[n, o] += inp[n, i] * weight[o, i], so
//   dinp[n, i] += dout[n, o] * weight[o, i];  dweight[o, i] += dout[n, o] * inp[n, i];
//   dbias[o] += dout[n, o].
template <typename Scalar>
LinearGrads<Scalar> linear_backward(const Matrix<Scalar>& dout, const Matrix<Scalar>& inp,
                                    const Matrix<Scalar>& weight) {
  const Index N = inp.rows(), IC = inp.cols(), OC = weight.rows();
  LinearGrads<Scalar> g{Matrix<Scalar>(N, IC), Matrix<Scalar>(OC, IC), Vector<Scalar>(OC)};
  for (Index n = 0; n < N; ++n)
    for (Index i = 0; i < IC; ++i) {
      double acc = 0;
      for (Index o = 0; o < OC; ++o)
        acc += static_cast<double>(dout(n, o)) * static_cast<double>(weight(o, i));
      g.dinp(n, i) = static_cast<Scalar>(acc);
    }
  for (Index o = 0; o < OC; ++o)
    for (Index i = 0; i < IC; ++i) {
      double acc = 0;
      for (Index n = 0; n < N; ++n)
        acc += static_cast<double>(dout(n, o)) * static_cast<double>(inp(n, i));
      g.dweight(o, i) = static_cast<Scalar>(acc);
    }
  for (Index o = 0; o < OC; ++o) {
    double acc = 0;
    for (Index n = 0; n < N; ++n) acc += static_cast<double>(dout(n, o));
    g.dbias(o) = static_cast<Scalar>(acc);
  }
  return g;
}

// ---- GELU (tanh approximation) -----------------------------------------------------------------
inline double gelu(double x) {
  const double k = std::sqrt(2.0 / 3.14159265358979323846);
  return 0.5 * x * (1.0 + std::tanh(k * (x + 0.044715 * x * x * x)));
}

// d/dx 0.5 x (1 + tanh u), u = k (x + a x^3):
//   = 0.5 (1 + tanh u) + 0.5 x sech^2(u) k (1 + 3 a x^2),  sech^2 u = 1 / cosh^2 u.
inline double gelu_grad(double x) {
  const double k = std::sqrt(2.0 / 3.14159265358979323846);
  const double a = 0.044715;
  const double u = k * (x + a * x * x * x);
  const double ch = std::cosh(u);
  const double sech2 = 1.0 / (ch * ch);
  return 0.5 * (1.0 + std::tanh(u)) + 0.5 * x * sech2 * k * (1.0 + 3.0 * a * x * x);
}

template <typename Scalar>
Matrix<Scalar> gelu_forward(const Matrix<Scalar>& inp) {
  Matrix<Scalar> out(inp.rows(), inp.cols());
  for (Index n = 0; n < inp.rows(); ++n)
    for (Index c = 0; c < inp.cols(); ++c)
      out(n, c) = static_cast<Scalar>(gelu(static_cast<double>(inp(n, c))));
  return out;
}

// dinp = dout * gelu'(inp), elementwise (fresh, not accumulated).
template <typename Scalar>
Matrix<Scalar> gelu_backward(const Matrix<Scalar>& dout, const Matrix<Scalar>& inp) {
  Matrix<Scalar> dinp(inp.rows(), inp.cols());
  for (Index n = 0; n < inp.rows(); ++n)
    for (Index c = 0; c < inp.cols(); ++c)
      dinp(n, c) = static_cast<Scalar>(static_cast<double>(dout(n, c))
                                       * gelu_grad(static_cast<double>(inp(n, c))));
  return dinp;
}

// ---- softmax cross-entropy ---------------------------------------------------------------------
template <typename Scalar>
struct CrossEntropyOut {
  Vector<Scalar> losses;  // [N], -log softmax(logits[i])[y_i]
  Vector<Scalar> lse;     // [N], log sum_j exp(logits[i, j])
  double mean_loss;       // (1/N) sum_i losses[i]
};

// Row i of logits [N, V] belongs to targets(i / T, i % T), targets [B, T], B*T = N.
//   losses[i] = log sum_j exp(logits[i, j]) - logits[i, y_i]   (evaluated with the row maximum
//   subtracted first, so that exp never overflows).
template <typename Scalar>
CrossEntropyOut<Scalar> cross_entropy_forward(const Matrix<Scalar>& logits,
                                              const TokenMatrix& targets) {
  const Index N = logits.rows(), V = logits.cols(), T = targets.cols();
  CrossEntropyOut<Scalar> r{Vector<Scalar>(N), Vector<Scalar>(N), 0.0};
  double total = 0;
  for (Index i = 0; i < N; ++i) {
    double m = static_cast<double>(logits(i, 0));
    for (Index j = 1; j < V; ++j) m = std::max(m, static_cast<double>(logits(i, j)));
    double sum = 0;
    for (Index j = 0; j < V; ++j) sum += std::exp(static_cast<double>(logits(i, j)) - m);
    const Index y = targets(i / T, i % T);
    const double lse = m + std::log(sum);
    const double loss = lse - static_cast<double>(logits(i, y));
    r.losses(i) = static_cast<Scalar>(loss);
    r.lse(i) = static_cast<Scalar>(lse);
    total += loss;
  }
  r.mean_loss = total / static_cast<double>(N);
  return r;
}

// Gradient of scale * sum_i losses[i] (scale = 1/N for the mean loss):
//   dlogits[i, j] = scale * (softmax(logits[i])_j - [j == y_i])   (fresh, not accumulated).
template <typename Scalar>
Matrix<Scalar> cross_entropy_backward(const Matrix<Scalar>& logits, const TokenMatrix& targets,
                                      double scale) {
  const Index N = logits.rows(), V = logits.cols(), T = targets.cols();
  Matrix<Scalar> dlogits(N, V);
  for (Index i = 0; i < N; ++i) {
    double m = static_cast<double>(logits(i, 0));
    for (Index j = 1; j < V; ++j) m = std::max(m, static_cast<double>(logits(i, j)));
    double sum = 0;
    for (Index j = 0; j < V; ++j) sum += std::exp(static_cast<double>(logits(i, j)) - m);
    const Index y = targets(i / T, i % T);
    for (Index j = 0; j < V; ++j) {
      const double p = std::exp(static_cast<double>(logits(i, j)) - m) / sum;
      dlogits(i, j) = static_cast<Scalar>(scale * (p - (j == y ? 1.0 : 0.0)));
    }
  }
  return dlogits;
}

}  // namespace strata::reference
