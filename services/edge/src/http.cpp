#include "src/http.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <random>

namespace tollgate::edge {

std::string_view HttpRequest::Header(std::string_view name) const {
  for (const auto& [k, v] : headers)
    if (k == name) return v;
  return {};
}

std::string AcceptOrMakeRequestId(std::string_view client_value) {
  bool plain = !client_value.empty() && client_value.size() <= 128;
  for (char c : client_value) {
    plain = plain && (std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' ||
                      c == '.' || c == ':');
  }
  if (plain) return std::string(client_value);
  thread_local std::mt19937_64 rng{std::random_device{}()};
  char id[4 + 32 + 1];
  std::snprintf(id, sizeof id, "req_%016llx%016llx", static_cast<unsigned long long>(rng()),
                static_cast<unsigned long long>(rng()));
  return id;
}

std::string FormatMillis(std::chrono::nanoseconds duration) {
  // Tenths of a millisecond, rounded, in integers: printf's floating-point path was measurable
  // on every answer.
  const int64_t tenths = std::max<int64_t>(0, (duration.count() + 50'000) / 100'000);
  std::string text = std::to_string(tenths / 10);
  text += '.';
  text += static_cast<char>('0' + tenths % 10);
  return text;
}

RequestHandler::ErrorReply RequestHandler::ServerError(std::string_view method,
                                                       std::string_view path, ErrorCode code,
                                                       std::string_view message) const {
  (void)method;
  (void)path;
  return {Describe(code).http, OpenAiErrorBody(code, message)};
}

}  // namespace tollgate::edge
