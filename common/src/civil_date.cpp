#include "tollgate/civil_date.h"

#include <cstdio>

namespace tollgate {
namespace {

using std::chrono::days;
using std::chrono::sys_days;
using std::chrono::year_month_day;

// Digits only, no sign or space: what strtol and sscanf would let through is refused.
std::optional<int> Digits(std::string_view text) {
  int value = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return std::nullopt;
    value = value * 10 + (c - '0');
  }
  return value;
}

// Both formatters print the year with at least four digits (year 0 is "0000").
std::string Format(const year_month_day& ymd, bool with_day) {
  char text[32];
  if (with_day)
    std::snprintf(text, sizeof text, "%04d-%02u-%02u", static_cast<int>(ymd.year()),
                  static_cast<unsigned>(ymd.month()), static_cast<unsigned>(ymd.day()));
  else
    std::snprintf(text, sizeof text, "%04d-%02u", static_cast<int>(ymd.year()),
                  static_cast<unsigned>(ymd.month()));
  return text;
}

std::string FormatTime(std::chrono::sys_time<std::chrono::milliseconds> t, bool with_millis) {
  const sys_days day = std::chrono::floor<days>(t);
  const year_month_day ymd(day);
  const std::chrono::hh_mm_ss time(t - day);
  char text[64];
  int n = std::snprintf(text, sizeof text, "%sT%02d:%02d:%02d", Format(ymd, true).c_str(),
                        static_cast<int>(time.hours().count()),
                        static_cast<int>(time.minutes().count()),
                        static_cast<int>(time.seconds().count()));
  if (with_millis && n > 0 && static_cast<size_t>(n) < sizeof text)
    std::snprintf(text + n, sizeof text - n, ".%03d", static_cast<int>(time.subseconds().count()));
  return std::string(text) + "Z";
}

}  // namespace

std::optional<sys_days> ParseDay(std::string_view text) {
  if (text.size() != 10 || text[4] != '-' || text[7] != '-') return std::nullopt;
  auto y = Digits(text.substr(0, 4));
  auto m = Digits(text.substr(5, 2));
  auto d = Digits(text.substr(8, 2));
  if (!y || !m || !d) return std::nullopt;
  const year_month_day ymd{std::chrono::year(*y), std::chrono::month(static_cast<unsigned>(*m)),
                           std::chrono::day(static_cast<unsigned>(*d))};
  if (!ymd.ok()) return std::nullopt;
  return sys_days(ymd);
}

std::string FormatDay(sys_days day) { return Format(year_month_day(day), true); }

std::string FormatMonth(sys_days day) { return Format(year_month_day(day), false); }

sys_days DayOf(std::chrono::system_clock::time_point t) { return std::chrono::floor<days>(t); }

sys_days MonthStart(sys_days day) {
  const year_month_day ymd(day);
  return sys_days(ymd.year() / ymd.month() / 1);
}

sys_days NextMonthStart(sys_days day) {
  const year_month_day ymd(day);
  return sys_days(ymd.year() / ymd.month() / 1 + std::chrono::months(1));
}

int64_t DayNumber(sys_days day) { return day.time_since_epoch().count(); }

sys_days DayFromNumber(int64_t days_since_epoch) { return sys_days(days(days_since_epoch)); }

sys_days DayOfUnixMs(int64_t unix_ms) {
  return std::chrono::floor<days>(
      std::chrono::sys_time<std::chrono::milliseconds>(std::chrono::milliseconds(unix_ms)));
}

std::string FormatTimestamp(std::chrono::sys_time<std::chrono::milliseconds> t) {
  return FormatTime(t, true);
}

std::string FormatTimestamp(std::chrono::sys_seconds t) { return FormatTime(t, false); }

}  // namespace tollgate
