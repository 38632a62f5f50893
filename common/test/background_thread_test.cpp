#include "tollgate/background_thread.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>

namespace tollgate {
namespace {

using namespace std::chrono_literals;
using Steady = std::chrono::steady_clock;

TEST(BackgroundThreadTest, TicksEveryIntervalUntilStopped) {
  std::atomic<int> ticks{0};
  BackgroundThread thread;
  thread.Every(10ms, [&] { ++ticks; });
  for (int i = 0; i < 500 && ticks < 3; ++i) std::this_thread::sleep_for(5ms);
  EXPECT_GE(ticks, 3);
  thread.Stop();
  EXPECT_FALSE(thread.running());
  const int after = ticks;
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(ticks, after) << "no tick after Stop()";
}

TEST(BackgroundThreadTest, StopCutsALongSleepShort) {
  std::atomic<int> ticks{0};
  BackgroundThread thread;
  thread.Every(std::chrono::hours(1), [&] { ++ticks; });
  std::this_thread::sleep_for(20ms);  // asleep by now (or about to be: Stop is not missed)
  auto t0 = Steady::now();
  thread.Stop();
  EXPECT_LT(Steady::now() - t0, 1s);
  EXPECT_EQ(ticks, 0);
}

TEST(BackgroundThreadTest, AnImmediateStopIsNotMissed) {
  for (int i = 0; i < 50; ++i) {
    BackgroundThread thread;
    thread.Every(std::chrono::hours(1), [] {});
    auto t0 = Steady::now();
    thread.Stop();
    ASSERT_LT(Steady::now() - t0, 1s) << "iteration " << i;
  }
}

TEST(BackgroundThreadTest, WakeRunsTheNextTickEarlyWithoutStopping) {
  std::atomic<int> ticks{0};
  BackgroundThread thread;
  thread.Every(std::chrono::hours(1), [&] { ++ticks; });
  thread.Wake();
  for (int i = 0; i < 200 && ticks < 1; ++i) std::this_thread::sleep_for(5ms);
  EXPECT_EQ(ticks, 1);
  EXPECT_TRUE(thread.running());
}

TEST(BackgroundThreadTest, DestructionStopsAndJoins) {
  std::atomic<bool> returned{false};
  {
    BackgroundThread thread;
    thread.Start([&](std::stop_token stop) {
      while (thread.SleepFor(stop, std::chrono::hours(1))) {
      }
      returned = true;
    });
  }
  EXPECT_TRUE(returned);
}

TEST(BackgroundThreadTest, StartAgainAfterStop) {
  std::atomic<int> ticks{0};
  BackgroundThread thread;
  thread.Every(std::chrono::hours(1), [&] { ++ticks; });
  thread.Stop();
  thread.Every(5ms, [&] { ++ticks; });
  for (int i = 0; i < 200 && ticks < 1; ++i) std::this_thread::sleep_for(5ms);
  EXPECT_GE(ticks, 1);
}

}  // namespace
}  // namespace tollgate
