// UTC calendar dates and timestamps on std::chrono's civil calendar, written the ISO 8601
// way ("2026-12-03", "2026-12", "2026-12-03T05:10:55.123Z"). The one calendar helper: a
// service that needs a day, a month or a printed time uses these.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace tollgate {

// "YYYY-MM-DD" (exactly: four-digit year, two-digit month and day) naming a real calendar
// day; nullopt otherwise ("2025-02-29", "2025-1-01", "yesterday").
std::optional<std::chrono::sys_days> ParseDay(std::string_view text);
// "YYYY-MM-DD".
std::string FormatDay(std::chrono::sys_days day);
// "YYYY-MM" of the month `day` falls in.
std::string FormatMonth(std::chrono::sys_days day);

// The UTC day `t` falls in.
std::chrono::sys_days DayOf(std::chrono::system_clock::time_point t);
// The first day of `day`'s month, and of the month after.
std::chrono::sys_days MonthStart(std::chrono::sys_days day);
std::chrono::sys_days NextMonthStart(std::chrono::sys_days day);

// Days since 1970-01-01: how a day is stored and sent as an integer (billing's ledger).
int64_t DayNumber(std::chrono::sys_days day);
std::chrono::sys_days DayFromNumber(int64_t days_since_epoch);
// The UTC day of a time given in Unix milliseconds.
std::chrono::sys_days DayOfUnixMs(int64_t unix_ms);

// "YYYY-MM-DDTHH:MM:SS.mmmZ" for a millisecond time, "YYYY-MM-DDTHH:MM:SSZ" for a second one.
// A finer time (system_clock::now()) must say which it wants: floor<milliseconds>(t).
std::string FormatTimestamp(std::chrono::sys_time<std::chrono::milliseconds> t);
std::string FormatTimestamp(std::chrono::sys_seconds t);

}  // namespace tollgate
