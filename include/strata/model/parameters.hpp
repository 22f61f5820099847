// strata/model/parameters.hpp: the parameter layout (names, shapes, offsets into one flat arena)
// and typed views of an arena, shared by the parameters, their gradients and the optimizer moments.
#pragma once

#include <cmath>
#include <string>
#include <tuple>
#include <unordered_map>
#include <utility>
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
  Index offset = 0;     ///< first element in the arena
  bool decay = false;   ///< AdamW weight decay applies (matrices, not biases/LayerNorm/positions)
  double init_std = 0;  ///< N(0, init_std) init; 0 with init_value for constants
  double init_value = 0;
  Index size() const { return rows * cols; }
  std::vector<Index> shape() const {
    return ndim == 1 ? std::vector<Index>{rows} : std::vector<Index>{rows, cols};
  }
};

/// Where every tensor of a model lives in the flat arena, in checkpoint-name terms. The names are
/// spelled here only: the layout also records which tensor plays which role, and the views
/// (ModelTensors) are made from that record.
class ParameterLayout {
 public:
  /// Positions in tensors() of one block's tensors.
  struct Block {
    size_t ln1_w, ln1_b, qkv_w, qkv_b, proj_w, proj_b, ln2_w, ln2_b, fc_w, fc_b, fcproj_w, fcproj_b;
  };
  /// Positions in tensors() of one feature map's tensors.
  struct Feature {
    size_t ln_w, ln_b, fc_w, fc_b, proj_w, proj_b;
  };

  ParameterLayout() = default;

  /// The layout of a validated configuration (its plan resolved here).
  explicit ParameterLayout(const ModelConfig& cfg)
      : ParameterLayout(cfg, cfg.attention.resolve(cfg.n_layer, cfg.n_head, cfg.n_embd)) {}

  /// The layout for a resolved plan: GPT-2 tensors first, then the feature maps in plan order
  /// (so that adding features never changes the initial values of the base model).
  ParameterLayout(const ModelConfig& cfg, const ResolvedPlan& plan) {
    const Index C = cfg.n_embd, V = cfg.vocab_size, H = cfg.mlp_width();
    const double std_w = 0.02, std_res = 0.02 / std::sqrt(2.0 * double(cfg.n_layer));
    wte_ = add_matrix("transformer.wte.weight", V, C, true, std_w);
    wpe_ = add_matrix("transformer.wpe.weight", cfg.context_length, C, false, std_w);
    for (Index l = 0; l < cfg.n_layer; ++l) {
      const std::string p = "transformer.h." + std::to_string(l) + ".";
      Block b{};
      std::tie(b.ln1_w, b.ln1_b) = add_norm(p + "ln_1", C);
      b.qkv_w = add_matrix(p + "attn.c_attn.weight", 3 * C, C, true, std_w);
      b.qkv_b = add_vector(p + "attn.c_attn.bias", 3 * C, 0.0);
      b.proj_w = add_matrix(p + "attn.c_proj.weight", C, C, true, std_res);
      b.proj_b = add_vector(p + "attn.c_proj.bias", C, 0.0);
      std::tie(b.ln2_w, b.ln2_b) = add_norm(p + "ln_2", C);
      b.fc_w = add_matrix(p + "mlp.c_fc.weight", H, C, true, std_w);
      b.fc_b = add_vector(p + "mlp.c_fc.bias", H, 0.0);
      b.fcproj_w = add_matrix(p + "mlp.c_proj.weight", C, H, true, std_res);
      b.fcproj_b = add_vector(p + "mlp.c_proj.bias", C, 0.0);
      blocks_.push_back(b);
    }
    std::tie(lnf_w_, lnf_b_) = add_norm("transformer.ln_f", C);
    for (const FeatureMap& fm : plan.features) {
      const std::string p = feature_prefix(fm, cfg.n_layer);
      Feature f{};
      std::tie(f.ln_w, f.ln_b) = add_norm(p + "ln", C);
      f.fc_w = add_matrix(p + "fc.weight", fm.width, C, true, std_w);
      f.fc_b = add_vector(p + "fc.bias", fm.width, 0.0);
      f.proj_w = add_matrix(p + "proj.weight", C, fm.width, true, std_w);
      f.proj_b = add_vector(p + "proj.bias", C, 0.0);
      features_.push_back(f);
    }
  }

  /// Name prefix of a feature map. The final block's maps have SPEC.md §3's names,
  /// "transformer.shortcut.{i}." for the output of block i and "transformer.shortcut.embed." for
  /// the embeddings; a map that block b < L-1 attends over is "transformer.h.{b}.shortcut.{i}."
  /// (".shortcut.embed.").
  static std::string feature_prefix(const FeatureMap& f, Index n_layer) {
    const std::string owner =
        f.block == n_layer - 1 ? "transformer." : "transformer.h." + std::to_string(f.block) + ".";
    return owner + "shortcut."
         + (f.depth == 0 ? std::string("embed") : std::to_string(block_writing(f.depth))) + ".";
  }

  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  Index total_size() const { return total_; }
  bool contains(const std::string& name) const { return index_.count(name) != 0; }
  const TensorInfo& at(const std::string& name) const {
    auto it = index_.find(name);
    if (it == index_.end()) fail("ParameterLayout: no tensor named '", name, "'");
    return tensors_[it->second];
  }

  size_t wte() const { return wte_; }
  size_t wpe() const { return wpe_; }
  size_t lnf_w() const { return lnf_w_; }
  size_t lnf_b() const { return lnf_b_; }
  const std::vector<Block>& blocks() const { return blocks_; }
  const std::vector<Feature>& features() const { return features_; }

 private:
  size_t add(TensorInfo t) {
    t.offset = total_;
    total_ += t.size();
    index_[t.name] = tensors_.size();
    tensors_.push_back(std::move(t));
    return tensors_.size() - 1;
  }
  size_t add_matrix(const std::string& name, Index rows, Index cols, bool decay, double init_std) {
    return add(TensorInfo{name, rows, cols, 2, 0, decay, init_std, 0.0});
  }
  size_t add_vector(const std::string& name, Index n, double value) {
    return add(TensorInfo{name, n, 1, 1, 0, false, 0.0, value});
  }
  std::pair<size_t, size_t> add_norm(const std::string& prefix, Index C) {
    const size_t w = add_vector(prefix + ".weight", C, 1.0);
    return {w, add_vector(prefix + ".bias", C, 0.0)};
  }

  std::vector<TensorInfo> tensors_;
  std::unordered_map<std::string, size_t> index_;
  Index total_ = 0;
  size_t wte_ = 0, wpe_ = 0, lnf_w_ = 0, lnf_b_ = 0;
  std::vector<Block> blocks_;
  std::vector<Feature> features_;
};

/// The tensors of one transformer block, as views into an arena.
template <typename Scalar>
struct BlockTensors {
  VectorMap<Scalar> ln1_w, ln1_b;
  MatrixMap<Scalar> qkv_w;   ///< [3C, C]: rows q, k, v blocks of C; head h owns rows h*hs.. of each
  VectorMap<Scalar> qkv_b;   ///< [3C]
  MatrixMap<Scalar> proj_w;  ///< [C, C]
  VectorMap<Scalar> proj_b;
  VectorMap<Scalar> ln2_w, ln2_b;
  MatrixMap<Scalar> fc_w;  ///< [4C, C]
  VectorMap<Scalar> fc_b;
  MatrixMap<Scalar> fcproj_w;  ///< [C, 4C]
  VectorMap<Scalar> fcproj_b;
};

/// A shortcut feature map (ResolvedPlan::features[i]): LayerNorm, Linear C->Cf, GELU, Linear Cf->C.
template <typename Scalar>
struct FeatureTensors {
  VectorMap<Scalar> ln_w, ln_b;
  MatrixMap<Scalar> fc_w;  ///< [Cf, C]
  VectorMap<Scalar> fc_b;
  MatrixMap<Scalar> proj_w;  ///< [C, Cf]
  VectorMap<Scalar> proj_b;
};

/// Typed views of a whole arena (parameters, gradients or optimizer moments).
template <typename Scalar>
struct ModelTensors {
  MatrixMap<Scalar> wte{nullptr, 0, 0};
  MatrixMap<Scalar> wpe{nullptr, 0, 0};
  std::vector<BlockTensors<Scalar>> blocks;
  VectorMap<Scalar> lnf_w{nullptr, 0}, lnf_b{nullptr, 0};
  std::vector<FeatureTensors<Scalar>> features;  ///< in the resolved plan's feature order

  ModelTensors() = default;
  // Eigen::Map assignment copies the viewed data, never the view: forbid it to avoid surprises.
  ModelTensors& operator=(const ModelTensors&) = delete;
  ModelTensors(Scalar* base, const ParameterLayout& layout) {
    auto mat = [&](size_t i) {
      const TensorInfo& t = layout.tensors()[i];
      return MatrixMap<Scalar>(base + t.offset, t.rows, t.cols);
    };
    auto vec = [&](size_t i) {
      const TensorInfo& t = layout.tensors()[i];
      return VectorMap<Scalar>(base + t.offset, t.rows);
    };
    new (&wte) MatrixMap<Scalar>(mat(layout.wte()));
    new (&wpe) MatrixMap<Scalar>(mat(layout.wpe()));
    for (const ParameterLayout::Block& b : layout.blocks())
      blocks.push_back(BlockTensors<Scalar>{
          vec(b.ln1_w), vec(b.ln1_b), mat(b.qkv_w), vec(b.qkv_b), mat(b.proj_w), vec(b.proj_b),
          vec(b.ln2_w), vec(b.ln2_b), mat(b.fc_w), vec(b.fc_b), mat(b.fcproj_w), vec(b.fcproj_b)});
    new (&lnf_w) VectorMap<Scalar>(vec(layout.lnf_w()));
    new (&lnf_b) VectorMap<Scalar>(vec(layout.lnf_b()));
    for (const ParameterLayout::Feature& f : layout.features())
      features.push_back(FeatureTensors<Scalar>{vec(f.ln_w), vec(f.ln_b), mat(f.fc_w), vec(f.fc_b),
                                                mat(f.proj_w), vec(f.proj_b)});
  }
};

}  // namespace strata
