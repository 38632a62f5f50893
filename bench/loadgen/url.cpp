#include "url.h"

namespace tollgate::bench {

std::optional<LocalUrl> ParseLocalUrl(const std::string& url, std::string* error) {
  const std::string scheme = "http://";
  if (!url.starts_with(scheme)) {
    *error = "--url must be http://";
    return std::nullopt;
  }
  const std::string rest = url.substr(scheme.size());
  const size_t slash = rest.find('/');
  const std::string hostport = rest.substr(0, slash);
  LocalUrl out;
  out.target = slash == std::string::npos ? "/" : rest.substr(slash);
  const size_t colon = hostport.rfind(':');
  if (colon == std::string::npos) {
    *error = "--url needs a port";
    return std::nullopt;
  }
  out.host = hostport.substr(0, colon);
  out.port = hostport.substr(colon + 1);
  if (out.host != "127.0.0.1" && out.host != "localhost") {
    *error = "only 127.0.0.1 is benchmarked";
    return std::nullopt;
  }
  const bool digits = !out.port.empty() && out.port.size() <= 5 &&
                      out.port.find_first_not_of("0123456789") == std::string::npos;
  if (!digits || std::stoi(out.port) < 1 || std::stoi(out.port) > 65535) {
    *error = "--url has a bad port";
    return std::nullopt;
  }
  return out;
}

}  // namespace tollgate::bench
