// Multi-head attention written with separate q / k / v / out Linear layers (the common
// tutorial form): embed 128, 8 heads, query = key = value (64, 10, 128).
// MhaLayout::kSeparateLinears gives it those parameter names (q.weight, ..., out.bias) and
// its scale convention.
#include "example_util.hpp"

int main() {
  attn::MultiHeadAttentionOptions options;
  options.layout = attn::MhaLayout::kSeparateLinears;
  attn::MultiHeadAttention<float> attention(128, 8, options);
  const attn::Tensor<float> x = example::rand<float>({64, 10, 128}, 1);
  attn::MhaOutput<float> r;
  const double ms = example::time_ms([&] { r = attention.forward(x, x, x); });
  example::report("MultiHeadAttention(128, 8)", x.shape(), r.output, ms);
  std::printf("parameters: %s ... (%ld elements)\n", attention.state_dict().begin()->first.c_str(),
              static_cast<long>(attention.num_parameters()));
  return r.output.shape() == x.shape() ? 0 : 1;
}
