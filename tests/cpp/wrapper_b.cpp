#include <stdexcept>
#include <vector>

#include "grestart.hpp"

int run_hooks_and_count() {
    static std::vector<int> order;
    grestart::on_shutdown([] { order.push_back(1); });
    grestart::on_shutdown([] { throw std::runtime_error("a hook that throws"); });
    grestart::on_shutdown([] { order.push_back(3); });
    grestart::shutdown();
    grestart::shutdown();
    // reverse order, the throwing hook reported and skipped, each run once
    return order == std::vector<int>{3, 1} ? 3 : -1;
}
