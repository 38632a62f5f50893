// Hex and base64 for bytes held in a std::string, on OpenSSL (one implementation for the whole
// project; no hand-written alphabets elsewhere).
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace tollgate {

// Lower-case hex, two characters per byte.
std::string HexEncode(std::string_view bytes);
// Upper or lower case, no separators; nullopt on an odd length or any other character.
std::optional<std::string> HexDecode(std::string_view text);

// Standard base64 (RFC 4648 §4) with padding, no line breaks.
std::string Base64Encode(std::string_view bytes);
// Standard or URL-safe alphabet (even mixed), padded or not; nullopt on anything else (whitespace
// included).
std::optional<std::string> Base64Decode(std::string_view text);

}  // namespace tollgate
