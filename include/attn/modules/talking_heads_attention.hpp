#pragma once
/// @file
/// @brief TalkingHeadsAttention<T>: timm's CaiT TalkingHeadAttn.

#include <cmath>
#include <cstdint>

#include "attn/core/error.hpp"
#include "attn/core/heads_view.hpp"
#include "attn/core/tensor.hpp"
#include "attn/core/workspace.hpp"
#include "attn/modules/attention_args.hpp"
#include "attn/modules/linear.hpp"
#include "attn/modules/module.hpp"
#include "attn/modules/options.hpp"
#include "attn/ops/dropout.hpp"
#include "attn/ops/talking_heads_attention.hpp"

namespace attn {

/// @brief Talking-heads attention (Shazeer et al. 2020) as timm's CaiT TalkingHeadAttn:
/// fused qkv, q * head_dim^-0.5, proj_l mixes heads before softmax, proj_w after it,
/// attention dropout, output projection, projection dropout.
///
/// Parameters: qkv.weight (3C, C) [qkv.bias], proj_l.{weight,bias} (H, H), proj_w.*, proj.*.
///
/// The attention core (talking_heads_attention) works on the fused qkv projection in
/// place and runs on attn::get_num_threads() threads; results are the same for any count.
template <class T>
class TalkingHeadsAttention : public Module<T> {
 public:
  /// @brief timm's TalkingHeadAttn(dim, num_heads, qkv_bias, attn_drop, proj_drop), same defaults.
  ///
  /// Every Linear starts U(-1/sqrt(in), 1/sqrt(in)) (PyTorch's Linear default) from a fixed
  /// seed. The module starts in eval mode; in training mode with attn_drop or proj_drop > 0,
  /// forward needs a Generator in its AttentionArgs.
  /// @param dim C, the features of each token (input and output); must be > 0 and divisible by
  /// num_heads
  /// @param num_heads H (default 8), heads of C / H features each; proj_l and proj_w are
  /// Linear(H, H); must be > 0
  /// @param options qkv_bias (whether the fused qkv Linear(C, 3C) has a bias; false),
  /// attn_drop (dropout on the attention weights, after proj_w and before they multiply v)
  /// and proj_drop (dropout on the output, after proj), each in [0, 1), default 0
  /// @throws std::invalid_argument if any of these constraints fails or the qkv weight's
  /// element count overflows
  TalkingHeadsAttention(Index dim, Index num_heads = 8, const TalkingHeadsOptions& options = {})
      : num_heads_(validated(dim, num_heads, options)),  // first member: checks run first
        options_(options),
        qkv_(dim, 3 * dim, options.qkv_bias, 21),
        proj_(dim, dim, true, 23),
        proj_l_(num_heads, num_heads, true, 25),
        proj_w_(num_heads, num_heads, true, 27),
        scale_(static_cast<compute_t<T>>(std::pow(static_cast<double>(dim / num_heads), -0.5))) {}

  /// C, the features of each token.
  Index dim() const { return qkv_.in_features(); }
  /// H, the number of heads.
  Index num_heads() const { return num_heads_; }
  /// The factor q is multiplied by: (C / H)^-0.5, as timm's head_dim ** -0.5.
  compute_t<T> scale() const { return scale_; }
  /// The constructor options.
  const TalkingHeadsOptions& options() const { return options_; }

  /// @param x (B, N, C) or (N, C)
  /// @param args optional masks, applied to the logits after proj_l (attn_mask broadcasting to
  /// (B, H, L, S), e.g. (L, S), or (B*H, L, S); H indexes the mixed head), causal, generator
  /// (training with dropout)
  /// @return (B, N, C) or (N, C)
  Tensor<T> forward(const TensorView<const T>& x, const AttentionArgs<T>& args = {}) const {
    constexpr const char* where = "attn::TalkingHeadsAttention::forward";
    const Index c = dim(), nh = num_heads_, d = c / nh;
    const Index nb = detail::check_sequence(where, "x", x.shape(), c);
    const Index n = x.size(-2);
    const bool training = this->is_training();
    this->require_generator(args.generator, std::max(options_.attn_drop, options_.proj_drop));
    SdpaOptions<T> opt = detail::sdpa_options(where, args, scale_, x.dim() == 2, n);
    opt.causal = args.causal;
    opt.generator = args.generator;
    opt.dropout_p = training ? static_cast<compute_t<T>>(options_.attn_drop) : 0;
    detail::check_options(where, opt, nb, nh, n, n);
    // q as (B*N, C) rows, k and v head-major (B, H, N, D): the kernel reads them in place.
    const detail::WorkBuffer<T> q(x.numel()), k(x.numel()), v(x.numel()), mixed(x.numel());
    qkv_.apply(x, {{0, HeadsView<T>::bnhd(q.data(), nb, n, 1, c, c)}, {c, HeadsView<T>::bhnd(k.data(), nb, nh, n, d)},
                   {2 * c, HeadsView<T>::bhnd(v.data(), nb, nh, n, d)}});
    const TalkingHeadsMix<T> mix{
        {proj_l_.weight().data(), nh, nh}, {proj_l_.bias().data(), nh},
        {proj_w_.weight().data(), nh, nh}, {proj_w_.bias().data(), nh}};
    using Heads = HeadsView<const T>;
    detail::prefix_errors(where, [&] {
      talking_heads_attention<T>(Heads::bnhd(q.data(), nb, n, nh, d, c), Heads::bhnd(k.data(), nb, nh, n, d),
                                 Heads::bhnd(v.data(), nb, nh, n, d), HeadsView<T>::bnhd(mixed.data(), nb, n, nh, d, c),
                                 mix, opt);
    });
    auto out = Tensor<T>::uninitialized(x.shape());
    proj_.apply(Eigen::Map<const RowMatrix<T>>(mixed.data(), x.numel() / c, c), out.matrix());
    if (training && options_.proj_drop > 0.0)
      dropout_inplace(out.data(), out.numel(), static_cast<T>(options_.proj_drop), *args.generator);
    return out;
  }

 protected:
  /// The parameters by PyTorch name, writable (see Module::slots).
  std::vector<ParameterSlot<T>> slots() override {
    std::vector<ParameterSlot<T>> s;
    this->append_child(s, qkv_, "qkv.");
    this->append_child(s, proj_, "proj.");
    this->append_child(s, proj_l_, "proj_l.");
    this->append_child(s, proj_w_, "proj_w.");
    return s;
  }
  const char* type_name() const override { return "attn::TalkingHeadsAttention"; }
  std::vector<Module<T>*> children() override { return {&qkv_, &proj_, &proj_l_, &proj_w_}; }

 private:
  /// Checks the constructor arguments before anything is allocated; returns num_heads.
  static Index validated(Index dim, Index num_heads, const TalkingHeadsOptions& o) {
    constexpr const char* where = "attn::TalkingHeadsAttention";
    detail::require(dim > 0 && num_heads > 0, where, ": dim (", dim, ") and num_heads (", num_heads,
                    ") must be positive");
    detail::require(dim % num_heads == 0, where, ": dim (", dim, ") must be divisible by num_heads (",
                    num_heads, ")");
    detail::checked_numel({3, dim, dim}, where);
    detail::check_dropout_p(o.attn_drop, where);
    detail::check_dropout_p(o.proj_drop, where);
    return num_heads;
  }

  Index num_heads_;
  TalkingHeadsOptions options_;
  Linear<T> qkv_, proj_, proj_l_, proj_w_;
  compute_t<T> scale_;
};

}  // namespace attn
