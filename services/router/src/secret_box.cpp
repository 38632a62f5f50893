#include "tollgate/router/secret_box.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <memory>
#include <optional>
#include <stdexcept>

#include "tollgate/encoding.h"

namespace tollgate::router {
namespace {

// Binds every ciphertext to its purpose and format version, so a blob sealed
// for something else under the same key does not open as an upstream secret.
constexpr std::string_view kAad = "tollgate/router/upstream_key/v1";

struct CipherCtxDeleter {
  void operator()(EVP_CIPHER_CTX* ctx) const { EVP_CIPHER_CTX_free(ctx); }
};
using CipherCtx = std::unique_ptr<EVP_CIPHER_CTX, CipherCtxDeleter>;

[[noreturn]] void OpenSslFailure(const char* step) {
  throw std::runtime_error(std::string("AES-256-GCM: ") + step + " failed");
}

}  // namespace

SecretBox::Key SecretBox::ParseKey(std::string_view text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r' || text.back() == ' '))
    text.remove_suffix(1);
  Key key{};
  if (text.empty()) throw std::invalid_argument("the master key is empty");
  // Hex first: 64 hex characters are also valid base64 (of 48 bytes).
  auto bytes = text.size() == 2 * kKeySize ? HexDecode(text) : std::nullopt;
  if (!bytes) bytes = Base64Decode(text);
  if (bytes && bytes->size() == kKeySize) {
    std::copy(bytes->begin(), bytes->end(), key.begin());
    OPENSSL_cleanse(bytes->data(), bytes->size());
    return key;
  }
  if (bytes) OPENSSL_cleanse(bytes->data(), bytes->size());
  throw std::invalid_argument(
      "the master key must be 32 bytes written as 64 hex characters or "
      "as base64 (got " +
      std::to_string(text.size()) +
      " characters that are neither); generate one with "
      "`openssl rand -hex 32`");
}

SecretBox::SecretBox(const Key& key) : key_(key) {}

SecretBox::~SecretBox() { OPENSSL_cleanse(key_.data(), key_.size()); }

SealedSecret SecretBox::Seal(std::string_view plaintext) const {
  SealedSecret sealed;
  sealed.nonce.resize(kNonceSize);
  auto* nonce = reinterpret_cast<unsigned char*>(sealed.nonce.data());
  if (RAND_bytes(nonce, kNonceSize) != 1) OpenSslFailure("RAND_bytes");
  CipherCtx ctx(EVP_CIPHER_CTX_new());
  if (!ctx) OpenSslFailure("EVP_CIPHER_CTX_new");
  if (EVP_EncryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, nullptr, nullptr) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_IVLEN, kNonceSize, nullptr) != 1 ||
      EVP_EncryptInit_ex(ctx.get(), nullptr, nullptr, key_.data(), nonce) != 1)
    OpenSslFailure("encrypt init");
  int len = 0;
  if (EVP_EncryptUpdate(ctx.get(), nullptr, &len,
                        reinterpret_cast<const unsigned char*>(kAad.data()),
                        static_cast<int>(kAad.size())) != 1)
    OpenSslFailure("aad");
  sealed.ciphertext.resize(plaintext.size() + kTagSize);
  auto* out = reinterpret_cast<unsigned char*>(sealed.ciphertext.data());
  if (EVP_EncryptUpdate(ctx.get(), out, &len,
                        reinterpret_cast<const unsigned char*>(plaintext.data()),
                        static_cast<int>(plaintext.size())) != 1)
    OpenSslFailure("encrypt");
  int total = len;
  if (EVP_EncryptFinal_ex(ctx.get(), out + total, &len) != 1) OpenSslFailure("encrypt final");
  total += len;
  if (EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, kTagSize, out + total) != 1)
    OpenSslFailure("get tag");
  sealed.ciphertext.resize(static_cast<size_t>(total) + kTagSize);
  return sealed;
}

std::optional<std::string> SecretBox::Open(const SealedSecret& sealed) const {
  if (sealed.nonce.size() != kNonceSize || sealed.ciphertext.size() < kTagSize) return std::nullopt;
  const size_t body = sealed.ciphertext.size() - kTagSize;
  const auto* in = reinterpret_cast<const unsigned char*>(sealed.ciphertext.data());
  CipherCtx ctx(EVP_CIPHER_CTX_new());
  if (!ctx) return std::nullopt;
  if (EVP_DecryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, nullptr, nullptr) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_IVLEN, kNonceSize, nullptr) != 1 ||
      EVP_DecryptInit_ex(ctx.get(), nullptr, nullptr, key_.data(),
                         reinterpret_cast<const unsigned char*>(sealed.nonce.data())) != 1)
    return std::nullopt;
  int len = 0;
  if (EVP_DecryptUpdate(ctx.get(), nullptr, &len,
                        reinterpret_cast<const unsigned char*>(kAad.data()),
                        static_cast<int>(kAad.size())) != 1)
    return std::nullopt;
  std::string plaintext(body, '\0');
  auto* out = reinterpret_cast<unsigned char*>(plaintext.data());
  if (EVP_DecryptUpdate(ctx.get(), out, &len, in, static_cast<int>(body)) != 1) return std::nullopt;
  int total = len;
  // The tag is checked in DecryptFinal; the const_cast is OpenSSL's API, it does not write.
  if (EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, kTagSize,
                          const_cast<unsigned char*>(in + body)) != 1 ||
      EVP_DecryptFinal_ex(ctx.get(), out + total, &len) != 1) {
    OPENSSL_cleanse(plaintext.data(), plaintext.size());
    return std::nullopt;
  }
  plaintext.resize(static_cast<size_t>(total + len));
  return plaintext;
}

}  // namespace tollgate::router
