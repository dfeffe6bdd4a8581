// timm's CaiT TalkingHeadAttn: dim 128, 8 heads, input (32, 784, 128).
#include "example_util.hpp"

int main() {
  attn::TalkingHeadsAttention<float> attention(128, 8);
  const attn::Tensor<float> x = example::rand<float>({32, 784, 128}, 2);
  attn::Tensor<float> y;
  const double ms = example::time_ms([&] { y = attention.forward(x); });
  example::report("TalkingHeadsAttention(128, 8)", x.shape(), y, ms);
  return y.shape() == x.shape() ? 0 : 1;
}
