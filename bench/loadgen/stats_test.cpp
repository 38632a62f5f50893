#include "stats.h"

#include <gtest/gtest.h>

namespace tollgate::bench {
namespace {

TEST(OpenLoopSchedule, SpacesRequestsEvenlyWhateverTheAnswers) {
  OpenLoopSchedule s(4, 2.5);  // 4/s for 2.5 s: 10 requests, 250 ms apart
  ASSERT_EQ(s.count(), 10u);
  EXPECT_EQ(s.Offset(0), std::chrono::nanoseconds(0));
  EXPECT_EQ(s.Offset(1), std::chrono::milliseconds(250));
  EXPECT_EQ(s.Offset(9), std::chrono::milliseconds(2250));
  OpenLoopSchedule fractional(3, 1);
  EXPECT_EQ(fractional.Offset(1), std::chrono::nanoseconds(333333333));
  EXPECT_EQ(fractional.Offset(2), std::chrono::nanoseconds(666666667));
}

TEST(OpenLoopSchedule, NothingDueWithoutRateOrTime) {
  EXPECT_EQ(OpenLoopSchedule(0, 10).count(), 0u);
  EXPECT_EQ(OpenLoopSchedule(100, 0).count(), 0u);
}

TEST(Summarize, NearestRankPercentiles) {
  std::vector<double> samples;
  for (int i = 100; i >= 1; --i) samples.push_back(i);  // any order
  Summary s = Summarize(samples);
  EXPECT_EQ(s.count, 100u);
  EXPECT_DOUBLE_EQ(s.p50, 50);
  EXPECT_DOUBLE_EQ(s.p90, 90);
  EXPECT_DOUBLE_EQ(s.p99, 99);
  EXPECT_DOUBLE_EQ(s.max, 100);
  EXPECT_DOUBLE_EQ(s.mean, 50.5);
}

TEST(Summarize, OneSlowRequestShowsInTheTail) {
  // 985 fast answers and 15 that waited a second: p99 must see the slow ones, p90 must not.
  std::vector<double> samples(985, 1.0);
  samples.insert(samples.end(), 15, 1000.0);
  Summary s = Summarize(samples);
  EXPECT_DOUBLE_EQ(s.p50, 1.0);
  EXPECT_DOUBLE_EQ(s.p90, 1.0);
  EXPECT_DOUBLE_EQ(s.p99, 1000.0);  // rank 990 of 1000
  EXPECT_DOUBLE_EQ(Percentile({1, 1000}, 99), 1000);
  EXPECT_DOUBLE_EQ(s.max, 1000);
}

TEST(Summarize, EmptyAndSingle) {
  EXPECT_EQ(Summarize({}).count, 0u);
  EXPECT_DOUBLE_EQ(Summarize({}).p99, 0);
  Summary one = Summarize({7});
  EXPECT_DOUBLE_EQ(one.p50, 7);
  EXPECT_DOUBLE_EQ(one.p99, 7);
  EXPECT_EQ(ToJson(one),
            R"({"count":1,"mean":7.000,"p50":7.000,"p90":7.000,"p99":7.000,"max":7.000})");
}

}  // namespace
}  // namespace tollgate::bench
