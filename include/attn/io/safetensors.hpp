#pragma once
/// @file
/// @brief Reading and writing the safetensors format (needs nlohmann-json: target attn::io).
///
/// Layout: 8-byte little-endian header size N, N bytes of JSON
/// ({name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}), then the
/// raw little-endian tensor data; offsets are relative to the start of the data area.
/// Files are untrusted input: sizes, offsets and dtypes are checked before any data is used,
/// and every failure is a std::runtime_error naming the file and the tensor. The file is
/// memory-mapped (POSIX) or read once; tensors are converted straight from it.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#define ATTN_IO_HAVE_MMAP 1
#endif

#include <nlohmann/json.hpp>

#include "attn/core/state_dict.hpp"
#include "attn/core/tensor.hpp"

namespace attn {
namespace io {

/// Element types of the safetensors format that attn reads.
enum class DType {
  kF32,   ///< "F32": IEEE 754 float32
  kF64,   ///< "F64": IEEE 754 float64
  kF16,   ///< "F16": IEEE 754 half precision
  kBF16,  ///< "BF16": bfloat16 (the top 16 bits of a float32)
  kBool,  ///< "BOOL": one byte per element, nonzero = true
  kU8,    ///< "U8": unsigned 8-bit integer
  kI32,   ///< "I32": signed 32-bit integer
  kI64    ///< "I64": signed 64-bit integer
};

/// Name of a dtype in the header: "F32", "BF16", ...
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
/// Size of one element in bytes (1, 2, 4 or 8).
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
  DType dtype;        ///< element type as stored in the file
  Shape shape;        ///< dimensions, outermost first (PyTorch order)
  std::size_t begin;  ///< byte offset in the data area
  std::size_t end;    ///< byte offset one past the tensor's last byte, in the data area
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

/// float -> IEEE half, rounding to nearest even (as PyTorch's .half()); NaN stays NaN.
inline std::uint16_t float_to_half(float f) {
  std::uint32_t x;
  std::memcpy(&x, &f, 4);
  const auto sign = static_cast<std::uint16_t>((x >> 16) & 0x8000u);
  x &= 0x7fffffffu;
  if (x > 0x7f800000u) return static_cast<std::uint16_t>(sign | 0x7e00u);  // NaN
  if (x >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // >= 65520: inf
  if (x >= 0x38800000u) {  // normal half: drop 13 mantissa bits, ties to even
    x += 0xfffu + ((x >> 13) & 1u);
    return static_cast<std::uint16_t>(sign | ((x - (112u << 23)) >> 13));
  }
  if (x <= 0x33000000u) return sign;  // <= 2^-25 (ties to even): zero
  const std::uint32_t mant = (x & 0x7fffffu) | 0x800000u;  // subnormal half, units of 2^-24
  const std::uint32_t shift = 126u - (x >> 23);
  std::uint32_t r = mant >> shift;
  const std::uint32_t rem = mant & ((1u << shift) - 1u), half = 1u << (shift - 1u);
  if (rem > half || (rem == half && (r & 1u))) ++r;
  return static_cast<std::uint16_t>(sign | r);
}

/// float -> bfloat16, rounding to nearest even (as PyTorch's .bfloat16()); NaN stays NaN.
inline std::uint16_t float_to_bf16(float f) {
  std::uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((x >> 16) | 0x40u);
  x += 0x7fffu + ((x >> 16) & 1u);
  return static_cast<std::uint16_t>(x >> 16);
}

inline float bf16_to_float(std::uint16_t h) {
  const std::uint32_t bits = static_cast<std::uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

/// Whether T is a floating-point element type a tensor can be read as and written from:
/// float, double, attn::bfloat16 or attn::half.
template <class T>
constexpr bool is_floating_element() {
  return std::is_floating_point<T>::value || std::is_same<T, bfloat16>::value || std::is_same<T, half>::value;
}

/// @brief The floating-point element of dtype t at p as T. Exact where T holds every value of
/// t (BF16 and F16 into their own types bit for bit, anything into float64, 16-bit types into
/// float); else rounded to nearest even as PyTorch's .to() rounds (F64 into a 16-bit type
/// through float first, as torch does).
template <class T>
T read_floating(DType t, const unsigned char* p) {
  if constexpr (std::is_same<T, bfloat16>::value) {
    if (t == DType::kBF16) return Eigen::numext::bit_cast<bfloat16>(load_le<std::uint16_t>(p));
    return Eigen::numext::bit_cast<bfloat16>(float_to_bf16(read_floating<float>(t, p)));
  } else if constexpr (std::is_same<T, half>::value) {
    if (t == DType::kF16) return Eigen::numext::bit_cast<half>(load_le<std::uint16_t>(p));
    return Eigen::numext::bit_cast<half>(float_to_half(read_floating<float>(t, p)));
  } else {
    switch (t) {
      case DType::kF32: return static_cast<T>(load_le<float>(p));
      case DType::kF64: return static_cast<T>(load_le<double>(p));
      case DType::kF16: return static_cast<T>(half_to_float(load_le<std::uint16_t>(p)));
      default: return static_cast<T>(bf16_to_float(load_le<std::uint16_t>(p)));  // kBF16 (callers check)
    }
  }
}

/// The dtype a tensor of T is written as by default: its own (F32, F64, BF16, F16).
template <class T>
constexpr DType dtype_of() {
  if constexpr (std::is_same<T, float>::value) return DType::kF32;
  else if constexpr (std::is_same<T, double>::value) return DType::kF64;
  else if constexpr (std::is_same<T, bfloat16>::value) return DType::kBF16;
  else return DType::kF16;
}

/// x as a 16-bit dtype `as` (F16 or BF16): its own bits when it is of that type, else rounded
/// from float to nearest even (as PyTorch's .half() / .bfloat16(); a double through float).
template <class T>
std::uint16_t encode16(const T& x, DType as) {
  if constexpr (std::is_same<T, half>::value || std::is_same<T, bfloat16>::value)
    if (as == dtype_of<T>()) return Eigen::numext::bit_cast<std::uint16_t>(x);
  const float f = static_cast<float>(x);
  return as == DType::kF16 ? float_to_half(f) : float_to_bf16(f);
}

/// The bytes of a file: memory-mapped read-only where POSIX mmap exists, else read once.
class FileBytes {
 public:
  FileBytes() = default;
  FileBytes(const FileBytes&) = delete;
  FileBytes& operator=(const FileBytes&) = delete;
  ~FileBytes() {
#if defined(ATTN_IO_HAVE_MMAP)
    if (map_) ::munmap(map_, size_);
#endif
  }

  /// Opens `path`; returns an empty string on success, else what went wrong.
  std::string open(const std::string& path) {
#if defined(ATTN_IO_HAVE_MMAP)
    const int fd = ::open(path.c_str(), O_RDONLY);
    if (fd < 0) return "cannot open file";
    struct stat st;
    std::string error;
    if (::fstat(fd, &st) != 0) {
      error = "cannot stat file";
    } else if (!S_ISREG(st.st_mode)) {
      error = "not a regular file";
    } else {
      size_ = static_cast<std::size_t>(st.st_size);
      if (size_ > 0) {
        void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
          error = "cannot map file";
          size_ = 0;
        } else {
          map_ = p;
          data_ = static_cast<const unsigned char*>(p);
        }
      }
    }
    ::close(fd);
    return error;
#else
    std::error_code ec;
    if (!std::filesystem::is_regular_file(path, ec)) return "not a regular file";
    std::ifstream in(path, std::ios::binary | std::ios::ate);
    if (!in) return "cannot open file";
    const std::streamoff size = in.tellg();
    if (size < 0) return "cannot read file size";
    buffer_.resize(static_cast<std::size_t>(size));
    in.seekg(0);
    if (size > 0 && !in.read(reinterpret_cast<char*>(buffer_.data()), size)) return "read error";
    data_ = buffer_.data();
    size_ = buffer_.size();
    return "";
#endif
  }

  const unsigned char* data() const { return data_; }
  std::size_t size() const { return size_; }

 private:
  const unsigned char* data_ = nullptr;
  std::size_t size_ = 0;
#if defined(ATTN_IO_HAVE_MMAP)
  void* map_ = nullptr;
#else
  std::vector<unsigned char> buffer_;
#endif
};

}  // namespace detail

/// @brief A safetensors file, mapped (or read) once, with its header validated.
class SafetensorsFile {
 public:
  /// Maximum accepted JSON header size (100 MB).
  static constexpr std::uint64_t kMaxHeaderSize = 100u * 1000u * 1000u;

  /// @throws std::runtime_error naming the file (and tensor) if it cannot be read or is malformed
  explicit SafetensorsFile(std::string path) : path_(std::move(path)) {
    const std::string error = bytes_.open(path_);
    if (!error.empty()) fail(error);
    if (bytes_.size() < 8)
      fail("file is " + std::to_string(bytes_.size()) + " bytes, shorter than the 8-byte header size");
    parse();
  }
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  /// The path the file was opened from.
  const std::string& path() const { return path_; }
  /// The header's "__metadata__" entries (string -> string); empty if it has none.
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  /// Tensor names in file order.
  const std::vector<std::string>& names() const { return names_; }
  /// Whether the file holds a tensor of that name.
  bool contains(const std::string& name) const { return infos_.count(name) != 0; }
  /// Dtype, shape and byte range of the tensor `name`.
  /// @throws std::runtime_error if there is no tensor of that name
  const TensorInfo& info(const std::string& name) const {
    auto it = infos_.find(name);
    if (it == infos_.end()) fail("no tensor named '" + name + "'");
    return it->second;
  }

  /// @brief A floating-point tensor (F32, F64, F16, BF16) as T: float, double, or, without
  /// widening, attn::bfloat16 or attn::half (a BF16 tensor read as bfloat16, or F16 as half,
  /// keeps its bits; other conversions round to nearest even, as PyTorch's .to()).
  template <class T>
  Tensor<T> get(const std::string& name) const {
    static_assert(detail::is_floating_element<T>(), "use get_bool for masks");
    const TensorInfo& ti = info(name);
    if (ti.dtype != DType::kF32 && ti.dtype != DType::kF64 && ti.dtype != DType::kF16 && ti.dtype != DType::kBF16)
      fail("tensor '" + name + "' has dtype " + dtype_name(ti.dtype) + ", not a floating-point type");
    Tensor<T> t = Tensor<T>::uninitialized(ti.shape);
    const unsigned char* p = data_start() + ti.begin;
    const std::size_t size = dtype_size(ti.dtype);
    for (Index i = 0; i < t.numel(); ++i) t[i] = detail::read_floating<T>(ti.dtype, p + size * std::size_t(i));
    return t;
  }

  /// @brief A BOOL, U8, I32 or I64 tensor as booleans (nonzero = true), e.g. a mask.
  Tensor<bool> get_bool(const std::string& name) const {
    const TensorInfo& ti = info(name);
    if (ti.dtype != DType::kBool && ti.dtype != DType::kU8 && ti.dtype != DType::kI32 && ti.dtype != DType::kI64)
      fail("tensor '" + name + "' has dtype " + dtype_name(ti.dtype) + ", expected BOOL, U8, I32 or I64");
    Tensor<bool> t(ti.shape);
    const unsigned char* p = data_start() + ti.begin;
    const std::size_t size = dtype_size(ti.dtype);
    for (Index i = 0; i < t.numel(); ++i) {
      const unsigned char* e = p + static_cast<std::size_t>(i) * size;
      t[i] = std::any_of(e, e + size, [](unsigned char c) { return c != 0; });
    }
    return t;
  }

  /// @brief An integer tensor (I64, I32, U8 or BOOL) widened to int64.
  std::vector<std::int64_t> get_int64(const std::string& name) const {
    const TensorInfo& ti = info(name);
    if (ti.dtype != DType::kI64 && ti.dtype != DType::kI32 && ti.dtype != DType::kU8 && ti.dtype != DType::kBool)
      fail("tensor '" + name + "' has dtype " + dtype_name(ti.dtype) + ", expected I64, I32, U8 or BOOL");
    std::vector<std::int64_t> out(static_cast<std::size_t>(attn::detail::checked_numel(ti.shape, "get_int64")));
    const unsigned char* p = data_start() + ti.begin;
    for (std::size_t i = 0; i < out.size(); ++i) {
      switch (ti.dtype) {
        case DType::kI64: out[i] = detail::load_le<std::int64_t>(p + 8 * i); break;
        case DType::kI32: out[i] = detail::load_le<std::int32_t>(p + 4 * i); break;
        case DType::kU8: case DType::kBool: out[i] = p[i]; break;
        default: break;  // excluded above
      }
    }
    return out;
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
    std::string duplicate;          // JSON allows repeated keys; a later one would hide the first
    std::set<std::string> top_keys;
    const auto find_duplicates = [&](int depth, nlohmann::ordered_json::parse_event_t event,
                                     nlohmann::ordered_json& parsed) {
      if (depth == 1 && event == nlohmann::ordered_json::parse_event_t::key && duplicate.empty()) {
        const std::string& key = parsed.get_ref<const std::string&>();
        if (!top_keys.insert(key).second) duplicate = key;
      }
      return true;
    };
    try {
      const auto* text = reinterpret_cast<const char*>(bytes_.data()) + 8;
      header = nlohmann::ordered_json::parse(text, text + n, find_duplicates);
    } catch (const nlohmann::json::exception& e) {
      fail(std::string("header is not valid JSON: ") + e.what());
    }
    if (!duplicate.empty()) fail("tensor '" + duplicate + "': duplicate name in the header");
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
      // The running product must fit Index even if a later dimension is 0, as for
      // attn::Tensor (detail::checked_numel), which get<T> builds from this shape.
      const auto index_max = static_cast<std::uint64_t>(std::numeric_limits<Index>::max());
      if (v > index_max || (v != 0 && count > index_max / v)) fail(where + "element count overflows");
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
  detail::FileBytes bytes_;
  std::size_t header_size_ = 0;
  std::map<std::string, TensorInfo> infos_;
  std::vector<std::string> names_;
  std::map<std::string, std::string> metadata_;
};

/// @brief Collects tensors and writes them as one safetensors file.
class SafetensorsWriter {
 public:
  /// Adds a tensor of float, double, attn::bfloat16 or attn::half stored as its own dtype
  /// (F32, F64, BF16, F16: bit for bit) or, converted, as any floating dtype: F16 and BF16
  /// round to nearest even as PyTorch does (a double goes through float first).
  template <class T, std::enable_if_t<detail::is_floating_element<T>(), int> = 0>
  void add(const std::string& name, const Tensor<T>& t, DType as = detail::dtype_of<T>()) {
    std::vector<unsigned char> bytes(static_cast<std::size_t>(t.numel()) * dtype_size(as));
    for (Index i = 0; i < t.numel(); ++i) {
      unsigned char* dst = bytes.data() + static_cast<std::size_t>(i) * dtype_size(as);
      switch (as) {
        case DType::kF32: store(dst, static_cast<float>(t[i])); break;
        case DType::kF64: store(dst, static_cast<double>(t[i])); break;
        case DType::kF16: case DType::kBF16: store(dst, detail::encode16(t[i], as)); break;
        default:
          throw std::invalid_argument("attn::io::SafetensorsWriter::add: tensor '" + name +
                                      "' is floating-point, cannot store it as " + dtype_name(as));
      }
    }
    add_bytes(name, as, t.shape(), std::move(bytes));
  }
  /// Adds a mask stored as BOOL (default), U8, I32 or I64 (true = 1).
  void add(const std::string& name, const Tensor<bool>& t, DType as = DType::kBool) {
    std::vector<unsigned char> bytes(static_cast<std::size_t>(t.numel()) * dtype_size(as));
    for (Index i = 0; i < t.numel(); ++i) {
      unsigned char* dst = bytes.data() + static_cast<std::size_t>(i) * dtype_size(as);
      switch (as) {
        case DType::kBool: case DType::kU8: *dst = t[i] ? 1 : 0; break;
        case DType::kI32: store(dst, static_cast<std::int32_t>(t[i])); break;
        case DType::kI64: store(dst, static_cast<std::int64_t>(t[i])); break;
        default:
          throw std::invalid_argument("attn::io::SafetensorsWriter::add: mask '" + name + "' cannot be stored as " +
                                      dtype_name(as));
      }
    }
    add_bytes(name, as, t.shape(), std::move(bytes));
  }
  /// Adds integers stored as I64, I32 or U8 (each value must fit).
  void add(const std::string& name, const Shape& shape, const std::vector<std::int64_t>& values, DType as = DType::kI64) {
    const auto count = static_cast<std::size_t>(attn::detail::checked_numel(shape, "SafetensorsWriter"));
    if (values.size() != count)
      throw std::invalid_argument("attn::io::SafetensorsWriter::add: tensor '" + name + "' has " +
                                  std::to_string(values.size()) + " values for shape " + to_string(shape));
    std::vector<unsigned char> bytes(count * dtype_size(as));
    for (std::size_t i = 0; i < count; ++i) {
      const std::int64_t v = values[i];
      unsigned char* dst = bytes.data() + i * dtype_size(as);
      if (as == DType::kI64) {
        store(dst, v);
      } else if (as == DType::kI32 && v >= std::numeric_limits<std::int32_t>::min() && v <= std::numeric_limits<std::int32_t>::max()) {
        store(dst, static_cast<std::int32_t>(v));
      } else if (as == DType::kU8 && v >= 0 && v <= 255) {
        *dst = static_cast<unsigned char>(v);
      } else {
        throw std::invalid_argument("attn::io::SafetensorsWriter::add: tensor '" + name + "': value " +
                                    std::to_string(v) + " cannot be stored as " + dtype_name(as));
      }
    }
    add_bytes(name, as, shape, std::move(bytes));
  }
  /// Adds every tensor of a state dict under prefix + name.
  template <class T>
  void add(const StateDict<T>& dict, const std::string& prefix = "") {
    for (const auto& kv : dict) add(prefix + kv.first, kv.second);
  }
  /// Sets the "__metadata__" entry `key` of the file to write (a later call replaces the value).
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

  /// Stores v little-endian whatever the host is.
  template <class U>
  static void store(unsigned char* dst, U v) {
    std::memcpy(dst, &v, sizeof(U));
    if (!detail::little_endian()) std::reverse(dst, dst + sizeof(U));
  }

  void add_bytes(const std::string& name, DType dtype, const Shape& shape, std::vector<unsigned char> bytes) {
    if (name == "__metadata__" || !names_.insert(name).second)
      throw std::invalid_argument("attn::io::SafetensorsWriter::add: duplicate or reserved name '" + name + "'");
    entries_.push_back({name, dtype, shape, std::move(bytes)});
  }

  std::vector<Entry> entries_;
  std::set<std::string> names_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace io
}  // namespace attn
