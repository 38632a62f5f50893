#include "tollgate/civil_date.h"

#include <gtest/gtest.h>

namespace tollgate {
namespace {

using std::chrono::days;
using std::chrono::hours;
using std::chrono::milliseconds;
using std::chrono::minutes;
using std::chrono::seconds;
using std::chrono::sys_days;
using namespace std::chrono_literals;

sys_days Day(int y, unsigned m, unsigned d) {
  return sys_days(std::chrono::year(y) / std::chrono::month(m) / std::chrono::day(d));
}

TEST(CivilDateTest, ParsesOnlyRealDaysWrittenExactly) {
  EXPECT_EQ(ParseDay("2025-11-22"), Day(2025, 11, 22));
  EXPECT_EQ(ParseDay("2024-02-29"), Day(2024, 2, 29));
  EXPECT_EQ(ParseDay("1970-01-01"), sys_days{});
  EXPECT_EQ(ParseDay("0000-01-01"), Day(0, 1, 1));
  for (const char* bad : {"2025-02-29", "2025-13-01", "2025-00-10", "2025-04-31", "2025-1-01",
                          "2025-01-1", "yesterday", "", "2025-01-01 ", " 2025-01-01", "+025-01-01",
                          "2025/01/01", "2025-01-0a", "-025-01-01", "2025-+1-01"})
    EXPECT_FALSE(ParseDay(bad).has_value()) << bad;
}

TEST(CivilDateTest, FormatsDaysAndMonths) {
  EXPECT_EQ(FormatDay(sys_days{}), "1970-01-01");
  EXPECT_EQ(FormatDay(Day(2025, 11, 22)), "2025-11-22");
  EXPECT_EQ(FormatDay(Day(987, 3, 4)), "0987-03-04");
  EXPECT_EQ(FormatMonth(Day(2025, 11, 22)), "2025-11");
  EXPECT_EQ(FormatMonth(Day(2026, 1, 31)), "2026-01");
  for (const char* text : {"2024-02-29", "1999-12-31", "2000-01-01", "2038-01-19"})
    EXPECT_EQ(FormatDay(*ParseDay(text)), text);
}

TEST(CivilDateTest, DaysAreUtcAndFloorBeforeTheEpoch) {
  EXPECT_EQ(DayNumber(DayOfUnixMs(0)), 0);
  EXPECT_EQ(DayNumber(DayOfUnixMs(86'399'999)), 0);
  EXPECT_EQ(DayNumber(DayOfUnixMs(86'400'000)), 1);
  EXPECT_EQ(DayNumber(DayOfUnixMs(-1)), -1);
  EXPECT_EQ(DayNumber(Day(2025, 11, 22)), 20'414);
  EXPECT_EQ(DayNumber(Day(2024, 2, 29)), 19'782);
  EXPECT_EQ(DayFromNumber(20'414), Day(2025, 11, 22));
  EXPECT_EQ(FormatDay(DayFromNumber(0)), "1970-01-01");
  const auto t = sys_days(Day(2026, 3, 1)) + 23h + 59min + 59s;
  EXPECT_EQ(DayOf(t), Day(2026, 3, 1));
  EXPECT_EQ(DayOf(t + 1s), Day(2026, 3, 2));
}

TEST(CivilDateTest, MonthBoundaries) {
  EXPECT_EQ(MonthStart(Day(2025, 11, 22)), Day(2025, 11, 1));
  EXPECT_EQ(MonthStart(Day(2025, 11, 1)), Day(2025, 11, 1));
  EXPECT_EQ(NextMonthStart(Day(2025, 11, 22)), Day(2025, 12, 1));
  EXPECT_EQ(NextMonthStart(Day(2025, 12, 31)), Day(2026, 1, 1)) << "December rolls the year";
  EXPECT_EQ(NextMonthStart(Day(2024, 1, 31)), Day(2024, 2, 1));
  EXPECT_EQ(NextMonthStart(Day(2024, 2, 29)), Day(2024, 3, 1));
}

TEST(CivilDateTest, FormatsTimestamps) {
  const auto t = sys_days(Day(2026, 12, 3)) + 5h + 10min + 55s;
  EXPECT_EQ(FormatTimestamp(std::chrono::sys_seconds(t)), "2026-12-03T05:10:55Z");
  EXPECT_EQ(FormatTimestamp(t + 123ms), "2026-12-03T05:10:55.123Z");
  EXPECT_EQ(FormatTimestamp(std::chrono::sys_time<milliseconds>(t)), "2026-12-03T05:10:55.000Z");
  EXPECT_EQ(FormatTimestamp(std::chrono::sys_time<milliseconds>(milliseconds(7))),
            "1970-01-01T00:00:00.007Z");
  // Before the epoch the fields still count forward from the day's start.
  EXPECT_EQ(FormatTimestamp(std::chrono::sys_time<milliseconds>(milliseconds(-1))),
            "1969-12-31T23:59:59.999Z");
}

}  // namespace
}  // namespace tollgate
