#include "tollgate/encoding.h"

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>

#include <cctype>

namespace tollgate {

std::string HexEncode(std::string_view bytes) {
  if (bytes.empty()) return "";
  std::string out(bytes.size() * 2 + 1, '\0');  // + OpenSSL's terminator
  size_t length = 0;
  if (OPENSSL_buf2hexstr_ex(out.data(), out.size(), &length,
                            reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size(),
                            '\0') != 1)
    return "";  // cannot happen: the buffer is large enough
  out.resize(bytes.size() * 2);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::optional<std::string> HexDecode(std::string_view text) {
  if (text.size() % 2 != 0 || text.find('\0') != std::string_view::npos) return std::nullopt;
  const std::string terminated(text);
  std::string out(text.size() / 2, '\0');
  size_t length = 0;
  ERR_set_mark();  // a malformed input must not leave errors on this thread's OpenSSL queue
  const bool ok = OPENSSL_hexstr2buf_ex(reinterpret_cast<unsigned char*>(out.data()), out.size(),
                                        &length, terminated.c_str(), '\0') == 1;
  ERR_pop_to_mark();
  if (!ok) return std::nullopt;
  out.resize(length);
  return out;
}

std::string Base64Encode(std::string_view bytes) {
  std::string out(4 * ((bytes.size() + 2) / 3) + 1, '\0');  // + OpenSSL's terminator
  const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(bytes.data()),
                                static_cast<int>(bytes.size()));
  out.resize(static_cast<size_t>(n));
  return out;
}

std::optional<std::string> Base64Decode(std::string_view text) {
  while (!text.empty() && text.back() == '=') text.remove_suffix(1);
  if (text.size() % 4 == 1) return std::nullopt;
  // EVP_DecodeBlock wants the standard alphabet, whole quanta, and skips whitespace: check and
  // normalise first, so it sees only what this function accepts.
  std::string standard;
  standard.reserve(text.size() + 3);
  for (char c : text) {
    if (c == '-') c = '+';
    if (c == '_') c = '/';
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '+' && c != '/') return std::nullopt;
    standard.push_back(c);
  }
  const size_t padding = (4 - standard.size() % 4) % 4;
  standard.append(padding, '=');
  std::string out(standard.size() / 4 * 3, '\0');
  const int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(standard.data()),
                                static_cast<int>(standard.size()));
  OPENSSL_cleanse(standard.data(), standard.size());  // may hold a key
  if (n < 0) return std::nullopt;
  out.resize(static_cast<size_t>(n) - padding);  // '=' decodes as zero bits
  return out;
}

}  // namespace tollgate
