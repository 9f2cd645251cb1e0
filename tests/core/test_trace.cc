// Step timelines (core/trace.h): spans land in Chrome trace-event JSON with their layer and
// stage, and merge_files puts several processes' files on one clock.
#include <gtest/gtest.h>

#include <fstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "switchyard/core/error.h"
#include "switchyard/core/trace.h"

namespace sy {
namespace {

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

// Rewrites a trace file's clock at its start (as if the process had started `us` later).
void shift_start(const std::string& path, int64_t us) {
  nlohmann::json doc = read_json(path);
  doc["switchyard"]["system_us_at_ts0"] = doc["switchyard"]["system_us_at_ts0"].get<int64_t>() + us;
  std::ofstream(path) << doc.dump();
}

TEST(Trace, SpansBecomeTraceEventsAndMergeOnOneClock) {
  const std::string dir = ::testing::TempDir();
  const std::string a = dir + "/trace_a.json", b = dir + "/trace_b.json", merged = dir + "/trace_merged.json";
  {
    trace::Span off("before start");  // not recording yet: dropped
  }
  trace::start(a, "client 1");
  {
    trace::Span outer("exchange", "layers.0.stages.1");
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    trace::Span inner("combine");
  }
  trace::flush();
  const nlohmann::json doc = read_json(a);
  std::vector<std::string> names;
  int64_t exchange_dur = 0;
  for (const auto& e : doc["traceEvents"]) {
    names.push_back(e["name"]);
    if (e["name"] == "exchange") {
      exchange_dur = e["dur"];
      EXPECT_EQ(e["args"]["where"], "layers.0.stages.1");
      EXPECT_EQ(e["ph"], "X");
    }
  }
  EXPECT_EQ(names, (std::vector<std::string>{"process_name", "combine", "exchange"}));  // inner ends first
  EXPECT_GE(exchange_dur, 2000);
  EXPECT_EQ(doc["traceEvents"][0]["args"]["name"], "client 1");

  std::ofstream(b) << doc.dump();
  shift_start(b, 5'000'000);  // process b started 5 s later
  EXPECT_EQ(trace::merge_files({b, a}, merged), 4u);
  const nlohmann::json m = read_json(merged);
  std::map<int, int64_t> exchange_ts;
  for (const auto& e : m["traceEvents"])
    if (e["name"] == "exchange") exchange_ts[e["pid"].get<int>()] = e["ts"];
  ASSERT_EQ(exchange_ts.size(), 2u);
  EXPECT_EQ(exchange_ts.at(1) - exchange_ts.at(2), 5'000'000) << "b's spans move by its later start";
}

TEST(Trace, MergeNamesAFileThatIsNoTrace) {
  const std::string bad = ::testing::TempDir() + "/not_a_trace.json";
  std::ofstream(bad) << "{\"traceEvents\": []}";
  try {
    trace::merge_files({bad}, ::testing::TempDir() + "/out.json");
    FAIL() << "merged a file without the clock";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::input);
    EXPECT_NE(std::string(e.what()).find(bad), std::string::npos) << e.what();
  }
  EXPECT_THROW(trace::merge_files({::testing::TempDir() + "/missing.json"}, ::testing::TempDir() + "/out.json"), Error);
}

}  // namespace
}  // namespace sy
