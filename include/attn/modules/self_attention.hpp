#pragma once
/// @file
/// @brief SelfAttention<T>: single-head self-attention with query/key/value Linears.

#include <cmath>

#include "attn/core/error.hpp"
#include "attn/core/heads_view.hpp"
#include "attn/core/tensor.hpp"
#include "attn/core/workspace.hpp"
#include "attn/modules/attention_args.hpp"
#include "attn/modules/linear.hpp"
#include "attn/modules/module.hpp"
#include "attn/ops/scaled_dot_product_attention.hpp"

namespace attn {

/// @brief softmax(Q K^T / sqrt(embed_size)) V with Q, K, V = Linear(x): one head, no
/// output projection: the single-head SelfAttention of many tutorials.
///
/// Parameters: query.{weight,bias}, key.{weight,bias}, value.{weight,bias}, stored
/// stacked so that the three projections are one GEMM.
/// @note That layer divides by torch.sqrt(torch.tensor(embed_size, dtype=float32)): the square
/// root is rounded to float even for double inputs. attn does the same, so double results
/// match the PyTorch layer to double precision.
template <class T>
class SelfAttention : public Module<T> {
 public:
  /// @brief Three nn.Linear(embed_size, embed_size) layers (query, key, value), with bias.
  ///
  /// Their weights and biases start U(-1/sqrt(E), 1/sqrt(E)) as PyTorch's Linear, from a fixed
  /// seed. The layer has no dropout.
  /// @param embed_size E, the features of each token (input and output); must be > 0
  /// @throws std::invalid_argument if embed_size <= 0 or the stacked weight's element count overflows
  explicit SelfAttention(Index embed_size)
      : qkv_(make_qkv(embed_size)), scale_(compute_t<T>(1) / static_cast<compute_t<T>>(std::sqrt(static_cast<float>(embed_size)))) {}

  /// E, the features of each token.
  Index embed_size() const { return qkv_.in_features(); }
  /// The factor applied to q k^T: 1 / sqrt(E), with the square root rounded to float.
  compute_t<T> scale() const { return scale_; }

  /// @param x (B, N, E) or (N, E) @param args optional masks (one head: attn_mask (L, S),
  /// (B, L, S) or any shape broadcasting to (B, 1, L, S)), causal @return (B, N, E) or (N, E)
  Tensor<T> forward(const TensorView<const T>& x, const AttentionArgs<T>& args = {}) const {
    constexpr const char* where = "attn::SelfAttention::forward";
    const Index e = embed_size();
    const Index nb = detail::check_sequence(where, "x", x.shape(), e);
    const Index n = x.size(-2);
    SdpaOptions<T> opt = detail::sdpa_options(where, args, scale_, x.dim() == 2, n);
    opt.causal = args.causal;
    detail::check_options(where, opt, nb, 1, n, n);
    // q, k and v each as (B*N, E) rows (one head: head-major is the same), from one GEMM.
    const detail::WorkBuffer<T> q(x.numel()), k(x.numel()), v(x.numel());
    const auto rows = [&](const detail::WorkBuffer<T>& b) { return HeadsView<T>::bnhd(b.data(), nb, n, 1, e, e); };
    qkv_.apply(x, {{0, rows(q)}, {e, rows(k)}, {2 * e, rows(v)}});
    auto out = Tensor<T>::uninitialized(x.shape());
    using Heads = HeadsView<const T>;
    detail::prefix_errors(where, [&] {
      scaled_dot_product_attention<T>(Heads::bhnd(q.data(), nb, 1, n, e), Heads::bhnd(k.data(), nb, 1, n, e),
                                      Heads::bhnd(v.data(), nb, 1, n, e), HeadsView<T>::bhnd(out.data(), nb, 1, n, e),
                                      opt);
    });
    return out;
  }

 protected:
  /// The parameters by PyTorch name, writable (see Module::slots).
  std::vector<ParameterSlot<T>> slots() override {
    const auto qkv = Module<T>::slots_of(qkv_);  // weight (3E, E), bias (3E): stacked query, key, value
    T* w = qkv[0].data;
    T* b = qkv[1].data;
    const Index e = embed_size();
    return {{"query.weight", w, {e, e}},         {"query.bias", b, {e}},
            {"key.weight", w + e * e, {e, e}},   {"key.bias", b + e, {e}},
            {"value.weight", w + 2 * e * e, {e, e}}, {"value.bias", b + 2 * e, {e}}};
  }
  const char* type_name() const override { return "attn::SelfAttention"; }
  std::vector<Module<T>*> children() override { return {&qkv_}; }

 private:
  /// Linear(E, 3E), rows [query; key; value]: each PyTorch Linear(E, E) is U(-1/sqrt(E),
  /// 1/sqrt(E)) and the stacked layer has the same bound. Checks E before allocating.
  static Linear<T> make_qkv(Index e) {
    detail::require(e > 0, "attn::SelfAttention: embed_size must be positive, got ", e);
    detail::checked_numel({3, e, e}, "attn::SelfAttention");
    return Linear<T>(e, 3 * e, true, 11);
  }

  Linear<T> qkv_;
  compute_t<T> scale_;
};

}  // namespace attn
