// Bridges callback-style results (gRPC callback threads, see clients.h) into the coroutines of
// one io_context, without blocking any thread.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <functional>
#include <memory>
#include <optional>

namespace tollgate::edge {

// A value that arrives later, from any thread, and is awaited on `executor`. Several may be
// started at once and awaited one after the other: that is how independent calls run
// concurrently. A steady_timer that never expires serves as the event: delivery cancels it.
template <typename T>
class Eventual final {
 public:
  explicit Eventual(boost::asio::any_io_executor executor)
      : state_(std::make_shared<State>(std::move(executor))) {}

  // The callback to hand to the asynchronous call; it must run exactly once. The value is
  // delivered on the executor, so the timer and the value are only ever touched there.
  std::function<void(T)> Setter() {
    return [state = state_](T value) mutable {
      auto s = std::move(state);  // the last reference drops on the executor, not here
      auto executor = s->executor;
      boost::asio::post(executor, [s = std::move(s), value = std::move(value)]() mutable {
        s->value = std::move(value);
        s->timer.cancel();
      });
    };
  }

  bool ready() const { return state_->value.has_value(); }

  boost::asio::awaitable<T> Wait() {
    while (!state_->value) {
      boost::system::error_code ec;
      co_await state_->timer.async_wait(
          boost::asio::redirect_error(boost::asio::use_awaitable, ec));
    }
    co_return std::move(*state_->value);
  }

 private:
  struct State {
    explicit State(boost::asio::any_io_executor ex)
        : executor(ex), timer(ex, boost::asio::steady_timer::time_point::max()) {}
    boost::asio::any_io_executor executor;
    boost::asio::steady_timer timer;
    std::optional<T> value;
  };
  std::shared_ptr<State> state_;
};

}  // namespace tollgate::edge
