// Tests for core/io: safetensors and .npy round trips, byte-exact numpy preambles, and every
// corrupt-file case producing an sy::Error(ErrorKind::input) that names the file (and tensor).
#include "switchyard/core/io.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "switchyard/core/error.h"

namespace fs = std::filesystem;

namespace {

// A fresh directory per test, removed afterwards.
class IoTest : public ::testing::Test {
 protected:
  void SetUp() override {
    static std::atomic<int> counter{0};
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() / ("sy_test_io_" + std::to_string(::getpid()) + "_" +
                                        std::to_string(counter++) + "_" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  static void write_bytes(const std::string& p, const std::string& bytes) {
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    ASSERT_TRUE(out) << p;
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    ASSERT_TRUE(out.good()) << p;
  }

  static std::string read_bytes(const std::string& p) {
    std::ifstream in(p, std::ios::binary);
    EXPECT_TRUE(in) << p;
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }

  fs::path dir_;
};

std::string le64(uint64_t v) {
  std::string s;
  for (int i = 0; i < 8; ++i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  return s;
}
std::string le16(uint16_t v) { return {static_cast<char>(v & 0xff), static_cast<char>(v >> 8)}; }
std::string le32(uint32_t v) {
  std::string s;
  for (int i = 0; i < 4; ++i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  return s;
}

std::string float_bytes(const std::vector<float>& v) {
  std::string s(v.size() * 4, '\0');
  if (!v.empty()) std::memcpy(s.data(), v.data(), s.size());
  return s;
}
std::string double_bytes(const std::vector<double>& v) {
  std::string s(v.size() * 8, '\0');
  if (!v.empty()) std::memcpy(s.data(), v.data(), s.size());
  return s;
}

// A safetensors file from a raw header string (no padding added) and raw data bytes.
std::string safetensors_bytes(const std::string& header, const std::string& data) {
  return le64(header.size()) + header + data;
}

// An .npy v1.0 file from a raw header dict string, padded like numpy does.
std::string npy_v1_bytes(const std::string& dict, const std::string& data) {
  std::string h = dict;
  while ((10 + h.size() + 1) % 64 != 0) h.push_back(' ');
  h.push_back('\n');
  return std::string("\x93NUMPY\x01\x00", 8) + le16(static_cast<uint16_t>(h.size())) + h + data;
}

// Bit-exact comparison (so -0.0, NaN payloads and denormals must survive).
void expect_same_tensor(const sy::Tensor& a, const sy::Tensor& b) {
  ASSERT_EQ(a.shape(), b.shape());
  ASSERT_EQ(a.numel(), b.numel());
  if (a.numel() > 0) {
    EXPECT_EQ(0, std::memcmp(a.data(), b.data(), static_cast<size_t>(a.numel()) * 4));
  }
}

sy::Tensor iota(sy::Shape shape, float start = 0.5f) {
  sy::Tensor t(std::move(shape));
  for (int64_t i = 0; i < t.numel(); ++i) t[i] = start + static_cast<float>(i) * 1.25f;
  return t;
}

// Runs f, expects an sy::Error of kind input, returns what().
std::string input_error(const std::function<void()>& f) {
  try {
    f();
  } catch (const sy::Error& e) {
    EXPECT_EQ(e.kind(), sy::ErrorKind::input) << e.what();
    EXPECT_EQ(e.exit_code(), 3);
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected sy::Error, got another exception: " << e.what();
    return {};
  }
  ADD_FAILURE() << "expected sy::Error, nothing was thrown";
  return {};
}

::testing::AssertionResult Contains(const std::string& haystack, const std::string& needle) {
  if (haystack.find(needle) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "\"" << haystack << "\" does not contain \"" << needle << "\"";
}

}  // namespace

// =========================================================================================
// safetensors: round trips

TEST_F(IoTest, SafetensorsRoundTripSeveralShapes) {
  sy::TensorMap in;
  in["scalar"] = sy::Tensor(sy::Shape{}, std::vector<float>{3.5f});
  in["vec"] = iota({5});
  in["cube"] = iota({2, 3, 4}, -7.0f);
  in["empty0"] = sy::Tensor(sy::Shape{0});
  in["empty_rows"] = sy::Tensor(sy::Shape{0, 3});
  in["special"] = sy::Tensor(sy::Shape{6}, std::vector<float>{-0.0f, std::numeric_limits<float>::infinity(),
                                                              -std::numeric_limits<float>::infinity(),
                                                              std::numeric_limits<float>::denorm_min(),
                                                              std::numeric_limits<float>::max(),
                                                              std::numeric_limits<float>::quiet_NaN()});
  const std::string p = path("model.safetensors");
  sy::write_safetensors(p, in);
  const sy::TensorMap out = sy::read_safetensors(p);
  ASSERT_EQ(out.size(), in.size());
  for (const auto& [name, t] : in) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(out.count(name));
    expect_same_tensor(out.at(name), t);
  }
  EXPECT_TRUE(sy::read_safetensors_metadata(p).empty());
}

TEST_F(IoTest, SafetensorsEmptyMapRoundTrip) {
  const std::string p = path("empty.safetensors");
  sy::write_safetensors(p, {});
  EXPECT_TRUE(sy::read_safetensors(p).empty());
  const std::string bytes = read_bytes(p);
  ASSERT_EQ(bytes.size(), 16u);  // 8-byte length + "{}" padded to 8
  EXPECT_EQ(bytes.substr(0, 8), le64(8));
  EXPECT_EQ(bytes.substr(8), "{}      ");
}

TEST_F(IoTest, SafetensorsMetadataRoundTrip) {
  const std::string p = path("meta.safetensors");
  const std::map<std::string, std::string> meta = {
      {"format", "pt"}, {"stage", "2"}, {"note", "quotes \" and \\ and unicode \xc3\xa9"}, {"empty", ""}};
  sy::TensorMap in;
  in["w"] = iota({2, 2});
  sy::write_safetensors(p, in, meta);
  EXPECT_EQ(sy::read_safetensors_metadata(p), meta);
  const sy::TensorMap out = sy::read_safetensors(p);
  ASSERT_EQ(out.size(), 1u);  // "__metadata__" is not a tensor
  expect_same_tensor(out.at("w"), in["w"]);
}

// Issue 12: user tensors with NaN/Inf are refused where they enter, naming the first bad one.
TEST_F(IoTest, CheckFiniteNamesTheFirstBadIndexAndElement) {
  sy::Tensor t = iota({2, 3, 4});
  EXPECT_NO_THROW(sy::check_finite(t, "x"));
  EXPECT_NO_THROW(sy::check_finite(sy::Tensor(sy::Shape{0, 3}), "empty"));
  t[17] = std::numeric_limits<float>::infinity();
  t[21] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(input_error([&] { sy::check_finite(t, "--input 'x.npy'"); }),
            "--input 'x.npy': value inf at index 17 (element [1, 1, 1] of shape [2, 3, 4]) is not finite");
  t[17] = 0;
  EXPECT_EQ(input_error([&] { sy::check_finite(t, "x"); }),
            "x: value nan at index 21 (element [1, 2, 1] of shape [2, 3, 4]) is not finite");
  const sy::Tensor scalar(sy::Shape{}, std::vector<float>{-std::numeric_limits<float>::infinity()});
  EXPECT_EQ(input_error([&] { sy::check_finite(scalar, "s"); }), "s: value -inf at index 0 (element [] of shape []) is not finite");
}

// Issue 12: writing was quadratic in the tensor count (the header was an ordered_json object,
// which finds each new key by a linear scan): 80 000 tensors took over 35 s. Checkpoints of
// many experts write this many. Linear now: this takes well under a second.
TEST_F(IoTest, SafetensorsWritesManyTensorsAndReadsThemBack) {
  constexpr int kTensors = 50000;
  sy::TensorMap in;
  for (int i = 0; i < kTensors; ++i)
    in.emplace("layers." + std::to_string(i % 7) + ".expert." + std::to_string(i) + ".w",
               sy::Tensor(sy::Shape{i % 3}, std::vector<float>(static_cast<size_t>(i % 3), static_cast<float>(i))));
  const std::string p = path("many.safetensors");
  sy::write_safetensors(p, in, {{"format", "switchyard"}});
  const sy::TensorMap out = sy::read_safetensors(p);
  ASSERT_EQ(out.size(), in.size());
  for (const auto& [name, t] : in) {
    const auto it = out.find(name);
    ASSERT_NE(it, out.end()) << name;
    expect_same_tensor(it->second, t);
  }
  EXPECT_EQ(sy::read_safetensors_metadata(p).at("format"), "switchyard");
}

TEST_F(IoTest, SafetensorsLayoutIsSortedContiguousAndPadded) {
  sy::TensorMap in;
  in["b"] = iota({3});
  in["a"] = iota({2, 2});
  in["c"] = sy::Tensor(sy::Shape{0});
  in["a.long.name"] = iota({1});
  const std::string p = path("layout.safetensors");
  sy::write_safetensors(p, in, {{"k", "v"}});
  const std::string bytes = read_bytes(p);
  ASSERT_GE(bytes.size(), 8u);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[static_cast<size_t>(i)]);
  EXPECT_EQ(n % 8, 0u);
  ASSERT_LE(8 + n, bytes.size());
  const std::string header = bytes.substr(8, n);
  const size_t last = header.find_last_not_of(' ');
  ASSERT_NE(last, std::string::npos);
  EXPECT_EQ(header[last], '}');
  EXPECT_LT(header.size() - (last + 1), 8u);  // at most 7 padding spaces

  const auto j = nlohmann::ordered_json::parse(header);
  std::vector<std::string> names;
  for (const auto& [k, v] : j.items())
    if (k != "__metadata__") names.push_back(k);
  EXPECT_EQ(names, (std::vector<std::string>{"a", "a.long.name", "b", "c"}));
  uint64_t offset = 0;
  for (const auto& name : names) {
    SCOPED_TRACE(name);
    const auto& e = j.at(name);
    EXPECT_EQ(e.at("dtype"), "F32");
    EXPECT_EQ(e.at("shape").get<std::vector<int64_t>>(), in.at(name).shape());
    EXPECT_EQ(e.at("data_offsets").at(0).get<uint64_t>(), offset);
    offset += static_cast<uint64_t>(in.at(name).numel()) * 4;
    EXPECT_EQ(e.at("data_offsets").at(1).get<uint64_t>(), offset);
  }
  EXPECT_EQ(bytes.size(), 8 + n + offset);  // no trailing bytes
  EXPECT_EQ(j.at("__metadata__").at("k"), "v");
  // The data of "b" is where its offsets say.
  const uint64_t b_begin = j.at("b").at("data_offsets").at(0).get<uint64_t>();
  EXPECT_EQ(bytes.substr(8 + n + b_begin, 12), float_bytes(in["b"].values()));
}

TEST_F(IoTest, SafetensorsReadsHandWrittenReferenceFile) {
  // As the Python reference writes it: metadata first, compact JSON, space padding.
  std::string header =
      R"({"__metadata__":{"format":"pt"},"bias":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
      R"("weight":{"dtype":"F32","shape":[2,2],"data_offsets":[8,24]}})";
  while (header.size() % 8) header.push_back(' ');
  const std::string p = path("ref.safetensors");
  write_bytes(p, safetensors_bytes(header, float_bytes({1, 2}) + float_bytes({3, 4, 5, 6})));
  const sy::TensorMap m = sy::read_safetensors(p);
  ASSERT_EQ(m.size(), 2u);
  EXPECT_EQ(m.at("bias").values(), (std::vector<float>{1, 2}));
  EXPECT_EQ(m.at("weight").shape(), (sy::Shape{2, 2}));
  EXPECT_EQ(m.at("weight").values(), (std::vector<float>{3, 4, 5, 6}));
  EXPECT_EQ(sy::read_safetensors_metadata(p), (std::map<std::string, std::string>{{"format", "pt"}}));
}

TEST_F(IoTest, SafetensorsTrailingBytesAndGapsAreAccepted) {
  // Out-of-order offsets, a gap between tensors and trailing bytes: all fine.
  const std::string header =
      R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[8,12]},"y":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
  const std::string p = path("trailing.safetensors");
  write_bytes(p, safetensors_bytes(header, float_bytes({1, 99, 2, 77, 88})));
  const sy::TensorMap m = sy::read_safetensors(p);
  EXPECT_EQ(m.at("x").values(), (std::vector<float>{2}));
  EXPECT_EQ(m.at("y").values(), (std::vector<float>{1}));
}

TEST_F(IoTest, SafetensorsEmptyTensorsMayShareAnOffset) {
  const std::string header =
      R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},"b":{"dtype":"F32","shape":[2,0],"data_offsets":[4,4]},)"
      R"("c":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  const std::string p = path("empties.safetensors");
  write_bytes(p, safetensors_bytes(header, float_bytes({1, 2})));
  const sy::TensorMap m = sy::read_safetensors(p);
  EXPECT_EQ(m.at("a").numel(), 0);
  EXPECT_EQ(m.at("b").shape(), (sy::Shape{2, 0}));
  EXPECT_EQ(m.at("c").values(), (std::vector<float>{1, 2}));
}

TEST_F(IoTest, SafetensorsOverwriteAndNoTmpLeftBehind) {
  const std::string p = path("w.safetensors");
  write_bytes(p + ".tmp", "stale junk from a crashed writer");
  sy::TensorMap first;
  first["a"] = iota({4});
  sy::write_safetensors(p, first);
  EXPECT_FALSE(fs::exists(p + ".tmp"));
  sy::TensorMap second;
  second["b"] = iota({2, 2}, 9.0f);
  sy::write_safetensors(p, second);
  EXPECT_FALSE(fs::exists(p + ".tmp"));
  const sy::TensorMap m = sy::read_safetensors(p);
  ASSERT_EQ(m.size(), 1u);
  expect_same_tensor(m.at("b"), second["b"]);
}

// =========================================================================================
// safetensors: write errors

TEST_F(IoTest, SafetensorsWriteToMissingDirectoryFails) {
  const std::string p = path("no/such/dir/w.safetensors");
  sy::TensorMap m;
  m["a"] = iota({2});
  const std::string msg = input_error([&] { sy::write_safetensors(p, m); });
  EXPECT_TRUE(Contains(msg, p));
  EXPECT_FALSE(fs::exists(p));
}

TEST_F(IoTest, WriteIntoReadOnlyDirectoryFails) {
  if (::geteuid() == 0) GTEST_SKIP() << "root ignores directory permissions";
  const fs::path ro = dir_ / "readonly";
  fs::create_directories(ro);
  fs::permissions(ro, fs::perms::owner_read | fs::perms::owner_exec);
  sy::TensorMap m;
  m["a"] = iota({2});
  const std::string st = (ro / "w.safetensors").string();
  EXPECT_TRUE(Contains(input_error([&] { sy::write_safetensors(st, m); }), st));
  const std::string np = (ro / "w.npy").string();
  EXPECT_TRUE(Contains(input_error([&] { sy::write_npy(np, iota({2})); }), np));
  fs::permissions(ro, fs::perms::owner_all);
  EXPECT_FALSE(fs::exists(st));
  EXPECT_FALSE(fs::exists(np));
}

TEST_F(IoTest, SafetensorsWriteOntoDirectoryFailsAndCleansUp) {
  const std::string p = path("adir");
  fs::create_directories(fs::path(p) / "child");
  sy::TensorMap m;
  m["a"] = iota({2});
  const std::string msg = input_error([&] { sy::write_safetensors(p, m); });
  EXPECT_TRUE(Contains(msg, p));
  EXPECT_FALSE(fs::exists(p + ".tmp"));
  EXPECT_TRUE(fs::is_directory(p));
}

TEST_F(IoTest, SafetensorsWriteRejectsReservedNameAndInconsistentTensor) {
  const std::string p = path("bad.safetensors");
  sy::TensorMap reserved;
  reserved["__metadata__"] = iota({1});
  std::string msg = input_error([&] { sy::write_safetensors(p, reserved); });
  EXPECT_TRUE(Contains(msg, p));
  EXPECT_TRUE(Contains(msg, "__metadata__"));

  sy::TensorMap inconsistent;
  inconsistent["ghost"] = sy::Tensor();  // shape [] (1 element) but no values
  msg = input_error([&] { sy::write_safetensors(p, inconsistent); });
  EXPECT_TRUE(Contains(msg, p));
  EXPECT_TRUE(Contains(msg, "ghost"));
  EXPECT_FALSE(fs::exists(p));
  EXPECT_FALSE(fs::exists(p + ".tmp"));
}

TEST_F(IoTest, SafetensorsWriteRejectsInvalidUtf8Metadata) {
  const std::string p = path("utf8.safetensors");
  const std::string msg = input_error([&] { sy::write_safetensors(p, {}, {{"k", "\xff\xfe"}}); });
  EXPECT_TRUE(Contains(msg, p));
  EXPECT_FALSE(fs::exists(p));
}

// =========================================================================================
// safetensors: corrupt files

TEST_F(IoTest, SafetensorsMissingFile) {
  const std::string p = path("missing.safetensors");
  std::string msg = input_error([&] { sy::read_safetensors(p); });
  EXPECT_TRUE(Contains(msg, p));
  EXPECT_TRUE(Contains(msg, "does not exist"));
  msg = input_error([&] { sy::read_safetensors_metadata(p); });
  EXPECT_TRUE(Contains(msg, p));
}

TEST_F(IoTest, SafetensorsPathIsADirectory) {
  const std::string p = path("dir.safetensors");
  fs::create_directories(p);
  const std::string msg = input_error([&] { sy::read_safetensors(p); });
  EXPECT_TRUE(Contains(msg, p));
  EXPECT_TRUE(Contains(msg, "directory"));
}

TEST_F(IoTest, SafetensorsShorterThan8Bytes) {
  for (const size_t n : {0, 1, 7}) {
    SCOPED_TRACE(n);
    const std::string p = path("short" + std::to_string(n) + ".safetensors");
    write_bytes(p, std::string(n, '\x01'));
    const std::string msg = input_error([&] { sy::read_safetensors(p); });
    EXPECT_TRUE(Contains(msg, p));
    EXPECT_TRUE(Contains(msg, std::to_string(n) + " bytes"));
  }
}

TEST_F(IoTest, SafetensorsHeaderLengthLargerThanFile) {
  const std::string p = path("hlen.safetensors");
  write_bytes(p, le64(1000) + "{}");
  const std::string msg = input_error([&] { sy::read_safetensors(p); });
  EXPECT_TRUE(Contains(msg, p));
  EXPECT_TRUE(Contains(msg, "header length 1000"));
}

TEST_F(IoTest, SafetensorsHeaderLengthAbsurd) {
  for (const uint64_t n : {uint64_t{100} * 1024 * 1024 + 1, uint64_t{1} << 40, ~uint64_t{0}}) {
    SCOPED_TRACE(n);
    const std::string p = path("absurd.safetensors");
    write_bytes(p, le64(n) + "{}");
    const std::string msg = input_error([&] { sy::read_safetensors(p); });
    EXPECT_TRUE(Contains(msg, p));
    EXPECT_TRUE(Contains(msg, "absurd"));
  }
}

TEST_F(IoTest, SafetensorsInvalidJson) {
  for (const std::string& header : {std::string("{\"a\": "), std::string("not json"), std::string(""),
                                   std::string("{\"a\":1,}"), std::string("{}\0\0", 4), std::string("{} {}")}) {
    SCOPED_TRACE(header);
    const std::string p = path("badjson.safetensors");
    write_bytes(p, safetensors_bytes(header, ""));
    const std::string msg = input_error([&] { sy::read_safetensors(p); });
    EXPECT_TRUE(Contains(msg, p));
    EXPECT_TRUE(Contains(msg, "JSON"));
  }
}

// A header nested 100 000 deep is refused by its depth, not a stack overflow (issue 12).
TEST_F(IoTest, SafetensorsDeeplyNestedHeaderIsRefused) {
  const std::string deep = "{\"a\": {\"dtype\": \"F32\", \"shape\": " + std::string(100000, '[') +
                           std::string(100000, ']') + ", \"data_offsets\": [0, 0]}}";
  const std::string p = path("deep.safetensors");
  write_bytes(p, safetensors_bytes(deep, ""));
  const std::string msg = input_error([&] { sy::read_safetensors(p); });
  EXPECT_TRUE(Contains(msg, p));
  EXPECT_TRUE(Contains(msg, "100002 levels deep"));
  // Brackets inside strings do not count.
  const std::string quoted = "{\"[[[[[[[[[[[[[[[[[[[[\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}";
  write_bytes(p, safetensors_bytes(quoted, float_bytes({1})));
  EXPECT_EQ(sy::read_safetensors(p).size(), 1u);
}

TEST_F(IoTest, SafetensorsHeaderNotAnObject) {
  for (const std::string header : {"[1,2,3]", "42", "\"str\"", "null"}) {
    SCOPED_TRACE(header);
    const std::string p = path("notobj.safetensors");
    write_bytes(p, safetensors_bytes(header, ""));
    const std::string msg = input_error([&] { sy::read_safetensors(p); });
    EXPECT_TRUE(Contains(msg, p));
    EXPECT_TRUE(Contains(msg, "object"));
  }
}

// Each per-tensor problem names the file, the tensor and what is wrong.
struct BadEntry {
  const char* entry;     // JSON value for tensor "t0" (data section is 16 bytes)
  const char* expected;  // substring of the message
};

TEST_F(IoTest, SafetensorsBadEntries) {
  const std::vector<BadEntry> cases = {
      {R"(5)", "object"},
      {R"([1,2])", "object"},
      {R"({"shape":[1],"data_offsets":[0,4]})", "dtype"},
      {R"({"dtype":"F32","data_offsets":[0,4]})", "shape"},
      {R"({"dtype":"F32","shape":[1]})", "data_offsets"},
      {R"({"dtype":32,"shape":[1],"data_offsets":[0,4]})", "dtype"},
      {R"({"dtype":null,"shape":[1],"data_offsets":[0,4]})", "dtype"},
      {R"({"dtype":"F32","shape":"1","data_offsets":[0,4]})", "shape"},
      {R"({"dtype":"F32","shape":[1.5],"data_offsets":[0,4]})", "shape"},
      {R"({"dtype":"F32","shape":["1"],"data_offsets":[0,4]})", "shape"},
      {R"({"dtype":"F32","shape":[true],"data_offsets":[0,4]})", "shape"},
      {R"({"dtype":"F32","shape":[18446744073709551615],"data_offsets":[0,4]})", "too large"},
      {R"({"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,4]})", "too large"},
      {R"({"dtype":"F32","shape":[1],"data_offsets":"0,4"})", "data_offsets"},
      {R"({"dtype":"F32","shape":[1],"data_offsets":[0]})", "data_offsets"},
      {R"({"dtype":"F32","shape":[1],"data_offsets":[0,4,8]})", "data_offsets"},
      {R"({"dtype":"F32","shape":[1],"data_offsets":[0,4.0]})", "data_offsets"},
      {R"({"dtype":"F32","shape":[1],"data_offsets":["0","4"]})", "data_offsets"},
      {R"({"dtype":"F32","shape":[1],"data_offsets":[-4,0]})", "negative"},
      {R"({"dtype":"F32","shape":[2,-3],"data_offsets":[0,4]})", "negative dimension -3"},
      {R"({"dtype":"F32","shape":[1],"data_offsets":[8,4]})", "begin > end"},
      {R"({"dtype":"F32","shape":[1],"data_offsets":[16,20]})", "past the end"},
      {R"({"dtype":"F32","shape":[2],"data_offsets":[12,20]})", "past the end"},
      {R"({"dtype":"F32","shape":[1],"data_offsets":[0,18446744073709551615]})", "past the end"},
      {R"({"dtype":"F32","shape":[3],"data_offsets":[0,8]})", "needs 3 * 4 = 12 bytes"},
      {R"({"dtype":"F32","shape":[],"data_offsets":[0,0]})", "cover 0 bytes"},
      {R"({"dtype":"F32","shape":[0],"data_offsets":[0,4]})", "cover 4 bytes"},
  };
  for (const BadEntry& c : cases) {
    SCOPED_TRACE(c.entry);
    const std::string p = path("entry.safetensors");
    const std::string header = std::string(R"({"good":{"dtype":"F32","shape":[1],"data_offsets":[12,16]},"t0":)") +
                               c.entry + "}";
    write_bytes(p, safetensors_bytes(header, float_bytes({1, 2, 3, 4})));
    const std::string msg = input_error([&] { sy::read_safetensors(p); });
    EXPECT_TRUE(Contains(msg, p));
    EXPECT_TRUE(Contains(msg, "'t0'"));
    EXPECT_TRUE(Contains(msg, c.expected));
    // The metadata reader validates the same header.
    input_error([&] { sy::read_safetensors_metadata(p); });
  }
}

TEST_F(IoTest, SafetensorsUnsupportedDtypesAreNamed) {
  for (const std::string dtype : {"F16", "BF16", "F64", "I32", "U8", "BOOL", "f32", ""}) {
    SCOPED_TRACE(dtype);
    const std::string p = path("dtype.safetensors");
    write_bytes(p, safetensors_bytes(R"({"w":{"dtype":")" + dtype + R"(","shape":[2],"data_offsets":[0,4]}})",
                                     std::string(8, '\0')));
    const std::string msg = input_error([&] { sy::read_safetensors(p); });
    EXPECT_TRUE(Contains(msg, p));
    EXPECT_TRUE(Contains(msg, "'w'"));
    EXPECT_TRUE(Contains(msg, "'" + dtype + "'"));
    EXPECT_TRUE(Contains(msg, "only F32 is supported"));
  }
}

TEST_F(IoTest, SafetensorsOverlappingRanges) {
  const std::string p = path("overlap.safetensors");
  const std::string header =
      R"({"first":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"second":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})";
  write_bytes(p, safetensors_bytes(header, float_bytes({1, 2, 3})));
  const std::string msg = input_error([&] { sy::read_safetensors(p); });
  EXPECT_TRUE(Contains(msg, p));
  EXPECT_TRUE(Contains(msg, "'first'"));
  EXPECT_TRUE(Contains(msg, "'second'"));
  EXPECT_TRUE(Contains(msg, "overlap"));
}

TEST_F(IoTest, SafetensorsOverlapContainedRange) {
  // "b" [4, 8) and "c" [16, 20) lie inside "big" [0, 24).
  const std::string p = path("overlap2.safetensors");
  const std::string header =
      R"({"big":{"dtype":"F32","shape":[6],"data_offsets":[0,24]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},)"
      R"("c":{"dtype":"F32","shape":[1],"data_offsets":[16,20]}})";
  write_bytes(p, safetensors_bytes(header, float_bytes({1, 2, 3, 4, 5, 6})));
  const std::string msg = input_error([&] { sy::read_safetensors(p); });
  EXPECT_TRUE(Contains(msg, p));
  EXPECT_TRUE(Contains(msg, "'big'"));
  EXPECT_TRUE(Contains(msg, "'b'"));
  EXPECT_TRUE(Contains(msg, "overlap"));
}

TEST_F(IoTest, SafetensorsIdenticalRangesOverlap) {
  const std::string p = path("same.safetensors");
  const std::string header =
      R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
  write_bytes(p, safetensors_bytes(header, float_bytes({1})));
  const std::string msg = input_error([&] { sy::read_safetensors(p); });
  EXPECT_TRUE(Contains(msg, p));
  EXPECT_TRUE(Contains(msg, "'a'"));
  EXPECT_TRUE(Contains(msg, "'b'"));
}

TEST_F(IoTest, SafetensorsBadMetadata) {
  for (const std::string meta : {R"("pt")", R"([1])", R"({"format":1})", R"({"format":null})", R"({"a":{"b":"c"}})"}) {
    SCOPED_TRACE(meta);
    const std::string p = path("badmeta.safetensors");
    write_bytes(p, safetensors_bytes(R"({"__metadata__":)" + meta + "}", ""));
    const std::string msg = input_error([&] { sy::read_safetensors_metadata(p); });
    EXPECT_TRUE(Contains(msg, p));
    EXPECT_TRUE(Contains(msg, "__metadata__"));
  }
}

TEST_F(IoTest, SafetensorsTruncatedDataSection) {
  // A valid file cut short: the last tensor now runs past the end.
  sy::TensorMap in;
  in["a"] = iota({4});
  in["z"] = iota({4});
  const std::string p = path("cut.safetensors");
  sy::write_safetensors(p, in);
  const std::string bytes = read_bytes(p);
  write_bytes(p, bytes.substr(0, bytes.size() - 3));
  const std::string msg = input_error([&] { sy::read_safetensors(p); });
  EXPECT_TRUE(Contains(msg, p));
  EXPECT_TRUE(Contains(msg, "'z'"));
  EXPECT_TRUE(Contains(msg, "past the end"));
}

TEST_F(IoTest, SafetensorsTruncatedInsideHeader) {
  sy::TensorMap in;
  in["a"] = iota({4});
  const std::string p = path("cuthdr.safetensors");
  sy::write_safetensors(p, in);
  const std::string bytes = read_bytes(p);
  write_bytes(p, bytes.substr(0, 20));
  const std::string msg = input_error([&] { sy::read_safetensors(p); });
  EXPECT_TRUE(Contains(msg, p));
  EXPECT_TRUE(Contains(msg, "header length"));
}

// =========================================================================================
// npy: round trips and the numpy byte layout

TEST_F(IoTest, NpyRoundTripSeveralShapes) {
  const std::vector<sy::Tensor> tensors = {
      sy::Tensor(sy::Shape{}, std::vector<float>{-2.25f}),
      iota({5}),
      iota({2, 3, 4}, -3.0f),
      sy::Tensor(sy::Shape{0}),
      sy::Tensor(sy::Shape{0, 3}),
      sy::Tensor(sy::Shape{3, 0, 2}),
      iota({1, 1, 1}),
      iota({7, 11}),
      iota({12345}),
      sy::Tensor(sy::Shape{3}, std::vector<float>{-0.0f, std::numeric_limits<float>::quiet_NaN(),
                                                  std::numeric_limits<float>::denorm_min()}),
  };
  for (const sy::Tensor& t : tensors) {
    SCOPED_TRACE(sy::shape_to_string(t.shape()));
    const std::string p = path("t.npy");
    sy::write_npy(p, t);
    EXPECT_FALSE(fs::exists(p + ".tmp"));
    expect_same_tensor(sy::read_npy(p), t);

    // Preamble: magic, v1.0, length field consistent, aligned to 64, ends in '\n'.
    const std::string bytes = read_bytes(p);
    ASSERT_GE(bytes.size(), 10u);
    EXPECT_EQ(bytes.substr(0, 8), std::string("\x93NUMPY\x01\x00", 8));
    const size_t hlen = static_cast<unsigned char>(bytes[8]) | (static_cast<unsigned char>(bytes[9]) << 8);
    EXPECT_EQ((10 + hlen) % 64, 0u);
    EXPECT_EQ(bytes[10 + hlen - 1], '\n');
    EXPECT_EQ(bytes.size(), 10 + hlen + static_cast<size_t>(t.numel()) * 4);
  }
}

TEST_F(IoTest, NpyWriterMatchesNumpyBytesForShape2x3) {
  // np.save(f, np.arange(6, dtype=np.float32).reshape(2, 3)) writes exactly this preamble.
  std::string expected = std::string("\x93NUMPY\x01\x00", 8) + "v" + std::string(1, '\0');
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
  header.resize(117, ' ');
  header += '\n';
  expected += header;
  ASSERT_EQ(expected.size(), 128u);

  const std::string p = path("np23.npy");
  sy::write_npy(p, sy::Tensor(sy::Shape{2, 3}, std::vector<float>{0, 1, 2, 3, 4, 5}));
  const std::string bytes = read_bytes(p);
  ASSERT_EQ(bytes.size(), 128u + 24u);
  EXPECT_EQ(bytes.substr(0, 128), expected);
  EXPECT_EQ(bytes.substr(128), float_bytes({0, 1, 2, 3, 4, 5}));

  // And the numpy-written file reads back.
  const std::string q = path("from_numpy.npy");
  write_bytes(q, expected + float_bytes({0, 1, 2, 3, 4, 5}));
  const sy::Tensor t = sy::read_npy(q);
  EXPECT_EQ(t.shape(), (sy::Shape{2, 3}));
  EXPECT_EQ(t.values(), (std::vector<float>{0, 1, 2, 3, 4, 5}));
}

TEST_F(IoTest, NpyHeaderUsesPythonTupleSyntax) {
  const auto header_of = [&](const sy::Tensor& t) {
    const std::string p = path("h.npy");
    sy::write_npy(p, t);
    const std::string bytes = read_bytes(p);
    const size_t hlen = static_cast<unsigned char>(bytes[8]) | (static_cast<unsigned char>(bytes[9]) << 8);
    return bytes.substr(10, hlen);
  };
  EXPECT_TRUE(Contains(header_of(iota({5})), "'shape': (5,), }"));
  EXPECT_TRUE(Contains(header_of(sy::Tensor(sy::Shape{}, std::vector<float>{1})), "'shape': (), }"));
  EXPECT_TRUE(Contains(header_of(sy::Tensor(sy::Shape{0})), "'shape': (0,), }"));
  EXPECT_TRUE(Contains(header_of(iota({2, 3, 4})), "'shape': (2, 3, 4), }"));
  // 0-d (np.save of np.float32(1.5)): no growth-axis padding; 55-char dict padded to a 128-byte preamble.
  const std::string h0 = header_of(sy::Tensor(sy::Shape{}, std::vector<float>{1.5f}));
  EXPECT_EQ(h0.size(), 118u);
  EXPECT_EQ(h0.rfind("{'descr': '<f4', 'fortran_order': False, 'shape': (), }", 0), 0u);
}

TEST_F(IoTest, NpyReadsAnyKeyOrderAndWhitespace) {
  const std::vector<std::string> dicts = {
      "{'shape': (2, 3), 'fortran_order': False, 'descr': '<f4'}",
      "{ \"descr\" : \"<f4\" ,\n\t'shape':(2,3,),'fortran_order':False , }",
      "{'fortran_order': False, 'descr': '<f4', 'shape': (2L, 3L), }",  // Python 2 longs
      "{'descr':'<f4','fortran_order':False,'shape':( 2 , 3 )}",
  };
  for (const std::string& d : dicts) {
    SCOPED_TRACE(d);
    const std::string p = path("order.npy");
    write_bytes(p, npy_v1_bytes(d, float_bytes({1, 2, 3, 4, 5, 6})));
    const sy::Tensor t = sy::read_npy(p);
    EXPECT_EQ(t.shape(), (sy::Shape{2, 3}));
    EXPECT_EQ(t.values(), (std::vector<float>{1, 2, 3, 4, 5, 6}));
  }
}

TEST_F(IoTest, NpyReadsOneTupleAndZeroD) {
  const std::string p = path("shapes.npy");
  write_bytes(p, npy_v1_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }", float_bytes({7, 8, 9})));
  sy::Tensor t = sy::read_npy(p);
  EXPECT_EQ(t.shape(), (sy::Shape{3}));
  EXPECT_EQ(t.values(), (std::vector<float>{7, 8, 9}));

  write_bytes(p, npy_v1_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (), }", float_bytes({4.5f})));
  t = sy::read_npy(p);
  EXPECT_EQ(t.shape(), (sy::Shape{}));
  EXPECT_EQ(t.values(), (std::vector<float>{4.5f}));

  write_bytes(p, npy_v1_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (0, 5), }", ""));
  t = sy::read_npy(p);
  EXPECT_EQ(t.shape(), (sy::Shape{0, 5}));
  EXPECT_EQ(t.numel(), 0);
}

TEST_F(IoTest, NpyReadsVersions2And3) {
  for (const char major : {'\x02', '\x03'}) {
    SCOPED_TRACE(static_cast<int>(major));
    std::string h = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }";
    while ((12 + h.size() + 1) % 64) h.push_back(' ');
    h.push_back('\n');
    const std::string p = path("v2.npy");
    write_bytes(p, std::string("\x93NUMPY", 6) + major + '\0' + le32(static_cast<uint32_t>(h.size())) + h +
                       float_bytes({1.5f, -2.5f}));
    const sy::Tensor t = sy::read_npy(p);
    EXPECT_EQ(t.shape(), (sy::Shape{2}));
    EXPECT_EQ(t.values(), (std::vector<float>{1.5f, -2.5f}));
  }
}

TEST_F(IoTest, NpyConvertsFloat64) {
  const std::vector<double> v = {0.1, -1e30, 3.0, 1e-50, 1e300, -0.0};
  const std::string p = path("f8.npy");
  write_bytes(p, npy_v1_bytes("{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }", double_bytes(v)));
  const sy::Tensor t = sy::read_npy(p);
  EXPECT_EQ(t.shape(), (sy::Shape{2, 3}));
  for (size_t i = 0; i < v.size(); ++i) EXPECT_EQ(t[static_cast<int64_t>(i)], static_cast<float>(v[i])) << i;
  EXPECT_TRUE(std::signbit(t[5]));
  EXPECT_TRUE(std::isinf(t[4]));
}

TEST_F(IoTest, NpyConvertsLargeFloat64InChunks) {
  std::vector<double> v(200001);
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<double>(i) * 0.5;
  const std::string p = path("f8big.npy");
  write_bytes(p, npy_v1_bytes("{'descr': '<f8', 'fortran_order': False, 'shape': (200001,), }", double_bytes(v)));
  const sy::Tensor t = sy::read_npy(p);
  ASSERT_EQ(t.numel(), 200001);
  for (size_t i = 0; i < v.size(); i += 9973) EXPECT_EQ(t[static_cast<int64_t>(i)], static_cast<float>(v[i]));
  EXPECT_EQ(t[200000], 100000.0f);
}

// =========================================================================================
// npy: write errors

TEST_F(IoTest, NpyWriteErrors) {
  const std::string missing = path("nope/dir/x.npy");
  std::string msg = input_error([&] { sy::write_npy(missing, iota({2})); });
  EXPECT_TRUE(Contains(msg, missing));

  const std::string p = path("ghost.npy");
  msg = input_error([&] { sy::write_npy(p, sy::Tensor()); });
  EXPECT_TRUE(Contains(msg, p));
  EXPECT_FALSE(fs::exists(p));
  EXPECT_FALSE(fs::exists(p + ".tmp"));
}

TEST_F(IoTest, NpyOverwriteKeepsFileWhole) {
  const std::string p = path("o.npy");
  sy::write_npy(p, iota({100}));
  sy::write_npy(p, iota({2}, 5.0f));
  expect_same_tensor(sy::read_npy(p), iota({2}, 5.0f));
  EXPECT_FALSE(fs::exists(p + ".tmp"));
}

// =========================================================================================
// npy: corrupt files

TEST_F(IoTest, NpyMissingFile) {
  const std::string p = path("missing.npy");
  const std::string msg = input_error([&] { sy::read_npy(p); });
  EXPECT_TRUE(Contains(msg, p));
  EXPECT_TRUE(Contains(msg, "does not exist"));
}

TEST_F(IoTest, NpyPathIsADirectory) {
  const std::string p = path("d.npy");
  fs::create_directories(p);
  const std::string msg = input_error([&] { sy::read_npy(p); });
  EXPECT_TRUE(Contains(msg, p));
}

TEST_F(IoTest, NpyTooShortAndBadMagic) {
  const std::string p = path("short.npy");
  for (const std::string& bytes : {std::string(), std::string("\x93NUMPY", 6), std::string("\x93NUMPY\x01\x00\x00", 9)}) {
    write_bytes(p, bytes);
    const std::string msg = input_error([&] { sy::read_npy(p); });
    EXPECT_TRUE(Contains(msg, p));
    EXPECT_TRUE(Contains(msg, "too short"));
  }
  // Version 2.0 needs a 12-byte preamble.
  write_bytes(p, std::string("\x93NUMPY\x02\x00\x00\x00\x00", 11));
  EXPECT_TRUE(Contains(input_error([&] { sy::read_npy(p); }), "too short"));

  for (const std::string& bytes : {std::string("PK\x03\x04 this is a zip file"), std::string("\x93NUMPZ\x01\x00\x00\x00", 10),
                                  std::string(64, ' ')}) {
    write_bytes(p, bytes);
    const std::string msg = input_error([&] { sy::read_npy(p); });
    EXPECT_TRUE(Contains(msg, p));
    EXPECT_TRUE(Contains(msg, "magic"));
  }
}

TEST_F(IoTest, NpyUnsupportedVersion) {
  const std::string p = path("ver.npy");
  for (const std::string& ver : {std::string("\x04\x00", 2), std::string("\x01\x01", 2), std::string("\x00\x00", 2)}) {
    write_bytes(p, std::string("\x93NUMPY", 6) + ver + std::string(120, ' '));
    const std::string msg = input_error([&] { sy::read_npy(p); });
    EXPECT_TRUE(Contains(msg, p));
    EXPECT_TRUE(Contains(msg, "version"));
  }
}

TEST_F(IoTest, NpyHeaderLengthPastEnd) {
  const std::string p = path("hlen.npy");
  write_bytes(p, std::string("\x93NUMPY\x01\x00", 8) + le16(500) + "{'descr': '<f4'}");
  std::string msg = input_error([&] { sy::read_npy(p); });
  EXPECT_TRUE(Contains(msg, p));
  EXPECT_TRUE(Contains(msg, "header length 500"));

  write_bytes(p, std::string("\x93NUMPY\x02\x00", 8) + le32(0xffffffffu) + "{}");
  msg = input_error([&] { sy::read_npy(p); });
  EXPECT_TRUE(Contains(msg, p));
  EXPECT_TRUE(Contains(msg, "header length"));
}

TEST_F(IoTest, NpyMalformedHeaders) {
  const std::vector<std::string> dicts = {
      "",
      "{",
      "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), ",
      "{'descr': '<f4, 'fortran_order': False, 'shape': (2, 3)}",
      "{'descr': '<f4' 'fortran_order': False, 'shape': (2, 3)}",
      "{'descr' '<f4', 'fortran_order': False, 'shape': (2, 3)}",
      "{'descr': '<f4', 'fortran_order': false, 'shape': (2, 3)}",
      "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3}",
      "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)}}",
      "{'descr': '<f4', 'fortran_order': False, 'shape': (2.0, 3)}",
      "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 99999999999999999999)}",
      "{'descr': '<f4', 'fortran_order': False, 'shape': (0x2, 3)}",
      "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)} trailing",
      "{'descr': np.float32, 'fortran_order': False, 'shape': (2, 3)}",
      "{'descr': '<f4', 'fortran_order': False, 'shape': (,)}",
      std::string(5000, '(') + std::string(5000, ')'),
  };
  for (const std::string& d : dicts) {
    SCOPED_TRACE(d.substr(0, 80));
    const std::string p = path("malformed.npy");
    write_bytes(p, npy_v1_bytes(d, float_bytes({1, 2, 3, 4, 5, 6})));
    const std::string msg = input_error([&] { sy::read_npy(p); });
    EXPECT_TRUE(Contains(msg, p));
    EXPECT_TRUE(Contains(msg, "header"));
  }
}

struct NpyBadCase {
  std::string dict;
  std::string data;
  std::vector<std::string> expected;  // substrings of the message
};

TEST_F(IoTest, NpyBadHeaderContents) {
  const std::string six = float_bytes({1, 2, 3, 4, 5, 6});
  const std::vector<NpyBadCase> cases = {
      {"['descr', '<f4']", six, {"must be a dict"}},
      {"{'fortran_order': False, 'shape': (2, 3)}", six, {"missing key 'descr'"}},
      {"{'descr': '<f4', 'shape': (2, 3)}", six, {"missing key 'fortran_order'"}},
      {"{'descr': '<f4', 'fortran_order': False}", six, {"missing key 'shape'"}},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), 'extra': 1}", six, {"unexpected key 'extra'"}},
      {"{1: 2, 'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)}", six, {"key must be a string"}},
      {"{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3)}", six, {"'>f4'", "big-endian"}},
      {"{'descr': '>f8', 'fortran_order': False, 'shape': (2, 3)}", six, {"'>f8'", "big-endian"}},
      {"{'descr': '<i4', 'fortran_order': False, 'shape': (2, 3)}", six, {"'<i4'", "not supported", "'<f4'"}},
      {"{'descr': '|u1', 'fortran_order': False, 'shape': (2, 3)}", six, {"'|u1'", "not supported"}},
      {"{'descr': '|f4', 'fortran_order': False, 'shape': (2, 3)}", six, {"'|f4'", "not supported"}},
      {"{'descr': '<f2', 'fortran_order': False, 'shape': (2, 3)}", six, {"'<f2'", "not supported"}},
      {"{'descr': '<c8', 'fortran_order': False, 'shape': (2, 3)}", six, {"'<c8'", "not supported"}},
      {"{'descr': 'float32', 'fortran_order': False, 'shape': (2, 3)}", six, {"'float32'", "not supported"}},
      {"{'descr': [('x', '<f4')], 'fortran_order': False, 'shape': (2, 3)}", six, {"descr", "structured"}},
      {"{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3)}", six, {"fortran_order True"}},
      {"{'descr': '<f4', 'fortran_order': 0, 'shape': (2, 3)}", six, {"'fortran_order' must be True or False"}},
      {"{'descr': '<f4', 'fortran_order': None, 'shape': (2, 3)}", six, {"'fortran_order' must be True or False"}},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': [2, 3]}", six, {"'shape' must be a tuple", "a list"}},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (6)}", six, {"'shape' must be a tuple", "integer 6"}},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': ('2', 3)}", six, {"'shape' must be a tuple"}},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': ((2,), 3)}", six, {"'shape' must be a tuple"}},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, -3)}", six, {"negative dimension -3"}},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 4294967296)}", six, {"too large"}},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776,)}", six, {"needs 4398046511104 bytes"}},
  };
  for (const NpyBadCase& c : cases) {
    SCOPED_TRACE(c.dict);
    const std::string p = path("bad.npy");
    write_bytes(p, npy_v1_bytes(c.dict, c.data));
    const std::string msg = input_error([&] { sy::read_npy(p); });
    EXPECT_TRUE(Contains(msg, p));
    for (const std::string& e : c.expected) EXPECT_TRUE(Contains(msg, e));
  }
}

TEST_F(IoTest, NpyTruncatedData) {
  const std::string p = path("trunc.npy");
  sy::write_npy(p, iota({2, 3}));
  const std::string bytes = read_bytes(p);
  write_bytes(p, bytes.substr(0, bytes.size() - 5));
  const std::string msg = input_error([&] { sy::read_npy(p); });
  EXPECT_TRUE(Contains(msg, p));
  EXPECT_TRUE(Contains(msg, "19 bytes"));  // found
  EXPECT_TRUE(Contains(msg, "24 bytes"));  // expected
  EXPECT_TRUE(Contains(msg, "truncated"));

  // Preamble only, no data at all.
  write_bytes(p, bytes.substr(0, 128));
  EXPECT_TRUE(Contains(input_error([&] { sy::read_npy(p); }), "data is 0 bytes"));

  // '<f8' data cut to the size '<f4' would need.
  write_bytes(p, npy_v1_bytes("{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }",
                              float_bytes({1, 2, 3, 4, 5, 6})));
  const std::string msg8 = input_error([&] { sy::read_npy(p); });
  EXPECT_TRUE(Contains(msg8, "48 bytes"));
  EXPECT_TRUE(Contains(msg8, "24 bytes"));
}

TEST_F(IoTest, NpyTrailingDataIsRejected) {
  const std::string p = path("trail.npy");
  write_bytes(p, npy_v1_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", float_bytes({1, 2, 3})));
  const std::string msg = input_error([&] { sy::read_npy(p); });
  EXPECT_TRUE(Contains(msg, p));
  EXPECT_TRUE(Contains(msg, "12 bytes"));
  EXPECT_TRUE(Contains(msg, "8 bytes"));
}

TEST_F(IoTest, NpyNonAsciiHeaderBytesAreReported) {
  const std::string p = path("bin.npy");
  write_bytes(p, npy_v1_bytes(std::string("{'descr': '<f4', \x01\xff: 1}"), ""));
  const std::string msg = input_error([&] { sy::read_npy(p); });
  EXPECT_TRUE(Contains(msg, p));
  EXPECT_TRUE(Contains(msg, "byte 1"));
}
