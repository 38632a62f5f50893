// Upstream secrets at rest: AES-256-GCM under the router's 32-byte master key,
// a fresh random 96-bit nonce per secret.
#pragma once

#include <array>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

#include "tollgate/router/catalogue.h"

namespace tollgate::router {

class SecretBox final {
 public:
  static constexpr size_t kKeySize = 32;
  static constexpr size_t kNonceSize = 12;
  static constexpr size_t kTagSize = 16;
  using Key = std::array<unsigned char, kKeySize>;

  // Parses 64 hex characters or the base64 (standard or URL-safe, padded or
  // not) of 32 bytes. Throws std::invalid_argument; the message never repeats
  // the text, which is a secret.
  static Key ParseKey(std::string_view text);

  explicit SecretBox(const Key& key);
  ~SecretBox();
  SecretBox(const SecretBox&) = delete;
  SecretBox& operator=(const SecretBox&) = delete;

  // Throws std::runtime_error if OpenSSL fails (out of memory, no entropy).
  SealedSecret Seal(std::string_view plaintext) const;
  // nullopt when the ciphertext, tag or nonce was altered or the key is not the one that sealed it.
  std::optional<std::string> Open(const SealedSecret& sealed) const;

 private:
  Key key_;
};

}  // namespace tollgate::router
