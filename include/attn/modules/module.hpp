#pragma once
/// @file
/// @brief Module<T>: training flag, named parameters and state dicts, as torch.nn.Module.

#include <cstdint>
#include <string>
#include <vector>

#include "attn/core/error.hpp"
#include "attn/core/generator.hpp"
#include "attn/core/random.hpp"
#include "attn/core/state_dict.hpp"
#include "attn/core/tensor.hpp"

namespace attn {

/// @brief Base of every class that owns parameters.
///
/// Parameters are exposed under their PyTorch state_dict names, so a checkpoint's tensors
/// load one to one. Modules start in eval mode (PyTorch modules start in training mode):
/// call train() to enable dropout, and pass a Generator to forward when you do.
template <class T>
class Module {
 public:
  virtual ~Module() = default;

  /// Training mode on (dropout active) or off; propagates to submodules.
  void train(bool mode = true) {
    training_ = mode;
    for (Module* c : children()) c->train(mode);
  }
  /// Same as train(false).
  void eval() { train(false); }
  /// Whether the module is in training mode (false after construction).
  bool is_training() const { return training_; }

  /// @brief Every parameter with its PyTorch name, a pointer into this module, and its shape.
  ///
  /// Values may be written through the pointers; call parameters_changed() afterwards
  /// (load_state_dict does), since modules keep their weights packed for their GEMMs.
  virtual std::vector<ParameterSlot<T>> parameters() = 0;

  /// @brief Tells the module (and its submodules) that values were written through
  /// parameters(): the packed copies of the weights are made again.
  void parameters_changed() { on_parameters_changed(); }

  /// @brief Copy of every parameter, by PyTorch name (torch.nn.Module.state_dict()).
  /// @param prefix put before every name, e.g. "blocks.0.attn." to build a bigger checkpoint
  StateDict<T> state_dict(const std::string& prefix = "") const {
    return detail::to_state_dict(slots_for_reading(), prefix);
  }

  /// @brief Loads parameters by name (torch.nn.Module.load_state_dict).
  ///
  /// With a prefix, only the keys that start with it are considered, with the prefix
  /// removed: "blocks.0.attn." loads this module from a whole timm CaiT checkpoint,
  /// "transformer.0." from a MobileViT one. Keys outside the prefix are ignored.
  /// @param dict parameter name -> tensor, e.g. from state_dict() or io::SafetensorsFile::state_dict()
  /// @param prefix only keys starting with it are loaded, with it removed ("" for all keys)
  /// @param strict missing or unexpected names are errors (shape mismatches always are)
  /// @throws std::invalid_argument listing every missing, unexpected or misshaped name
  /// (with the prefix); nothing is changed then.
  void load_state_dict(const StateDict<T>& dict, const std::string& prefix, bool strict = true) {
    load_parameters(dict, prefix, strict);
    on_parameters_changed();
  }
  /// Same, with a string literal prefix (without this overload, "x." would convert to bool).
  void load_state_dict(const StateDict<T>& dict, const char* prefix, bool strict = true) {
    load_state_dict(dict, std::string(prefix), strict);
  }
  /// Same, with no prefix.
  void load_state_dict(const StateDict<T>& dict, bool strict = true) { load_state_dict(dict, std::string(), strict); }

  /// Total number of parameter elements.
  Index num_parameters() const {
    Index n = 0;
    for (const auto& s : slots_for_reading()) n += detail::checked_numel(s.shape, type_name());
    return n;
  }

 protected:
  Module() = default;
  /// Copies the training flag (for derived classes' copy constructors; parameters live in them).
  Module(const Module&) = default;
  /// Copies the training flag (for derived classes' copy assignment).
  Module& operator=(const Module&) = default;
  /// The slots of a const module; only ever read through (so the const_cast is sound).
  std::vector<ParameterSlot<T>> slots_for_reading() const { return const_cast<Module*>(this)->parameters(); }

  /// Loads `dict` (keys under `prefix`) into parameters(); modules that choose their
  /// parameter names from the dict (MultiHeadAttention) override it.
  virtual void load_parameters(const StateDict<T>& dict, const std::string& prefix, bool strict) {
    detail::load_slots(parameters(), dict, type_name(), strict, prefix);
  }

  /// The submodules this module is made of (train() and parameters_changed() reach them).
  virtual std::vector<Module*> children() { return {}; }

  /// Called when new values were written through parameters() (by load_state_dict or by the
  /// caller): a module that keeps something derived from its parameters (Linear's packed
  /// weight) makes it again here, then calls this base version for its submodules.
  virtual void on_parameters_changed() {
    for (Module* c : children()) c->on_parameters_changed();
  }

  /// "attn::ClassName", used in error messages.
  virtual const char* type_name() const = 0;

  /// Throws if a forward pass would need dropout randomness but got no generator.
  void require_generator(const Generator* gen, double p) const {
    detail::require(!training_ || p == 0.0 || gen != nullptr, type_name(),
                    "::forward: training mode with dropout ", p,
                    " needs a Generator (pass one in the forward arguments)");
  }

 private:
  bool training_ = false;
};

/// @brief Free-function form: load_state_dict(module, dict, prefix, strict), as the member.
template <class T>
void load_state_dict(Module<T>& module, const StateDict<T>& dict, const std::string& prefix = "",
                     bool strict = true) {
  module.load_state_dict(dict, prefix, strict);
}

namespace detail {

/// Appends a submodule's slots to `slots`, names prefixed ("out_proj." + "weight").
template <class T>
void append_prefixed(std::vector<ParameterSlot<T>>& slots, std::vector<ParameterSlot<T>> child,
                     const std::string& prefix) {
  for (auto& s : child) slots.push_back({prefix + s.name, s.data, std::move(s.shape)});
}

/// Fills data with U(-bound, bound) from a fixed-seed stream (modules' default init).
template <class T>
void init_uniform(T* data, Index n, double bound, std::uint64_t seed) {
  fill_uniform(TensorView<T>(data, {n}), seed, -bound, bound);
}

/// Checks an activation's shape: rank 2 (N, C) or 3 (B, N, C) with C == features.
/// Returns the batch size (1 for rank 2).
inline Index check_sequence(const char* where, const char* arg, const Shape& shape, Index features,
                            const char* layout = "(batch, length, features)") {
  const auto rank = shape.size();
  require((rank == 2 || rank == 3) && shape.back() == features, where, ": ", arg, " has shape ", shape,
          ", expected ", layout, " or its unbatched form with ", features, " features");
  return rank == 3 ? shape[0] : 1;
}

}  // namespace detail
}  // namespace attn
