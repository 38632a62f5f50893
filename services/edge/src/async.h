// Bridges callback-style results (gRPC callback threads, see clients.h) into the coroutines of
// one io_context, without blocking any thread.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
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
  // delivered on the executor, so the timer and the value are only ever touched there. A call
  // answered from memory calls back at once, on the executor's own thread: then the value is
  // stored directly and Wait() does not suspend (no post, no timer wait).
  std::function<void(T)> Setter() {
    return [state = state_](T value) mutable {
      auto s = std::move(state);  // the last reference drops on the executor, not here
      using IoExecutor = boost::asio::io_context::executor_type;
      if (const auto* io = s->executor.template target<IoExecutor>();
          io != nullptr && io->running_in_this_thread()) {
        s->Deliver(std::move(value));
        return;
      }
      auto executor = s->executor;
      boost::asio::post(executor, [s = std::move(s), value = std::move(value)]() mutable {
        s->Deliver(std::move(value));
      });
    };
  }

  bool ready() const { return state_->value.has_value(); }

  boost::asio::awaitable<T> Wait() {
    while (!state_->value) {
      if (!state_->timer) state_->timer.emplace(state_->executor, Timer::time_point::max());
      boost::system::error_code ec;
      co_await state_->timer->async_wait(
          boost::asio::redirect_error(boost::asio::use_awaitable, ec));
    }
    co_return std::move(*state_->value);
  }

 private:
  using Timer = boost::asio::steady_timer;
  struct State {
    explicit State(boost::asio::any_io_executor ex) : executor(std::move(ex)) {}
    // On the executor only. The timer exists once a Wait() had to suspend: an answer that came
    // first (the usual case for calls answered from memory) never needs one.
    void Deliver(T v) {
      value = std::move(v);
      if (timer) timer->cancel();
    }
    boost::asio::any_io_executor executor;
    std::optional<Timer> timer;
    std::optional<T> value;
  };
  std::shared_ptr<State> state_;
};

}  // namespace tollgate::edge
