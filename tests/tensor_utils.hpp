#pragma once
// Tensor helpers for tests, the registry and the fuzzer (no GoogleTest): seeded random tensors
// and parameters, bitwise comparison, slices of sequences and decoding chunk by chunk.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

#include <attn/attn.hpp>

namespace attn_test {

using attn::Index;
using attn::Tensor;

/// Deterministic pseudo-random tensor in [-1, 1) (not a reference: for property tests).
template <class T>
Tensor<T> random_tensor(attn::Shape shape, std::uint64_t seed, double scale = 1.0) {
  return attn::random_uniform<T>(std::move(shape), seed, -scale, scale);
}

/// Bitwise equality of two tensors: same shape and same bytes (NaN-safe; -0 differs from 0).
template <class T>
bool same_bits(const Tensor<T>& a, const Tensor<T>& b) {
  return a.shape() == b.shape() &&
         (a.numel() == 0 || std::memcmp(a.data(), b.data(), sizeof(T) * static_cast<std::size_t>(a.numel())) == 0);
}

/// Replaces every parameter of module m by a random tensor of its shape (seeds seed, seed+1 ...).
template <class M>
void randomize(M& m, std::uint64_t seed) {
  using T = typename std::decay_t<decltype(m.state_dict().begin()->second)>::Scalar;
  attn::StateDict<T> dict = m.state_dict();
  for (auto& kv : dict) kv.second = random_tensor<T>(kv.second.shape(), seed++, 0.5);
  m.load_state_dict(dict);
}

/// x[b0 : b0 + nb, from : from + count, :] of a (B, L, E) tensor.
template <class T>
Tensor<T> part(const Tensor<T>& x, Index b0, Index nb, Index from, Index count) {
  const Index len = x.size(1), e = x.size(2);
  Tensor<T> y({nb, count, e});
  for (Index b = 0; b < nb; ++b)
    std::copy_n(x.data() + ((b0 + b) * len + from) * e, count * e, y.data() + b * count * e);
  return y;
}

/// y[:, from : from + chunk.size(1), :] = chunk.
template <class T>
void paste(Tensor<T>& y, const Tensor<T>& chunk, Index from) {
  const Index len = y.size(1), e = y.size(2), c = chunk.size(1);
  for (Index b = 0; b < y.size(0); ++b) std::copy_n(chunk.data() + b * c * e, c * e, y.data() + (b * len + from) * e);
}

/// step(chunk, from) on consecutive chunks of x (B, L, E) of `chunk` tokens (the last one
/// shorter; `from` is its first position), the (B, n, E) outputs put back together: a
/// sequence decoded chunk by chunk through a KV cache.
template <class T, class Step>
Tensor<T> in_chunks(const Tensor<T>& x, Index chunk, Step&& step) {
  Tensor<T> y(x.shape());
  for (Index from = 0; from < x.size(1); from += chunk) {
    const Index n = std::min(chunk, x.size(1) - from);
    const Tensor<T> out = step(part(x, 0, x.size(0), from, n), from);
    if (out.shape() != attn::Shape({x.size(0), n, x.size(2)}))
      throw std::logic_error("in_chunks: a step gave " + attn::to_string(out.shape()) + " for a chunk of " +
                             std::to_string(n));
    paste(y, out, from);
  }
  return y;
}

}  // namespace attn_test
