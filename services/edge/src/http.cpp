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
  double ms = std::max<double>(0, static_cast<double>(duration.count()) / 1e6);
  char text[32];
  std::snprintf(text, sizeof text, "%.1f", ms);
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
