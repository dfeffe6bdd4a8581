// MobileViT's pre-norm transformer encoder layer: embed 64, FFN 128, 8 heads,
// input (2, 14, 64). Also shows dropout in training mode with an explicit generator.
#include "example_util.hpp"

int main() {
  attn::MobileViTEncoderLayerOptions options;
  options.attn_dropout = options.dropout = options.ffn_dropout = 0.1;
  attn::MobileViTEncoderLayer<float> layer(64, 128, 8, options);
  const attn::Tensor<float> x = example::rand<float>({2, 14, 64}, 4);
  attn::Tensor<float> y;
  const double ms = example::time_ms([&] { y = layer.forward(x); });  // eval mode: no dropout
  example::report("MobileViTEncoderLayer(64, 128, 8) eval", x.shape(), y, ms);

  layer.train();
  attn::Generator generator(2024);  // same seed, same dropout masks, on any thread count
  attn::AttentionArgs<float> args;
  args.generator = &generator;
  const attn::Tensor<float> y_train = layer.forward(x, args);
  example::report("MobileViTEncoderLayer(64, 128, 8) train", x.shape(), y_train, 0.0);
  return y.shape() == x.shape() && y_train.shape() == x.shape() ? 0 : 1;
}
