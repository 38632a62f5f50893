#include "tollgate/redact.h"

#include <algorithm>
#include <array>
#include <cctype>

namespace tollgate {
namespace {

constexpr std::string_view kMask = "***";

bool TokenChar(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '_' || c == '-';
}

bool StartsWith(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// How many characters of `token` to keep before the mask; npos: not a credential.
size_t CredentialPrefix(std::string_view t) {
  const size_t n = t.size();
  if (StartsWith(t, "sk-") && n >= 20) {
    for (std::string_view p : {"sk-tg-", "sk-ant-", "sk-proj-", "sk-svcacct-"})
      if (StartsWith(t, p)) return p.size();
    return 3;
  }
  if ((StartsWith(t, "AKIA") || StartsWith(t, "ASIA")) && n == 20 &&
      std::all_of(t.begin(), t.end(), [](char c) {
        return std::isupper(static_cast<unsigned char>(c)) ||
               std::isdigit(static_cast<unsigned char>(c));
      }))
    return 4;
  for (std::string_view p : {"ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"})
    if (StartsWith(t, p) && n >= 30) return p.size();
  if (StartsWith(t, "glpat-") && n >= 20) return 6;
  for (std::string_view p : {"xoxb-", "xoxp-", "xoxa-", "xoxs-", "xoxr-"})
    if (StartsWith(t, p) && n >= 15) return p.size();
  if (StartsWith(t, "AIza") && n >= 35) return 4;
  return std::string_view::npos;
}

// Names whose value is a secret when followed by ':' or '=' ("db_password=..." too).
bool SecretName(std::string_view token) {
  static constexpr std::array<std::string_view, 10> kNames = {
      "password", "passwd",       "secret",        "api_key",     "apikey",
      "api-key",  "access_token", "refresh_token", "private_key", "client_secret"};
  if (token.size() < 6) return false;
  const std::string lower = Lower(token);
  return std::any_of(kNames.begin(), kNames.end(),
                     [&](std::string_view name) { return lower.ends_with(name); });
}

bool ValueEnd(char c) {
  return std::isspace(static_cast<unsigned char>(c)) || c == '"' || c == '\'' || c == '\\' ||
         c == ',' || c == '&' || c == ';' || c == '}' || c == ')' || c == ']' || c == '{' ||
         c == '[';
}

// "-----BEGIN ... PRIVATE KEY-----" to its END line (or the end of the text).
std::string RedactPem(std::string s) {
  constexpr std::string_view kBegin = "-----BEGIN ";
  constexpr std::string_view kEnd = "-----END ";
  size_t from = 0;
  while ((from = s.find(kBegin, from)) != std::string::npos) {
    const size_t header_end = s.find("-----", from + kBegin.size());
    if (header_end == std::string::npos) break;
    std::string_view header(s.data() + from, header_end - from);
    if (header.find("PRIVATE KEY") == std::string_view::npos) {
      from = header_end;
      continue;
    }
    size_t stop = s.size();
    if (size_t end = s.find(kEnd, header_end); end != std::string::npos) {
      size_t close = s.find("-----", end + kEnd.size());
      stop = close == std::string::npos ? s.size() : close + 5;
    }
    constexpr std::string_view kRedacted =
        "-----BEGIN PRIVATE KEY-----***-----END PRIVATE KEY-----";
    s.replace(from, stop - from, kRedacted);
    from += kRedacted.size();
  }
  return s;
}

}  // namespace

std::string RedactSecrets(std::string_view text, const std::vector<std::string_view>& exact) {
  std::string s(text);
  for (std::string_view e : exact) {
    if (e.size() < 8) continue;  // too short to be a credential; would mask ordinary words
    for (size_t at = s.find(e); at != std::string::npos; at = s.find(e, at + kMask.size()))
      s.replace(at, e.size(), kMask);
  }
  s = RedactPem(std::move(s));

  std::string out;
  out.reserve(s.size());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    // A JSON escape ("\n", "\"") separates tokens: its letter is not part of the next one.
    if (s[i] == '\\' && i + 1 < n) {
      out.append(s, i, 2);
      i += 2;
      continue;
    }
    if (!TokenChar(s[i])) {
      out.push_back(s[i++]);
      continue;
    }
    size_t end = i;
    while (end < n && TokenChar(s[end])) ++end;
    std::string_view token(s.data() + i, end - i);

    // JSON Web Token: three base64url segments.
    if (StartsWith(token, "eyJ") && end < n && s[end] == '.') {
      size_t e2 = end + 1;
      while (e2 < n && TokenChar(s[e2])) ++e2;
      if (e2 - end - 1 >= 4 && e2 < n && s[e2] == '.') {
        size_t e3 = e2 + 1;
        while (e3 < n && TokenChar(s[e3])) ++e3;
        if (e3 - e2 - 1 >= 4) {
          out += "eyJ";
          out += kMask;
          i = e3;
          continue;
        }
      }
    }
    if (size_t keep = CredentialPrefix(token); keep != std::string_view::npos) {
      out.append(token.substr(0, keep));
      out += kMask;
      i = end;
      continue;
    }
    if (token.size() == 6 && Lower(token) == "bearer" && end < n &&
        (s[end] == ' ' || s[end] == '\t')) {
      size_t v = end;
      while (v < n && (s[v] == ' ' || s[v] == '\t')) ++v;
      size_t ve = v;
      while (ve < n && !ValueEnd(s[ve])) ++ve;
      out.append(s, i, v - i);
      if (ve - v >= 8) {
        out += kMask;
        i = ve;
      } else {
        i = v;
      }
      continue;
    }
    if (SecretName(token)) {
      // name, then up to a few quotes/spaces/backslashes, ':' or '=', the same again, the value.
      size_t p = end;
      auto skip = [&](size_t at) {
        size_t k = at;
        while (k < n && k - at < 6 && (s[k] == '"' || s[k] == '\'' || s[k] == '\\' || s[k] == ' '))
          ++k;
        return k;
      };
      p = skip(p);
      if (p < n && (s[p] == ':' || s[p] == '=')) {
        size_t v = skip(p + 1);
        size_t ve = v;
        while (ve < n && !ValueEnd(s[ve])) ++ve;
        if (ve > v) {
          out.append(s, i, v - i);
          out += kMask;
          i = ve;
          continue;
        }
      }
    }
    out.append(token);
    i = end;
  }
  return out;
}

std::string SanitizeText(std::string_view text, size_t max_bytes, bool* truncated) {
  static constexpr std::string_view kReplacement = "\xEF\xBF\xBD";
  std::string out;
  out.reserve(std::min(text.size(), max_bytes));
  if (truncated) *truncated = false;
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    const auto c = static_cast<unsigned char>(text[i]);
    size_t len = 0;
    uint32_t cp = 0;
    if (c < 0x80) {
      len = 1;
      cp = c;
    } else if ((c & 0xE0) == 0xC0) {
      len = 2;
      cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3;
      cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4;
      cp = c & 0x07;
    }
    bool valid = len > 0 && i + len <= n;
    for (size_t k = 1; valid && k < len; ++k) {
      const auto cc = static_cast<unsigned char>(text[i + k]);
      if ((cc & 0xC0) != 0x80) valid = false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    // Overlong forms, surrogates and code points past U+10FFFF are not UTF-8 either.
    if (valid && ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) ||
                  (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) || (cp >= 0xD800 && cp <= 0xDFFF)))
      valid = false;
    std::string_view piece = valid && cp != 0 ? text.substr(i, len) : kReplacement;
    if (out.size() + piece.size() > max_bytes) {
      if (truncated) *truncated = true;
      break;
    }
    out.append(piece);
    i += valid ? len : 1;
  }
  return out;
}

}  // namespace tollgate
