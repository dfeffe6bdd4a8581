// The backward pass of the attention core (scaled_dot_product_attention_backward):
//   - central finite differences of the forward, for every logit rule (causal both ways, a
//     window, softcap, ALiBi, bool and float masks, sinks, grouped heads, key_lengths, a
//     scale), in float64; float32 against float64;
//   - dropout's backward uses exactly the forward's kept weights;
//   - a query whose keys are all masked passes no gradient;
//   - every thread count gives the same bits;
//   - bad input is refused.
// torch.autograd's gradients are checked in test_decoding_reference (AttentionCoreReference,
// the core_backward_* cases).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "support.hpp"

namespace {

using namespace attn_test;
using attn::Causal;
using attn::SdpaOptions;
using attn::Shape;

/// An attention problem: q (B, H, L, D), k and v (B, K, S, D), grad_out, and the options'
/// tensors (kept alive here).
struct Problem {
  Index b = 2, h = 4, kv = 2, l = 7, s = 11, d = 6;
  Tensor<double> q, k, v, grad_out, slopes, sinks, float_mask;
  Tensor<bool> padding;
  std::vector<std::int64_t> lengths;
  explicit Problem(std::uint64_t seed, Index len_q = 7, Index len_k = 11) : l(len_q), s(len_k) {
    q = random_tensor<double>({b, h, l, d}, seed, 1.5);
    k = random_tensor<double>({b, kv, s, d}, seed + 1, 1.5);
    v = random_tensor<double>({b, kv, s, d}, seed + 2);
    grad_out = random_tensor<double>({b, h, l, d}, seed + 3);
    slopes = random_tensor<double>({h}, seed + 4, 0.5);
    sinks = random_tensor<double>({h}, seed + 5, 2.0);
    float_mask = random_tensor<double>({l, s}, seed + 6, 2.0);
    padding = Tensor<bool>({b, s});
    for (Index j = 0; j < s; ++j) padding(1, j) = j % 3 == 1;  // batch element 1: some keys blocked
    lengths = {s - 4, s};
  }
};

/// x rounded to float.
Tensor<float> to_float(const Tensor<double>& x) {
  Tensor<float> y(x.shape());
  std::transform(x.data(), x.data() + x.numel(), y.data(), [](double v) { return float(v); });
  return y;
}

/// The option sets the checks run, by name.
std::vector<std::pair<std::string, std::function<void(SdpaOptions<double>&, Problem&)>>> option_sets() {
  using O = SdpaOptions<double>;
  return {
      {"plain", [](O&, Problem&) {}},
      {"causal top-left", [](O& o, Problem&) { o.causal = Causal::kTopLeft; }},
      {"causal bottom-right", [](O& o, Problem&) { o.causal = Causal::kBottomRight; }},
      {"window", [](O& o, Problem&) { o.sliding_window = 4; }},
      {"softcap", [](O& o, Problem&) { o.softcap = 1.5; }},
      {"alibi", [](O& o, Problem& p) { o.alibi_slopes = p.slopes.view(); }},
      {"bool key padding", [](O& o, Problem& p) { o.key_padding_mask = attn::Mask<double>::block_where_true(p.padding); }},
      {"float mask", [](O& o, Problem& p) { o.attn_mask = attn::Mask<double>::additive(p.float_mask); }},
      {"sinks", [](O& o, Problem& p) { o.sinks = p.sinks.view(); }},
      {"key lengths", [](O& o, Problem& p) { o.key_lengths = {p.lengths.data(), {2}}; }},
      {"scale", [](O& o, Problem&) { o.scale = 0.9; }},
      {"everything", [](O& o, Problem& p) {
         o.causal = Causal::kBottomRight, o.sliding_window = 6, o.softcap = 2.0, o.alibi_slopes = p.slopes.view();
         o.key_padding_mask = attn::Mask<double>::block_where_true(p.padding), o.sinks = p.sinks.view();
       }},
  };
}

/// sum(out * grad_out) of the forward: the loss whose gradient the backward pass gives.
double loss(const Problem& p, const SdpaOptions<double>& opt) {
  const Tensor<double> out = attn::scaled_dot_product_attention<double>(p.q, p.k, p.v, opt);
  double sum = 0;
  for (Index i = 0; i < out.numel(); ++i) sum += out.data()[i] * p.grad_out.data()[i];
  return sum;
}

/// The backward pass of p under opt: the forward (with its lse), then the gradients.
template <class T>
attn::SdpaGradients<T> backward(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v, const Tensor<T>& grad_out,
                                SdpaOptions<T> opt) {
  Tensor<T> lse;
  opt.lse = &lse;
  const Tensor<T> out = attn::scaled_dot_product_attention<T>(q, k, v, opt);
  opt.lse = nullptr;
  return attn::scaled_dot_product_attention_backward<T>(q, k, v, out, grad_out, lse, opt);
}

// Every gradient entry equals the central difference of the loss, under every option set.
TEST(AttentionBackward, MatchesFiniteDifferences) {
  for (auto& [name, set] : option_sets()) {
    SCOPED_TRACE(name);
    Problem p(11);
    SdpaOptions<double> opt;
    set(opt, p);
    const attn::SdpaGradients<double> g = backward(p.q, p.k, p.v, p.grad_out, opt);
    for (auto [x, gx, what] : {std::make_tuple(&p.q, &g.query, "dq"), std::make_tuple(&p.k, &g.key, "dk"),
                               std::make_tuple(&p.v, &g.value, "dv")}) {
      double worst = 0, scale = 0;
      for (Index i = 0; i < x->numel(); ++i) {
        const double keep = x->data()[i], step = 1e-6;
        x->data()[i] = keep + step;
        const double up = loss(p, opt);
        x->data()[i] = keep - step;
        const double down = loss(p, opt);
        x->data()[i] = keep;
        worst = std::max(worst, std::abs((up - down) / (2 * step) - gx->data()[i]));
        scale = std::max(scale, std::abs(gx->data()[i]));
      }
      EXPECT_GT(scale, 0.1) << what << " is all but zero";
      EXPECT_LT(worst, 1e-7 * std::max(1.0, scale)) << what;
    }
  }
}

// float32's gradients are float64's to float32 precision, through several query and key
// tiles.
TEST(AttentionBackward, FloatMatchesDouble) {
  Problem p(21, 70, 150);
  for (auto& [name, set] : option_sets()) {
    SCOPED_TRACE(name);
    SdpaOptions<double> o64;
    set(o64, p);
    const Tensor<float> slopes = to_float(p.slopes), sinks = to_float(p.sinks), float_mask = to_float(p.float_mask);
    SdpaOptions<float> o32;
    o32.causal = o64.causal, o32.sliding_window = o64.sliding_window, o32.key_lengths = o64.key_lengths;
    if (o64.softcap) o32.softcap = float(*o64.softcap);
    if (o64.scale) o32.scale = float(*o64.scale);
    if (!o64.alibi_slopes.empty()) o32.alibi_slopes = slopes.view();
    if (!o64.sinks.empty()) o32.sinks = sinks.view();
    if (!o64.key_padding_mask.empty()) o32.key_padding_mask = attn::Mask<float>::block_where_true(p.padding);
    if (!o64.attn_mask.empty()) o32.attn_mask = attn::Mask<float>::additive(float_mask);
    const auto g64 = backward(p.q, p.k, p.v, p.grad_out, o64);
    const auto g32 = backward(to_float(p.q), to_float(p.k), to_float(p.v), to_float(p.grad_out), o32);
    EXPECT_TRUE(AllClose(g32.query, g64.query, 2e-5)) << "dq";
    EXPECT_TRUE(AllClose(g32.key, g64.key, 2e-5)) << "dk";
    EXPECT_TRUE(AllClose(g32.value, g64.value, 2e-5)) << "dv";
  }
}

// With dropout, dv is W^T dO for the weights W the forward returned (after dropout): the
// backward pass regenerates exactly the forward's kept weights from a copy of its generator.
TEST(AttentionBackward, DropoutUsesTheForwardsKeptWeights) {
  Problem p(31, 9, 13);
  attn::Generator gen(77);
  const attn::Generator before = gen;
  Tensor<double> weights, lse;
  SdpaOptions<double> opt;
  opt.dropout_p = 0.3, opt.generator = &gen, opt.attn_weights = &weights, opt.lse = &lse;
  const Tensor<double> out = attn::scaled_dot_product_attention<double>(p.q, p.k, p.v, opt);
  attn::Generator replay = before;
  opt.generator = &replay, opt.attn_weights = nullptr, opt.lse = nullptr;
  const auto g = attn::scaled_dot_product_attention_backward<double>(p.q, p.k, p.v, out, p.grad_out, lse, opt);
  Index dropped = 0;
  for (Index b = 0; b < p.b; ++b)
    for (Index kvh = 0; kvh < p.kv; ++kvh)
      for (Index j = 0; j < p.s; ++j)
        for (Index c = 0; c < p.d; ++c) {
          double want = 0;
          for (Index h = kvh * 2; h < kvh * 2 + 2; ++h)
            for (Index i = 0; i < p.l; ++i) {
              want += weights(b, h, i, j) * p.grad_out(b, h, i, c);
              dropped += c == 0 && weights(b, h, i, j) == 0;
            }
          ASSERT_NEAR(g.value(b, kvh, j, c), want, 1e-12) << b << " " << kvh << " " << j << " " << c;
        }
  EXPECT_GT(dropped, 0);
  // And another generator state gives other gradients.
  attn::Generator other(78);
  opt.generator = &other;
  const auto g2 = attn::scaled_dot_product_attention_backward<double>(p.q, p.k, p.v, out, p.grad_out, lse, opt);
  EXPECT_FALSE(AllClose(g2.value, g.value, 1e-6));
}

// A query whose keys are all masked (its output 0) passes no gradient to anything.
TEST(AttentionBackward, FullyMaskedQueriesPassNoGradient) {
  Problem p(41);
  Tensor<bool> blocked({p.l, p.s});
  for (Index j = 0; j < p.s; ++j) blocked(2, j) = true;  // query 2 sees nothing
  SdpaOptions<double> opt;
  opt.attn_mask = attn::Mask<double>::block_where_true(blocked);
  const auto with = backward(p.q, p.k, p.v, p.grad_out, opt);
  Tensor<double> grad_out = p.grad_out;
  for (Index b = 0; b < p.b; ++b)
    for (Index h = 0; h < p.h; ++h)
      for (Index c = 0; c < p.d; ++c) grad_out(b, h, 2, c) = 0;  // no gradient arrives at query 2
  const auto without = backward(p.q, p.k, p.v, grad_out, opt);
  EXPECT_TRUE(same_bits(with.key, without.key));
  EXPECT_TRUE(same_bits(with.value, without.value));
  for (Index b = 0; b < p.b; ++b)
    for (Index h = 0; h < p.h; ++h)
      for (Index c = 0; c < p.d; ++c) EXPECT_EQ(with.query(b, h, 2, c), 0.0);
}

// One thread and two give the same bits.
TEST(AttentionBackward, BitIdenticalForEveryThreadCount) {
  Problem p(51, 130, 200);
  SdpaOptions<double> opt;
  opt.causal = Causal::kBottomRight;
  opt.softcap = 3.0;
  const int threads = attn::get_num_threads();
  attn::set_num_threads(1);
  const auto one = backward(p.q, p.k, p.v, p.grad_out, opt);
  attn::set_num_threads(2);
  const auto two = backward(p.q, p.k, p.v, p.grad_out, opt);
  attn::set_num_threads(threads);
  EXPECT_TRUE(same_bits(one.query, two.query));
  EXPECT_TRUE(same_bits(one.key, two.key));
  EXPECT_TRUE(same_bits(one.value, two.value));
}

// Misshaped grad_out or lse, gradients that overlap an input, asking for weights or lse, and
// mixed ranks are refused.
TEST(AttentionBackward, RefusesBadInput) {
  Problem p(61);
  Tensor<double> lse;
  SdpaOptions<double> opt;
  opt.lse = &lse;
  const Tensor<double> out = attn::scaled_dot_product_attention<double>(p.q, p.k, p.v, opt);
  opt.lse = nullptr;
  const auto run = [&](const Tensor<double>& grad_out, const Tensor<double>& l, const SdpaOptions<double>& o) {
    attn::scaled_dot_product_attention_backward<double>(p.q, p.k, p.v, out, grad_out, l, o);
  };
  ExpectInvalid([&] { run(random_tensor<double>({2, 4, 7, 5}, 1), lse, opt); },
                {"scaled_dot_product_attention_backward", "grad_out (2, 4, 7, 5)", "out's (2, 4, 7, 6)"});
  ExpectInvalid([&] { run(p.grad_out, random_tensor<double>({2, 4, 6}, 1), opt); }, {"lse (2, 4, 6)", "(B, H, L) = (2, 4, 7)"});
  SdpaOptions<double> asks = opt;
  Tensor<double> w;
  asks.attn_weights = &w;
  ExpectInvalid([&] { run(p.grad_out, lse, asks); }, {"returns no attn_weights or lse"});
  const auto in = [](const Tensor<double>& t) { return attn::detail::tensor_heads(t.view()); };
  const auto mut = [](Tensor<double>& t) { return attn::detail::tensor_heads(t.view()); };
  Tensor<double> q = p.q, q2 = p.q, dk(p.k.shape()), dv(p.v.shape());
  ExpectInvalid(
      [&] {
        attn::scaled_dot_product_attention_backward<double>(in(q), in(p.k), in(p.v), in(out), in(p.grad_out), lse,
                                                            mut(q), mut(dk), mut(dv), opt);
      },
      {"dq overlaps q"});
  ExpectInvalid(
      [&] {
        attn::scaled_dot_product_attention_backward<double>(in(p.q), in(p.k), in(p.v), in(out), in(p.grad_out), lse,
                                                            mut(q2), mut(dk), mut(dk), opt);
      },
      {"dv overlaps dk"});
  ExpectInvalid([&] { attn::scaled_dot_product_attention_backward<double>(p.q, p.k, p.v, out, Tensor<double>(p.grad_out).reshaped({8, 7, 6}), lse); },
                {"must all be (B, H, N, D) or all (B, N, D)"});
}

}  // namespace
