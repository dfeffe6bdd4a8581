#pragma once
/// @file
/// @brief Reading and writing the safetensors format (needs nlohmann-json: target attn::io).
///
/// Layout: 8-byte little-endian header size N, N bytes of JSON
/// ({name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}), then the
/// raw little-endian tensor data; offsets are relative to the start of the data area.
/// Files are untrusted input: sizes, offsets and dtypes are checked before any data is used,
/// and every failure is a std::runtime_error naming the file and the tensor.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "attn/core/state_dict.hpp"
#include "attn/core/tensor.hpp"

namespace attn {
namespace io {

/// Element types of the safetensors format that attn reads.
enum class DType { kF32, kF64, kF16, kBF16, kBool, kU8, kI32, kI64 };

/// Name in the header ("F32", ...) and size in bytes.
inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::kF32: return "F32";
    case DType::kF64: return "F64";
    case DType::kF16: return "F16";
    case DType::kBF16: return "BF16";
    case DType::kBool: return "BOOL";
    case DType::kU8: return "U8";
    case DType::kI32: return "I32";
    case DType::kI64: return "I64";
  }
  return "?";
}
inline std::size_t dtype_size(DType t) {
  switch (t) {
    case DType::kF32: case DType::kI32: return 4;
    case DType::kF64: case DType::kI64: return 8;
    case DType::kF16: case DType::kBF16: return 2;
    case DType::kBool: case DType::kU8: return 1;
  }
  return 0;
}

/// Where one tensor is in the file.
struct TensorInfo {
  DType dtype;
  Shape shape;
  std::size_t begin;  ///< byte offset in the data area
  std::size_t end;
};

namespace detail {

static_assert(std::numeric_limits<float>::is_iec559 && std::numeric_limits<double>::is_iec559,
              "attn::io needs IEEE 754 float and double");

inline bool little_endian() {
  const std::uint16_t one = 1;
  unsigned char b;
  std::memcpy(&b, &one, 1);
  return b == 1;
}

/// Reads a little-endian value of type U from p.
template <class U>
U load_le(const unsigned char* p) {
  unsigned char bytes[sizeof(U)];
  std::memcpy(bytes, p, sizeof(U));
  if (!little_endian()) std::reverse(bytes, bytes + sizeof(U));
  U v;
  std::memcpy(&v, bytes, sizeof(U));
  return v;
}

inline float half_to_float(std::uint16_t h) {
  const std::uint32_t sign = (h & 0x8000u) << 16;
  const std::uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  float magnitude;
  if (exp == 0)
    magnitude = std::ldexp(static_cast<float>(mant), -24);  // zero or subnormal
  else if (exp == 31)
    magnitude = mant ? std::numeric_limits<float>::quiet_NaN() : std::numeric_limits<float>::infinity();
  else
    magnitude = std::ldexp(static_cast<float>(mant | 0x400u), static_cast<int>(exp) - 25);
  return sign ? -magnitude : magnitude;
}

inline float bf16_to_float(std::uint16_t h) {
  const std::uint32_t bits = static_cast<std::uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

}  // namespace detail

/// @brief A safetensors file read into memory once, with its header validated.
class SafetensorsFile {
 public:
  /// Maximum accepted JSON header size (100 MB).
  static constexpr std::uint64_t kMaxHeaderSize = 100u * 1000u * 1000u;

  /// @throws std::runtime_error naming the file (and tensor) if it cannot be read or is malformed
  explicit SafetensorsFile(std::string path) : path_(std::move(path)) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(path_, ec)) fail("not a regular file");
    std::ifstream in(path_, std::ios::binary | std::ios::ate);
    if (!in) fail("cannot open file");
    const std::streamoff size = in.tellg();
    if (size < 8) fail("file is " + std::to_string(size) + " bytes, shorter than the 8-byte header size");
    bytes_.resize(static_cast<std::size_t>(size));
    in.seekg(0);
    if (!in.read(reinterpret_cast<char*>(bytes_.data()), size)) fail("read error");
    parse();
  }

  const std::string& path() const { return path_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  /// Tensor names in file order.
  const std::vector<std::string>& names() const { return names_; }
  bool contains(const std::string& name) const { return infos_.count(name) != 0; }
  const TensorInfo& info(const std::string& name) const {
    auto it = infos_.find(name);
    if (it == infos_.end()) fail("no tensor named '" + name + "'");
    return it->second;
  }

  /// @brief A floating-point tensor (F32, F64, F16, BF16) converted to T.
  template <class T>
  Tensor<T> get(const std::string& name) const {
    static_assert(std::is_floating_point<T>::value, "use get_bool for masks");
    const TensorInfo& ti = info(name);
    if (ti.dtype != DType::kF32 && ti.dtype != DType::kF64 && ti.dtype != DType::kF16 && ti.dtype != DType::kBF16)
      fail("tensor '" + name + "' has dtype " + dtype_name(ti.dtype) + ", not a floating-point type");
    Tensor<T> t(ti.shape);
    const unsigned char* p = data_start() + ti.begin;
    for (Index i = 0; i < t.numel(); ++i) {
      switch (ti.dtype) {
        case DType::kF32: t[i] = static_cast<T>(detail::load_le<float>(p + 4 * i)); break;
        case DType::kF64: t[i] = static_cast<T>(detail::load_le<double>(p + 8 * i)); break;
        case DType::kF16: t[i] = static_cast<T>(detail::half_to_float(detail::load_le<std::uint16_t>(p + 2 * i))); break;
        case DType::kBF16: t[i] = static_cast<T>(detail::bf16_to_float(detail::load_le<std::uint16_t>(p + 2 * i))); break;
        default: break;  // excluded above
      }
    }
    return t;
  }

  /// @brief A BOOL or U8 tensor (nonzero = true), e.g. a mask.
  Tensor<bool> get_bool(const std::string& name) const {
    const TensorInfo& ti = info(name);
    if (ti.dtype != DType::kBool && ti.dtype != DType::kU8)
      fail("tensor '" + name + "' has dtype " + dtype_name(ti.dtype) + ", expected BOOL or U8");
    Tensor<bool> t(ti.shape);
    const unsigned char* p = data_start() + ti.begin;
    for (Index i = 0; i < t.numel(); ++i) t[i] = p[i] != 0;
    return t;
  }

  /// @brief Every floating-point tensor whose name starts with prefix, with the prefix
  /// removed, converted to T (a state dict of one submodule of a bigger checkpoint).
  template <class T>
  StateDict<T> state_dict(const std::string& prefix = "") const {
    StateDict<T> dict;
    for (const auto& n : names_) {
      const DType t = infos_.at(n).dtype;
      const bool floating = t == DType::kF32 || t == DType::kF64 || t == DType::kF16 || t == DType::kBF16;
      if (floating && n.compare(0, prefix.size(), prefix) == 0) dict.emplace(n.substr(prefix.size()), get<T>(n));
    }
    return dict;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw std::runtime_error("attn::io::SafetensorsFile: " + path_ + ": " + what);
  }
  const unsigned char* data_start() const { return bytes_.data() + 8 + header_size_; }

  void parse() {
    const std::uint64_t n = detail::load_le<std::uint64_t>(bytes_.data());
    if (n > kMaxHeaderSize) fail("header size " + std::to_string(n) + " exceeds the 100 MB limit");
    if (n > bytes_.size() - 8)
      fail("header size " + std::to_string(n) + " runs past the end of the " +
           std::to_string(bytes_.size()) + "-byte file");
    header_size_ = static_cast<std::size_t>(n);
    const std::size_t data_size = bytes_.size() - 8 - header_size_;
    nlohmann::ordered_json header;  // keeps the file's order for names()
    try {
      header = nlohmann::ordered_json::parse(bytes_.begin() + 8, bytes_.begin() + 8 + static_cast<std::ptrdiff_t>(n));
    } catch (const nlohmann::json::exception& e) {
      fail(std::string("header is not valid JSON: ") + e.what());
    }
    if (!header.is_object()) fail("header is not a JSON object");
    std::vector<std::pair<std::size_t, std::size_t>> ranges;
    for (auto it = header.begin(); it != header.end(); ++it) {
      const std::string& name = it.key();
      if (name == "__metadata__") {
        if (!it->is_object()) fail("__metadata__ is not an object");
        for (auto m = it->begin(); m != it->end(); ++m) {
          if (!m->is_string()) fail("__metadata__ value '" + m.key() + "' is not a string");
          metadata_[m.key()] = m->get<std::string>();
        }
        continue;
      }
      infos_.emplace(name, parse_entry(name, *it, data_size));
      names_.push_back(name);
      ranges.emplace_back(infos_.at(name).begin, infos_.at(name).end);
    }
    std::sort(ranges.begin(), ranges.end());
    for (std::size_t i = 1; i < ranges.size(); ++i)
      if (ranges[i].first < ranges[i - 1].second) fail("tensors overlap in the data area");
  }

  TensorInfo parse_entry(const std::string& name, const nlohmann::ordered_json& e, std::size_t data_size) const {
    const std::string where = "tensor '" + name + "': ";
    if (!e.is_object() || !e.contains("dtype") || !e.contains("shape") || !e.contains("data_offsets"))
      fail(where + "entry needs dtype, shape and data_offsets");
    if (!e["dtype"].is_string()) fail(where + "dtype is not a string");
    static const std::map<std::string, DType> kDTypes{
        {"F32", DType::kF32}, {"F64", DType::kF64}, {"F16", DType::kF16}, {"BF16", DType::kBF16},
        {"BOOL", DType::kBool}, {"U8", DType::kU8}, {"I32", DType::kI32}, {"I64", DType::kI64}};
    auto dt = kDTypes.find(e["dtype"].get<std::string>());
    if (dt == kDTypes.end()) fail(where + "unknown dtype '" + e["dtype"].get<std::string>() + "'");
    TensorInfo ti{dt->second, {}, 0, 0};
    if (!e["shape"].is_array()) fail(where + "shape is not an array");
    std::uint64_t count = 1;
    for (const auto& d : e["shape"]) {
      if (!d.is_number_unsigned()) fail(where + "shape has an entry that is not a non-negative integer");
      const std::uint64_t v = d.get<std::uint64_t>();
      if (v > static_cast<std::uint64_t>(std::numeric_limits<Index>::max()) ||
          (v != 0 && count > std::numeric_limits<std::uint64_t>::max() / v))
        fail(where + "element count overflows");
      count *= v;
      ti.shape.push_back(static_cast<Index>(v));
    }
    const auto& off = e["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      fail(where + "data_offsets must be two non-negative integers");
    const std::uint64_t begin = off[0].get<std::uint64_t>(), end = off[1].get<std::uint64_t>();
    if (begin > end) fail(where + "data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) + "] are reversed");
    if (end > data_size)
      fail(where + "data_offsets end " + std::to_string(end) + " is past the data area (" +
           std::to_string(data_size) + " bytes)");
    if (count > std::numeric_limits<std::uint64_t>::max() / dtype_size(ti.dtype) ||
        count * dtype_size(ti.dtype) != end - begin)
      fail(where + std::to_string(end - begin) + " bytes do not hold shape " + to_string(ti.shape) + " of " +
           dtype_name(ti.dtype));
    ti.begin = static_cast<std::size_t>(begin);
    ti.end = static_cast<std::size_t>(end);
    return ti;
  }

  std::string path_;
  std::vector<unsigned char> bytes_;
  std::size_t header_size_ = 0;
  std::map<std::string, TensorInfo> infos_;
  std::vector<std::string> names_;
  std::map<std::string, std::string> metadata_;
};

/// @brief Collects tensors and writes them as one safetensors file.
class SafetensorsWriter {
 public:
  void add(const std::string& name, const Tensor<float>& t) { add_raw(name, DType::kF32, t.shape(), t.data()); }
  void add(const std::string& name, const Tensor<double>& t) { add_raw(name, DType::kF64, t.shape(), t.data()); }
  void add(const std::string& name, const Tensor<bool>& t) {
    std::vector<unsigned char> b(static_cast<std::size_t>(t.numel()));
    for (Index i = 0; i < t.numel(); ++i) b[static_cast<std::size_t>(i)] = t[i] ? 1 : 0;
    add_raw(name, DType::kBool, t.shape(), b.data());
  }
  /// Adds every tensor of a state dict under prefix + name.
  template <class T>
  void add(const StateDict<T>& dict, const std::string& prefix = "") {
    for (const auto& kv : dict) add(prefix + kv.first, kv.second);
  }
  void set_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }

  /// @throws std::runtime_error if the file cannot be written
  void write(const std::string& path) const {
    nlohmann::ordered_json header = nlohmann::ordered_json::object();  // tensors in the order added
    if (!metadata_.empty()) header["__metadata__"] = metadata_;
    std::size_t offset = 0;
    for (const auto& e : entries_) {
      header[e.name] = {{"dtype", dtype_name(e.dtype)}, {"shape", e.shape}, {"data_offsets", {offset, offset + e.bytes.size()}}};
      offset += e.bytes.size();
    }
    std::string text = header.dump();
    text.append((8 - text.size() % 8) % 8, ' ');
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    unsigned char size_bytes[8];
    const std::uint64_t n = text.size();
    for (int i = 0; i < 8; ++i) size_bytes[i] = static_cast<unsigned char>(n >> (8 * i));
    out.write(reinterpret_cast<const char*>(size_bytes), 8);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (const auto& e : entries_) out.write(reinterpret_cast<const char*>(e.bytes.data()), static_cast<std::streamsize>(e.bytes.size()));
    if (!out) throw std::runtime_error("attn::io::SafetensorsWriter: cannot write " + path);
  }

 private:
  struct Entry {
    std::string name;
    DType dtype;
    Shape shape;
    std::vector<unsigned char> bytes;
  };

  void add_raw(const std::string& name, DType dtype, const Shape& shape, const void* data) {
    if (name == "__metadata__" || std::any_of(entries_.begin(), entries_.end(), [&](const Entry& e) { return e.name == name; }))
      throw std::invalid_argument("attn::io::SafetensorsWriter::add: duplicate or reserved name '" + name + "'");
    Entry e{name, dtype, shape, {}};
    const std::size_t elem = dtype_size(dtype);
    const std::size_t count = static_cast<std::size_t>(attn::detail::checked_numel(shape, "SafetensorsWriter"));
    e.bytes.resize(count * elem);
    const auto* src = static_cast<const unsigned char*>(data);
    for (std::size_t i = 0; i < count; ++i) {  // store little-endian whatever the host is
      std::memcpy(e.bytes.data() + i * elem, src + i * elem, elem);
      if (!detail::little_endian()) std::reverse(e.bytes.begin() + static_cast<std::ptrdiff_t>(i * elem), e.bytes.begin() + static_cast<std::ptrdiff_t>((i + 1) * elem));
    }
    entries_.push_back(std::move(e));
  }

  std::vector<Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace io
}  // namespace attn
