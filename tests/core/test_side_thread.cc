// SideThread: runs each task on one long-lived thread, wait() returns after it, rethrows its error
// and leaves the thread usable.
#include <gtest/gtest.h>

#include <stdexcept>
#include <thread>

#include "switchyard/core/side_thread.h"

namespace sy {
namespace {

TEST(SideThread, RunsEachTaskOnOneOtherThreadAndRethrowsItsError) {
  SideThread side;
  std::thread::id first, second;
  side.start([&] { first = std::this_thread::get_id(); });
  side.wait();
  side.start([&] { second = std::this_thread::get_id(); });
  side.wait();
  EXPECT_NE(first, std::this_thread::get_id());
  EXPECT_EQ(first, second) << "a new thread per task";
  side.start([] { throw std::runtime_error("shared expert failed"); });
  EXPECT_THROW(side.wait(), std::runtime_error);
  int ran = 0;
  side.start([&] { ran = 1; });
  side.wait();
  EXPECT_EQ(ran, 1) << "the thread stops after a task threw";
  side.wait();  // nothing started: returns at once
}

}  // namespace
}  // namespace sy
