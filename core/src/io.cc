// Tensor files: safetensors and NumPy .npy (see io.h).
//
// Reading never trusts the file: every length, offset and shape is checked against the
// real file size before anything is allocated or read, so a corrupt or hostile file ends
// in an sy::Error(ErrorKind::input) naming the file (and the tensor), never in a crash or
// a huge allocation. Writing goes to `path + ".tmp"`, is fsync'ed, then renamed over
// `path`, so the final name only ever holds a complete file.
#include "switchyard/core/io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "switchyard/core/error.h"

namespace sy {
namespace {

// The on-disk formats are little-endian and we copy float bytes straight in and out.
static_assert(std::endian::native == std::endian::little, "switchyard io assumes a little-endian host");
static_assert(sizeof(float) == 4 && std::numeric_limits<float>::is_iec559, "float must be IEEE-754 binary32");
static_assert(sizeof(double) == 8 && std::numeric_limits<double>::is_iec559, "double must be IEEE-754 binary64");

constexpr uint64_t kMaxSafetensorsHeader = uint64_t{100} << 20;  // 100 MiB
constexpr uint64_t kMaxNpyHeader = uint64_t{1} << 20;             // 1 MiB (numpy itself caps at 10 KB)

std::string errno_message(int err) { return std::system_category().message(err); }

// "safetensors file '/a/b.safetensors': "
std::string file_prefix(std::string_view kind, const std::string& path) {
  return std::string(kind) + " file '" + path + "': ";
}

[[noreturn]] void fail(std::string_view kind, const std::string& path, const std::string& message) {
  throw_input_error(file_prefix(kind, path) + message);
}

// ---------------------------------------------------------------------------------------
// Reading: a regular file opened read-only, with bounds-checked positioned reads.

class InputFile {
 public:
  InputFile(std::string_view kind, const std::string& path) : kind_(kind), path_(path) {
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) {
      const int err = errno;
      fail(kind_, path_, err == ENOENT ? std::string("file does not exist")
                                       : "cannot open file for reading: " + errno_message(err));
    }
    struct stat st {};
    if (::fstat(fd_, &st) != 0) {
      const int err = errno;
      ::close(fd_);
      fail(kind_, path_, "cannot stat file: " + errno_message(err));
    }
    if (!S_ISREG(st.st_mode)) {
      ::close(fd_);
      fail(kind_, path_, S_ISDIR(st.st_mode) ? "is a directory, not a file" : "is not a regular file");
    }
    size_ = static_cast<uint64_t>(st.st_size);
  }
  ~InputFile() {
    if (fd_ >= 0) ::close(fd_);
  }
  InputFile(const InputFile&) = delete;
  InputFile& operator=(const InputFile&) = delete;

  uint64_t size() const { return size_; }

  // Reads exactly n bytes at `offset`; the caller has checked offset + n <= size().
  void read_at(uint64_t offset, void* dst, uint64_t n, const std::string& what) const {
    auto* out = static_cast<char*>(dst);
    while (n > 0) {
      const size_t chunk = static_cast<size_t>(std::min<uint64_t>(n, uint64_t{1} << 30));
      const ssize_t got = ::pread(fd_, out, chunk, static_cast<off_t>(offset));
      if (got < 0) {
        if (errno == EINTR) continue;
        fail(kind_, path_, "error reading " + what + ": " + errno_message(errno));
      }
      if (got == 0) fail(kind_, path_, "unexpected end of file while reading " + what + " (file changed?)");
      out += got;
      offset += static_cast<uint64_t>(got);
      n -= static_cast<uint64_t>(got);
    }
  }

 private:
  std::string_view kind_;
  const std::string& path_;
  int fd_ = -1;
  uint64_t size_ = 0;
};

uint64_t load_le(const unsigned char* p, int bytes) {
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

void store_le(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

// Element count of a validated (non-negative) shape, or false on int64 overflow.
bool checked_numel(const Shape& shape, int64_t itemsize, int64_t* numel, int64_t* bytes) {
  int64_t n = 1;
  for (int64_t d : shape)
    if (__builtin_mul_overflow(n, d, &n)) return false;
  int64_t b = 0;
  if (__builtin_mul_overflow(n, itemsize, &b)) return false;
  *numel = n;
  *bytes = b;
  return true;
}

// A tensor we are about to write must be self-consistent (a default-constructed Tensor is not).
void check_writable_tensor(std::string_view kind, const std::string& path, const std::string& what,
                           const Tensor& t) {
  for (int64_t d : t.shape())
    if (d < 0) fail(kind, path, what + " has negative dimension in shape " + shape_to_string(t.shape()));
  int64_t numel = 0, bytes = 0;
  if (!checked_numel(t.shape(), 4, &numel, &bytes))
    fail(kind, path, what + " has a shape " + shape_to_string(t.shape()) + " whose size overflows");
  if (numel != t.numel())
    fail(kind, path,
         what + " holds " + std::to_string(t.numel()) + " values but its shape " + shape_to_string(t.shape()) +
             " needs " + std::to_string(numel));
}

// ---------------------------------------------------------------------------------------
// Writing: path.tmp, fsync, rename.

struct Chunk {
  const void* data;
  size_t size;
};

void write_file_atomically(std::string_view kind, const std::string& path, const std::vector<Chunk>& chunks) {
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    const int err = errno;
    fail(kind, path, "cannot write: cannot create temporary file '" + tmp + "': " + errno_message(err));
  }
  auto abandon = [&](const std::string& message, int err) {
    ::close(fd);
    ::unlink(tmp.c_str());
    fail(kind, path, "cannot write: " + message + ": " + errno_message(err));
  };
  for (const Chunk& c : chunks) {
    const char* p = static_cast<const char*>(c.data);
    size_t left = c.size;
    while (left > 0) {
      const ssize_t put = ::write(fd, p, std::min<size_t>(left, size_t{1} << 30));
      if (put < 0) {
        if (errno == EINTR) continue;
        abandon("error writing '" + tmp + "'", errno);
      }
      p += put;
      left -= static_cast<size_t>(put);
    }
  }
  if (::fsync(fd) != 0) abandon("error flushing '" + tmp + "'", errno);
  if (::close(fd) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    fail(kind, path, "cannot write: error closing '" + tmp + "': " + errno_message(err));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    fail(kind, path, "cannot write: cannot rename '" + tmp + "' to the final name: " + errno_message(err));
  }
  // Make the rename itself durable; best effort (the data is already complete on disk).
  const size_t slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    (void)::fsync(dfd);
    ::close(dfd);
  }
}

// ---------------------------------------------------------------------------------------
// safetensors

constexpr std::string_view kSt = "safetensors";

struct StEntry {
  std::string name;
  Shape shape;
  uint64_t begin = 0;
  uint64_t end = 0;
};

struct StHeader {
  uint64_t data_start = 0;  // absolute file offset of the data section
  std::vector<StEntry> entries;
  std::map<std::string, std::string> metadata;
};

const char* json_type(const nlohmann::json& j) { return j.type_name(); }

// The deepest nesting of arrays and objects in JSON text (outside strings). A safetensors
// header is three levels deep; a hostile one nested 10^5 deep overflowed the stack when an error
// message printed part of it, so such headers are refused before they are parsed.
constexpr int kMaxJsonDepth = 16;
int json_nesting_depth(const std::string& text) {
  int depth = 0, deepest = 0;
  bool in_string = false, escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped) escaped = false;
      else if (c == '\\') escaped = true;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return deepest;
}

// A JSON integer as int64 (rejecting floats, bools and values beyond int64).
bool json_to_int64(const nlohmann::json& j, int64_t* out) {
  if (j.is_number_unsigned()) {
    const uint64_t u = j.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return false;
    *out = static_cast<int64_t>(u);
    return true;
  }
  if (j.is_number_integer()) {
    *out = j.get<int64_t>();
    return true;
  }
  return false;
}

StEntry parse_st_entry(const std::string& path, const std::string& name, const nlohmann::json& j,
                       uint64_t data_size) {
  const std::string who = "tensor '" + name + "': ";
  if (!j.is_object()) fail(kSt, path, who + "header entry must be a JSON object, found " + json_type(j));

  // dtype
  const auto dt = j.find("dtype");
  if (dt == j.end()) fail(kSt, path, who + "header entry is missing \"dtype\"");
  if (!dt->is_string()) fail(kSt, path, who + "\"dtype\" must be a string, found " + json_type(*dt));
  const std::string dtype = dt->get<std::string>();
  if (dtype != "F32")
    fail(kSt, path, who + "dtype '" + dtype + "' is not supported; only F32 is supported");

  // shape
  const auto sh = j.find("shape");
  if (sh == j.end()) fail(kSt, path, who + "header entry is missing \"shape\"");
  if (!sh->is_array()) fail(kSt, path, who + "\"shape\" must be an array of integers, found " + json_type(*sh));
  StEntry e;
  e.name = name;
  for (const auto& d : *sh) {
    int64_t v = 0;
    if (!d.is_number_integer())
      fail(kSt, path, who + "\"shape\" must be an array of integers, found element " + d.dump());
    if (!json_to_int64(d, &v)) fail(kSt, path, who + "dimension " + d.dump() + " in \"shape\" is too large");
    if (v < 0) fail(kSt, path, who + "negative dimension " + std::to_string(v) + " in \"shape\" " + sh->dump());
    e.shape.push_back(v);
  }
  int64_t numel = 0, nbytes = 0;
  if (!checked_numel(e.shape, 4, &numel, &nbytes))
    fail(kSt, path, who + "shape " + shape_to_string(e.shape) + " is too large (element count overflows)");

  // data_offsets
  const auto off = j.find("data_offsets");
  if (off == j.end()) fail(kSt, path, who + "header entry is missing \"data_offsets\"");
  if (!off->is_array() || off->size() != 2)
    fail(kSt, path, who + "\"data_offsets\" must be an array of two integers [begin, end], found " + off->dump());
  for (const auto& o : *off) {
    if (!o.is_number_integer())
      fail(kSt, path, who + "\"data_offsets\" must be an array of two integers [begin, end], found " + off->dump());
    if (!o.is_number_unsigned()) fail(kSt, path, who + "negative value in \"data_offsets\" " + off->dump());
  }
  e.begin = (*off)[0].get<uint64_t>();
  e.end = (*off)[1].get<uint64_t>();
  const std::string range = "[" + std::to_string(e.begin) + ", " + std::to_string(e.end) + "]";
  if (e.begin > e.end) fail(kSt, path, who + "data_offsets " + range + " have begin > end");
  if (e.end > data_size)
    fail(kSt, path,
         who + "data_offsets " + range + " run past the end of the file (data section is " +
             std::to_string(data_size) + " bytes)");
  if (e.end - e.begin != static_cast<uint64_t>(nbytes))
    fail(kSt, path,
         who + "data_offsets " + range + " cover " + std::to_string(e.end - e.begin) + " bytes but shape " +
             shape_to_string(e.shape) + " of F32 needs " + std::to_string(numel) + " * 4 = " +
             std::to_string(nbytes) + " bytes");
  return e;
}

StHeader read_st_header(const InputFile& f, const std::string& path) {
  const uint64_t size = f.size();
  if (size < 8)
    fail(kSt, path,
         "file is " + std::to_string(size) + " bytes, too short to hold the 8-byte header length (not a "
         "safetensors file?)");
  unsigned char len_bytes[8];
  f.read_at(0, len_bytes, 8, "the header length");
  const uint64_t n = load_le(len_bytes, 8);
  if (n > kMaxSafetensorsHeader)
    fail(kSt, path,
         "header length " + std::to_string(n) + " is absurd (limit " + std::to_string(kMaxSafetensorsHeader) +
             " bytes; not a safetensors file?)");
  if (n > size - 8)
    fail(kSt, path,
         "header length " + std::to_string(n) + " is larger than the rest of the file (" +
             std::to_string(size - 8) + " bytes; truncated file?)");

  std::string text(static_cast<size_t>(n), '\0');
  f.read_at(8, text.data(), n, "the header");
  // nlohmann stops at a NUL byte as if the input ended there; JSON never contains a raw NUL.
  if (const size_t nul = text.find('\0'); nul != std::string::npos)
    fail(kSt, path, "header is not valid JSON: NUL byte at header offset " + std::to_string(nul));
  if (const int depth = json_nesting_depth(text); depth > kMaxJsonDepth)
    fail(kSt, path, "header nests arrays or objects " + std::to_string(depth) + " levels deep (limit " +
                        std::to_string(kMaxJsonDepth) + "; a safetensors header needs 3)");
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail(kSt, path, std::string("header is not valid JSON: ") + e.what());
  }
  if (!header.is_object()) fail(kSt, path, std::string("header must be a JSON object, found ") + json_type(header));

  StHeader h;
  h.data_start = 8 + n;
  const uint64_t data_size = size - h.data_start;
  for (const auto& [name, value] : header.items()) {
    if (name == "__metadata__") {
      if (!value.is_object())
        fail(kSt, path, std::string("\"__metadata__\" must be an object of strings, found ") + json_type(value));
      for (const auto& [k, v] : value.items()) {
        if (!v.is_string())
          fail(kSt, path,
               "\"__metadata__\" value for key '" + k + "' must be a string, found " + json_type(v));
        h.metadata[k] = v.get<std::string>();
      }
      continue;
    }
    h.entries.push_back(parse_st_entry(path, name, value, data_size));
  }

  // No two non-empty byte ranges may overlap (empty tensors occupy no bytes).
  std::vector<const StEntry*> order;
  for (const StEntry& e : h.entries)
    if (e.end > e.begin) order.push_back(&e);
  std::sort(order.begin(), order.end(), [](const StEntry* a, const StEntry* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  const StEntry* furthest = nullptr;  // the range seen so far that ends last
  for (const StEntry* e : order) {
    if (furthest && e->begin < furthest->end)
      fail(kSt, path,
           "tensors '" + furthest->name + "' [" + std::to_string(furthest->begin) + ", " +
               std::to_string(furthest->end) + "] and '" + e->name + "' [" + std::to_string(e->begin) + ", " +
               std::to_string(e->end) + "] have overlapping data_offsets");
    if (!furthest || e->end > furthest->end) furthest = e;
  }
  return h;
}

// ---------------------------------------------------------------------------------------
// npy header: a Python dict literal. A small recursive-descent parser for the literal
// subset numpy writes (and a bit more, so that errors are about meaning, not syntax).

constexpr std::string_view kNpy = "npy";

struct PyValue {
  enum class Kind { string, boolean, none, integer, tuple, list, dict };
  Kind kind = Kind::none;
  std::string str;
  bool boolean = false;
  int64_t integer = 0;
  std::vector<PyValue> items;  // tuple / list elements; dict values
  std::vector<PyValue> keys;   // dict keys, parallel to `items`, in source order

  std::string describe() const {
    switch (kind) {
      case Kind::string: return "the string '" + str + "'";
      case Kind::boolean: return boolean ? "True" : "False";
      case Kind::none: return "None";
      case Kind::integer: return "the integer " + std::to_string(integer);
      case Kind::tuple: return "a tuple";
      case Kind::list: return "a list";
      case Kind::dict: return "a dict";
    }
    return "a value";
  }
};

class PyLiteralParser {
 public:
  PyLiteralParser(std::string_view text, const std::string& path) : s_(text), path_(path) {}

  PyValue parse_document() {
    PyValue v = parse_value(0);
    skip_ws();
    if (pos_ != s_.size()) error("unexpected trailing text");
    return v;
  }

 private:
  static constexpr int kMaxDepth = 32;

  [[noreturn]] void error(const std::string& what) const {
    std::string near;
    if (pos_ < s_.size()) {
      const unsigned char c = static_cast<unsigned char>(s_[pos_]);
      near = (c >= 0x20 && c < 0x7f) ? std::string(" near '") + static_cast<char>(c) + "'"
                                     : " near byte " + std::to_string(c);
    } else {
      near = " (end of header)";
    }
    fail(kNpy, path_, "malformed header dict: " + what + " at offset " + std::to_string(pos_) + near);
  }

  void skip_ws() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r' ||
                                s_[pos_] == '\f' || s_[pos_] == '\v'))
      ++pos_;
  }

  bool peek(char c) {
    skip_ws();
    return pos_ < s_.size() && s_[pos_] == c;
  }

  void expect(char c) {
    if (!peek(c)) error(std::string("expected '") + c + "'");
    ++pos_;
  }

  static bool is_ident_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
  }

  PyValue parse_value(int depth) {
    if (depth > kMaxDepth) error("nesting too deep");
    skip_ws();
    if (pos_ >= s_.size()) error("expected a value");
    const char c = s_[pos_];
    if (c == '\'' || c == '"') return parse_string();
    if (c == '(') return parse_sequence(depth, '(', ')', PyValue::Kind::tuple);
    if (c == '[') return parse_sequence(depth, '[', ']', PyValue::Kind::list);
    if (c == '{') return parse_dict(depth);
    if (c == '-' || c == '+' || (c >= '0' && c <= '9')) return parse_integer();
    if (is_ident_char(c)) {
      const size_t start = pos_;
      while (pos_ < s_.size() && is_ident_char(s_[pos_])) ++pos_;
      const std::string_view word = s_.substr(start, pos_ - start);
      PyValue v;
      if (word == "True" || word == "False") {
        v.kind = PyValue::Kind::boolean;
        v.boolean = word == "True";
        return v;
      }
      if (word == "None") return v;
      pos_ = start;
      error("unexpected name '" + std::string(word) + "'");
    }
    error("unexpected character");
  }

  PyValue parse_string() {
    const char quote = s_[pos_++];
    PyValue v;
    v.kind = PyValue::Kind::string;
    while (true) {
      if (pos_ >= s_.size() || s_[pos_] == '\n') error("unterminated string");
      const char c = s_[pos_++];
      if (c == quote) break;
      if (c == '\\') {
        if (pos_ >= s_.size()) error("unterminated string");
        const char e = s_[pos_++];
        switch (e) {
          case 'n': v.str += '\n'; break;
          case 't': v.str += '\t'; break;
          case 'r': v.str += '\r'; break;
          case '0': v.str += '\0'; break;
          case '\\': case '\'': case '"': v.str += e; break;
          default: v.str += '\\'; v.str += e; break;  // Python keeps unknown escapes verbatim
        }
        continue;
      }
      v.str += c;
    }
    return v;
  }

  PyValue parse_integer() {
    bool negative = false;
    if (s_[pos_] == '-' || s_[pos_] == '+') {
      negative = s_[pos_] == '-';
      ++pos_;
      skip_ws();
    }
    if (pos_ >= s_.size() || s_[pos_] < '0' || s_[pos_] > '9') error("expected digits");
    // Magnitude accumulated as uint64 so that INT64_MIN is representable.
    uint64_t mag = 0;
    const uint64_t limit = negative ? uint64_t{1} << 63 : static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
    while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') {
      const uint64_t digit = static_cast<uint64_t>(s_[pos_] - '0');
      if (mag > (limit - digit) / 10) error("integer out of range");
      mag = mag * 10 + digit;
      ++pos_;
    }
    if (pos_ < s_.size() && (s_[pos_] == 'L' || s_[pos_] == 'l')) ++pos_;  // Python 2 long suffix
    if (pos_ < s_.size() && (is_ident_char(s_[pos_]) || s_[pos_] == '.')) error("only integers are allowed");
    PyValue v;
    v.kind = PyValue::Kind::integer;
    v.integer = negative ? static_cast<int64_t>(0 - mag) : static_cast<int64_t>(mag);
    return v;
  }

  // Tuple or list. "(x)" without a comma is just x, as in Python.
  PyValue parse_sequence(int depth, char open, char close, PyValue::Kind kind) {
    expect(open);
    PyValue v;
    v.kind = kind;
    bool saw_comma = false;
    while (!peek(close)) {
      v.items.push_back(parse_value(depth + 1));
      if (peek(',')) {
        ++pos_;
        saw_comma = true;
        continue;
      }
      if (!peek(close)) error(std::string("expected ',' or '") + close + "'");
    }
    ++pos_;
    if (kind == PyValue::Kind::tuple && v.items.size() == 1 && !saw_comma) return std::move(v.items[0]);
    return v;
  }

  PyValue parse_dict(int depth) {
    expect('{');
    PyValue v;
    v.kind = PyValue::Kind::dict;
    while (!peek('}')) {
      PyValue key = parse_value(depth + 1);
      expect(':');
      PyValue value = parse_value(depth + 1);
      v.keys.push_back(std::move(key));
      v.items.push_back(std::move(value));
      if (peek(',')) {
        ++pos_;
        continue;
      }
      if (!peek('}')) error("expected ',' or '}'");
    }
    ++pos_;
    return v;
  }

  std::string_view s_;
  const std::string& path_;
  size_t pos_ = 0;
};

std::string py_shape_repr(const Shape& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  if (shape.size() == 1) s += ",";
  return s + ")";
}

// The preamble numpy.save writes for a C-order '<f4' array: magic, version, header length,
// the dict repr with numpy's growth-axis spare space, space padding and '\n', so that the
// data starts at a multiple of 64 (numpy pads a full 64 bytes when already aligned).
std::string npy_preamble(const Shape& shape, const std::string& path) {
  std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': " + py_shape_repr(shape) + ", }";
  constexpr size_t kGrowthAxisMaxDigits = 21;
  if (!shape.empty()) {
    const size_t digits = std::to_string(shape[0]).size();
    if (digits < kGrowthAxisMaxDigits) dict.append(kGrowthAxisMaxDigits - digits, ' ');
  }
  for (const int major : {1, 2}) {
    const size_t len_bytes = major == 1 ? 2 : 4;
    const size_t hlen = dict.size() + 1;
    const size_t padlen = 64 - ((8 + len_bytes + hlen) % 64);
    const size_t total = hlen + padlen;
    if (major == 1 && total > 0xffff) continue;  // numpy falls back to format 2.0
    std::string out("\x93NUMPY", 6);
    out.push_back(static_cast<char>(major));
    out.push_back('\0');
    store_le(out, total, static_cast<int>(len_bytes));
    out += dict;
    out.append(padlen, ' ');
    out.push_back('\n');
    return out;
  }
  fail(kNpy, path, "header too large");
}

}  // namespace

// ---------------------------------------------------------------------------------------

void write_safetensors(const std::string& path, const TensorMap& tensors,
                       const std::map<std::string, std::string>& metadata) {
  // The header text is built entry by entry (each entry dumped on its own), not as one
  // ordered_json object: ordered_json finds keys by a linear scan, which made writing N
  // tensors O(N^2) (80 000 tensors took over 35 s).
  std::vector<Chunk> chunks;
  chunks.reserve(tensors.size() + 2);
  chunks.push_back({nullptr, 0});  // header length, filled below
  chunks.push_back({nullptr, 0});  // header
  std::string text = "{";
  try {
    if (!metadata.empty()) {
      nlohmann::ordered_json meta = nlohmann::ordered_json::object();
      for (const auto& [k, v] : metadata) meta[k] = v;  // std::map: unique keys
      text += "\"__metadata__\":" + meta.dump();
    }
    uint64_t offset = 0;
    for (const auto& [name, t] : tensors) {  // std::map: sorted by name, each once
      if (name == "__metadata__") fail(kSt, path, "cannot write a tensor named '__metadata__' (reserved name)");
      check_writable_tensor(kSt, path, "tensor '" + name + "'", t);
      const uint64_t bytes = static_cast<uint64_t>(t.numel()) * 4;
      nlohmann::ordered_json entry = nlohmann::ordered_json::object();
      entry["dtype"] = "F32";
      entry["shape"] = t.shape();
      entry["data_offsets"] = {offset, offset + bytes};
      if (text.size() > 1) text += ',';
      text += nlohmann::ordered_json(name).dump();
      text += ':';
      text += entry.dump();
      chunks.push_back({t.data(), static_cast<size_t>(bytes)});
      offset += bytes;
    }
  } catch (const nlohmann::json::exception& e) {  // e.g. a name or metadata value that is not UTF-8
    fail(kSt, path, std::string("cannot encode header: ") + e.what());
  }
  text += '}';
  text.append((8 - text.size() % 8) % 8, ' ');
  std::string len_bytes;
  store_le(len_bytes, text.size(), 8);
  chunks[0] = {len_bytes.data(), len_bytes.size()};
  chunks[1] = {text.data(), text.size()};
  write_file_atomically(kSt, path, chunks);
}

TensorMap read_safetensors(const std::string& path) {
  const InputFile f(kSt, path);
  const StHeader h = read_st_header(f, path);
  TensorMap out;
  for (const StEntry& e : h.entries) {
    Tensor t(e.shape);
    f.read_at(h.data_start + e.begin, t.data(), e.end - e.begin, "tensor '" + e.name + "'");
    out.emplace(e.name, std::move(t));
  }
  return out;
}

std::map<std::string, std::string> read_safetensors_metadata(const std::string& path) {
  const InputFile f(kSt, path);
  return read_st_header(f, path).metadata;
}

void write_npy(const std::string& path, const Tensor& tensor) {
  check_writable_tensor(kNpy, path, "tensor", tensor);
  const std::string preamble = npy_preamble(tensor.shape(), path);
  write_file_atomically(kNpy, path,
                        {{preamble.data(), preamble.size()},
                         {tensor.data(), static_cast<size_t>(tensor.numel()) * sizeof(float)}});
}

void write_text_atomically(const std::string& path, std::string_view text, std::string_view kind) {
  write_file_atomically(kind, path, {{text.data(), text.size()}});
}

namespace {

// The preamble: magic, version, header length. Returns the header text and where data starts.
std::string read_npy_header(const InputFile& f, const std::string& path, uint64_t size, uint64_t* data_start) {
  if (size < 10)
    fail(kNpy, path, "file is " + std::to_string(size) + " bytes, too short for an .npy preamble (not an .npy file?)");
  unsigned char pre[12] = {};
  f.read_at(0, pre, std::min<uint64_t>(size, 12), "the preamble");
  if (std::memcmp(pre, "\x93NUMPY", 6) != 0) fail(kNpy, path, "bad magic (not an .npy file)");
  const int major = pre[6], minor = pre[7];
  if (!((major == 1 || major == 2 || major == 3) && minor == 0))
    fail(kNpy, path,
         "unsupported .npy format version " + std::to_string(major) + "." + std::to_string(minor) +
             " (supported: 1.0, 2.0, 3.0)");
  const uint64_t prefix = major == 1 ? 10 : 12;
  if (size < prefix)
    fail(kNpy, path, "file is " + std::to_string(size) + " bytes, too short for an .npy preamble");
  const uint64_t hlen = load_le(pre + 8, major == 1 ? 2 : 4);
  if (hlen > kMaxNpyHeader)
    fail(kNpy, path, "header length " + std::to_string(hlen) + " is absurd (limit " + std::to_string(kMaxNpyHeader) + ")");
  if (hlen > size - prefix)
    fail(kNpy, path,
         "header length " + std::to_string(hlen) + " is larger than the rest of the file (" +
             std::to_string(size - prefix) + " bytes; truncated file?)");
  std::string text(static_cast<size_t>(hlen), '\0');
  f.read_at(prefix, text.data(), hlen, "the header");
  *data_start = prefix + hlen;
  return text;
}

struct NpyHeader {
  std::string descr;
  int64_t itemsize = 0;  // 4: '<f4', 8: '<f8' (converted to float32)
  Shape shape;
};

// The header dict: exactly 'descr', 'fortran_order', 'shape', each of a supported value.
NpyHeader parse_npy_header(const std::string& text, const std::string& path) {
  const PyValue header = PyLiteralParser(text, path).parse_document();
  if (header.kind != PyValue::Kind::dict) fail(kNpy, path, "header must be a dict, found " + header.describe());
  const PyValue* descr = nullptr;
  const PyValue* fortran = nullptr;
  const PyValue* shape_v = nullptr;
  for (size_t i = 0; i < header.keys.size(); ++i) {  // later duplicates win, as in Python
    const PyValue& k = header.keys[i];
    const PyValue& v = header.items[i];
    if (k.kind != PyValue::Kind::string) fail(kNpy, path, "header dict key must be a string, found " + k.describe());
    if (k.str == "descr") descr = &v;
    else if (k.str == "fortran_order") fortran = &v;
    else if (k.str == "shape") shape_v = &v;
    else fail(kNpy, path, "unexpected key '" + k.str + "' in header (expected 'descr', 'fortran_order', 'shape')");
  }
  if (!descr) fail(kNpy, path, "header is missing key 'descr'");
  if (!fortran) fail(kNpy, path, "header is missing key 'fortran_order'");
  if (!shape_v) fail(kNpy, path, "header is missing key 'shape'");

  NpyHeader h;
  if (descr->kind != PyValue::Kind::string)
    fail(kNpy, path, "'descr' must be a dtype string, found " + descr->describe() + " (structured dtypes are not supported)");
  h.descr = descr->str;
  const std::string& d = h.descr;
  if (d == "<f4") h.itemsize = 4;
  else if (d == "<f8") h.itemsize = 8;
  else if (!d.empty() && d[0] == '>')
    fail(kNpy, path, "dtype '" + d + "' is big-endian; only little-endian '<f4' (and '<f8', converted) are supported");
  else
    fail(kNpy, path, "dtype '" + d + "' is not supported; only '<f4' (and '<f8', converted to float32) are supported");

  if (fortran->kind != PyValue::Kind::boolean)
    fail(kNpy, path, "'fortran_order' must be True or False, found " + fortran->describe());
  if (fortran->boolean)
    fail(kNpy, path, "fortran_order True (column-major) arrays are not supported; save a C-order array");

  if (shape_v->kind != PyValue::Kind::tuple)
    fail(kNpy, path, "'shape' must be a tuple of integers, found " + shape_v->describe());
  for (const PyValue& v : shape_v->items) {
    if (v.kind != PyValue::Kind::integer)
      fail(kNpy, path, "'shape' must be a tuple of integers, found element " + v.describe());
    if (v.integer < 0) fail(kNpy, path, "negative dimension " + std::to_string(v.integer) + " in 'shape'");
    h.shape.push_back(v.integer);
  }
  return h;
}

// The data: exactly the bytes the shape needs; '<f8' converted in bounded chunks rather than
// holding a second full-size buffer.
Tensor read_npy_data(const InputFile& f, const std::string& path, uint64_t size, uint64_t data_start,
                     const NpyHeader& h) {
  int64_t numel = 0, expected = 0;
  if (!checked_numel(h.shape, h.itemsize, &numel, &expected))
    fail(kNpy, path, "shape " + py_shape_repr(h.shape) + " is too large (size overflows)");
  const uint64_t found = size - data_start;
  if (found != static_cast<uint64_t>(expected))
    fail(kNpy, path,
         "data is " + std::to_string(found) + " bytes but shape " + py_shape_repr(h.shape) + " of '" + h.descr +
             "' needs " + std::to_string(expected) + " bytes" +
             (found < static_cast<uint64_t>(expected) ? " (truncated file?)" : " (unexpected trailing bytes)"));
  Tensor t(h.shape);
  if (h.itemsize == 4) {
    f.read_at(data_start, t.data(), static_cast<uint64_t>(expected), "the data");
    return t;
  }
  constexpr int64_t kChunk = 1 << 16;
  std::vector<double> buf(static_cast<size_t>(std::min(numel, kChunk)));
  for (int64_t i = 0; i < numel; i += kChunk) {
    const int64_t n = std::min(kChunk, numel - i);
    f.read_at(data_start + static_cast<uint64_t>(i) * 8, buf.data(), static_cast<uint64_t>(n) * 8, "the data");
    for (int64_t k = 0; k < n; ++k) t[i + k] = static_cast<float>(buf[static_cast<size_t>(k)]);
  }
  return t;
}

}  // namespace

void check_finite(const Tensor& tensor, const std::string& what) {
  const float* p = tensor.data();
  for (int64_t i = 0; i < tensor.numel(); ++i) {
    if (std::isfinite(p[i])) continue;
    std::string element = "[";
    int64_t rest = i;
    const Shape& shape = tensor.shape();
    std::vector<int64_t> index(shape.size());
    for (size_t k = shape.size(); k-- > 0;) {
      index[k] = rest % shape[k];
      rest /= shape[k];
    }
    for (size_t k = 0; k < index.size(); ++k) element += (k ? ", " : "") + std::to_string(index[k]);
    element += "]";
    const std::string value = std::isnan(p[i]) ? "nan" : (p[i] > 0 ? "inf" : "-inf");
    throw_input_error(what + ": value " + value + " at index " + std::to_string(i) + " (element " + element +
                      " of shape " + shape_to_string(shape) + ") is not finite");
  }
}

Tensor read_npy(const std::string& path) {
  const InputFile f(kNpy, path);
  const uint64_t size = f.size();
  uint64_t data_start = 0;
  const std::string text = read_npy_header(f, path, size, &data_start);
  return read_npy_data(f, path, size, data_start, parse_npy_header(text, path));
}

}  // namespace sy
