// A process-wide choice of algorithm (an enum with values 0, 1, ...): read from the environment at
// first use unless set before; set and read from any thread.
#pragma once
#include <atomic>

namespace lrpfast {

template <class E>
class Setting {
 public:
  explicit Setting(E (*from_env)()) : from_env_(from_env) {}
  void set(E e) { v_.store(int(e)); }
  E get() {
    int a = v_.load();
    if (a < 0) {
      a = int(from_env_());
      v_.store(a);
    }
    return E(a);
  }

 private:
  E (*from_env_)();
  std::atomic<int> v_{-1};
};

}  // namespace lrpfast
