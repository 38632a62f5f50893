#include "src/client_ip.h"

#include <algorithm>
#include <cctype>
#include <optional>

#include "tollgate/config.h"

namespace tollgate::edge {
namespace {

std::string_view TrimOws(std::string_view text) {
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) text.remove_prefix(1);
  while (!text.empty() && (text.back() == ' ' || text.back() == '\t')) text.remove_suffix(1);
  return text;
}

bool IEquals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

// Splits `text` at each `sep` outside a quoted-string (RFC 9110 §5.6.4, with \-escapes), trimmed;
// empty elements are dropped, as the list rule allows. Appends to `out`.
void SplitOutsideQuotes(std::string_view text, char sep, std::vector<std::string_view>& out) {
  bool quoted = false;
  size_t start = 0;
  for (size_t i = 0; i <= text.size(); ++i) {
    if (i < text.size()) {
      char c = text[i];
      if (quoted && c == '\\' && i + 1 < text.size()) {
        ++i;  // the escaped character, whatever it is
        continue;
      }
      if (c == '"') quoted = !quoted;
      if (quoted || c != sep) continue;
    }
    auto element = TrimOws(text.substr(start, i - start));
    if (!element.empty()) out.push_back(element);
    start = i + 1;
  }
}

// A Forwarded parameter value: a token, or a quoted-string unquoted; nullopt when malformed.
std::optional<std::string> Unquote(std::string_view value) {
  if (value.empty() || value.front() != '"') {
    if (value.find('"') != std::string_view::npos) return std::nullopt;
    return std::string(value);
  }
  if (value.size() < 2 || value.back() != '"') return std::nullopt;
  std::string out;
  for (size_t i = 1; i + 1 < value.size(); ++i) {
    char c = value[i];
    if (c == '\\') {
      if (i + 2 >= value.size()) return std::nullopt;  // escapes the closing quote
      c = value[++i];
    } else if (c == '"') {
      return std::nullopt;
    }
    out += c;
  }
  return out;
}

// The node of one Forwarded element ("for=192.0.2.60;proto=http;by=203.0.113.43").
std::optional<auth::IpAddress> ForwardedFor(std::string_view element) {
  std::vector<std::string_view> pairs;
  SplitOutsideQuotes(element, ';', pairs);
  std::optional<std::string> node;
  for (auto pair : pairs) {
    auto eq = pair.find('=');
    if (eq == std::string_view::npos) return std::nullopt;
    if (!IEquals(TrimOws(pair.substr(0, eq)), "for")) continue;
    if (node) return std::nullopt;  // a parameter may occur once per element
    node = Unquote(TrimOws(pair.substr(eq + 1)));
    if (!node) return std::nullopt;
  }
  if (!node) return std::nullopt;
  return ParseNodeAddress(*node);
}

// A port after an address: digits, or an obfuscated port ("_abc", RFC 7239 §6.3).
bool ValidPort(std::string_view port) {
  if (port.empty()) return false;
  if (port.front() == '_') {
    return std::all_of(port.begin() + 1, port.end(), [](char c) {
      return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-';
    });
  }
  return port.size() <= 5 &&
         std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; });
}

}  // namespace

TrustedProxies TrustedProxies::Parse(const std::vector<std::string>& cidrs, std::string_view key) {
  TrustedProxies out;
  for (const auto& text : cidrs) {
    std::string error;
    auto cidr = auth::ParseCidr(text, &error);
    if (!cidr)
      throw ConfigError("invalid value for " + std::string(key) + ": " + error +
                        " (expected CIDRs such as 10.0.0.0/8 or 2001:db8::/32)");
    out.networks_.push_back(*cidr);
  }
  return out;
}

bool TrustedProxies::Contains(const auth::IpAddress& ip) const {
  return std::any_of(networks_.begin(), networks_.end(),
                     [&](const auth::Cidr& c) { return auth::Contains(c, ip); });
}

std::optional<auth::IpAddress> ParseNodeAddress(std::string_view text) {
  text = TrimOws(text);
  std::string_view host = text;
  if (!text.empty() && text.front() == '[') {
    auto close = text.find(']');
    if (close == std::string_view::npos) return std::nullopt;
    host = text.substr(1, close - 1);
    auto rest = text.substr(close + 1);
    if (!rest.empty() && (rest.front() != ':' || !ValidPort(rest.substr(1)))) return std::nullopt;
    if (host.find(':') == std::string_view::npos) return std::nullopt;  // brackets: IPv6 only
  } else if (auto colon = text.find(':'); colon != std::string_view::npos &&
                                          text.find(':', colon + 1) == std::string_view::npos) {
    // One colon: IPv4 with a port. (More: a bare IPv6 address, which cannot carry one.)
    if (!ValidPort(text.substr(colon + 1))) return std::nullopt;
    host = text.substr(0, colon);
  }
  if (host.find('%') != std::string_view::npos) return std::nullopt;  // no zones from the wire
  return auth::ParseIp(host);
}

std::string ClientIp(const std::string& peer, const HttpHeaders& headers,
                     const TrustedProxies& trusted) {
  if (trusted.empty()) return peer;
  auto peer_ip = auth::ParseIp(peer);
  if (!peer_ip || !trusted.Contains(*peer_ip)) return peer;

  const bool forwarded = std::any_of(headers.begin(), headers.end(),
                                     [](const auto& h) { return h.first == "forwarded"; });
  const std::string_view name = forwarded ? "forwarded" : "x-forwarded-for";
  std::vector<std::string_view> entries;
  for (const auto& [k, v] : headers)
    if (k == name) SplitOutsideQuotes(v, ',', entries);

  std::string client = peer;
  for (size_t i = entries.size(); i-- > 0;) {
    auto ip = forwarded ? ForwardedFor(entries[i]) : ParseNodeAddress(entries[i]);
    if (!ip) break;
    client = auth::FormatIp(*ip);
    if (!trusted.Contains(*ip)) break;
  }
  return client;
}

}  // namespace tollgate::edge
