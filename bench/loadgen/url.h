// The load generator's targets: http://127.0.0.1:PORT/PATH only (benchmarks never leave the
// machine), parsed apart from the I/O so the unit test can check what is accepted.
#pragma once

#include <optional>
#include <string>

namespace tollgate::bench {

struct LocalUrl {
  std::string host;    // 127.0.0.1 or localhost
  std::string port;    // digits, 1..65535
  std::string target;  // the path (and query), "/" when the URL has none
};

// nullopt with *error set for anything but http://{127.0.0.1|localhost}:PORT[/PATH].
std::optional<LocalUrl> ParseLocalUrl(const std::string& url, std::string* error);

}  // namespace tollgate::bench
