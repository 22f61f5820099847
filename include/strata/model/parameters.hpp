// strata/model/parameters.hpp: the parameter layout (names, shapes, offsets into one flat arena)
// and typed views of an arena, shared by the parameters, their gradients and the optimizer moments.
#pragma once

#include <cmath>
#include <string>
#include <unordered_map>
#include <vector>

#include "../core/error.hpp"
#include "../core/types.hpp"
#include "config.hpp"

namespace strata {

/// One named tensor of the arena. 1-D tensors have cols == 1 and ndim == 1.
struct TensorInfo {
  std::string name;  ///< checkpoint name (SPEC.md §3)
  Index rows = 0;
  Index cols = 1;
  int ndim = 1;
  Index offset = 0;   ///< first element in the arena
  bool decay = false; ///< AdamW weight decay applies (matrices, not biases/LayerNorm/positions)
  double init_std = 0; ///< N(0, init_std) init; 0 with init_value for constants
  double init_value = 0;
  Index size() const { return rows * cols; }
  std::vector<Index> shape() const { return ndim == 1 ? std::vector<Index>{rows} : std::vector<Index>{rows, cols}; }
};

/// Where every tensor of a model lives in the flat arena, in checkpoint-name terms.
class ParameterLayout {
 public:
  ParameterLayout() = default;

  /// The layout of a validated configuration: GPT-2 tensors first, then shortcut features (so
  /// that adding features never changes the initial values of the base model).
  explicit ParameterLayout(const ModelConfig& cfg) {
    const Index C = cfg.n_embd, V = cfg.vocab_size, H = cfg.mlp_width();
    const double std_w = 0.02, std_res = 0.02 / std::sqrt(2.0 * double(cfg.n_layer));
    add_matrix("transformer.wte.weight", V, C, true, std_w);
    add_matrix("transformer.wpe.weight", cfg.context_length, C, false, std_w);
    for (Index l = 0; l < cfg.n_layer; ++l) {
      const std::string p = "transformer.h." + std::to_string(l) + ".";
      add_norm(p + "ln_1", C);
      add_matrix(p + "attn.c_attn.weight", 3 * C, C, true, std_w);
      add_vector(p + "attn.c_attn.bias", 3 * C, 0.0);
      add_matrix(p + "attn.c_proj.weight", C, C, true, std_res);
      add_vector(p + "attn.c_proj.bias", C, 0.0);
      add_norm(p + "ln_2", C);
      add_matrix(p + "mlp.c_fc.weight", H, C, true, std_w);
      add_vector(p + "mlp.c_fc.bias", H, 0.0);
      add_matrix(p + "mlp.c_proj.weight", C, H, true, std_res);
      add_vector(p + "mlp.c_proj.bias", C, 0.0);
    }
    add_norm("transformer.ln_f", C);
    if (cfg.attention.kind() == AttentionPlan::Kind::shortcut) {
      const Index Cf = cfg.feature_width();
      for (int r : cfg.attention.resolved_depths(static_cast<int>(cfg.n_layer))) {
        if (r == cfg.n_layer - 1) continue;  // identity map: the final block's own input
        const std::string p = feature_prefix(r);
        add_norm(p + "ln", C);
        add_matrix(p + "fc.weight", Cf, C, true, std_w);
        add_vector(p + "fc.bias", Cf, 0.0);
        add_matrix(p + "proj.weight", C, Cf, true, std_w);
        add_vector(p + "proj.bias", C, 0.0);
      }
    }
  }

  /// "transformer.shortcut.{r-1}." for the output of block r-1, "transformer.shortcut.embed." for
  /// depth 0.
  static std::string feature_prefix(int depth) {
    return depth == 0 ? std::string("transformer.shortcut.embed.")
                      : "transformer.shortcut." + std::to_string(depth - 1) + ".";
  }

  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  Index total_size() const { return total_; }
  bool contains(const std::string& name) const { return index_.count(name) != 0; }
  const TensorInfo& at(const std::string& name) const {
    auto it = index_.find(name);
    if (it == index_.end()) fail("ParameterLayout: no tensor named '", name, "'");
    return tensors_[it->second];
  }

 private:
  void add(TensorInfo t) {
    t.offset = total_;
    total_ += t.size();
    index_[t.name] = tensors_.size();
    tensors_.push_back(std::move(t));
  }
  void add_matrix(const std::string& name, Index rows, Index cols, bool decay, double init_std) {
    add(TensorInfo{name, rows, cols, 2, 0, decay, init_std, 0.0});
  }
  void add_vector(const std::string& name, Index n, double value) {
    add(TensorInfo{name, n, 1, 1, 0, false, 0.0, value});
  }
  void add_norm(const std::string& prefix, Index C) {
    add_vector(prefix + ".weight", C, 1.0);
    add_vector(prefix + ".bias", C, 0.0);
  }

  std::vector<TensorInfo> tensors_;
  std::unordered_map<std::string, size_t> index_;
  Index total_ = 0;
};

/// The tensors of one transformer block, as views into an arena.
template <typename Scalar>
struct BlockTensors {
  VectorMap<Scalar> ln1_w, ln1_b;
  MatrixMap<Scalar> qkv_w;  ///< [3C, C]: rows q, k, v blocks of C; head h owns rows h*hs.. of each
  VectorMap<Scalar> qkv_b;  ///< [3C]
  MatrixMap<Scalar> proj_w; ///< [C, C]
  VectorMap<Scalar> proj_b;
  VectorMap<Scalar> ln2_w, ln2_b;
  MatrixMap<Scalar> fc_w;   ///< [4C, C]
  VectorMap<Scalar> fc_b;
  MatrixMap<Scalar> fcproj_w;  ///< [C, 4C]
  VectorMap<Scalar> fcproj_b;
};

/// A shortcut feature map of one residual depth: LayerNorm, Linear C->Cf, GELU, Linear Cf->C.
template <typename Scalar>
struct FeatureTensors {
  int depth;
  VectorMap<Scalar> ln_w, ln_b;
  MatrixMap<Scalar> fc_w;   ///< [Cf, C]
  VectorMap<Scalar> fc_b;
  MatrixMap<Scalar> proj_w; ///< [C, Cf]
  VectorMap<Scalar> proj_b;
};

/// Typed views of a whole arena (parameters, gradients or optimizer moments).
template <typename Scalar>
struct ModelTensors {
  MatrixMap<Scalar> wte{nullptr, 0, 0};
  MatrixMap<Scalar> wpe{nullptr, 0, 0};
  std::vector<BlockTensors<Scalar>> blocks;
  VectorMap<Scalar> lnf_w{nullptr, 0}, lnf_b{nullptr, 0};
  std::vector<FeatureTensors<Scalar>> features;  ///< by increasing depth

  ModelTensors() = default;
  // Eigen::Map assignment copies the viewed data, never the view: forbid it to avoid surprises.
  ModelTensors& operator=(const ModelTensors&) = delete;
  ModelTensors(Scalar* base, const ParameterLayout& layout, const ModelConfig& cfg) {
    auto mat = [&](const std::string& n) {
      const TensorInfo& t = layout.at(n);
      return MatrixMap<Scalar>(base + t.offset, t.rows, t.cols);
    };
    auto vec = [&](const std::string& n) {
      const TensorInfo& t = layout.at(n);
      return VectorMap<Scalar>(base + t.offset, t.rows);
    };
    new (&wte) MatrixMap<Scalar>(mat("transformer.wte.weight"));
    new (&wpe) MatrixMap<Scalar>(mat("transformer.wpe.weight"));
    for (Index l = 0; l < cfg.n_layer; ++l) {
      const std::string p = "transformer.h." + std::to_string(l) + ".";
      blocks.push_back(BlockTensors<Scalar>{
          vec(p + "ln_1.weight"), vec(p + "ln_1.bias"), mat(p + "attn.c_attn.weight"),
          vec(p + "attn.c_attn.bias"), mat(p + "attn.c_proj.weight"), vec(p + "attn.c_proj.bias"),
          vec(p + "ln_2.weight"), vec(p + "ln_2.bias"), mat(p + "mlp.c_fc.weight"),
          vec(p + "mlp.c_fc.bias"), mat(p + "mlp.c_proj.weight"), vec(p + "mlp.c_proj.bias")});
    }
    new (&lnf_w) VectorMap<Scalar>(vec("transformer.ln_f.weight"));
    new (&lnf_b) VectorMap<Scalar>(vec("transformer.ln_f.bias"));
    if (cfg.attention.kind() == AttentionPlan::Kind::shortcut) {
      for (int r : cfg.attention.resolved_depths(static_cast<int>(cfg.n_layer))) {
        if (r == cfg.n_layer - 1) continue;
        const std::string p = ParameterLayout::feature_prefix(r);
        features.push_back(FeatureTensors<Scalar>{r, vec(p + "ln.weight"), vec(p + "ln.bias"),
                                                  mat(p + "fc.weight"), vec(p + "fc.bias"),
                                                  mat(p + "proj.weight"), vec(p + "proj.bias")});
      }
    }
  }
};

}  // namespace strata
