// AttentionBlock on CNN feature maps (N, C, L) = (32, 64, 1024), 8 heads;
// self-attention over the L positions, residual + LayerNorm, same layout out.
#include "example_util.hpp"

int main() {
  attn::AttentionBlock<float> block(64, 8);
  const attn::Tensor<float> x = example::rand<float>({32, 64, 1024}, 3);
  attn::Tensor<float> y;
  const double ms = example::time_ms([&] { y = block.forward(x); });
  example::report("AttentionBlock(64, 8)", x.shape(), y, ms);
  return y.shape() == x.shape() ? 0 : 1;
}
