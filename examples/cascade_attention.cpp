// Cascade attention for a shared prompt: N sequences share a long system prompt (the prefix)
// and each has its own suffix. One decoding step attends each sequence's new query to
// prefix + suffix. Instead of reading the prefix's keys and values once per sequence, the
// cascade computes the prefix's attention once for all N queries (one call, the N queries as
// a block of rows), then each sequence's attention over its own suffix, and merges the two
// states by their log-sum-exps (SdpaOptions::lse, merge_attention_state_inplace), as
// FlashInfer's cascade does. The result must equal attention over the concatenated keys
// (exit 1 otherwise); both ways are timed.
// Usage: cascade_attention [--sequences N] [--prefix P] [--heads H] [--kv-heads K] [--head-dim D]
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "example_util.hpp"

namespace {

using attn::Index;
using attn::Tensor;

struct Config {
  Index sequences = 16, prefix = 4096, heads = 8, kv_heads = 2, head_dim = 64;
};

/// Rows [0, a.size(2)) of a then of b along the sequence axis: (1, K, A + B, D).
Tensor<float> concat(const Tensor<float>& a, const Tensor<float>& b) {
  Tensor<float> y({1, a.size(1), a.size(2) + b.size(2), a.size(3)});
  for (Index h = 0; h < a.size(1); ++h)
    for (Index j = 0; j < y.size(2); ++j)
      for (Index d = 0; d < a.size(3); ++d) y(0, h, j, d) = j < a.size(2) ? a(0, h, j, d) : b(0, h, j - a.size(2), d);
  return y;
}

/// Row i (a query) of every head of x (1, H, N, D) as (1, H, 1, D); lse (1, H, N) alike.
Tensor<float> row(const Tensor<float>& x, Index i) {
  const bool lse = x.dim() == 3;
  const Index heads = x.size(1), width = lse ? 1 : x.size(3);
  Tensor<float> y(lse ? attn::Shape{1, heads, 1} : attn::Shape{1, heads, 1, width});
  for (Index h = 0; h < heads; ++h)
    for (Index d = 0; d < width; ++d) y.data()[h * width + d] = x.data()[(h * x.size(2) + i) * width + d];
  return y;
}

Config parse(int argc, char** argv) {
  Config c;
  for (int i = 1; i + 1 < argc; i += 2) {
    const Index v = std::atol(argv[i + 1]);
    if (!std::strcmp(argv[i], "--sequences")) c.sequences = v;
    else if (!std::strcmp(argv[i], "--prefix")) c.prefix = v;
    else if (!std::strcmp(argv[i], "--heads")) c.heads = v;
    else if (!std::strcmp(argv[i], "--kv-heads")) c.kv_heads = v;
    else if (!std::strcmp(argv[i], "--head-dim")) c.head_dim = v;
    else throw std::invalid_argument(std::string("unknown option ") + argv[i]);
  }
  return c;
}

}  // namespace

int main(int argc, char** argv) {
  const Config c = parse(argc, argv);
  const Index n = c.sequences, h = c.heads, k = c.kv_heads, d = c.head_dim;
  const Tensor<float> prefix_k = example::rand<float>({1, k, c.prefix, d}, 1),
                      prefix_v = example::rand<float>({1, k, c.prefix, d}, 2);
  std::vector<Tensor<float>> suffix_k, suffix_v, full_k, full_v;
  for (Index i = 0; i < n; ++i) {  // suffixes of 64 .. 64 + 12 (N - 1) tokens
    suffix_k.push_back(example::rand<float>({1, k, 64 + 12 * i, d}, 10 + 2 * i));
    suffix_v.push_back(example::rand<float>({1, k, 64 + 12 * i, d}, 11 + 2 * i));
    full_k.push_back(concat(prefix_k, suffix_k.back()));
    full_v.push_back(concat(prefix_v, suffix_v.back()));
  }
  // Query i (one new token of sequence i, every head) is row i of q (1, H, N, D).
  const Tensor<float> q = attn::random_uniform<float>({1, h, n, d}, 3, -2.0, 2.0);

  std::vector<Tensor<float>> direct(n), cascade(n);
  const double direct_ms = example::time_ms([&] {
    for (Index i = 0; i < n; ++i) direct[i] = attn::scaled_dot_product_attention<float>(row(q, i), full_k[i], full_v[i]);
  });
  const double cascade_ms = example::time_ms([&] {
    Tensor<float> prefix_lse, suffix_lse;
    attn::SdpaOptions<float> opt;
    opt.lse = &prefix_lse;  // the prefix once, for all N queries
    const Tensor<float> prefix_out = attn::scaled_dot_product_attention<float>(q, prefix_k, prefix_v, opt);
    opt.lse = &suffix_lse;
    for (Index i = 0; i < n; ++i) {
      cascade[i] = row(prefix_out, i);
      Tensor<float> lse = row(prefix_lse, i);
      const Tensor<float> own = attn::scaled_dot_product_attention<float>(row(q, i), suffix_k[i], suffix_v[i], opt);
      attn::merge_attention_state_inplace<float>(cascade[i], lse, own, suffix_lse);
    }
  });

  double worst = 0;
  for (Index i = 0; i < n; ++i)
    for (Index j = 0; j < direct[i].numel(); ++j) worst = std::max(worst, double(std::abs(direct[i][j] - cascade[i][j])));
  const double prefix_mb = 2.0 * double(k * c.prefix * d) * sizeof(float) / 1e6;
  std::printf("cascade_attention: %lld sequences sharing a %lld-token prefix (%.1f MB of keys and values), "
              "%lld heads over %lld kv heads, head dim %lld\n",
              (long long)n, (long long)c.prefix, prefix_mb, (long long)h, (long long)k, (long long)d);
  std::printf("  each sequence over prefix + suffix: %.2f ms (the prefix read %lld times)\n", direct_ms, (long long)n);
  std::printf("  cascade, prefix once + suffixes, merged: %.2f ms (%.1fx)\n", cascade_ms, direct_ms / cascade_ms);
  std::printf("  max |cascade - direct| = %.3g\n", worst);
  if (!(worst <= 1e-5)) {
    std::printf("cascade_attention: FAILED: the merged states differ from attention over all keys\n");
    return 1;
  }
  return 0;
}
