// GET /v1/models and /v1/models/{model...}: the router's catalogue, as far as the calling key may
// use it (the other models do not exist as far as it is concerned).
#include <boost/asio/this_coro.hpp>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "src/async.h"
#include "src/endpoints.h"
#include "src/exchange.h"
#include "tollgate/auth/policy.h"

namespace tollgate::edge {
namespace {

namespace asio = boost::asio;
using asio::awaitable;

awaitable<void> Models(Exchange& x, std::optional<std::string> id) {
  std::optional<Principal> who = co_await x.Authenticate();
  if (!who) co_return;
  Eventual<ModelsResult> listed(co_await asio::this_coro::executor);
  x.edge.clients.router.ListModels(listed.Setter());
  ModelsResult result = co_await listed.Wait();
  if (result.failure) {
    co_await x.SendError(result.failure->code, result.failure->message);
    co_return;
  }
  // Only the models this key may use: the others do not exist as far as it is concerned.
  if (!who->allowed_models.empty())
    std::erase_if(result.models, [&](const ModelInfo& m) {
      return !auth::ModelAllowed(who->allowed_models, m.id);
    });
  auto model_json = [](const ModelInfo& m) {
    return nlohmann::ordered_json{
        {"id", m.id}, {"object", "model"}, {"created", m.created}, {"owned_by", m.owned_by}};
  };
  std::string body;
  if (id) {
    auto it = std::find_if(result.models.begin(), result.models.end(),
                           [&](const ModelInfo& m) { return m.id == *id; });
    if (it == result.models.end()) {
      co_await x.SendError(
          ErrorCode::kModelNotFound,
          "The model '" + *id + "' does not exist or you do not have access to it.", "model");
      co_return;
    }
    body = model_json(*it).dump();
  } else {
    nlohmann::ordered_json list{{"object", "list"}, {"data", nlohmann::ordered_json::array()}};
    for (const auto& m : result.models) list["data"].push_back(model_json(m));
    body = list.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
  }
  co_await x.SendJson(std::move(body));
}

}  // namespace

awaitable<void> ListModels(Exchange& x) { return Models(x, std::nullopt); }

awaitable<void> RetrieveModel(Exchange& x) { return Models(x, std::string(x.params.Get("model"))); }

}  // namespace tollgate::edge
