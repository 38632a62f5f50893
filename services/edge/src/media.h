// The media endpoints' requests (issue #12): images (generations as JSON; edits and variations as
// multipart/form-data), audio (speech as JSON; transcriptions and translations as multipart) and
// moderations (JSON), parsed into the one ParsedRequest the admission step, the attempts and the
// relay take. A multipart body is relayed as sent (only the model's value changes per attempt).
// Image forms are read whole; audio uploads are streamed (upload.h), their form read ahead only
// as far as routing needs. Pure logic, unit-tested in test/media_test.cpp; the handlers are in
// media.cpp.
#pragma once

#include <string_view>
#include <variant>

#include "src/openai.h"

namespace tollgate::edge {

// `content_type` is the request's Content-Type (multipart endpoints need its boundary).
std::variant<ParsedRequest, RequestError> ParseMediaRequest(Endpoint endpoint,
                                                            std::string_view content_type,
                                                            std::string_view body);

// The endpoint takes multipart/form-data (images edits and variations, transcriptions,
// translations).
bool IsMultipartEndpoint(Endpoint endpoint);

}  // namespace tollgate::edge
