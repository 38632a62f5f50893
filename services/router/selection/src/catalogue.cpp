#include "tollgate/router/catalogue.h"

namespace tollgate::router {

std::string_view ProviderTypeName(ProviderType type) {
  switch (type) {
    case ProviderType::kOpenAi:
      return "openai";
    case ProviderType::kAzureOpenAi:
      return "azure-openai";
    case ProviderType::kOpenAiCompatible:
      return "openai-compatible";
    case ProviderType::kAnthropic:
      return "anthropic";
  }
  return "openai";
}

std::optional<ProviderType> ParseProviderType(std::string_view name) {
  for (auto type : {ProviderType::kOpenAi, ProviderType::kAzureOpenAi,
                    ProviderType::kOpenAiCompatible, ProviderType::kAnthropic})
    if (ProviderTypeName(type) == name) return type;
  return std::nullopt;
}

}  // namespace tollgate::router
