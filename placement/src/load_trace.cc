// Load traces as .npy (see load_trace.h). The header is a Python dict literal; this reader
// needs only its three keys, so it scans for them rather than parsing Python in general
// (core/io.cc's full parser stays private to the float32 tensor files).
#include "switchyard/placement/load_trace.h"

#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include "switchyard/core/error.h"

namespace sy {
namespace {

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw_input_error("load trace '" + path + "': " + what);
}

struct NpyArray {
  std::string dtype;  // "f4", "f8", "i4", "i8", "u4", "u8"
  std::vector<int64_t> shape;
  std::string data;
};

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, "cannot open the file for reading");
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// The value text after `'key':` in the header dict, up to the next top-level ',' or '}'.
std::string header_value(const std::string& header, const std::string& key, const std::string& path) {
  const size_t k = header.find("'" + key + "'");
  if (k == std::string::npos) fail(path, "the .npy header has no '" + key + "'");
  size_t p = header.find(':', k);
  if (p == std::string::npos) fail(path, "malformed .npy header near '" + key + "'");
  ++p;
  while (p < header.size() && header[p] == ' ') ++p;
  size_t end = p;
  if (end < header.size() && header[end] == '(') {
    end = header.find(')', end);
    if (end == std::string::npos) fail(path, "malformed .npy header: unterminated shape tuple");
    return header.substr(p, end - p + 1);
  }
  while (end < header.size() && header[end] != ',' && header[end] != '}') ++end;
  std::string v = header.substr(p, end - p);
  while (!v.empty() && v.back() == ' ') v.pop_back();
  return v;
}

std::vector<int64_t> parse_shape(const std::string& tuple, const std::string& path) {
  std::vector<int64_t> shape;
  std::string inner = tuple.substr(1, tuple.size() - 2);
  std::stringstream s(inner);
  std::string item;
  while (std::getline(s, item, ',')) {
    size_t a = item.find_first_not_of(' ');
    if (a == std::string::npos) continue;
    item = item.substr(a, item.find_last_not_of(' ') - a + 1);
    char* end = nullptr;
    const long long v = std::strtoll(item.c_str(), &end, 10);
    if (*end != '\0' || v < 0) fail(path, "bad dimension '" + item + "' in shape " + tuple);
    shape.push_back(v);
  }
  return shape;
}

NpyArray read_npy_array(const std::string& path) {
  const std::string bytes = read_all(path);
  if (bytes.size() < 10 || std::memcmp(bytes.data(), "\x93NUMPY", 6) != 0) fail(path, "not an .npy file (bad magic)");
  const int major = static_cast<unsigned char>(bytes[6]);
  if (major != 1 && major != 2) fail(path, "unsupported .npy format version " + std::to_string(major) + ".x (need 1.0 or 2.0)");
  const size_t len_bytes = major == 1 ? 2 : 4;
  if (bytes.size() < 8 + len_bytes) fail(path, "truncated .npy preamble");
  uint64_t hlen = 0;
  for (size_t i = 0; i < len_bytes; ++i) hlen |= uint64_t{static_cast<unsigned char>(bytes[8 + i])} << (8 * i);
  const size_t start = 8 + len_bytes;
  if (bytes.size() < start + hlen) fail(path, "truncated .npy header");
  const std::string header = bytes.substr(start, hlen);
  NpyArray a;
  std::string descr = header_value(header, "descr", path);
  if (descr.size() != 5 || (descr[0] != '\'' && descr[0] != '"'))
    fail(path, "dtype " + descr + " is not supported (need '<f4', '<f8', '<i4', '<i8', '<u4' or '<u8')");
  descr = descr.substr(1, 3);
  static const char* kDtypes[] = {"<f4", "<f8", "<i4", "<i8", "<u4", "<u8"};
  bool ok = false;
  for (const char* d : kDtypes) ok = ok || descr == d;
  if (!ok) fail(path, "dtype '" + descr + "' is not supported (need '<f4', '<f8', '<i4', '<i8', '<u4' or '<u8')");
  a.dtype = descr.substr(1);
  if (header_value(header, "fortran_order", path) != "False") fail(path, "Fortran-order arrays are not supported; save in C order");
  const std::string shape = header_value(header, "shape", path);
  if (shape.empty() || shape.front() != '(') fail(path, "malformed shape " + shape);
  a.shape = parse_shape(shape, path);
  uint64_t n = 1;
  for (int64_t d : a.shape)
    if (__builtin_mul_overflow(n, static_cast<uint64_t>(d), &n)) fail(path, "shape " + shape + " is too large");
  const uint64_t need = n * static_cast<uint64_t>(a.dtype[1] - '0');
  if (bytes.size() - start - hlen < need)
    fail(path, "truncated data: shape " + shape + " needs " + std::to_string(need) + " bytes, the file has " +
                   std::to_string(bytes.size() - start - hlen));
  a.data = bytes.substr(start + hlen, need);
  return a;
}

double element(const NpyArray& a, size_t i) {
  const char* p = a.data.data() + i * static_cast<size_t>(a.dtype[1] - '0');
  auto get = [p](auto v) {
    std::memcpy(&v, p, sizeof v);
    return static_cast<double>(v);
  };
  if (a.dtype == "f4") return get(float{});
  if (a.dtype == "f8") return get(double{});
  if (a.dtype == "i4") return get(int32_t{});
  if (a.dtype == "i8") return get(int64_t{});
  if (a.dtype == "u4") return get(uint32_t{});
  return get(uint64_t{});
}

std::string shape_text(const std::vector<int64_t>& s) {
  std::string t = "[";
  for (size_t i = 0; i < s.size(); ++i) t += (i ? ", " : "") + std::to_string(s[i]);
  return t + "]";
}

// Checks the trace's R and E against the model (or takes them as they are) and returns the
// zero matrix those rows form.
LoadMatrix rows_for(const std::string& path, int64_t rows, int64_t experts, const ModelConfig* model) {
  if (rows < 1 || experts < 1) fail(path, "needs at least one row and one expert, got R = " + std::to_string(rows) + ", E = " + std::to_string(experts));
  if (rows > (1 << 24) || experts > (1 << 24)) fail(path, "R = " + std::to_string(rows) + ", E = " + std::to_string(experts) + " is too large");
  if (!model) return load_matrix_rows(static_cast<int>(rows), static_cast<int>(experts));
  LoadMatrix m = load_matrix_rows(*model);
  if (rows != m.rows())
    fail(path, "has " + std::to_string(rows) + " rows, the model has " + std::to_string(m.rows()) + " (layers " +
                   std::to_string(model->layers) + " x stages " + std::to_string(model->layer.stages.size()) + ")");
  if (experts < m.experts)
    fail(path, "has " + std::to_string(experts) + " experts per row, the model's widest stage has " + std::to_string(m.experts));
  m.experts = static_cast<int>(experts);
  m.counts.assign(static_cast<size_t>(rows * experts), 0.0);
  return m;
}

std::vector<LoadMatrix> read_steps(const std::string& path, const ModelConfig* model) {
  const NpyArray a = read_npy_array(path);
  if (a.shape.size() != 2 && a.shape.size() != 3)
    fail(path, "shape " + shape_text(a.shape) + " has " + std::to_string(a.shape.size()) + " dimensions; need [R, E] or [steps, R, E]");
  const int64_t steps = a.shape.size() == 3 ? a.shape[0] : 1;
  const int64_t rows = a.shape[a.shape.size() - 2], experts = a.shape.back();
  if (steps < 1) fail(path, "has no steps (shape " + shape_text(a.shape) + ")");
  const LoadMatrix zero = rows_for(path, rows, experts, model);
  std::vector<LoadMatrix> out(static_cast<size_t>(steps), zero);
  size_t i = 0;
  for (int64_t s = 0; s < steps; ++s)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t e = 0; e < experts; ++e, ++i) {
        const double v = element(a, i);
        auto at = [&] {
          return "[" + (a.shape.size() == 3 ? std::to_string(s) + ", " : "") + std::to_string(r) + ", " + std::to_string(e) + "]";
        };
        if (!std::isfinite(v)) fail(path, "count at " + at() + " is not finite");
        if (v < 0) fail(path, "count at " + at() + " is negative (" + std::to_string(v) + ")");
        if (v != 0 && e >= zero.row_experts[static_cast<size_t>(r)])
          fail(path, "count at " + at() + " is " + std::to_string(v) + " but the row's stage has only " +
                         std::to_string(zero.row_experts[static_cast<size_t>(r)]) + " experts (need 0 past them)");
        out[static_cast<size_t>(s)].counts[static_cast<size_t>(r * experts + e)] = v;
      }
  return out;
}

void write_f8(const std::string& path, const std::vector<int64_t>& shape, const std::vector<const LoadMatrix*>& steps) {
  std::string dims;
  for (int64_t d : shape) dims += std::to_string(d) + ", ";
  if (shape.size() > 1) dims.resize(dims.size() - 2);
  std::string header = "{'descr': '<f8', 'fortran_order': False, 'shape': (" + dims + "), }";
  while ((10 + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  std::string out = "\x93NUMPY";
  out += '\x01';
  out += '\x00';
  out += static_cast<char>(header.size() & 0xff);
  out += static_cast<char>((header.size() >> 8) & 0xff);
  out += header;
  for (const LoadMatrix* m : steps) out.append(reinterpret_cast<const char*>(m->counts.data()), m->counts.size() * sizeof(double));
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) throw_input_error("load trace '" + path + "': cannot create '" + tmp + "'");
    f.write(out.data(), static_cast<std::streamsize>(out.size()));
    if (!f) throw_input_error("load trace '" + path + "': error writing '" + tmp + "'");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    ::unlink(tmp.c_str());
    throw_input_error("load trace '" + path + "': cannot rename '" + tmp + "' to the final name");
  }
}

}  // namespace

LoadMatrix load_matrix_rows(const ModelConfig& model) {
  LoadMatrix m;
  for (const StageConfig& st : model.layer.stages) m.experts = std::max(m.experts, st.experts);
  for (int l = 0; l < model.layers; ++l)
    for (size_t s = 0; s < model.layer.stages.size(); ++s) {
      m.layer.push_back(l);
      m.stage.push_back(static_cast<int>(s));
      m.row_experts.push_back(model.layer.stages[s].experts);
    }
  m.counts.assign(static_cast<size_t>(m.rows()) * static_cast<size_t>(m.experts), 0.0);
  return m;
}

LoadMatrix load_matrix_rows(int rows, int experts) {
  LoadMatrix m;
  m.experts = experts;
  for (int r = 0; r < rows; ++r) {
    m.layer.push_back(r);
    m.stage.push_back(0);
    m.row_experts.push_back(experts);
  }
  m.counts.assign(static_cast<size_t>(rows) * static_cast<size_t>(experts), 0.0);
  return m;
}

std::vector<LoadMatrix> read_load_trace_steps(const std::string& path, const ModelConfig* model) {
  return read_steps(path, model);
}

LoadMatrix read_load_trace(const std::string& path, const ModelConfig* model) {
  std::vector<LoadMatrix> steps = read_steps(path, model);
  LoadMatrix sum = steps[0];
  for (size_t s = 1; s < steps.size(); ++s)
    for (size_t i = 0; i < sum.counts.size(); ++i) sum.counts[i] += steps[s].counts[i];
  return sum;
}

void check_load_matrix(const LoadMatrix& load, const std::string& what) {
  const size_t R = load.layer.size();
  if (load.experts < 1) throw_input_error(what + ": needs at least one expert per row, got " + std::to_string(load.experts));
  if (load.stage.size() != R || load.row_experts.size() != R)
    throw_input_error(what + ": layer, stage and row_experts list " + std::to_string(R) + ", " + std::to_string(load.stage.size()) +
                      " and " + std::to_string(load.row_experts.size()) + " rows");
  if (load.counts.size() != R * static_cast<size_t>(load.experts))
    throw_input_error(what + ": " + std::to_string(load.counts.size()) + " counts for " + std::to_string(R) + " rows x " +
                      std::to_string(load.experts) + " experts");
  for (size_t r = 0; r < R; ++r) {
    const int n = load.row_experts[r];
    if (n < 1 || n > load.experts)
      throw_input_error(what + ": row " + std::to_string(r) + " has " + std::to_string(n) + " experts, need 1.." + std::to_string(load.experts));
    for (int e = 0; e < load.experts; ++e) {
      const double v = load.at(static_cast<int>(r), e);
      auto at = [&] { return "row " + std::to_string(r) + " expert " + std::to_string(e); };
      if (!std::isfinite(v) || v < 0) throw_input_error(what + ": count at " + at() + " is " + std::to_string(v) + ", need a finite number >= 0");
      if (v != 0 && e >= n) throw_input_error(what + ": count at " + at() + " is past the row's " + std::to_string(n) + " experts");
    }
  }
}

void write_load_trace(const std::string& path, const LoadMatrix& load) {
  check_load_matrix(load, "load trace '" + path + "'");
  write_f8(path, {load.rows(), load.experts}, {&load});
}

void write_load_trace_steps(const std::string& path, const std::vector<LoadMatrix>& steps) {
  if (steps.empty()) throw_input_error("load trace '" + path + "': no steps to write");
  std::vector<const LoadMatrix*> ptrs;
  for (const LoadMatrix& m : steps) {
    check_load_matrix(m, "load trace '" + path + "'");
    if (m.rows() != steps[0].rows() || m.experts != steps[0].experts) throw_input_error("load trace '" + path + "': steps differ in shape");
    ptrs.push_back(&m);
  }
  write_f8(path, {static_cast<int64_t>(steps.size()), steps[0].rows(), steps[0].experts}, ptrs);
}

}  // namespace sy
