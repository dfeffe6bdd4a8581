#pragma once
/// @file
/// @brief What torch.nn's TransformerEncoderLayer and TransformerDecoderLayer share: the
/// residual step, the feed-forward block, their attention's options and their checks. Not
/// public API.

#include "attn/core/error.hpp"
#include "attn/core/generator.hpp"
#include "attn/core/tensor.hpp"
#include "attn/core/workspace.hpp"
#include "attn/modules/layer_norm.hpp"
#include "attn/modules/linear.hpp"
#include "attn/modules/options.hpp"
#include "attn/ops/activations.hpp"
#include "attn/ops/dropout.hpp"

namespace attn {
namespace detail {

/// The pieces of a torch.nn transformer layer every block uses: training flag, dropout
/// probability, generator.
template <class T>
struct LayerContext {
  bool training;
  double p;
  Generator* generator;
  /// Dropout on m in training mode (nn.Dropout(p)).
  template <class M>
  void drop(M&& m) const {
    if (training && p > 0.0) dropout_inplace(m.data(), m.size(), static_cast<T>(p), *generator);
  }
};

/// @brief One residual step of a torch.nn transformer layer on x (rows, E), in place:
/// post-norm x = norm(x + drop(f(x))), pre-norm x = x + drop(f(norm(x))). f(z, out) writes
/// the block's output for input rows z.
template <class T, class F>
void residual_step(Eigen::Map<RowMatrix<T>> x, const LayerNorm<T>& norm, bool norm_first, const LayerContext<T>& c,
                   F&& f) {
  const WorkBuffer<T> in(x.size()), out(x.size());
  Eigen::Map<RowMatrix<T>> z(in.data(), x.rows(), x.cols()), y(out.data(), x.rows(), x.cols());
  if (norm_first)
    norm.apply(x, z);
  else
    z = x;
  f(z, y);
  c.drop(y);
  x += y;
  if (!norm_first) norm.apply(x, x);
}

/// The feed-forward block: linear2(dropout(activation(linear1(z)))) into out.
template <class T>
void feed_forward(const Linear<T>& linear1, const Linear<T>& linear2, Activation activation, const LayerContext<T>& c,
                  const Eigen::Map<RowMatrix<T>>& z, Eigen::Map<RowMatrix<T>>& out) {
  const WorkBuffer<T> buffer(z.rows() * linear1.out_features());
  Eigen::Map<RowMatrix<T>> hidden(buffer.data(), z.rows(), linear1.out_features());
  linear1.apply(z, hidden);
  activation_inplace(hidden, activation);
  c.drop(hidden);
  linear2.apply(hidden, out);
}

/// The attention of a torch.nn transformer layer: nn.MultiheadAttention with the layer's dropout.
inline MultiHeadAttentionOptions torch_layer_attention(double dropout) {
  MultiHeadAttentionOptions o;
  o.dropout = dropout;
  return o;
}

/// Checks the constructor arguments shared by the torch.nn layers.
inline void check_transformer_layer(const char* where, Index d_model, Index nhead, const TransformerLayerOptions& o) {
  require(d_model > 0 && nhead > 0 && o.dim_feedforward > 0, where, ": d_model (", d_model, "), nhead (", nhead,
          ") and dim_feedforward (", o.dim_feedforward, ") must be positive");
  require(d_model % nhead == 0, where, ": d_model (", d_model, ") must be divisible by nhead (", nhead, ")");
  check_dropout_p(o.dropout, where);
  require(o.layer_norm_eps >= 0, where, ": layer_norm_eps must be >= 0, got ", o.layer_norm_eps);
}

}  // namespace detail
}  // namespace attn
