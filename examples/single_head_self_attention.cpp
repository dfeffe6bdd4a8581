// Single-head self-attention (query/key/value Linears, no output projection): embed size 4,
// input (2, 3, 4).
#include "example_util.hpp"

int main() {
  attn::SelfAttention<float> attention(4);
  const attn::Tensor<float> x = example::rand<float>({2, 3, 4}, 0);
  attn::Tensor<float> y;
  const double ms = example::time_ms([&] { y = attention.forward(x); });
  example::report("SelfAttention(4)", x.shape(), y, ms);
  return y.shape() == x.shape() ? 0 : 1;
}
