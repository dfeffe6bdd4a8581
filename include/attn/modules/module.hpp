#pragma once
/// @file
/// @brief Module<T>: training flag, named parameters and state dicts, as torch.nn.Module.

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "attn/core/error.hpp"
#include "attn/core/generator.hpp"
#include "attn/core/random.hpp"
#include "attn/core/state_dict.hpp"
#include "attn/core/tensor.hpp"

namespace attn {

template <class T>
class Module;

/// @brief Write access to a module's parameters (Module::edit_parameters()): the slots of every
/// parameter, writable, for as long as this object lives; when it ends, the module repacks
/// its weights, so the next forward pass uses the values written. Move-only.
///
///     {
///       auto params = module.edit_parameters();
///       std::fill_n(params["out_proj.bias"].data, module.embed_dim(), 0.0f);
///     }  // repacked here
template <class T>
class ParameterEdit {
 public:
  ParameterEdit(const ParameterEdit&) = delete;
  ParameterEdit& operator=(const ParameterEdit&) = delete;
  /// Takes over the other edit's module (which then repacks nothing).
  ParameterEdit(ParameterEdit&& other) noexcept : module_(other.module_), slots_(std::move(other.slots_)) {
    other.module_ = nullptr;
  }
  ParameterEdit& operator=(ParameterEdit&&) = delete;
  /// Repacks the module's weights from the values written.
  ~ParameterEdit() {
    if (module_) module_->on_parameters_changed();
  }

  /// The writable slots, in parameters()' order.
  typename std::vector<ParameterSlot<T>>::iterator begin() { return slots_.begin(); }
  /// End of the slots.
  typename std::vector<ParameterSlot<T>>::iterator end() { return slots_.end(); }
  /// The number of parameters.
  std::size_t size() const { return slots_.size(); }
  /// @brief The slot of parameter `name` (a PyTorch name, e.g. "out_proj.weight").
  /// @throws std::invalid_argument if the module has no such parameter
  ParameterSlot<T>& operator[](const std::string& name) {
    for (auto& s : slots_)
      if (s.name == name) return s;
    throw std::invalid_argument("attn::ParameterEdit: no parameter named '" + name + "'");
  }

 private:
  friend class Module<T>;
  ParameterEdit(Module<T>& module, std::vector<ParameterSlot<T>> slots) : module_(&module), slots_(std::move(slots)) {}

  Module<T>* module_;
  std::vector<ParameterSlot<T>> slots_;
};

/// @brief Base of every class that owns parameters.
///
/// Parameters are exposed under their PyTorch state_dict names, so a checkpoint's tensors
/// load one to one. Modules start in eval mode (PyTorch modules start in training mode):
/// call train() to enable dropout, and pass a Generator to forward when you do. T is float,
/// double, attn::bfloat16 or attn::half; in the 16-bit types parameters and activations are
/// stored in 16 bits and every op computes in float32 inside (compute_t<T>).
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

  /// @brief Every parameter with its PyTorch name, its shape, and a read-only pointer to its
  /// values inside this module (torch.nn.Module.named_parameters()). To write values, use
  /// edit_parameters() or load_state_dict(): a module keeps its weights packed for its GEMMs,
  /// and both repack them, so no write can leave a forward pass on old weights.
  std::vector<ParameterSlot<const T>> parameters() const {
    std::vector<ParameterSlot<const T>> read_only;
    for (auto& s : const_cast<Module*>(this)->slots())  // only read through: the cast is sound
      read_only.push_back({std::move(s.name), s.data, std::move(s.shape)});
    return read_only;
  }

  /// @brief Write access to every parameter in place, for as long as the returned
  /// ParameterEdit lives: its slots are parameters()' with writable pointers, and when it ends
  /// the module (and its submodules) repack their weights. The module must outlive it, and
  /// the pointers are not to be written after it ends.
  ParameterEdit<T> edit_parameters() { return ParameterEdit<T>(*this, slots()); }

  /// @brief Copy of every parameter, by PyTorch name (torch.nn.Module.state_dict()).
  /// @param prefix put before every name, e.g. "blocks.0.attn." to build a bigger checkpoint
  StateDict<T> state_dict(const std::string& prefix = "") const {
    return detail::to_state_dict(parameters(), prefix);
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
    for (const auto& s : parameters()) n += detail::checked_numel(s.shape, type_name());
    return n;
  }

 protected:
  Module() = default;
  /// Copies the training flag (for derived classes' copy constructors; parameters live in them).
  Module(const Module&) = default;
  /// Copies the training flag (for derived classes' copy assignment).
  Module& operator=(const Module&) = default;
  /// @brief Every parameter with its PyTorch name, a writable pointer into this module and its
  /// shape: what parameters(), edit_parameters(), state_dict() and load_state_dict() are
  /// built on. Only ever written through by those that repack afterwards.
  virtual std::vector<ParameterSlot<T>> slots() = 0;
  /// A submodule's slots (slots() is protected in each class).
  static std::vector<ParameterSlot<T>> slots_of(Module& child) { return child.slots(); }
  /// Appends a submodule's slots to `slots`, names prefixed ("out_proj." + "weight").
  static void append_child(std::vector<ParameterSlot<T>>& slots, Module& child, const std::string& prefix) {
    for (auto& s : child.slots()) slots.push_back({prefix + s.name, s.data, std::move(s.shape)});
  }

  /// Loads `dict` (keys under `prefix`) into slots(); modules that choose their parameter
  /// names from the dict (MultiHeadAttention) override it.
  virtual void load_parameters(const StateDict<T>& dict, const std::string& prefix, bool strict) {
    detail::load_slots(slots(), dict, type_name(), strict, prefix);
  }

  /// The submodules this module is made of (train() and on_parameters_changed() reach them).
  virtual std::vector<Module*> children() { return {}; }

  /// Called when new values were written through slots() (by load_state_dict or at the end of
  /// a ParameterEdit): a module that keeps something derived from its parameters (Linear's
  /// packed weight) makes it again here, then calls this base version for its submodules.
  /// Packing again into memory of the same size must not allocate (it runs in a destructor).
  virtual void on_parameters_changed() {
    for (Module* c : children()) c->on_parameters_changed();
  }

  friend class ParameterEdit<T>;

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
