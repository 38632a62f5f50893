// Text that leaves the request path for storage: request and response bodies a key opted in to
// keep (billing's usage_bodies), and any other free text written to a database.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace tollgate {

// Replaces credentials found in free text with "***" (keeping a short, harmless prefix so a
// reader can tell what was there):
//   - API keys by their well-known shapes: "sk-..." (OpenAI, Anthropic "sk-ant-", Tollgate
//     "sk-tg-"), AWS access key ids (AKIA/ASIA...), GitHub ("ghp_", "github_pat_"...), GitLab
//     ("glpat-"), Slack ("xox?-"), Google ("AIza..."), JSON Web Tokens ("eyJ...");
//   - the token after "Bearer ";
//   - the value after a secret-looking name ("password", "passwd", "secret", "api_key",
//     "apikey", "api-key", "access_token", "refresh_token", "client_secret", "private_key")
//     followed by ':' or '=' (quotes and JSON-escaped quotes allowed around both);
//   - PEM private key blocks;
//   - each of `exact` (e.g. the caller's own key, the upstream key) wherever it appears.
// Linear in the text's size; no regular expressions (std::regex recurses on long input).
std::string RedactSecrets(std::string_view text, const std::vector<std::string_view>& exact = {});

// Valid UTF-8 without NUL bytes (PostgreSQL TEXT refuses both), at most `max_bytes` long, never
// cut inside a character: invalid bytes and NULs become U+FFFD. Sets *truncated when cut.
std::string SanitizeText(std::string_view text, size_t max_bytes, bool* truncated = nullptr);

}  // namespace tollgate
